//! Text deltas in the Y.Text JSON shape (`{"insert": "ab"}`, `{"retain": 3}`,
//! `{"delete": 2}`), their composition (so a text stream can coalesce many
//! edits into one event) and their summary (for activity events).
//! Lengths count UTF-16 code units, like Yjs in the browser.

use serde::{Deserialize, Serialize};

/// One delta operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert(String),
    Retain(u32),
    Delete(u32),
}

/// Length of `s` in UTF-16 code units.
pub fn utf16_len(s: &str) -> u32 {
    u32::try_from(s.encode_utf16().count()).unwrap_or(u32::MAX)
}

impl Op {
    fn len(&self) -> u32 {
        match self {
            Op::Insert(s) => utf16_len(s),
            Op::Retain(n) | Op::Delete(n) => *n,
        }
    }
}

/// Appends `op` to `ops`, merging it into the last op when they are alike.
fn push(ops: &mut Vec<Op>, op: Op) {
    if op.len() == 0 {
        return;
    }
    match (ops.last_mut(), op) {
        (Some(Op::Insert(a)), Op::Insert(b)) => a.push_str(&b),
        (Some(Op::Retain(a)), Op::Retain(b)) => *a += b,
        (Some(Op::Delete(a)), Op::Delete(b)) => *a += b,
        (_, op) => ops.push(op),
    }
}

/// Drops a trailing retain, which changes nothing.
fn trim(mut ops: Vec<Op>) -> Vec<Op> {
    if matches!(ops.last(), Some(Op::Retain(_))) {
        ops.pop();
    }
    ops
}

/// Splits the first `n` UTF-16 units off `s`, never inside a surrogate pair
/// (a delta never splits one, so `n` always falls on a boundary).
pub(crate) fn split_utf16(s: &str, n: u32) -> (String, String) {
    let mut units = 0u32;
    for (i, ch) in s.char_indices() {
        if units >= n {
            return (s[..i].to_owned(), s[i..].to_owned());
        }
        units += u32::try_from(ch.len_utf16()).unwrap_or(2);
    }
    (s.to_owned(), String::new())
}

/// A cursor over a delta that hands out pieces of at most a given length.
struct Cursor {
    ops: std::vec::IntoIter<Op>,
    head: Option<Op>,
}

impl Cursor {
    fn new(ops: Vec<Op>) -> Self {
        let mut ops = ops.into_iter();
        let head = ops.next();
        Self { ops, head }
    }

    fn peek(&self) -> Option<&Op> {
        self.head.as_ref()
    }

    /// Takes at most `n` units of the next op (all of it if `n` is `None`).
    fn take(&mut self, n: Option<u32>) -> Option<Op> {
        let head = self.head.take()?;
        let len = head.len();
        match n {
            Some(n) if n < len => {
                let (piece, rest) = match head {
                    Op::Insert(s) => {
                        let (a, b) = split_utf16(&s, n);
                        (Op::Insert(a), Op::Insert(b))
                    }
                    Op::Retain(m) => (Op::Retain(n), Op::Retain(m - n)),
                    Op::Delete(m) => (Op::Delete(n), Op::Delete(m - n)),
                };
                self.head = Some(rest);
                Some(piece)
            }
            _ => {
                self.head = self.ops.next();
                Some(head)
            }
        }
    }
}

/// The delta equal to applying `a`, then `b`.
pub fn compose(a: Vec<Op>, b: Vec<Op>) -> Vec<Op> {
    let mut out = Vec::new();
    let mut a = Cursor::new(a);
    for op in b {
        match op {
            Op::Insert(s) => push(&mut out, Op::Insert(s)),
            Op::Retain(mut n) => {
                while n > 0 {
                    match a.peek() {
                        // Deletes of `a` take no room in `b`'s coordinates.
                        Some(Op::Delete(_)) => {
                            if let Some(d) = a.take(None) {
                                push(&mut out, d);
                            }
                        }
                        Some(_) => {
                            let Some(piece) = a.take(Some(n)) else { break };
                            n -= piece.len();
                            push(&mut out, piece);
                        }
                        None => {
                            push(&mut out, Op::Retain(n));
                            n = 0;
                        }
                    }
                }
            }
            Op::Delete(mut n) => {
                while n > 0 {
                    match a.peek() {
                        Some(Op::Delete(_)) => {
                            if let Some(d) = a.take(None) {
                                push(&mut out, d);
                            }
                        }
                        Some(_) => {
                            let Some(piece) = a.take(Some(n)) else { break };
                            n -= piece.len();
                            // Deleting what `a` inserted cancels out; deleting
                            // what `a` kept deletes it from the original.
                            if let Op::Retain(m) = piece {
                                push(&mut out, Op::Delete(m));
                            }
                        }
                        None => {
                            push(&mut out, Op::Delete(n));
                            n = 0;
                        }
                    }
                }
            }
        }
    }
    while let Some(rest) = a.take(None) {
        push(&mut out, rest);
    }
    trim(out)
}

/// Applies a delta to a string (UTF-16 positions). For tests and clients.
///
/// # Errors
/// A delta that reaches past the end of the text.
pub fn apply(text: &str, delta: &[Op]) -> Result<String, String> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut out: Vec<u16> = Vec::with_capacity(units.len());
    let mut at = 0usize;
    for op in delta {
        match op {
            Op::Insert(s) => out.extend(s.encode_utf16()),
            Op::Retain(n) | Op::Delete(n) => {
                let end = at + *n as usize;
                if end > units.len() {
                    return Err(format!("delta reaches {end} past length {}", units.len()));
                }
                if matches!(op, Op::Retain(_)) {
                    out.extend_from_slice(&units[at..end]);
                }
                at = end;
            }
        }
    }
    out.extend_from_slice(&units[at..]);
    String::from_utf16(&out).map_err(|e| e.to_string())
}

/// What an edit did, for activity events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub inserted: u32,
    pub deleted: u32,
    /// Start of the range touched, in the text after the edit, when known
    /// (computing it walks the text, so it is done only while watched).
    pub from: Option<u32>,
    /// End of the range touched, in the text after the edit, when known.
    pub to: Option<u32>,
}

impl Summary {
    /// Summarises one delta; `None` if it changes nothing.
    pub fn of(delta: &[Op]) -> Option<Self> {
        let mut s = Summary::default();
        let mut pos = 0u32;
        let mut touched: Option<(u32, u32)> = None;
        let mut touch = |from: u32, to: u32| {
            touched = Some(touched.map_or((from, to), |(a, b)| (a.min(from), b.max(to))));
        };
        for op in delta {
            match op {
                Op::Retain(n) => pos += n,
                Op::Insert(text) => {
                    let n = utf16_len(text);
                    touch(pos, pos + n);
                    s.inserted += n;
                    pos += n;
                }
                Op::Delete(n) => {
                    touch(pos, pos);
                    s.deleted += n;
                }
            }
        }
        let (from, to) = touched?;
        s.from = Some(from);
        s.to = Some(to);
        Some(s)
    }

    /// Folds a later edit into this one. The range stays known only if
    /// both are known.
    pub fn merge(&mut self, later: Summary) {
        self.inserted += later.inserted;
        self.deleted += later.deleted;
        let both =
            |a: Option<u32>, b: Option<u32>, f: fn(u32, u32) -> u32| a.zip(b).map(|(a, b)| f(a, b));
        self.from = both(self.from, later.from, u32::min);
        self.to = both(self.to, later.to, u32::max);
    }
}

/// A yrs text delta op as a feed op. Embeds count as one U+FFFC character.
pub fn from_yrs(d: &yrs::types::Delta) -> Op {
    use yrs::types::Delta;
    match d {
        Delta::Inserted(yrs::Out::Any(yrs::Any::String(s)), _) => Op::Insert(s.to_string()),
        Delta::Inserted(_, _) => Op::Insert("\u{FFFC}".to_owned()),
        Delta::Deleted(n) => Op::Delete(*n),
        Delta::Retain(n, _) => Op::Retain(*n),
    }
}

/// A delta that turns `old` into `new`: a character diff, so text both
/// share stays in place (and with it, other editors' cursors). Gives up on
/// finding the smallest diff after a second on huge, unlike texts; the
/// delta is still correct then, only larger.
pub fn between(old: &str, new: &str) -> Vec<Op> {
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .timeout(std::time::Duration::from_secs(1))
        .diff_chars(old, new);
    let mut ops = Vec::new();
    for change in diff.iter_all_changes() {
        let value = change.value();
        match change.tag() {
            similar::ChangeTag::Equal => push(&mut ops, Op::Retain(utf16_len(value))),
            similar::ChangeTag::Delete => push(&mut ops, Op::Delete(utf16_len(value))),
            similar::ChangeTag::Insert => push(&mut ops, Op::Insert(value.to_owned())),
        }
    }
    trim(ops)
}

/// Applies `delta` to a Y.Text inside `txn`. Returns the UTF-16 units
/// inserted and deleted.
pub fn apply_to_text(
    delta: &[Op],
    text: &yrs::TextRef,
    txn: &mut yrs::TransactionMut,
) -> (u32, u32) {
    use yrs::Text;
    let (mut at, mut inserted, mut deleted) = (0u32, 0u32, 0u32);
    for op in delta {
        match op {
            Op::Retain(n) => at += n,
            Op::Delete(n) => {
                text.remove_range(txn, at, *n);
                deleted += n;
            }
            Op::Insert(s) => {
                text.insert(txn, at, s);
                let n = utf16_len(s);
                at += n;
                inserted += n;
            }
        }
    }
    (inserted, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(s: &str) -> Op {
        Op::Insert(s.into())
    }

    #[test]
    fn compose_equals_applying_in_turn() {
        let cases: Vec<(&str, Vec<Op>, Vec<Op>)> = vec![
            (
                "hello",
                vec![Op::Retain(5), ins(" world")],
                vec![Op::Delete(1), ins("H")],
            ),
            (
                "abcdef",
                vec![Op::Retain(2), Op::Delete(2), ins("XY")],
                vec![Op::Retain(3), Op::Delete(2)],
            ),
            (
                "abc",
                vec![ins("123")],
                vec![Op::Retain(1), Op::Delete(3), ins("z")],
            ),
            ("", vec![ins("a😀b")], vec![Op::Retain(1), Op::Delete(2)]),
            ("abc", vec![Op::Delete(3)], vec![ins("new")]),
        ];
        for (text, a, b) in cases {
            let step = apply(&apply(text, &a).expect("a applies"), &b).expect("b applies");
            let composed = compose(a.clone(), b.clone());
            assert_eq!(
                apply(text, &composed).as_deref(),
                Ok(step.as_str()),
                "{a:?} then {b:?} = {composed:?}"
            );
        }
    }

    #[test]
    fn ops_serialize_like_yjs_deltas() {
        let json =
            serde_json::to_string(&vec![Op::Retain(2), ins("x"), Op::Delete(1)]).expect("json");
        assert_eq!(json, r#"[{"retain":2},{"insert":"x"},{"delete":1}]"#);
    }

    #[test]
    fn summary_counts_and_ranges() {
        let s = Summary::of(&[Op::Retain(3), ins("ab"), Op::Delete(4)]).expect("changes");
        assert_eq!(
            s,
            Summary {
                inserted: 2,
                deleted: 4,
                from: Some(3),
                to: Some(5)
            }
        );
        assert_eq!(Summary::of(&[Op::Retain(3)]), None);
    }
}
