//! Scenario g: durability cost, acknowledged updates per second with group
//! commit and disk bytes per update.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use folio::protocol::{client_message, server_message, v1};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::process::{dir_bytes, CpuMeter, Target};
use super::report::{pct, Latencies, Row};
use super::wire::{frame, join, recv, server_text, RECV_TIMEOUT};
use super::Bench;

/// Scenario g: the profile's share of the trace typed with acks, as many in
/// flight as the server allows.
pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let target = bench.servers.get()?;
    let expected = if bench.typing_n == bench.typed.updates.len() {
        bench.typed.trace.end_content.clone()
    } else {
        bench.typed.trace.text_after(bench.typing_n)
    };
    let d = bench.rt.block_on(durability(
        &target,
        &format!("bench-{}-typing", bench.run_id),
        &bench.typed.updates[..bench.typing_n],
        &expected,
    ))?;
    target.finish();
    let rate = d.updates as f64 / d.secs.max(1e-9);
    bench.rows.push(
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
        .vs("in-process apply", bench.apply_rate)
        .target("≥ 100,000 acked updates/s", 100_000.0, true),
    );
    bench.rows.push(
        Row::new(
            "g. durability",
            "time over in-process apply",
            bench.apply_rate / rate.max(1e-9),
            "×",
        )
        .target("≤ 3× the in-process apply", 3.0, false),
    );
    bench.rows.push(Row::new(
        "g. durability",
        "ack latency p99",
        d.ack_latency.ms(99.0),
        "ms",
    ));
    if let Some(b) = d.disk_bytes_per_update {
        let update_bytes = bench.typed.updates[..bench.typing_n]
            .iter()
            .map(Bytes::len)
            .sum::<usize>() as f64
            / bench.typing_n as f64;
        bench.rows.push(
            Row::new("g. durability", "disk bytes per update", b, "B")
                .vs("update size", update_bytes),
        );
    }
    Ok(())
}

/// What typing with acks measured.
struct Durability {
    pub updates: usize,
    pub secs: f64,
    pub in_flight: usize,
    pub disk_bytes_per_update: Option<f64>,
    pub ack_latency: Latencies,
    pub server_cpu: Option<f64>,
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
