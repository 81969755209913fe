//! Runs inputs through a fuzz target's harness without libFuzzer, in a
//! plain build: to check the seeds, or to replay a crash with a debugger or
//! logs at hand. `cargo run --manifest-path fuzz/Cargo.toml --example replay
//! -- TARGET FILE_OR_DIR...` (TARGET: session, ysession, shard_update,
//! shard_mutate). `RUST_LOG=debug` shows the server's logs.

use std::path::PathBuf;

fn main() {
    // The server's logs, filtered by RUST_LOG (say `RUST_LOG=debug`).
    if std::env::var_os("RUST_LOG").is_some() {
        folio::telemetry::init();
    }
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let run: fn(&[u8]) = match target.as_str() {
        "session" => |d| folio_fuzz::session::server().run_folio(d),
        "ysession" => |d| folio_fuzz::session::server().run_ysync(d),
        "shard_update" => folio_fuzz::shard::run_raw,
        "shard_mutate" => folio_fuzz::shard::run_structured,
        other => {
            eprintln!("unknown target {other:?}: session, ysession, shard_update, shard_mutate");
            std::process::exit(2);
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for arg in args.map(PathBuf::from) {
        match std::fs::read_dir(&arg) {
            Ok(dir) => files.extend(dir.filter_map(|e| e.ok().map(|e| e.path()))),
            Err(_) => files.push(arg),
        }
    }
    files.sort();
    for file in &files {
        let data = std::fs::read(file).expect("read an input");
        run(&data);
    }
    let panics = folio_fuzz::panics::PANICS.load(std::sync::atomic::Ordering::Relaxed);
    println!("{} inputs passed ({panics} panics caught)", files.len());
}
