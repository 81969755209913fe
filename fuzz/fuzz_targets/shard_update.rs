//! Raw bytes as Yjs updates through a shard: a document typed from a trace
//! prefix, then each frame as one update. Checks: `folio_fuzz::shard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| folio_fuzz::shard::run_raw(data));
