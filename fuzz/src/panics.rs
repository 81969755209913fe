//! The panic hook of the fuzz targets.
//!
//! libfuzzer-sys installs a hook that aborts on every panic, even one that is
//! caught. Folio catches panics on purpose around yrs decoding and applying
//! (yrs asserts on some malformed input; see `decode_guarded` in
//! `src/doc/shard/apply.rs`), so that hook would report handled input as crashes.
//! This hook only counts and notes panics; a panic that nobody catches still
//! unwinds into libfuzzer-sys, which aborts, so real crashes are still found.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

/// Panics seen so far, caught or not.
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many times one location is printed at most.
const PRINTS_PER_LOCATION: u32 = 3;

/// Replaces the panic hook (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let seen: Mutex<HashMap<String, u32>> = Mutex::new(HashMap::new());
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            let at = info
                .location()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let count = seen.entry(at.clone()).or_default();
            *count += 1;
            if *count <= PRINTS_PER_LOCATION {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("panic at {at}: {msg} (aborts the run unless caught)");
                // With RUST_BACKTRACE=1 (say, replaying a crash), where from.
                let trace = std::backtrace::Backtrace::capture();
                if trace.status() == std::backtrace::BacktraceStatus::Captured {
                    eprintln!("{trace}");
                }
            }
        }));
    });
}
