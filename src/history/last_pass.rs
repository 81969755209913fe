//! The record of a document's last compaction pass, and whether the next
//! pass must read the document again (see `doc/compaction.rs` for why
//! skipping is safe).

use crate::history::retention::CompactStats;
use crate::store::DocMeta;

/// What the last compaction pass over one document saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPass {
    /// The document's summary as listed before that pass.
    meta: DocMeta,
    /// When the pass ran.
    at_ms: i64,
    /// When the next pass must read the document even if nothing was
    /// written to it: when one of its records moves to another tier or
    /// bucket, or at once if the pass wrote something (a pass is not always
    /// a fixpoint: runs cut at the merge size limits merge again next time).
    /// `None`: never, unless written to.
    next_move_ms: Option<i64>,
    /// The start of the last pass that listed the document: entries of
    /// documents no longer listed are dropped at the end of a full pass.
    pub(crate) listed_ms: i64,
}

impl LastPass {
    /// The record of a pass at `at_ms` over a document listed with `meta`
    /// that ended with `stats`.
    pub fn new(meta: DocMeta, at_ms: i64, stats: &CompactStats) -> Self {
        let next_move_ms = if stats.wrote() {
            Some(at_ms)
        } else {
            stats.next_move_ms
        };
        Self {
            meta,
            at_ms,
            next_move_ms,
            listed_ms: at_ms,
        }
    }

    /// Whether a pass at `now_ms` over the document, now listed with
    /// `meta`, must read it: it was written to since (its summary changed:
    /// a new update, snapshot or version moves `last_seq`, `updated_ms` or
    /// `snapshot_seq`), or a record has moved tier or bucket since.
    pub fn due(&self, meta: &DocMeta, now_ms: i64) -> bool {
        self.meta != *meta || self.next_move_ms.is_some_and(|at| now_ms >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_due_after_a_write_or_a_move_and_at_once_after_it_wrote() {
        let meta = DocMeta {
            last_seq: 3,
            updated_ms: 1_000,
            ..DocMeta::default()
        };
        let quiet = CompactStats {
            next_move_ms: Some(5_000),
            ..CompactStats::default()
        };
        let pass = LastPass::new(meta, 2_000, &quiet);
        assert!(!pass.due(&meta, 4_999));
        assert!(pass.due(&meta, 5_000));
        let written = DocMeta {
            last_seq: 4,
            ..meta
        };
        assert!(pass.due(&written, 2_001));
        let snapshot = DocMeta {
            snapshot_seq: 3,
            ..meta
        };
        assert!(pass.due(&snapshot, 2_001));
        let daily = LastPass::new(meta, 2_000, &CompactStats::default());
        assert!(!daily.due(&meta, i64::MAX));
        let wrote = CompactStats {
            versions_removed: 1,
            next_move_ms: Some(5_000),
            ..CompactStats::default()
        };
        assert!(LastPass::new(meta, 2_000, &wrote).due(&meta, 2_000));
    }
}
