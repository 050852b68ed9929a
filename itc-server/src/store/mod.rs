//! Persistence behind a trait, so that the core does not know where its state lives.
//!
//! The core owns the working state in memory and hands every change to the store as a
//! [`Batch`], in the order the changes happened (it calls [`Store::commit`] while still
//! holding its own lock, so batches arrive in seq order). A call is acknowledged to its
//! client only once the batch's [`Commit`] resolves. Implementations: [`LogStore`] (the
//! default: an embedded append-only log with snapshots, no thread hand-off per commit),
//! [`SqliteStore`] (embedded SQLite, group-committed by a writer thread) and
//! [`MemoryStore`] (nothing survives the process; it retains the event log for replay). A networked backend is
//! another implementation of the same trait (DESIGN §8).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::core::{Command, Event, InputRequest, Task};

mod log;
mod memory;
mod sqlite;

pub use log::{LOG_FORMAT, LogOptions, LogStore};
pub use memory::MemoryStore;
pub use sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption…); the message says how.
    #[error("{0}")]
    Backend(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// One atomic unit of change: task rows to write or forget, and events to append.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tasks to insert or replace, as they are after the change.
    pub upserts: Vec<Arc<Task>>,
    /// Tasks to forget (finished tasks past retention).
    pub removals: Vec<String>,
    /// Events to append, in seq order, continuing the log without a gap.
    pub events: Vec<Arc<Event>>,
    /// Open commands admitted or changed by this change, as they are after it (they are
    /// also in their tasks' `open_commands`: a store may write each command once, when it
    /// changes, instead of with every write of its task).
    pub commands: Vec<Arc<Command>>,
    /// Commands that reached their final state (kept, bounded, for reads and retries).
    pub closed_commands: Vec<Command>,
    /// Input requests that were closed (kept, bounded, for reads).
    pub closed_inputs: Vec<InputRequest>,
    /// Service-wide values to keep (`global_interrupt`, `interactions`).
    pub meta: Vec<(&'static str, i64)>,
}

/// Resolves once a batch is durable (or failed to be).
pub type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// What a store holds when the server starts.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every retained task.
    pub tasks: Vec<Task>,
    /// The newest seq written; the log continues after it.
    pub head_seq: u64,
    /// Closed commands kept, oldest first.
    pub closed_commands: Vec<Command>,
    /// Closed input requests kept, oldest first.
    pub closed_inputs: Vec<InputRequest>,
    /// Service-wide values.
    pub meta: std::collections::HashMap<String, i64>,
}

/// Where the core's state persists.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`memory`, `sqlite`).
    fn name(&self) -> &'static str;

    /// Reads back what the store holds, once, at start.
    fn recover(&self) -> Result<Recovered, StoreError>;

    /// Submits a batch. The core calls it under its lock, so it must not wait on anything
    /// but its own short work: handing the batch to a thread (SQLite), or taking its place
    /// in the write order (the log store, which encodes and writes when the returned
    /// future is first polled, or dropped, after the core's lock is released), never a
    /// disk sync. The returned future resolves when the batch is durable; batches become
    /// durable in call order.
    fn commit(&self, batch: Batch) -> Commit;

    /// Up to `limit` retained events with seq greater than `after_seq`, oldest first.
    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError>;

    /// The oldest retained seq (head + 1 when the log is empty).
    fn oldest_seq(&self) -> u64;

    /// The newest seq known durable: every batch up to it has committed. Read after a
    /// batch's commit resolves, it covers at least that batch, and often the batches
    /// committed with it, so that one wake-up can publish the whole group (0: unknown).
    fn durable_seq(&self) -> u64 {
        0
    }

    /// Finishes every queued batch and stops taking new ones (at shutdown). Blocks.
    fn flush(&self) {}
}

/// When a commit is acknowledged, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncLevel {
    /// Every commit is synced to disk before it is acknowledged (one sync serves every
    /// commit that arrived while the previous one ran): survives a power loss.
    Full,
    /// A commit is acknowledged once the OS holds it: survives a crash of the server
    /// (`kill -9`), which is what DESIGN §5.7 promises. The log store syncs every
    /// `sync_interval`, so a power loss of the machine loses at most about that much;
    /// SQLite runs `synchronous=NORMAL` (synced at checkpoints). The default.
    #[default]
    Normal,
    /// Never synced by the store (the OS writes back when it likes): for benchmarks and
    /// throwaway data.
    Off,
}

/// Which embedded store keeps a server's state in its data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// [`LogStore`]: an append-only log with snapshots (the default).
    #[default]
    Log,
    /// [`SqliteStore`]: SQLite in WAL mode.
    Sqlite,
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "log" => Ok(StoreKind::Log),
            "sqlite" => Ok(StoreKind::Sqlite),
            other => Err(format!("{other:?} is not a store (log, sqlite)")),
        }
    }
}

impl std::str::FromStr for SyncLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(SyncLevel::Full),
            "normal" => Ok(SyncLevel::Normal),
            "off" => Ok(SyncLevel::Off),
            other => Err(format!("{other:?} is not a sync level (full, normal, off)")),
        }
    }
}

/// Locks `data_dir/LOCK` for this process; another live server holding it is refused.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| dir_error(&format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "{} is in use by another itc-server; stop it or choose another --data-dir",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(dir_error(&format!("cannot lock {}", path.display()), e)),
    }
}

fn dir_error(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

/// Values the stores' tests write.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::core::{Event, EventDetail, EventType, Task};

    pub(crate) fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            kind: EventType::RealTimeUpdate,
            time: SystemTime::now(),
            task_id: Some("t".into()),
            agent_id: None,
            coordinator_id: None,
            caused_by: None,
            data: None,
            task_version: seq,
            task_status: None,
            detail: EventDetail::None,
            wire: Default::default(),
        })
    }

    pub(crate) fn task(id: &str, version: u64) -> Arc<Task> {
        let now = SystemTime::now();
        Arc::new(Task {
            id: id.into(),
            agent_id: "a".into(),
            description: String::new(),
            status: crate::core::TaskStatus::Running,
            progress: 0.0,
            status_message: format!("v{version}"),
            metadata: None,
            priority: 0,
            plan: crate::core::Plan::default(),
            version,
            create_time: now,
            start_time: None,
            update_time: now,
            finish_time: None,
            controlling_coordinator: None,
            result: None,
            error: None,
            reason: None,
            stalled: false,
            orphaned: false,
            stall_timeout: Duration::from_secs(300),
            create_seq: 1,
            lock: None,
            open_inputs: Vec::new(),
            open_commands: Vec::new(),
            last_command: None,
            wire: Default::default(),
        })
    }

    /// Batch `seq` of the "each task as last written" tests: `hot` written every time,
    /// `gone` written (10) then removed (20), `back` removed (30, never there) then written
    /// (40).
    pub(crate) fn hot_gone_back(seq: u64) -> crate::store::Batch {
        let mut batch = crate::store::Batch {
            events: vec![event(seq)],
            upserts: vec![task("hot", seq)],
            ..Default::default()
        };
        match seq {
            10 => batch.upserts.push(task("gone", seq)),
            20 => batch.removals.push("gone".into()),
            30 => batch.removals.push("back".into()),
            40 => batch.upserts.push(task("back", seq)),
            _ => {}
        }
        batch
    }

    /// What 50 batches of [`hot_gone_back`] add up to: `hot` at 50 and `back` at 40.
    pub(crate) fn assert_hot_and_back(recovered: &crate::store::Recovered) {
        assert_eq!(recovered.head_seq, 50);
        let versions: Vec<(String, u64)> = recovered.tasks.iter().map(|t| (t.id.clone(), t.version)).collect();
        assert!(versions.contains(&("hot".into(), 50)), "{versions:?}");
        assert!(versions.contains(&("back".into(), 40)), "{versions:?}");
        assert_eq!(versions.len(), 2, "{versions:?}");
    }

    /// A second store on the same data dir is refused while the first is open, and
    /// opens once the first is gone.
    pub(crate) fn assert_one_server_per_data_dir<S>(open: impl Fn(&std::path::Path) -> Result<S, super::StoreError>) {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        let err = open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("in use by another itc-server"), "{err}");
        drop(first);
        assert!(open(dir.path()).is_ok());
    }
}
