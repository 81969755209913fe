//! Harnesses behind the fuzz targets in `fuzz_targets/` and the seed
//! generator. Each takes the fuzzer's bytes, drives the real session or
//! shard over a real sled store (in `/dev/shm` when there is one, so fsyncs
//! cost nothing), and panics on any broken invariant: libFuzzer reports the
//! panic as a crash and keeps the input.

pub mod frames;
pub mod mutate;
pub mod panics;
pub mod seeds;
pub mod session;
pub mod shard;

use std::path::PathBuf;

/// The start of every harness temp dir's name; the process id follows.
const TEMP_PREFIX: &str = "folio-fuzz-";

/// A temp dir for a harness's store: in `/dev/shm` if it exists. Its name
/// carries the process id: the harnesses live in statics, which are never
/// dropped, and a crash aborts the process anyway, so each new harness
/// first removes the dirs of processes that are gone (they live in memory:
/// fork mode left over a thousand behind in an hour).
///
/// # Panics
/// If no temp dir can be made (the harness cannot run at all).
pub fn temp_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    let builder = || tempfile::Builder::new().prefix(&prefix).clone();
    if shm.is_dir() {
        remove_orphans(&shm);
        if let Ok(dir) = builder().tempdir_in(&shm) {
            return dir;
        }
    }
    remove_orphans(&std::env::temp_dir());
    builder().tempdir().expect("a temp dir for the store")
}

/// Removes the harness temp dirs in `parent` whose process has exited.
/// Best effort: a dir that cannot be read or removed is left alone.
fn remove_orphans(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The single-threaded runtime every harness drives its futures on.
///
/// # Panics
/// If tokio cannot start.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}
