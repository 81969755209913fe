//! Real editing traces typed through the server, one transaction per update.

use folio::client::Editor;

use folio::protocol::server_message::Kind;
use folio::trace::{shared_trace, Trace};

use crate::support::TestServer;
use crate::sync::converge;

/// Updates in flight before the typist stops to read acks.
const WINDOW: usize = 512;

#[tokio::test]
async fn seph_blog1_typed_through_the_server_ends_at_its_end_content() {
    let trace = Trace::load(shared_trace("sequential/seph-blog1.json.gz")).expect("trace");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut typist = Editor::join(&server.ws_url(), "seph-blog1", "seph")
        .await
        .expect("join");
    for txn in &trace.txns {
        typist
            .type_patches(&Trace::patches(txn))
            .await
            .expect("type");
        typist.wait_acked_below(WINDOW).await.expect("acks");
    }
    typist.wait_acked().await.expect("all acked");
    assert_eq!(typist.text(), trace.end_content);
    assert_eq!(server.text("seph-blog1").await, trace.end_content);
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
    let server = TestServer::start(dir.path()).await;
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
