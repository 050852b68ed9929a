//! The servers under test, each in a child process of this binary (`itc-bench serve …`),
//! so that their memory and CPU time are their own and not the load generator's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::BenchError;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The raw tonic baseline.
    Baseline,
    /// ITC with its default durable store (the log, `sync = normal`, unless `--store` or
    /// `--sync` say otherwise) in a fresh temporary directory.
    Durable,
    /// ITC with the in-memory store.
    Memory,
    /// An ITC server someone else runs (`--addr`).
    External,
}

impl Kind {
    /// The label used in reports.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Durable => "durable",
            Self::Memory => "in-memory",
            Self::External => "external",
        }
    }

    /// Whether this is ITC (not the baseline).
    pub(crate) fn is_itc(self) -> bool {
        self != Self::Baseline
    }
}

/// A server to drive: a child process, or one given with `--addr`.
pub(crate) struct Server {
    /// `http://host:port`.
    pub(crate) url: String,
    /// What it is.
    pub(crate) kind: Kind,
    child: Option<Child>,
    pid: Option<u32>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `kind` in a child process on an ephemeral loopback port; the durable one
    /// with `store_args` (`--store=…`, `--sync=…`).
    pub(crate) async fn spawn(kind: Kind, store_args: &[String]) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Server(format!("cannot find this binary: {e}")))?;
        let mut command = Command::new(exe);
        command.arg("serve");
        let dir = match kind {
            Kind::External => return Err(BenchError::Server("an external server is not started here".into())),
            Kind::Baseline => {
                command.arg("baseline");
                None
            }
            Kind::Memory => {
                command.arg("itc").arg("--in-memory");
                None
            }
            Kind::Durable => {
                let dir = tempfile::Builder::new()
                    .prefix("itc-bench-")
                    .tempdir()
                    .map_err(|e| BenchError::Server(format!("cannot make a data dir: {e}")))?;
                command.arg("itc").arg("--data-dir").arg(dir.path()).args(store_args);
                Some(dir)
            }
        };
        // The child exits when its stdin closes, so it never outlives this process.
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start the {} server: {e}", kind.label())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("no stdout".into()))?;
        // The server logs as in production (info); only its warnings and errors are shown.
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("WARN") || line.contains("ERROR") || line.contains("panicked") {
                        eprintln!("  [{label} server] {line}", label = kind.label());
                    }
                }
            });
        }
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| BenchError::Server(format!("the {} server did not start in 30 s", kind.label())))?
            .map_err(|e| BenchError::Server(e.to_string()))?
            .ok_or_else(|| BenchError::Server(format!("the {} server exited at start", kind.label())))?;
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Server(format!("unexpected first line from the server: {line:?}")))?;
        Ok(Self {
            url: format!("http://{addr}"),
            kind,
            pid: child.id(),
            child: Some(child),
            _dir: dir,
        })
    }

    /// A server someone else runs, at `url`; `pid` (if known) enables RSS and CPU figures.
    pub(crate) fn external(url: String, kind: Kind, pid: Option<u32>) -> Self {
        Self {
            url,
            kind,
            child: None,
            pid,
            _dir: None,
        }
    }

    /// Resident memory of the server process, in bytes.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// CPU time (user + system) the server process has used, in seconds.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // The command name (field 2) may hold spaces: count from the closing parenthesis.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of the file are 11 and 12 after the state (field 3).
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) / ticks as f64)
    }

    /// Stops a child server (closing its stdin asks it to exit) and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
