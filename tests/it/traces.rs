//! Real editing traces typed through the server, one transaction per update.

use folio::client::Editor;

use folio::protocol::server_message::Kind;
use folio::trace::{shared_trace, Trace};

use folio::feed::delta::{self, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;

use crate::sse::Watcher;
use crate::support::{json_request, TestServer};
use crate::sync::converge;

/// Updates in flight before the typist stops to read acks.
const WINDOW: usize = 512;

/// Updates between automatic versions while typing seph-blog1.
const VERSION_EVERY: u64 = 10_000;

/// Types all of seph-blog1 (137,154 transactions, one update each) through
/// the server, then checks its history against the trace: every automatic
/// version and points in between have the trace's text at that point; a
/// diff between two versions holds both texts; a replay of the last updates
/// reproduces the final text and its author.
#[tokio::test]
async fn seph_blog1_typed_through_the_server_ends_at_its_end_content_with_exact_history() {
    let trace = Trace::load(shared_trace("sequential/seph-blog1.json.gz")).expect("trace");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.snapshot_every_updates = VERSION_EVERY;
        // Typed as fast as acks allow: past the default rate limit.
        c.limits.updates_per_sec = 0;
    })
    .await;
    let mut typist = Editor::join(&server.ws_url(), "seph-blog1", "seph")
        .await
        .expect("join");
    // Point n of the log is the state after the n-th transaction that
    // changes something (a transaction without patches sends no update).
    let mut txns_at_seq = vec![0usize];
    for (i, txn) in trace.txns.iter().enumerate() {
        let patches = Trace::patches(txn);
        if patches
            .iter()
            .any(|(_, del, ins)| *del > 0 || !ins.is_empty())
        {
            txns_at_seq.push(i + 1);
        }
        typist.type_patches(&patches).await.expect("type");
        typist.wait_acked_below(WINDOW).await.expect("acks");
    }
    typist.wait_acked().await.expect("all acked");
    assert_eq!(typist.text(), trace.end_content);
    assert_eq!(server.text("seph-blog1").await, trace.end_content);
    let last_seq = txns_at_seq.len() as u64 - 1;

    let (status, listing) =
        json_request(Method::GET, server.url("/docs/seph-blog1/versions"), None).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["latest_seq"], last_seq);
    let versions = listing["versions"].as_array().expect("versions");
    let auto: Vec<u64> = versions
        .iter()
        .filter(|v| v["kind"] == "auto")
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect();
    let want: Vec<u64> = (1..=last_seq / VERSION_EVERY)
        .map(|k| k * VERSION_EVERY)
        .collect();
    assert_eq!(
        auto, want,
        "one automatic version every {VERSION_EVERY} updates"
    );
    for v in versions {
        let seq = v["seq"].as_u64().expect("seq");
        let expected = trace.text_after(txns_at_seq[seq as usize]);
        assert_eq!(v["authors"], serde_json::json!(["seph"]));
        assert_eq!(v["text_len"], expected.encode_utf16().count());
        let (status, text) = server
            .get_text(&format!("/docs/seph-blog1/versions/{seq}/text"))
            .await;
        assert_eq!((status, text), (200, expected), "version {seq}");
    }
    // Points between versions, rebuilt from the nearest snapshot plus the log.
    let mut rng = SmallRng::seed_from_u64(crate::support::seed());
    for _ in 0..12 {
        let seq = rng.random_range(0..=last_seq);
        let (status, at) = json_request(
            Method::GET,
            server.url(&format!("/docs/seph-blog1/at?seq={seq}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{at}");
        assert_eq!(at["seq"], seq);
        assert_eq!(
            at["text"],
            trace.text_after(txns_at_seq[seq as usize]),
            "at seq {seq}"
        );
    }
    // A diff holds both texts: equal and deleted runs make the first,
    // equal and inserted runs the second.
    let (from, to) = (want[0], want[1]);
    let (status, diff) = json_request(
        Method::GET,
        server.url(&format!("/docs/seph-blog1/diff?from={from}&to={to}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["attributed"], true);
    let runs = diff["changes"].as_array().expect("changes");
    let side = |keep: &str| -> String {
        runs.iter()
            .filter(|c| c["op"] == "equal" || c["op"] == keep)
            .map(|c| c["text"].as_str().expect("text"))
            .collect()
    };
    assert_eq!(side("delete"), trace.text_after(txns_at_seq[from as usize]));
    assert_eq!(side("insert"), trace.text_after(txns_at_seq[to as usize]));
    assert!(runs
        .iter()
        .filter(|c| c["op"] != "equal")
        .all(|c| c["author"] == "seph"));
    // Replay the tail: the start text plus every delta is the end text.
    let from = last_seq - 2_000;
    let mut replay = Watcher::connect(
        &server.url(&format!("/docs/seph-blog1/replay?from={from}&speed=0")),
        None,
    )
    .await;
    let (_, start) = replay.next_of("start").await;
    let mut text = start["text"].as_str().expect("text").to_owned();
    loop {
        let e = replay.next().await;
        match e.event.as_str() {
            "delta" => {
                let step: serde_json::Value = serde_json::from_str(&e.data).expect("json");
                assert_eq!(step["author"], "seph");
                let ops: Vec<Op> = serde_json::from_value(step["delta"].clone()).expect("delta");
                text = delta::apply(&text, &ops).expect("delta applies");
            }
            "end" => break,
            other => panic!("unexpected replay event {other}"),
        }
    }
    assert_eq!(text, trace.end_content);
    server.stop().await;
}

/// For each txn, how many txns of each agent it was made on (its parents'
/// causal history), so each replaying client can merge exactly those first.
fn required_history(trace: &Trace) -> Vec<Vec<usize>> {
    let n = trace.num_agents;
    let mut seen: Vec<Vec<usize>> = Vec::with_capacity(trace.txns.len());
    let mut required = Vec::with_capacity(trace.txns.len());
    for txn in &trace.txns {
        let mut before = vec![0; n];
        for &p in &txn.parents {
            for (agent, count) in seen[p].iter().enumerate() {
                before[agent] = before[agent].max(*count);
            }
        }
        let mut after = before.clone();
        after[txn.agent] += 1;
        required.push(before);
        seen.push(after);
    }
    required
}

#[tokio::test]
async fn friendsforever_replayed_as_two_clients_converges() {
    let trace = Trace::load(shared_trace("concurrent/friendsforever.json.gz")).expect("trace");
    assert_eq!(trace.num_agents, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    // Replayed as fast as the agents can: past the default rate limit.
    let server = TestServer::start_with(dir.path(), |c| c.limits.updates_per_sec = 0).await;
    let url = server.ws_url();
    let mut agents = Vec::new();
    // The recording breaks ties between concurrent inserts at one position
    // in agent order; Yjs breaks them by client id, so agent 0 gets the
    // lower one (with the higher one on agent 0, the text comes out different).
    for i in 0..trace.num_agents {
        let doc = folio::client::new_doc_with_client_id(1000 + i as u64);
        let name = format!("agent{i}");
        agents.push(
            Editor::join_with(&url, "ff", &name, doc)
                .await
                .expect("join"),
        );
    }
    // Remote updates each agent received but has not merged yet, in order,
    // and how many of each other agent's updates it has merged.
    let mut inbox: Vec<std::collections::VecDeque<bytes::Bytes>> = vec![Default::default(); 2];
    let mut merged = vec![vec![0usize; 2]; 2];
    let required = required_history(&trace);
    for (txn, needs) in trace.txns.iter().zip(&required) {
        let me = txn.agent;
        let other = 1 - me;
        while merged[me][other] < needs[other] {
            if inbox[me].is_empty() {
                match agents[me].recv_raw().await.expect("receive") {
                    Kind::Update(u) => inbox[me].push_back(u.update),
                    msg => {
                        agents[me].handle(msg).expect("handle");
                    }
                }
                continue;
            }
            let update = inbox[me].pop_front().expect("non-empty");
            agents[me].apply_remote(&update).expect("apply");
            merged[me][other] += 1;
        }
        agents[me]
            .type_patches(&Trace::patches(txn))
            .await
            .expect("type");
    }
    for (me, queue) in inbox.iter_mut().enumerate() {
        for update in queue.drain(..) {
            agents[me].apply_remote(&update).expect("apply");
        }
    }
    let text = converge(&server, "ff", &mut agents).await;
    assert_eq!(text, trace.end_content);
    server.stop().await;
}
