//! The embedded, durable store: SQLite (bundled) in WAL mode, with group commit.
//!
//! One writer thread owns the write connection. It takes the first batch waiting, then
//! every batch that arrived meanwhile, writes them all in one transaction, commits (one
//! disk sync for the lot), and only then acknowledges each. Batches are written in the
//! order they were queued, which is seq order (the core queues them under its lock).
//! Reads (replay of old events) use a second connection: WAL lets them run beside the
//! writer.
//!
//! Layout: `tasks(id, create_seq, body)` and `events(seq, time_ms, body)`, bodies as JSON
//! of the core's types; the schema version is SQLite's `user_version`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::oneshot;

use super::{Batch, Commit, Recovered, Store, StoreError, SyncLevel, lock_dir};
use crate::core::{Event, Task};
use crate::metrics::StoreMetrics;

/// The schema this build writes. A data dir with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// Closed commands and input requests kept (each).
const KEPT_CLOSED: i64 = 10_000;

/// Marks the file as an ITC database (`PRAGMA application_id`, "ITC1").
const APPLICATION_ID: i64 = 0x4954_4331;

/// The most batches one transaction takes.
const MAX_GROUP: usize = 4096;

impl SyncLevel {
    fn pragma(self) -> &'static str {
        match self {
            SyncLevel::Full => "FULL",
            SyncLevel::Normal => "NORMAL",
            SyncLevel::Off => "OFF",
        }
    }
}

/// Options of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Directory of the database (created if missing).
    pub data_dir: PathBuf,
    /// Disk sync per commit.
    pub sync: SyncLevel,
    /// Events kept, by count.
    pub retention_count: usize,
    /// Events kept, by age.
    pub retention_age: Duration,
    /// Group commit: batch what arrives while a commit runs (false: one commit per
    /// batch, for comparison in benchmarks).
    pub group_commit: bool,
}

type Job = (Batch, oneshot::Sender<Result<(), StoreError>>);

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    reader: Mutex<Connection>,
    /// The newest seq written.
    head: Arc<AtomicU64>,
    /// The oldest seq retained.
    oldest: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held while the store is open: one server per data dir (freed by `flush`).
    dir_lock: Mutex<Option<std::fs::File>>,
}

/// Every blob of a one-column query.
fn bodies(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<Vec<u8>>> {
    let mut statement = conn.prepare(sql)?;
    let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    rows.collect()
}

fn backend(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (or creates) the store in `options.data_dir`: checks the schema version,
    /// migrates an older one, and starts the writer.
    pub fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_with_metrics(options, StoreMetrics::default())
    }

    /// As [`SqliteStore::open`], with the writer recording each group commit (its
    /// duration and its events) in `metrics`.
    pub fn open_with_metrics(options: SqliteOptions, metrics: StoreMetrics) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| backend(&format!("cannot create data dir {}", options.data_dir.display()), e))?;
        let dir_lock = lock_dir(&options.data_dir)?;
        let path = options.data_dir.join("itc.sqlite3");
        let log = options.data_dir.join("log");
        if !path.exists() && log.exists() {
            // Starting empty here would hide the log store's tasks (as the log store
            // refuses a data dir that holds an SQLite store).
            return Err(StoreError::Backend(format!(
                "{} holds a log store ({}); start with --store log (the default), or point --data-dir elsewhere",
                options.data_dir.display(),
                log.display()
            )));
        }
        let mut writer = Connection::open(&path).map_err(|e| backend(&format!("cannot open {}", path.display()), e))?;
        // Refuse a newer or foreign file before touching it.
        check_identity(&writer, &path)?;
        configure(&writer, options.sync).map_err(|e| refuse(&path, e))?;
        migrate(&mut writer, &path)?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| backend(&format!("cannot open {} for reading", path.display()), e))?;
        reader
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| backend("busy timeout", e))?;
        let (head, oldest) = bounds(&writer).map_err(|e| refuse(&path, e))?;
        let head = Arc::new(AtomicU64::new(head));
        let oldest = Arc::new(AtomicU64::new(oldest));
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = Writer {
            conn: writer,
            failed: None,
            head: head.clone(),
            oldest: oldest.clone(),
            retention_count: options.retention_count.max(1) as u64,
            retention_age: options.retention_age,
            group: options.group_commit,
            age_checked: None,
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("itc-store-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| backend("cannot start the writer thread", e))?;
        Ok(Self {
            path,
            jobs: Mutex::new(Some(tx)),
            reader: Mutex::new(reader),
            head,
            oldest,
            writer: Mutex::new(Some(thread)),
            dir_lock: Mutex::new(Some(dir_lock)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file that is not an ITC database, or one of a newer schema, is refused untouched.
fn check_identity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let read = |pragma: &str| conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0));
    let application = read("application_id").map_err(|e| refuse(path, e))?;
    let version = read("user_version").map_err(|e| refuse(path, e))?;
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| refuse(path, e))?;
    if application != APPLICATION_ID && (tables > 0 || version != 0) {
        return Err(refuse(path, "it is an SQLite database of another application"));
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "{} was written by a newer ITC (schema version {version}; this build knows up to {SCHEMA_VERSION}); \
             upgrade itc-server or use another --data-dir",
            path.display()
        )));
    }
    Ok(())
}

/// A data dir that cannot be used, with what to do about it.
fn refuse(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "{} is not a usable ITC database ({e}); move it away or point --data-dir elsewhere",
        path.display()
    ))
}

fn configure(conn: &Connection, sync: SyncLevel) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; PRAGMA foreign_keys=OFF;",
        sync.pragma()
    ))?;
    // Reads the whole database once: a corrupt file fails here, at start.
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "integrity check failed: {check}"
        )));
    }
    Ok(())
}

/// Versioned migrations: each step moves `user_version` up by one, in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| refuse(path, e))?;
    const STEPS: [&str; 3] = [
        "CREATE TABLE tasks (
             id TEXT PRIMARY KEY,
             create_seq INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE TABLE events (
             seq INTEGER PRIMARY KEY,
             time_ms INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE INDEX events_time ON events (time_ms);",
        // 2: what recovery needs beside tasks and events.
        "CREATE TABLE closed_commands (
             id TEXT PRIMARY KEY,
             seq INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE INDEX closed_commands_seq ON closed_commands (seq);
         CREATE TABLE closed_inputs (
             id TEXT PRIMARY KEY,
             seq INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE INDEX closed_inputs_seq ON closed_inputs (seq);
         CREATE TABLE meta (
             key TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         );",
        // 3: bodies write times and durations as integers of nanoseconds (`core::nanos`;
        // still read in the older form). No table changes: the version is what tells an
        // older build that it cannot read these bodies.
        "",
    ];
    for (step, sql) in STEPS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let to = step as i64 + 1;
        let tx = conn.transaction().map_err(|e| refuse(path, e))?;
        tx.execute_batch(sql)
            .and_then(|()| {
                tx.execute_batch(&format!(
                    "PRAGMA user_version = {to}; PRAGMA application_id = {APPLICATION_ID};"
                ))
            })
            .map_err(|e| refuse(path, format!("migration to schema {to}: {e}")))?;
        tx.commit()
            .map_err(|e| refuse(path, format!("migration to schema {to}: {e}")))?;
    }
    Ok(())
}

/// The newest and oldest seq in the log. Retention never deletes the newest event, so
/// the head survives a restart even when everything older was trimmed.
fn bounds(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let (min, max): (Option<i64>, Option<i64>) = conn.query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let head = max.map_or(0, |m| m as u64);
    let oldest = min.map_or(head + 1, |m| m as u64);
    Ok((head, oldest))
}

struct Writer {
    conn: Connection,
    /// Set by the first failed commit: every later batch fails too, so that nothing
    /// after a lost batch can be acknowledged (and make the lost one look durable).
    failed: Option<StoreError>,
    head: Arc<AtomicU64>,
    oldest: Arc<AtomicU64>,
    retention_count: u64,
    retention_age: Duration,
    group: bool,
    /// When age retention last ran: it runs at most once per [`AGE_CHECK`].
    age_checked: Option<std::time::Instant>,
    /// Commit duration and events per group.
    metrics: StoreMetrics,
}

/// How often the writer trims events past `event_retention_age` (count retention runs at
/// every commit that needs it).
const AGE_CHECK: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            if self.group {
                while jobs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            let result = match &self.failed {
                Some(e) => Err(e.clone()),
                None => {
                    let started = std::time::Instant::now();
                    let result = self.write(&jobs);
                    if result.is_ok() {
                        let events = jobs.iter().map(|(batch, _)| batch.events.len()).sum();
                        self.metrics.committed(events, started.elapsed());
                    }
                    result
                }
            };
            if let Err(e) = &result
                && self.failed.is_none()
            {
                self.failed = Some(StoreError::Backend(format!("the store failed earlier: {e}")));
            }
            for (_, done) in jobs {
                let _ = done.send(result.clone());
            }
        }
    }

    fn write(&mut self, jobs: &[Job]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| backend("begin", e))?;
        let mut head = self.head.load(Ordering::Acquire);
        let mut closed = 0usize;
        {
            let mut upsert = tx
                .prepare_cached("INSERT INTO tasks (id, create_seq, body) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET body = excluded.body")
                .map_err(|e| backend("prepare", e))?;
            let mut remove = tx
                .prepare_cached("DELETE FROM tasks WHERE id = ?1")
                .map_err(|e| backend("prepare", e))?;
            let mut append = tx
                .prepare_cached("INSERT INTO events (seq, time_ms, body) VALUES (?1, ?2, ?3)")
                .map_err(|e| backend("prepare", e))?;
            let mut keep_command = tx
                .prepare_cached("INSERT OR REPLACE INTO closed_commands (id, seq, body) VALUES (?1, ?2, ?3)")
                .map_err(|e| backend("prepare", e))?;
            let mut keep_input = tx
                .prepare_cached("INSERT OR REPLACE INTO closed_inputs (id, seq, body) VALUES (?1, ?2, ?3)")
                .map_err(|e| backend("prepare", e))?;
            let mut set_meta = tx
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                .map_err(|e| backend("prepare", e))?;
            // A task changed several times in one group is written once, as it is last:
            // the group commits atomically, so the earlier versions are never visible.
            let mut last_upsert: HashMap<&str, (usize, usize)> = HashMap::new();
            for (j, (batch, _)) in jobs.iter().enumerate() {
                for (k, task) in batch.upserts.iter().enumerate() {
                    last_upsert.insert(task.id.as_str(), (j, k));
                }
            }
            for (j, (batch, _)) in jobs.iter().enumerate() {
                for event in &batch.events {
                    if event.seq != head + 1 {
                        return Err(StoreError::Backend(format!(
                            "event seq {} does not follow head {head}",
                            event.seq
                        )));
                    }
                    let body = serde_json::to_vec(&**event).map_err(|e| backend("encode event", e))?;
                    append
                        .execute(params![event.seq as i64, millis(event.time), body])
                        .map_err(|e| backend("append event", e))?;
                    head = event.seq;
                }
                for (k, task) in batch.upserts.iter().enumerate() {
                    if last_upsert.get(task.id.as_str()) != Some(&(j, k)) {
                        continue;
                    }
                    let body = serde_json::to_vec(&**task).map_err(|e| backend("encode task", e))?;
                    upsert
                        .execute(params![task.id, task.create_seq as i64, body])
                        .map_err(|e| backend("write task", e))?;
                }
                for id in &batch.removals {
                    remove.execute(params![id]).map_err(|e| backend("forget task", e))?;
                }
                for command in &batch.closed_commands {
                    let body = serde_json::to_vec(command).map_err(|e| backend("encode command", e))?;
                    keep_command
                        .execute(params![command.id, head as i64, body])
                        .map_err(|e| backend("keep command", e))?;
                    closed += 1;
                }
                for input in &batch.closed_inputs {
                    let body = serde_json::to_vec(input).map_err(|e| backend("encode input", e))?;
                    keep_input
                        .execute(params![input.id, head as i64, body])
                        .map_err(|e| backend("keep input", e))?;
                    closed += 1;
                }
                for (key, value) in &batch.meta {
                    set_meta.execute(params![key, value]).map_err(|e| backend("meta", e))?;
                }
            }
        }
        if closed > 0 {
            for table in ["closed_commands", "closed_inputs"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE seq < (SELECT seq FROM {table} ORDER BY seq DESC LIMIT 1 OFFSET {KEPT_CLOSED})"
                    ),
                    [],
                )
                .map_err(|e| backend("retention of closed items", e))?;
            }
        }
        // Retention: by count when the log is longer than it keeps, by age once per
        // AGE_CHECK. The newest event always stays.
        let by_count = head.saturating_sub(self.retention_count);
        let age_due = self.age_checked.is_none_or(|at| at.elapsed() >= AGE_CHECK);
        let oldest_before = self.oldest.load(Ordering::Acquire);
        let mut oldest = oldest_before;
        if by_count >= oldest_before || age_due {
            let cutoff = if age_due {
                SystemTime::now().checked_sub(self.retention_age).map_or(0, millis)
            } else {
                0
            };
            let deleted = tx
                .prepare_cached("DELETE FROM events WHERE seq <= ?1 OR (time_ms < ?2 AND seq < ?3)")
                .and_then(|mut delete| delete.execute(params![by_count as i64, cutoff, head as i64]))
                .map_err(|e| backend("retention", e))?;
            if deleted > 0 {
                let min: Option<i64> = tx
                    .prepare_cached("SELECT MIN(seq) FROM events")
                    .and_then(|mut min| min.query_row([], |r| r.get(0)))
                    .map_err(|e| backend("retention", e))?;
                oldest = min.map_or(head + 1, |o| o as u64);
            }
        }
        tx.commit().map_err(|e| backend("commit", e))?;
        if age_due {
            self.age_checked = Some(std::time::Instant::now());
        }
        self.head.store(head, Ordering::Release);
        self.oldest.store(oldest, Ordering::Release);
        Ok(())
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statement = reader
            .prepare("SELECT body FROM tasks ORDER BY create_seq")
            .map_err(|e| refuse(&self.path, e))?;
        let rows = statement
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| refuse(&self.path, e))?;
        let mut tasks = Vec::new();
        for row in rows {
            let body = row.map_err(|e| refuse(&self.path, e))?;
            let task: Task =
                serde_json::from_slice(&body).map_err(|e| refuse(&self.path, format!("a task row: {e}")))?;
            tasks.push(task);
        }
        drop(statement);
        let mut closed_commands = Vec::new();
        for body in
            bodies(&reader, "SELECT body FROM closed_commands ORDER BY seq").map_err(|e| refuse(&self.path, e))?
        {
            closed_commands
                .push(serde_json::from_slice(&body).map_err(|e| refuse(&self.path, format!("a command row: {e}")))?);
        }
        let mut closed_inputs = Vec::new();
        for body in bodies(&reader, "SELECT body FROM closed_inputs ORDER BY seq").map_err(|e| refuse(&self.path, e))? {
            closed_inputs
                .push(serde_json::from_slice(&body).map_err(|e| refuse(&self.path, format!("an input row: {e}")))?);
        }
        let mut meta = std::collections::HashMap::new();
        let mut rows = reader
            .prepare("SELECT key, value FROM meta")
            .map_err(|e| refuse(&self.path, e))?;
        let pairs = rows
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| refuse(&self.path, e))?;
        for pair in pairs {
            let (key, value) = pair.map_err(|e| refuse(&self.path, e))?;
            meta.insert(key, value);
        }
        Ok(Recovered {
            tasks,
            head_seq: self.head.load(Ordering::Acquire),
            closed_commands,
            closed_inputs,
            meta,
        })
    }

    fn commit(&self, batch: Batch) -> Commit {
        let (done, wait) = oneshot::channel();
        let queued = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|jobs| jobs.send((batch, done)).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            wait.await.unwrap_or(Err(StoreError::Closed))
        })
    }

    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statement = reader
            .prepare_cached("SELECT body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| backend("read events", e))?;
        let rows = statement
            .query_map(params![after_seq as i64, limit as i64], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| backend("read events", e))?;
        let mut events = Vec::with_capacity(limit.min(1024));
        for row in rows {
            let body = row.map_err(|e| backend("read events", e))?;
            let event: Event = serde_json::from_slice(&body).map_err(|e| backend("decode event", e))?;
            events.push(Arc::new(event));
        }
        Ok(events)
    }

    fn oldest_seq(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }

    fn durable_seq(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn flush(&self) {
        // Closing the queue lets the writer finish what was queued, then stop.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
        // Nothing more is written: the data dir is free for the next server, even while
        // stray references to this store live on.
        self.dir_lock.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::testing::{assert_hot_and_back, assert_one_server_per_data_dir, event, hot_gone_back};

    fn options(dir: &Path) -> SqliteOptions {
        SqliteOptions {
            data_dir: dir.to_owned(),
            sync: SyncLevel::Normal,
            retention_count: 1000,
            retention_age: Duration::from_secs(3600),
            group_commit: true,
        }
    }

    /// Events written survive reopening; the head continues; retention by count trims the
    /// oldest but never the newest.
    #[tokio::test]
    async fn reopen_keeps_the_log_and_trims_by_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(SqliteOptions {
                retention_count: 5,
                ..options(dir.path())
            })
            .unwrap();
            for seq in 1..=12 {
                let batch = Batch {
                    events: vec![event(seq)],
                    ..Batch::default()
                };
                store.commit(batch).await.unwrap();
                assert_eq!(store.durable_seq(), seq, "durable as soon as its commit resolves");
            }
            assert_eq!(store.oldest_seq(), 8);
        }
        let store = SqliteStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 12);
        assert_eq!(store.oldest_seq(), 8);
        let seqs: Vec<u64> = store.read_events(9, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![10, 11, 12]);
        // A gap is refused, and nothing of that batch is written.
        let gap = Batch {
            events: vec![event(14)],
            ..Batch::default()
        };
        assert!(store.commit(gap).await.is_err());
        assert_eq!(store.recover().unwrap().head_seq, 12);
        assert_eq!(store.durable_seq(), 12, "a failed batch is never reported durable");
    }

    /// Commits queued together are written as one group in which each task is written
    /// once, as it is last; a removal after an upsert in the same group still removes it,
    /// and an upsert after a removal brings it back.
    #[tokio::test]
    async fn a_group_writes_each_task_as_it_is_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(options(dir.path())).unwrap();
        let mut commits = Vec::new();
        for seq in 1..=50u64 {
            // Queued without waiting: the writer groups whatever queued meanwhile.
            commits.push(store.commit(hot_gone_back(seq)));
        }
        for (seq, commit) in (1..).zip(commits) {
            commit.await.unwrap();
            // The batches committed with this one may be durable too, never fewer.
            assert!(store.durable_seq() >= seq);
        }
        assert_eq!(store.durable_seq(), 50);
        drop(store);
        let store = SqliteStore::open(options(dir.path())).unwrap();
        assert_hot_and_back(&store.recover().unwrap());
    }

    /// A data dir written by a newer schema is refused with a message saying so.
    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(options(dir.path())).unwrap());
        let conn = Connection::open(dir.path().join("itc.sqlite3")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = SqliteStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("newer ITC") && err.contains("99"), "{err}");
    }

    /// A corrupt database file is refused with a clear message.
    #[test]
    fn corrupt_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("itc.sqlite3"), vec![0x5a_u8; 8192]).unwrap();
        let err = SqliteStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("not a usable ITC database"), "{err}");
    }

    /// A second store on the same data dir is refused while the first is open.
    #[test]
    fn one_server_per_data_dir() {
        assert_one_server_per_data_dir(|dir| SqliteStore::open(options(dir)));
    }

    /// An SQLite file of another application is refused untouched.
    #[test]
    fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("itc.sqlite3")).unwrap();
        conn.execute_batch("CREATE TABLE tasks (x INTEGER)").unwrap();
        drop(conn);
        let err = SqliteStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("another application"), "{err}");
        let conn = Connection::open(dir.path().join("itc.sqlite3")).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 0, "left untouched");
    }

    /// A data dir that holds the log store is refused (starting empty would hide its
    /// tasks), naming the flag that opens it, and no SQLite file is left behind.
    #[test]
    fn a_log_store_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(
            crate::store::LogStore::open(crate::store::LogOptions {
                data_dir: dir.path().to_owned(),
                sync: SyncLevel::Normal,
                sync_interval: Duration::from_secs(1),
                retention_count: 1000,
                retention_age: Duration::from_secs(3600),
                segment_bytes: crate::store::LogOptions::SEGMENT_BYTES,
            })
            .unwrap(),
        );
        let err = SqliteStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("log store") && err.contains("--store log"), "{err}");
        assert!(!dir.path().join("itc.sqlite3").exists());
    }

    /// Closed commands, closed inputs and service values survive reopening.
    #[tokio::test]
    async fn closed_items_and_meta_survive() {
        use crate::core::{Command, CommandAction, CommandState};
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let command = Command {
            id: "c1".into(),
            idempotency_key: Some("k".into()),
            task_id: "t".into(),
            coordinator_id: "sup".into(),
            action: CommandAction::Custom,
            data: None,
            state: CommandState::Applied,
            reason: None,
            result: None,
            fencing_token: 0,
            create_time: now,
            update_time: now,
            deadline: now,
            task_version: 1,
        };
        {
            let store = SqliteStore::open(options(dir.path())).unwrap();
            let batch = Batch {
                events: vec![event(1)],
                closed_commands: vec![command.clone()],
                meta: vec![("global_interrupt", 1)],
                ..Batch::default()
            };
            store.commit(batch).await.unwrap();
        }
        let recovered = SqliteStore::open(options(dir.path())).unwrap().recover().unwrap();
        assert_eq!(recovered.closed_commands, vec![command]);
        assert_eq!(recovered.meta.get("global_interrupt"), Some(&1));
    }
}
