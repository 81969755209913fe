//! Fuzzer bytes as WebSocket frames (see `folio_fuzz::frames`) through the
//! y-websocket session on one document. Checks: `folio_fuzz::session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| folio_fuzz::session::server().run_ysync(data));
