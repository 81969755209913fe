//! Scenarios a, b and c: writers typing a trace while readers receive every
//! update, on one document (a, b) or many at once (c); end-to-end latency
//! from a writer's send to each reader's receipt, deliveries per second and
//! CPU.

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

use super::baseline::{apply_in_process, type_trace};
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
    for rate in bench.sizes.rates.clone() {
        let target = bench.servers.get()?;
        let doc = format!("bench-{}-fanout-{rate}", bench.run_id);
        let load = DocLoad {
            doc: doc.clone(),
            writers: vec![writer.clone()],
            readers: bench.sizes.readers,
        };
        let f = bench.rt.block_on(fan_out(
            bench.protocol,
            &target,
            std::slice::from_ref(&load),
            rate,
            bench.sizes.fan_out_secs,
            false,
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
        let what = format!(
            "{} writer at {}/s, {} readers",
            f.writers, f.rate, f.readers
        );
        push_fan_out(bench, &f, fan_out_label, &what);
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
        let load = DocLoad {
            doc,
            writers: vec![writer.clone()],
            readers: bench.sizes.readers,
        };
        let f = bench.rt.block_on(fan_out(
            bench.protocol,
            &target,
            std::slice::from_ref(&load),
            rate,
            secs,
            false,
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

/// Scenario c: many documents at once, each with its own writers typing the
/// trace and its own readers, on one fresh server per configuration.
pub fn many_documents(bench: &mut Bench) -> anyhow::Result<()> {
    let label = if bench.protocol == Protocol::Yjs {
        "c. many documents (y-websocket)"
    } else {
        "c. many documents"
    };
    for m in bench.sizes.many_docs.clone() {
        let txns = (m.rate * bench.sizes.fan_out_secs) as usize + 16;
        // Writer w types with client id w + 1 (writer 0 reuses the typed trace).
        let writers: Vec<Arc<Vec<Bytes>>> = (0..m.writers)
            .map(|w| match w {
                0 => Arc::new(bench.typed.updates.clone()),
                w => Arc::new(type_trace(&bench.typed.trace, w as u64 + 1, txns)),
            })
            .collect();
        let loads: Vec<DocLoad> = (0..m.docs)
            .map(|d| DocLoad {
                doc: format!("bench-{}-many-{}-{d}", bench.run_id, m.docs),
                writers: writers.clone(),
                readers: m.readers,
            })
            .collect();
        let target = bench.servers.get()?;
        let f = bench.rt.block_on(fan_out(
            bench.protocol,
            &target,
            &loads,
            m.rate,
            bench.sizes.fan_out_secs,
            true,
        ));
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                target.finish();
                return Err(e);
            }
        };
        // Every document holds exactly what its writers sent.
        let checked = bench.rt.block_on(check_texts(
            bench.protocol,
            &target.ws_url,
            &loads,
            &f.sent_by_writer,
        ));
        target.finish();
        checked?;
        ensure!(
            f.missing == 0,
            "many documents: {} of {} deliveries never arrived",
            f.missing,
            f.deliveries + f.missing
        );
        let what = format!(
            "{} docs × ({} writer{} at {}/s + {} readers)",
            f.docs,
            f.writers,
            if f.writers == 1 { "" } else { "s" },
            f.rate,
            f.readers
        );
        push_fan_out(bench, &f, label, &what);
        bench
            .plots
            .push((format!("many docs: {what}"), f.latencies.clone()));
    }
    Ok(())
}

/// Checks that each document's text is what its writers' sent prefixes give
/// when applied in-process.
async fn check_texts(
    protocol: Protocol,
    url: &str,
    loads: &[DocLoad],
    sent_by_writer: &[Vec<usize>],
) -> anyhow::Result<()> {
    let texts: Vec<_> = futures_util::stream::iter(loads.iter().enumerate())
        .map(|(d, load)| async move { (d, fan_out_text(protocol, url, &load.doc).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    for (d, got) in texts {
        let load = &loads[d];
        let sent: Vec<Bytes> = load
            .writers
            .iter()
            .zip(&sent_by_writer[d])
            .flat_map(|(updates, &n)| updates[..n].iter().cloned())
            .collect();
        let (_, expected) = apply_in_process(&sent)?;
        ensure!(
            got? == expected,
            "many documents: {}'s text is not what its writers sent",
            load.doc
        );
    }
    Ok(())
}

/// One document of a fan-out run.
pub struct DocLoad {
    pub doc: String,
    /// Each writer's typed updates; writers of one document type with
    /// distinct client ids, so every update (and its fingerprint) is unique
    /// within the document.
    pub writers: Vec<Arc<Vec<Bytes>>>,
    pub readers: usize,
}

/// One fan-out run's figures, over every document of the run.
pub struct FanOut {
    pub docs: usize,
    /// Writers per document.
    pub writers: usize,
    /// Readers per document.
    pub readers: usize,
    pub rate: f64,
    /// Updates sent, over all documents.
    pub sent: usize,
    /// Updates each writer sent, by document and writer.
    pub sent_by_writer: Vec<Vec<usize>>,
    pub latencies: Latencies,
    pub deliveries: usize,
    pub missing: usize,
    pub deliveries_per_sec: f64,
    pub server_cpu: Option<f64>,
    pub tool_cpu: Option<f64>,
}

/// A reader: receives until it has as many updates as its document's
/// writers sent (known once they stop) or the deadline passes; returns each
/// update's fingerprint and receipt time.
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

/// A writer: sends its frames at `rate` per second, the first at `start`,
/// until `end`; returns the fingerprint and send time of each. Frames due in
/// the same timer tick go out with one flush.
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

/// Joins every document's readers and writers (with small socket buffers
/// when `small`), lets every writer type at `rate` for `secs`, and matches
/// each reader's receipts to its document's sends. The writers' keystrokes
/// are spread evenly over one period, so many writers do not all send in the
/// same instant.
pub async fn fan_out(
    protocol: Protocol,
    target: &Target,
    docs: &[DocLoad],
    rate: f64,
    secs: f64,
    small: bool,
) -> anyhow::Result<FanOut> {
    let url = &target.ws_url;
    let writers_done = Arc::new(AtomicBool::new(false));
    let per_writer = |updates: &Vec<Bytes>| ((rate * secs) as usize + 16).min(updates.len());
    // Joining takes a moment; after that readers wait for the writers'
    // `secs` and then at most DRAIN for stragglers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs) + DRAIN * 3;

    // Per document: updates sent, known once the writers stop.
    let sent_totals: Vec<Arc<AtomicU64>> = docs.iter().map(|_| Arc::default()).collect();
    let readers: Vec<usize> = docs
        .iter()
        .enumerate()
        .flat_map(|(d, load)| std::iter::repeat_n(d, load.readers))
        .collect();
    let joined: Vec<_> = futures_util::stream::iter(readers)
        .map(|d| async move { (d, fan_out_join(protocol, url, &docs[d].doc, small).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut reader_tasks = Vec::with_capacity(joined.len());
    for (d, ws) in joined {
        let (_, rx) = ws?.split();
        let capacity = docs[d].writers.iter().map(|u| per_writer(u)).sum::<usize>() + 16;
        let task = tokio::spawn(read_updates(
            protocol,
            rx,
            capacity,
            sent_totals[d].clone(),
            writers_done.clone(),
            deadline,
        ));
        reader_tasks.push((d, task));
    }
    let mut writers = Vec::new();
    for (d, load) in docs.iter().enumerate() {
        for (w, updates) in load.writers.iter().enumerate() {
            let ws = fan_out_join(protocol, url, &load.doc, small).await?;
            let frames: Vec<(u64, Message)> = updates
                .iter()
                .take(per_writer(updates))
                .enumerate()
                .map(|(i, u)| {
                    let msg = match protocol {
                        Protocol::Folio => frame(client_message::Kind::Update(v1::Update {
                            doc: load.doc.clone(),
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
            writers.push((d, w, tx, Arc::new(frames), drain));
        }
    }
    let cpu = CpuMeter::start(target.pid);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let period = Duration::from_secs_f64(1.0 / rate);
    let n_writers = writers.len().max(1);
    let mut writer_tasks = Vec::with_capacity(writers.len());
    let mut drains = Vec::with_capacity(writers.len());
    for (k, (d, w, tx, frames, drain)) in writers.into_iter().enumerate() {
        let phase = period.mul_f64(k as f64 / n_writers as f64);
        let task = tokio::spawn(write_updates(tx, frames, rate, start + phase, end));
        writer_tasks.push((d, w, task));
        drains.push(drain);
    }
    // Fingerprints are unique within a document, not across documents.
    let mut sends: HashMap<(usize, u64), Instant> = HashMap::new();
    let mut sent_by_writer: Vec<Vec<usize>> =
        docs.iter().map(|l| vec![0; l.writers.len()]).collect();
    let mut first_send: Option<Instant> = None;
    for (d, w, task) in writer_tasks {
        let sent = task.await.context("writer task")??;
        sent_totals[d].fetch_add(sent.len() as u64, Ordering::AcqRel);
        sent_by_writer[d][w] = sent.len();
        for (fp, at) in sent {
            first_send = Some(first_send.map_or(at, |f| f.min(at)));
            sends.insert((d, fp), at);
        }
    }
    writers_done.store(true, Ordering::Release);
    let (server_cpu, tool_cpu) = cpu.stop();
    let mut latencies = Vec::new();
    let mut last_receipt: Option<Instant> = None;
    let mut missing = 0;
    for (d, task) in reader_tasks {
        let got = task.await.context("reader task")?;
        let sent = sent_totals[d].load(Ordering::Acquire) as usize;
        missing += sent.saturating_sub(got.len());
        for (fp, at) in got {
            if let Some(sent_at) = sends.get(&(d, fp)) {
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
        docs: docs.len(),
        writers: docs.first().map_or(0, |l| l.writers.len()),
        readers: docs.first().map_or(0, |l| l.readers),
        rate,
        sent: sent_by_writer.iter().flatten().sum(),
        sent_by_writer,
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
pub async fn fan_out_join(
    protocol: Protocol,
    url: &str,
    doc: &str,
    small: bool,
) -> anyhow::Result<Ws> {
    Ok(match protocol {
        Protocol::Folio => join(url, doc, small).await?.0,
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

/// The rows of one fan-out run: latency percentiles against the echo
/// baseline, and deliveries per second with CPU use.
fn push_fan_out(bench: &mut Bench, f: &FanOut, scenario: &str, what: &str) {
    let (echo_p50, echo_p99) = (bench.echo.small.ms(50.0), bench.echo.small.ms(99.0));
    let rows = &mut bench.rows;
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
