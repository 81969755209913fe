//! The offline subcommands of `folio`: they open a data dir directly (never
//! while a server holds it) to list, export, import, inspect, replay,
//! compact and check documents, and vacuum the data dir. Each returns what it prints, or an error
//! with a message for people; `main` prints and sets the exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yrs::updates::decoder::Decode;
use yrs::{Text, Transact};

use crate::config::RetentionArgs;
use crate::doc::{decode_guarded, new_doc, DocId, TEXT_NAME};
use crate::feed::delta::Summary;
use crate::history::{self, retention, HistoryError, Replayer};
use crate::store::{
    now_ms, vacuum, DocStore, LogEntry, SledStore, Snapshot, StoreError, Version, VersionKind,
    WriteOp,
};

/// Why an offline command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0} is in use by a running folio server; stop it first, or use its HTTP API instead")]
    Busy(PathBuf),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} document(s) failed the check")]
    CheckFailed(usize),
    #[error("vacuum: {0}")]
    Vacuum(vacuum::VacuumError),
}

impl From<vacuum::VacuumError> for CliError {
    fn from(e: vacuum::VacuumError) -> Self {
        match e {
            vacuum::VacuumError::Store(e) => e.into(),
            e => Self::Vacuum(e),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Locked { path } => Self::Busy(path),
            e => Self::Store(e),
        }
    }
}

/// The data dir of every offline command.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDir {
    /// Directory of the sled database, as given to `folio serve`.
    #[arg(long, env = "FOLIO_DATA_DIR", default_value = "./folio-data")]
    pub data_dir: PathBuf,
}

impl DataDir {
    /// Opens the store, refusing a dir a server holds. A dir without a
    /// database is an error too, not a new empty one.
    ///
    /// # Errors
    /// [`CliError::Busy`]; a missing dir; storage failures.
    pub fn open(&self) -> Result<SledStore, CliError> {
        if !self.data_dir.join("sled").exists() {
            return Err(CliError::Usage(format!(
                "{} holds no folio data (no sled database in it)",
                self.data_dir.display()
            )));
        }
        Ok(SledStore::open(&self.data_dir)?)
    }
}

fn doc_id(s: &str) -> Result<DocId, CliError> {
    DocId::parse(s).map_err(|e| CliError::Usage(e.to_string()))
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `folio docs`: every document, one line each (or JSON).
///
/// # Errors
/// As [`DataDir::open`].
pub fn docs(dir: &DataDir, prefix: &str, json: bool) -> Result<String, CliError> {
    let store = dir.open()?;
    let docs = store.list_page(prefix, None, usize::MAX)?;
    if json {
        let rows: Vec<_> = docs
            .iter()
            .map(|(id, m)| {
                serde_json::json!({
                    "id": id.as_str(), "last_seq": m.last_seq, "text_len": m.text_len,
                    "created_ms": m.created_ms, "updated_ms": m.updated_ms,
                })
            })
            .collect();
        return Ok(serde_json::Value::from(rows).to_string());
    }
    let mut out = format!("{:<40} {:>10} {:>10}  updated\n", "doc", "seq", "text_len");
    for (id, m) in &docs {
        out.push_str(&format!(
            "{:<40} {:>10} {:>10}  {}\n",
            id.as_str(),
            m.last_seq,
            m.text_len,
            rfc3339(m.updated_ms)
        ));
    }
    Ok(out)
}

/// What `folio export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The plain text.
    Text,
    /// The Yjs v1 update of the whole state (binary).
    Yjs,
    /// JSON: doc, seq, time and text.
    Json,
}

/// `folio export`: a document at its latest state, a version, or a time.
///
/// # Errors
/// Unknown document or version, a malformed time; storage failures.
pub fn export(
    dir: &DataDir,
    doc: &str,
    version: Option<u64>,
    at: Option<&str>,
    format: ExportFormat,
) -> Result<Vec<u8>, CliError> {
    let store = dir.open()?;
    let doc = doc_id(doc)?;
    let seq = match (version, at) {
        (Some(v), _) => history::version(&store, &doc, v)?.seq,
        (None, Some(t)) => {
            let ms = history::parse_time(t).ok_or_else(|| {
                CliError::Usage(format!(
                    "--at {t:?} is neither milliseconds since the epoch nor RFC 3339"
                ))
            })?;
            history::seq_at_time(&store, &doc, ms)?
        }
        (None, None) => u64::MAX,
    };
    let rebuilt = history::rebuild(&store, &doc, seq)?;
    Ok(match format {
        ExportFormat::Text => rebuilt.text().into_bytes(),
        ExportFormat::Yjs => rebuilt.state(),
        ExportFormat::Json => serde_json::json!({
            "doc": doc.as_str(),
            "seq": rebuilt.seq,
            "time_ms": rebuilt.time_ms,
            "text": rebuilt.text(),
        })
        .to_string()
        .into_bytes(),
    })
}

/// What `folio import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// UTF-8 text, typed into the document.
    Text,
    /// A Yjs v1 update (e.g. from `folio export --format yjs`).
    Yjs,
}

/// `folio import`: a new document from a file, as one update authored
/// `author`, with a first version.
///
/// # Errors
/// The document exists, the file is unreadable or not valid for `format`.
pub fn import(
    dir: &DataDir,
    doc: &str,
    file: &Path,
    format: ImportFormat,
    author: &str,
) -> Result<String, CliError> {
    let doc = doc_id(doc)?;
    let bytes = std::fs::read(file).map_err(|source| CliError::Io {
        path: file.display().to_string(),
        source,
    })?;
    let ydoc = new_doc();
    let text = ydoc.get_or_insert_text(TEXT_NAME);
    let update = match format {
        ImportFormat::Text => {
            let s = String::from_utf8(bytes)
                .map_err(|_| CliError::Usage(format!("{} is not UTF-8 text", file.display())))?;
            let mut txn = ydoc.transact_mut();
            text.insert(&mut txn, 0, &s);
            txn.encode_update_v1()
        }
        ImportFormat::Yjs => {
            let update = decode_guarded(|| yrs::Update::decode_v1(&bytes)).map_err(|e| {
                CliError::Usage(format!("{} is not a Yjs v1 update: {e}", file.display()))
            })?;
            ydoc.transact_mut()
                .apply_update(update)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            bytes
        }
    };
    let (text_len, state) = {
        let txn = ydoc.transact();
        (
            u64::from(text.len(&txn)),
            yrs::ReadTxn::encode_diff_v1(&txn, &yrs::StateVector::default()),
        )
    };
    let store = dir.open()?;
    if store.meta(&doc)?.is_some() {
        return Err(CliError::Usage(format!("document {doc} already exists")));
    }
    let time_ms = now_ms();
    store.write(&[
        WriteOp::Create {
            doc: doc.clone(),
            time_ms,
        },
        WriteOp::Append {
            doc: doc.clone(),
            seq: 1,
            entry: LogEntry {
                time_ms,
                author: author.to_owned(),
                update: update.into(),
                first_seq: 0,
            },
            text_len,
        },
        WriteOp::Snapshot {
            doc: doc.clone(),
            seq: 1,
            snapshot: Snapshot {
                time_ms,
                state: state.into(),
            },
            version: Version {
                time_ms,
                kind: VersionKind::Import as i32,
                label: format!("imported from {}", file.display()),
                text_len,
                authors: vec![author.to_owned()],
            },
        },
    ])?;
    Ok(format!("imported {doc}: {text_len} units of text\n"))
}

/// `folio history`: a document's versions and log summary.
///
/// # Errors
/// Unknown document; storage failures.
pub fn history(dir: &DataDir, doc: &str, json: bool) -> Result<String, CliError> {
    let store = dir.open()?;
    let doc = doc_id(doc)?;
    let meta = history::meta(&store, &doc)?;
    let versions = history::versions(&store, &doc)?;
    let size = store.doc_size(&doc)?;
    if json {
        return Ok(serde_json::json!({
            "doc": doc.as_str(), "last_seq": meta.last_seq, "size": size, "versions": versions,
        })
        .to_string());
    }
    let mut out = format!(
        "{doc}: {} updates in {} log entries ({} bytes), {} snapshots ({} bytes)\n",
        meta.last_seq, size.log_entries, size.log_bytes, size.snapshots, size.snapshot_bytes
    );
    out.push_str(&format!(
        "{:>10}  {:<24} {:<8} {:>9}  {:<20} authors\n",
        "version", "time", "kind", "text_len", "label"
    ));
    for v in &versions {
        out.push_str(&format!(
            "{:>10}  {:<24} {:<8} {:>9}  {:<20} {}\n",
            v.id,
            rfc3339(v.time_ms),
            v.kind,
            v.text_len,
            v.label.as_deref().unwrap_or("-"),
            v.authors.join(", ")
        ));
    }
    Ok(out)
}

/// `folio replay`: the history as a time-lapse. On a terminal, the text is
/// redrawn after each update (its last screenful); otherwise one line per
/// update, then the final text.
///
/// # Errors
/// Unknown document; storage failures; a closed stdout.
pub fn replay(
    dir: &DataDir,
    doc: &str,
    speed: f64,
    from: u64,
    to: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    /// Longest pause between two updates, whatever the speed.
    const MAX_GAP: Duration = Duration::from_secs(2);
    /// Lines of text shown on a terminal.
    const SCREEN_LINES: usize = 30;
    if !(0.0..=10_000.0).contains(&speed) {
        return Err(CliError::Usage(
            "--speed must be from 0 (no pauses) to 10000".to_owned(),
        ));
    }
    let store = dir.open()?;
    let doc = doc_id(doc)?;
    let mut replayer = Replayer::start(&store, &doc, from, to.unwrap_or(u64::MAX))?;
    let tty = std::io::stdout().is_terminal();
    let io = |source| CliError::Io {
        path: "stdout".to_owned(),
        source,
    };
    let mut last_time = replayer.current().time_ms;
    while let Some(step) = replayer.next_step(&store)? {
        if speed > 0.0 && last_time > 0 {
            let gap_ms = (step.time_ms - last_time).max(0) as f64 / speed;
            std::thread::sleep(Duration::from_secs_f64(gap_ms / 1000.0).min(MAX_GAP));
        }
        last_time = step.time_ms;
        if tty {
            let text = replayer.current().text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(SCREEN_LINES)..].join("\n");
            write!(
                out,
                "\x1b[2J\x1b[H{doc} @ {} by {} ({})\n\n{tail}",
                step.seq,
                step.author,
                rfc3339(step.time_ms)
            )
            .map_err(io)?;
            out.flush().map_err(io)?;
        } else {
            let s = Summary::of(&step.delta).unwrap_or_default();
            writeln!(
                out,
                "{} {} {} +{} -{}",
                step.seq,
                rfc3339(step.time_ms),
                step.author,
                s.inserted,
                s.deleted
            )
            .map_err(io)?;
        }
    }
    if !tty {
        writeln!(out, "--- text at {}", replayer.current().seq).map_err(io)?;
        write!(out, "{}", replayer.current().text()).map_err(io)?;
    } else {
        writeln!(out).map_err(io)?;
    }
    Ok(())
}

/// `folio compact`: applies the retention policy to one document or all.
///
/// # Errors
/// Unknown document; storage failures.
pub fn compact(
    dir: &DataDir,
    doc: Option<&str>,
    retention: &RetentionArgs,
) -> Result<String, CliError> {
    let store = dir.open()?;
    let ids = match doc {
        Some(d) => {
            let id = doc_id(d)?;
            history::meta(&store, &id)?;
            vec![id]
        }
        None => store
            .list_page("", None, usize::MAX)?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
    };
    let policy = retention.policy();
    let mut out = String::new();
    for id in ids {
        let before = store.doc_size(&id)?;
        let (ops, stats) = retention::plan(&store, &id, &policy, now_ms())?;
        store.write(&ops)?;
        let after = store.doc_size(&id)?;
        out.push_str(&format!(
            "{id}: versions {} kept, {} removed; log entries {} -> {}; bytes {} -> {}\n",
            stats.versions_kept,
            stats.versions_removed,
            stats.log_entries_before,
            stats.log_entries_after,
            before.log_bytes + before.snapshot_bytes,
            after.log_bytes + after.snapshot_bytes,
        ));
    }
    Ok(out)
}

/// `folio check`: every document rebuilds consistently; prints sizes and
/// the time taken.
///
/// # Errors
/// [`CliError::CheckFailed`] if any document has problems (after printing
/// the report); storage failures.
pub fn check(dir: &DataDir, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let started = Instant::now();
    let store = dir.open()?;
    let io = |source| CliError::Io {
        path: "stdout".to_owned(),
        source,
    };
    let mut failed = 0;
    let mut reports = Vec::new();
    for (id, _) in store.list_page("", None, usize::MAX)? {
        let report = history::check(&store, &id)?;
        if !report.problems.is_empty() {
            failed += 1;
        }
        if !json {
            let status = if report.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            };
            writeln!(
                out,
                "{status:<6} {id}: seq {}, text {} units, {} versions checked, log {} entries / {} bytes, snapshots {} / {} bytes",
                report.last_seq,
                report.text_len,
                report.versions_checked,
                report.size.log_entries,
                report.size.log_bytes,
                report.size.snapshots,
                report.size.snapshot_bytes
            )
            .map_err(io)?;
            for p in &report.problems {
                writeln!(out, "       - {p}").map_err(io)?;
            }
        }
        reports.push(report);
    }
    let disk = store.size_on_disk()?;
    if json {
        let value = serde_json::json!({
            "docs": reports, "size_on_disk": disk,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        writeln!(out, "{value}").map_err(io)?;
    } else {
        writeln!(
            out,
            "{} documents, {failed} failed; {disk} bytes on disk; {:.1?}",
            reports.len(),
            started.elapsed()
        )
        .map_err(io)?;
    }
    if failed > 0 {
        return Err(CliError::CheckFailed(failed));
    }
    Ok(())
}

/// `folio vacuum`: rewrites the data dir into a fresh one to give back the
/// space of replaced records (see [`crate::store::vacuum`]).
///
/// # Errors
/// [`CliError::Busy`] if a server holds the dir (nothing is changed); a
/// dir without data; a copy that does not verify; storage failures.
pub fn vacuum(dir: &DataDir) -> Result<String, CliError> {
    let report = vacuum::vacuum(&dir.data_dir)?;
    let mut out = String::new();
    if let Some(recovered) = &report.recovered {
        out.push_str(&format!("{recovered}\n"));
    }
    let records: u64 = report.trees.iter().map(|(_, n)| n).sum();
    out.push_str(&format!(
        "vacuumed {}: {records} records in {} trees; {} -> {} bytes\n",
        dir.data_dir.display(),
        report.trees.len(),
        report.bytes_before,
        report.bytes_after,
    ));
    Ok(out)
}
