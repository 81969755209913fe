//! The processes a run measures: servers spawned as children (pinned with
//! `taskset` when asked), and their CPU time, RSS and disk use read from
//! `/proc` and the data dir.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};

use super::{Protocol, RunArgs};

/// Longest wait for a spawned server to listen or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A server (Folio or echo) the tool spawned; terminated on drop.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: Option<PathBuf>,
}

impl Spawned {
    /// The child's pid (for CPU time and RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawns `program args…` (under `taskset` when asked) and waits for the
    /// line naming the address it listens on.
    pub fn start(
        program: &Path,
        args: &[String],
        cpus: Option<&str>,
        marker: &str,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "warn,folio=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<SocketAddr>(1);
        let marker = marker.to_owned();
        // Reads the address, then keeps draining so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if !sent && line.contains(&marker) {
                    if let Some(addr) = parse_addr(&line) {
                        sent = tx.send(addr).is_ok();
                    }
                }
            }
        });
        let mut spawned = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
        };
        spawned.addr = rx
            .recv_timeout(PROCESS_TIMEOUT)
            .map_err(|_| anyhow!("{} did not report its address", program.display()))?;
        Ok(spawned)
    }

    /// SIGTERM, then a bounded wait; SIGKILL if it does not exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops the child and removes its data dir.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn parse_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Where a scenario sends its traffic.
pub struct Target {
    pub ws_url: String,
    pub pid: Option<u32>,
    pub data_dir: Option<PathBuf>,
    /// Keeps a spawned server alive for the scenario.
    pub spawned: Option<Spawned>,
}

/// How servers are had: one external, or a fresh child per scenario.
pub struct Servers {
    pub url: Option<String>,
    pub protocol: Protocol,
    pub pid: Option<u32>,
    pub program: PathBuf,
    pub cpus: Option<String>,
    pub next_dir: u64,
}

/// Spawned servers run with every limit off (rates, caps, the resident
/// bound, the document size) and no pings: the tool measures raw rates and
/// sizes, and idle clients that read nothing would be pinged and closed.
const LIMITS_OFF: &[&str] = &[
    "--updates-per-sec",
    "0",
    "--awareness-per-sec",
    "0",
    "--max-connections",
    "0",
    "--max-connections-per-ip",
    "0",
    "--max-resident-docs",
    "0",
    "--max-doc-bytes",
    "0",
    "--ping-interval-secs",
    "0",
];

impl Servers {
    /// The `--url`/`--server-*` settings; checks `--url` is on loopback.
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.url {
            ensure!(
                url.starts_with("ws://127.0.0.1:") || url.starts_with("ws://localhost:"),
                "--url must be a loopback ws:// URL, got {url}"
            );
        }
        let program = match &args.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().context("locating this binary")?,
        };
        Ok(Self {
            url: args.url.clone(),
            protocol: args.protocol,
            pid: args.server_pid,
            program,
            cpus: args.server_cpus.clone(),
            next_dir: 0,
        })
    }

    /// The external server, or a fresh child on a new temp dir that evicts
    /// nothing mid-measurement.
    pub fn get(&mut self) -> anyhow::Result<Target> {
        self.get_with(3600, LIMITS_OFF)
    }

    /// Like [`Servers::get`], but a spawned server evicts documents after
    /// `evict_idle_secs` without subscribers (scenario f). An external
    /// server keeps its own setting.
    pub fn get_evicting(&mut self, evict_idle_secs: u64) -> anyhow::Result<Target> {
        self.get_with(evict_idle_secs, LIMITS_OFF)
    }

    /// Like [`Servers::get_evicting`], with `extra` arguments for a spawned
    /// server (scenario h keeps the default limits, bar the connection cap).
    pub fn get_with(&mut self, evict_idle_secs: u64, extra: &[&str]) -> anyhow::Result<Target> {
        if let Some(url) = &self.url {
            return Ok(Target {
                ws_url: url.clone(),
                pid: self.pid,
                data_dir: None,
                spawned: None,
            });
        }
        self.next_dir += 1;
        let dir = std::env::temp_dir().join(format!(
            "folio-bench-{}-{}",
            std::process::id(),
            self.next_dir
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let args = vec![
            "serve".to_owned(),
            "--addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            dir.display().to_string(),
            "--evict-idle-secs".to_owned(),
            evict_idle_secs.to_string(),
        ]
        .into_iter()
        .chain(extra.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>();
        let spawned = Spawned::start(
            &self.program,
            &args,
            self.cpus.as_deref(),
            "folio serving",
            Some(dir.clone()),
        )?;
        Ok(Target {
            ws_url: match self.protocol {
                Protocol::Folio => format!("ws://{}/ws", spawned.addr),
                Protocol::Yjs => format!("ws://{}/yjs", spawned.addr),
            },
            pid: Some(spawned.pid()),
            data_dir: Some(dir),
            spawned: Some(spawned),
        })
    }

    /// A fresh echo server (the loopback baseline), on the server CPUs.
    pub fn echo(&self) -> anyhow::Result<Spawned> {
        let program = std::env::current_exe().context("locating this binary")?;
        Spawned::start(
            &program,
            &["echo".to_owned()],
            self.cpus.as_deref(),
            "echo listening",
            None,
        )
    }
}

impl Target {
    /// Stops the server if this scenario spawned it.
    pub fn finish(self) {
        if let Some(s) = self.spawned {
            s.stop();
        }
    }
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU used by the server and by this tool over a stretch of wall time.
pub struct CpuMeter {
    pub server: Option<(String, Duration)>,
    pub tool: Option<Duration>,
    pub wall: Instant,
}

impl CpuMeter {
    pub fn start(server_pid: Option<u32>) -> Self {
        let server = server_pid
            .map(|p| p.to_string())
            .and_then(|p| cpu_time(&p).map(|t| (p, t)));
        Self {
            server,
            tool: cpu_time("self"),
            wall: Instant::now(),
        }
    }

    /// `(server, tool)` CPU use as a fraction of one core.
    pub fn stop(&self) -> (Option<f64>, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let server = self.server.as_ref().and_then(|(pid, before)| {
            cpu_time(pid).map(|now| now.saturating_sub(*before).as_secs_f64() / wall)
        });
        let tool = self.tool.and_then(|before| {
            cpu_time("self").map(|now| now.saturating_sub(before).as_secs_f64() / wall)
        });
        (server, tool)
    }
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// File descriptors this process may still open, less a margin; bounds the
/// idle connections (the server, our child, inherits the same limit).
pub fn fd_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    soft.saturating_sub(256).max(16)
}
