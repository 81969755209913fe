//! Test helpers: start the server in-process or as a child process, and
//! wait for conditions with a generous bound (these machines are noisy, so
//! bounds are for liveness, never for speed).

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio::config::ServeConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long `eventually` waits before failing a test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Log lines a [`ChildServer::spawn_with_logs`] keeps; later ones are dropped.
pub const MAX_KEPT_LOG_LINES: usize = 10_000;

/// Turns on logs when `TEST_LOG=1`.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        folio::telemetry::init();
    }
}

/// The server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), folio::server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with default settings on a fresh temp dir.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, |_| {}).await
    }

    /// Starts a server on `dir`, letting the test adjust the config.
    pub async fn start_with(dir: &Path, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let mut config = ServeConfig::new(addr, dir.to_owned());
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(folio::server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            data_dir: dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful shutdown; returns once everything is flushed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task did not panic")
                .expect("server stopped cleanly");
        }
    }

    /// Waits for the server task to end by itself (a failed start, say)
    /// and returns its result, failing the test after [`PATIENCE`].
    pub async fn outcome(mut self) -> Result<(), folio::server::ServerError> {
        let task = self.task.take().expect("server task present");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("server task ended in time")
            .expect("server task did not panic")
    }

    /// GET `path` as text, with its status.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(self.url(path)).await.expect("http get");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// GET `path` as bytes, asserting 200.
    pub async fn get_bytes(&self, path: &str) -> bytes::Bytes {
        let resp = reqwest::get(self.url(path)).await.expect("http get");
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.bytes().await.expect("body")
    }

    /// The server's text of `doc`.
    pub async fn text(&self, doc: &str) -> String {
        let (status, body) = self.get_text(&format!("/docs/{doc}/text")).await;
        assert_eq!(status, 200, "GET text of {doc}: {body}");
        body
    }
}

/// The `folio` binary running as a child process, for crash and signal tests.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Spawns `folio serve` on an ephemeral port over `dir` and waits until it listens.
    pub fn spawn(dir: &Path, extra: &[&str]) -> Self {
        Self::start(dir, extra, "info", None)
    }

    /// As [`ChildServer::spawn`] with `RUST_LOG=rust_log`, keeping the log
    /// lines it prints (the first [`MAX_KEPT_LOG_LINES`]) for the test to read.
    pub fn spawn_with_logs(
        dir: &Path,
        extra: &[&str],
        rust_log: &str,
    ) -> (Self, Arc<Mutex<Vec<String>>>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        (Self::start(dir, extra, rust_log, Some(kept.clone())), kept)
    }

    fn start(
        dir: &Path,
        extra: &[&str],
        rust_log: &str,
        kept: Option<Arc<Mutex<Vec<String>>>>,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_folio"))
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn folio");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("folio exited before listening")
                .expect("read stdout");
            if let Some(addr) = parse_addr(&line) {
                break addr;
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(kept) = &kept {
                    let mut kept = kept.lock().expect("log lines");
                    if kept.len() < MAX_KEPT_LOG_LINES {
                        kept.push(line);
                    }
                }
            }
        });
        Self { child, addr }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for exit")
    }
}

/// A test that fails before stopping its server does not leave it running
/// (and holding the test's output pipe). A child already reaped is not
/// signalled again.
impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("folio serving") {
        return None;
    }
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A seed from `TEST_SEED`, or a fresh one; printed so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("TEST_SEED={seed}");
    seed
}

/// Sends `method` to `url` with an optional JSON body; the status and the
/// answer as JSON (`Value::Null` for an empty body).
pub async fn json_request(
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, value)
}
