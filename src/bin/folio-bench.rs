//! `folio-bench`: the load tool. Drives a Folio server over real sockets with
//! typing taken from a trace in `../shared/traces`, and measures, in the same
//! run, the physical limits each figure is compared with: applying the same
//! updates to a yrs doc in-process, and a raw WebSocket echo on loopback.
//!
//! ```text
//! cargo run --release --bin folio-bench -- --profile quick        # < 1 min, CI smoke run
//! cargo run --release --bin folio-bench -- --profile full --server-cpus 0   # by hand, under `taskset -c 1`
//! cargo run --release --bin folio-bench -- --url ws://127.0.0.1:4700/ws --server-pid 1234
//! ```
//!
//! Without `--url` every scenario gets a fresh server on a temp dir, spawned
//! as a child process (this binary re-executed as `serve`, or `--server-bin`),
//! so its CPU time and RSS are its own. Scenarios (letters as in issue 6):
//! a. hot-document fan-out, b. maximum fan-out throughput (full profile),
//! d. idle density, e. join storm, g. durability cost.
//!
//! `--protocol yjs` runs the fan-out scenarios (a, b) over plain y-websocket
//! instead (see `folio-bench/yjs.rs`), so any Yjs server can be measured the
//! same way: `--url ws://127.0.0.1:1234/yjs` is then the y-websocket base URL
//! (clients join `<url>/<doc>`); without `--url`, the spawned Folio's `/yjs`.
//! Scenarios needing acks or the Folio protocol are skipped with a note.
//!
//! Results go to `target/bench-results/folio-bench.{json,md}` with a latency
//! plot `folio-bench-latency.svg`. Each target prints pass or fail; failing
//! targets never fail the run. The exit code is non-zero only when a result
//! is wrong (a text that does not match the trace) or the run could not be made.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use folio::client::new_doc_with_client_id;
use folio::config::ServeConfig;
use folio::doc::TEXT_NAME;
use folio::protocol::{
    client_message, server_message, v1, ClientMessage, ServerMessage, PROTOCOL_VERSION,
};
use folio::trace::{shared_trace, Trace};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Transact};

#[path = "folio-bench/yjs.rs"]
mod yjs;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for any one expected message; a run never hangs longer.
const RECV_TIMEOUT: Duration = Duration::from_secs(20);
/// How long readers may keep receiving after the writers stop.
const DRAIN: Duration = Duration::from_secs(3);
/// Longest wait for a spawned server to listen or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Fan-out p99 under which a rate counts as sustained (scenario b).
const SUSTAINED_P99: Duration = Duration::from_millis(50);

/// The load tool for Folio (see the module docs).
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    run: RunArgs,
}

/// Processes the tool starts of itself, so each is measured alone.
#[derive(Subcommand)]
// Parsed once per process: the size of the `Serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Internal {
    /// Run a Folio server (the same code as `folio serve`).
    #[command(hide = true)]
    Serve(ServeConfig),
    /// Run the raw WebSocket echo server used as the loopback baseline.
    #[command(hide = true)]
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Profile {
    /// Under a minute: small counts, short runs (CI).
    Quick,
    /// The issue's sizes; a few minutes.
    Full,
}

/// The wire protocol the clients speak.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Protocol {
    /// Folio's own protocol at `/ws` (seqs and acks).
    Folio,
    /// Plain y-websocket at `/yjs/<doc>`: fan-out scenarios only.
    Yjs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Folio's protocol, or plain y-websocket (fan-out scenarios a and b only).
    #[arg(long, value_enum, default_value = "folio")]
    protocol: Protocol,
    /// Sizes and durations of the run.
    #[arg(long, value_enum, default_value = "quick")]
    profile: Profile,
    /// Drive this running server instead of spawning one (127.0.0.1 only).
    #[arg(long)]
    url: Option<String>,
    /// With --url: the server's pid, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The `folio` binary to spawn; by default this tool runs the same server code.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Pin spawned servers (and the echo baseline) to these CPUs with `taskset -c`.
    #[arg(long)]
    server_cpus: Option<String>,
    /// The trace typed by writers: a path, or a name under ../shared/traces/sequential.
    #[arg(long, default_value = "seph-blog1")]
    trace: String,
    /// Seeds the writers' client ids and the document names.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios to run (letters of issue 6); default: all of the profile's.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<char>>,
    /// Directory for the results (default: target/bench-results).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The sizes of one profile.
struct Sizes {
    fan_out_secs: f64,
    readers: usize,
    /// Keystroke rates per writer for scenario a.
    rates: Vec<f64>,
    /// Keystroke rates tried in turn for scenario b (empty: skipped).
    ramp: Vec<f64>,
    ramp_secs: f64,
    idle_conns: usize,
    joiners: usize,
    /// Trace txns typed in scenario g (0: the whole trace).
    typing_txns: usize,
    echo_round_trips: usize,
}

impl Sizes {
    fn of(profile: Profile) -> Self {
        match profile {
            Profile::Quick => Self {
                fan_out_secs: 2.0,
                readers: 100,
                rates: vec![100.0, 1000.0],
                ramp: vec![],
                ramp_secs: 0.0,
                idle_conns: 1000,
                joiners: 500,
                typing_txns: 20_000,
                echo_round_trips: 2000,
            },
            Profile::Full => Self {
                fan_out_secs: 10.0,
                readers: 100,
                rates: vec![100.0, 1000.0],
                ramp: vec![1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 8000.0, 12_000.0],
                ramp_secs: 4.0,
                idle_conns: 10_000,
                joiners: 500,
                typing_txns: 0,
                echo_round_trips: 20_000,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.internal {
        Some(Internal::Serve(config)) => serve(config),
        Some(Internal::Echo { addr }) => echo(addr),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("folio-bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `folio-bench serve`: the server, exactly as `folio serve` runs it.
fn serve(config: ServeConfig) -> anyhow::Result<()> {
    folio::telemetry::init();
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        folio::server::run(listener, config, folio::server::shutdown_signal())
            .await
            .context("serving")
    })
}

/// `folio-bench echo`: echoes every binary frame back; the floor for a
/// round trip through a WebSocket server on loopback. Socket settings match
/// the server's (no Nagle, 4 KiB read buffer, no write buffer).
fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("echo listening addr={}", listener.local_addr()?);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        tokio::select! {
            () = folio::server::shutdown_signal() => Ok(()),
            () = async {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(async move {
                        let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
                            return;
                        };
                        let (mut tx, mut rx) = ws.split();
                        while let Some(Ok(msg)) = rx.next().await {
                            if msg.is_binary() && tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            } => Ok(()),
        }
    })
}

// ---------------------------------------------------------------- processes

/// A server (Folio or echo) the tool spawned; terminated on drop.
struct Spawned {
    child: Child,
    addr: SocketAddr,
    data_dir: Option<PathBuf>,
}

impl Spawned {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawns `program args…` (under `taskset` when asked) and waits for the
    /// line naming the address it listens on.
    fn start(
        program: &Path,
        args: &[String],
        cpus: Option<&str>,
        marker: &str,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "warn,folio=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<SocketAddr>(1);
        let marker = marker.to_owned();
        // Reads the address, then keeps draining so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if !sent && line.contains(&marker) {
                    if let Some(addr) = parse_addr(&line) {
                        sent = tx.send(addr).is_ok();
                    }
                }
            }
        });
        let mut spawned = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
        };
        spawned.addr = rx
            .recv_timeout(PROCESS_TIMEOUT)
            .map_err(|_| anyhow!("{} did not report its address", program.display()))?;
        Ok(spawned)
    }

    /// SIGTERM, then a bounded wait; SIGKILL if it does not exit.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn parse_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Where a scenario sends its traffic.
struct Target {
    ws_url: String,
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
    /// Keeps a spawned server alive for the scenario.
    spawned: Option<Spawned>,
}

/// How servers are had: one external, or a fresh child per scenario.
struct Servers {
    url: Option<String>,
    protocol: Protocol,
    pid: Option<u32>,
    program: PathBuf,
    cpus: Option<String>,
    next_dir: u64,
}

impl Servers {
    fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.url {
            ensure!(
                url.starts_with("ws://127.0.0.1:") || url.starts_with("ws://localhost:"),
                "--url must be a loopback ws:// URL, got {url}"
            );
        }
        let program = match &args.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().context("locating this binary")?,
        };
        Ok(Self {
            url: args.url.clone(),
            protocol: args.protocol,
            pid: args.server_pid,
            program,
            cpus: args.server_cpus.clone(),
            next_dir: 0,
        })
    }

    /// The external server, or a fresh child on a new temp dir.
    fn get(&mut self) -> anyhow::Result<Target> {
        if let Some(url) = &self.url {
            return Ok(Target {
                ws_url: url.clone(),
                pid: self.pid,
                data_dir: None,
                spawned: None,
            });
        }
        self.next_dir += 1;
        let dir = std::env::temp_dir().join(format!(
            "folio-bench-{}-{}",
            std::process::id(),
            self.next_dir
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let args = vec![
            "serve".to_owned(),
            "--addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            dir.display().to_string(),
            // Nothing is evicted or snapshotted on a timer mid-measurement.
            "--evict-idle-secs".to_owned(),
            "3600".to_owned(),
        ];
        let spawned = Spawned::start(
            &self.program,
            &args,
            self.cpus.as_deref(),
            "folio serving",
            Some(dir.clone()),
        )?;
        Ok(Target {
            ws_url: match self.protocol {
                Protocol::Folio => format!("ws://{}/ws", spawned.addr),
                Protocol::Yjs => format!("ws://{}/yjs", spawned.addr),
            },
            pid: Some(spawned.pid()),
            data_dir: Some(dir),
            spawned: Some(spawned),
        })
    }

    fn echo(&self) -> anyhow::Result<Spawned> {
        let program = std::env::current_exe().context("locating this binary")?;
        Spawned::start(
            &program,
            &["echo".to_owned()],
            self.cpus.as_deref(),
            "echo listening",
            None,
        )
    }
}

impl Target {
    fn finish(self) {
        if let Some(s) = self.spawned {
            s.stop();
        }
    }
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU used by the server and by this tool over a stretch of wall time.
struct CpuMeter {
    server: Option<(String, Duration)>,
    tool: Option<Duration>,
    wall: Instant,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> Self {
        let server = server_pid
            .map(|p| p.to_string())
            .and_then(|p| cpu_time(&p).map(|t| (p, t)));
        Self {
            server,
            tool: cpu_time("self"),
            wall: Instant::now(),
        }
    }

    /// `(server, tool)` CPU use as a fraction of one core.
    fn stop(&self) -> (Option<f64>, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let server = self.server.as_ref().and_then(|(pid, before)| {
            cpu_time(pid).map(|now| now.saturating_sub(*before).as_secs_f64() / wall)
        });
        let tool = self.tool.and_then(|before| {
            cpu_time("self").map(|now| now.saturating_sub(before).as_secs_f64() / wall)
        });
        (server, tool)
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ------------------------------------------------------------------- client

fn ws_config(small: bool) -> WebSocketConfig {
    if small {
        // Thousands of idle clients: keep the tool's own memory small too.
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
    } else {
        WebSocketConfig::default()
    }
}

async fn connect(url: &str, small: bool) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        RECV_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config(small)), true),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

fn frame(kind: client_message::Kind) -> Message {
    Message::Binary(ClientMessage { kind: Some(kind) }.encode_to_vec().into())
}

async fn recv(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> anyhow::Result<server_message::Kind> {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?;
        match next {
            Some(Ok(Message::Binary(bytes))) => {
                return ServerMessage::decode(bytes)?
                    .kind
                    .ok_or_else(|| anyhow!("empty ServerMessage"))
            }
            Some(Ok(Message::Close(f))) => bail!("server closed the socket: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("server closed the socket"),
        }
    }
}

/// Connects, says Hello and subscribes to `doc`; returns the socket and the `Synced`.
async fn join(url: &str, doc: &str, small: bool) -> anyhow::Result<(Ws, v1::Synced, v1::Limits)> {
    let mut ws = connect(url, small).await?;
    let limits = hello(&mut ws).await?;
    let synced = subscribe(&mut ws, doc).await?;
    Ok((ws, synced, limits))
}

async fn hello(ws: &mut Ws) -> anyhow::Result<v1::Limits> {
    ws.send(frame(client_message::Kind::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "folio-bench".into(),
        ..Default::default()
    })))
    .await?;
    match recv(ws).await? {
        server_message::Kind::Welcome(w) => Ok(w.limits.unwrap_or_default()),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

async fn subscribe(ws: &mut Ws, doc: &str) -> anyhow::Result<v1::Synced> {
    ws.send(frame(client_message::Kind::Subscribe(v1::Subscribe {
        doc: doc.into(),
        state_vector: Bytes::new(),
        ..Default::default()
    })))
    .await?;
    loop {
        match recv(ws).await? {
            server_message::Kind::Synced(s) => return Ok(s),
            server_message::Kind::Error(e) => bail!("subscribe to {doc} refused: {e:?}"),
            _ => continue,
        }
    }
}

/// The text of a document's full state.
fn text_of(update: &[u8]) -> anyhow::Result<String> {
    let doc = new_doc_with_client_id(u64::MAX >> 12);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let update =
        yrs::Update::decode_v1(update).map_err(|e| anyhow!("state does not decode: {e}"))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| anyhow!("state does not apply: {e}"))?;
    let s = text.get_string(&doc.transact());
    Ok(s)
}

/// A fresh subscriber's view of `doc`'s text.
async fn server_text(url: &str, doc: &str) -> anyhow::Result<String> {
    let (ws, synced, _) = join(url, doc, true).await?;
    drop(ws);
    text_of(&synced.update)
}

/// FNV-1a: identifies an update's bytes between the writer and the readers.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64, for seeded choices without another dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------ numbers

/// Sorted durations with nearest-rank percentiles.
#[derive(Default, Clone)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn ms(&self, p: f64) -> f64 {
        self.pct(p).as_secs_f64() * 1e3
    }
}

/// One line of the results table.
struct Row {
    scenario: String,
    metric: String,
    value: f64,
    unit: &'static str,
    /// The baseline it is compared with, named, and its value.
    baseline: Option<(String, f64)>,
    target: Option<Goal>,
}

/// A target of issue 6: pass when `value <= limit` (or `>=` when `at_least`).
#[derive(Clone)]
struct Goal {
    text: String,
    limit: f64,
    at_least: bool,
}

impl Row {
    fn new(scenario: &str, metric: &str, value: f64, unit: &'static str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    fn vs(mut self, name: &str, baseline: f64) -> Self {
        self.baseline = Some((name.to_owned(), baseline));
        self
    }

    fn target(mut self, text: &str, limit: f64, at_least: bool) -> Self {
        self.target = Some(Goal {
            text: text.to_owned(),
            limit,
            at_least,
        });
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }

    fn pass(&self) -> Option<bool> {
        self.target.as_ref().map(|t| {
            if t.at_least {
                self.value >= t.limit
            } else {
                self.value <= t.limit
            }
        })
    }
}

// ---------------------------------------------------------------- the trace

/// The trace typed into a local doc, one update per txn.
struct Typed {
    trace: Trace,
    name: String,
    updates: Vec<Bytes>,
}

fn type_trace(trace: &Trace, client_id: u64, txns: usize) -> Vec<Bytes> {
    trace.typed_updates(&new_doc_with_client_id(client_id), txns)
}

fn load_trace(arg: &str) -> anyhow::Result<Typed> {
    let candidates = [
        PathBuf::from(arg),
        shared_trace(arg),
        shared_trace(&format!("sequential/{arg}.json.gz")),
    ];
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no trace {arg}; looked at {candidates:?}"))?;
    let trace = Trace::load(path)?;
    ensure!(
        trace.num_agents == 1 && trace.start_content.is_empty(),
        "{arg} is not a sequential trace starting empty"
    );
    let updates = type_trace(&trace, 1, trace.txns.len());
    let name = path
        .file_name()
        .map_or_else(|| arg.to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(Typed {
        trace,
        name,
        updates,
    })
}

/// The in-process floor: decode and apply each update to a fresh doc.
/// Returns seconds and the final text.
fn apply_in_process(updates: &[Bytes]) -> anyhow::Result<(f64, String)> {
    let doc = new_doc_with_client_id(2);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let start = Instant::now();
    for (i, u) in updates.iter().enumerate() {
        let update = yrs::Update::decode_v1(u).map_err(|e| anyhow!("update {i}: {e}"))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| anyhow!("update {i}: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = text.get_string(&doc.transact());
    Ok((secs, s))
}

// ---------------------------------------------------------------- baselines

struct EchoBaseline {
    small: Latencies,
    /// Round trips of a message as large as the join storm's state.
    large: Latencies,
    idle_rss_per_conn: Option<f64>,
}

/// `n` sequential round trips of `msg` through the echo server.
async fn echo_round_trips(ws: &mut Ws, n: usize, msg: &Bytes) -> anyhow::Result<Latencies> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::Binary(msg.clone())).await?;
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
                .await
                .map_err(|_| anyhow!("echo timed out"))?;
            match next {
                Some(Ok(Message::Binary(b))) => {
                    ensure!(b.len() == msg.len(), "echo changed the message");
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("echo closed"),
            }
        }
        out.push(t.elapsed());
    }
    Ok(Latencies::new(out))
}

async fn echo_baseline(
    echo: &Spawned,
    round_trips: usize,
    large_bytes: usize,
    idle_conns: usize,
) -> anyhow::Result<EchoBaseline> {
    let url = format!("ws://{}/", echo.addr);
    let mut ws = connect(&url, false).await?;
    let small_msg = Bytes::from(vec![7u8; 40]);
    let large_msg = Bytes::from(vec![7u8; large_bytes.max(1)]);
    // Warm-up, then the measured runs.
    echo_round_trips(&mut ws, 100, &small_msg).await?;
    let small = echo_round_trips(&mut ws, round_trips, &small_msg).await?;
    let large = echo_round_trips(&mut ws, 50, &large_msg).await?;
    drop(ws);

    let idle_rss_per_conn = match (idle_conns, rss_bytes(echo.pid())) {
        (0, _) | (_, None) => None,
        (n, Some(_)) => {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..16 {
                conns.push(connect(&url, true).await?);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let before = rss_bytes(echo.pid()).unwrap_or(0);
            let opened: Vec<Ws> = futures_util::stream::iter(0..n)
                .map(|_| connect(&url, true))
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = rss_bytes(echo.pid()).unwrap_or(0);
            drop(opened);
            Some(after.saturating_sub(before) as f64 / n as f64)
        }
    };
    Ok(EchoBaseline {
        small,
        large,
        idle_rss_per_conn,
    })
}

// ---------------------------------------------------------- a/b. fan-out

struct FanOut {
    writers: usize,
    readers: usize,
    rate: f64,
    sent: usize,
    latencies: Latencies,
    deliveries: usize,
    missing: usize,
    deliveries_per_sec: f64,
    server_cpu: Option<f64>,
    tool_cpu: Option<f64>,
}

/// A reader: receives until it has `expected` updates (known once the
/// writers stop) or the deadline passes; returns each update's fingerprint
/// and receipt time.
async fn read_updates(
    protocol: Protocol,
    mut rx: SplitStream<Ws>,
    capacity: usize,
    sent_total: Arc<AtomicU64>,
    writers_done: Arc<AtomicBool>,
    deadline: tokio::time::Instant,
) -> Vec<(u64, Instant)> {
    let mut got = Vec::with_capacity(capacity);
    while tokio::time::Instant::now() < deadline {
        if writers_done.load(Ordering::Acquire)
            && got.len() as u64 >= sent_total.load(Ordering::Acquire)
        {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(50), rx.next()).await;
        let msg = match next {
            Err(_) => continue,
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => break,
        };
        let at = Instant::now();
        match protocol {
            Protocol::Folio => {
                if let Ok(ServerMessage {
                    kind: Some(server_message::Kind::Update(u)),
                }) = ServerMessage::decode(msg)
                {
                    if got.len() < capacity {
                        got.push((fingerprint(&u.update), at));
                    }
                }
            }
            Protocol::Yjs => yjs::for_each_update(&msg, |fp| {
                if got.len() < capacity {
                    got.push((fp, at));
                }
            }),
        }
    }
    got
}

/// A writer: sends its frames at `rate` per second until `end`; returns the
/// fingerprint and send time of each. Frames due in the same timer tick go
/// out with one flush.
async fn write_updates(
    mut tx: SplitSink<Ws, Message>,
    frames: Arc<Vec<(u64, Message)>>,
    rate: f64,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let mut sent = Vec::with_capacity(frames.len());
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut i = 0;
    while i < frames.len() {
        let due = start + period.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        while i < frames.len() && start + period.mul_f64(i as f64) <= now {
            let (fp, msg) = &frames[i];
            sent.push((*fp, Instant::now()));
            tx.feed(msg.clone()).await?;
            i += 1;
        }
        tx.flush().await?;
    }
    Ok(sent)
}

async fn fan_out(
    protocol: Protocol,
    target: &Target,
    doc: &str,
    writer_updates: &[Arc<Vec<Bytes>>],
    readers: usize,
    rate: f64,
    secs: f64,
) -> anyhow::Result<FanOut> {
    let url = &target.ws_url;
    let sent_total = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));
    let per_writer =
        ((rate * secs) as usize + 16).min(writer_updates.first().map_or(0, |u| u.len()));
    let capacity = per_writer * writer_updates.len() + 16;
    // Joining the readers takes a moment; after that they wait for the
    // writers' `secs` and then at most DRAIN for stragglers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs) + DRAIN * 3;

    let mut reader_tasks = Vec::with_capacity(readers);
    let joined: Vec<_> = futures_util::stream::iter(0..readers)
        .map(|_| fan_out_join(protocol, url, doc))
        .buffer_unordered(32)
        .collect()
        .await;
    for j in joined {
        let (_, rx) = j?.split();
        reader_tasks.push(tokio::spawn(read_updates(
            protocol,
            rx,
            capacity,
            sent_total.clone(),
            writers_done.clone(),
            deadline,
        )));
    }
    let mut writers = Vec::with_capacity(writer_updates.len());
    for updates in writer_updates {
        let ws = fan_out_join(protocol, url, doc).await?;
        let frames: Vec<(u64, Message)> = updates
            .iter()
            .take(per_writer)
            .enumerate()
            .map(|(i, u)| {
                let msg = match protocol {
                    Protocol::Folio => frame(client_message::Kind::Update(v1::Update {
                        doc: doc.to_owned(),
                        update: u.clone(),
                        seq: i as u64 + 1,
                    })),
                    Protocol::Yjs => yjs::update_frame(u),
                };
                (fingerprint(u), msg)
            })
            .collect();
        let (tx, mut rx) = ws.split();
        // Acks (and other writers' updates) must be read, or TCP stops the writer.
        let drain = tokio::spawn(async move {
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, rx.next()).await {}
        });
        writers.push((tx, Arc::new(frames), drain));
    }
    let cpu = CpuMeter::start(target.pid);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let mut writer_tasks = Vec::with_capacity(writers.len());
    let mut drains = Vec::with_capacity(writers.len());
    for (tx, frames, drain) in writers {
        writer_tasks.push(tokio::spawn(write_updates(tx, frames, rate, start, end)));
        drains.push(drain);
    }
    let mut sends: HashMap<u64, Instant> = HashMap::with_capacity(capacity);
    let mut first_send: Option<Instant> = None;
    for w in writer_tasks {
        let sent = w.await.context("writer task")??;
        sent_total.fetch_add(sent.len() as u64, Ordering::AcqRel);
        for (fp, at) in sent {
            first_send = Some(first_send.map_or(at, |f| f.min(at)));
            sends.insert(fp, at);
        }
    }
    writers_done.store(true, Ordering::Release);
    let (server_cpu, tool_cpu) = cpu.stop();
    let sent = sent_total.load(Ordering::Acquire) as usize;
    let mut latencies = Vec::with_capacity(sent * readers);
    let mut last_receipt: Option<Instant> = None;
    let mut missing = 0;
    for r in reader_tasks {
        let got = r.await.context("reader task")?;
        missing += sent.saturating_sub(got.len());
        for (fp, at) in got {
            if let Some(sent_at) = sends.get(&fp) {
                latencies.push(at.saturating_duration_since(*sent_at));
                last_receipt = Some(last_receipt.map_or(at, |l| l.max(at)));
            }
        }
    }
    for d in drains {
        d.abort();
    }
    let deliveries = latencies.len();
    let span = match (first_send, last_receipt) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(FanOut {
        writers: writer_updates.len(),
        readers,
        rate,
        sent,
        latencies: Latencies::new(latencies),
        deliveries,
        missing,
        deliveries_per_sec: if span > 0.0 {
            deliveries as f64 / span
        } else {
            0.0
        },
        server_cpu,
        tool_cpu,
    })
}

/// A fan-out client joined to `doc`, synced, in either protocol.
async fn fan_out_join(protocol: Protocol, url: &str, doc: &str) -> anyhow::Result<Ws> {
    Ok(match protocol {
        Protocol::Folio => join(url, doc, false).await?.0,
        Protocol::Yjs => yjs::join(url, doc).await?.0,
    })
}

/// A fresh client's view of `doc`'s text, in either protocol.
async fn fan_out_text(protocol: Protocol, url: &str, doc: &str) -> anyhow::Result<String> {
    match protocol {
        Protocol::Folio => server_text(url, doc).await,
        Protocol::Yjs => yjs::server_text(url, doc).await,
    }
}

// -------------------------------------------------------- d. idle density

struct Idle {
    conns: usize,
    rss_per_conn: f64,
}

async fn idle_density(target: &Target, doc_prefix: &str, n: usize) -> anyhow::Result<Option<Idle>> {
    let Some(pid) = target.pid else {
        return Ok(None);
    };
    let url = &target.ws_url;
    // Warm up the allocator and the shards, then measure the rest.
    let mut warm = Vec::new();
    for i in 0..16 {
        warm.push(
            join(url, &format!("{doc_prefix}-{}", i % 16), true)
                .await?
                .0,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(pid).ok_or_else(|| anyhow!("no RSS for pid {pid}"))?;
    let joined: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let doc = format!("{doc_prefix}-{}", i % 16);
            async move { join(url, &doc, true).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut conns = Vec::with_capacity(n);
    for j in joined {
        conns.push(j?.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(pid).ok_or_else(|| anyhow!("no RSS for pid {pid}"))?;
    drop(conns);
    drop(warm);
    Ok(Some(Idle {
        conns: n,
        rss_per_conn: after.saturating_sub(before) as f64 / n as f64,
    }))
}

// -------------------------------------------------------- e. join storm

struct JoinStorm {
    joiners: usize,
    state_bytes: usize,
    latencies: Latencies,
    server_cpu: Option<f64>,
}

async fn join_storm(
    target: &Target,
    doc: &str,
    state: Bytes,
    expected: &str,
    m: usize,
) -> anyhow::Result<JoinStorm> {
    let url = &target.ws_url;
    // The document holds the trace's final state, sent as one update.
    let (mut ws, _, _) = join(url, doc, false).await?;
    ws.send(frame(client_message::Kind::Update(v1::Update {
        doc: doc.into(),
        update: state.clone(),
        seq: 1,
    })))
    .await?;
    loop {
        match recv(&mut ws).await? {
            server_message::Kind::Ack(_) => break,
            server_message::Kind::Error(e) => bail!("the state update was refused: {e:?}"),
            _ => continue,
        }
    }
    drop(ws);
    // Everyone connected and past Hello first; then all subscribe at once.
    let connected: Vec<_> = futures_util::stream::iter(0..m)
        .map(|_| async move {
            let mut ws = connect(url, false).await?;
            hello(&mut ws).await?;
            Ok::<_, anyhow::Error>(ws)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let go = Arc::new(tokio::sync::Barrier::new(m + 1));
    let mut tasks = Vec::with_capacity(m);
    for c in connected {
        let mut ws = c?;
        let go = go.clone();
        let doc = doc.to_owned();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let t = Instant::now();
            let synced = subscribe(&mut ws, &doc).await?;
            Ok::<_, anyhow::Error>((t.elapsed(), synced.update, ws))
        }));
    }
    let cpu = CpuMeter::start(target.pid);
    go.wait().await;
    let mut latencies = Vec::with_capacity(m);
    let mut first: Option<Bytes> = None;
    let mut sockets = Vec::with_capacity(m);
    for t in tasks {
        let (took, update, ws) = t.await.context("joiner task")??;
        latencies.push(took);
        sockets.push(ws);
        match &first {
            None => first = Some(update),
            Some(f) => ensure!(
                *f == update,
                "joiners received different states ({} vs {} bytes)",
                f.len(),
                update.len()
            ),
        }
    }
    let (server_cpu, _) = cpu.stop();
    drop(sockets);
    let got = text_of(first.as_deref().unwrap_or_default())?;
    ensure!(
        got == expected,
        "join storm: the synced text ({} chars) is not the trace's final text ({} chars)",
        got.chars().count(),
        expected.chars().count()
    );
    Ok(JoinStorm {
        joiners: m,
        state_bytes: state.len(),
        latencies: Latencies::new(latencies),
        server_cpu,
    })
}

// ---------------------------------------------------- g. durability cost

struct Durability {
    updates: usize,
    secs: f64,
    in_flight: usize,
    disk_bytes_per_update: Option<f64>,
    ack_latency: Latencies,
    server_cpu: Option<f64>,
}

async fn durability(
    target: &Target,
    doc: &str,
    updates: &[Bytes],
    expected: &str,
) -> anyhow::Result<Durability> {
    let url = &target.ws_url;
    let (ws, _, limits) = join(url, doc, false).await?;
    let in_flight = (limits.max_unacked_updates as usize).clamp(1, 1024);
    let disk_before = target.data_dir.as_deref().map(dir_bytes);
    let frames: Vec<Message> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| {
            frame(client_message::Kind::Update(v1::Update {
                doc: doc.into(),
                update: u.clone(),
                seq: i as u64 + 1,
            }))
        })
        .collect();
    let n = frames.len();
    let window = Arc::new(Semaphore::new(in_flight));
    let (mut tx, mut rx) = ws.split();
    let cpu = CpuMeter::start(target.pid);
    let sender_window = window.clone();
    let sender = tokio::spawn(async move {
        let mut sent_at = Vec::with_capacity(n);
        for (i, f) in frames.into_iter().enumerate() {
            let permit = tokio::time::timeout(RECV_TIMEOUT, sender_window.acquire())
                .await
                .map_err(|_| anyhow!("no ack for {RECV_TIMEOUT:?}"))?
                .map_err(|_| anyhow!("the ack reader stopped"))?;
            permit.forget();
            sent_at.push(Instant::now());
            tx.feed(f).await?;
            if i % 32 == 31 || sender_window.available_permits() == 0 {
                tx.flush().await?;
            }
        }
        tx.flush().await?;
        Ok::<_, anyhow::Error>((tx, sent_at))
    });
    let mut acked_at = Vec::with_capacity(n);
    while acked_at.len() < n {
        match recv(&mut rx).await {
            Ok(server_message::Kind::Ack(a)) => {
                ensure!(
                    a.seq == acked_at.len() as u64 + 1,
                    "ack {} out of order",
                    a.seq
                );
                acked_at.push(Instant::now());
                window.add_permits(1);
            }
            Ok(server_message::Kind::Error(e)) => {
                window.close();
                bail!("update refused: {e:?}");
            }
            Ok(_) => continue,
            Err(e) => {
                window.close();
                return Err(e);
            }
        }
    }
    let (server_cpu, _) = cpu.stop();
    let (_tx, sent_at) = sender.await.context("sender task")??;
    let disk_after = target.data_dir.as_deref().map(dir_bytes);
    let first = *sent_at.first().context("nothing sent")?;
    let last = *acked_at.last().context("nothing acked")?;
    let lat = acked_at
        .iter()
        .zip(&sent_at)
        .map(|(a, s)| a.saturating_duration_since(*s))
        .collect();
    let got = server_text(url, doc).await?;
    ensure!(
        got == expected,
        "durability: the server's text ({} chars) is not the trace's ({} chars)",
        got.chars().count(),
        expected.chars().count()
    );
    Ok(Durability {
        updates: n,
        secs: last.saturating_duration_since(first).as_secs_f64(),
        in_flight,
        disk_bytes_per_update: match (disk_before, disk_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / n as f64),
            _ => None,
        },
        ack_latency: Latencies::new(lat),
        server_cpu,
    })
}

// ----------------------------------------------------------------- the run

fn run(args: RunArgs) -> anyhow::Result<()> {
    let sizes = Sizes::of(args.profile);
    let wanted = |c: char| {
        args.scenarios.as_ref().map_or_else(
            || c != 'b' || !sizes.ramp.is_empty(),
            |list| list.contains(&c),
        )
    };
    let started = Instant::now();
    eprintln!(
        "folio-bench: profile {:?}, protocol {:?}, seed {}, trace {}",
        args.profile, args.protocol, args.seed, args.trace
    );
    let typed = load_trace(&args.trace)?;
    let mut servers = Servers::from_args(&args)?;
    let mut seed = args.seed;
    let run_id = splitmix(&mut seed) % 1_000_000;
    let mut rows: Vec<Row> = Vec::new();
    let mut plots: Vec<(String, Latencies)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let rt = runtime()?;

    // The final state of the trace: the join storm's document.
    let (_, final_text) = apply_in_process(&typed.updates)?;
    ensure!(
        final_text == typed.trace.end_content,
        "typing the trace locally does not give its final text"
    );
    let full_state = {
        let doc = new_doc_with_client_id(1);
        for u in &typed.updates {
            let update = yrs::Update::decode_v1(u).map_err(|e| anyhow!("{e}"))?;
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| anyhow!("{e}"))?;
        }
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Bytes::from(state)
    };

    // Baselines: in-process apply and the raw WebSocket echo.
    let typing_n = match sizes.typing_txns {
        0 => typed.updates.len(),
        n => n.min(typed.updates.len()),
    };
    let (apply_secs, _) = apply_in_process(&typed.updates[..typing_n])?;
    let apply_rate = typing_n as f64 / apply_secs.max(1e-9);
    let echo = servers.echo()?;
    let idle_n = sizes.idle_conns.min(fd_budget());
    let echo_base = rt.block_on(echo_baseline(
        &echo,
        sizes.echo_round_trips,
        full_state.len(),
        if wanted('d') && args.protocol == Protocol::Folio {
            idle_n
        } else {
            0
        },
    ))?;
    echo.stop();
    let echo_p50 = echo_base.small.ms(50.0);
    let echo_p99 = echo_base.small.ms(99.0);
    rows.push(Row::new(
        "baseline",
        "in-process apply",
        apply_rate,
        "updates/s",
    ));
    rows.push(Row::new(
        "baseline",
        "WS echo round trip p50",
        echo_p50,
        "ms",
    ));
    rows.push(Row::new(
        "baseline",
        "WS echo round trip p99",
        echo_p99,
        "ms",
    ));
    rows.push(Row::new(
        "baseline",
        &format!("WS echo round trip p99, {} B", full_state.len()),
        echo_base.large.ms(99.0),
        "ms",
    ));
    if let Some(rss) = echo_base.idle_rss_per_conn {
        rows.push(Row::new(
            "baseline",
            "echo server RSS per idle connection",
            rss / 1024.0,
            "KiB",
        ));
    }
    plots.push(("WS echo round trip".into(), echo_base.small.clone()));

    let yjs = args.protocol == Protocol::Yjs;
    let fan_out_label = if yjs {
        "a. fan-out (y-websocket)"
    } else {
        "a. fan-out"
    };
    // a. Hot-document fan-out.
    if wanted('a') {
        let writer = Arc::new(typed.updates.clone());
        for &rate in &sizes.rates {
            let target = servers.get()?;
            let doc = format!("bench-{run_id}-fanout-{rate}");
            let f = rt.block_on(fan_out(
                args.protocol,
                &target,
                &doc,
                std::slice::from_ref(&writer),
                sizes.readers,
                rate,
                sizes.fan_out_secs,
            ))?;
            // One writer typed the trace's first `sent` txns: check the server has them.
            let expected = typed.trace.text_after(f.sent);
            let got = rt.block_on(fan_out_text(args.protocol, &target.ws_url, &doc))?;
            target.finish();
            ensure!(
                got == expected,
                "fan-out: the server's text does not match the trace after {} txns",
                f.sent
            );
            // Nothing overloads the server here: every reader must get every update.
            ensure!(
                f.missing == 0,
                "fan-out at {rate}/s: {} of {} deliveries never arrived",
                f.missing,
                f.sent * f.readers
            );
            push_fan_out(&mut rows, &f, fan_out_label, echo_p50, echo_p99);
            let limit = if rate <= 100.0 { 0.6 } else { 2.0 };
            if let Some(r) = rows
                .iter_mut()
                .rev()
                .find(|r| r.metric.ends_with("latency p99"))
            {
                r.target = Some(Goal {
                    text: format!(
                        "1 writer at {rate}/s, {} readers: p99 ≤ {limit} ms",
                        sizes.readers
                    ),
                    limit,
                    at_least: false,
                });
            }
            plots.push((
                format!("fan-out {rate}/s × {} readers", sizes.readers),
                f.latencies.clone(),
            ));
        }
    }

    // b. The highest rate one document sustains with fan-out p99 under 50 ms.
    if wanted('b') {
        let writer = Arc::new(typed.updates.clone());
        let mut best: Option<FanOut> = None;
        let ramp = if sizes.ramp.is_empty() {
            vec![5000.0]
        } else {
            sizes.ramp.clone()
        };
        let secs = if sizes.ramp_secs > 0.0 {
            sizes.ramp_secs
        } else {
            2.0
        };
        for rate in ramp {
            let target = servers.get()?;
            let doc = format!("bench-{run_id}-ramp-{rate}");
            let f = rt.block_on(fan_out(
                args.protocol,
                &target,
                &doc,
                std::slice::from_ref(&writer),
                sizes.readers,
                rate,
                secs,
            ))?;
            target.finish();
            let ok = f.missing == 0 && f.latencies.pct(99.0) < SUSTAINED_P99;
            eprintln!(
                "  ramp {rate}/s: {:.0} deliveries/s, p99 {:.2} ms, missing {}, server CPU {}, tool CPU {}",
                f.deliveries_per_sec,
                f.latencies.ms(99.0),
                f.missing,
                pct(f.server_cpu),
                pct(f.tool_cpu)
            );
            if !ok {
                notes.push(format!(
                    "b: at {rate} keystrokes/s p99 was {:.1} ms with {} deliveries missing (server CPU {}, tool CPU {})",
                    f.latencies.ms(99.0),
                    f.missing,
                    pct(f.server_cpu),
                    pct(f.tool_cpu)
                ));
                break;
            }
            best = Some(f);
        }
        let value = best.as_ref().map_or(0.0, |f| f.deliveries_per_sec);
        let mut row = Row::new(
            if yjs {
                "b. max throughput (y-websocket)"
            } else {
                "b. max throughput"
            },
            "deliveries/s with p99 < 50 ms",
            value,
            "/s",
        )
        .target("≥ 200,000 deliveries/s with p99 < 50 ms", 200_000.0, true);
        if let Some(f) = &best {
            row.metric = format!(
                "deliveries/s with p99 < 50 ms (1 writer at {}/s, {} readers; server CPU {}, tool CPU {})",
                f.rate,
                f.readers,
                pct(f.server_cpu),
                pct(f.tool_cpu)
            );
        }
        rows.push(row);
    }

    if yjs {
        for (c, why) in [
            ('d', "runs over the Folio protocol only"),
            ('e', "runs over the Folio protocol only"),
            ('g', "not measurable over y-websocket (no acks)"),
        ] {
            if wanted(c) {
                let line = format!("{c}: skipped with --protocol yjs, {why}");
                eprintln!("  {line}");
                notes.push(line);
            }
        }
    }
    // d. Idle density.
    if wanted('d') && !yjs {
        let target = servers.get()?;
        let idle = rt.block_on(idle_density(
            &target,
            &format!("bench-{run_id}-idle"),
            idle_n,
        ))?;
        target.finish();
        match idle {
            Some(i) => {
                let mut row = Row::new(
                    "d. idle density",
                    &format!(
                        "server RSS per idle subscribed connection ({} conns)",
                        i.conns
                    ),
                    i.rss_per_conn / 1024.0,
                    "KiB",
                )
                .target("≤ 6 KiB per idle connection", 6.0, false);
                if let Some(b) = echo_base.idle_rss_per_conn {
                    row = row.vs("echo server", b / 1024.0);
                }
                rows.push(row);
            }
            None => {
                notes.push("d: skipped, the server's pid is unknown (give --server-pid)".into())
            }
        }
    }

    // e. Join storm.
    if wanted('e') && !yjs {
        let target = servers.get()?;
        let j = rt.block_on(join_storm(
            &target,
            &format!("bench-{run_id}-join"),
            full_state.clone(),
            &typed.trace.end_content,
            sizes.joiners,
        ))?;
        target.finish();
        let large = echo_base.large.ms(99.0);
        rows.push(
            Row::new(
                "e. join storm",
                &format!(
                    "time to Synced p50 ({} joiners, {} B state)",
                    j.joiners, j.state_bytes
                ),
                j.latencies.ms(50.0),
                "ms",
            )
            .vs("echo of the state", echo_base.large.ms(50.0)),
        );
        rows.push(
            Row::new(
                "e. join storm",
                &format!("time to Synced p99 (server CPU {})", pct(j.server_cpu)),
                j.latencies.ms(99.0),
                "ms",
            )
            .vs("echo of the state", large)
            .target(
                &format!("{} joiners: p99 ≤ 100 ms", j.joiners),
                100.0,
                false,
            ),
        );
        plots.push((format!("join storm × {}", j.joiners), j.latencies.clone()));
    }

    // g. Durability cost.
    if wanted('g') && !yjs {
        let target = servers.get()?;
        let expected = if typing_n == typed.updates.len() {
            typed.trace.end_content.clone()
        } else {
            typed.trace.text_after(typing_n)
        };
        let d = rt.block_on(durability(
            &target,
            &format!("bench-{run_id}-typing"),
            &typed.updates[..typing_n],
            &expected,
        ))?;
        target.finish();
        let rate = d.updates as f64 / d.secs.max(1e-9);
        rows.push(
            Row::new(
                "g. durability",
                &format!(
                    "acked updates/s ({} updates, {} in flight, server CPU {})",
                    d.updates,
                    d.in_flight,
                    pct(d.server_cpu)
                ),
                rate,
                "/s",
            )
            .vs("in-process apply", apply_rate)
            .target("≥ 100,000 acked updates/s", 100_000.0, true),
        );
        rows.push(
            Row::new(
                "g. durability",
                "time over in-process apply",
                apply_rate / rate.max(1e-9),
                "×",
            )
            .target("≤ 3× the in-process apply", 3.0, false),
        );
        rows.push(Row::new(
            "g. durability",
            "ack latency p99",
            d.ack_latency.ms(99.0),
            "ms",
        ));
        if let Some(b) = d.disk_bytes_per_update {
            let update_bytes = typed.updates[..typing_n]
                .iter()
                .map(Bytes::len)
                .sum::<usize>() as f64
                / typing_n as f64;
            rows.push(
                Row::new("g. durability", "disk bytes per update", b, "B")
                    .vs("update size", update_bytes),
            );
        }
    }
    notes.push("c (many documents) and f (cold load) are not measured yet".into());

    drop(rt);
    let total = started.elapsed().as_secs_f64();
    let report = Report {
        profile: args.profile,
        seed: args.seed,
        trace: typed.name.clone(),
        rows,
        notes,
        total_secs: total,
    };
    let out = args.out.clone().unwrap_or_else(default_out);
    report.write(&out, &plots)?;
    print!("{}", report.markdown());
    for r in &report.rows {
        if let (Some(t), Some(pass)) = (&r.target, r.pass()) {
            println!(
                "{} {}: {} (measured {})",
                if pass { "PASS" } else { "FAIL" },
                r.scenario,
                t.text,
                fmt(r.value, r.unit)
            );
        }
    }
    eprintln!(
        "folio-bench: done in {total:.1} s; results in {}",
        out.display()
    );
    Ok(())
}

fn push_fan_out(rows: &mut Vec<Row>, f: &FanOut, scenario: &str, echo_p50: f64, echo_p99: f64) {
    let what = format!(
        "{} writer at {}/s, {} readers",
        f.writers, f.rate, f.readers
    );
    rows.push(
        Row::new(
            scenario,
            &format!("{what}: latency p50"),
            f.latencies.ms(50.0),
            "ms",
        )
        .vs("echo p50", echo_p50),
    );
    rows.push(Row::new(
        scenario,
        &format!("{what}: latency p95"),
        f.latencies.ms(95.0),
        "ms",
    ));
    rows.push(Row::new(
        scenario,
        &format!("{what}: latency max"),
        f.latencies.ms(100.0),
        "ms",
    ));
    rows.push(Row::new(
        scenario,
        &format!(
            "{what}: deliveries/s ({} sent, {} delivered, {} missing; server CPU {}, tool CPU {})",
            f.sent,
            f.deliveries,
            f.missing,
            pct(f.server_cpu),
            pct(f.tool_cpu)
        ),
        f.deliveries_per_sec,
        "/s",
    ));
    rows.push(
        Row::new(
            scenario,
            &format!("{what}: latency p99"),
            f.latencies.ms(99.0),
            "ms",
        )
        .vs("echo p99", echo_p99),
    );
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.0}%", v * 100.0))
}

fn fmt(v: f64, unit: &str) -> String {
    if v >= 1000.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.3} {unit}")
    }
}

/// File descriptors this process may still open, less a margin; bounds the
/// idle connections (the server, our child, inherits the same limit).
fn fd_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    soft.saturating_sub(256).max(16)
}

fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-results")
}

struct Report {
    profile: Profile,
    seed: u64,
    trace: String,
    rows: Vec<Row>,
    notes: Vec<String>,
    total_secs: f64,
}

impl Report {
    fn machine() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown CPU", str::trim)
            .to_owned();
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        format!("{model}, {cores} cores available to the tool")
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "\n### folio-bench ({:?} profile, seed {}, trace {})\n\nMachine: {}. Run took {:.1} s.\n\n\
             | scenario | metric | value | baseline | ratio | target | pass |\n\
             | --- | --- | ---: | --- | ---: | --- | --- |\n",
            self.profile,
            self.seed,
            self.trace,
            Self::machine(),
            self.total_secs
        );
        for r in &self.rows {
            let baseline = r
                .baseline
                .as_ref()
                .map_or_else(String::new, |(n, b)| format!("{n}: {}", fmt(*b, r.unit)));
            let ratio = r.ratio().map_or_else(String::new, |x| format!("{x:.2}×"));
            let target = r
                .target
                .as_ref()
                .map_or_else(String::new, |t| t.text.clone());
            let pass = match r.pass() {
                Some(true) => "pass",
                Some(false) => "**fail**",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.metric,
                fmt(r.value, r.unit),
                baseline,
                ratio,
                target,
                pass
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("\n- {n}"));
        }
        out.push('\n');
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "profile": format!("{:?}", self.profile).to_lowercase(),
            "seed": self.seed,
            "trace": self.trace,
            "machine": Self::machine(),
            "total_secs": self.total_secs,
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.as_ref().map(|(n, b)| json!({"name": n, "value": b})),
                "ratio": r.ratio(),
                "target": r.target.as_ref().map(|t| json!({"text": t.text, "limit": t.limit, "at_least": t.at_least})),
                "pass": r.pass(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    fn write(&self, dir: &Path, plots: &[(String, Latencies)]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(dir.join("folio-bench.json"), json + "\n")?;
        std::fs::write(dir.join("folio-bench.md"), self.markdown())?;
        std::fs::write(dir.join("folio-bench-latency.svg"), latency_svg(plots))?;
        Ok(())
    }
}

/// Latency distributions as an SVG plot: percentile (x) against latency
/// (y, log scale), one line per series.
fn latency_svg(series: &[(String, Latencies)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 60.0;
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (lo, hi) = (0.01_f64, 1000.0_f64); // ms
    let y = |ms: f64| {
        let f = (ms.clamp(lo, hi).log10() - lo.log10()) / (hi.log10() - lo.log10());
        H - PAD - f * (H - 2.0 * PAD)
    };
    // x: percentile on a "nines" scale, so the tail gets room.
    let x = |p: f64| {
        let nines = -(1.0 - p.min(0.9999)).log10() / 4.0;
        PAD + nines * (W - 2.0 * PAD)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for ms in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
        let y0 = y(ms);
        svg.push_str(&format!(
            "<line x1=\"{PAD}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{:.1}\">{ms} ms</text>\n",
            W - PAD,
            y0 + 4.0,
        ));
    }
    for (p, label) in [
        (0.0, "p0"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        svg.push_str(&format!(
            "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{PAD}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x0:.1}\" y=\"{}\">{label}</text>\n",
            H - PAD,
            H - PAD + 15.0,
            x0 = x(p)
        ));
    }
    for (i, (name, lat)) in series.iter().enumerate() {
        if lat.0.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let n = lat.0.len();
        let step = (n / 400).max(1);
        let points: Vec<String> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| {
                let p = k as f64 / n as f64;
                format!("{:.1},{:.1}", x(p), y(lat.0[k].as_secs_f64() * 1e3))
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>\n",
            points.join(" "),
            PAD + 10.0,
            PAD + 14.0 * i as f64,
            xml_escape(name)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"20\" font-size=\"13\">folio-bench latency by percentile (log scale)</text>\n</svg>\n",
        PAD
    ));
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
