//! Scenario d: idle density, the server's RSS per idle subscribed connection.

use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;

use super::process::{rss_bytes, Target};
use super::report::Row;
use super::wire::join;
use super::Bench;

/// Scenario d: idle subscribed connections spread over 16 documents; the
/// server's RSS growth per connection, against the echo server's.
pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let target = bench.servers.get()?;
    let idle = bench.rt.block_on(idle_density(
        &target,
        &format!("bench-{}-idle", bench.run_id),
        bench.idle_n,
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
            if let Some(b) = bench.echo.idle_rss_per_conn {
                row = row.vs("echo server", b / 1024.0);
            }
            bench.rows.push(row);
        }
        None => bench
            .notes
            .push("d: skipped, the server's pid is unknown (give --server-pid)".into()),
    }
    Ok(())
}

/// What the idle connections cost.
struct Idle {
    pub conns: usize,
    pub rss_per_conn: f64,
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
