//! The physical limits every figure is compared with, measured in the same
//! run: the trace applied to a yrs doc in-process, and a raw WebSocket echo
//! on loopback (round trips, and RSS per idle connection).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use bytes::Bytes;
use folio::client::new_doc_with_client_id;
use folio::doc::TEXT_NAME;
use folio::trace::{shared_trace, Trace};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact};

use super::process::{rss_bytes, Spawned};
use super::report::Latencies;
use super::wire::{connect, Ws, RECV_TIMEOUT};

/// The trace typed into a local doc, one update per txn.
pub struct Typed {
    pub trace: Trace,
    pub name: String,
    pub updates: Vec<Bytes>,
}

/// The trace's first `txns` txns typed by a writer with `client_id`, one update each.
pub fn type_trace(trace: &Trace, client_id: u64, txns: usize) -> Vec<Bytes> {
    trace.typed_updates(&new_doc_with_client_id(client_id), txns)
}

pub fn load_trace(arg: &str) -> anyhow::Result<Typed> {
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
pub fn apply_in_process(updates: &[Bytes]) -> anyhow::Result<(f64, String)> {
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

/// The raw WebSocket echo, measured on its own server process.
pub struct EchoBaseline {
    pub small: Latencies,
    /// Round trips of a message as large as the join storm's state.
    pub large: Latencies,
    pub idle_rss_per_conn: Option<f64>,
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

/// Round trips of a small and a state-sized message through `echo`, and
/// (when `idle_conns > 0`) its RSS per idle connection.
pub async fn echo_baseline(
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
