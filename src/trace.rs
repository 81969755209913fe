//! Keystroke-level editing traces (`../shared/traces`, format in its README),
//! loaded for tests, benchmarks and the load tool.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;
use yrs::{Doc, Text, Transact};

use crate::doc::TEXT_NAME;

/// One edit: delete `1` characters at `0`, then insert `2` there.
#[derive(Debug, Clone, Deserialize)]
pub struct Patch(pub u32, pub u32, pub String);

/// One transaction of a trace.
#[derive(Debug, Clone, Deserialize)]
pub struct Txn {
    /// ISO-8601 time the author made it.
    #[serde(default)]
    pub time: String,
    /// Concurrent traces: the author, `0..numAgents`.
    #[serde(default)]
    pub agent: usize,
    /// Concurrent traces: indices of the txns this one was made on.
    #[serde(default)]
    pub parents: Vec<usize>,
    pub patches: Vec<Patch>,
}

/// A whole trace.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    #[serde(default)]
    pub start_content: String,
    pub end_content: String,
    #[serde(default = "one")]
    pub num_agents: usize,
    pub txns: Vec<Txn>,
}

fn one() -> usize {
    1
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

impl Trace {
    /// Loads a gzipped JSON trace.
    ///
    /// # Errors
    /// The file cannot be read or is not a trace.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
            path: name.clone(),
            source,
        })?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut json)
            .map_err(|source| TraceError::Io {
                path: name.clone(),
                source,
            })?;
        serde_json::from_slice(&json).map_err(|source| TraceError::Json { path: name, source })
    }

    /// Patches of a txn as `(pos, delete, insert)` tuples.
    pub fn patches(txn: &Txn) -> Vec<(u32, u32, &str)> {
        txn.patches
            .iter()
            .map(|p| (p.0, p.1, p.2.as_str()))
            .collect()
    }

    /// Types the first `txns` transactions into `doc`'s root text
    /// ([`TEXT_NAME`]), one yrs transaction each, and returns each one's v1
    /// update: what an editor typing the trace would send.
    pub fn typed_updates(&self, doc: &Doc, txns: usize) -> Vec<Bytes> {
        let text = doc.get_or_insert_text(TEXT_NAME);
        self.txns
            .iter()
            .take(txns)
            .map(|txn| {
                let mut t = doc.transact_mut();
                for Patch(pos, del, ins) in &txn.patches {
                    if *del > 0 {
                        text.remove_range(&mut t, *pos, *del);
                    }
                    if !ins.is_empty() {
                        text.insert(&mut t, *pos, ins);
                    }
                }
                Bytes::from(t.encode_update_v1())
            })
            .collect()
    }

    /// The text after the first `n` txns, applied as plain string splices
    /// (sequential traces only): the reference a CRDT must match.
    pub fn text_after(&self, n: usize) -> String {
        let mut text: Vec<char> = self.start_content.chars().collect();
        for txn in self.txns.iter().take(n) {
            for Patch(pos, del, ins) in &txn.patches {
                let pos = (*pos as usize).min(text.len());
                let end = (pos + *del as usize).min(text.len());
                text.splice(pos..end, ins.chars());
            }
        }
        text.into_iter().collect()
    }
}

/// Path of a shared trace, relative to the repository root.
pub fn shared_trace(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces")
        .join(relative)
}
