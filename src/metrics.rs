//! Prometheus metrics: every metric name in one place, one recorder per
//! process, and a small facade (`metrics::update_applied()`, …) that the
//! hot paths call. Served as text by `GET /metrics`.
//!
//! Counters and histograms are process-wide: tests start many servers in one
//! process, and each adds to the same counters. Gauges that describe one
//! server's state (connections, subscriptions, watchers, resident documents)
//! are sampled from that server when it is scraped, so they never drift.
//!
//! The hot paths hold pre-registered handles: one atomic add per event, no
//! name lookup. Before [`install`] every call is a no-op, so unit tests of
//! shards and sessions need no recorder.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

/// Open WebSocket connections (`/ws` and `/yjs`), sampled at scrape.
pub const CONNECTIONS: &str = "folio_connections";
/// Document subscriptions across every connection, sampled at scrape.
pub const SUBSCRIPTIONS: &str = "folio_subscriptions";
/// SSE watchers of documents, sampled at scrape.
pub const WATCHERS: &str = "folio_watchers";
/// Documents in memory, sampled at scrape.
pub const DOCUMENTS_RESIDENT: &str = "folio_documents_resident";
/// Updates applied that changed a document (resends of known updates excluded).
pub const UPDATES_APPLIED: &str = "folio_updates_applied_total";
/// Payload bytes of binary frames received on `/ws`.
pub const BYTES_IN: &str = "folio_ws_received_bytes_total";
/// Payload bytes of frames written to WebSockets.
pub const BYTES_OUT: &str = "folio_ws_sent_bytes_total";
/// Documents evicted from memory after their idle period.
pub const EVICTIONS: &str = "folio_evictions_total";
/// Error messages sent to clients, labelled by `code`.
pub const ERRORS: &str = "folio_errors_total";
/// Times a connection fell behind a document (its queue was full) and
/// stopped receiving its updates until a resync.
pub const FELL_BEHIND: &str = "folio_fell_behind_total";
/// Resyncs sent to connections that had fallen behind.
pub const RESYNCS: &str = "folio_resyncs_total";
/// Messages dropped for a connection's rate limit, by `kind`.
pub const RATE_LIMITED: &str = "folio_rate_limited_total";
/// WebSocket and SSE requests refused at a connection cap, by `cap`
/// (`total` or `per_ip`).
pub const CONNECTIONS_REFUSED: &str = "folio_connections_refused_total";
/// Connections the server closed for not keeping up, by `reason`
/// (`stalled`: a WebSocket's socket took nothing; `ping_timeout`;
/// `sse_stalled`: an SSE watcher's connection took nothing for the stall
/// timeout; `http_stalled`: any other HTTP response, the same).
pub const CLOSED: &str = "folio_connections_closed_total";
/// Seconds one group commit took: the batch write plus its fsync.
pub const FLUSH_SECONDS: &str = "folio_store_flush_seconds";
/// Seconds to queue one broadcast to every member of a document.
pub const FAN_OUT_SECONDS: &str = "folio_fan_out_seconds";

/// Flush buckets: an fsync is 0.1 ms on a good SSD, tens of ms on a busy disk.
const FLUSH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Fan-out buckets: queuing to 100 members should take microseconds.
const FAN_OUT_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.01,
    0.1,
];

/// How often histogram samples are folded in when nobody scrapes, which
/// bounds the memory they take between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Every [`ErrorCode`], indexed by its wire value, with its label.
const ERROR_CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::Unspecified, "unspecified"),
    (ErrorCode::MalformedMessage, "malformed_message"),
    (ErrorCode::UnknownMessage, "unknown_message"),
    (ErrorCode::HelloRequired, "hello_required"),
    (ErrorCode::UnsupportedVersion, "unsupported_version"),
    (ErrorCode::InvalidDocId, "invalid_doc_id"),
    (ErrorCode::NotSubscribed, "not_subscribed"),
    (ErrorCode::AlreadySubscribed, "already_subscribed"),
    (ErrorCode::InvalidUpdate, "invalid_update"),
    (ErrorCode::InvalidAwareness, "invalid_awareness"),
    (ErrorCode::TooManyDocs, "too_many_docs"),
    (ErrorCode::InvalidStateVector, "invalid_state_vector"),
    (ErrorCode::StorageFailure, "storage_failure"),
    (ErrorCode::ShuttingDown, "shutting_down"),
    (ErrorCode::DocReloaded, "doc_reloaded"),
    (ErrorCode::SlowConsumer, "slow_consumer"),
    (ErrorCode::Internal, "internal"),
    (ErrorCode::DocDeleted, "doc_deleted"),
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::ReadOnly, "read_only"),
    (ErrorCode::TokenExpired, "token_expired"),
    (ErrorCode::TokenRevoked, "token_revoked"),
    (ErrorCode::DocTooLarge, "doc_too_large"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::ServerBusy, "server_busy"),
    (ErrorCode::DocNotFound, "doc_not_found"),
];

/// Label values of the labelled counters, in the order of their handles.
const RATE_LIMITED_KINDS: &[&str] = &["update", "awareness"];
const REFUSED_CAPS: &[&str] = &["total", "per_ip"];
const CLOSE_REASONS: &[&str] = &["stalled", "ping_timeout", "sse_stalled", "http_stalled"];

/// The `code` label of an error code, as `/metrics` shows it.
pub fn error_label(code: ErrorCode) -> &'static str {
    ERROR_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("unknown", |(_, label)| label)
}

struct Handles {
    render: PrometheusHandle,
    connections: Gauge,
    subscriptions: Gauge,
    watchers: Gauge,
    documents_resident: Gauge,
    updates_applied: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    evictions: Counter,
    fell_behind: Counter,
    resyncs: Counter,
    /// One per [`RATE_LIMITED_KINDS`] entry, and so on.
    rate_limited: Vec<Counter>,
    connections_refused: Vec<Counter>,
    closed: Vec<Counter>,
    /// One counter per [`ERROR_CODES`] entry, same order.
    errors: Vec<Counter>,
    flush_seconds: Histogram,
    fan_out_seconds: Histogram,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Builds the process's recorder and registers every metric; later calls do
/// nothing. The recorder also becomes the `metrics` crate's global recorder
/// unless the embedding program installed its own, in which case Folio's
/// metrics still work (their handles point at Folio's recorder) and only
/// other `metrics::counter!` calls go elsewhere.
pub fn install() {
    HANDLES.get_or_init(build);
}

fn build() -> Handles {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FLUSH_SECONDS.into()), FLUSH_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(FAN_OUT_SECONDS.into()), FAN_OUT_BUCKETS)
        });
    let builder = match builder {
        Ok(b) => b,
        // Only empty bucket lists are refused, and ours are constants.
        Err(e) => {
            tracing::error!(error = %e, "metrics buckets refused; using summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let counter = |name: &'static str, unit: Unit, help: &'static str| {
        recorder.describe_counter(
            KeyName::from_const_str(name),
            Some(unit),
            SharedString::const_str(help),
        );
        recorder.register_counter(&Key::from_static_name(name), &METADATA)
    };
    let gauge = |name: &'static str, help: &'static str| {
        recorder.describe_gauge(
            KeyName::from_const_str(name),
            Some(Unit::Count),
            SharedString::const_str(help),
        );
        recorder.register_gauge(&Key::from_static_name(name), &METADATA)
    };
    let labelled =
        |name: &'static str, help: &'static str, label: &'static str, values: &[&'static str]| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                Some(Unit::Count),
                SharedString::const_str(help),
            );
            values
                .iter()
                .map(|value| {
                    let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
                    recorder.register_counter(&key, &METADATA)
                })
                .collect::<Vec<_>>()
        };
    let histogram = |name: &'static str, help: &'static str| {
        recorder.describe_histogram(
            KeyName::from_const_str(name),
            Some(Unit::Seconds),
            SharedString::const_str(help),
        );
        recorder.register_histogram(&Key::from_static_name(name), &METADATA)
    };
    let handles = Handles {
        render: recorder.handle(),
        connections: gauge(CONNECTIONS, "Open WebSocket connections."),
        subscriptions: gauge(SUBSCRIPTIONS, "Document subscriptions of all connections."),
        watchers: gauge(WATCHERS, "SSE watchers of documents."),
        documents_resident: gauge(DOCUMENTS_RESIDENT, "Documents in memory."),
        updates_applied: counter(
            UPDATES_APPLIED,
            Unit::Count,
            "Updates applied to documents.",
        ),
        bytes_in: counter(
            BYTES_IN,
            Unit::Bytes,
            "Bytes of binary frames received on /ws.",
        ),
        bytes_out: counter(
            BYTES_OUT,
            Unit::Bytes,
            "Bytes of frames written to WebSockets.",
        ),
        evictions: counter(
            EVICTIONS,
            Unit::Count,
            "Idle documents evicted from memory.",
        ),
        fell_behind: counter(
            FELL_BEHIND,
            Unit::Count,
            "Times a connection fell behind a document for lack of queue room.",
        ),
        resyncs: counter(
            RESYNCS,
            Unit::Count,
            "Resyncs sent to connections that fell behind.",
        ),
        rate_limited: labelled(
            RATE_LIMITED,
            "Messages dropped for a connection's rate limit.",
            "kind",
            RATE_LIMITED_KINDS,
        ),
        connections_refused: labelled(
            CONNECTIONS_REFUSED,
            "WebSocket and SSE requests refused at a connection cap.",
            "cap",
            REFUSED_CAPS,
        ),
        closed: labelled(
            CLOSED,
            "Connections closed for not keeping up.",
            "reason",
            CLOSE_REASONS,
        ),
        errors: {
            recorder.describe_counter(
                KeyName::from_const_str(ERRORS),
                Some(Unit::Count),
                SharedString::const_str("Error messages sent to clients, by code."),
            );
            ERROR_CODES
                .iter()
                .map(|(_, label)| {
                    let key =
                        Key::from_parts(ERRORS, vec![Label::from_static_parts("code", label)]);
                    recorder.register_counter(&key, &METADATA)
                })
                .collect()
        },
        flush_seconds: histogram(FLUSH_SECONDS, "Group commit time: batch write and fsync."),
        fan_out_seconds: histogram(
            FAN_OUT_SECONDS,
            "Time to queue one broadcast to all members.",
        ),
    };
    if ::metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!(
            "another metrics recorder is installed; /metrics shows Folio's own metrics only"
        );
    }
    let upkeep = handles.render.clone();
    let spawned = std::thread::Builder::new()
        .name("folio-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Scrapes still fold samples in; only an unscraped server accumulates.
        tracing::warn!(error = %e, "could not start the metrics upkeep thread");
    }
    handles
}

/// One server's state at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub connections: usize,
    pub subscriptions: usize,
    pub watchers: usize,
    pub documents_resident: usize,
}

/// The Prometheus text exposition of every metric, with `sample`'s gauges.
pub fn render(sample: Sample) -> String {
    install();
    let Some(h) = HANDLES.get() else {
        return String::new();
    };
    h.connections.set(sample.connections as f64);
    h.subscriptions.set(sample.subscriptions as f64);
    h.watchers.set(sample.watchers as f64);
    h.documents_resident.set(sample.documents_resident as f64);
    h.render.render()
}

/// An update changed a document.
pub fn update_applied() {
    if let Some(h) = HANDLES.get() {
        h.updates_applied.increment(1);
    }
}

/// A binary frame of `bytes` arrived on `/ws`.
pub fn received(bytes: usize) {
    if let Some(h) = HANDLES.get() {
        h.bytes_in.increment(bytes as u64);
    }
}

/// A frame of `bytes` was written to a WebSocket.
pub fn sent(bytes: usize) {
    if let Some(h) = HANDLES.get() {
        h.bytes_out.increment(bytes as u64);
    }
}

/// A document was evicted from memory.
pub fn evicted() {
    if let Some(h) = HANDLES.get() {
        h.evictions.increment(1);
    }
}

/// A connection fell behind a document.
pub fn fell_behind() {
    if let Some(h) = HANDLES.get() {
        h.fell_behind.increment(1);
    }
}

/// A connection that fell behind was resynced.
pub fn resynced() {
    if let Some(h) = HANDLES.get() {
        h.resyncs.increment(1);
    }
}

/// A message was dropped for the rate limit.
pub fn rate_limited(kind: crate::rate::Kind) {
    if let Some(h) = HANDLES.get() {
        let at = match kind {
            crate::rate::Kind::Update => 0,
            crate::rate::Kind::Awareness => 1,
        };
        if let Some(c) = h.rate_limited.get(at) {
            c.increment(1);
        }
    }
}

/// A connection was refused at a cap: `"total"` or `"per_ip"`.
pub fn connection_refused(cap: &str) {
    if let Some(h) = HANDLES.get() {
        let at = REFUSED_CAPS.iter().position(|c| *c == cap);
        if let Some(c) = at.and_then(|at| h.connections_refused.get(at)) {
            c.increment(1);
        }
    }
}

/// The server closed a connection for `reason`, one of `stalled`,
/// `ping_timeout`, `sse_stalled` and `http_stalled`.
pub fn closed(reason: &str) {
    if let Some(h) = HANDLES.get() {
        let at = CLOSE_REASONS.iter().position(|r| *r == reason);
        if let Some(c) = at.and_then(|at| h.closed.get(at)) {
            c.increment(1);
        }
    }
}

/// An error message with `code` was sent to a client.
pub fn error(code: ErrorCode) {
    if let Some(h) = HANDLES.get() {
        let at = ERROR_CODES.iter().position(|(c, _)| *c == code);
        if let Some(counter) = at.and_then(|at| h.errors.get(at)) {
            counter.increment(1);
        }
    }
}

/// One group commit (batch write and fsync) took `took`.
pub fn flushed(took: Duration) {
    if let Some(h) = HANDLES.get() {
        h.flush_seconds.record(took.as_secs_f64());
    }
}

/// Queuing one broadcast to every member took `took`.
pub fn fanned_out(took: Duration) {
    if let Some(h) = HANDLES.get() {
        h.fan_out_seconds.record(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_a_distinct_label() {
        let mut labels: Vec<&str> = ERROR_CODES.iter().map(|(_, l)| *l).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ERROR_CODES.len());
        // Every wire value the enum defines has a label.
        for value in 0..64 {
            if let Ok(code) = ErrorCode::try_from(value) {
                assert_ne!(error_label(code), "unknown", "{code:?}");
            }
        }
    }

    #[test]
    fn render_shows_the_sampled_gauges_and_recorded_events() {
        install();
        update_applied();
        error(ErrorCode::TooManyDocs);
        flushed(Duration::from_micros(300));
        let text = render(Sample {
            connections: 3,
            ..Sample::default()
        });
        assert!(text.contains("folio_connections 3"), "{text}");
        assert!(text.contains(UPDATES_APPLIED), "{text}");
        assert!(
            text.contains(r#"folio_errors_total{code="too_many_docs"}"#),
            "{text}"
        );
        assert!(text.contains("folio_store_flush_seconds_bucket"), "{text}");
    }
}
