//! Retention: which versions to keep as they age, and merging old log
//! entries so history costs less disk.
//!
//! The policy (all ages relative to `now`):
//! - younger than `keep_all`: every version and every log entry is kept;
//! - younger than `hourly_for`: the newest version of each clock hour;
//! - older: the newest version of each day (UTC).
//!
//! Labelled versions and the newest version are always kept. Log entries
//! older than `keep_all` are merged into one entry per run of the same
//! author within the same hour (or day, past `hourly_for`), never across a
//! kept version, so every kept version stays an exact point of the log and
//! the latest state is untouched (merging Yjs updates loses no content).
//! Points inside a merged run are gone: reading one gives the run's start.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::HistoryError;
use crate::doc::DocId;
use crate::store::{DocStore, LogEntry, WriteOp};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Log entries read at a time while planning.
const READ_CHUNK: usize = 4096;
/// Most entries merged into one; a longer run is cut into several, so one
/// merge never holds more than this in memory.
const MAX_RUN_ENTRIES: usize = 10_000;
/// Most bytes of updates merged into one entry.
const MAX_RUN_BYTES: usize = 8 * 1024 * 1024;
/// Log changes per [`WriteOp::Compact`], so one write batch stays bounded.
const MAX_LOG_CHANGES_PER_OP: usize = 20_000;

/// How long history is kept at full detail, then hourly, then daily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep every version and log entry younger than this.
    pub keep_all: Duration,
    /// Then the newest version per hour until this age; daily after.
    pub hourly_for: Duration,
    /// A thinned version's snapshot stays where removing it would leave
    /// more than this many updates between snapshots: reading a past point
    /// replays at most about this many updates.
    pub max_snapshot_gap: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_all: Duration::from_secs(24 * 3600),
            hourly_for: Duration::from_secs(30 * 24 * 3600),
            max_snapshot_gap: 10_000,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RetentionPolicy {
    /// The bucket a record made at `time_ms` falls in, or `None` if it is
    /// young enough to keep as is.
    fn bucket(&self, time_ms: i64, now_ms: i64) -> Option<(u8, i64)> {
        let age = now_ms.saturating_sub(time_ms);
        if age < ms(self.keep_all) {
            None
        } else if age < ms(self.hourly_for) {
            Some((0, time_ms.div_euclid(HOUR_MS)))
        } else {
            Some((1, time_ms.div_euclid(DAY_MS)))
        }
    }

    /// The first time after `now_ms` at which a record made at `time_ms`
    /// changes tier (and so bucket): when it turns `keep_all` old (from
    /// kept as is to hourly, or straight to daily if `hourly_for` is not
    /// longer), then when it turns `hourly_for` old (hourly to daily).
    /// `None` once it is daily: its bucket never changes again. Between
    /// two such times, [`plan`] classifies the record the same way.
    pub fn next_move_ms(&self, time_ms: i64, now_ms: i64) -> Option<i64> {
        let keep_all = ms(self.keep_all);
        let to_daily = keep_all.max(ms(self.hourly_for));
        [keep_all, to_daily]
            .into_iter()
            .map(|age| time_ms.saturating_add(age))
            .find(|&at| at > now_ms)
    }
}

/// What one compaction did (or would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactStats {
    pub versions_kept: u64,
    pub versions_removed: u64,
    /// Snapshots of removed versions kept to bound the gap between snapshots.
    pub snapshots_kept: u64,
    /// Log entries before and after merging.
    pub log_entries_before: u64,
    pub log_entries_after: u64,
    /// The earliest time after the pass at which a version or log entry of
    /// the document moves to another tier or bucket; `None` if none ever
    /// will (all of it is daily already). Until then, and while nothing is
    /// written to the document, another pass would plan the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_move_ms: Option<i64>,
}

impl CompactStats {
    /// Whether the pass changed anything (removed a version or merged log
    /// entries).
    pub fn wrote(&self) -> bool {
        self.versions_removed > 0 || self.log_entries_after < self.log_entries_before
    }

    fn saw(&mut self, policy: &RetentionPolicy, time_ms: i64, now_ms: i64) {
        if let Some(at) = policy.next_move_ms(time_ms, now_ms) {
            self.next_move_ms = Some(self.next_move_ms.map_or(at, |m| m.min(at)));
        }
    }
}

/// Plans the compaction of `doc` at `now_ms`: the writes that apply the
/// policy. Reads the log in bounded chunks; the ops carry at most
/// [`MAX_LOG_CHANGES_PER_OP`] log changes each.
///
/// # Errors
/// Storage failures; a stored update that does not merge.
pub fn plan(
    store: &dyn DocStore,
    doc: &DocId,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> Result<(Vec<WriteOp>, CompactStats), HistoryError> {
    let mut stats = CompactStats::default();
    let versions = store.versions(doc)?;
    let newest = versions.last().map(|(seq, _)| *seq);
    // Per bucket, the newest unlabelled version in it: kept.
    let mut newest_in_bucket: HashMap<(u8, i64), u64> = HashMap::new();
    for (seq, v) in &versions {
        stats.saw(policy, v.time_ms, now_ms);
        if let Some(bucket) = policy.bucket(v.time_ms, now_ms) {
            if v.label.is_empty() {
                newest_in_bucket.insert(bucket, *seq);
            }
        }
    }
    let mut kept = BTreeSet::new();
    let mut remove_versions = Vec::new();
    for (seq, v) in &versions {
        let keep = !v.label.is_empty()
            || Some(*seq) == newest
            || match policy.bucket(v.time_ms, now_ms) {
                None => true,
                Some(bucket) => newest_in_bucket.get(&bucket) == Some(seq),
            };
        if keep {
            kept.insert(*seq);
        } else {
            remove_versions.push(*seq);
        }
    }
    stats.versions_kept = kept.len() as u64;
    stats.versions_removed = remove_versions.len() as u64;
    // Snapshots of removed versions go too, except where the gap between
    // the snapshots left would grow past the policy's bound.
    // Greedy: a removed version's snapshot stays only if skipping it would
    // leave more than the bound between the last snapshot kept and the next
    // candidate.
    let mut remove_snapshots = Vec::new();
    let mut snapshot_at = 0u64;
    for (i, (seq, _)) in versions.iter().enumerate() {
        if kept.contains(seq) {
            snapshot_at = *seq;
            continue;
        }
        let next = versions.get(i + 1).map_or(u64::MAX, |(s, _)| *s);
        if next.saturating_sub(snapshot_at) > policy.max_snapshot_gap {
            snapshot_at = *seq;
            stats.snapshots_kept += 1;
        } else {
            remove_snapshots.push(*seq);
        }
    }
    // Runs of merged log entries end at every snapshot left, too, so each
    // stays an exact point.
    let mut boundaries = kept.clone();
    boundaries.extend(
        remove_versions
            .iter()
            .filter(|s| remove_snapshots.binary_search(s).is_err()),
    );

    // Versions go first: until the log is merged, a removed version's point
    // still exists; the other way round, a crash between the two writes
    // would leave versions whose points are gone.
    let mut ops = Vec::new();
    if !remove_versions.is_empty() {
        ops.push(WriteOp::Compact {
            doc: doc.clone(),
            remove_log: Vec::new(),
            put_log: Vec::new(),
            remove_versions,
            remove_snapshots,
        });
    }
    let mut merger = Merger {
        doc,
        run: Vec::new(),
        run_bytes: 0,
        remove_log: Vec::new(),
        put_log: Vec::new(),
        ops: &mut ops,
    };
    let mut run_key: Option<(String, (u8, i64))> = None;
    let mut after = 0u64;
    loop {
        let entries = store.log_range(doc, after, u64::MAX, READ_CHUNK)?;
        let Some((last, _)) = entries.last() else {
            break;
        };
        after = *last;
        for (seq, entry) in entries {
            stats.log_entries_before += 1;
            stats.saw(policy, entry.time_ms, now_ms);
            let Some(bucket) = policy.bucket(entry.time_ms, now_ms) else {
                // Young: kept as is.
                merger.end_run()?;
                run_key = None;
                continue;
            };
            let key = (entry.author.clone(), bucket);
            if run_key.as_ref() != Some(&key)
                || merger.run.len() >= MAX_RUN_ENTRIES
                || merger.run_bytes + entry.update.len() > MAX_RUN_BYTES
            {
                merger.end_run()?;
                run_key = Some(key);
            }
            merger.run_bytes += entry.update.len();
            merger.run.push((seq, entry));
            // A kept version or snapshot must stay an exact point: runs end at it.
            if boundaries.contains(&seq) {
                merger.end_run()?;
                run_key = None;
            }
        }
    }
    merger.end_run()?;
    merger.flush();
    stats.log_entries_after = stats.log_entries_before - removed_entries(&ops);
    Ok((ops, stats))
}

fn removed_entries(ops: &[WriteOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            WriteOp::Compact { remove_log, .. } => remove_log.len() as u64,
            _ => 0,
        })
        .sum()
}

/// Updates merged at once; more are merged in rounds.
const MERGE_FAN_IN: usize = 128;

/// Merges updates into one. `merge_updates_v1` costs more than linearly in
/// the count, so large runs are merged `MERGE_FAN_IN` at a time, then the
/// results, and so on.
fn merge_in_rounds(updates: &[&[u8]]) -> Result<Vec<u8>, yrs::encoding::read::Error> {
    if updates.len() <= MERGE_FAN_IN {
        return yrs::merge_updates_v1(updates);
    }
    let partial = updates
        .chunks(MERGE_FAN_IN)
        .map(yrs::merge_updates_v1)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u8]> = partial.iter().map(Vec::as_slice).collect();
    merge_in_rounds(&refs)
}

/// Gathers runs of entries and turns each into one merged entry.
struct Merger<'a> {
    doc: &'a DocId,
    run: Vec<(u64, LogEntry)>,
    run_bytes: usize,
    remove_log: Vec<u64>,
    put_log: Vec<(u64, LogEntry)>,
    ops: &'a mut Vec<WriteOp>,
}

impl Merger<'_> {
    fn end_run(&mut self) -> Result<(), HistoryError> {
        let run = std::mem::take(&mut self.run);
        self.run_bytes = 0;
        if run.len() < 2 {
            return Ok(());
        }
        let updates: Vec<&[u8]> = run.iter().map(|(_, e)| &e.update[..]).collect();
        let (first_seq, first) = &run[0];
        let Some((last_seq, last)) = run.last() else {
            return Ok(());
        };
        let merged = merge_in_rounds(&updates).map_err(|e| HistoryError::Corrupt {
            doc: self.doc.clone(),
            seq: *last_seq,
            detail: format!("merging log entries: {e}"),
        })?;
        let first_seq = if first.first_seq != 0 {
            first.first_seq
        } else {
            *first_seq
        };
        self.remove_log
            .extend(run[..run.len() - 1].iter().map(|(seq, _)| *seq));
        self.put_log.push((
            *last_seq,
            LogEntry {
                time_ms: last.time_ms,
                author: last.author.clone(),
                update: merged.into(),
                first_seq,
            },
        ));
        if self.remove_log.len() >= MAX_LOG_CHANGES_PER_OP {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.remove_log.is_empty() && self.put_log.is_empty() {
            return;
        }
        self.ops.push(WriteOp::Compact {
            doc: self.doc.clone(),
            remove_log: std::mem::take(&mut self.remove_log),
            put_log: std::mem::take(&mut self.put_log),
            remove_versions: Vec::new(),
            remove_snapshots: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{check, rebuild, versions};
    use crate::store::{SledStore, Snapshot, Version, VersionKind};
    use yrs::{ReadTxn, StateVector, Text, Transact};

    const NOW: i64 = 1_800_000_000_000;
    const MIN_MS: i64 = 60_000;

    /// One entry per `(time, author, label)`, each typing a letter at the
    /// end, each with a version (and snapshot) after it.
    fn history(store: &SledStore, doc: &DocId, entries: &[(i64, &str, &str)]) {
        let ydoc = crate::doc::new_doc();
        let text = ydoc.get_or_insert_text(crate::doc::TEXT_NAME);
        let mut ops = vec![WriteOp::Create {
            doc: doc.clone(),
            time_ms: entries[0].0,
        }];
        for (i, (time_ms, author, label)) in entries.iter().enumerate() {
            let seq = i as u64 + 1;
            let update = {
                let mut txn = ydoc.transact_mut();
                let len = text.len(&txn);
                text.insert(
                    &mut txn,
                    len,
                    &char::from(b'a' + (i % 26) as u8).to_string(),
                );
                txn.encode_update_v1()
            };
            ops.push(WriteOp::Append {
                doc: doc.clone(),
                seq,
                entry: LogEntry {
                    time_ms: *time_ms,
                    author: (*author).to_owned(),
                    update: update.into(),
                    first_seq: 0,
                },
                text_len: seq,
            });
            ops.push(WriteOp::Snapshot {
                doc: doc.clone(),
                seq,
                snapshot: Snapshot {
                    time_ms: *time_ms,
                    state: ydoc
                        .transact()
                        .encode_diff_v1(&StateVector::default())
                        .into(),
                },
                version: Version {
                    time_ms: *time_ms,
                    kind: VersionKind::Auto as i32,
                    label: (*label).to_owned(),
                    text_len: seq,
                    authors: vec![(*author).to_owned()],
                },
            });
        }
        store.write(&ops).expect("write history");
    }

    #[test]
    fn retention_keeps_what_the_policy_says_and_every_crash_point_is_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let doc = DocId::parse("kept").expect("id");
        // A UTC day 40 days back (daily) and an hour 5 days back (hourly).
        let day = (NOW - 40 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
        let hour = (NOW - 5 * DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
        let entries = [
            (day + HOUR_MS, "ann", "first draft"),   // 1: labelled: kept
            (day + 2 * HOUR_MS, "ann", ""),          // 2: thinned, merged into 3
            (day + 3 * HOUR_MS, "ann", ""),          // 3: newest of its day: kept
            (day + DAY_MS + HOUR_MS, "ann", ""),     // 4: thinned, merged into 5
            (day + DAY_MS + 2 * HOUR_MS, "ann", ""), // 5: newest of its day: kept
            (hour + MIN_MS, "ann", ""),              // 6: thinned; alone (author changes)
            (hour + 2 * MIN_MS, "bob", ""),          // 7: thinned; alone
            (hour + 3 * MIN_MS, "ann", ""),          // 8: newest of its hour: kept
            (hour + HOUR_MS + MIN_MS, "ann", ""),    // 9: newest of its hour: kept
            (NOW - HOUR_MS, "bob", ""),              // 10: young: kept
            (NOW - 30 * MIN_MS, "bob", ""),          // 11: young, newest: kept
        ];
        history(&store, &doc, &entries);
        let latest = rebuild(&store, &doc, u64::MAX).expect("rebuild").text();
        let texts_before: Vec<String> = (0..=11)
            .map(|seq| rebuild(&store, &doc, seq).expect("rebuild").text())
            .collect();

        let policy = RetentionPolicy {
            keep_all: Duration::from_secs(24 * 3600),
            hourly_for: Duration::from_secs(30 * 24 * 3600),
            max_snapshot_gap: u64::MAX,
        };
        let (ops, stats) = plan(&store, &doc, &policy, NOW).expect("plan");
        assert_eq!(stats.versions_removed, 4);
        assert_eq!(stats.versions_kept, 7);
        assert_eq!((stats.log_entries_before, stats.log_entries_after), (11, 9));
        // Apply one op at a time, as a crash between any two would leave it:
        // every prefix is a consistent store.
        for (i, op) in ops.iter().enumerate() {
            store.write(std::slice::from_ref(op)).expect("write");
            let report = check(&store, &doc).expect("check");
            assert!(
                report.problems.is_empty(),
                "after op {i}: {:?}",
                report.problems
            );
            assert_eq!(
                rebuild(&store, &doc, u64::MAX).expect("rebuild").text(),
                latest
            );
            assert_eq!(
                rebuild(&store, &doc, 1).expect("rebuild").text(),
                texts_before[1]
            );
        }
        let kept: Vec<u64> = versions(&store, &doc)
            .expect("versions")
            .iter()
            .map(|v| v.seq)
            .collect();
        assert_eq!(kept, vec![1, 3, 5, 8, 9, 10, 11]);
        // Kept versions are exact; points merged away give the run's start.
        for seq in [1, 3, 5, 6, 7, 8, 9, 10, 11] {
            let at = rebuild(&store, &doc, seq).expect("rebuild");
            assert_eq!(
                (at.seq, at.text()),
                (seq, texts_before[seq as usize].clone())
            );
        }
        for (merged, start) in [(2, 1), (4, 3)] {
            let at = rebuild(&store, &doc, merged).expect("rebuild");
            assert_eq!(
                (at.seq, at.text()),
                (start, texts_before[start as usize].clone())
            );
        }
        let merged = store.log_range(&doc, 2, 3, 10).expect("log");
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].0, merged[0].1.first_seq), (3, 2));
        // A second pass finds nothing more to do.
        let (again, stats) = plan(&store, &doc, &policy, NOW).expect("plan");
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(stats.versions_removed, 0);
    }

    #[test]
    fn next_move_is_the_first_tier_boundary_after_now() {
        let policy = RetentionPolicy {
            keep_all: Duration::from_secs(3600),
            hourly_for: Duration::from_secs(48 * 3600),
            max_snapshot_gap: u64::MAX,
        };
        let t = NOW - 10 * MIN_MS;
        let (to_hourly, to_daily) = (t + HOUR_MS, t + 48 * HOUR_MS);
        // Young: it moves to hourly when it turns keep_all old...
        assert_eq!(policy.next_move_ms(t, NOW), Some(to_hourly));
        assert_eq!(policy.next_move_ms(t, to_hourly - 1), Some(to_hourly));
        // ...which `plan` sees at that very millisecond, not a moment before.
        assert_eq!(policy.bucket(t, to_hourly - 1), None);
        assert!(policy.bucket(t, to_hourly).is_some());
        // Hourly: next it moves to daily.
        assert_eq!(policy.next_move_ms(t, to_hourly), Some(to_daily));
        assert_eq!(policy.next_move_ms(t, to_daily - 1), Some(to_daily));
        assert_eq!(
            policy.bucket(t, to_daily - 1),
            Some((0, t.div_euclid(HOUR_MS)))
        );
        assert_eq!(policy.bucket(t, to_daily), Some((1, t.div_euclid(DAY_MS))));
        // Daily: it never moves again.
        assert_eq!(policy.next_move_ms(t, to_daily), None);
        // A record from the future (a clock jump) moves keep_all after its time.
        assert_eq!(
            policy.next_move_ms(NOW + MIN_MS, NOW),
            Some(NOW + MIN_MS + HOUR_MS)
        );
        // An hourly tier no longer than keep_all: straight to daily, one move.
        let no_hourly = RetentionPolicy {
            hourly_for: Duration::from_secs(60),
            ..policy
        };
        assert_eq!(no_hourly.next_move_ms(t, NOW), Some(to_hourly));
        assert_eq!(no_hourly.next_move_ms(t, to_hourly), None);
        assert_eq!(
            no_hourly.bucket(t, to_hourly),
            Some((1, t.div_euclid(DAY_MS)))
        );
        // Huge ages saturate instead of overflowing.
        let forever = RetentionPolicy {
            keep_all: Duration::MAX,
            ..policy
        };
        assert_eq!(forever.next_move_ms(t, NOW), Some(i64::MAX));
    }

    #[test]
    fn plan_reports_the_earliest_move_over_versions_and_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let doc = DocId::parse("moves").expect("id");
        let policy = RetentionPolicy::default();
        let keep_all = ms(policy.keep_all);
        let hourly_for = ms(policy.hourly_for);
        let old = NOW - 40 * DAY_MS;
        let hourly = NOW - 2 * DAY_MS;
        let young = NOW - HOUR_MS;
        history(
            &store,
            &doc,
            &[(old, "ann", ""), (hourly, "ann", ""), (young, "ann", "")],
        );
        let (_, stats) = plan(&store, &doc, &policy, NOW).expect("plan");
        // The young entry turns keep_all old before the hourly one turns
        // hourly_for old.
        assert_eq!(stats.next_move_ms, Some(young + keep_all));
        let (_, stats) = plan(&store, &doc, &policy, young + keep_all).expect("plan");
        assert_eq!(stats.next_move_ms, Some(hourly + hourly_for));
        let (_, stats) = plan(&store, &doc, &policy, young + hourly_for).expect("plan");
        assert_eq!(stats.next_move_ms, None, "all of it is daily");
    }

    #[test]
    fn thinning_keeps_snapshots_where_gaps_would_grow_too_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let doc = DocId::parse("gaps").expect("id");
        let day = (NOW - 40 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
        let entries: Vec<(i64, &str, &str)> =
            (1..=11).map(|i| (day + i * MIN_MS, "ann", "")).collect();
        history(&store, &doc, &entries);
        let latest = rebuild(&store, &doc, u64::MAX).expect("rebuild").text();
        let policy = RetentionPolicy {
            max_snapshot_gap: 3,
            ..RetentionPolicy::default()
        };
        let (ops, stats) = plan(&store, &doc, &policy, NOW).expect("plan");
        store.write(&ops).expect("write");
        // One day, one version: the newest. Snapshots stay every 3 updates.
        assert_eq!((stats.versions_kept, stats.versions_removed), (1, 10));
        assert_eq!(stats.snapshots_kept, 3);
        let snapshots: Vec<u64> = (1..=11)
            .filter_map(|seq| store.snapshot_at_or_before(&doc, seq).expect("read"))
            .map(|(at, _)| at)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(snapshots, vec![3, 6, 9, 11]);
        // Runs end at each snapshot left: 1-3, 4-6, 7-9, 10-11.
        assert_eq!(stats.log_entries_after, 4);
        assert_eq!(rebuild(&store, &doc, 5).expect("rebuild").seq, 3);
        assert_eq!(
            rebuild(&store, &doc, u64::MAX).expect("rebuild").text(),
            latest
        );
        let report = check(&store, &doc).expect("check");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
