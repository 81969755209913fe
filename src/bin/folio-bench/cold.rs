//! Scenario f: cold load. Large documents (the trace's final state) are
//! written, left without subscribers until the server evicts them (a spawned
//! server runs with `--evict-idle-secs 1`; the tool watches
//! `folio_documents_resident` on `/metrics`), then subscribed to one at a
//! time: Subscribe to Synced is the reload from sled plus the sync reply. A
//! second subscriber right after shows the same reply from a resident doc.
//! The floor, measured in the same run, is the in-process decode of the same
//! state: yrs `Update::decode_v1` and apply into a fresh doc.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use bytes::Bytes;
use folio::client::new_doc_with_client_id;
use folio::doc::TEXT_NAME;
use folio::protocol::{client_message, server_message, v1};
use futures_util::SinkExt;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact};

use super::process::{CpuMeter, Target};
use super::report::{pct, Latencies, Row};
use super::wire::{connect, frame, hello, http_get, join, metric, recv, subscribe, text_of};
use super::Bench;

/// Idle seconds before a spawned server evicts a document.
const EVICT_IDLE_SECS: u64 = 1;
/// Longest wait for the documents to be evicted (an external server may
/// evict later than a spawned one).
const EVICTION_WAIT: Duration = Duration::from_secs(120);
/// How often `/metrics` is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Untimed in-process decodes before measuring (warm the pool thread).
const WARM_UP_DECODES: usize = 3;
/// Timed in-process decodes after each cold load.
const DECODES_PER_LOAD: usize = 2;

/// What the cold loads measured.
struct ColdLoad {
    docs: usize,
    state_bytes: usize,
    /// Subscribe to Synced on an evicted document.
    cold: Latencies,
    /// The same on the same document once resident.
    warm: Latencies,
    /// In-process decode and apply of the same state.
    decode: Latencies,
    /// Server CPU over the cold and warm subscribes.
    server_cpu: Option<f64>,
    /// How long the server took to evict every document.
    eviction_wait: Duration,
}

/// Scenario f: see the module docs.
pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let target = bench.servers.get_evicting(EVICT_IDLE_SECS)?;
    let measured = measure(bench, &target);
    target.finish();
    let c = measured?;
    let (d50, d99) = (c.decode.ms(50.0), c.decode.ms(99.0));
    let (c50, c99) = (c.cold.ms(50.0), c.cold.ms(99.0));
    let scenario = "f. cold load";
    bench.rows.push(Row::new(
        scenario,
        &format!(
            "in-process decode + apply of the {} B state p50 ({} runs; p99 {d99:.2} ms)",
            c.state_bytes,
            c.decode.0.len()
        ),
        d50,
        "ms",
    ));
    bench.rows.push(
        Row::new(
            scenario,
            &format!(
                "Subscribe → Synced on an evicted doc p50 ({} docs, evicted {:.1} s after the last unsubscribe)",
                c.docs,
                c.eviction_wait.as_secs_f64()
            ),
            c50,
            "ms",
        )
        .vs("in-process decode p50", d50)
        .target("p50 ≤ 2× the in-process decode p50", 2.0 * d50, false),
    );
    bench.rows.push(
        Row::new(
            scenario,
            &format!(
                "Subscribe → Synced on an evicted doc p99 (max {:.2} ms; server CPU {})",
                c.cold.ms(100.0),
                pct(c.server_cpu)
            ),
            c99,
            "ms",
        )
        .vs("in-process decode p99", d99)
        .target("p99 ≤ 2× the in-process decode p99", 2.0 * d99, false),
    );
    bench.rows.push(
        Row::new(
            scenario,
            "Subscribe → Synced on the same doc once resident, p50",
            c.warm.ms(50.0),
            "ms",
        )
        .vs("in-process decode p50", d50),
    );
    bench
        .plots
        .push((format!("cold load × {}", c.docs), c.cold.clone()));
    Ok(())
}

async fn create(url: &str, doc: &str, state: Bytes) -> anyhow::Result<()> {
    let (mut ws, _, _) = join(url, doc, false).await?;
    ws.send(frame(client_message::Kind::Update(v1::Update {
        doc: doc.into(),
        update: state,
        seq: 1,
    })))
    .await?;
    loop {
        match recv(&mut ws).await? {
            server_message::Kind::Ack(_) => return Ok(()),
            server_message::Kind::Error(e) => bail!("the state update to {doc} was refused: {e:?}"),
            _ => continue,
        }
    }
}

/// Documents resident in the server now, from `/metrics`.
fn resident(ws_url: &str) -> anyhow::Result<f64> {
    let body = http_get(ws_url, "/metrics")?;
    metric(&body, folio::metrics::DOCUMENTS_RESIDENT)
        .ok_or_else(|| anyhow!("/metrics has no {}", folio::metrics::DOCUMENTS_RESIDENT))
}

fn measure(bench: &Bench, target: &Target) -> anyhow::Result<ColdLoad> {
    let url = target.ws_url.as_str();
    let n = bench.sizes.cold_docs;
    let state = bench.full_state.clone();
    let expected = bench.typed.trace.end_content.as_str();
    let docs: Vec<String> = (0..n)
        .map(|i| format!("bench-{}-cold-{i}", bench.run_id))
        .collect();

    // Write the documents; their sockets close, so they go idle together.
    let before = resident(url)?;
    bench.rt.block_on(async {
        for doc in &docs {
            create(url, doc, state.clone()).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let idle_from = Instant::now();
    loop {
        if resident(url)? <= before {
            break;
        }
        if idle_from.elapsed() > EVICTION_WAIT {
            bail!(
                "cold load: the documents were not evicted within {EVICTION_WAIT:?} \
                 (with --url, the server needs a short --evict-idle-secs)"
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
    let eviction_wait = idle_from.elapsed();

    // One document at a time, so each load is timed alone. Between loads,
    // the floor: the same state decoded in this process on the runtime's
    // blocking pool, as the server decodes on its own (a thread of the
    // pool keeps a warm allocator arena; the tool's main thread, whose
    // arena holds the whole trace, decoded 3× slower). Interleaving puts
    // both under the same machine noise.
    let (cold, warm, decode, server_cpu) = bench.rt.block_on(async {
        for _ in 0..WARM_UP_DECODES {
            decode_blocking(&state, Some(expected)).await?;
        }
        let mut cold = Vec::with_capacity(n);
        let mut warm = Vec::with_capacity(n);
        let mut decode = Vec::with_capacity(n * DECODES_PER_LOAD);
        let cpu = CpuMeter::start(target.pid);
        for doc in &docs {
            let mut first = connect(url, false).await?;
            hello(&mut first).await?;
            let t = Instant::now();
            let synced = subscribe(&mut first, doc).await?;
            cold.push(t.elapsed());
            let mut second = connect(url, false).await?;
            hello(&mut second).await?;
            let t = Instant::now();
            let again = subscribe(&mut second, doc).await?;
            warm.push(t.elapsed());
            drop((first, second));
            for _ in 0..DECODES_PER_LOAD {
                decode.push(decode_blocking(&state, None).await?);
            }
            let got = text_of(&synced.update)?;
            ensure!(
                got == expected,
                "cold load: {doc} reloaded with {} chars, not the trace's {}",
                got.chars().count(),
                expected.chars().count()
            );
            ensure!(
                text_of(&again.update)? == got,
                "cold load: {doc}'s second subscriber saw another text"
            );
        }
        let (server_cpu, _) = cpu.stop();
        Ok::<_, anyhow::Error>((cold, warm, decode, server_cpu))
    })?;
    Ok(ColdLoad {
        docs: n,
        state_bytes: state.len(),
        cold: Latencies::new(cold),
        warm: Latencies::new(warm),
        decode: Latencies::new(decode),
        server_cpu,
        eviction_wait,
    })
}

/// One timed decode of `state` into a fresh doc on the blocking pool;
/// checks the text when `expected` is given (outside the timing).
async fn decode_blocking(state: &Bytes, expected: Option<&str>) -> anyhow::Result<Duration> {
    let state = state.clone();
    let (took, text) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let doc = new_doc_with_client_id(3);
        let text = doc.get_or_insert_text(TEXT_NAME);
        let update =
            yrs::Update::decode_v1(&state).map_err(|e| anyhow!("state does not decode: {e}"))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| anyhow!("state does not apply: {e}"))?;
        let took = t.elapsed();
        let got = text.get_string(&doc.transact());
        Ok::<_, anyhow::Error>((took, got))
    })
    .await??;
    if let Some(expected) = expected {
        ensure!(
            text == expected,
            "decoding the state in-process gives another text"
        );
    }
    Ok(took)
}
