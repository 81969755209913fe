//! Every setting of `folio serve`, from flags or `FOLIO_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::auth::AuthSecret;
use crate::doc::ShardSettings;
use crate::feed::FeedSettings;
use crate::history::retention::RetentionPolicy;

/// Settings of `folio serve`. Defaults suit one machine with sled in `./folio-data`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "FOLIO_ADDR", default_value = "127.0.0.1:4700")]
    pub addr: SocketAddr,

    /// Directory of the sled database (created if missing). One server per directory.
    #[arg(long, env = "FOLIO_DATA_DIR", default_value = "./folio-data")]
    pub data_dir: PathBuf,

    /// Write a full-state snapshot after this many updates to a document.
    #[arg(long, env = "FOLIO_SNAPSHOT_EVERY_UPDATES", default_value_t = 5000)]
    pub snapshot_every_updates: u64,

    /// Or after this many seconds with updates since the last snapshot.
    #[arg(long, env = "FOLIO_SNAPSHOT_INTERVAL_SECS", default_value_t = 60)]
    pub snapshot_interval_secs: u64,

    /// Take an "idle" version once a document has had no edit for this many seconds.
    #[arg(long, env = "FOLIO_VERSION_IDLE_SECS", default_value_t = 30)]
    pub version_idle_secs: u64,

    /// Evict a document from memory after this many seconds without subscribers.
    #[arg(long, env = "FOLIO_EVICT_IDLE_SECS", default_value_t = 30)]
    pub evict_idle_secs: u64,

    /// Largest WebSocket message or HTTP update body accepted, in bytes.
    #[arg(long, env = "FOLIO_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: u32,

    /// Most documents one WebSocket may follow at once.
    #[arg(long, env = "FOLIO_MAX_DOCS_PER_CONNECTION", default_value_t = 256)]
    pub max_docs_per_connection: u32,

    /// Most updates a connection may have sent but not yet had acknowledged;
    /// at the limit the server stops reading that socket until acks go out.
    #[arg(long, env = "FOLIO_MAX_UNACKED_UPDATES", default_value_t = 4096)]
    pub max_unacked_updates: u32,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Writes queued to disk before writers wait (group commit takes them all at once).
    #[arg(long, env = "FOLIO_WRITE_QUEUE_OPS", default_value_t = 65536)]
    pub write_queue_ops: usize,

    /// Watchers get one `activity` event per author per this many milliseconds.
    #[arg(long, env = "FOLIO_ACTIVITY_WINDOW_MS", default_value_t = 250)]
    pub activity_window_ms: u64,

    /// Feed events kept per document (and globally) for `Last-Event-ID` resumes.
    #[arg(long, env = "FOLIO_FEED_HISTORY_EVENTS", default_value_t = 1000)]
    pub feed_history_events: usize,

    /// Feed events older than this many seconds are no longer resumable.
    #[arg(long, env = "FOLIO_FEED_HISTORY_SECS", default_value_t = 300)]
    pub feed_history_secs: u64,

    /// Seconds between keep-alive comments on idle SSE streams.
    #[arg(long, env = "FOLIO_SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,

    /// The reconnect delay SSE clients are told to use (`retry:`), in milliseconds.
    #[arg(long, env = "FOLIO_SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,

    /// A text stream sends at most one `delta` event per this many milliseconds.
    #[arg(long, env = "FOLIO_TEXT_STREAM_INTERVAL_MS", default_value_t = 50)]
    pub text_stream_interval_ms: u64,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Apply the retention policy to every document this often, in seconds (0: never).
    #[arg(long, env = "FOLIO_COMPACT_INTERVAL_SECS", default_value_t = 3600)]
    pub compact_interval_secs: u64,

    /// PEM certificate chain (leaf first). With `--tls-key`, the server speaks
    /// TLS only, offering HTTP/2 and HTTP/1.1 by ALPN; without both, plain
    /// TCP (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, env = "FOLIO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "FOLIO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Secret (at least 32 bytes) that signs access tokens (HS256 JWTs; mint
    /// them with `folio token`). Without it the server runs open: no access
    /// control at all, for local development only.
    #[arg(long, env = "FOLIO_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<AuthSecret>,

    /// Run open (no --auth-secret) even on a non-loopback address.
    #[arg(long, env = "FOLIO_INSECURE_OPEN")]
    pub insecure_open: bool,

    /// Comma-separated browser origins (`https://app.example.com`) allowed to
    /// open WebSockets and SSE streams or call the API; requests from other
    /// origins get 403. Empty: every origin.
    #[arg(long, env = "FOLIO_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Comma-separated CIDRs (`10.0.0.0/8`, `::1/128`; a bare address is
    /// one host) of the reverse proxies in front of Folio. Only a TCP peer
    /// inside one of them is believed when it names the client in
    /// `Forwarded` or `X-Forwarded-For`; that address is then the one the
    /// per-IP connection cap and the logs use. Empty: headers are ignored.
    #[arg(long, env = "FOLIO_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<IpNet>,
}

/// One `--trusted-proxies` entry: a CIDR, or a bare address (one host).
fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

impl ServeConfig {
    /// The defaults, for `data_dir` and a given address. Tests start from this.
    pub fn new(addr: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            addr,
            data_dir,
            snapshot_every_updates: 5000,
            snapshot_interval_secs: 60,
            version_idle_secs: 30,
            evict_idle_secs: 30,
            max_message_bytes: 4 * 1024 * 1024,
            max_docs_per_connection: 256,
            max_unacked_updates: 4096,
            limits: LimitArgs::default(),
            write_queue_ops: 65536,
            activity_window_ms: 250,
            feed_history_events: 1000,
            feed_history_secs: 300,
            sse_keepalive_secs: 15,
            sse_retry_ms: 2000,
            text_stream_interval_ms: 50,
            retention: RetentionArgs::default(),
            compact_interval_secs: 3600,
            tls_cert: None,
            tls_key: None,
            auth_secret: None,
            insecure_open: false,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }

    /// The feed part of the settings.
    pub fn feed_settings(&self) -> FeedSettings {
        FeedSettings {
            activity_window: Duration::from_millis(self.activity_window_ms),
            history_events: self.feed_history_events.max(1),
            history_age: Duration::from_secs(self.feed_history_secs),
        }
    }

    /// The shard-level part of the settings.
    pub fn shard_settings(&self) -> ShardSettings {
        ShardSettings {
            snapshot_every_updates: self.snapshot_every_updates.max(1),
            snapshot_interval: Duration::from_secs(self.snapshot_interval_secs),
            version_idle: Duration::from_secs(self.version_idle_secs),
            max_doc_bytes: self.limits.max_doc_bytes,
        }
    }

    /// Idle time before eviction.
    pub fn evict_idle(&self) -> Duration {
        Duration::from_secs(self.evict_idle_secs)
    }
}

/// Limits that keep one client, or many, from taking the server down: sizes,
/// counts, rates, and how long a connection may stall. See docs/limits.md
/// for what happens at each.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LimitArgs {
    /// Largest encoded state of one document, in bytes: an update that would
    /// pass it is refused (DOC_TOO_LARGE; HTTP 413). 0: no limit.
    #[arg(long, env = "FOLIO_MAX_DOC_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_doc_bytes: u64,

    /// Most open WebSockets and SSE streams, all clients together; more get
    /// HTTP 503. 0: no limit.
    #[arg(long, env = "FOLIO_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most open WebSockets and SSE streams from one IP address; more get
    /// HTTP 503. 0: no limit.
    #[arg(long, env = "FOLIO_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,

    /// Most documents in memory. Loading one more first evicts the least
    /// recently used document nobody is subscribed to; if every resident
    /// document is in use, the load is refused (SERVER_BUSY; HTTP 503). 0: no limit.
    #[arg(long, env = "FOLIO_MAX_RESIDENT_DOCS", default_value_t = 10_000)]
    pub max_resident_docs: usize,

    /// Updates one connection may send per second on average (token bucket);
    /// the excess is dropped with RATE_LIMITED. 0: no limit.
    #[arg(long, env = "FOLIO_UPDATES_PER_SEC", default_value_t = 1_000)]
    pub updates_per_sec: u32,

    /// Updates one connection may send at once before the rate applies.
    #[arg(long, env = "FOLIO_UPDATE_BURST", default_value_t = 2_000)]
    pub update_burst: u32,

    /// Awareness messages one connection may send per second on average;
    /// the excess is dropped with RATE_LIMITED. 0: no limit.
    #[arg(long, env = "FOLIO_AWARENESS_PER_SEC", default_value_t = 100)]
    pub awareness_per_sec: u32,

    /// Awareness messages one connection may send at once before the rate applies.
    #[arg(long, env = "FOLIO_AWARENESS_BURST", default_value_t = 200)]
    pub awareness_burst: u32,

    /// Bytes queued for one connection before relayed updates to it are
    /// dropped (and replaced by one resync once the queue drains).
    #[arg(long, env = "FOLIO_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Close a connection (4030) whose socket has taken no bytes for this
    /// many seconds while data waited for it; SSE streams and other HTTP
    /// responses are disconnected after the same time.
    #[arg(long, env = "FOLIO_STALL_TIMEOUT_SECS", default_value_t = 30)]
    pub stall_timeout_secs: u64,

    /// Send a WebSocket ping after this many seconds without hearing from a
    /// connection. 0: never.
    #[arg(long, env = "FOLIO_PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,

    /// Close a connection (4031) that sends nothing, not even the pong,
    /// within this many seconds of a ping.
    #[arg(long, env = "FOLIO_PING_TIMEOUT_SECS", default_value_t = 20)]
    pub ping_timeout_secs: u64,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_doc_bytes: 16 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_resident_docs: 10_000,
            updates_per_sec: 1_000,
            update_burst: 2_000,
            awareness_per_sec: 100,
            awareness_burst: 200,
            outbound_queue_bytes: 1024 * 1024,
            stall_timeout_secs: 30,
            ping_interval_secs: 25,
            ping_timeout_secs: 20,
        }
    }
}

impl LimitArgs {
    /// Every limit off (the load tool's setting, which measures raw rates).
    pub fn unlimited() -> Self {
        Self {
            max_doc_bytes: 0,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_resident_docs: 0,
            updates_per_sec: 0,
            awareness_per_sec: 0,
            ..Self::default()
        }
    }

    /// How long the socket may take no bytes before the connection is closed.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs.max(1))
    }

    /// Quiet time before a ping (`None`: never ping).
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_secs > 0).then(|| Duration::from_secs(self.ping_interval_secs))
    }

    /// How long a ping may go unanswered.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs.max(1))
    }
}

/// How long history is kept in full, then hourly, then daily (shared by
/// `folio serve` and `folio compact`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RetentionArgs {
    /// Keep every version and log entry younger than this many seconds.
    #[arg(long, env = "FOLIO_HISTORY_KEEP_ALL_SECS", default_value_t = 24 * 3600)]
    pub history_keep_all_secs: u64,

    /// Then one version per hour until this age in seconds; one per day after.
    #[arg(long, env = "FOLIO_HISTORY_HOURLY_SECS", default_value_t = 30 * 24 * 3600)]
    pub history_hourly_secs: u64,

    /// Keep a thinned version's snapshot where dropping it would leave more
    /// than this many updates between snapshots (bounds the time to read a
    /// past point).
    #[arg(long, env = "FOLIO_HISTORY_SNAPSHOT_GAP", default_value_t = 10_000)]
    pub history_snapshot_gap: u64,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        let policy = RetentionPolicy::default();
        Self {
            history_keep_all_secs: policy.keep_all.as_secs(),
            history_hourly_secs: policy.hourly_for.as_secs(),
            history_snapshot_gap: policy.max_snapshot_gap,
        }
    }
}

impl RetentionArgs {
    /// The policy these settings describe.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_all: Duration::from_secs(self.history_keep_all_secs),
            hourly_for: Duration::from_secs(self.history_hourly_secs),
            max_snapshot_gap: self.history_snapshot_gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn clap_defaults_match_new() {
        let parsed = Cli::try_parse_from(["folio"])
            .expect("defaults parse")
            .serve;
        let built = ServeConfig::new(parsed.addr, parsed.data_dir.clone());
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn tls_flags_come_as_a_pair() {
        assert!(Cli::try_parse_from(["folio", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["folio", "--tls-key", "k.pem"]).is_err());
        let both = Cli::try_parse_from(["folio", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .expect("both parse")
            .serve;
        assert_eq!(both.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(both.tls_key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let parsed =
            Cli::try_parse_from(["folio", "--trusted-proxies", "10.1.2.3/8, 192.0.2.1,::1"])
                .expect("parse")
                .serve;
        let want: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]
            .iter()
            .map(|n| n.parse().expect("cidr"))
            .collect();
        assert_eq!(parsed.trusted_proxies, want);
        assert!(Cli::try_parse_from(["folio", "--trusted-proxies", "10.0.0.0/33"]).is_err());
        assert!(Cli::try_parse_from(["folio", "--trusted-proxies", "proxy.local"]).is_err());
    }
}
