//! Structured mutations of real Yjs updates (`folio_fuzz::mutate`) through
//! a shard. Checks: `folio_fuzz::shard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| folio_fuzz::shard::run_structured(data));
