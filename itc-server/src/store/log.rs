//! The embedded, durable store (the default): an append-only log of group records, with
//! snapshots.
//!
//! Each [`Batch`] becomes one *record* appended to the current segment file:
//! `[len u32][crc32 u32][crc32 u32][entries]`. The record is the unit of atomicity: at
//! start a record whose checksum fails, or that was cut short, ends the log there (a torn
//! tail is truncated; damage before the last record refuses to start). There is no
//! hand-off to another thread on the way to the acknowledgement. [`Store::commit`] only
//! takes a ticket, under the core's lock; the commit then encodes its record with no lock
//! held (calls encode in parallel) and queues it, and records are written in ticket order:
//! whoever queues the next record writes it with every record queued in order behind it
//! (see [`Queue`]).
//!
//! Writing is a copy, not a system call: the current segment is mapped (shared), its
//! disk space reserved ahead of the writer (`posix_fallocate`, then the pages faulted in
//! at once), and a group's records are copied in. Then the segment's *committed length*,
//! one checksummed 8-byte word in its header, moves past them with one aligned store. The
//! copied pages are the page cache's, so they survive `kill -9` as written ones do, and a
//! reader's `pread` sees them; whatever lies past the committed length (a copy a crash
//! interrupted, in any order of its bytes) was never acknowledged and is ignored. A
//! segment is cut to its committed length when it rolls over and when the store closes.
//! Where mapping fails, segments are written with `pwrite` the same way. How a written
//! record then reaches the disk is the [`SyncLevel`] (`fdatasync` covers mapped pages):
//!
//! - `full`: the commit resolves once a sync thread's `fdatasync` covers it. Syncs are
//!   shared by every record written while the previous one ran (group commit).
//! - `normal` (the default): the commit resolves as soon as the OS holds the record, which
//!   survives `kill -9` of the server (DESIGN §5.7); the sync thread syncs every
//!   `sync_interval`, so a power loss of the machine loses at most about that much.
//! - `off`: never synced by the store while it runs (once at shutdown).
//!
//! A closed segment is synced before the current one. After a power loss, a record cut
//! short can still end a segment that later ones follow (the OS wrote their pages
//! first), or a segment's committed length on disk can be older than its last records
//! while the next segment's events made it (the events then jump): none of those later
//! records was acknowledged under `full` (its sync would have covered the earlier
//! segment first), and `normal` accepts losing the last interval, so the start cuts the
//! log there and removes the segments after it. A segment whose header is zeros (its
//! reserved size reached the disk, its first page did not) holds nothing. Bytes past
//! the last segment's committed length are cut on disk at start, before anything is
//! appended over them.
//!
//! Mapping is used on Linux on ext4, XFS and tmpfs, which write a reserved block in
//! place, so a write into a mapped page needs no new space; elsewhere (copy-on-write or
//! network file systems, where a full disk would be a SIGBUS inside a copy; other
//! systems) segments are written with `pwrite`, in the same format.
//!
//! A segment rolls over past `segment_bytes`. A compactor thread then folds the previous
//! snapshot and the closed segments into a new snapshot (each task as last written, each
//! open command as last written, the kept closed commands and input requests, service
//! values, the head seq) and deletes the
//! segments that hold no retained event. Recovery loads the newest snapshot and replays
//! the segments after it; older segments still on disk only serve their events.
//!
//! Events are read back by seq through an in-memory index (segment, offset, length and
//! time of every retained event: 24 bytes each). Bodies are the core's types as the
//! SQLite store has them, but for tasks (an open command is its own entry, written when
//! it changes, and carries its order, so a task entry holds none of them: [`TaskEntry`];
//! format 1 wrote them inside every task entry, formats 2 and 3 listed their ids, and
//! both still read), encoded as MessagePack maps,
//! fields by name, from format 4: JSON, as formats 1 to 3 wrote, took twice the time to
//! encode and a fifth more bytes. A body tells its encoding by its first byte
//! ([`decode_body`]), so a snapshot folded from segments of both reads back.
//!
//! Layout of `data_dir/log/`: `NNNNNNNNNNNNNNNNNNNN.seg` (segments, numbered from 1) and
//! `NNNNNNNNNNNNNNNNNNNN.snap` (the state before segment N). Each file starts with an
//! 8-byte magic whose last byte is the format version, and its own number; a segment of
//! format 3 on then has its committed length ([`SEGMENT_HEADER`]). Older segments are read
//! (their content is the whole file) but not appended to.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use super::{Batch, Commit, Recovered, Store, StoreError, SyncLevel, lock_dir};
use crate::core::{Command, Event, InputRequest, JsonMap, Plan, Task, TaskError, TaskStatus};
use crate::metrics::StoreMetrics;

/// The format this build writes (the last byte of each file's magic).
pub const LOG_FORMAT: u8 = 4;
const SEGMENT_MAGIC: &[u8; 7] = b"ITCLOG\0";
const SNAPSHOT_MAGIC: &[u8; 7] = b"ITCSNP\0";
/// Magic (8 bytes) and the file's number (u64): a snapshot's header, and a segment's up
/// to format 2.
const FILE_HEADER: usize = 16;
/// A segment's header from format 3: [`FILE_HEADER`], then the segment's committed length
/// at [`COMMITTED_AT`]: a u32 and a CRC-32 of it, written as one aligned 8-byte word
/// ([`committed_word`]), so that a crash leaves it old or new, never half. The segment's
/// content is its first `committed` bytes; anything after them was never acknowledged (a
/// copy a crash interrupted, or space reserved ahead), whatever it holds.
const SEGMENT_HEADER: usize = 24;
const COMMITTED_AT: usize = 16;
/// The longest segment content the committed length can say. `log_segment_bytes` is at
/// most 1 GiB and a record at most [`MAX_RECORD`]; a group of several records that would
/// take a segment past it fails its write (and the store), losing nothing acknowledged.
const MAX_SEGMENT: u64 = u32::MAX as u64;
/// The first format whose segments carry their committed length.
const COMMITTED_FORMAT: u8 = 3;
/// Space reserved past `segment_bytes` in a mapped segment, for the record that crosses
/// it (a longer one is written with `pwrite` past the map).
const SEGMENT_SLACK: u64 = 64 << 10;
/// A mapped segment's disk space is reserved (`posix_fallocate`) in steps of this size
/// ahead of the writer, and the mapped pages behind it are let go (`MADV_DONTNEED`) in
/// the same steps, so that the mapping holds about this much of the server's RSS.
const MAP_STEP: u64 = 4 << 20;
/// A record's header: its length, a CRC-32 of that length alone (so that damage to the
/// length is told apart from a write cut short), and a CRC-32 of the length and the
/// payload.
const RECORD_HEADER: usize = 12;
/// The largest record read back: anything longer is damage, not data.
const MAX_RECORD: usize = 1 << 30;
/// A snapshot is written as records of about this size (so a state of any size fits;
/// small in tests, so that they write several).
const SNAPSHOT_RECORD: usize = if cfg!(test) { 16 << 10 } else { 8 << 20 };
/// Closed commands and input requests kept (each), as in the SQLite store.
const KEPT_CLOSED: usize = 10_000;
/// How often the writer trims events past their age (count retention runs every commit).
const AGE_CHECK: Duration = Duration::from_secs(1);

/// Entry kinds inside a record: `[kind u8][key_len u16][key][value_len u32][value]`.
mod kind {
    /// A task as it is after the change: key id, value its body ([`TaskEntry`]).
    pub(super) const TASK: u8 = 1;
    /// A task forgotten: key id, empty value.
    pub(super) const REMOVE: u8 = 2;
    /// An event: key seq (u64) and time (i64 ms), value its body.
    pub(super) const EVENT: u8 = 3;
    /// A closed command: key id, value its body.
    pub(super) const COMMAND: u8 = 4;
    /// A closed input request: key id, value its body.
    pub(super) const INPUT: u8 = 5;
    /// A service-wide value: key name, value i64.
    pub(super) const META: u8 = 6;
    /// (Snapshots only) the head seq: value u64.
    pub(super) const HEAD: u8 = 7;
    /// An open command as it is after a change: key id, value its body (format 2).
    pub(super) const OPEN_COMMAND: u8 = 8;
}

/// A task entry's value: the task as [`Task`] serializes it, except its commands. Each
/// open command is its own entry, written when it changes, and comes back to its task in
/// the order of [`Command::task_version`]; its last command is an id when it is open, and
/// whole otherwise (it may be gone from the kept closed commands). Writing every open
/// command with every write of its task made a task's body grow with its open commands,
/// and encoding them was most of a write; listing their ids (formats 2 and 3) still made
/// it grow by one id each.
#[derive(serde::Serialize)]
struct TaskEntry<'a> {
    id: &'a str,
    agent_id: &'a str,
    description: &'a str,
    status: TaskStatus,
    progress: f64,
    status_message: &'a str,
    #[serde(skip_serializing_if = "absent")]
    metadata: &'a Option<JsonMap>,
    priority: i32,
    plan: &'a Plan,
    version: u64,
    #[serde(with = "crate::core::nanos::time")]
    create_time: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::core::nanos::option_time")]
    start_time: Option<SystemTime>,
    #[serde(with = "crate::core::nanos::time")]
    update_time: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::core::nanos::option_time")]
    finish_time: Option<SystemTime>,
    #[serde(skip_serializing_if = "absent")]
    controlling_coordinator: &'a Option<String>,
    #[serde(skip_serializing_if = "absent")]
    result: &'a Option<serde_json::Value>,
    #[serde(skip_serializing_if = "absent")]
    error: &'a Option<TaskError>,
    #[serde(skip_serializing_if = "absent")]
    reason: &'a Option<String>,
    stalled: bool,
    orphaned: bool,
    #[serde(with = "crate::core::nanos::duration")]
    stall_timeout: Duration,
    create_seq: u64,
    #[serde(skip_serializing_if = "<[InputRequest]>::is_empty")]
    open_inputs: &'a [InputRequest],
    /// Only while the task has an open command written before commands carried their
    /// order ([`Command::task_version`] 0); otherwise its open commands are found by task
    /// and ordered by it, and a write of the task does not grow with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_command_ids: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_command_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_command: Option<&'a Command>,
}

/// A borrowed `Option` left out of the body when `None` (read back as `None`).
fn absent<T>(value: &&Option<T>) -> bool {
    value.is_none()
}

impl<'a> TaskEntry<'a> {
    fn new(task: &'a Task) -> Self {
        // Every field, by name: a field added to `Task` must be added here too.
        let Task {
            id,
            agent_id,
            description,
            status,
            progress,
            status_message,
            metadata,
            priority,
            plan,
            version,
            create_time,
            start_time,
            update_time,
            finish_time,
            controlling_coordinator,
            result,
            error,
            reason,
            stalled,
            orphaned,
            stall_timeout,
            create_seq,
            lock: _,
            open_inputs,
            open_commands,
            last_command,
            wire: _,
        } = task;
        let last_open = last_command
            .as_ref()
            .filter(|last| open_commands.iter().any(|c| Arc::ptr_eq(c, last)));
        Self {
            id,
            agent_id,
            description,
            status: *status,
            progress: *progress,
            status_message,
            metadata,
            priority: *priority,
            plan,
            version: *version,
            create_time: *create_time,
            start_time: *start_time,
            update_time: *update_time,
            finish_time: *finish_time,
            controlling_coordinator,
            result,
            error,
            reason,
            stalled: *stalled,
            orphaned: *orphaned,
            stall_timeout: *stall_timeout,
            create_seq: *create_seq,
            open_inputs,
            open_command_ids: open_commands
                .iter()
                .any(|c| c.task_version == 0)
                .then(|| open_commands.iter().map(|c| c.id.as_str()).collect()),
            last_command_id: last_open.map(|c| c.id.as_str()),
            last_command: if last_open.is_some() {
                None
            } else {
                last_command.as_deref()
            },
        }
    }
}

/// The command references of a task entry (absent in format 1, which wrote the commands
/// whole).
#[derive(serde::Deserialize)]
struct CommandRefs {
    #[serde(default)]
    open_command_ids: Option<Vec<String>>,
    #[serde(default)]
    last_command_id: Option<String>,
}

/// The open commands the log holds: by id, and by task in the order they were admitted.
#[derive(Debug, Default)]
struct OpenCommands {
    by_id: HashMap<String, Arc<Command>>,
    by_task: HashMap<String, Vec<Arc<Command>>>,
}

impl OpenCommands {
    fn new(commands: impl IntoIterator<Item = Command>) -> Self {
        let mut open = Self::default();
        for command in commands {
            let command = Arc::new(command);
            open.by_task
                .entry(command.task_id.clone())
                .or_default()
                .push(command.clone());
            open.by_id.insert(command.id.clone(), command);
        }
        for commands in open.by_task.values_mut() {
            commands.sort_by_key(|c| c.task_version);
        }
        open
    }
}

/// Decodes a task entry, its commands taken from `open`: those its entry lists by id
/// (formats 2 to 4 while a command without its order is open), else those of its task.
fn decode_task(body: &[u8], open: &OpenCommands) -> Result<Task, String> {
    let mut task: Task = decode_body(body).map_err(|e| format!("a task: {e}"))?;
    let refs: CommandRefs = decode_body(body).map_err(|e| format!("a task: {e}"))?;
    let find = |id: &str| {
        open.by_id.get(id).cloned().ok_or_else(|| {
            format!(
                "task `{}` lists open command `{id}`, which the log does not hold",
                task.id
            )
        })
    };
    match &refs.open_command_ids {
        Some(ids) => {
            for id in ids {
                let command = find(id)?;
                task.open_commands.push(command);
            }
        }
        // Format 1 wrote them whole, inside the task.
        None if !task.open_commands.is_empty() => {}
        None => {
            // Every open command this task admitted has a version of it, so one that
            // does not fit was left by something else (an older build's, of a task
            // forgotten before one of the same id was created): leave it out.
            let version = task.version;
            let (fits, stray): (Vec<_>, Vec<_>) = open
                .by_task
                .get(&task.id)
                .into_iter()
                .flatten()
                .cloned()
                .partition(|c| (1..=version).contains(&c.task_version));
            if !stray.is_empty() {
                tracing::warn!(
                    task = %task.id,
                    commands = ?stray.iter().map(|c| &c.id).collect::<Vec<_>>(),
                    "open commands no version of the task admitted are left out"
                );
            }
            task.open_commands = fits;
        }
    }
    if let Some(id) = &refs.last_command_id {
        task.last_command = Some(find(id)?);
    }
    Ok(task)
}

/// Options of the log store.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of the store (created if missing); the log lives in its `log/`.
    pub data_dir: PathBuf,
    /// When a commit is acknowledged, and how often the log is synced to disk.
    pub sync: SyncLevel,
    /// With `sync = normal`: the longest a written record waits for its disk sync.
    pub sync_interval: Duration,
    /// Events kept, by count.
    pub retention_count: usize,
    /// Events kept, by age.
    pub retention_age: Duration,
    /// A segment rolls over once it is this long.
    pub segment_bytes: u64,
}

impl LogOptions {
    /// The default segment size: 64 MiB.
    pub const SEGMENT_BYTES: u64 = 64 << 20;
}

/// The log store.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    recovered: Mutex<Option<Recovered>>,
    /// Held while the store is open: one server per data dir (freed by `flush`).
    dir_lock: Mutex<Option<File>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    sync: SyncLevel,
    /// The next ticket to hand out ([`Queue`]); taken under the core's lock, which
    /// orders the tickets.
    next_ticket: AtomicU64,
    /// Records between the core's lock and the file, in order.
    queue: Mutex<Queue>,
    writer: Mutex<Writer>,
    index: Mutex<Index>,
    sync_state: Mutex<SyncState>,
    sync_wake: Condvar,
    /// How far the log is synced (`full`: commits wait on it).
    synced: watch::Sender<Synced>,
    /// The newest seq acknowledged durable.
    durable: AtomicU64,
    /// The oldest seq retained.
    oldest: AtomicU64,
    metrics: StoreMetrics,
    /// Tests: the next group's write panics.
    #[cfg(test)]
    panic_next_write: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
enum Synced {
    /// Every byte before this log position is on disk.
    Upto(u64),
    /// A sync failed: nothing after it can be promised.
    Failed(String),
}

#[derive(Debug)]
struct Writer {
    file: Arc<File>,
    /// The current segment's first `segment_capacity` bytes, reserved on disk and mapped:
    /// records are copied in, and the committed length published after them
    /// ([`SEGMENT_HEADER`]). Pages in the page cache survive `kill -9` as written ones do.
    /// `None` if mapping failed: the segment is then written with `pwrite`.
    map: Option<memmap2::MmapMut>,
    /// The mapped segment's bytes before this offset are reserved on disk: a copy never
    /// touches a page past the file's end (a SIGBUS), and a full disk is an error here,
    /// not a SIGBUS in the middle of a copy.
    reserved: u64,
    /// The mapped pages before this offset were let go ([`MAP_STEP`]).
    trimmed: u64,
    /// Fault the reserved pages in at once (`MADV_POPULATE_WRITE`). Not with `sync =
    /// full`: each sync would write the populated pages ahead of the writer (zeros) and
    /// protect them again, so their faults come back anyway.
    populate: bool,
    segno: u64,
    /// Bytes in the current segment (its committed length).
    len: u64,
    /// Log position: bytes appended since the store opened (sync progress is counted in it).
    lsn: u64,
    /// The newest seq written.
    head: u64,
    buf: Vec<u8>,
    /// Set by the first failed write: every later batch fails too, so that nothing after
    /// a lost batch can be acknowledged.
    failed: Option<StoreError>,
    closed: bool,
    segment_bytes: u64,
    retention_count: u64,
    retention_age: Duration,
    age_checked: Option<Instant>,
    /// Tells the compactor a segment was closed.
    rolled: Option<mpsc::Sender<u64>>,
}

impl Writer {
    /// Appends `records` (`total` bytes) at the end of the segment, then sets its
    /// committed length past them: into the map with one copy each and a store, or with
    /// `pwrite` where the map does not reach.
    fn append(&mut self, records: &[Encoded], total: u64) -> std::io::Result<()> {
        let at = self.len;
        let end = at + total;
        let word = u32::try_from(end)
            .ok()
            .filter(|&end| u64::from(end) <= MAX_SEGMENT)
            .map(committed_word)
            .ok_or_else(|| std::io::Error::other(format!("a segment cannot grow past {MAX_SEGMENT} bytes")))?;
        if end > self.reserved && self.map.as_ref().is_some_and(|map| end <= map.len() as u64) {
            self.reserve(end)?;
        }
        if let Some(map) = self.map.as_mut()
            && let (Ok(from), Ok(to)) = (usize::try_from(at), usize::try_from(end))
            && let Some(target) = map.get_mut(from..to)
        {
            let mut pos = 0;
            for record in records {
                target[pos..pos + record.bytes.len()].copy_from_slice(&record.bytes);
                pos += record.bytes.len();
            }
            // Published after the records: a crash between the two leaves them past
            // the committed length, unacknowledged, whatever part of them was copied.
            let target_word = map.as_mut_ptr().wrapping_add(COMMITTED_AT).cast::<u64>();
            // SAFETY: the map is page-aligned and at least a page long, so the word is
            // in bounds and 8-aligned; only this writer (under the writer's lock)
            // reaches it through the map. One aligned store: a crash sees it whole.
            unsafe { AtomicU64::from_ptr(target_word) }.store(word.to_le(), Ordering::Release);
            self.trim(at);
            return Ok(());
        }
        if let [record] = records {
            self.file.write_all_at(&record.bytes, at)?;
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            for record in records {
                buf.extend_from_slice(&record.bytes);
            }
            let written = self.file.write_all_at(&buf, at);
            self.buf = buf;
            written?;
        }
        match self.map.as_mut() {
            Some(map) => {
                let target_word = map.as_mut_ptr().wrapping_add(COMMITTED_AT).cast::<u64>();
                // SAFETY: as above.
                unsafe { AtomicU64::from_ptr(target_word) }.store(word.to_le(), Ordering::Release);
                Ok(())
            }
            None => self.file.write_all_at(&word.to_le_bytes(), COMMITTED_AT as u64),
        }
    }

    /// Reserves the mapped segment's disk space up to `end`, rounded up to a
    /// [`MAP_STEP`] (at most the map's length).
    #[cfg(target_os = "linux")]
    fn reserve(&mut self, end: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let cap = self.map.as_ref().map_or(0, |map| map.len() as u64);
        let upto = end.div_ceil(MAP_STEP).saturating_mul(MAP_STEP).min(cap).max(end);
        let offset = libc::off_t::try_from(self.reserved).map_err(std::io::Error::other)?;
        let len = libc::off_t::try_from(upto - self.reserved).map_err(std::io::Error::other)?;
        // SAFETY: a plain system call on an open descriptor; no memory is passed.
        let e = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), offset, len) };
        if e != 0 {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        if let (true, Some(map), Ok(from), Ok(len)) = (
            self.populate,
            &self.map,
            usize::try_from(self.reserved),
            usize::try_from(upto - self.reserved),
        ) {
            // The pages' faults, taken at once rather than one per page inside the copies
            // (an older kernel without MADV_POPULATE_WRITE takes them one by one).
            let _ = map.advise_range(memmap2::Advice::PopulateWrite, from, len);
        }
        self.reserved = upto;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn reserve(&mut self, _end: u64) -> std::io::Result<()> {
        // Never mapped off Linux ([`map_segment`]).
        Err(std::io::Error::other("a log segment is mapped only on Linux"))
    }

    /// Lets go of the mapped pages wholly behind `at` in steps of [`MAP_STEP`] (they are
    /// in the page cache; the map would otherwise count the whole segment in the RSS).
    /// The first page, holding the committed length, stays.
    fn trim(&mut self, at: u64) {
        let upto = at / MAP_STEP * MAP_STEP;
        let from = self.trimmed.max(4096);
        if upto <= from {
            return;
        }
        if let (Some(map), Ok(offset), Ok(len)) = (&self.map, usize::try_from(from), usize::try_from(upto - from)) {
            // SAFETY: a shared file mapping: the pages' data stays in the file, and is
            // read back from it if touched again (the writer never goes back there).
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
        }
        self.trimmed = upto;
    }

    /// Unmaps the current segment and cuts it to its committed length (the space
    /// reserved past it goes). Failing to cut loses nothing: the committed length still
    /// bounds what is read.
    fn unmap(&mut self, dir: &Path) {
        if self.map.take().is_some()
            && let Err(e) = self.file.set_len(self.len)
        {
            let path = segment_path(dir, self.segno);
            tracing::warn!(path = %path.display(), error = %e, "cannot cut a log segment to its length");
        }
    }
}

#[derive(Debug)]
struct SyncState {
    current: Arc<File>,
    /// Closed segments not yet synced (synced before the current one).
    closed: Vec<Arc<File>>,
    /// A segment was created: the directory needs a sync.
    dir_dirty: bool,
    /// Log position and seq written.
    written_lsn: u64,
    written_seq: u64,
    /// The sync thread waits for a write to wake it (it sleeps otherwise).
    idle: bool,
    stop: bool,
}

/// Where a retained event's body is.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u32,
    time_ms: i64,
}

#[derive(Debug)]
struct SegmentEvents {
    segno: u64,
    file: Arc<File>,
    first_seq: u64,
    spans: Vec<Span>,
}

impl SegmentEvents {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.spans.len() as u64
    }
}

/// Every retained event's place, contiguous by seq across segments.
#[derive(Debug, Default)]
struct Index {
    segments: VecDeque<SegmentEvents>,
}

impl Index {
    fn first_seq(&self) -> Option<u64> {
        self.segments.front().map(|s| s.first_seq)
    }

    fn last_seq(&self) -> Option<u64> {
        self.segments.back().map(|s| s.end_seq() - 1)
    }

    fn push(&mut self, segno: u64, file: &Arc<File>, seq: u64, span: Span) {
        match self.segments.back_mut() {
            Some(last) if last.segno == segno => last.spans.push(span),
            _ => self.segments.push_back(SegmentEvents {
                segno,
                file: file.clone(),
                first_seq: seq,
                spans: vec![span],
            }),
        }
    }

    /// Up to `limit` events from seq `from` on.
    fn locate(&self, from: u64, limit: usize) -> Vec<(Arc<File>, Span)> {
        let mut out = Vec::new();
        let start = self.segments.partition_point(|s| s.end_seq() <= from);
        for segment in self.segments.iter().skip(start) {
            let skip = from.saturating_sub(segment.first_seq) as usize;
            for span in segment.spans.iter().skip(skip) {
                if out.len() >= limit {
                    return out;
                }
                out.push((segment.file.clone(), *span));
            }
        }
        out
    }

    /// The first seq whose event is not older than `cutoff_ms`.
    fn first_since(&self, cutoff_ms: i64) -> Option<u64> {
        let start = self
            .segments
            .partition_point(|s| s.spans.last().is_none_or(|last| last.time_ms < cutoff_ms));
        let segment = self.segments.get(start)?;
        let at = segment.spans.partition_point(|span| span.time_ms < cutoff_ms);
        Some(segment.first_seq + at as u64)
    }
}

/// The oldest seq to keep: by count, and by age when `age` is given; the newest event
/// always stays (so that the head survives a restart); never before `oldest`. With no
/// event retained, `head + 1`.
fn retained_from(index: &Index, head: u64, oldest: u64, count: u64, age: Option<Duration>) -> u64 {
    let Some(last) = index.last_seq() else {
        return head + 1;
    };
    let mut from = oldest
        .max(index.first_seq().unwrap_or(last))
        .max((head + 1).saturating_sub(count));
    if let Some(age) = age {
        let cutoff = SystemTime::now().checked_sub(age).map_or(0, millis);
        from = from.max(index.first_since(cutoff).unwrap_or(last));
    }
    from.min(last)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each lock guards values that are consistent between statements; a panic elsewhere
    // must not stop the store.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn backend(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.snap"))
}

fn file_header(magic: &[u8; 7], n: u64) -> [u8; FILE_HEADER] {
    let mut header = [0u8; FILE_HEADER];
    header[..7].copy_from_slice(magic);
    header[7] = LOG_FORMAT;
    header[8..].copy_from_slice(&n.to_le_bytes());
    header
}

/// A new segment's header (see [`SEGMENT_HEADER`]): nothing committed yet.
fn segment_header(n: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[..FILE_HEADER].copy_from_slice(&file_header(SEGMENT_MAGIC, n));
    header[COMMITTED_AT..].copy_from_slice(&committed_word(SEGMENT_HEADER as u32).to_le_bytes());
    header
}

/// The committed-length word of a segment's header: the length (u32 LE), then a CRC-32
/// of those four bytes (u32 LE), as one u64 (LE).
fn committed_word(len: u32) -> u64 {
    u64::from(len) | u64::from(crc32fast::hash(&len.to_le_bytes())) << 32
}

/// The length a committed-length word says, unless it fails its check.
fn committed_len(word: [u8; 8]) -> Option<u64> {
    let word = u64::from_le_bytes(word);
    let len = word as u32;
    (committed_word(len) == word).then_some(u64::from(len))
}

/// Appends one entry.
fn put(buf: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let key_len = u16::try_from(key.len()).map_err(|_| backend("encode", "a key longer than 64 KiB"))?;
    let value_len = u32::try_from(value.len()).map_err(|_| backend("encode", "a value longer than 4 GiB"))?;
    buf.push(kind);
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(&value_len.to_le_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

/// Appends one entry whose value is `value` as MessagePack, its fields by name (so that
/// a field added later, or left out when `None`, reads as JSON did); returns where the
/// value starts in `buf` and its length.
fn put_body(
    buf: &mut Vec<u8>,
    kind: u8,
    key: &[u8],
    value: &impl serde::Serialize,
) -> Result<(usize, u32), StoreError> {
    put_encoded(buf, kind, key, |buf| {
        rmp_serde::encode::write_named(buf, value).map_err(|e| e.to_string())
    })
}

/// Appends one entry whose value `encode` writes; returns where the value starts in
/// `buf` and its length.
fn put_encoded(
    buf: &mut Vec<u8>,
    kind: u8,
    key: &[u8],
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(usize, u32), StoreError> {
    let key_len = u16::try_from(key.len()).map_err(|_| backend("encode", "a key longer than 64 KiB"))?;
    buf.push(kind);
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
    let len_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let start = buf.len();
    encode(buf).map_err(|e| backend("encode", e))?;
    let len = u32::try_from(buf.len() - start).map_err(|_| backend("encode", "a value longer than 4 GiB"))?;
    buf[len_at..start].copy_from_slice(&len.to_le_bytes());
    Ok((start, len))
}

/// Reads a body: MessagePack (format 4 on), or JSON (formats 1 to 3; a snapshot may
/// hold both, folded from segments of either). Every body is a map, and JSON's starts
/// with `{`, which is no MessagePack map's first byte.
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.first() == Some(&b'{') {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(body).map_err(|e| e.to_string())
    }
}

/// One entry of a record.
struct Entry<'a> {
    kind: u8,
    key: &'a [u8],
    value: &'a [u8],
    /// Where `value` starts in the record's payload.
    value_at: usize,
}

/// The entries of a record's payload (an error names the damage).
fn entries(payload: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, String>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= payload.len() {
            return None;
        }
        let entry = (|| {
            let kind = *payload.get(pos)?;
            let key_len = u16::from_le_bytes(payload.get(pos + 1..pos + 3)?.try_into().ok()?) as usize;
            let key_at = pos + 3;
            let key = payload.get(key_at..key_at + key_len)?;
            let len_at = key_at + key_len;
            let value_len = u32::from_le_bytes(payload.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
            let value_at = len_at + 4;
            let value = payload.get(value_at..value_at + value_len)?;
            pos = value_at + value_len;
            Some(Entry {
                kind,
                key,
                value,
                value_at,
            })
        })();
        match entry {
            Some(entry) => Some(Ok(entry)),
            None => {
                pos = payload.len();
                Some(Err("an entry runs past its record".to_owned()))
            }
        }
    })
}

/// An event entry's seq and time.
/// An event entry's key: its seq and its time in milliseconds (read by [`event_key`]).
fn event_entry_key(seq: u64, time_ms: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&seq.to_le_bytes());
    key[8..].copy_from_slice(&time_ms.to_le_bytes());
    key
}

fn event_key(key: &[u8]) -> Result<(u64, i64), String> {
    match (key.get(..8), key.get(8..16)) {
        (Some(seq), Some(time)) if key.len() == 16 => Ok((
            u64::from_le_bytes(seq.try_into().map_err(|_| "event key")?),
            i64::from_le_bytes(time.try_into().map_err(|_| "event key")?),
        )),
        _ => Err(format!("an event key of {} bytes", key.len())),
    }
}

fn eight(value: &[u8]) -> Result<[u8; 8], String> {
    value
        .try_into()
        .map_err(|_| format!("a value of {} bytes, not 8", value.len()))
}

/// Items kept by id, newest last; re-putting an id makes it the newest (as `INSERT OR
/// REPLACE` did); the oldest beyond [`KEPT_CLOSED`] are dropped.
#[derive(Debug, Default)]
struct Kept {
    next: u64,
    items: HashMap<Vec<u8>, (u64, Vec<u8>)>,
}

impl Kept {
    fn put(&mut self, id: &[u8], body: &[u8]) {
        self.next += 1;
        self.items.insert(id.to_vec(), (self.next, body.to_vec()));
        if self.items.len() > 2 * KEPT_CLOSED {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.items.len() > KEPT_CLOSED {
            let mut orders: Vec<u64> = self.items.values().map(|(order, _)| *order).collect();
            orders.sort_unstable();
            let cutoff = orders[orders.len() - KEPT_CLOSED];
            self.items.retain(|_, (order, _)| *order >= cutoff);
        }
    }

    /// (id, body), oldest first.
    fn ordered(&mut self) -> Vec<(&[u8], &[u8])> {
        self.trim();
        let mut items: Vec<(u64, &[u8], &[u8])> = self
            .items
            .iter()
            .map(|(id, (order, body))| (*order, id.as_slice(), body.as_slice()))
            .collect();
        items.sort_unstable_by_key(|(order, _, _)| *order);
        items.into_iter().map(|(_, id, body)| (id, body)).collect()
    }
}

/// Puts `value` under `key`, reusing the allocation of the value it replaces (a task is
/// written many times over in the records a compaction folds).
fn replace(map: &mut HashMap<Vec<u8>, Vec<u8>>, key: &[u8], value: &[u8]) {
    match map.get_mut(key) {
        Some(old) => {
            old.clear();
            old.extend_from_slice(value);
        }
        None => {
            map.insert(key.to_vec(), value.to_vec());
        }
    }
}

/// The state the records add up to, kept as the raw bodies (nothing is decoded to fold).
#[derive(Debug, Default)]
struct Folded {
    head_seq: u64,
    tasks: HashMap<Vec<u8>, Vec<u8>>,
    /// Open commands by id (a closed command's entry removes it).
    open_commands: HashMap<Vec<u8>, Vec<u8>>,
    commands: Kept,
    inputs: Kept,
    meta: HashMap<Vec<u8>, i64>,
}

impl Folded {
    fn apply(&mut self, payload: &[u8]) -> Result<(), String> {
        for entry in entries(payload) {
            let entry = entry?;
            match entry.kind {
                kind::TASK => replace(&mut self.tasks, entry.key, entry.value),
                kind::REMOVE => {
                    self.tasks.remove(entry.key);
                }
                kind::EVENT => self.head_seq = self.head_seq.max(event_key(entry.key)?.0),
                kind::OPEN_COMMAND => replace(&mut self.open_commands, entry.key, entry.value),
                kind::COMMAND => {
                    self.open_commands.remove(entry.key);
                    self.commands.put(entry.key, entry.value);
                }
                kind::INPUT => self.inputs.put(entry.key, entry.value),
                kind::META => {
                    self.meta
                        .insert(entry.key.to_vec(), i64::from_le_bytes(eight(entry.value)?));
                }
                kind::HEAD => self.head_seq = self.head_seq.max(u64::from_le_bytes(eight(entry.value)?)),
                other => return Err(format!("an entry of unknown kind {other}")),
            }
        }
        Ok(())
    }

    /// The snapshot's records' payloads, each about [`SNAPSHOT_RECORD`] long at most.
    fn encode(&mut self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut records = vec![Vec::new()];
        let mut put_one = |kind: u8, key: &[u8], value: &[u8]| -> Result<(), StoreError> {
            if records
                .last()
                .is_some_and(|r| !r.is_empty() && r.len() + key.len() + value.len() > SNAPSHOT_RECORD)
            {
                records.push(Vec::new());
            }
            match records.last_mut() {
                Some(record) => put(record, kind, key, value),
                None => Ok(()),
            }
        };
        put_one(kind::HEAD, &[], &self.head_seq.to_le_bytes())?;
        for (id, body) in &self.open_commands {
            put_one(kind::OPEN_COMMAND, id, body)?;
        }
        for (id, body) in &self.tasks {
            put_one(kind::TASK, id, body)?;
        }
        for (id, body) in self.commands.ordered() {
            put_one(kind::COMMAND, id, body)?;
        }
        for (id, body) in self.inputs.ordered() {
            put_one(kind::INPUT, id, body)?;
        }
        for (key, value) in &self.meta {
            put_one(kind::META, key, &value.to_le_bytes())?;
        }
        Ok(records)
    }

    /// What the records add up to, and the open commands that only format-1 task entries
    /// hold (whole, inside their task): no entry of their own yet.
    fn decode(mut self) -> Result<(Recovered, Vec<Arc<Command>>), String> {
        let open = OpenCommands::new(
            self.open_commands
                .values()
                .map(|body| decode_body(body).map_err(|e| format!("an open command: {e}")))
                .collect::<Result<Vec<Command>, String>>()?,
        );
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for body in self.tasks.values() {
            tasks.push(decode_task(body, &open)?);
        }
        let inline: Vec<Arc<Command>> = tasks
            .iter()
            .flat_map(|t: &Task| t.open_commands.iter())
            .filter(|c| !open.by_id.contains_key(&c.id))
            .cloned()
            .collect();
        tasks.sort_by_key(|t| t.create_seq);
        let closed_commands = self
            .commands
            .ordered()
            .into_iter()
            .map(|(_, body)| decode_body(body).map_err(|e| format!("a command: {e}")))
            .collect::<Result<_, _>>()?;
        let closed_inputs = self
            .inputs
            .ordered()
            .into_iter()
            .map(|(_, body)| decode_body(body).map_err(|e| format!("an input request: {e}")))
            .collect::<Result<_, _>>()?;
        let meta = self
            .meta
            .into_iter()
            .map(|(key, value)| Ok((String::from_utf8(key).map_err(|_| "a service value's name")?, value)))
            .collect::<Result<_, String>>()?;
        Ok((
            Recovered {
                tasks,
                head_seq: self.head_seq,
                closed_commands,
                closed_inputs,
                meta,
            },
            inline,
        ))
    }
}

/// A file's records, as read back.
struct Scanned {
    data: Vec<u8>,
    /// Each record's payload range in `data`.
    records: Vec<std::ops::Range<usize>>,
    /// Where the valid part ends; less than `data.len()` when the tail is damaged.
    valid_len: usize,
    /// A record before the last fails its checksum.
    corrupt: bool,
    /// The file's length: more than `data.len()` when bytes past a segment's committed
    /// length were cut off.
    file_len: usize,
}

/// Reads a segment or snapshot file and checks its header and every record.
fn scan(path: &Path, magic: &[u8; 7], n: u64) -> Result<Scanned, String> {
    scan_into(path, magic, n, Vec::new())
}

/// As [`scan`], reading into `data` (cleared first): one buffer serves every segment of a
/// recovery or a compaction, instead of a new allocation (and its page faults) for each.
fn scan_into(path: &Path, magic: &[u8; 7], n: u64, mut data: Vec<u8>) -> Result<Scanned, String> {
    data.clear();
    File::open(path)
        .and_then(|mut file| std::io::Read::read_to_end(&mut file, &mut data))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let file_len = data.len();
    let committed = magic == SEGMENT_MAGIC
        && data.get(..7) == Some(&magic[..])
        && data.get(7).is_some_and(|&f| f >= COMMITTED_FORMAT);
    let start = if committed { SEGMENT_HEADER } else { FILE_HEADER };
    // A segment whose header is zeros: the file's size reached the disk before its first
    // page did (a power loss right after it was created, its space reserved). Nothing in
    // it was acknowledged under `full` (that waits for a sync of the whole segment).
    let unwritten = magic == SEGMENT_MAGIC && data.get(..FILE_HEADER).is_some_and(|h| h.iter().all(|&b| b == 0));
    if unwritten {
        data.truncate(0);
    }
    if data.len() < start {
        // Created but cut before its header was written: nothing in it.
        return Ok(Scanned {
            data,
            records: Vec::new(),
            valid_len: 0,
            corrupt: false,
            file_len,
        });
    }
    if &data[..7] != magic {
        return Err("it is not an ITC log file".to_owned());
    }
    if data[7] > LOG_FORMAT {
        return Err(format!(
            "it was written by a newer ITC (log format {}; this build knows up to {LOG_FORMAT}); upgrade itc-server",
            data[7]
        ));
    }
    let number = u64::from_le_bytes(eight(&data[8..16])?);
    if number != n {
        return Err(format!("its header says {number}, its name {n}"));
    }
    if committed {
        let length = committed_len(eight(&data[COMMITTED_AT..SEGMENT_HEADER])?)
            .filter(|&length| length >= SEGMENT_HEADER as u64)
            .ok_or("its header's committed length fails its checksum")?;
        // Past the committed length lies what was never acknowledged. A file shorter than
        // it (a power loss kept the header's page but not the last data's) is read as far
        // as it goes, and judged as any other file cut short.
        data.truncate(usize::try_from(length).unwrap_or(usize::MAX).min(data.len()));
    }
    let mut records = Vec::new();
    let mut pos = start;
    let mut corrupt = false;
    while let Some(header) = data.get(pos..pos + RECORD_HEADER) {
        let len_bytes = four(&header[..4]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        let len_check = u32::from_le_bytes(four(&header[4..8]));
        let crc = u32::from_le_bytes(four(&header[8..]));
        // A whole header whose length fails its own check: zeros are the unwritten end
        // of a file a power loss left longer than its data; anything else is damage.
        if crc32fast::hash(&len_bytes) != len_check || len > MAX_RECORD {
            corrupt = data[pos..].iter().any(|&b| b != 0);
            break;
        }
        let start = pos + RECORD_HEADER;
        // Cut short: the end of a write a crash interrupted.
        let Some(payload) = data.get(start..start + len) else {
            break;
        };
        if record_crc(len as u32, payload) != crc {
            // A whole record that fails its checksum is damage, unless it is the file's
            // last or only zeros follow (a write the machine lost part of).
            corrupt = start + len < data.len() && data[start + len..].iter().any(|&b| b != 0);
            break;
        }
        records.push(start..start + len);
        pos = start + len;
    }
    Ok(Scanned {
        data,
        records,
        valid_len: pos,
        corrupt,
        file_len,
    })
}

/// A record's header (see [`RECORD_HEADER`]).
fn record_header(len: u32, payload: &[u8]) -> [u8; RECORD_HEADER] {
    let mut header = [0u8; RECORD_HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    header[8..].copy_from_slice(&record_crc(len, payload).to_le_bytes());
    header
}

/// A record's checksum: its length, then its payload.
fn record_crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn four(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[..4]);
    out
}

/// Numbers of the files named `NNNN.ext` in `dir`, ascending.
fn numbered(dir: &Path, ext: &str) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| backend(&format!("cannot list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| backend(&format!("cannot list {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(ext)
            .and_then(|n| n.strip_suffix('.'))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads snapshot `n` into a fold.
fn read_snapshot(dir: &Path, n: u64) -> Result<Folded, String> {
    let scanned = scan(&snapshot_path(dir, n), SNAPSHOT_MAGIC, n)?;
    if scanned.records.is_empty() || scanned.corrupt || scanned.valid_len != scanned.data.len() {
        return Err("it is damaged (its checksum fails or it is cut short)".to_owned());
    }
    let mut folded = Folded::default();
    for record in &scanned.records {
        folded.apply(&scanned.data[record.clone()])?;
    }
    Ok(folded)
}

/// Writes snapshot `n` (atomically: a temporary file, synced, then renamed).
fn write_snapshot(dir: &Path, n: u64, folded: &mut Folded) -> Result<(), StoreError> {
    let records = folded.encode()?;
    let path = snapshot_path(dir, n);
    let tmp = path.with_extension("snap.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(File::create(&tmp)?);
        file.write_all(&file_header(SNAPSHOT_MAGIC, n))?;
        for payload in &records {
            // Each is at most SNAPSHOT_RECORD plus one entry (a key under 64 KiB and a
            // value under 4 GiB, both checked by `put`).
            file.write_all(&record_header(payload.len() as u32, payload))?;
            file.write_all(payload)?;
        }
        let file = file.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().map_err(|e| backend(&format!("cannot write {}", path.display()), e))
}

/// The format a segment was written in (the last byte of its magic), if it has a header.
fn segment_format(path: &Path) -> Option<u8> {
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|file| file.read_exact_at(&mut magic, 0))
        .ok()?;
    Some(magic[7])
}

fn create_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, n);
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| backend(&format!("cannot create {}", path.display()), e))?;
    file.write_all(&segment_header(n))
        .map_err(|e| backend(&format!("cannot write {}", path.display()), e))?;
    Ok(file)
}

/// The bytes a mapped segment reserves: `segment_bytes` in whole pages, and room for the
/// record that crosses it.
fn segment_capacity(segment_bytes: u64) -> u64 {
    segment_bytes.div_ceil(4096) * 4096 + SEGMENT_SLACK
}

/// Maps the first `len` bytes of segment `file` for writing (they need not exist yet:
/// [`Writer::append`] reserves them on disk before it touches them). `None` (the segment
/// is then written with `pwrite`) if mapping fails, off Linux, and on a file system that
/// is not known to allocate in place ([`maps_safely`]).
#[cfg(target_os = "linux")]
fn map_segment(file: &File, len: u64, path: &Path) -> Option<memmap2::MmapMut> {
    if !maps_safely(file) {
        tracing::debug!(path = %path.display(), "the log's file system is written with pwrite, not mapped");
        return None;
    }
    let len = usize::try_from(len).ok()?;
    // SAFETY: the mapped file is this store's (the data dir's lock keeps other servers
    // out); the store never truncates a segment while it is mapped (`Writer::unmap`
    // first) and never touches a page past the file's end (`Writer::reserve` first). The
    // bytes are reached through this map's bounds-checked slices, and the committed
    // length through one aligned atomic inside its first page (`Writer::append`).
    match unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) } {
        Ok(map) => Some(map),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot map a log segment; writing it with pwrite");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn map_segment(_file: &File, _len: u64, _path: &Path) -> Option<memmap2::MmapMut> {
    None
}

/// Whether the segment's file system writes a reserved block in place (ext4, XFS,
/// tmpfs): a write fault into a mapped page then needs no new space. A copy-on-write
/// file system (btrfs, ZFS, bcachefs) or a network one allocates at writeback, where a
/// full disk would be a SIGBUS inside a copy; those are written with `pwrite`.
#[cfg(target_os = "linux")]
fn maps_safely(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    // SAFETY: `statfs` is plain data, filled in by the call on an open descriptor.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `stat` outlives the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // its type differs by target
    let kind = i64::from(stat.f_type as i64);
    matches!(kind, EXT4 | XFS | TMPFS)
}

impl LogStore {
    /// Opens (or creates) the store in `options.data_dir`: reads the newest snapshot and
    /// the log after it, truncates a torn tail, and starts the sync and compaction threads.
    pub fn open(options: LogOptions) -> Result<Self, StoreError> {
        Self::open_with_metrics(options, StoreMetrics::default())
    }

    /// As [`LogStore::open`], recording each commit (its duration and its events) in
    /// `metrics`.
    pub fn open_with_metrics(options: LogOptions, metrics: StoreMetrics) -> Result<Self, StoreError> {
        let data_dir = &options.data_dir;
        fs::create_dir_all(data_dir)
            .map_err(|e| backend(&format!("cannot create data dir {}", data_dir.display()), e))?;
        let dir_lock = lock_dir(data_dir)?;
        let dir = data_dir.join("log");
        let sqlite = data_dir.join("itc.sqlite3");
        if sqlite.exists() && !dir.exists() {
            return Err(StoreError::Backend(format!(
                "{} holds an SQLite store ({}); start with --store sqlite, or point --data-dir elsewhere",
                data_dir.display(),
                sqlite.display()
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| backend(&format!("cannot create {}", dir.display()), e))?;
        let refuse = |what: &Path, e: &str| {
            StoreError::Backend(format!(
                "{} cannot be read back: {e}; move the data dir away or point --data-dir elsewhere",
                what.display()
            ))
        };

        // A snapshot cut short by a crash is left as `.tmp`: it never counted.
        for tmp in numbered(&dir, "snap.tmp")? {
            let path = snapshot_path(&dir, tmp).with_extension("snap.tmp");
            fs::remove_file(&path).map_err(|e| backend(&format!("cannot remove {}", path.display()), e))?;
        }
        let snapshots = numbered(&dir, "snap")?;
        let segments = numbered(&dir, "seg")?;
        let base = snapshots.last().copied();
        let mut folded = match base {
            Some(n) => read_snapshot(&dir, n).map_err(|e| refuse(&snapshot_path(&dir, n), &e))?,
            None => Folded::default(),
        };
        let mut index = Index::default();
        // The last segment longer than a header (a format-3 segment reserved ahead counts,
        // which only moves where a cut may happen): damage before it is not a torn
        // tail (a segment is synced before the next one is written, except with `off`).
        let mut last = None;
        for &n in &segments {
            let path = segment_path(&dir, n);
            let len = fs::metadata(&path)
                .map_err(|e| backend(&format!("cannot read {}", path.display()), e))?
                .len();
            if len > FILE_HEADER as u64 {
                last = Some(n);
            }
        }
        let mut events_head: Option<u64> = None;
        // Each segment's content length (as found, or as cut).
        let mut ends: HashMap<u64, u64> = HashMap::new();
        // Where the log was found cut short, if before its last segment.
        let mut cut: Option<u64> = None;
        // The segment read before the current one.
        let mut previous: Option<u64> = None;
        // One segment in memory at a time.
        let mut buffer = Vec::new();
        for n in &segments {
            let path = segment_path(&dir, *n);
            if cut.is_some() {
                fs::remove_file(&path).map_err(|e| backend(&format!("cannot remove {}", path.display()), e))?;
                continue;
            }
            let scanned =
                scan_into(&path, SEGMENT_MAGIC, *n, std::mem::take(&mut buffer)).map_err(|e| refuse(&path, &e))?;
            let damaged = scanned.valid_len < scanned.data.len();
            if scanned.corrupt {
                return Err(refuse(
                    &path,
                    &format!("the record at byte {} fails its checksum", scanned.valid_len),
                ));
            }
            if damaged && last.is_some_and(|l| l > *n) {
                // See the module's notes: the end of the log is here.
                tracing::warn!(
                    path = %path.display(),
                    at = scanned.valid_len,
                    "a record cut short before later segments (a power loss): the log ends here, later segments are removed"
                );
                cut = Some(*n);
            }
            let format = segment_format(&path);
            let header = if format.is_some_and(|f| f >= COMMITTED_FORMAT) {
                SEGMENT_HEADER
            } else {
                FILE_HEADER
            };
            if damaged || scanned.data.len() < header {
                // A torn tail (a write cut short by a crash): the batch it held was never
                // acknowledged. Cut it off so appends continue after the last whole record.
                let keep = scanned.valid_len.max(header) as u64;
                tracing::warn!(path = %path.display(), bytes = scanned.data.len() - scanned.valid_len.min(scanned.data.len()), "truncating a torn tail of the log");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| backend(&format!("cannot open {}", path.display()), e))?;
                if scanned.data.len() < header {
                    file.set_len(0).and_then(|()| file.write_all_at(&segment_header(*n), 0))
                } else if header == SEGMENT_HEADER {
                    // `keep` is under the committed length found, itself a u32.
                    // The word first: cut short before the file, it never claims bytes
                    // that are not there.
                    let word = committed_word(u32::try_from(keep).unwrap_or(u32::MAX));
                    file.write_all_at(&word.to_le_bytes(), COMMITTED_AT as u64)
                        .and_then(|()| file.sync_data())
                        .and_then(|()| file.set_len(keep))
                } else {
                    file.set_len(keep)
                }
                .and_then(|()| file.sync_all())
                .map_err(|e| backend(&format!("cannot truncate {}", path.display()), e))?;
            } else if scanned.file_len > scanned.data.len() {
                // Bytes past the committed length: space reserved ahead, or a copy that a
                // crash interrupted, never acknowledged. Appends overwrite them.
                tracing::debug!(path = %path.display(), bytes = scanned.file_len - scanned.data.len(), "ignoring the log's bytes past its committed length");
            }
            ends.insert(*n, scanned.valid_len.max(header) as u64);
            // A segment whose first event does not follow the last one before it: a power
            // loss kept this segment's pages and lost the end of the one before (its
            // committed length on disk is older than its last records). Nothing here was
            // acknowledged under `full` (the earlier segment is synced first), so the log
            // ends before it, as for a segment cut short. Only after the snapshot: the
            // segments it covers were synced before it was written.
            let first_seq = scanned.records.iter().find_map(|record| {
                entries(&scanned.data[record.clone()])
                    .filter_map(Result::ok)
                    .find(|entry| entry.kind == kind::EVENT)
                    .and_then(|entry| event_key(entry.key).ok())
                    .map(|(seq, _)| seq)
            });
            if let (Some(head), Some(first), Some(before)) = (events_head, first_seq, previous)
                && first > head + 1
                && base.is_none_or(|b| before >= b)
            {
                tracing::warn!(
                    path = %path.display(),
                    first,
                    head,
                    "a segment after a gap in the events (a power loss): the log ends before it, later segments are removed"
                );
                fs::remove_file(&path).map_err(|e| backend(&format!("cannot remove {}", path.display()), e))?;
                cut = Some(before);
                continue;
            }
            previous = Some(*n);
            let file = Arc::new(File::open(&path).map_err(|e| backend(&format!("cannot open {}", path.display()), e))?);
            for record in &scanned.records {
                let payload = &scanned.data[record.clone()];
                if base.is_none_or(|b| *n >= b) {
                    folded.apply(payload).map_err(|e| refuse(&path, &e))?;
                }
                for entry in entries(payload) {
                    let entry = entry.map_err(|e| refuse(&path, &e))?;
                    if entry.kind != kind::EVENT {
                        continue;
                    }
                    let (seq, time_ms) = event_key(entry.key).map_err(|e| refuse(&path, &e))?;
                    if events_head.is_some_and(|h| seq != h + 1) {
                        return Err(refuse(&path, &format!("event {seq} does not follow {events_head:?}")));
                    }
                    events_head = Some(seq);
                    let span = Span {
                        offset: (record.start + entry.value_at) as u64,
                        len: entry.value.len() as u32,
                        time_ms,
                    };
                    index.push(*n, &file, seq, span);
                }
            }
            buffer = scanned.data;
        }
        let head = folded.head_seq.max(events_head.unwrap_or(0));
        if events_head.is_some_and(|h| h < head) {
            // The snapshot knows of events the log lost (a power loss with `off`): the
            // ones left cannot continue to the head without a hole. Serve none of them;
            // a subscriber asking for them is told they are gone.
            tracing::warn!(
                head,
                events_head,
                "the log lost its newest events; dropping the older ones from replay"
            );
            index = Index::default();
        }
        folded.head_seq = head;
        let (recovered, inline_commands) = folded.decode().map_err(|e| refuse(&dir, &e))?;

        if cut.is_some() {
            sync_dir(&dir).map_err(|e| backend(&format!("cannot sync {}", dir.display()), e))?;
        }
        let segments: Vec<u64> = segments.into_iter().filter(|&n| cut.is_none_or(|c| n <= c)).collect();
        // Append to the last segment if it is of this format, or start one.
        let (segno, file, len) = match segments.last() {
            Some(&n) if base.is_none_or(|b| n >= b) && segment_format(&segment_path(&dir, n)) == Some(LOG_FORMAT) => {
                let path = segment_path(&dir, n);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| backend(&format!("cannot open {}", path.display()), e))?;
                let len = ends.get(&n).copied().unwrap_or(SEGMENT_HEADER as u64);
                // Bytes past the committed length (a group a crash interrupted, reserved
                // space) go, on disk, before anything is appended: rewritten only in the
                // page cache, a power loss could otherwise bring back records this start
                // discarded, under a committed length that covers them.
                let on_disk = file
                    .metadata()
                    .map_err(|e| backend(&format!("cannot read {}", path.display()), e))?
                    .len();
                if on_disk > len {
                    file.set_len(len)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| backend(&format!("cannot truncate {}", path.display()), e))?;
                }
                (n, file, len)
            }
            _ => {
                let n = base.unwrap_or(1).max(segments.last().map_or(1, |l| l + 1));
                let file = create_segment(&dir, n)?;
                sync_dir(&dir).map_err(|e| backend(&format!("cannot sync {}", dir.display()), e))?;
                (n, file, SEGMENT_HEADER as u64)
            }
        };
        let segment_bytes = options.segment_bytes.clamp(SEGMENT_HEADER as u64 + 1, 1 << 30);
        // A segment longer than its capacity (written with a larger `segment_bytes`) is
        // appended to with `pwrite` until it rolls.
        let map = map_segment(
            &file,
            segment_capacity(segment_bytes).max(len),
            &segment_path(&dir, segno),
        );
        let file = Arc::new(file);
        let retention_count = options.retention_count.max(1) as u64;
        let oldest = retained_from(&index, head, 0, retention_count, Some(options.retention_age));
        let (rolled, roll_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            sync: options.sync,
            next_ticket: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(Writer {
                file: file.clone(),
                map,
                // The segment's content is on disk: reserve and let go from its end on.
                reserved: len / 4096 * 4096,
                trimmed: len / MAP_STEP * MAP_STEP,
                populate: options.sync != SyncLevel::Full,
                segno,
                len,
                lsn: 0,
                head,
                buf: Vec::new(),
                failed: None,
                closed: false,
                segment_bytes,
                retention_count,
                retention_age: options.retention_age,
                age_checked: None,
                rolled: Some(rolled),
            }),
            index: Mutex::new(index),
            sync_state: Mutex::new(SyncState {
                current: file,
                closed: Vec::new(),
                dir_dirty: false,
                written_lsn: 0,
                written_seq: head,
                idle: false,
                stop: false,
            }),
            sync_wake: Condvar::new(),
            synced: watch::Sender::new(Synced::Upto(0)),
            durable: AtomicU64::new(head),
            oldest: AtomicU64::new(oldest),
            metrics,
            #[cfg(test)]
            panic_next_write: std::sync::atomic::AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let syncer = shared.clone();
        let interval = options.sync_interval;
        threads.push(
            std::thread::Builder::new()
                .name("itc-log-sync".into())
                .spawn(move || syncer.run_syncer(interval))
                .map_err(|e| backend("cannot start the sync thread", e))?,
        );
        let compactor = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("itc-log-compact".into())
            .spawn(move || {
                while let Ok(closed) = roll_rx.recv() {
                    if let Err(e) = compactor.compact(closed) {
                        // The log still holds everything: the next roll tries again.
                        tracing::error!(error = %e, "log compaction failed; old segments stay until one succeeds");
                        compactor.metrics.compaction_failed();
                    }
                }
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                lock(&shared.sync_state).stop = true;
                shared.sync_wake.notify_all();
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(backend("cannot start the compaction thread", e));
            }
        }
        let store = Self {
            dir,
            shared,
            threads: Mutex::new(threads),
            recovered: Mutex::new(Some(recovered)),
            dir_lock: Mutex::new(Some(dir_lock)),
        };
        if !inline_commands.is_empty() {
            // Format-2 task entries list their open commands by id: those that only a
            // format-1 task entry holds get an entry of their own, on disk, before any
            // task entry can refer to them.
            store.write_now(Batch {
                commands: inline_commands,
                ..Batch::default()
            })?;
            let file = lock(&store.shared.writer).file.clone();
            file.sync_data().map_err(|e| backend("cannot sync the log", e))?;
        }
        Ok(store)
    }

    /// Writes `batch` before anything else is committed (at open).
    fn write_now(&self, batch: Batch) -> Result<(), StoreError> {
        let mut pending = Pending {
            ticket: self.shared.ticket(),
            shared: self.shared.clone(),
            batch: Some(batch),
            started: Instant::now(),
        };
        match pending.submit() {
            Some(Queued::Done(outcome)) => outcome.map(|_| ()),
            _ => Err(StoreError::Backend(
                "the log was written to during its opening".to_owned(),
            )),
        }
    }

    /// The directory of the log.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A batch encoded as one record (header included), waiting for its turn to be written.
#[derive(Debug)]
struct Encoded {
    bytes: Vec<u8>,
    /// Each event's seq, time, and the offset and length of its body in `bytes`.
    events: Vec<(u64, i64, usize, u32)>,
    started: Instant,
}

/// Encodes `batch` as one record. Touches no shared state: commits encode in parallel,
/// outside every lock.
fn encode(batch: &Batch, started: Instant) -> Result<Encoded, StoreError> {
    let mut buf = Vec::with_capacity(1024);
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    let mut events = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        let time_ms = millis(event.time);
        let (at, len) = put_body(&mut buf, kind::EVENT, &event_entry_key(event.seq, time_ms), &**event)?;
        events.push((event.seq, time_ms, at, len));
    }
    // Before the closed commands: a command opened and closed by one change ends closed.
    for command in &batch.commands {
        put_body(&mut buf, kind::OPEN_COMMAND, command.id.as_bytes(), &**command)?;
    }
    for task in &batch.upserts {
        put_body(&mut buf, kind::TASK, task.id.as_bytes(), &TaskEntry::new(task))?;
    }
    for id in &batch.removals {
        put(&mut buf, kind::REMOVE, id.as_bytes(), &[])?;
    }
    for command in &batch.closed_commands {
        put_body(&mut buf, kind::COMMAND, command.id.as_bytes(), command)?;
    }
    for input in &batch.closed_inputs {
        put_body(&mut buf, kind::INPUT, input.id.as_bytes(), input)?;
    }
    for (key, value) in &batch.meta {
        put(&mut buf, kind::META, key.as_bytes(), &value.to_le_bytes())?;
    }
    let len = buf.len() - RECORD_HEADER;
    if len > MAX_RECORD {
        return Err(backend("encode", format!("a batch of {len} bytes")));
    }
    let header = record_header(len as u32, &buf[RECORD_HEADER..]);
    buf[..RECORD_HEADER].copy_from_slice(&header);
    Ok(Encoded {
        bytes: buf,
        events,
        started,
    })
}

/// Records on their way from the core's lock to the file. Each commit takes a ticket
/// while the core's lock orders it, encodes its batch with no lock held, and queues the
/// record; the records are written in ticket order. Whoever queues the next record to be
/// written writes it, with every record queued in order after it, in one copy; a commit
/// whose record is not next leaves it to that writer and waits for its answer.
#[derive(Debug, Default)]
struct Queue {
    /// The next ticket to write: every ticket before it is resolved.
    next_write: u64,
    /// Records (or their encoding failures) waiting for the ones before them, by ticket.
    ready: BTreeMap<u64, Slot>,
    /// A commit is writing: it takes the records queued after its own too.
    writing: bool,
    /// Set if a writer failed in the middle (a bug: it panicked): every record fails.
    broken: Option<StoreError>,
}

/// A record waiting in the [`Queue`], and where its outcome goes (`None`: the commit
/// that queued it writes it itself).
#[derive(Debug)]
struct Slot {
    record: Result<Encoded, StoreError>,
    reply: Option<oneshot::Sender<Result<u64, StoreError>>>,
}

/// What became of a queued record: written by the call that queued it (its outcome: the
/// log position after it), or to be written by another commit (its outcome comes later).
enum Queued {
    Done(Result<u64, StoreError>),
    Later(oneshot::Receiver<Result<u64, StoreError>>),
}

/// A commit's place in the [`Queue`]. Dropped before its batch was queued (the caller
/// dropped the commit without polling it), it queues the batch then: the records after it
/// wait for it.
struct Pending {
    shared: Arc<Shared>,
    ticket: u64,
    batch: Option<Batch>,
    started: Instant,
}

impl Pending {
    /// Encodes and queues the batch, and writes what is ready if no one else is.
    fn submit(&mut self) -> Option<Queued> {
        let batch = self.batch.take()?;
        let encoded = encode(&batch, self.started);
        // The tasks and events are released before the write: a change to one of these
        // tasks meanwhile need not copy it.
        drop(batch);
        Some(self.shared.queue_and_write(self.ticket, encoded))
    }
}

/// The writer's role, held while a commit writes the queue; dropped while still held
/// (the writer panicked), it breaks the store down ([`Shared::break_down`]).
struct WriterRole<'a> {
    shared: &'a Shared,
    held: bool,
}

impl Drop for WriterRole<'_> {
    fn drop(&mut self) {
        if self.held {
            self.shared.break_down();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = self.submit();
    }
}

impl Shared {
    /// Takes the next ticket (called under the core's lock, so tickets follow seqs).
    fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues record `ticket`, then, unless another commit is writing or an earlier
    /// record is still being encoded, writes every record ready in order (see [`Queue`]).
    fn queue_and_write(&self, ticket: u64, record: Result<Encoded, StoreError>) -> Queued {
        let mut queue = lock(&self.queue);
        if let Some(e) = &queue.broken {
            return Queued::Done(Err(e.clone()));
        }
        if queue.writing || ticket != queue.next_write {
            let (reply, answer) = oneshot::channel();
            queue.ready.insert(
                ticket,
                Slot {
                    record,
                    reply: Some(reply),
                },
            );
            return Queued::Later(answer);
        }
        queue.writing = true;
        queue.ready.insert(ticket, Slot { record, reply: None });
        drop(queue);
        let mut role = WriterRole {
            shared: self,
            held: true,
        };
        let mut queue = lock(&self.queue);
        let mut own = None;
        loop {
            let first = queue.next_write;
            let mut group = Vec::new();
            while let Some(slot) = queue.ready.remove(&(first + group.len() as u64)) {
                group.push(slot);
            }
            if group.is_empty() {
                queue.writing = false;
                role.held = false;
                // The first group holds this call's own record.
                return Queued::Done(own.unwrap_or(Err(StoreError::Closed)));
            }
            queue.next_write = first + group.len() as u64;
            drop(queue);
            let (records, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|s| (s.record, s.reply)).unzip();
            for (outcome, reply) in self.write_group(records).into_iter().zip(replies) {
                match reply {
                    Some(reply) => {
                        // Its commit may be gone (dropped): nobody to tell.
                        let _ = reply.send(outcome);
                    }
                    None => own = Some(outcome),
                }
            }
            queue = lock(&self.queue);
        }
    }

    /// A writer unwound in the middle of its work (a bug): the store fails, and so does
    /// every record queued or still to come, rather than waiting for a writer forever.
    fn break_down(&self) {
        let e = StoreError::Backend("the store failed earlier: its writer panicked".to_owned());
        lock(&self.writer).failed.get_or_insert_with(|| e.clone());
        let mut queue = lock(&self.queue);
        queue.writing = false;
        queue.broken = Some(e.clone());
        for (_, slot) in std::mem::take(&mut queue.ready) {
            if let Some(reply) = slot.reply {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }

    /// Writes `records`, in order, as one group ([`Writer::append`]); the outcome of each: the log position
    /// after the group, or why it was not written. Nothing after a lost record may be
    /// acknowledged: a record that fails to encode or does not continue the seqs is not
    /// written, and it and every record after it fail, as all do once a write fails.
    fn write_group(&self, records: Vec<Result<Encoded, StoreError>>) -> Vec<Result<u64, StoreError>> {
        #[cfg(test)]
        if self.panic_next_write.swap(false, Ordering::SeqCst) {
            panic!("a panic injected by a test");
        }
        let mut w = lock(&self.writer);
        let mut head = w.head;
        let mut outcomes: Vec<Result<u64, StoreError>> = Vec::with_capacity(records.len());
        let mut valid = Vec::with_capacity(records.len());
        for record in records {
            let usable = match (&w.failed, w.closed) {
                (Some(e), _) => Err(e.clone()),
                (None, true) => Err(StoreError::Closed),
                (None, false) => Ok(()),
            };
            let checked = usable.and(record).and_then(|record| {
                let mut next = head;
                for &(seq, ..) in &record.events {
                    if seq != next + 1 {
                        return Err(StoreError::Backend(format!(
                            "event seq {seq} does not follow head {next}"
                        )));
                    }
                    next = seq;
                }
                head = next;
                Ok(record)
            });
            match checked {
                Ok(record) => {
                    // Filled in once the write succeeds.
                    outcomes.push(Ok(0));
                    valid.push(record);
                }
                Err(e) => {
                    if w.failed.is_none() && !matches!(e, StoreError::Closed) {
                        w.failed = Some(StoreError::Backend(format!("the store failed earlier: {e}")));
                    }
                    outcomes.push(Err(e));
                }
            }
        }
        if valid.is_empty() {
            return outcomes;
        }
        let total: u64 = valid.iter().map(|r| r.bytes.len() as u64).sum();
        let written = w.append(&valid, total);
        self.metrics.wrote(valid.len());
        if let Err(e) = written {
            let e = backend(&format!("cannot write segment {}", w.segno), e);
            w.failed = Some(StoreError::Backend(format!("the store failed earlier: {e}")));
            return outcomes.into_iter().map(|_| Err(e.clone())).collect();
        }
        let mut at = w.len;
        w.len += total;
        w.lsn += total;
        w.head = head;
        if valid.iter().any(|r| !r.events.is_empty()) {
            let mut index = lock(&self.index);
            for record in &valid {
                for &(seq, time_ms, offset, len) in &record.events {
                    let span = Span {
                        offset: at + offset as u64,
                        len,
                        time_ms,
                    };
                    index.push(w.segno, &w.file, seq, span);
                }
                at += record.bytes.len() as u64;
            }
            self.retain(&mut w, &index);
        }
        {
            let mut sync = lock(&self.sync_state);
            sync.written_lsn = w.lsn;
            sync.written_seq = head;
            if std::mem::take(&mut sync.idle) {
                self.sync_wake.notify_one();
            }
        }
        if self.sync != SyncLevel::Full {
            self.durable.store(head, Ordering::Release);
        }
        let lsn = w.lsn;
        if w.len >= w.segment_bytes {
            self.roll(&mut w);
        }
        drop(w);
        if self.sync != SyncLevel::Full {
            for record in &valid {
                self.metrics.committed(record.events.len(), record.started.elapsed());
            }
        }
        for at in outcomes.iter_mut().flatten() {
            *at = lsn;
        }
        outcomes
    }

    /// Moves the oldest retained seq: by count at every commit, by age once per
    /// [`AGE_CHECK`]. The newest event always stays.
    fn retain(&self, w: &mut Writer, index: &Index) {
        let age = w
            .age_checked
            .is_none_or(|at| at.elapsed() >= AGE_CHECK)
            .then_some(w.retention_age);
        if age.is_some() {
            w.age_checked = Some(Instant::now());
        }
        let oldest = retained_from(
            index,
            w.head,
            self.oldest.load(Ordering::Acquire),
            w.retention_count,
            age,
        );
        self.oldest.store(oldest, Ordering::Release);
    }

    /// Closes the current segment and starts the next; the compactor takes it from there,
    /// and the sync thread syncs the closed one before the next (never on this path: a
    /// whole segment's sync would stall every call). If the next segment cannot be
    /// created, the batch just written stands, and every later one fails.
    fn roll(&self, w: &mut Writer) {
        let next = w.segno + 1;
        // The closed segment ends at its committed length (before the next exists).
        w.unmap(&self.dir);
        let file = match create_segment(&self.dir, next) {
            Ok(file) => Arc::new(file),
            Err(e) => {
                tracing::error!(error = %e, "cannot roll the log over");
                w.failed = Some(StoreError::Backend(format!("the store failed earlier: {e}")));
                return;
            }
        };
        w.map = map_segment(&file, segment_capacity(w.segment_bytes), &segment_path(&self.dir, next));
        w.reserved = 0;
        w.trimmed = 0;
        let closed = std::mem::replace(&mut w.file, file.clone());
        w.segno = next;
        w.len = SEGMENT_HEADER as u64;
        w.lsn += SEGMENT_HEADER as u64;
        {
            let mut sync = lock(&self.sync_state);
            if self.sync != SyncLevel::Off {
                sync.closed.push(closed);
            }
            sync.current = file;
            sync.dir_dirty = true;
            sync.written_lsn = w.lsn;
            if std::mem::take(&mut sync.idle) {
                self.sync_wake.notify_one();
            }
        }
        if let Some(rolled) = &w.rolled {
            let _ = rolled.send(next - 1);
        }
    }

    /// Syncs what was written: at once (`full`), every `interval` (`normal`), or at the
    /// end (`off`, and every level once more at shutdown).
    fn run_syncer(&self, interval: Duration) {
        let mut synced_lsn = 0u64;
        let mut last_sync = Instant::now();
        loop {
            let (closed, current, lsn, seq, dir_dirty, stop) = {
                let mut state = lock(&self.sync_state);
                loop {
                    let dirty = state.written_lsn > synced_lsn || !state.closed.is_empty() || state.dir_dirty;
                    if state.stop {
                        break;
                    }
                    match self.sync {
                        SyncLevel::Full if dirty => break,
                        SyncLevel::Normal if dirty => {
                            let waited = last_sync.elapsed();
                            if waited >= interval {
                                break;
                            }
                            state = self
                                .sync_wake
                                .wait_timeout(state, interval - waited)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        // Nothing to sync (or `off`): sleep until a write or the stop.
                        _ => {
                            state.idle = self.sync != SyncLevel::Off;
                            state = self.sync_wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
                (
                    std::mem::take(&mut state.closed),
                    state.current.clone(),
                    state.written_lsn,
                    state.written_seq,
                    std::mem::take(&mut state.dir_dirty),
                    state.stop,
                )
            };
            let result = closed
                .iter()
                .chain(std::iter::once(&current))
                .try_for_each(|file| file.sync_data())
                .and_then(|()| if dir_dirty { sync_dir(&self.dir) } else { Ok(()) });
            last_sync = Instant::now();
            match result {
                Ok(()) => {
                    synced_lsn = lsn;
                    if self.sync == SyncLevel::Full {
                        self.durable.fetch_max(seq, Ordering::AcqRel);
                    }
                    self.synced.send_replace(Synced::Upto(lsn));
                }
                Err(e) => {
                    // Whatever the kernel failed to write is lost; nothing written after
                    // it may be acknowledged (a later sync could wrongly succeed).
                    let message = format!("the store failed earlier: cannot sync the log: {e}");
                    tracing::error!(error = %e, "cannot sync the log");
                    lock(&self.writer).failed = Some(StoreError::Backend(message.clone()));
                    self.synced.send_replace(Synced::Failed(message));
                    return;
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Writes the snapshot of everything before segment `closed + 1`, then deletes the
    /// snapshots before it and the segments it covers that hold no retained event.
    fn compact(&self, closed: u64) -> Result<(), StoreError> {
        let next = closed + 1;
        let snapshots = numbered(&self.dir, "snap")?;
        let base = snapshots.iter().copied().filter(|&n| n <= next).max();
        if base == Some(next) {
            return Ok(());
        }
        let segments = numbered(&self.dir, "seg")?;
        let folds = |n: &u64| base.is_none_or(|b| *n >= b) && *n <= closed;
        if let Some(b) = base {
            // Rewriting the whole state costs its size: do it only once the log it
            // replaces is at least twice as long, so that snapshots cost at most half
            // the log's own writes, and a restart replays at most about that much.
            let size = |path: PathBuf| fs::metadata(path).map_or(0, |m| m.len());
            let pending: u64 = segments
                .iter()
                .filter(|n| folds(n))
                .map(|&n| size(segment_path(&self.dir, n)))
                .sum();
            if pending < 2 * size(snapshot_path(&self.dir, b)) {
                return Ok(());
            }
        }
        let mut folded = match base {
            Some(n) => read_snapshot(&self.dir, n).map_err(|e| backend(&format!("snapshot {n}"), e))?,
            None => Folded::default(),
        };
        let mut buffer = Vec::new();
        for &n in segments.iter().filter(|n| folds(n)) {
            let path = segment_path(&self.dir, n);
            let scanned = scan_into(&path, SEGMENT_MAGIC, n, std::mem::take(&mut buffer))
                .map_err(|e| backend(&path.display().to_string(), e))?;
            if scanned.corrupt || scanned.valid_len < scanned.data.len() {
                return Err(backend(&path.display().to_string(), "a closed segment is damaged"));
            }
            // The snapshot must not get ahead of the disk (with `off`, nothing else syncs
            // a closed segment; otherwise this finds it clean).
            File::open(&path)
                .and_then(|file| file.sync_data())
                .map_err(|e| backend(&format!("cannot sync {}", path.display()), e))?;
            for record in &scanned.records {
                folded
                    .apply(&scanned.data[record.clone()])
                    .map_err(|e| backend(&path.display().to_string(), e))?;
            }
            buffer = scanned.data;
        }
        write_snapshot(&self.dir, next, &mut folded)?;
        for n in snapshots.into_iter().filter(|&n| n < next) {
            let _ = fs::remove_file(snapshot_path(&self.dir, n));
        }
        // Segments the snapshot covers whose events are all past retention go; readers
        // that already hold one keep reading it until they drop it.
        let oldest = self.oldest.load(Ordering::Acquire);
        let retained: HashSet<u64> = {
            let mut index = lock(&self.index);
            while index
                .segments
                .front()
                .is_some_and(|s| s.segno <= closed && s.end_seq() <= oldest)
            {
                index.segments.pop_front();
            }
            index.segments.iter().map(|s| s.segno).collect()
        };
        for n in segments.into_iter().filter(|&n| n <= closed && !retained.contains(&n)) {
            let path = segment_path(&self.dir, n);
            fs::remove_file(&path).map_err(|e| backend(&format!("cannot remove {}", path.display()), e))?;
        }
        Ok(())
    }
}

impl Store for LogStore {
    fn name(&self) -> &'static str {
        "log"
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        lock(&self.recovered)
            .take()
            .ok_or_else(|| StoreError::Backend("the store's state was already read back".to_owned()))
    }

    fn commit(&self, batch: Batch) -> Commit {
        let shared = self.shared.clone();
        let events = batch.events.len();
        let started = Instant::now();
        // The ticket is taken here, under the core's lock; the rest runs once the lock is
        // released, when the commit is first polled (or dropped).
        let mut pending = Pending {
            ticket: shared.ticket(),
            shared: shared.clone(),
            batch: Some(batch),
            started,
        };
        Box::pin(async move {
            let lsn = match pending.submit() {
                Some(Queued::Done(outcome)) => outcome?,
                // No answer at all: the writer unwound (see `Shared::break_down`).
                Some(Queued::Later(answer)) => answer.await.unwrap_or_else(|_| {
                    Err(StoreError::Backend(
                        "the store failed: its writer stopped before writing this record".to_owned(),
                    ))
                })?,
                None => return Err(StoreError::Closed),
            };
            if shared.sync != SyncLevel::Full {
                return Ok(());
            }
            let mut synced = shared.synced.subscribe();
            let result = match synced
                .wait_for(|s| match s {
                    Synced::Upto(at) => *at >= lsn,
                    Synced::Failed(_) => true,
                })
                .await
            {
                Ok(state) => match &*state {
                    Synced::Upto(_) => Ok(()),
                    Synced::Failed(message) => Err(StoreError::Backend(message.clone())),
                },
                Err(_) => Err(StoreError::Closed),
            };
            if result.is_ok() {
                shared.metrics.committed(events, started.elapsed());
            }
            result
        })
    }

    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let from = after_seq.saturating_add(1).max(self.oldest_seq());
        let spans = lock(&self.shared.index).locate(from, limit);
        let mut events = Vec::with_capacity(spans.len());
        let mut body = Vec::new();
        for (file, span) in spans {
            body.resize(span.len as usize, 0);
            file.read_exact_at(&mut body, span.offset)
                .map_err(|e| backend("read events", e))?;
            let event: Event = decode_body(&body).map_err(|e| backend("decode event", e))?;
            events.push(Arc::new(event));
        }
        Ok(events)
    }

    fn oldest_seq(&self) -> u64 {
        self.shared.oldest.load(Ordering::Acquire)
    }

    fn durable_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    fn flush(&self) {
        {
            let mut w = lock(&self.shared.writer);
            w.closed = true;
            // The segment ends at its committed length (the syncer's last sync follows).
            w.unmap(&self.shared.dir);
            // The compactor finishes the snapshot it is writing, then stops.
            w.rolled = None;
        }
        lock(&self.shared.sync_state).stop = true;
        self.shared.sync_wake.notify_all();
        for thread in lock(&self.threads).drain(..) {
            let _ = thread.join();
        }
        self.dir_lock.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Command, CommandAction, CommandState};
    use crate::store::testing::{assert_hot_and_back, assert_one_server_per_data_dir, event, hot_gone_back, task};

    fn options(dir: &Path) -> LogOptions {
        LogOptions {
            data_dir: dir.to_owned(),
            sync: SyncLevel::Normal,
            sync_interval: Duration::from_millis(10),
            retention_count: 1000,
            retention_age: Duration::from_secs(3600),
            segment_bytes: LogOptions::SEGMENT_BYTES,
        }
    }

    fn events(batch_seqs: std::ops::RangeInclusive<u64>) -> Batch {
        Batch {
            events: batch_seqs.map(event).collect(),
            ..Batch::default()
        }
    }

    fn seqs(store: &LogStore, after: u64, limit: usize) -> Vec<u64> {
        store.read_events(after, limit).unwrap().iter().map(|e| e.seq).collect()
    }

    /// Events 1..=40 or a few more, one per commit, in 1 KiB segments (several rolls),
    /// so that the last segment holds some (whatever the records' size, the last one
    /// does not end a segment); the store is closed again. Returns its options and the
    /// last event's seq.
    async fn forty_events_in_small_segments(dir: &Path) -> (LogOptions, u64) {
        let small = LogOptions {
            segment_bytes: 1024,
            ..options(dir)
        };
        let store = LogStore::open(small.clone()).unwrap();
        let mut seq = 0;
        while seq < 40 || committed(&last_segment(dir)) == SEGMENT_HEADER as u64 {
            seq += 1;
            store.commit(events(seq..=seq)).await.unwrap();
        }
        (small, seq)
    }

    fn append(path: &Path, bytes: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// Appends `bytes` to the segment at `path` and moves its committed length past them:
    /// a power loss that kept the header's page and only part of the data's.
    fn append_committed(path: &Path, bytes: &[u8]) {
        append(path, bytes);
        set_committed(path, fs::metadata(path).unwrap().len());
    }

    fn set_committed(path: &Path, len: u64) {
        let word = committed_word(u32::try_from(len).unwrap());
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&word.to_le_bytes(), COMMITTED_AT as u64).unwrap();
    }

    fn committed(path: &Path) -> u64 {
        let mut word = [0u8; 8];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut word, COMMITTED_AT as u64)
            .unwrap();
        committed_len(word).unwrap()
    }

    /// Opens the store in `options` again and checks that it holds events `1..=head`,
    /// every one readable; returns it.
    fn reopened_with(options: LogOptions, head: u64) -> LogStore {
        let store = LogStore::open(options).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, head);
        assert_eq!(seqs(&store, 0, head as usize + 10), (1..=head).collect::<Vec<_>>());
        store
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let log = dir.join("log");
        segment_path(&log, *numbered(&log, "seg").unwrap().last().unwrap())
    }

    /// Writes `batches` (one commit each) to a new store in `dir` and closes it; the last
    /// segment's path.
    async fn written(dir: &Path, batches: &[std::ops::RangeInclusive<u64>]) -> PathBuf {
        let store = LogStore::open(options(dir)).unwrap();
        for seqs in batches {
            store.commit(events(seqs.clone())).await.unwrap();
        }
        drop(store);
        last_segment(dir)
    }

    /// Flips the bits `mask` of the byte at `at` in `path`; the file's bytes after.
    fn flip(path: &Path, at: usize, mask: u8) -> Vec<u8> {
        let mut data = fs::read(path).unwrap();
        data[at] ^= mask;
        fs::write(path, &data).unwrap();
        data
    }

    /// Events written survive reopening, are read back by seq, and the head continues;
    /// retention by count trims the oldest (also across a restart) but never the newest; a
    /// gap is refused and writes nothing.
    #[tokio::test]
    async fn reopen_keeps_the_log_and_trims_by_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(LogOptions {
                retention_count: 5,
                ..options(dir.path())
            })
            .unwrap();
            for seq in 1..=12 {
                store.commit(events(seq..=seq)).await.unwrap();
                assert_eq!(store.durable_seq(), seq, "durable as soon as its commit resolves");
            }
            assert_eq!(store.oldest_seq(), 8);
            assert_eq!(
                seqs(&store, 0, 100),
                vec![8, 9, 10, 11, 12],
                "nothing before the oldest"
            );
        }
        let store = LogStore::open(LogOptions {
            retention_count: 3,
            ..options(dir.path())
        })
        .unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 12);
        assert_eq!(store.oldest_seq(), 10, "retention applies at start too");
        assert_eq!(seqs(&store, 9, 10), vec![10, 11, 12]);
        assert_eq!(seqs(&store, 10, 1), vec![11]);
        let read = store.read_events(11, 1).unwrap();
        assert_eq!(read[0].kind, crate::core::EventType::RealTimeUpdate, "bodies decode");
        let gap = events(14..=14);
        assert!(store.commit(gap).await.is_err());
        assert_eq!(store.durable_seq(), 12, "a refused batch is never reported durable");
        assert!(
            store.commit(events(13..=14)).await.is_err(),
            "nothing is acknowledged after a lost batch"
        );
        drop(store);
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 12, "the gap wrote nothing");
        store.commit(events(13..=14)).await.unwrap();
        assert_eq!(seqs(&store, 12, 10), vec![13, 14]);
    }

    /// Polls `commit` once: it encodes and queues its record (and writes it if it is next).
    fn poll_once(commit: &mut Commit) -> std::task::Poll<Result<(), StoreError>> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        commit.as_mut().poll(&mut cx)
    }

    /// Records are written in the order their commits were taken (the core's order),
    /// whichever encodes first: a commit whose record is not next waits, and the commit
    /// that writes the next record writes the ones queued behind it too. A commit dropped
    /// without being polled is still written, and the later ones do not wait forever.
    #[tokio::test]
    async fn records_are_written_in_commit_order_whoever_encodes_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            let first = store.commit(events(1..=1));
            let mut second = store.commit(events(2..=3));
            let mut third = store.commit(events(4..=4));
            assert!(poll_once(&mut third).is_pending(), "not next: it waits");
            assert!(poll_once(&mut second).is_pending());
            assert_eq!(store.durable_seq(), 0, "nothing written before the first record");
            first.await.unwrap();
            assert_eq!(store.durable_seq(), 4, "the first commit wrote the queued ones too");
            second.await.unwrap();
            third.await.unwrap();
            let dropped = store.commit(events(5..=5));
            let after = store.commit(events(6..=6));
            drop(dropped);
            after.await.unwrap();
            assert_eq!(seqs(&store, 0, 100), vec![1, 2, 3, 4, 5, 6]);
        }
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 6);
        assert_eq!(seqs(&store, 0, 100), vec![1, 2, 3, 4, 5, 6], "in order on disk too");
        store.commit(events(7..=7)).await.unwrap();
    }

    /// A record that is lost (here: it does not continue the seqs) fails, and so does every
    /// record queued behind it, even one that would continue the log: nothing after a
    /// lost record is acknowledged.
    #[tokio::test]
    async fn nothing_after_a_lost_record_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(options(dir.path())).unwrap();
        let first = store.commit(events(1..=1));
        let mut gap = store.commit(events(9..=9));
        let mut next = store.commit(events(2..=2));
        assert!(poll_once(&mut next).is_pending());
        assert!(poll_once(&mut gap).is_pending());
        first.await.unwrap();
        assert!(gap.await.is_err());
        assert!(next.await.is_err(), "queued behind the lost record");
        assert!(store.commit(events(2..=2)).await.is_err(), "and after it");
        assert_eq!(store.durable_seq(), 1);
    }

    /// A writer that panics (a bug) fails the store: the records queued behind it and
    /// every later commit get an error instead of waiting for a writer forever.
    #[tokio::test]
    async fn a_writer_that_panics_fails_every_commit_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(options(dir.path())).unwrap());
        store.commit(events(1..=1)).await.unwrap();
        let first = store.commit(events(2..=2));
        let mut queued = store.commit(events(3..=3));
        assert!(poll_once(&mut queued).is_pending());
        store.shared.panic_next_write.store(true, Ordering::SeqCst);
        assert!(tokio::spawn(first).await.is_err(), "the writer panicked");
        let err = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("a queued commit is answered")
            .unwrap_err();
        assert!(err.to_string().contains("writer stopped"), "{err}");
        let err = store.commit(events(3..=3)).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(store.durable_seq(), 1);
    }

    /// Many committers on two threads, tickets taken under one lock with the seqs (as the
    /// core does), some yielding and some dropping their commit before polling it: every
    /// seq is written, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_written_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            LogStore::open(LogOptions {
                segment_bytes: 8192,
                retention_count: 100_000,
                ..options(dir.path())
            })
            .unwrap(),
        );
        let head = Arc::new(Mutex::new(0u64));
        let mut workers = Vec::new();
        for w in 0..8u64 {
            let (store, head) = (store.clone(), head.clone());
            workers.push(tokio::spawn(async move {
                for i in 0..150u64 {
                    let commit = {
                        let mut head = head.lock().unwrap();
                        *head += 1;
                        store.commit(events(*head..=*head))
                    };
                    if (i + w) % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                    if (i + w) % 11 == 0 {
                        drop(commit);
                        continue;
                    }
                    commit.await.unwrap();
                }
            }));
        }
        for worker in workers {
            worker.await.unwrap();
        }
        let last = {
            let mut head = head.lock().unwrap();
            *head += 1;
            *head
        };
        store.commit(events(last..=last)).await.unwrap();
        assert_eq!(store.durable_seq(), last);
        assert_eq!(seqs(&store, 0, 100_000), (1..=last).collect::<Vec<_>>());
    }

    /// A log written by format 1 (open commands whole inside their task's entry) upgrades:
    /// its open commands get entries of their own at open, so that the format-2 task
    /// entries written next, which list them by id, still find them after a restart; and
    /// the new records go to a new segment of format 2.
    #[tokio::test]
    async fn a_format_1_log_with_open_commands_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        // Format 1's commands had no order.
        let open = Arc::new(Command {
            state: CommandState::Admitted,
            task_version: 0,
            ..command("c1")
        });
        let old = steered_by(&open, 1);
        let log = dir.path().join("log");
        fs::create_dir_all(&log).unwrap();
        let mut record = vec![0u8; RECORD_HEADER];
        let first = event(1);
        put_json(
            &mut record,
            kind::EVENT,
            &event_entry_key(1, millis(first.time)),
            &*first,
        );
        // Format 1 wrote the task as `Task` serializes it: its commands whole.
        put_json(&mut record, kind::TASK, b"t", &old);
        seal(&mut record);
        let mut segment = file_header(SEGMENT_MAGIC, 1).to_vec();
        segment[7] = 1;
        segment.extend_from_slice(&record);
        fs::write(segment_path(&log, 1), segment).unwrap();
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            let task = store.recover().unwrap().tasks.remove(0);
            assert_eq!(task.open_commands, vec![open.clone()], "format 1 reads");
            let changed = Arc::new(Task { version: 2, ..task });
            let batch = Batch {
                events: vec![event(2)],
                upserts: vec![changed],
                ..Batch::default()
            };
            store.commit(batch).await.unwrap();
        }
        assert_eq!(
            numbered(&log, "seg").unwrap(),
            vec![1, 2],
            "format 1 is not appended to"
        );
        assert_eq!(segment_format(&segment_path(&log, 2)), Some(LOG_FORMAT));
        let store = LogStore::open(options(dir.path())).unwrap();
        let task = store.recover().unwrap().tasks.remove(0);
        assert_eq!(task.version, 2);
        assert_eq!(
            task.open_commands,
            vec![open.clone()],
            "the command survived the upgrade"
        );
        assert_eq!(task.last_command, Some(open));
    }

    /// Appends an entry as formats 1 to 3 wrote it: its value as JSON, its commands
    /// (wherever they are) without the `task_version` those formats did not have.
    fn put_json(buf: &mut Vec<u8>, kind: u8, key: &[u8], value: &impl serde::Serialize) {
        fn strip(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    if map.contains_key("fencing_token") {
                        map.remove("task_version");
                    }
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut json = serde_json::to_value(value).unwrap();
        strip(&mut json);
        put_encoded(buf, kind, key, |buf| {
            serde_json::to_writer(buf, &json).map_err(|e| e.to_string())
        })
        .unwrap();
    }

    /// Writes the header of a record whose payload follows [`RECORD_HEADER`] zeros.
    fn seal(record: &mut [u8]) {
        let len = record.len() - RECORD_HEADER;
        let header = record_header(len as u32, &record[RECORD_HEADER..]);
        record[..RECORD_HEADER].copy_from_slice(&header);
    }

    /// A value as this build writes it (MessagePack) and as formats 1 to 3 did (JSON).
    fn bodies(value: &impl serde::Serialize) -> [(&'static str, Vec<u8>); 2] {
        [
            ("MessagePack", rmp_serde::to_vec_named(value).unwrap()),
            ("JSON", serde_json::to_vec(value).unwrap()),
        ]
    }

    /// A log of format 3 (JSON bodies) reads; the compaction folds it with this build's
    /// records (MessagePack) into a snapshot that holds both, which reads back.
    #[tokio::test]
    async fn a_format_3_log_of_json_bodies_reads_and_folds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::create_dir_all(&log).unwrap();
        // Format 3's commands had no order: their task listed them by id.
        let open = Arc::new(Command {
            state: CommandState::Delivered,
            task_version: 0,
            ..command("open")
        });
        let closed = Command {
            state: CommandState::Applied,
            task_version: 0,
            ..command("closed")
        };
        let old = steered_by(&open, 1);
        let first = Arc::new(Event {
            kind: crate::core::EventType::AgentCoordination,
            coordinator_id: Some("sup".into()),
            data: Some(JsonMap::from_iter([("priority".to_owned(), serde_json::json!(7))])),
            detail: crate::core::EventDetail::Command(open.clone()),
            ..(*event(1)).clone()
        });
        let mut record = vec![0u8; RECORD_HEADER];
        put_json(
            &mut record,
            kind::EVENT,
            &event_entry_key(1, millis(first.time)),
            &*first,
        );
        put_json(&mut record, kind::OPEN_COMMAND, b"open", &*open);
        put_json(&mut record, kind::TASK, b"t", &TaskEntry::new(&old));
        put_json(&mut record, kind::COMMAND, b"closed", &closed);
        seal(&mut record);
        let mut segment = segment_header(1).to_vec();
        segment[7] = 3;
        segment.extend_from_slice(&record);
        let path = segment_path(&log, 1);
        fs::write(&path, &segment).unwrap();
        set_committed(&path, segment.len() as u64);
        let small = LogOptions {
            segment_bytes: 1024,
            ..options(dir.path())
        };
        let check = |store: &LogStore, last: u64, what: &str| {
            let recovered = store.recover().unwrap();
            assert_eq!(recovered.tasks, vec![old.clone()], "{what}");
            assert_eq!(recovered.closed_commands, vec![closed.clone()], "{what}");
            let events = store.read_events(0, 100).unwrap();
            assert_eq!(events[0], first, "{what}");
            assert_eq!(
                events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=last).collect::<Vec<_>>()
            );
        };
        {
            let store = LogStore::open(small.clone()).unwrap();
            check(&store, 1, "format 3 reads");
            // Enough records of this build to roll: the compaction folds both formats.
            for seq in 2..=40 {
                store.commit(events(seq..=seq)).await.unwrap();
            }
            store.flush();
        }
        assert_eq!(segment_format(&path), Some(3), "format 3 is not appended to");
        assert_eq!(segment_format(&segment_path(&log, 2)), Some(LOG_FORMAT));
        let snapshots = numbered(&log, "snap").unwrap();
        assert!(!snapshots.is_empty());
        // The task and the commands now come from the snapshot, their bodies still JSON.
        let store = LogStore::open(small).unwrap();
        check(&store, 40, "a snapshot of both formats reads");
    }

    /// Task `t` at `version`, with `open` its one open command and its last.
    fn steered_by(open: &Arc<Command>, version: u64) -> Task {
        Task {
            open_commands: vec![open.clone()],
            last_command: Some(open.clone()),
            ..(*task("t", version)).clone()
        }
    }

    fn command(id: &str) -> Command {
        let now = SystemTime::now();
        Command {
            id: id.into(),
            idempotency_key: Some(format!("key-{id}")),
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
        }
    }

    /// What the batches add up to comes back: each task as last written (a removal after
    /// an upsert removes it, an upsert after a removal brings it back), closed commands
    /// oldest first, service values.
    #[tokio::test]
    async fn state_is_each_task_as_last_written() {
        let dir = tempfile::tempdir().unwrap();
        let c1 = command("c1");
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            let mut commits = Vec::new();
            for seq in 1..=50u64 {
                let mut batch = hot_gone_back(seq);
                match seq {
                    45 => {
                        batch.closed_commands.push(c1.clone());
                        batch.meta.push(("global_interrupt", 1));
                    }
                    46 => batch.closed_commands.push(command("c2")),
                    _ => {}
                }
                commits.push(store.commit(batch));
            }
            for commit in commits {
                commit.await.unwrap();
            }
        }
        let store = LogStore::open(options(dir.path())).unwrap();
        let recovered = store.recover().unwrap();
        assert_hot_and_back(&recovered);
        let ids: Vec<&str> = recovered.closed_commands.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, vec!["c1", "c2"]);
        assert_eq!(recovered.closed_commands[0], c1, "read back exactly");
        assert_eq!(recovered.meta.get("global_interrupt"), Some(&1));
        assert!(store.recover().is_err(), "the state is read back once");
    }

    /// A task's open commands are written once each, when they change, not with every
    /// write of their task; they come back in their task, through the log and through a
    /// snapshot: its last command the same as the open one while open, whole once closed;
    /// a closed command leaves the open ones.
    /// A task's open commands come back in the order they were admitted, from the
    /// segments and from a snapshot (whose maps have no order): by the ids its entry
    /// lists while one of them was written before commands carried their order, and by
    /// that order once none is.
    #[tokio::test]
    async fn open_commands_come_back_in_the_order_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        // Random ids, and times running backwards: only the order says which came first.
        let now = SystemTime::now();
        let open = |task: &str, task_version: u64| {
            Arc::new(Command {
                state: CommandState::Admitted,
                task_id: task.into(),
                task_version,
                create_time: now - Duration::from_secs(task_version),
                ..command(&uuid::Uuid::new_v4().to_string())
            })
        };
        // An old command (no order) first, then thirty admitted by this build.
        let legacy = open("steered", 0);
        let admitted: Vec<Arc<Command>> = (0..30).map(|i| open("steered", 2 + i)).collect();
        // Another task's, and two of this task's id that no version of it admitted.
        let other: Vec<Arc<Command>> = (2..5).map(|v| open("other", v)).collect();
        let strays = vec![open("steered", 0), open("steered", 1000)];
        let all: Vec<Arc<Command>> = std::iter::once(legacy.clone())
            .chain(admitted.iter().cloned())
            .collect();
        let steered = |version: u64, commands: Vec<Arc<Command>>| {
            Arc::new(Task {
                last_command: commands.last().cloned(),
                open_commands: commands,
                ..(*task("steered", version)).clone()
            })
        };
        let ids = |recovered: &Recovered, id: &str| -> Vec<String> {
            let task = recovered.tasks.iter().find(|t| t.id == id).unwrap();
            task.open_commands.iter().map(|c| c.id.clone()).collect()
        };
        let expected = |commands: &[Arc<Command>]| -> Vec<String> { commands.iter().map(|c| c.id.clone()).collect() };
        {
            let store = LogStore::open(small.clone()).unwrap();
            store
                .commit(Batch {
                    events: vec![event(1)],
                    upserts: vec![
                        steered(32, all.clone()),
                        Arc::new(Task {
                            open_commands: other.clone(),
                            ..(*task("other", 4)).clone()
                        }),
                    ],
                    commands: all.iter().chain(&other).chain(&strays).cloned().collect(),
                    ..Batch::default()
                })
                .await
                .unwrap();
        }
        {
            let store = LogStore::open(small.clone()).unwrap();
            assert_eq!(
                ids(&store.recover().unwrap(), "steered"),
                expected(&all),
                "listed by id"
            );
            // The old command closes: the task's entry lists no ids any more.
            store
                .commit(Batch {
                    events: vec![event(2)],
                    upserts: vec![steered(33, admitted.clone())],
                    closed_commands: vec![Command {
                        state: CommandState::Applied,
                        ..(*legacy).clone()
                    }],
                    ..Batch::default()
                })
                .await
                .unwrap();
        }
        let store = LogStore::open(small.clone()).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(
            ids(&recovered, "steered"),
            expected(&admitted),
            "by their order, strays left out"
        );
        assert_eq!(ids(&recovered, "other"), expected(&other), "each task its own");
        // Enough events to roll and fold everything into a snapshot.
        for seq in 3..=200 {
            store.commit(events(seq..=seq)).await.unwrap();
        }
        store.flush();
        drop(store);
        let log = dir.path().join("log");
        let snapshot = *numbered(&log, "snap").unwrap().last().unwrap();
        for n in numbered(&log, "seg").unwrap().into_iter().filter(|&n| n < snapshot) {
            fs::remove_file(segment_path(&log, n)).unwrap();
        }
        let store = LogStore::open(small).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(ids(&recovered, "steered"), expected(&admitted), "from a snapshot");
        assert_eq!(ids(&recovered, "other"), expected(&other), "from a snapshot");
    }

    #[tokio::test]
    async fn open_commands_are_written_once_and_come_back_in_their_task() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let open = |id: &str, note: &str| {
            Arc::new(Command {
                data: Some(JsonMap::from_iter([("note".to_owned(), serde_json::json!(note))])),
                state: CommandState::Admitted,
                task_id: "steered".into(),
                ..command(id)
            })
        };
        let kept = open("kept", "kept-marker");
        let done = open("done", "done-marker");
        let closed = Command {
            state: CommandState::Applied,
            ..(*done).clone()
        };
        let steered = |version: u64, commands: Vec<Arc<Command>>, last: Option<Arc<Command>>| {
            Arc::new(Task {
                open_commands: commands,
                last_command: last,
                ..(*task("steered", version)).clone()
            })
        };
        let mut batches = Vec::new();
        // Seq 1: `kept` admitted; 2..=5: the task changes with it open.
        batches.push(Batch {
            events: vec![event(1)],
            upserts: vec![steered(1, vec![kept.clone()], Some(kept.clone()))],
            commands: vec![kept.clone()],
            ..Batch::default()
        });
        for seq in 2..=5 {
            batches.push(Batch {
                events: vec![event(seq)],
                upserts: vec![steered(seq, vec![kept.clone()], Some(kept.clone()))],
                ..Batch::default()
            });
        }
        // Seq 6: `done` admitted; 7: closed (the last command, now whole).
        batches.push(Batch {
            events: vec![event(6)],
            upserts: vec![steered(6, vec![kept.clone(), done.clone()], Some(done.clone()))],
            commands: vec![done.clone()],
            ..Batch::default()
        });
        batches.push(Batch {
            events: vec![event(7)],
            upserts: vec![steered(7, vec![kept.clone()], Some(Arc::new(closed.clone())))],
            closed_commands: vec![closed.clone()],
            ..Batch::default()
        });
        let check = |recovered: &Recovered, from: &str| {
            let task = recovered.tasks.iter().find(|t| t.id == "steered").unwrap();
            assert_eq!(task.version, 7, "{from}");
            assert_eq!(task.open_commands, vec![kept.clone()], "{from}");
            assert_eq!(task.last_command.as_deref(), Some(&closed), "{from}");
            assert_eq!(recovered.closed_commands, vec![closed.clone()], "{from}");
        };
        {
            let store = LogStore::open(small.clone()).unwrap();
            for batch in batches {
                store.commit(batch).await.unwrap();
            }
            let log = dir.path().join("log");
            let segment: Vec<u8> = numbered(&log, "seg")
                .unwrap()
                .into_iter()
                .flat_map(|n| fs::read(segment_path(&log, n)).unwrap())
                .collect();
            let count = |marker: &str| {
                segment
                    .windows(marker.len())
                    .filter(|w| *w == marker.as_bytes())
                    .count()
            };
            assert_eq!(
                count("kept-marker"),
                1,
                "written once, not with each of the 7 task writes"
            );
            assert_eq!(
                count("done-marker"),
                3,
                "admitted, closed, and whole as the last command once closed"
            );
        }
        let store = LogStore::open(small.clone()).unwrap();
        check(&store.recover().unwrap(), "the log");
        // Fill segments until a snapshot folds them all (the task is never written again).
        for seq in 8..=200 {
            store.commit(events(seq..=seq)).await.unwrap();
        }
        store.flush();
        drop(store);
        assert!(!numbered(&dir.path().join("log"), "snap").unwrap().is_empty());
        let store = LogStore::open(small).unwrap();
        check(&store.recover().unwrap(), "a snapshot");
    }

    /// A task entry carries every field of its task: one with every field set comes back
    /// equal, its open commands from their own entries (found by task, or by the ids the
    /// entry lists while one has no order), its last command by id while open and whole
    /// once closed. (A field of `Task` missing from `TaskEntry` does not compile; this
    /// catches one written differently.)
    #[test]
    fn task_entries_round_trip_every_field() {
        task_entry_round_trips_every_field(4);
        task_entry_round_trips_every_field(0);
    }

    fn task_entry_round_trips_every_field(open_version: u64) {
        let at = UNIX_EPOCH + Duration::new(1_796_001_890, 624_880_828);
        let open = Arc::new(Command {
            state: CommandState::Delivered,
            task_version: open_version,
            ..command("open")
        });
        let closed = Arc::new(command("closed"));
        let json = |v: serde_json::Value| v.as_object().cloned();
        let full = Task {
            id: "t".into(),
            agent_id: "agent".into(),
            description: "a task".into(),
            status: crate::core::TaskStatus::Interrupted,
            progress: 0.25,
            status_message: "a quarter".into(),
            metadata: json(serde_json::json!({"k": [1, 2]})),
            priority: -3,
            plan: crate::core::Plan {
                version: 2,
                content: json(serde_json::json!({"steps": ["a"]})),
                updated_by: Some("sup".into()),
                update_time: Some(at),
            },
            version: 9,
            create_time: at,
            start_time: Some(at + Duration::from_secs(1)),
            update_time: at + Duration::from_secs(2),
            finish_time: Some(at + Duration::from_secs(3)),
            controlling_coordinator: Some("sup".into()),
            result: Some(serde_json::json!({"ok": true})),
            error: Some(crate::core::TaskError {
                message: "m".into(),
                details: json(serde_json::json!({"d": 1})),
            }),
            reason: Some("why".into()),
            stalled: true,
            orphaned: true,
            stall_timeout: Duration::from_millis(1500),
            create_seq: 7,
            lock: None,
            open_inputs: Vec::new(),
            open_commands: vec![open.clone()],
            last_command: Some(closed),
            wire: Default::default(),
        };
        let by_id = OpenCommands::new([(*open).clone()]);
        for (format, body) in bodies(&TaskEntry::new(&full)) {
            assert_eq!(
                body.windows(16).any(|w| w == b"open_command_ids"),
                open_version == 0,
                "{format}: the ids listed only for a command without its order"
            );
            assert_eq!(
                decode_task(&body, &by_id).unwrap(),
                full,
                "{format}, last command closed: whole"
            );
        }
        let last_open = Task {
            last_command: Some(open.clone()),
            ..full
        };
        for (format, body) in bodies(&TaskEntry::new(&last_open)) {
            assert!(
                !body.windows(14).any(|w| w == b"coordinator_id"),
                "{format}: commands by id only"
            );
            let back = decode_task(&body, &by_id).unwrap();
            assert_eq!(back, last_open, "{format}, last command open: by id");
            assert!(Arc::ptr_eq(back.last_command.as_ref().unwrap(), &back.open_commands[0]));
        }
    }

    /// The stores leave a `None` out of their JSON; a `null`, as written before, reads
    /// the same.
    #[test]
    fn absent_and_null_fields_read_alike() {
        // Builds before this one wrote every `None` as `null`, and no input as `[]`.
        let task = (*task("t", 3)).clone();
        let body = serde_json::to_vec(&TaskEntry::new(&task)).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let map = value.as_object_mut().unwrap();
        let absent = [
            "metadata",
            "finish_time",
            "controlling_coordinator",
            "result",
            "error",
            "reason",
        ];
        for key in absent {
            assert!(!map.contains_key(key), "{key} is left out");
            map.insert(key.into(), serde_json::Value::Null);
        }
        map.insert("open_inputs".into(), serde_json::json!([]));
        let nulls = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode_task(&body, &OpenCommands::default()).unwrap(), task);
        assert_eq!(decode_task(&nulls, &OpenCommands::default()).unwrap(), task);
        let command = command("c1");
        let mut value = serde_json::to_value(&command).unwrap();
        let map = value.as_object_mut().unwrap();
        for key in ["data", "reason", "result"] {
            assert!(!map.contains_key(key), "{key} is left out");
            map.insert(key.into(), serde_json::Value::Null);
        }
        assert_eq!(serde_json::from_value::<Command>(value).unwrap(), command);
    }

    /// A task entry of format 1 (its commands whole, as `Task` serializes them) still
    /// decodes, commands included.
    #[test]
    fn format_1_task_entries_decode() {
        let open = Arc::new(Command {
            state: CommandState::Admitted,
            ..command("c1")
        });
        let task = steered_by(&open, 3);
        let body = serde_json::to_vec(&task).unwrap();
        assert_eq!(decode_task(&body, &OpenCommands::default()).unwrap(), task);
    }

    /// Small segments roll over; the compactor snapshots the state and deletes segments
    /// that hold no retained event; a restart reads the snapshot and the log after it, and
    /// replay still finds every retained event.
    #[tokio::test]
    async fn segments_roll_snapshots_fold_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            retention_count: 100,
            ..options(dir.path())
        };
        {
            let store = LogStore::open(small.clone()).unwrap();
            for seq in 1..=600u64 {
                let mut batch = Batch {
                    events: vec![event(seq)],
                    upserts: vec![task(&format!("t{}", seq % 7), seq)],
                    ..Batch::default()
                };
                if seq % 100 == 0 {
                    batch.closed_commands.push(command(&format!("c{seq}")));
                    batch.meta.push(("interactions", seq as i64));
                }
                store.commit(batch).await.unwrap();
            }
            assert_eq!(store.oldest_seq(), 501);
            // Flushing waits for the compactions queued so far.
            store.flush();
        }
        let log = dir.path().join("log");
        let segments = numbered(&log, "seg").unwrap();
        let snapshots = numbered(&log, "snap").unwrap();
        assert_eq!(snapshots.len(), 1, "older snapshots are removed: {snapshots:?}");
        assert!(segments.len() >= 2, "{segments:?}");
        assert!(
            segments[0] > 1,
            "segments holding only events past retention are deleted: {segments:?}"
        );
        assert!(
            segments.len() < 40,
            "600 records of ~1 KiB in 4 KiB segments: most were deleted: {segments:?}"
        );

        let store = LogStore::open(small).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.head_seq, 600);
        let mut versions: Vec<(String, u64)> = recovered.tasks.iter().map(|t| (t.id.clone(), t.version)).collect();
        versions.sort();
        let expected: Vec<(String, u64)> = {
            let mut v: Vec<(String, u64)> = (594..=600).map(|seq| (format!("t{}", seq % 7), seq)).collect();
            v.sort();
            v
        };
        assert_eq!(versions, expected);
        let ids: Vec<String> = recovered.closed_commands.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, (1..=6).map(|i| format!("c{}", i * 100)).collect::<Vec<_>>());
        assert_eq!(recovered.meta.get("interactions"), Some(&600));
        assert_eq!(store.oldest_seq(), 501);
        assert_eq!(seqs(&store, 0, 1000), (501..=600).collect::<Vec<_>>());
        // Appends continue after a restart, in the last segment.
        store.commit(events(601..=601)).await.unwrap();
        assert_eq!(seqs(&store, 599, 10), vec![600, 601]);
    }

    /// A snapshot is rewritten only once the log after it is twice its size: with a large
    /// state and small segments, rolls do not each rewrite the state, and a restart
    /// still finds everything.
    #[tokio::test]
    async fn snapshots_wait_for_log_twice_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let log = dir.path().join("log");
        let store = LogStore::open(small.clone()).unwrap();
        // 200 tasks (a snapshot of ~160 KiB) in the first segment, which then rolls.
        let batch = Batch {
            events: vec![event(1)],
            upserts: (0..200).map(|i| task(&format!("t{i}"), 1)).collect(),
            ..Batch::default()
        };
        store.commit(batch).await.unwrap();
        // Flushing waits for the compaction of the rolled segment.
        store.flush();
        drop(store);
        let first = numbered(&log, "snap").unwrap();
        assert_eq!(first.len(), 1, "the first roll writes a snapshot");
        // A stray temporary snapshot (a crash mid-write) is removed at start.
        fs::write(log.join("00000000000000000099.snap.tmp"), b"partial").unwrap();
        let store = LogStore::open(small.clone()).unwrap();
        assert!(!log.join("00000000000000000099.snap.tmp").exists());
        // Rolls of small segments: far less than twice the snapshot.
        for seq in 2..=40 {
            store.commit(events(seq..=seq)).await.unwrap();
        }
        store.flush();
        assert_eq!(numbered(&log, "snap").unwrap(), first, "the snapshot was not rewritten");
        drop(store);
        let store = LogStore::open(small).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!((recovered.head_seq, recovered.tasks.len()), (40, 200));
    }

    /// A write cut short by a crash (the tail of the last segment) is cut off at start;
    /// what was whole before it stays, and appends continue.
    #[tokio::test]
    async fn a_torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=3]).await;
        let whole = fs::metadata(&path).unwrap().len();
        assert_eq!(committed(&path), whole, "a closed segment ends at its committed length");
        // A whole header whose length checks, promising more than follows.
        let mut cut = record_header(200, &[]).to_vec();
        cut.extend_from_slice(&[9, 9]);
        append_committed(&path, &cut);
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            assert_eq!(store.recover().unwrap().head_seq, 3);
            assert_eq!(committed(&path), whole, "cut back to the last whole record");
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
        // Half a header.
        append_committed(&path, &[200, 0, 0, 0, 1, 2]);
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            assert_eq!(store.recover().unwrap().head_seq, 3);
            assert_eq!(committed(&path), whole, "cut back to the last whole record");
            store.commit(events(4..=4)).await.unwrap();
        }
        // A last record whose bytes are all there but fail the checksum (a power loss).
        let last = fs::metadata(&path).unwrap().len() as usize - 1;
        flip(&path, last, 0xff);
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 3);
        assert_eq!(seqs(&store, 0, 10), vec![1, 2, 3]);
    }

    /// Whatever lies past the committed length was never acknowledged (a copy that a
    /// `kill -9` interrupted, in any order of its bytes, or space reserved ahead): it is
    /// ignored, even when it looks like damage or like a whole record, and appends
    /// overwrite it.
    #[tokio::test]
    async fn bytes_past_the_committed_length_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=2]).await;
        let whole = fs::metadata(&path).unwrap().len();
        let data = fs::read(&path).unwrap();
        // Garbage (it would fail a header's check: damage, if it were committed), then
        // a copy of the last record whole.
        let mut past = vec![0xA5u8; 40];
        past.extend_from_slice(&data[data.len() - 100..]);
        append(&path, &past);
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            assert_eq!(store.recover().unwrap().head_seq, 2);
            assert_eq!(seqs(&store, 0, 10), vec![1, 2]);
        }
        // A whole, valid record right at the committed length: a group whose copy was
        // done but not published.
        let record = encode(&events(3..=3), Instant::now()).unwrap();
        append(&path, &record.bytes);
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            assert_eq!(store.recover().unwrap().head_seq, 2, "not replayed");
            assert_eq!(seqs(&store, 0, 10), vec![1, 2]);
            assert_eq!(
                fs::metadata(&path).unwrap().len(),
                whole,
                "cut on disk before anything is appended"
            );
            store.commit(events(3..=3)).await.unwrap();
        }
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 3);
        assert_eq!(seqs(&store, 0, 10), vec![1, 2, 3]);
        drop(store);
        assert!(fs::metadata(&path).unwrap().len() > whole);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            committed(&path),
            "closed at its length"
        );
    }

    /// While open, the current segment's space is reserved (and mapped) ahead of its
    /// content; what a reader sees is the committed content only, and a segment that
    /// rolls over or a store that closes is cut to its committed length.
    #[tokio::test]
    async fn segments_are_reserved_ahead_and_closed_at_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let store = LogStore::open(small.clone()).unwrap();
        store.commit(events(1..=1)).await.unwrap();
        let path = last_segment(dir.path());
        let mapped = lock(&store.shared.writer).map.is_some();
        assert_eq!(mapped, maps_here(dir.path()), "mapped where the file system allows it");
        if mapped {
            assert_eq!(
                fs::metadata(&path).unwrap().len(),
                segment_capacity(4096),
                "reserved ahead"
            );
        }
        let first = committed(&path);
        assert!(first > SEGMENT_HEADER as u64);
        let mut seq = 1;
        while numbered(&dir.path().join("log"), "seg").unwrap().len() < 3 {
            seq += 1;
            store.commit(events(seq..=seq)).await.unwrap();
        }
        assert_eq!(seqs(&store, 0, 1000), (1..=seq).collect::<Vec<_>>());
        let log = dir.path().join("log");
        let segments = numbered(&log, "seg").unwrap();
        for &n in &segments[..segments.len() - 1] {
            let closed = segment_path(&log, n);
            assert_eq!(
                fs::metadata(&closed).unwrap().len(),
                committed(&closed),
                "segment {n} cut"
            );
        }
        drop(store);
        let path = last_segment(dir.path());
        assert_eq!(fs::metadata(&path).unwrap().len(), committed(&path));
        reopened_with(small, seq);
    }

    /// A record larger than what is left of the map goes out with `pwrite` past it; a
    /// segment written past several reservation steps reads back whole.
    #[tokio::test]
    async fn records_past_the_map_and_past_several_steps_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            retention_count: 100_000,
            ..options(dir.path())
        };
        {
            let store = LogStore::open(small.clone()).unwrap();
            // About 150 KB: more than a 4 KiB segment's map (68 KiB).
            store.commit(events(1..=1000)).await.unwrap();
            store.commit(events(1001..=1001)).await.unwrap();
            assert_eq!(seqs(&store, 0, 2000), (1..=1001).collect::<Vec<_>>());
        }
        reopened_with(small, 1001);

        let dir = tempfile::tempdir().unwrap();
        let big = LogOptions {
            retention_count: 100_000,
            ..options(dir.path())
        };
        let mut head = 0;
        {
            let store = LogStore::open(big.clone()).unwrap();
            let path = last_segment(dir.path());
            while committed(&path) < MAP_STEP + MAP_STEP / 2 {
                store.commit(events(head + 1..=head + 1000)).await.unwrap();
                head += 1000;
            }
            if lock(&store.shared.writer).map.is_some() {
                assert_eq!(fs::metadata(&path).unwrap().len(), 2 * MAP_STEP, "reserved in steps");
                assert_eq!(lock(&store.shared.writer).trimmed, MAP_STEP, "the first step let go");
            }
            assert_eq!(seqs(&store, 0, 100_000).len() as u64, head);
        }
        reopened_with(big, head);
    }

    /// Where a segment is not mapped (another file system, another OS, a failed map), it
    /// is written with `pwrite`, committed length included, and reads back the same.
    #[tokio::test]
    async fn an_unmapped_segment_is_written_with_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 4096,
            ..options(dir.path())
        };
        let path = {
            let store = LogStore::open(small.clone()).unwrap();
            lock(&store.shared.writer).map = None;
            store.commit(events(1..=1)).await.unwrap();
            let path = last_segment(dir.path());
            assert_eq!(fs::metadata(&path).unwrap().len(), committed(&path), "nothing reserved");
            store.commit(events(2..=60)).await.unwrap();
            for seq in 61..=80 {
                store.commit(events(seq..=seq)).await.unwrap();
            }
            assert_eq!(seqs(&store, 0, 100), (1..=80).collect::<Vec<_>>());
            path
        };
        assert_eq!(fs::metadata(&path).unwrap().len(), committed(&path));
        reopened_with(small, 80);
    }

    /// After a power loss, a closed segment's committed length can be older than its last
    /// records while the next segment's pages made it: the events then jump. The log
    /// ends before the jump (nothing after it was acknowledged under `full`), as for a
    /// segment cut short; appends continue there.
    #[tokio::test]
    async fn a_stale_committed_length_before_later_segments_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        let path = log_ends_at_the_damaged_segment(dir.path(), |path, n| {
            let scanned = scan(path, SEGMENT_MAGIC, n).unwrap();
            last = (scanned.records.last().unwrap().start - RECORD_HEADER) as u64;
            set_committed(path, last);
        })
        .await;
        let n = segment_number(&path);
        let appended = scan(&path, SEGMENT_MAGIC, n).unwrap().records.last().unwrap().start - RECORD_HEADER;
        assert_eq!(appended as u64, last, "the append went right at the committed length");
    }

    /// Writes 40 events in small segments, keeps no snapshot (every segment is replayed),
    /// and applies `damage` to the last segment but one: the log then ends there (the
    /// later segments go, the events up to the damage are served, appends continue
    /// after them). That segment's path.
    async fn log_ends_at_the_damaged_segment(dir: &Path, damage: impl FnOnce(&Path, u64)) -> PathBuf {
        let (small, last) = forty_events_in_small_segments(dir).await;
        let log = dir.join("log");
        for n in numbered(&log, "snap").unwrap() {
            fs::remove_file(snapshot_path(&log, n)).unwrap();
        }
        let segments = numbered(&log, "seg").unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        let damaged = segments[segments.len() - 2];
        let path = segment_path(&log, damaged);
        damage(&path, damaged);
        let store = LogStore::open(small).unwrap();
        let head = store.recover().unwrap().head_seq;
        assert!(head > 1 && head < last, "{head}");
        assert_eq!(
            numbered(&log, "seg").unwrap().last(),
            Some(&damaged),
            "later segments removed"
        );
        assert_eq!(seqs(&store, 0, 100), (1..=head).collect::<Vec<_>>());
        store.commit(events(head + 1..=head + 1)).await.unwrap();
        assert_eq!(seqs(&store, head - 1, 10), vec![head, head + 1]);
        path
    }

    /// A last segment whose header is zeros (its size reached the disk, its first page did
    /// not) holds nothing: it starts again empty, and appends continue.
    #[tokio::test]
    async fn a_segment_with_a_zero_header_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (small, last) = forty_events_in_small_segments(dir.path()).await;
        let log = dir.path().join("log");
        let path = last_segment(dir.path());
        let mut data = fs::read(&path).unwrap();
        data[..SEGMENT_HEADER].fill(0);
        fs::write(&path, &data).unwrap();
        let store = LogStore::open(small).unwrap();
        let head = store.recover().unwrap().head_seq;
        assert!(head > 1 && head < last, "{head}");
        assert_eq!(segment_format(&path), Some(LOG_FORMAT), "its header written again");
        assert_eq!(numbered(&log, "seg").unwrap().last(), Some(&segment_number(&path)));
        store.commit(events(head + 1..=head + 1)).await.unwrap();
        assert_eq!(seqs(&store, head - 1, 10), vec![head, head + 1]);
    }

    /// Whether segments in `dir` are mapped (Linux, on ext4, XFS or tmpfs).
    fn maps_here(dir: &Path) -> bool {
        #[cfg(target_os = "linux")]
        return maps_safely(&File::open(dir).unwrap());
        #[cfg(not(target_os = "linux"))]
        return false;
    }

    fn segment_number(path: &Path) -> u64 {
        path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
    }

    /// A committed length that fails its checksum is damage: refused, naming the file.
    #[tokio::test]
    async fn a_damaged_committed_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=1]).await;
        assert_damage_refused(dir.path(), &path, COMMITTED_AT, 0x01, "committed length");
    }

    /// Flips the bits `mask` of byte `at` in segment `path`: the store in `dir` refuses to
    /// start, naming the file and `what` failed, and cuts nothing.
    fn assert_damage_refused(dir: &Path, path: &Path, at: usize, mask: u8, what: &str) {
        let data = flip(path, at, mask);
        let err = LogStore::open(options(dir)).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains(".seg"), "{err}");
        assert_eq!(fs::read(path).unwrap(), data, "nothing truncated");
    }

    /// A format-2 segment (no committed length: its content is the whole file) reads,
    /// with its torn tail; appends go to a new segment of this build's format.
    #[tokio::test]
    async fn a_format_2_segment_reads_and_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=1, 2..=2]).await;
        // The same records behind a format-2 header, and a tail of zeros.
        let data = fs::read(&path).unwrap();
        let mut old = file_header(SEGMENT_MAGIC, 1).to_vec();
        old[7] = 2;
        old.extend_from_slice(&data[SEGMENT_HEADER..]);
        old.extend_from_slice(&[0; 100]);
        fs::write(&path, &old).unwrap();
        {
            let store = LogStore::open(options(dir.path())).unwrap();
            assert_eq!(store.recover().unwrap().head_seq, 2);
            store.commit(events(3..=3)).await.unwrap();
            assert_eq!(seqs(&store, 0, 10), vec![1, 2, 3]);
        }
        let log = dir.path().join("log");
        assert_eq!(numbered(&log, "seg").unwrap(), vec![1, 2]);
        assert_eq!(segment_format(&path), Some(2));
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            old.len() as u64 - 100,
            "torn tail cut"
        );
        assert_eq!(segment_format(&segment_path(&log, 2)), Some(LOG_FORMAT));
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 3);
        assert_eq!(seqs(&store, 0, 10), vec![1, 2, 3]);
    }

    /// Damage to a record's length is refused, even where it would read as a write cut
    /// short (the length pointing past the end): the records after it were acknowledged.
    #[tokio::test]
    async fn a_damaged_length_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=1, 2..=2]).await;
        assert_damage_refused(dir.path(), &path, SEGMENT_HEADER + 2, 0x40, "fails its checksum");
    }

    /// Zeros after the last record inside the committed length (a file the machine
    /// extended but did not fill before losing power) are a torn tail, not damage.
    #[tokio::test]
    async fn a_zero_filled_tail_is_torn_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=2]).await;
        let whole = fs::metadata(&path).unwrap().len();
        append_committed(&path, &[0u8; 4096]);
        let store = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(store.recover().unwrap().head_seq, 2);
        assert_eq!(committed(&path), whole);
        drop(store);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    }

    /// A snapshot that knows of more than the log still holds (the segments with the
    /// events gone): the head continues from the snapshot, and replay says the events
    /// are gone rather than serving a hole.
    #[tokio::test]
    async fn a_snapshot_ahead_of_the_events_continues_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let (small, last) = forty_events_in_small_segments(dir.path()).await;
        let log = dir.path().join("log");
        let snapshots = numbered(&log, "snap").unwrap();
        let base = *snapshots.last().unwrap();
        for n in numbered(&log, "seg").unwrap() {
            fs::remove_file(segment_path(&log, n)).unwrap();
        }
        let store = LogStore::open(small).unwrap();
        let head = store.recover().unwrap().head_seq;
        assert!(head > 0 && head < last, "the snapshot's head: {head} (base {base})");
        assert_eq!(store.oldest_seq(), head + 1, "nothing retained");
        assert!(seqs(&store, 0, 10).is_empty());
        store.commit(events(head + 1..=head + 1)).await.unwrap();
        assert_eq!(seqs(&store, 0, 10), vec![head + 1]);
        assert_eq!(store.oldest_seq(), head + 1);
    }

    /// A segment cut short before later ones (a power loss whose writeback reached the
    /// later segment first) ends the log: the later segments go, appends continue.
    #[tokio::test]
    async fn a_segment_cut_short_before_later_ones_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        log_ends_at_the_damaged_segment(dir.path(), |path, _| {
            let len = fs::metadata(path).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(len - 3)
                .unwrap();
        })
        .await;
    }

    /// Damage before the end of the log refuses to start, naming the file: acknowledged
    /// changes after it must not be dropped silently.
    #[tokio::test]
    async fn damage_inside_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1..=1, 2..=2]).await;
        assert_damage_refused(
            dir.path(),
            &path,
            SEGMENT_HEADER + RECORD_HEADER + 2,
            0xff,
            "fails its checksum",
        );
    }

    /// A log written by a newer format, or a file that is not a log, is refused; a data
    /// dir holding the SQLite store is refused with the flag that opens it.
    #[tokio::test]
    async fn foreign_and_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(options(dir.path())).unwrap());
        let path = last_segment(dir.path());
        let mut data = fs::read(&path).unwrap();
        data[7] = LOG_FORMAT + 1;
        fs::write(&path, &data).unwrap();
        let err = LogStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("newer ITC") && err.contains("upgrade itc-server"), "{err}");
        data[..7].copy_from_slice(b"NOTITC!");
        fs::write(&path, &data).unwrap();
        let err = LogStore::open(options(dir.path())).unwrap_err().to_string();
        assert!(err.contains("not an ITC log file"), "{err}");

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("itc.sqlite3"), b"").unwrap();
        let err = LogStore::open(options(other.path())).unwrap_err().to_string();
        assert!(err.contains("SQLite store") && err.contains("--store sqlite"), "{err}");
    }

    /// A second store on the same data dir is refused while the first is open.
    #[test]
    fn one_server_per_data_dir() {
        assert_one_server_per_data_dir(|dir| LogStore::open(options(dir)));
    }

    /// `full`: a commit resolves only once a sync covers it, and batches queued together
    /// share syncs; `durable_seq` covers every resolved commit.
    #[tokio::test]
    async fn full_sync_resolves_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(LogOptions {
            sync: SyncLevel::Full,
            ..options(dir.path())
        })
        .unwrap();
        let commits: Vec<Commit> = (1..=200).map(|seq| store.commit(events(seq..=seq))).collect();
        for (seq, commit) in (1..).zip(commits) {
            commit.await.unwrap();
            assert!(store.durable_seq() >= seq);
            assert!(matches!(&*store.shared.synced.borrow(), Synced::Upto(_)));
        }
        assert_eq!(store.durable_seq(), 200);
    }

    /// A compaction that fails (here: its temporary snapshot cannot be created) is
    /// counted in the metrics, and the log is left whole.
    #[tokio::test]
    async fn a_failed_compaction_is_counted() {
        let metrics = crate::metrics::Metrics::prometheus().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let small = LogOptions {
            segment_bytes: 1024,
            ..options(dir.path())
        };
        let store = LogStore::open_with_metrics(small.clone(), metrics.store()).unwrap();
        // The first roll closes segment 1; its snapshot (2) cannot be created.
        let blocker = dir.path().join("log").join("00000000000000000002.snap.tmp");
        fs::create_dir(&blocker).unwrap();
        for seq in 1..=20 {
            store.commit(events(seq..=seq)).await.unwrap();
        }
        store.flush();
        let text = metrics.render().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("itc_store_compaction_failures_total"))
            .unwrap_or_else(|| panic!("{text}"));
        let failures: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(failures >= 1.0, "{line}");
        drop(store);
        fs::remove_dir(&blocker).unwrap();
        let store = LogStore::open(small).unwrap();
        assert_eq!(seqs(&store, 0, 100), (1..=20).collect::<Vec<_>>(), "the log is whole");
    }

    /// After `flush`, nothing more is accepted and the data dir is free.
    #[tokio::test]
    async fn flush_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(options(dir.path())).unwrap();
        store.commit(events(1..=1)).await.unwrap();
        store.flush();
        assert!(matches!(store.commit(events(2..=2)).await, Err(StoreError::Closed)));
        let again = LogStore::open(options(dir.path())).unwrap();
        assert_eq!(again.recover().unwrap().head_seq, 1);
    }
}
