//! Scenario e: join storm, many clients subscribing at once to a large document.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use folio::protocol::{client_message, server_message, v1};
use futures_util::{SinkExt, StreamExt};

use super::process::{CpuMeter, Target};
use super::report::{pct, Latencies, Row};
use super::wire::{connect, frame, hello, join, recv, subscribe, text_of};
use super::Bench;

/// Scenario e: the trace's final state in one document, then every joiner
/// subscribes at once.
pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let target = bench.servers.get()?;
    let j = bench.rt.block_on(join_storm(
        &target,
        &format!("bench-{}-join", bench.run_id),
        bench.full_state.clone(),
        &bench.typed.trace.end_content,
        bench.sizes.joiners,
    ))?;
    target.finish();
    let large = bench.echo.large.ms(99.0);
    bench.rows.push(
        Row::new(
            "e. join storm",
            &format!(
                "time to Synced p50 ({} joiners, {} B state)",
                j.joiners, j.state_bytes
            ),
            j.latencies.ms(50.0),
            "ms",
        )
        .vs("echo of the state", bench.echo.large.ms(50.0)),
    );
    bench.rows.push(
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
    bench
        .plots
        .push((format!("join storm × {}", j.joiners), j.latencies.clone()));
    Ok(())
}

/// What the join storm measured.
struct JoinStorm {
    pub joiners: usize,
    pub state_bytes: usize,
    pub latencies: Latencies,
    pub server_cpu: Option<f64>,
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
