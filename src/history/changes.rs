//! Attributed diffs: what changed between two points of a document, as
//! runs of kept, inserted and deleted text, each change with its author.
//!
//! Built by replaying the log between the points and folding each update's
//! text delta into a list of runs: text of the first point is `equal` until
//! someone deletes it (`delete`, by them); text someone inserts is `insert`
//! (by them) unless it is deleted again before the second point, when it is
//! in neither text and leaves no trace.

use super::{rebuild, DocStore, HistoryError, Replayer};
use crate::doc::DocId;
use crate::feed::delta::{self, split_utf16, utf16_len, Op};

/// Longest log range diffed update by update. Past it, the diff is a plain
/// character diff of the two texts, without authors.
pub const MAX_ATTRIBUTED_ENTRIES: usize = 20_000;

/// What a run of text is, between the two points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Equal,
    Insert,
    Delete,
}

/// A run of text and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub op: ChangeOp,
    pub text: String,
    /// Who inserted or deleted it; `None` for equal runs, and for every run
    /// of an unattributed diff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Length in UTF-16 units (not serialised).
    #[serde(skip)]
    len: u32,
}

/// The diff between two points.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Changes {
    pub from: u64,
    pub to: u64,
    /// Whether runs carry authors (false past [`MAX_ATTRIBUTED_ENTRIES`]).
    pub attributed: bool,
    pub changes: Vec<Change>,
}

impl Change {
    fn new(op: ChangeOp, text: String, author: Option<String>) -> Self {
        let len = utf16_len(&text);
        Self {
            op,
            text,
            author,
            len,
        }
    }

    /// Whether the run is in the text at the current point.
    fn visible(&self) -> bool {
        self.op != ChangeOp::Delete
    }
}

/// Runs that make up the text at the current point, plus deleted runs.
#[derive(Default)]
struct Runs(Vec<Change>);

impl Runs {
    /// Splits so that a run starts at visible offset `at`; returns its index.
    fn split_at(&mut self, at: u32) -> usize {
        let mut pos = 0u32;
        for i in 0..self.0.len() {
            if !self.0[i].visible() {
                continue;
            }
            let len = self.0[i].len;
            if at == pos {
                return i;
            }
            if at < pos + len {
                let run = &self.0[i];
                let (head, tail) = split_utf16(&run.text, at - pos);
                let (op, author) = (run.op, run.author.clone());
                self.0[i] = Change::new(op, head, author.clone());
                self.0.insert(i + 1, Change::new(op, tail, author));
                return i + 1;
            }
            pos += len;
        }
        self.0.len()
    }

    /// Applies one update's delta, made by `author`.
    fn apply(&mut self, ops: &[Op], author: &str) {
        let mut at = 0u32;
        for op in ops {
            match op {
                Op::Retain(n) => at += n,
                Op::Insert(s) => {
                    let i = self.split_at(at);
                    // Typing extends the run just before the cursor.
                    let merged = i > 0 && {
                        let prev = &mut self.0[i - 1];
                        if prev.op == ChangeOp::Insert && prev.author.as_deref() == Some(author) {
                            prev.text.push_str(s);
                            prev.len += utf16_len(s);
                            true
                        } else {
                            false
                        }
                    };
                    if !merged {
                        self.0.insert(
                            i,
                            Change::new(ChangeOp::Insert, s.clone(), Some(author.to_owned())),
                        );
                    }
                    at += utf16_len(s);
                }
                Op::Delete(n) => {
                    let start = self.split_at(at);
                    self.split_at(at + n);
                    let mut left = *n;
                    let mut i = start;
                    while left > 0 && i < self.0.len() {
                        if !self.0[i].visible() {
                            i += 1;
                            continue;
                        }
                        left = left.saturating_sub(self.0[i].len);
                        if self.0[i].op == ChangeOp::Insert {
                            // Inserted and deleted between the points: in
                            // neither text.
                            self.0.remove(i);
                        } else {
                            self.0[i].op = ChangeOp::Delete;
                            self.0[i].author = Some(author.to_owned());
                            i += 1;
                        }
                    }
                }
            }
        }
    }

    /// Merges neighbours that are alike.
    fn into_changes(self) -> Vec<Change> {
        let mut out: Vec<Change> = Vec::with_capacity(self.0.len());
        for run in self.0 {
            if run.len == 0 {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.op == run.op && last.author == run.author => {
                    last.text.push_str(&run.text);
                    last.len += run.len;
                }
                _ => out.push(run),
            }
        }
        out
    }
}

/// The changes from point `from` to point `to` (`from <= to`).
///
/// # Errors
/// As [`rebuild`].
pub fn diff(
    store: &dyn DocStore,
    doc: &DocId,
    from: u64,
    to: u64,
) -> Result<Changes, HistoryError> {
    let mut replay = Replayer::start(store, doc, from, to)?;
    let from_seq = replay.current().seq;
    let from_text = replay.current().text();
    let mut runs = Runs(vec![Change::new(ChangeOp::Equal, from_text.clone(), None)]);
    let mut steps = 0usize;
    while let Some(step) = replay.next_step(store)? {
        steps += 1;
        if steps > MAX_ATTRIBUTED_ENTRIES {
            return plain_diff(store, doc, from_seq, &from_text, to);
        }
        runs.apply(&step.delta, &step.author);
    }
    Ok(Changes {
        from: from_seq,
        to: replay.current().seq,
        attributed: true,
        changes: runs.into_changes(),
    })
}

fn plain_diff(
    store: &dyn DocStore,
    doc: &DocId,
    from: u64,
    from_text: &str,
    to: u64,
) -> Result<Changes, HistoryError> {
    let target = rebuild(store, doc, to)?;
    let mut runs = Runs(vec![Change::new(
        ChangeOp::Equal,
        from_text.to_owned(),
        None,
    )]);
    runs.apply(&delta::between(from_text, &target.text()), "");
    let changes = runs
        .into_changes()
        .into_iter()
        .map(|mut c| {
            c.author = None;
            c
        })
        .collect();
    Ok(Changes {
        from,
        to: target.seq,
        attributed: false,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(text: &str) -> Runs {
        Runs(vec![Change::new(ChangeOp::Equal, text.to_owned(), None)])
    }

    fn view(changes: &[Change]) -> Vec<(ChangeOp, &str, Option<&str>)> {
        changes
            .iter()
            .map(|c| (c.op, c.text.as_str(), c.author.as_deref()))
            .collect()
    }

    #[test]
    fn inserts_and_deletes_are_attributed_and_transient_text_vanishes() {
        let mut r = runs("hello world");
        // ana types ", dear" after "hello"; bob deletes "world".
        r.apply(&[Op::Retain(5), Op::Insert(",".into())], "ana");
        r.apply(&[Op::Retain(6), Op::Insert(" dear".into())], "ana");
        r.apply(&[Op::Retain(12), Op::Delete(5)], "bob");
        // ana types "xy" and deletes it again: in neither text.
        r.apply(&[Op::Insert("xy".into())], "ana");
        r.apply(&[Op::Delete(2)], "ana");
        let changes = r.into_changes();
        assert_eq!(
            view(&changes),
            vec![
                (ChangeOp::Equal, "hello", None),
                (ChangeOp::Insert, ", dear", Some("ana")),
                (ChangeOp::Equal, " ", None),
                (ChangeOp::Delete, "world", Some("bob")),
            ]
        );
    }

    #[test]
    fn a_delete_across_runs_splits_them() {
        let mut r = runs("abcdef");
        r.apply(&[Op::Retain(3), Op::Insert("XYZ".into())], "ana");
        // "abcXYZdef": bob deletes "cXYZd".
        r.apply(&[Op::Retain(2), Op::Delete(5)], "bob");
        assert_eq!(
            view(&r.into_changes()),
            vec![
                (ChangeOp::Equal, "ab", None),
                (ChangeOp::Delete, "cd", Some("bob")),
                (ChangeOp::Equal, "ef", None),
            ]
        );
    }
}
