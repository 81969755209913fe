//! Scenarios a and b: writers typing a trace into one document while readers
//! receive every update; end-to-end latency from a writer's send to each
//! reader's receipt, deliveries per second and CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use folio::protocol::{client_message, server_message, v1, ServerMessage};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use super::process::{CpuMeter, Target};
use super::report::{pct, Goal, Latencies, Row};
use super::wire::{fingerprint, frame, join, server_text, Ws};
use super::{yjs, Bench, Protocol};

/// How long readers may keep receiving after the writers stop.
const DRAIN: Duration = Duration::from_secs(3);
/// Fan-out p99 under which a rate counts as sustained (scenario b).
const SUSTAINED_P99: Duration = Duration::from_millis(50);

/// Scenario a: one writer at each of the profile's keystroke rates, with
/// the profile's readers, on one document of a fresh server.
pub fn hot_document(bench: &mut Bench) -> anyhow::Result<()> {
    let yjs = bench.protocol == Protocol::Yjs;
    let fan_out_label = if yjs {
        "a. fan-out (y-websocket)"
    } else {
        "a. fan-out"
    };
    let writer = Arc::new(bench.typed.updates.clone());
    for &rate in &bench.sizes.rates {
        let target = bench.servers.get()?;
        let doc = format!("bench-{}-fanout-{rate}", bench.run_id);
        let f = bench.rt.block_on(fan_out(
            bench.protocol,
            &target,
            &doc,
            std::slice::from_ref(&writer),
            bench.sizes.readers,
            rate,
            bench.sizes.fan_out_secs,
        ))?;
        // One writer typed the trace's first `sent` txns: check the server has them.
        let expected = bench.typed.trace.text_after(f.sent);
        let got = bench
            .rt
            .block_on(fan_out_text(bench.protocol, &target.ws_url, &doc))?;
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
        push_fan_out(
            &mut bench.rows,
            &f,
            fan_out_label,
            bench.echo.small.ms(50.0),
            bench.echo.small.ms(99.0),
        );
        let limit = if rate <= 100.0 { 0.6 } else { 2.0 };
        if let Some(r) = bench
            .rows
            .iter_mut()
            .rev()
            .find(|r| r.metric.ends_with("latency p99"))
        {
            r.target = Some(Goal {
                text: format!(
                    "1 writer at {rate}/s, {} readers: p99 ≤ {limit} ms",
                    bench.sizes.readers
                ),
                limit,
                at_least: false,
            });
        }
        bench.plots.push((
            format!("fan-out {rate}/s × {} readers", bench.sizes.readers),
            f.latencies.clone(),
        ));
    }
    Ok(())
}

/// Scenario b: the highest rate one document sustains with fan-out p99
/// under 50 ms; rates of the profile's ramp in turn until one fails.
pub fn max_throughput(bench: &mut Bench) -> anyhow::Result<()> {
    let yjs = bench.protocol == Protocol::Yjs;
    let writer = Arc::new(bench.typed.updates.clone());
    let mut best: Option<FanOut> = None;
    let ramp = if bench.sizes.ramp.is_empty() {
        vec![5000.0]
    } else {
        bench.sizes.ramp.clone()
    };
    let secs = if bench.sizes.ramp_secs > 0.0 {
        bench.sizes.ramp_secs
    } else {
        2.0
    };
    for rate in ramp {
        let target = bench.servers.get()?;
        let doc = format!("bench-{}-ramp-{rate}", bench.run_id);
        let f = bench.rt.block_on(fan_out(
            bench.protocol,
            &target,
            &doc,
            std::slice::from_ref(&writer),
            bench.sizes.readers,
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
            bench.notes.push(format!(
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
    bench.rows.push(row);
    Ok(())
}

/// One fan-out run's figures.
pub struct FanOut {
    pub writers: usize,
    pub readers: usize,
    pub rate: f64,
    pub sent: usize,
    pub latencies: Latencies,
    pub deliveries: usize,
    pub missing: usize,
    pub deliveries_per_sec: f64,
    pub server_cpu: Option<f64>,
    pub tool_cpu: Option<f64>,
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

/// Joins `readers` readers and one writer per entry of `writer_updates` to
/// `doc`, lets the writers type at `rate` for `secs`, and matches every
/// reader's receipts to the writers' sends.
pub async fn fan_out(
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
pub async fn fan_out_join(protocol: Protocol, url: &str, doc: &str) -> anyhow::Result<Ws> {
    Ok(match protocol {
        Protocol::Folio => join(url, doc, false).await?.0,
        Protocol::Yjs => yjs::join(url, doc).await?.0,
    })
}

/// A fresh client's view of `doc`'s text, in either protocol.
pub async fn fan_out_text(protocol: Protocol, url: &str, doc: &str) -> anyhow::Result<String> {
    match protocol {
        Protocol::Folio => server_text(url, doc).await,
        Protocol::Yjs => yjs::server_text(url, doc).await,
    }
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
