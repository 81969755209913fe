//! Replays one sequential editing trace two ways and compares them: applied
//! in-process to a Yrs doc (the floor), and sent through the real server over
//! one pipelined WebSocket, each update counted when its `Ack` says it is durable.
//!
//! ```text
//! cargo bench --bench trace_typing                       # seph-blog1, the whole trace
//! cargo bench --bench trace_typing -- rustcode           # another sequential trace
//! cargo bench --bench trace_typing -- --txns 20000 --in-flight 64
//! cargo bench --bench trace_typing -- --snapshot-every 1000000
//! ```
//!
//! Prints a markdown table and writes the same numbers as JSON to
//! `target/bench-results/trace_typing.json`. Run without cargo's `--bench`
//! flag (`cargo test --benches`), it is a quick smoke test of the first
//! [`SMOKE_TXNS`] txns that writes no results. Any wrong text fails the run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use folio::client::{new_doc, RECV_TIMEOUT};
use folio::config::ServeConfig;
use folio::doc::TEXT_NAME;
use folio::protocol::{
    client_message, server_message, v1, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};
use folio::trace::{shared_trace, Trace};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::{oneshot, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Transact};

/// The trace measured when none is named.
const DEFAULT_TRACE: &str = "sequential/seph-blog1.json.gz";

/// Txns replayed in smoke mode (run by `cargo test`, not `cargo bench`).
const SMOKE_TXNS: usize = 2_000;

/// The document the server run writes to. No `/`, so the REST path needs no escaping.
const DOC_ID: &str = "bench-trace-typing";

/// Frames written before one flush of the client socket. A browser flushes
/// every message; batching a few keeps the client's syscalls from competing
/// with the server for the same two cores, and adds microseconds at most to
/// the measured latency (a frame's send time is taken when it is queued).
const FRAMES_PER_FLUSH: usize = 32;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` gives the whole cause chain on one line, without the
            // backtrace anyhow's Debug would print when RUST_BACKTRACE is set.
            eprintln!("trace_typing FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    if std::env::var_os("RUST_LOG").is_some() {
        folio::telemetry::init();
    }
    let trace =
        Trace::load(&args.trace).with_context(|| format!("loading {}", args.trace.display()))?;
    ensure!(
        trace.num_agents == 1 && trace.start_content.is_empty(),
        "{} is not a sequential trace starting empty: only those replay in order",
        args.trace.display()
    );
    let txns = match (args.txns, args.full) {
        (Some(n), _) => n.min(trace.txns.len()),
        (None, true) => trace.txns.len(),
        (None, false) => SMOKE_TXNS.min(trace.txns.len()),
    };
    ensure!(txns > 0, "the trace has no txns to replay");
    // The reference text: the trace's own for the whole of it; for a prefix,
    // plain string splices (slow on long traces, hence not used for the whole).
    let expected = if txns == trace.txns.len() {
        trace.end_content.clone()
    } else {
        trace.text_after(txns)
    };
    let name = trace_name(&args.trace);
    eprintln!("trace_typing: {name}, {txns} of {} txns", trace.txns.len());

    let generated = generate(&trace, txns, &expected)?;
    let applied = apply_in_process(&generated.updates, &expected)?;

    let update_bytes = generated.updates.iter().map(Bytes::len).sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let served = runtime.block_on(through_server(
        Arc::new(generated.updates),
        &expected,
        args.in_flight,
        args.snapshot_every,
    ))?;
    drop(runtime);

    let report = Report {
        trace: name,
        txns,
        update_bytes,
        generate_secs: generated.secs,
        apply_secs: applied.secs,
        full_state_bytes: applied.full_state_bytes,
        server: served,
    };
    print!("{}", report.markdown());
    if args.full || args.txns.is_some() {
        let path = report.write_json()?;
        eprintln!("trace_typing: wrote {}", path.display());
    }
    Ok(())
}

/// Command-line arguments. Cargo adds `--bench` under `cargo bench`.
struct Args {
    trace: PathBuf,
    txns: Option<usize>,
    in_flight: Option<u32>,
    /// Overrides the server's `snapshot_every_updates`.
    snapshot_every: Option<u64>,
    /// Whether cargo ran us as a benchmark (the whole trace) or as a test.
    full: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Self {
            trace: resolve_trace(DEFAULT_TRACE)?,
            txns: None,
            in_flight: None,
            snapshot_every: None,
            full: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--bench" => args.full = true,
                "--txns" => args.txns = Some(value(&mut it, "--txns")?),
                "--in-flight" => {
                    let n: u32 = value(&mut it, "--in-flight")?;
                    ensure!(n > 0, "--in-flight must be at least 1");
                    args.in_flight = Some(n);
                }
                "--snapshot-every" => {
                    args.snapshot_every = Some(value(&mut it, "--snapshot-every")?);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench trace_typing -- [TRACE] [--txns N] [--in-flight N] [--snapshot-every N]\n\
                         TRACE: a path, a path under ../shared/traces, or a sequential trace's \
                         name (default {DEFAULT_TRACE})"
                    );
                    std::process::exit(0);
                }
                flag if flag.starts_with('-') => bail!("unknown flag {flag} (try --help)"),
                trace => args.trace = resolve_trace(trace)?,
            }
        }
        Ok(args)
    }
}

fn value<T: std::str::FromStr>(
    it: &mut impl Iterator<Item = String>,
    flag: &str,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let raw = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
    raw.parse().map_err(|e| anyhow!("{flag} {raw}: {e}"))
}

/// A trace given as a path, as a path under `../shared/traces`, or by the
/// name of a sequential trace (`rustcode`).
fn resolve_trace(arg: &str) -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from(arg),
        shared_trace(arg),
        shared_trace(&format!("sequential/{arg}.json.gz")),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| anyhow!("no trace {arg}; looked at {candidates:?}"))
}

fn trace_name(path: &Path) -> String {
    let text = path.display().to_string();
    match text.find("traces/") {
        Some(at) => text[at + "traces/".len()..].to_owned(),
        None => text,
    }
}

/// Every txn's update, made by typing the trace into a local doc.
struct Generated {
    updates: Vec<Bytes>,
    secs: f64,
}

/// Types the first `txns` txns into a local doc, one Yrs transaction each,
/// keeping each transaction's v1 update: what an editor would send.
fn generate(trace: &Trace, txns: usize, expected: &str) -> anyhow::Result<Generated> {
    let doc = new_doc();
    let start = Instant::now();
    let updates = trace.typed_updates(&doc, txns);
    let secs = start.elapsed().as_secs_f64();
    let text = doc.get_or_insert_text(TEXT_NAME);
    let typed = text.get_string(&doc.transact());
    check_text("local typing", &typed, expected)?;
    Ok(Generated { updates, secs })
}

/// What applying every update to a fresh doc took.
struct Applied {
    secs: f64,
    /// The resulting doc's full state (v1): the size of each server snapshot at the end.
    full_state_bytes: usize,
}

/// Decodes and applies every update to a fresh doc, in order: the work the
/// server cannot avoid for each update, without network, framing or disk.
fn apply_in_process(updates: &[Bytes], expected: &str) -> anyhow::Result<Applied> {
    let doc = new_doc();
    let text = doc.get_or_insert_text(TEXT_NAME);
    let start = Instant::now();
    for (i, update) in updates.iter().enumerate() {
        let decoded = yrs::Update::decode_v1(update)
            .map_err(|e| anyhow!("update {i} does not decode: {e}"))?;
        doc.transact_mut()
            .apply_update(decoded)
            .map_err(|e| anyhow!("update {i} does not apply: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let got = text.get_string(&doc.transact());
    check_text("in-process apply", &got, expected)?;
    let full_state_bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len();
    Ok(Applied {
        secs,
        full_state_bytes,
    })
}

/// What the run through the server measured.
struct Served {
    secs: f64,
    max_in_flight: u32,
    snapshot_every_updates: u64,
    /// Send → ack latency of every update, sorted.
    latencies: Vec<Duration>,
    /// Bytes of the data dir once the last ack arrived, and after shutdown.
    disk_at_last_ack: DiskUsage,
    disk_after_shutdown: DiskUsage,
}

/// Starts the server in-process on a temp dir, sends every update pipelined
/// over one socket, waits for every ack, checks the server's text and stops
/// the server cleanly.
async fn through_server(
    updates: Arc<Vec<Bytes>>,
    expected: &str,
    in_flight: Option<u32>,
    snapshot_every: Option<u64>,
) -> anyhow::Result<Served> {
    let dir = tempfile::tempdir().context("creating the data dir")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding an ephemeral port")?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut config = ServeConfig::new(addr, dir.path().to_owned());
    if let Some(n) = snapshot_every {
        config.snapshot_every_updates = n;
    }
    let snapshot_every_updates = config.snapshot_every_updates;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(folio::server::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let (ws, limits) = connect_and_subscribe(&format!("ws://{addr}/ws")).await?;
    let max_in_flight = in_flight
        .unwrap_or(u32::MAX)
        .min(limits.max_unacked_updates)
        .max(1);
    let window = Arc::new(Semaphore::new(max_in_flight as usize));
    let (sink, stream) = ws.split();
    let sender = tokio::spawn(send_all(sink, updates.clone(), window.clone()));
    let receiver = tokio::spawn(receive_acks(stream, updates.len(), window));
    let acks = receiver.await.context("the ack reader panicked")?;
    let sends = sender.await.context("the sender panicked")?;
    // The reader's error explains the sender's (it closes the window on failure).
    let (_stream, acked_at) = acks?;
    let (mut sink, sent_at) = sends?;
    let disk_at_last_ack = disk_usage(dir.path())?;
    let _ = sink.send(Message::Close(None)).await;

    let first = *sent_at.first().ok_or_else(|| anyhow!("nothing was sent"))?;
    let last = *acked_at
        .last()
        .ok_or_else(|| anyhow!("nothing was acknowledged"))?;
    let mut latencies: Vec<Duration> = acked_at
        .iter()
        .zip(&sent_at)
        .map(|(acked, sent)| acked.saturating_duration_since(*sent))
        .collect();
    latencies.sort_unstable();

    let url = format!("http://{addr}/docs/{DOC_ID}/text");
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading GET {url}"))?;
    ensure!(status.is_success(), "GET {url}: {status}: {body}");
    check_text("server text", &body, expected)?;

    let _ = stop.send(());
    server
        .await
        .context("the server task panicked")?
        .context("the server did not stop cleanly")?;
    let disk_after_shutdown = disk_usage(dir.path())?;
    Ok(Served {
        secs: last.duration_since(first).as_secs_f64(),
        max_in_flight,
        snapshot_every_updates,
        latencies,
        disk_at_last_ack,
        disk_after_shutdown,
    })
}

/// `Hello`, then `Subscribe` to an empty doc; returns the socket and the
/// server's limits.
async fn connect_and_subscribe(url: &str) -> anyhow::Result<(Ws, v1::Limits)> {
    // Nagle off, as the server does: a pipelined client must not wait for acks of its own packets.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    send(
        &mut ws,
        client_message::Kind::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "trace_typing".into(),
            ..Default::default()
        }),
    )
    .await?;
    let limits = match recv(&mut ws).await? {
        server_message::Kind::Welcome(w) => w.limits.unwrap_or_default(),
        other => bail!("expected Welcome, got {other:?}"),
    };
    ensure!(
        limits.max_unacked_updates > 0,
        "the server allows no update in flight"
    );
    send(
        &mut ws,
        client_message::Kind::Subscribe(v1::Subscribe {
            doc: DOC_ID.into(),
            state_vector: Bytes::new(),
            ..Default::default()
        }),
    )
    .await?;
    loop {
        match recv(&mut ws).await? {
            server_message::Kind::Synced(synced) => {
                ensure!(
                    synced.update.len() <= 2,
                    "{DOC_ID} is not empty on a fresh server"
                );
                return Ok((ws, limits));
            }
            server_message::Kind::Error(e) => bail!("subscribe refused: {}", describe(&e)),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Ws, kind: client_message::Kind) -> anyhow::Result<()> {
    let frame = ClientMessage { kind: Some(kind) }.encode_to_vec();
    ws.send(Message::Binary(frame.into()))
        .await
        .context("sending to the server")
}

async fn recv(ws: &mut Ws) -> anyhow::Result<server_message::Kind> {
    loop {
        if let Some(kind) = decode_next(ws.next()).await? {
            return Ok(kind);
        }
    }
}

/// The next server message, `None` for frames that carry none (pings).
async fn decode_next(
    next: impl std::future::Future<
        Output = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    >,
) -> anyhow::Result<Option<server_message::Kind>> {
    let next = tokio::time::timeout(RECV_TIMEOUT, next)
        .await
        .map_err(|_| anyhow!("nothing from the server for {RECV_TIMEOUT:?}"))?;
    match next {
        Some(Ok(Message::Binary(frame))) => {
            let msg = ServerMessage::decode(frame).context("undecodable server message")?;
            let kind = msg.kind.ok_or_else(|| anyhow!("empty ServerMessage"))?;
            Ok(Some(kind))
        }
        Some(Ok(Message::Close(frame))) => bail!("the server closed the socket: {frame:?}"),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(e).context("reading from the server"),
        None => bail!("the server closed the socket (eof)"),
    }
}

/// Sends update `i` with seq `i + 1`, never more than the window's permits
/// ahead of the acks. Returns each update's send time.
async fn send_all(
    mut sink: SplitSink<Ws, Message>,
    updates: Arc<Vec<Bytes>>,
    window: Arc<Semaphore>,
) -> anyhow::Result<(SplitSink<Ws, Message>, Vec<Instant>)> {
    let mut sent_at = Vec::with_capacity(updates.len());
    let mut unflushed = 0;
    for (i, update) in updates.iter().enumerate() {
        let permit = match window.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // The window is full: what is queued must reach the server
                // before any ack can come back.
                sink.flush().await.context("flushing updates")?;
                unflushed = 0;
                window
                    .acquire()
                    .await
                    .map_err(|_| anyhow!("the ack reader stopped after {i} updates"))?
            }
        };
        // Given back by the ack reader, one per ack.
        permit.forget();
        let frame = ClientMessage {
            kind: Some(client_message::Kind::Update(v1::Update {
                doc: DOC_ID.into(),
                update: update.clone(),
                seq: i as u64 + 1,
            })),
        }
        .encode_to_vec();
        sent_at.push(Instant::now());
        sink.feed(Message::Binary(frame.into()))
            .await
            .with_context(|| format!("sending update {}", i + 1))?;
        unflushed += 1;
        if unflushed >= FRAMES_PER_FLUSH {
            sink.flush().await.context("flushing updates")?;
            unflushed = 0;
        }
    }
    sink.flush().await.context("flushing updates")?;
    Ok((sink, sent_at))
}

/// Reads acks until `count` have arrived, in order, opening the window by
/// one for each. Any refusal fails the run. On failure the window is
/// closed, so the sender stops instead of waiting forever.
async fn receive_acks(
    mut stream: SplitStream<Ws>,
    count: usize,
    window: Arc<Semaphore>,
) -> anyhow::Result<(SplitStream<Ws>, Vec<Instant>)> {
    let mut acked_at = Vec::with_capacity(count);
    let result = async {
        while acked_at.len() < count {
            let Some(kind) = decode_next(stream.next())
                .await
                .with_context(|| format!("after {} acks", acked_at.len()))?
            else {
                continue;
            };
            match kind {
                server_message::Kind::Ack(ack) => {
                    let now = Instant::now();
                    let want = acked_at.len() as u64 + 1;
                    ensure!(
                        ack.seq == want,
                        "ack for seq {} while expecting {want}",
                        ack.seq
                    );
                    acked_at.push(now);
                    window.add_permits(1);
                }
                server_message::Kind::Error(e) => bail!("the server refused: {}", describe(&e)),
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        window.close();
        return Err(e);
    }
    Ok((stream, acked_at))
}

fn describe(e: &v1::Error) -> String {
    let code = ErrorCode::try_from(e.code)
        .map(|c| c.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("code {}", e.code));
    format!("{code} (seq {}, doc {:?}): {}", e.seq, e.doc, e.message)
}

/// Fails loudly, saying where, when `got` is not the trace's text.
fn check_text(what: &str, got: &str, expected: &str) -> anyhow::Result<()> {
    if got == expected {
        return Ok(());
    }
    let at = got
        .chars()
        .zip(expected.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let around = |s: &str| {
        s.chars()
            .skip(at.saturating_sub(20))
            .take(60)
            .collect::<String>()
    };
    bail!(
        "{what} is WRONG: {} chars, expected {}; first difference at char {at}:\n  got      {:?}\n  expected {:?}",
        got.chars().count(),
        expected.chars().count(),
        around(got),
        around(expected),
    )
}

/// Size of a directory tree: the files' lengths, and the blocks they occupy.
#[derive(Debug, Clone, Copy, Default)]
struct DiskUsage {
    apparent_bytes: u64,
    allocated_bytes: u64,
}

fn disk_usage(dir: &Path) -> anyhow::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                usage.apparent_bytes += meta.len();
                usage.allocated_bytes += allocated(&meta);
            }
        }
    }
    Ok(usage)
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

/// Everything one run measured.
struct Report {
    trace: String,
    txns: usize,
    update_bytes: usize,
    generate_secs: f64,
    apply_secs: f64,
    full_state_bytes: usize,
    server: Served,
}

impl Report {
    fn rate(&self, secs: f64) -> f64 {
        self.txns as f64 / secs.max(f64::MIN_POSITIVE)
    }

    /// How many times longer the server took than applying in-process.
    fn slowdown(&self) -> f64 {
        self.server.secs / self.apply_secs.max(f64::MIN_POSITIVE)
    }

    /// Nearest-rank percentile of the ack latencies, in milliseconds.
    fn latency_ms(&self, p: f64) -> f64 {
        let sorted = &self.server.latencies;
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted
            .get(rank.clamp(1, sorted.len()) - 1)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    fn disk_per_update(&self) -> f64 {
        self.server.disk_after_shutdown.apparent_bytes as f64 / self.txns as f64
    }

    fn markdown(&self) -> String {
        let s = &self.server;
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let mut out = format!(
            "\n### trace_typing: {} ({} updates, {:.1} bytes each on average, {cores} cores)\n\n",
            self.trace,
            self.txns,
            self.update_bytes as f64 / self.txns as f64,
        );
        out += "| measurement | seconds | updates/s |\n| --- | ---: | ---: |\n";
        for (what, secs) in [
            ("generate: type into a local doc", self.generate_secs),
            ("in-process: decode + apply", self.apply_secs),
            ("server: first send → last ack", s.secs),
        ] {
            out += &format!("| {what} | {secs:.3} | {:.0} |\n", self.rate(secs));
        }
        out += &format!(
            "\n| server figure | value |\n| --- | ---: |\n\
             | server time / in-process time | {:.1}× |\n\
             | updates in flight (max) | {} |\n\
             | snapshot every (updates) | {} |\n\
             | ack latency p50 | {:.2} ms |\n\
             | ack latency p99 | {:.2} ms |\n\
             | ack latency max | {:.2} ms |\n\
             | data dir after shutdown | {} bytes ({} allocated) |\n\
             | data dir at last ack | {} bytes ({} allocated) |\n\
             | disk bytes per update | {:.1} |\n\
             | final full state (one snapshot) | {} bytes |\n\n",
            self.slowdown(),
            s.max_in_flight,
            s.snapshot_every_updates,
            self.latency_ms(50.0),
            self.latency_ms(99.0),
            self.latency_ms(100.0),
            s.disk_after_shutdown.apparent_bytes,
            s.disk_after_shutdown.allocated_bytes,
            s.disk_at_last_ack.apparent_bytes,
            s.disk_at_last_ack.allocated_bytes,
            self.disk_per_update(),
            self.full_state_bytes,
        );
        out
    }

    fn json(&self) -> serde_json::Value {
        let s = &self.server;
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        serde_json::json!({
            "trace": self.trace,
            "updates": self.txns,
            "update_bytes": self.update_bytes,
            "final_full_state_bytes": self.full_state_bytes,
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
            "unix_time_secs": unix_secs,
            "generate": { "secs": self.generate_secs, "updates_per_sec": self.rate(self.generate_secs) },
            "in_process_apply": { "secs": self.apply_secs, "updates_per_sec": self.rate(self.apply_secs) },
            "server": {
                "secs": s.secs,
                "updates_per_sec": self.rate(s.secs),
                "max_in_flight": s.max_in_flight,
                "frames_per_flush": FRAMES_PER_FLUSH,
                "snapshot_every_updates": s.snapshot_every_updates,
                "ack_latency_ms": {
                    "p50": self.latency_ms(50.0),
                    "p90": self.latency_ms(90.0),
                    "p99": self.latency_ms(99.0),
                    "max": self.latency_ms(100.0),
                },
                "disk_at_last_ack": {
                    "apparent_bytes": s.disk_at_last_ack.apparent_bytes,
                    "allocated_bytes": s.disk_at_last_ack.allocated_bytes,
                },
                "disk_after_shutdown": {
                    "apparent_bytes": s.disk_after_shutdown.apparent_bytes,
                    "allocated_bytes": s.disk_after_shutdown.allocated_bytes,
                },
                "disk_bytes_per_update": self.disk_per_update(),
            },
            "server_secs_over_in_process_secs": self.slowdown(),
        })
    }

    /// Writes the JSON under the target dir; returns its path.
    fn write_json(&self) -> anyhow::Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join("bench-results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("trace_typing.json");
        let text = serde_json::to_string_pretty(&self.json()).context("encoding the results")?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
