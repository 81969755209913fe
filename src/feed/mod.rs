//! Watcher feeds: what read-only watchers see over Server-Sent Events.
//!
//! Every document that is resident or watched has a [`DocFeed`]. Its shard
//! publishes into it (presence changes, edits, snapshots); the feed turns
//! edits into coalesced `activity` events, keeps a bounded history for
//! `Last-Event-ID` resumes, and fans events out over bounded broadcast
//! channels. The [`FeedHub`] owns the feeds and a second, global history for
//! the multi-document stream.
//!
//! Watching never loads a document: a feed keeps its own presence list and
//! text length, so a `reset` needs nothing from the shard. A feed outlives
//! its shard while watched, and is dropped once nobody watches it and its
//! history has aged out.
//!
//! Event ids are `<epoch>-<n>`: `epoch` is the server's start time, `n`
//! counts per document (per hub on the global stream). An id from another
//! run, or older than the history, gets a `reset` rather than a silent gap.

pub mod delta;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::doc::DocId;
use delta::{Op, Summary};

/// Feed settings; see `ServeConfig` for what each means.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    pub activity_window: Duration,
    pub history_events: usize,
    pub history_age: Duration,
}

/// The kinds of event a watcher receives; the SSE `event:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Reset,
    Presence,
    Activity,
    Saved,
    Doc,
}

impl EventKind {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Presence => "presence",
            Self::Activity => "activity",
            Self::Saved => "saved",
            Self::Doc => "doc",
        }
    }
}

/// One event, serialised once and shared by every watcher.
#[derive(Debug)]
pub struct FeedEvent {
    pub doc: DocId,
    pub kind: EventKind,
    /// Position in the document's feed.
    pub n: u64,
    /// Position in the hub's global feed (0 for resets, which are not stored).
    pub global: u64,
    /// The JSON `data:` payload.
    pub data: String,
    at: Instant,
}

/// An edit as text streams see it.
#[derive(Debug)]
pub struct Edit {
    pub author: Arc<str>,
    pub delta: Vec<Op>,
    pub text_len: u64,
    pub seq: u64,
}

/// The `user` part of one client's presence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Presence {
    /// The awareness client id.
    pub client: u64,
    /// Who the connection says it is (its client name).
    pub author: String,
    pub name: Option<String>,
    pub color: Option<String>,
    /// The cursor (selection head) as a text index, when the state has one.
    pub cursor: Option<u32>,
}

/// A bounded history with its broadcast channel.
struct Ring {
    events: VecDeque<Arc<FeedEvent>>,
    next: u64,
    tx: broadcast::Sender<Arc<FeedEvent>>,
}

/// Room in each broadcast channel. A watcher further behind than this gets a
/// `reset` instead of the events it missed, so no watcher grows memory.
const CHANNEL_EVENTS: usize = 1024;

/// Edits queued for text streams; a text stream further behind re-reads the text.
const CHANNEL_EDITS: usize = 4096;

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            next: 1,
            tx: broadcast::channel(capacity).0,
        }
    }

    fn prune(&mut self, settings: &FeedSettings) {
        while self.events.len() > settings.history_events
            || self
                .events
                .front()
                .is_some_and(|e| e.at.elapsed() > settings.history_age)
        {
            self.events.pop_front();
        }
    }

    fn last(&self) -> u64 {
        self.next - 1
    }

    /// Events after `n`, or `None` if some of them are gone.
    fn since(&self, n: u64) -> Option<Vec<Arc<FeedEvent>>> {
        if n > self.last() {
            return None;
        }
        let oldest = self.events.front().map_or(self.next, |e| e.n);
        if n + 1 < oldest {
            return None;
        }
        Some(self.events.iter().filter(|e| e.n > n).cloned().collect())
    }
}

struct Pending {
    summary: Summary,
    updates: u64,
    last_seq: u64,
}

struct FeedState {
    ring: Ring,
    presence: BTreeMap<u64, Presence>,
    text_len: u64,
    activity: HashMap<Arc<str>, Pending>,
    flush_scheduled: bool,
}

/// One document's feed. See the module docs.
pub struct DocFeed {
    doc: DocId,
    hub: Weak<HubShared>,
    state: Mutex<FeedState>,
    edits: broadcast::Sender<Arc<Edit>>,
    watchers: AtomicUsize,
    last_event: Mutex<Instant>,
}

struct HubShared {
    epoch: u64,
    settings: FeedSettings,
    global: Mutex<GlobalRing>,
}

struct GlobalRing {
    events: VecDeque<Arc<FeedEvent>>,
    next: u64,
    tx: broadcast::Sender<Arc<FeedEvent>>,
}

/// What a new watcher gets first: the events it missed, or a reset.
pub enum Start {
    Replay(Vec<Arc<FeedEvent>>),
    Reset(Arc<FeedEvent>),
}

/// What a new global watcher gets first.
pub struct GlobalStart {
    /// The events it missed, or `None`: it needs a reset.
    pub replay: Option<Vec<Arc<FeedEvent>>>,
    /// The newest global event number now (the reset's id).
    pub last: u64,
    /// Live events from here on.
    pub rx: broadcast::Receiver<Arc<FeedEvent>>,
}

/// Counts a watcher for as long as it lives.
pub struct WatchGuard(Arc<DocFeed>);

impl WatchGuard {
    /// The watched document.
    pub fn doc(&self) -> &DocId {
        self.0.doc()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every feed, and the global history. Cheap to clone.
#[derive(Clone)]
pub struct FeedHub {
    shared: Arc<HubShared>,
    feeds: Arc<DashMap<DocId, Arc<DocFeed>>>,
}

/// Parses `<epoch>-<n>`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (epoch, n) = id.split_once('-')?;
    Some((epoch.parse().ok()?, n.parse().ok()?))
}

impl FeedHub {
    /// A hub whose ids start with `epoch` (the server's start time in ms).
    pub fn new(epoch: u64, settings: FeedSettings) -> Self {
        Self {
            shared: Arc::new(HubShared {
                epoch,
                settings,
                global: Mutex::new(GlobalRing {
                    events: VecDeque::new(),
                    next: 1,
                    tx: broadcast::channel(CHANNEL_EVENTS).0,
                }),
            }),
            feeds: Arc::new(DashMap::new()),
        }
    }

    /// The id prefix of this run.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Formats an event id.
    pub fn id(&self, n: u64) -> String {
        format!("{}-{n}", self.shared.epoch)
    }

    /// The feed of `doc`, created with `text_len` if it does not exist.
    pub fn feed(&self, doc: &DocId, text_len: impl FnOnce() -> u64) -> Arc<DocFeed> {
        self.feeds
            .entry(doc.clone())
            .or_insert_with(|| {
                Arc::new(DocFeed {
                    doc: doc.clone(),
                    hub: Arc::downgrade(&self.shared),
                    state: Mutex::new(FeedState {
                        ring: Ring::new(CHANNEL_EVENTS),
                        presence: BTreeMap::new(),
                        text_len: text_len(),
                        activity: HashMap::new(),
                        flush_scheduled: false,
                    }),
                    edits: broadcast::channel(CHANNEL_EDITS).0,
                    watchers: AtomicUsize::new(0),
                    last_event: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// The feed of `doc` if it exists.
    pub fn existing(&self, doc: &DocId) -> Option<Arc<DocFeed>> {
        self.feeds.get(doc).map(|f| f.clone())
    }

    /// Every feed, ordered by doc id.
    pub fn all(&self) -> Vec<Arc<DocFeed>> {
        let mut feeds: Vec<_> = self.feeds.iter().map(|f| f.value().clone()).collect();
        feeds.sort_by(|a, b| a.doc.cmp(&b.doc));
        feeds
    }

    /// Watchers of `doc` right now.
    pub fn watchers(&self, doc: &DocId) -> usize {
        self.existing(doc).map_or(0, |f| f.watchers())
    }

    /// Starts a global stream: the global events after `last_event_id`, or a
    /// reset when they are gone; and the live receiver, subscribed at the
    /// same instant so nothing falls between.
    pub fn subscribe_global(&self, last_event_id: Option<&str>) -> GlobalStart {
        let global = self.shared.global.lock();
        let rx = global.tx.subscribe();
        let last = global.next - 1;
        let replay = last_event_id
            .and_then(parse_id)
            .filter(|(epoch, n)| *epoch == self.shared.epoch && *n <= last)
            .and_then(|(_, n)| {
                let oldest = global.events.front().map_or(global.next, |e| e.global);
                (n + 1 >= oldest).then(|| {
                    global
                        .events
                        .iter()
                        .filter(|e| e.global > n)
                        .cloned()
                        .collect()
                })
            });
        GlobalStart { replay, last, rx }
    }

    /// The newest global event number.
    pub fn global_last(&self) -> u64 {
        self.shared.global.lock().next - 1
    }

    /// Drops feeds nobody watches or holds whose history has aged out.
    pub fn maintain(&self) {
        let age = self.shared.settings.history_age;
        self.feeds.retain(|_, feed| {
            Arc::strong_count(feed) > 1
                || feed.watchers() > 0
                || feed.last_event.lock().elapsed() < age
        });
        let mut global = self.shared.global.lock();
        while global.events.len() > self.shared.settings.history_events
            || global.events.front().is_some_and(|e| e.at.elapsed() > age)
        {
            global.events.pop_front();
        }
    }
}

impl DocFeed {
    /// The document.
    pub fn doc(&self) -> &DocId {
        &self.doc
    }

    /// Watchers right now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Counts a watcher until the guard drops.
    pub fn watch(self: &Arc<Self>) -> WatchGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    fn epoch(&self) -> u64 {
        self.hub.upgrade().map_or(0, |h| h.epoch)
    }

    /// The current state as a `reset` event, numbered as the latest event.
    pub fn reset_event(&self) -> Arc<FeedEvent> {
        let st = self.state.lock();
        self.reset_locked(&st)
    }

    fn reset_locked(&self, st: &FeedState) -> Arc<FeedEvent> {
        Arc::new(FeedEvent {
            doc: self.doc.clone(),
            kind: EventKind::Reset,
            n: st.ring.last(),
            global: 0,
            data: self.state_json(st).to_string(),
            at: Instant::now(),
        })
    }

    fn state_json(&self, st: &FeedState) -> Value {
        json!({
            "doc": self.doc.as_str(),
            "presence": st.presence.values().collect::<Vec<_>>(),
            "text_len": st.text_len,
            "watchers": self.watchers(),
        })
    }

    /// The current state as JSON (for the multi-document reset).
    pub fn state(&self) -> Value {
        self.state_json(&self.state.lock())
    }

    /// Starts a stream: the events after `last_event_id`, or a reset; and
    /// the live receiver, subscribed under the same lock as the history was
    /// read, so there is no gap and no duplicate.
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (Start, broadcast::Receiver<Arc<FeedEvent>>) {
        let st = self.state.lock();
        let rx = st.ring.tx.subscribe();
        let replay = last_event_id
            .and_then(parse_id)
            .filter(|(epoch, _)| *epoch == self.epoch())
            .and_then(|(_, n)| st.ring.since(n));
        let start = match replay {
            Some(events) => Start::Replay(events),
            None => Start::Reset(self.reset_locked(&st)),
        };
        (start, rx)
    }

    /// A receiver of live edits (see `DocShard::watch_text`, which takes it
    /// together with the text).
    pub fn subscribe_edits(&self) -> broadcast::Receiver<Arc<Edit>> {
        self.edits.subscribe()
    }

    fn publish(&self, st: &mut FeedState, kind: EventKind, data: Value) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let n = st.ring.next;
        st.ring.next += 1;
        let mut global = hub.global.lock();
        let g = global.next;
        global.next += 1;
        let event = Arc::new(FeedEvent {
            doc: self.doc.clone(),
            kind,
            n,
            global: g,
            data: data.to_string(),
            at: Instant::now(),
        });
        st.ring.events.push_back(event.clone());
        st.ring.prune(&hub.settings);
        global.events.push_back(event.clone());
        while global.events.len() > hub.settings.history_events {
            global.events.pop_front();
        }
        // No receivers is fine: the history keeps it for resumes.
        let _ = st.ring.tx.send(event.clone());
        let _ = global.tx.send(event);
        *self.last_event.lock() = Instant::now();
    }

    /// A client's presence changed (`None`: it left).
    pub fn presence(&self, client: u64, now: Option<Presence>) {
        let mut st = self.state.lock();
        let before = st.presence.get(&client).cloned();
        let (action, shown) = match (&before, now) {
            (None, None) => return,
            (Some(old), Some(new)) if *old == new => return,
            (None, Some(new)) => {
                st.presence.insert(client, new.clone());
                ("joined", new)
            }
            (Some(_), Some(new)) => {
                st.presence.insert(client, new.clone());
                ("changed", new)
            }
            (Some(old), None) => {
                st.presence.remove(&client);
                ("left", old.clone())
            }
        };
        let data = json!({ "doc": self.doc.as_str(), "action": action, "user": shown });
        self.publish(&mut st, EventKind::Presence, data);
    }

    /// Whether anyone would see an edit's delta and range now: only then is
    /// it worth computing (yrs walks the text from its start to make one).
    pub fn wants_deltas(&self) -> bool {
        self.watchers() > 0
            || self.edits.receiver_count() > 0
            || self
                .hub
                .upgrade()
                .is_some_and(|h| h.global.lock().tx.receiver_count() > 0)
    }

    /// An edit was applied: feeds text streams now and activity after the
    /// window. `delta` is there when [`DocFeed::wants_deltas`] said so;
    /// otherwise `counts` (inserted, deleted) stand in for it.
    pub fn edit(
        self: &Arc<Self>,
        author: &str,
        delta: Option<Vec<Op>>,
        counts: (u32, u32),
        text_len: u64,
        seq: u64,
    ) {
        let summary = match &delta {
            Some(delta) => Summary::of(delta),
            None => (counts != (0, 0)).then_some(Summary {
                inserted: counts.0,
                deleted: counts.1,
                from: None,
                to: None,
            }),
        };
        let author: Arc<str> = author.into();
        if let Some(delta) = delta {
            if self.edits.receiver_count() > 0 && !delta.is_empty() {
                let _ = self.edits.send(Arc::new(Edit {
                    author: author.clone(),
                    delta,
                    text_len,
                    seq,
                }));
            }
        }
        let mut st = self.state.lock();
        st.text_len = text_len;
        let Some(summary) = summary else {
            return;
        };
        match st.activity.get_mut(&author) {
            Some(p) => {
                p.summary.merge(summary);
                p.updates += 1;
                p.last_seq = seq;
            }
            None => {
                st.activity.insert(
                    author,
                    Pending {
                        summary,
                        updates: 1,
                        last_seq: seq,
                    },
                );
            }
        }
        if !st.flush_scheduled {
            st.flush_scheduled = true;
            let window = self
                .hub
                .upgrade()
                .map_or(Duration::ZERO, |h| h.settings.activity_window);
            let feed = Arc::downgrade(self);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        tokio::time::sleep(window).await;
                        if let Some(feed) = feed.upgrade() {
                            feed.flush_activity();
                        }
                    });
                }
                Err(_) => {
                    drop(st);
                    self.flush_activity();
                }
            }
        }
    }

    /// Publishes one `activity` event per author with pending edits.
    pub fn flush_activity(&self) {
        let mut st = self.state.lock();
        st.flush_scheduled = false;
        let text_len = st.text_len;
        let mut pending: Vec<(Arc<str>, Pending)> = st.activity.drain().collect();
        pending.sort_by_key(|p| p.1.last_seq);
        for (author, p) in pending {
            let data = json!({
                "doc": self.doc.as_str(),
                "author": &*author,
                "inserted": p.summary.inserted,
                "deleted": p.summary.deleted,
                "from": p.summary.from,
                "to": p.summary.to,
                "updates": p.updates,
                "last_seq": p.last_seq,
                "text_len": text_len,
            });
            self.publish(&mut st, EventKind::Activity, data);
        }
    }

    /// A snapshot after `seq` is durable.
    pub fn saved(&self, seq: u64) {
        let mut st = self.state.lock();
        let data = json!({ "doc": self.doc.as_str(), "seq": seq });
        self.publish(&mut st, EventKind::Saved, data);
    }

    /// The document was `created` or `deleted`.
    pub fn lifecycle(&self, action: &str) {
        let mut st = self.state.lock();
        let data = json!({ "doc": self.doc.as_str(), "action": action });
        self.publish(&mut st, EventKind::Doc, data);
    }
}
