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
//! c. many documents, d. idle density, e. join storm, f. cold load (the
//! spawned server evicts after 1 s idle), g. durability cost; and h.
//! connections held (issue 5: thousands of subscribed, reading connections
//! under the default limits: server RSS, the connection cap's 503, every
//! update delivered).
//!
//! Layout: this file parses the arguments and runs the scenarios in turn;
//! `fanout.rs` (a, b, c), `idle.rs` (d), `join.rs` (e), `cold.rs` (f) and
//! `durability.rs` (g), `hold.rs` (h)
//! each measure one scenario and add its rows; `baseline.rs` measures the
//! limits, `process.rs` spawns and watches servers, `wire.rs` speaks the
//! protocol, `report.rs` writes the results.
//!
//! `--protocol yjs` runs the fan-out scenarios (a, b, c) over plain y-websocket
//! instead (see `folio-bench/yjs.rs`), so any Yjs server can be measured the
//! same way: `--url ws://127.0.0.1:1234/yjs` is then the y-websocket base URL
//! (clients join `<url>/<doc>`); without `--url`, the spawned Folio's `/yjs`.
//! Scenarios needing acks or the Folio protocol are skipped with a note.
//!
//! Results go to `target/bench-results/folio-bench.{json,md}` with a latency
//! plot `folio-bench-latency.svg`. Each target prints pass or fail; failing
//! targets never fail the run. The exit code is non-zero only when a result
//! is wrong (a text that does not match the trace) or the run could not be made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use folio::client::new_doc_with_client_id;
use folio::config::ServeConfig;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use baseline::{apply_in_process, echo_baseline, load_trace, EchoBaseline, Typed};
use process::{fd_budget, Servers};
use report::{default_out, fmt, Latencies, Report, Row};
use wire::splitmix;

mod baseline;
mod cold;
mod durability;
mod fanout;
mod hold;
mod idle;
mod join;
mod process;
mod report;
mod wire;
mod yjs;

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
    /// Hold Folio connections open, subscribed and reading, until the
    /// server closes them (for stalled-consumer tests and load runs).
    Hold(hold::HoldArgs),
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
    /// Folio's protocol, or plain y-websocket (fan-out scenarios a, b and c only).
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
    /// Connections held in scenario h (default: the profile's; 5,000 in full).
    #[arg(long)]
    held_conns: Option<usize>,
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
    /// Configurations of scenario c, each on its own server.
    many_docs: Vec<ManyDocs>,
    idle_conns: usize,
    /// Connections held in scenario h, over how many documents.
    held_conns: usize,
    held_docs: usize,
    joiners: usize,
    /// Documents evicted and reloaded in scenario f.
    cold_docs: usize,
    /// Trace txns typed in scenario g (0: the whole trace).
    typing_txns: usize,
    echo_round_trips: usize,
}

/// Scenario c: `docs` documents, each with `writers` writers at `rate`
/// keystrokes/s and `readers` readers.
#[derive(Clone, Copy)]
struct ManyDocs {
    docs: usize,
    writers: usize,
    readers: usize,
    rate: f64,
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
                many_docs: vec![ManyDocs {
                    docs: 50,
                    writers: 1,
                    readers: 3,
                    rate: 10.0,
                }],
                idle_conns: 1000,
                held_conns: 500,
                held_docs: 10,
                joiners: 500,
                cold_docs: 10,
                typing_txns: 20_000,
                echo_round_trips: 2000,
            },
            Profile::Full => Self {
                fan_out_secs: 10.0,
                readers: 100,
                rates: vec![100.0, 1000.0],
                ramp: vec![1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 8000.0, 12_000.0],
                ramp_secs: 4.0,
                many_docs: vec![
                    ManyDocs {
                        docs: 100,
                        writers: 2,
                        readers: 8,
                        rate: 10.0,
                    },
                    ManyDocs {
                        docs: 1000,
                        writers: 1,
                        readers: 3,
                        rate: 5.0,
                    },
                ],
                idle_conns: 10_000,
                held_conns: 5_000,
                held_docs: 50,
                joiners: 500,
                cold_docs: 100,
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
        Some(Internal::Hold(args)) => hold::hold(args),
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

/// Raises the open-file soft limit to the hard limit: thousands of
/// connections need as many descriptors, here and in the spawned server
/// (which inherits it; it raises its own too). Beyond the hard limit, raise
/// `ulimit -Hn` first.
fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
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

// ----------------------------------------------------------------- the run

/// What the scenarios share: the settings, the trace, the baselines measured
/// at the start, and the results so far. Each scenario module adds its rows.
struct Bench {
    protocol: Protocol,
    sizes: Sizes,
    rt: tokio::runtime::Runtime,
    servers: Servers,
    typed: Typed,
    /// Seeded; keeps document names apart between runs against one server.
    run_id: u64,
    /// The trace's final state as one update: the join storm's document.
    full_state: Bytes,
    /// In-process decode and apply of the first `typing_n` updates, per second.
    apply_rate: f64,
    /// Trace txns typed in scenario g.
    typing_n: usize,
    echo: EchoBaseline,
    /// Idle connections scenario d opens (bounded by file descriptors).
    idle_n: usize,
    rows: Vec<Row>,
    plots: Vec<(String, Latencies)>,
    notes: Vec<String>,
}

impl Bench {
    /// Loads the trace and measures the baselines. `idle_baseline`: also
    /// measure the echo server's RSS per idle connection (for scenario d).
    fn start(args: &RunArgs, sizes: Sizes, idle_baseline: bool) -> anyhow::Result<Self> {
        let typed = load_trace(&args.trace)?;
        let servers = Servers::from_args(args)?;
        let mut seed = args.seed;
        let run_id = splitmix(&mut seed) % 1_000_000;
        let rt = runtime()?;

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
        let echo_server = servers.echo()?;
        let idle_n = sizes.idle_conns.min(fd_budget());
        let echo = rt.block_on(echo_baseline(
            &echo_server,
            sizes.echo_round_trips,
            full_state.len(),
            if idle_baseline { idle_n } else { 0 },
        ))?;
        echo_server.stop();
        let mut rows = vec![
            Row::new("baseline", "in-process apply", apply_rate, "updates/s"),
            Row::new(
                "baseline",
                "WS echo round trip p50",
                echo.small.ms(50.0),
                "ms",
            ),
            Row::new(
                "baseline",
                "WS echo round trip p99",
                echo.small.ms(99.0),
                "ms",
            ),
            Row::new(
                "baseline",
                &format!("WS echo round trip p99, {} B", full_state.len()),
                echo.large.ms(99.0),
                "ms",
            ),
        ];
        if let Some(rss) = echo.idle_rss_per_conn {
            rows.push(Row::new(
                "baseline",
                "echo server RSS per idle connection",
                rss / 1024.0,
                "KiB",
            ));
        }
        let plots = vec![("WS echo round trip".into(), echo.small.clone())];
        Ok(Self {
            protocol: args.protocol,
            sizes,
            rt,
            servers,
            typed,
            run_id,
            full_state,
            apply_rate,
            typing_n,
            echo,
            idle_n,
            rows,
            plots,
            notes: Vec::new(),
        })
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let sizes = Sizes::of(args.profile);
    let ramp = !sizes.ramp.is_empty();
    let wanted = |c: char| {
        args.scenarios
            .as_ref()
            .map_or_else(|| c != 'b' || ramp, |list| list.contains(&c))
    };
    raise_fd_limit();
    let started = Instant::now();
    eprintln!(
        "folio-bench: profile {:?}, protocol {:?}, seed {}, trace {}",
        args.profile, args.protocol, args.seed, args.trace
    );
    let yjs = args.protocol == Protocol::Yjs;
    let mut bench = Bench::start(&args, sizes, wanted('d') && !yjs)?;

    if wanted('a') {
        fanout::hot_document(&mut bench)?;
    }
    if wanted('b') {
        fanout::max_throughput(&mut bench)?;
    }
    if wanted('c') {
        fanout::many_documents(&mut bench)?;
    }
    if yjs {
        for (c, why) in [
            ('d', "runs over the Folio protocol only"),
            ('e', "runs over the Folio protocol only"),
            ('f', "runs over the Folio protocol only"),
            ('g', "not measurable over y-websocket (no acks)"),
            ('h', "runs over the Folio protocol only"),
        ] {
            if wanted(c) {
                let line = format!("{c}: skipped with --protocol yjs, {why}");
                eprintln!("  {line}");
                bench.notes.push(line);
            }
        }
    } else {
        if wanted('d') {
            idle::run(&mut bench)?;
        }
        if wanted('e') {
            join::run(&mut bench)?;
        }
        if wanted('f') {
            cold::run(&mut bench)?;
        }
        if wanted('g') {
            durability::run(&mut bench)?;
        }
        if wanted('h') {
            hold::run(&mut bench, args.held_conns)?;
        }
    }

    let Bench {
        rt,
        typed,
        rows,
        plots,
        notes,
        ..
    } = bench;
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
