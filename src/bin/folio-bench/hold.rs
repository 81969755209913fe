//! `folio-bench hold`: holds many Folio connections open, each subscribed to
//! a document and reading everything it is sent (answering the server's
//! pings, as any WebSocket client does), until the server closes them.
//!
//! It runs as a process of its own, so that a test can SIGSTOP it (a
//! consumer that stalls outright). On stdout:
//! `holding N` once all N are subscribed, `resynced DOC_SEQ` for each
//! `Resynced` message, `closed CODE` for each connection the server closes.
//!
//! Scenario h ([`run`]) holds thousands of such connections from the tool
//! itself, against a server with the default limits.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use folio::client::{ClientError, Connection};
use folio::protocol::{client_message, server_message, v1};
use futures_util::StreamExt;

use super::report::Row;

/// Arguments of `folio-bench hold`.
#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// The server's `/ws` URL (loopback only).
    #[arg(long)]
    pub url: String,
    /// Document ids are `<doc>-<i mod docs>`, or `<doc>` with `--docs 1`.
    #[arg(long, default_value = "hold")]
    pub doc: String,
    #[arg(long, default_value_t = 1)]
    pub docs: usize,
    /// Connections to hold.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Connections opened at once while joining.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// The document of connection `i`.
pub fn doc_of(args: &HoldArgs, i: usize) -> String {
    if args.docs <= 1 {
        args.doc.clone()
    } else {
        format!("{}-{}", args.doc, i % args.docs)
    }
}

/// Connects, says `Hello` and subscribes to `doc`.
pub async fn join(url: &str, name: &str, doc: &str) -> anyhow::Result<Connection> {
    let mut conn = Connection::connect(url, name)
        .await
        .with_context(|| format!("connecting {name}"))?;
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: doc.to_owned(),
        ..Default::default()
    }))
    .await?;
    loop {
        match conn.recv().await? {
            server_message::Kind::Synced(_) => return Ok(conn),
            server_message::Kind::Error(e) => anyhow::bail!("{name}: subscribe refused: {e:?}"),
            _ => continue,
        }
    }
}

/// Reads until the server closes the connection; reports what it saw.
pub async fn read_until_closed(mut conn: Connection) {
    loop {
        match conn.recv_within(Duration::from_secs(3600)).await {
            Ok(Some(server_message::Kind::Resynced(r))) => say(&format!("resynced {}", r.seq)),
            Ok(_) => {}
            Err(ClientError::Closed { code, .. }) => {
                say(&format!("closed {code}"));
                return;
            }
            Err(e) => {
                say(&format!("closed 1006 {e}"));
                return;
            }
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `folio-bench hold`.
pub fn hold(args: HoldArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.url.starts_with("ws://127.0.0.1:") || args.url.starts_with("ws://localhost:"),
        "--url must be a loopback ws:// URL, got {}",
        args.url
    );
    super::raise_fd_limit();
    super::runtime()?.block_on(async {
        let joined: Vec<anyhow::Result<Connection>> = futures_util::stream::iter(0..args.conns)
            .map(|i| {
                let (url, doc) = (args.url.clone(), doc_of(&args, i));
                async move { join(&url, &format!("hold-{i}"), &doc).await }
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
        let mut readers = Vec::with_capacity(joined.len());
        for conn in joined {
            readers.push(tokio::spawn(read_until_closed(conn?)));
        }
        say(&format!("holding {}", readers.len()));
        for reader in readers {
            let _ = reader.await;
        }
        Ok(())
    })
}

/// What scenario h measured.
pub struct ConnLoad {
    pub conns: usize,
    pub docs: usize,
    pub rss_before: u64,
    pub rss_held: u64,
    pub rss_after_edits: u64,
    pub delivered: u64,
    pub expected: u64,
    /// Whether one connection past `--max-connections` got HTTP 503.
    pub over_cap_refused: bool,
    /// Whether a held connection still answered a `Ping` after that.
    pub held_ones_work: bool,
    pub join_secs: f64,
}

/// Scenario h: holds `conns` connections on a server whose
/// `--max-connections` is exactly `conns + docs` (the readers plus one
/// writer per document), all subscribed (spread over `docs` documents) and
/// reading; measures the server's RSS; checks that one more connection is
/// refused with 503 while the held ones keep working; then has each writer
/// type `updates` keystrokes and counts the deliveries.
pub async fn load_run(
    url: &str,
    pid: u32,
    conns: usize,
    docs: usize,
    updates: usize,
) -> anyhow::Result<ConnLoad> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let rss =
        || super::process::rss_bytes(pid).ok_or_else(|| anyhow::anyhow!("no RSS for pid {pid}"));
    let doc = format!("hold-{}", std::process::id());
    let args = HoldArgs {
        url: url.to_owned(),
        doc: doc.clone(),
        docs,
        conns,
        concurrency: 64,
    };
    // The writers first: they also warm up the shards and the allocator.
    let mut writers = Vec::with_capacity(docs);
    for d in 0..docs {
        writers.push(
            folio::client::Editor::join(url, &doc_of(&args, d), &format!("writer-{d}"))
                .await
                .context("writer join")?,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss()?;
    let started = std::time::Instant::now();
    let joined: Vec<anyhow::Result<Connection>> = futures_util::stream::iter(0..conns)
        .map(|i| {
            let (url, doc) = (url.to_owned(), doc_of(&args, i));
            async move { join(&url, &format!("held-{i}"), &doc).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(conns);
    for conn in joined {
        let mut conn = conn?;
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(msg) = conn.recv_within(Duration::from_secs(3600)).await {
                if let Some(server_message::Kind::Update(_)) = msg {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held = rss()?;

    // Overload: the cap is full, so one more is refused before any upgrade.
    let over_cap_refused = matches!(
        tokio_tungstenite::connect_async(url).await,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status().as_u16() == 503
    );
    let writer = &mut writers[0];
    writer
        .conn_mut()?
        .send(client_message::Kind::Ping(v1::Ping { nonce: 7 }))
        .await?;
    let mut held_ones_work = false;
    while let Some(msg) = writer
        .conn_mut()?
        .recv_within(Duration::from_secs(20))
        .await?
    {
        if let server_message::Kind::Pong(p) = msg {
            held_ones_work = p.nonce == 7;
            break;
        }
    }

    // Every writer types `updates` keystrokes, 20 a second each.
    let per_doc: Vec<usize> = (0..docs)
        .map(|d| (0..conns).filter(|i| i % docs.max(1) == d).count())
        .collect();
    let expected: u64 = per_doc.iter().map(|n| (n * updates) as u64).sum();
    let typing = writers.into_iter().map(|mut w| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..updates {
            tick.tick().await;
            let len = w.len();
            w.type_patches(&[(len, 0, "x")]).await?;
        }
        w.wait_acked().await?;
        anyhow::Ok(w)
    });
    let writers = futures_util::future::try_join_all(typing).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after_edits = rss()?;
    for r in &readers {
        r.abort();
    }
    drop(writers);
    Ok(ConnLoad {
        conns,
        docs,
        rss_before,
        rss_held,
        rss_after_edits,
        delivered: delivered.load(Ordering::Relaxed),
        expected,
        over_cap_refused,
        held_ones_work,
        join_secs,
    })
}

/// Scenario h: [`load_run`] on a fresh server with the default limits, a
/// connection cap of exactly the connections held, and no per-IP cap (every
/// client here is 127.0.0.1).
pub fn run(bench: &mut super::Bench, held_conns: Option<usize>) -> anyhow::Result<()> {
    let conns = held_conns
        .unwrap_or(bench.sizes.held_conns)
        .min(super::process::fd_budget() / 2);
    let docs = bench.sizes.held_docs.clamp(1, conns.max(1));
    let cap = (conns + docs).to_string();
    let target = bench.servers.get_with(
        3600,
        &["--max-connections", &cap, "--max-connections-per-ip", "0"],
    )?;
    let Some(pid) = target.pid else {
        target.finish();
        bench
            .notes
            .push("h: skipped, the server's pid is unknown (give --server-pid)".into());
        return Ok(());
    };
    let h = bench
        .rt
        .block_on(load_run(&target.ws_url, pid, conns, docs, 20));
    target.finish();
    let h = h?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let scenario = "h. connections held";
    bench.rows.push(Row::new(
        scenario,
        &format!(
            "server RSS with {} connections subscribed and reading ({} docs; {:.1} MiB before)",
            h.conns,
            h.docs,
            mib(h.rss_before)
        ),
        mib(h.rss_held),
        "MiB",
    ));
    bench.rows.push(Row::new(
        scenario,
        "server RSS per held connection",
        h.rss_held.saturating_sub(h.rss_before) as f64 / h.conns.max(1) as f64 / 1024.0,
        "KiB",
    ));
    bench.rows.push(Row::new(
        scenario,
        &format!("server RSS after {} deliveries", h.expected),
        mib(h.rss_after_edits),
        "MiB",
    ));
    bench.rows.push(Row::new(
        scenario,
        "time to open and subscribe them all",
        h.join_secs,
        "s",
    ));
    bench.rows.push(
        Row::new(
            scenario,
            "updates delivered to held connections",
            h.delivered as f64 * 100.0 / h.expected.max(1) as f64,
            "%",
        )
        .target("every one", 100.0, true),
    );
    anyhow::ensure!(
        h.delivered == h.expected,
        "h: {} of {} updates delivered to held connections",
        h.delivered,
        h.expected
    );
    anyhow::ensure!(
        h.over_cap_refused,
        "h: a connection over the cap was not refused with 503"
    );
    anyhow::ensure!(
        h.held_ones_work,
        "h: a held connection stopped answering at the cap"
    );
    Ok(())
}
