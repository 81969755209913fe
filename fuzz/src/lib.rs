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

/// A temp dir for a harness's store: in `/dev/shm` if it exists.
///
/// # Panics
/// If no temp dir can be made (the harness cannot run at all).
pub fn temp_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let builder = || tempfile::Builder::new().prefix("folio-fuzz-").clone();
    if shm.is_dir() {
        if let Ok(dir) = builder().tempdir_in(&shm) {
            return dir;
        }
    }
    builder().tempdir().expect("a temp dir for the store")
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
