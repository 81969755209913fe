//! `folio check`: does every document rebuild consistently? The log alone,
//! replayed from the start, must reach the text of every version's
//! snapshot at that version's seq, and the same final state as the newest
//! snapshot plus the log after it.

use std::collections::BTreeMap;

use yrs::{ReadTxn, Transact};

use super::{
    apply_bytes, apply_chunk, meta, new_rebuilt, rebuild, DocStore, HistoryError, READ_CHUNK,
};
use crate::doc::DocId;
use crate::store::DocSize;

/// What `check` found for one document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocCheck {
    pub doc: String,
    pub last_seq: u64,
    pub text_len: u64,
    pub size: DocSize,
    /// Versions whose snapshot was compared with the log.
    pub versions_checked: u64,
    /// Everything that did not match; empty when the document is sound.
    pub problems: Vec<String>,
}

/// Checks one document. Problems are reported, not returned as errors;
/// errors are failures to read at all.
///
/// # Errors
/// Unknown document; storage failures.
pub fn check(store: &dyn DocStore, doc: &DocId) -> Result<DocCheck, HistoryError> {
    let meta = meta(store, doc)?;
    let mut report = DocCheck {
        doc: doc.to_string(),
        last_seq: meta.last_seq,
        text_len: 0,
        size: store.doc_size(doc)?,
        versions_checked: 0,
        problems: Vec::new(),
    };
    let versions: BTreeMap<u64, u64> = store
        .versions(doc)?
        .into_iter()
        .map(|(seq, v)| (seq, v.text_len))
        .collect();
    // The log alone, from the start, stopping at every version.
    let from_log = new_rebuilt();
    let mut at = 0u64;
    let last = (!versions.contains_key(&meta.last_seq)).then_some(meta.last_seq);
    let stops = versions.keys().copied().chain(last);
    for stop in stops {
        loop {
            let entries = store.log_range(doc, at, stop, READ_CHUNK)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            at = *last;
            if let Err(e) = apply_chunk(&from_log.doc, doc, &entries) {
                report.problems.push(e.to_string());
                return Ok(report);
            }
        }
        let Some(text_len) = versions.get(&stop) else {
            continue;
        };
        report.versions_checked += 1;
        if at != stop {
            report.problems.push(format!(
                "version {stop} is not a point of the log (log reaches {at} before it)"
            ));
            continue;
        }
        match store.snapshot_at_or_before(doc, stop)? {
            Some((seq, snapshot)) if seq == stop => {
                let snap = new_rebuilt();
                if let Err(e) = apply_bytes(&snap.doc, doc, seq, &snapshot.state) {
                    report.problems.push(format!("snapshot {seq}: {e}"));
                    continue;
                }
                let (want, got) = (from_log.text(), snap.text());
                if want != got {
                    report.problems.push(format!(
                        "version {stop}: snapshot text ({} chars) differs from the log's ({} chars)",
                        got.chars().count(),
                        want.chars().count()
                    ));
                }
                let len = u64::from(from_log.text_len());
                if len != *text_len {
                    report.problems.push(format!(
                        "version {stop}: summary says {text_len} units of text, the log gives {len}"
                    ));
                }
            }
            _ => report
                .problems
                .push(format!("version {stop} has no snapshot")),
        }
    }
    // The way the server loads it: newest snapshot plus the log after it.
    let loaded = rebuild(store, doc, meta.last_seq)?;
    let (sv_log, sv_loaded) = (
        from_log.doc.transact().state_vector(),
        loaded.doc.transact().state_vector(),
    );
    if sv_log != sv_loaded || from_log.text() != loaded.text() {
        report.problems.push(
            "the newest snapshot plus the log differs from the whole log replayed".to_owned(),
        );
    }
    report.text_len = u64::from(from_log.text_len());
    if report.text_len != meta.text_len && meta.last_seq > 0 {
        report.problems.push(format!(
            "summary says {} units of text, the log gives {}",
            meta.text_len, report.text_len
        ));
    }
    Ok(report)
}
