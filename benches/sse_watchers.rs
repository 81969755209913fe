//! SSE watcher benchmark: edit-to-watcher delivery latency with many
//! watchers on one document, and server memory per idle watcher.
//!
//! Runs the real `folio` binary as a child process (so its RSS is its own),
//! connects N watchers to `GET /docs/{id}/events`, then has one editor make
//! timed edits; each watcher notes when the edit's `activity` event arrives.
//! The activity window is set to 0 ms so the figure is delivery latency, not
//! the coalescing window (which adds up to `--activity-window-ms` by design).
//!
//! `cargo bench --bench sse_watchers -- [--watchers 1000] [--edits 20]`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use folio::client::Editor;
use futures_util::StreamExt;
use tokio::sync::Mutex;

/// Bounds every wait, so the benchmark always ends.
const WAIT: Duration = Duration::from_secs(60);

struct Args {
    watchers: usize,
    edits: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        watchers: 1000,
        edits: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match a.as_str() {
            "--watchers" => args.watchers = num("--watchers"),
            "--edits" => args.edits = num("--edits"),
            // cargo bench passes --bench; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_server(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_folio"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--activity-window-ms",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn folio");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").expect("read");
        if let Some(at) = line.find("addr=") {
            if line.contains("folio serving") {
                let rest = &line[at + 5..];
                break rest.split_whitespace().next().expect("addr").to_owned();
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, addr) = spawn_server(dir.path());
    let pid = child.id();
    let mut editor = Editor::join(&format!("ws://{addr}/ws"), "watched", "editor")
        .await
        .expect("join");
    editor.type_patches(&[(0, 0, "x")]).await.expect("type");
    editor.wait_acked().await.expect("acked");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid);

    // Each watcher reports (edit number, arrival) for every activity event.
    let arrivals: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers.max(1));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/docs/watched/events");
    for _ in 0..args.watchers {
        let (client, url, arrivals, ready) = (
            client.clone(),
            url.clone(),
            arrivals.clone(),
            ready_tx.clone(),
        );
        tokio::spawn(async move {
            let resp = client.get(&url).send().await.expect("watch");
            let mut events = resp.bytes_stream().eventsource();
            while let Ok(Some(Ok(e))) = tokio::time::timeout(WAIT, events.next()).await {
                match e.event.as_str() {
                    "reset" => {
                        let _ = ready.send(()).await;
                    }
                    "activity" => {
                        let now = Instant::now();
                        let v: serde_json::Value =
                            serde_json::from_str(&e.data).unwrap_or_default();
                        let n = v["last_seq"].as_u64().unwrap_or(0);
                        arrivals.lock().await.push((n, now));
                    }
                    _ => {}
                }
            }
        });
    }
    drop(ready_tx);
    for _ in 0..args.watchers {
        tokio::time::timeout(WAIT, ready_rx.recv())
            .await
            .expect("watchers connect in time");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_watching = rss_kib(pid);

    // Timed edits, spaced so each is its own activity event.
    let mut sent_at = Vec::new();
    for i in 0..args.edits {
        let t0 = Instant::now();
        editor.type_patches(&[(0, 0, "y")]).await.expect("type");
        editor.wait_acked().await.expect("acked");
        sent_at.push((i as u64 + 2, t0)); // doc seq: 1 was the warm-up edit
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    while arrivals.lock().await.len() < args.watchers * args.edits && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = arrivals.lock().await.clone();
    let mut lat: Vec<Duration> = got
        .iter()
        .filter_map(|(n, at)| {
            sent_at
                .iter()
                .find(|(seq, _)| seq == n)
                .map(|(_, t0)| at.saturating_duration_since(*t0))
        })
        .collect();
    lat.sort();
    let expected = args.watchers * args.edits;
    let per_watcher = (rss_watching.saturating_sub(rss_before)) as f64 / args.watchers as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| metric | value |\n| --- | --- |");
    println!("| watchers | {} |", args.watchers);
    println!("| edits | {} |", args.edits);
    println!("| deliveries | {} of {expected} |", lat.len());
    println!("| latency p50 | {:.2} ms |", ms(percentile(&lat, 0.50)));
    println!("| latency p99 | {:.2} ms |", ms(percentile(&lat, 0.99)));
    println!("| latency max | {:.2} ms |", ms(percentile(&lat, 1.0)));
    println!("| server RSS before watchers | {rss_before} KiB |");
    println!("| server RSS with watchers | {rss_watching} KiB |");
    println!("| server RSS per idle watcher | {per_watcher:.1} KiB |");
    let json = serde_json::json!({
        "watchers": args.watchers, "edits": args.edits,
        "deliveries": lat.len(), "expected": expected,
        "p50_ms": ms(percentile(&lat, 0.50)), "p99_ms": ms(percentile(&lat, 0.99)),
        "max_ms": ms(percentile(&lat, 1.0)),
        "rss_before_kib": rss_before, "rss_watching_kib": rss_watching,
        "rss_per_watcher_kib": per_watcher,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("sse_watchers.json"), json.to_string());
    let _ = child.kill();
    let _ = child.wait();
    if lat.len() != expected {
        eprintln!(
            "sse_watchers FAILED: {} of {expected} deliveries",
            lat.len()
        );
        std::process::exit(1);
    }
}
