//! Fuzzer bytes as WebSocket frames (see `folio_fuzz::frames`) through
//! Folio's protobuf session. Checks: `folio_fuzz::session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| folio_fuzz::session::server().run_folio(data));
