//! The domain core: tasks, the event log and the statistics. No gRPC here: the adapters in
//! `grpc/` convert requests into the calls below and map [`CoreError`] to statuses.
//!
//! One [`Core`] is a cheap, cloneable handle. Every change happens under one short-lived
//! lock (never held across an `.await`): validate, mutate, append events with the next
//! seqs, hand the batch to the store; then, with the lock released, wait for the store to
//! make the batch durable before acknowledging.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::error::CoreError;
use crate::metrics::Metrics;
use crate::store::{Batch, Commit, MemoryStore, Recovered, Store, StoreError};

mod commands;
mod control;
mod hub;
mod inputs;
mod locks;
mod model;
mod sessions;
mod status;
mod subscription;
mod tasks;
mod timers;
pub(crate) mod validate;

pub use commands::{CommandWait, CoordinateRequest};
pub use control::Interaction;
pub use hub::Filter;
pub use inputs::NewInput;
pub(crate) use model::nanos;
pub use model::{
    Capabilities, Command, CommandAction, CommandState, Event, EventDetail, EventType, InputRequest, InputState,
    InputTimeoutAction, JsonMap, LockCause, Plan, SessionEnd, SessionInfo, SessionKind, Task, TaskError, TaskLock,
    TaskStatus, WireCache,
};
pub use sessions::{ConnectRequest, Heartbeat, Notice, Push, SessionView};
pub use status::{ServiceState, StatusPage, StatusQuery};
pub use subscription::{EndReason, StreamItem, SubscribeRequest, Subscription};
pub use tasks::{Ack, NewTask, Outcome};
pub(crate) use validate::id as validate_id;

/// Limits and defaults the core applies to requests.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Largest structured payload, in JSON bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting of a structured payload.
    pub max_payload_depth: usize,
    /// Longest filter list.
    pub max_filter_entries: usize,
    /// Subscribe streams under one session.
    pub max_subscriptions_per_session: usize,
    /// Open input requests on one task.
    pub max_open_inputs_per_task: usize,
    /// Stall timeout of tasks that do not set one.
    pub default_stall_timeout: Duration,
    /// Finished tasks kept queryable.
    pub max_finished_tasks: usize,
    /// false: subscriptions are refused.
    pub enable_streaming: bool,
    /// An idle stream gets a heartbeat after this long.
    pub stream_interval: Duration,
    /// A stream ends after this long.
    pub max_stream_duration: Duration,
    /// Recent events kept in memory for subscribers (older ones are read from the store).
    pub event_buffer: usize,
    /// Matching events queued per subscriber before it falls back to reading the log.
    pub subscriber_buffer: usize,
    /// false: Coordinate is refused.
    pub enable_agent_coordination: bool,
    /// Lock lease, and the time an agent has to answer a command.
    pub coordination_timeout: Duration,
    /// Coordinator sessions at once.
    pub max_concurrent_coordinators: u32,
    /// Agent sessions at once.
    pub max_concurrent_agents: u32,
    /// Default session lease.
    pub session_ttl: Duration,
    /// After a restart, how long agents have to reconnect before their live tasks are
    /// flagged ORPHANED.
    pub orphan_grace: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self::from_settings(&crate::config::Settings::default())
    }
}

impl CoreConfig {
    /// The limits a structured payload must keep.
    pub(crate) fn payloads(&self) -> validate::PayloadLimits {
        validate::PayloadLimits {
            bytes: self.max_payload_bytes,
            depth: self.max_payload_depth,
        }
    }

    /// The core's part of the server settings.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            max_payload_bytes: s.max_payload_bytes,
            max_payload_depth: s.max_payload_depth,
            max_filter_entries: s.max_filter_entries,
            max_subscriptions_per_session: s.max_subscriptions_per_session,
            max_open_inputs_per_task: s.max_open_inputs_per_task,
            default_stall_timeout: s.stall_timeout,
            max_finished_tasks: s.max_finished_tasks,
            enable_streaming: s.enable_streaming,
            stream_interval: s.stream_interval,
            max_stream_duration: s.max_stream_duration,
            event_buffer: s.event_buffer,
            subscriber_buffer: s.subscriber_buffer,
            enable_agent_coordination: s.enable_agent_coordination,
            coordination_timeout: s.coordination_timeout,
            max_concurrent_coordinators: s.max_concurrent_coordinators,
            max_concurrent_agents: s.max_concurrent_agents,
            session_ttl: s.session_ttl,
            orphan_grace: s.orphan_grace,
        }
    }
}

/// The most tasks one status page may hold.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Longest description, status message or reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest stall timeout a task may ask for.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tasks that started running.
    pub tasks_started: u64,
    /// Tasks completed.
    pub tasks_completed: u64,
    /// Interrupts applied.
    pub tasks_interrupted: u64,
    /// Interactions and coordination commands.
    pub coordinator_interactions: u64,
    /// Queries by agents and coordinators.
    pub agent_queries: u64,
    /// Queries by humans.
    pub human_queries: u64,
    /// Tasks failed.
    pub tasks_failed: u64,
    /// Tasks cancelled.
    pub tasks_cancelled: u64,
    /// Events appended to the log.
    pub events_published: u64,
    /// Coordination commands admitted.
    pub commands_admitted: u64,
}

/// Subscribe stream counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams open now.
    pub active: u64,
    /// Log events delivered to subscribers.
    pub delivered: u64,
    /// Subscribers reading the log because they fell behind.
    pub lagging: u64,
    /// Subscribers that fell past retention.
    pub dropped: u64,
}

/// The domain core. Cheap to clone: all clones share one state.
#[derive(Debug, Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CoreConfig,
    /// Where changes persist; called under `state`'s lock so batches keep seq order.
    store: Arc<dyn Store>,
    /// All mutable state, behind one lock held only for in-memory work.
    state: Mutex<State>,
    /// Fan-out to subscribers: the recent log and the subscription index.
    hub: hub::Hub,
    started_at: SystemTime,
    /// Set by [`Core::close`]: writes are refused from then on.
    closed: AtomicBool,
    /// Turns true when a commit failed: the store can no longer promise durability.
    failed: tokio::sync::watch::Sender<bool>,
    /// Woken whenever a command changes state (Coordinate may wait for one).
    commands_changed: tokio::sync::Notify,
    /// Prometheus handles (no-ops unless metrics are on).
    metrics: Metrics,
}

impl State {
    /// Keeps `by_status` in step with a write: every task a write changes is in its
    /// batch's upserts (as it is after the change), every task it forgets in removals.
    fn recount(&mut self, batch: &Batch) {
        for task in &batch.upserts {
            match self.counted.get_mut(task.id.as_str()) {
                Some(old) if *old == task.status => {}
                Some(old) => {
                    self.by_status[old.index()] -= 1;
                    self.by_status[task.status.index()] += 1;
                    *old = task.status;
                }
                None => {
                    self.by_status[task.status.index()] += 1;
                    self.counted.insert(task.id.clone(), task.status);
                }
            }
        }
        for id in &batch.removals {
            if let Some(old) = self.counted.remove(id) {
                self.by_status[old.index()] -= 1;
            }
        }
    }
}

/// The core's maps: keyed by ids, hashed with foldhash (randomly seeded per map), which
/// costs a fraction of std's SipHash on every lookup and rehash.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct State {
    /// Tasks by `create_seq`: listing order, and stable page boundaries.
    tasks: BTreeMap<u64, Arc<Task>>,
    /// Task id → `create_seq`.
    ids: Map<String, u64>,
    /// Tasks by status (indexed as [`TaskStatus::ALL`]), kept by every write, so that
    /// GetStatus reads the counts instead of walking every task.
    by_status: [u64; 7],
    /// The status each task is counted under in `by_status`.
    counted: Map<String, TaskStatus>,
    /// `create_seq` of finished tasks, oldest finish first (retention).
    finished: VecDeque<u64>,
    /// The newest seq appended.
    head_seq: u64,
    counters: Counters,
    global_interrupt: bool,
    /// Connected sessions by id.
    sessions: Map<String, sessions::SessionEntry>,
    /// Pending deadlines, earliest first.
    timers: std::collections::BTreeSet<(tokio::time::Instant, timers::Timer)>,
    /// Wakes the timer task when an earlier deadline is armed.
    timer_signal: Arc<tokio::sync::Notify>,
    /// Live tasks' last progress or vouching heartbeat (for STALLED).
    activity: Map<String, tokio::time::Instant>,
    /// When each held lock's lease runs out.
    lock_deadlines: Map<String, tokio::time::Instant>,
    /// Open command id → task id (open commands live in their task).
    command_index: Map<String, String>,
    /// Finished commands, kept for GetCommand and idempotent retries (bounded).
    closed_commands: Map<String, Command>,
    closed_command_order: VecDeque<String>,
    /// (coordinator, idempotency key) → command id.
    idempotency: Map<(String, String), String>,
    /// Open input request id → task id (open requests live in their task).
    input_index: Map<String, String>,
    /// Answered, expired or cancelled input requests (bounded).
    closed_inputs: Map<String, InputRequest>,
    closed_input_order: VecDeque<String>,
    /// Interact calls so far (the conversation's turn number).
    interactions: u64,
    /// Finished tasks kept queryable (`max_finished_tasks`).
    max_finished: usize,
    /// When this process recovered the store's tasks.
    recovered_at: Option<tokio::time::Instant>,
    /// Prometheus handles (the sessions gauge is kept where sessions come and go).
    metrics: Metrics,
}

/// The changes of one operation, gathered before they are applied to the store.
struct Tx {
    next_seq: u64,
    time: SystemTime,
    batch: Batch,
    /// Tasks this operation changed, by `create_seq`. When it ends, their upserts are
    /// the state's own `Arc`s, shared with the store rather than copied: a task is copied
    /// only if it changes again while the store still holds it (`for_change`).
    changed: Vec<u64>,
}

impl Tx {
    /// Records that `task` changed: the batch will write it as the operation leaves it.
    fn changed(&mut self, task: &Task) {
        self.changed.push(task.create_seq);
    }

    /// Adds the changed tasks to the batch as `state` holds them now, each once. A task
    /// forgotten within the same operation is not written (its removal is in the batch).
    fn take_changed(&mut self, state: &State) {
        let mut changed = std::mem::take(&mut self.changed);
        // Operations such as interrupt-all change thousands of tasks: no per-call scan.
        changed.sort_unstable();
        changed.dedup();
        for seq in changed {
            if let Some(task) = state.tasks.get(&seq) {
                self.batch.upserts.push(task.clone());
            }
        }
    }

    fn event(&mut self, kind: EventType, task: &Task, detail: EventDetail, data: Option<JsonMap>) -> u64 {
        self.event_by(kind, task, detail, data, None, None)
    }

    /// A task event caused by a coordinator (and a command).
    fn event_by(
        &mut self,
        kind: EventType,
        task: &Task,
        detail: EventDetail,
        data: Option<JsonMap>,
        coordinator_id: Option<&str>,
        caused_by: Option<&str>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch.events.push(Arc::new(Event {
            seq,
            kind,
            time: self.time,
            task_id: Some(task.id.clone()),
            agent_id: Some(task.agent_id.clone()),
            coordinator_id: coordinator_id.map(str::to_owned),
            caused_by: caused_by.map(str::to_owned),
            data,
            task_version: task.version,
            task_status: Some(task.status),
            detail,
            wire: WireCache::default(),
        }));
        seq
    }
}

impl Core {
    /// A core over `store`, recovering what the store holds.
    pub fn open(config: CoreConfig, store: Arc<dyn Store>) -> Result<Self, CoreError> {
        Self::open_with_metrics(config, store, Metrics::disabled())
    }

    /// As [`Core::open`], recording into `metrics`.
    pub fn open_with_metrics(config: CoreConfig, store: Arc<dyn Store>, metrics: Metrics) -> Result<Self, CoreError> {
        let recovered = store.recover()?;
        Ok(Self::from_recovered(config, store, recovered, metrics))
    }

    /// A core over a fresh in-memory store with default retention (tests, embedding).
    pub fn in_memory(config: CoreConfig) -> Self {
        let store = Arc::new(MemoryStore::new(1_000_000, Duration::from_secs(24 * 3600)));
        Self::from_recovered(config, store, Recovered::default(), Metrics::disabled())
    }

    fn from_recovered(config: CoreConfig, store: Arc<dyn Store>, recovered: Recovered, metrics: Metrics) -> Self {
        let mut state = State {
            head_seq: recovered.head_seq,
            max_finished: config.max_finished_tasks,
            metrics: metrics.clone(),
            ..State::default()
        };
        let mut finished: Vec<(SystemTime, u64)> = Vec::new();
        let now = tokio::time::Instant::now();
        let wall = SystemTime::now();
        state.recovered_at = Some(now);
        // A deadline kept as wall-clock time, as an instant of this process.
        let at = |deadline: SystemTime| now + deadline.duration_since(wall).unwrap_or(Duration::ZERO);
        for mut task in recovered.tasks {
            if let Some(done) = task.finish_time {
                finished.push((done, task.create_seq));
            }
            // Locks are not durable by design: their holders reconnect and acquire again.
            task.lock = None;
            for command in &task.open_commands {
                state.command_index.insert(command.id.clone(), task.id.clone());
                state
                    .timers
                    .insert((at(command.deadline), timers::Timer::Command(command.id.clone())));
                if let Some(key) = &command.idempotency_key {
                    state
                        .idempotency
                        .insert((command.coordinator_id.clone(), key.clone()), command.id.clone());
                }
            }
            for input in &task.open_inputs {
                state.input_index.insert(input.id.clone(), task.id.clone());
                if let Some(deadline) = input.deadline {
                    state
                        .timers
                        .insert((at(deadline), timers::Timer::Input(input.id.clone())));
                }
            }
            if task.is_live() {
                // Agents get `orphan_grace` to come back before their tasks are flagged.
                state.activity.insert(task.id.clone(), now);
                state
                    .timers
                    .insert((now + task.stall_timeout, timers::Timer::Stall(task.id.clone())));
                state
                    .timers
                    .insert((now + config.orphan_grace, timers::Timer::Orphan(task.id.clone())));
            }
            state.ids.insert(task.id.clone(), task.create_seq);
            state.by_status[task.status.index()] += 1;
            state.counted.insert(task.id.clone(), task.status);
            state.tasks.insert(task.create_seq, Arc::new(task));
        }
        finished.sort();
        state.finished = finished.into_iter().map(|(_, seq)| seq).collect();
        for command in recovered.closed_commands {
            if let Some(key) = &command.idempotency_key {
                state
                    .idempotency
                    .insert((command.coordinator_id.clone(), key.clone()), command.id.clone());
            }
            state.closed_command_order.push_back(command.id.clone());
            state.closed_commands.insert(command.id.clone(), command);
        }
        for input in recovered.closed_inputs {
            state.closed_input_order.push_back(input.id.clone());
            state.closed_inputs.insert(input.id.clone(), input);
        }
        state.global_interrupt = recovered.meta.get("global_interrupt").is_some_and(|v| *v != 0);
        state.interactions = recovered
            .meta
            .get("interactions")
            .and_then(|v| u64::try_from(*v).ok())
            .unwrap_or(0);
        let hub = hub::Hub::new(
            state.head_seq,
            config.event_buffer,
            config.subscriber_buffer,
            metrics.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                hub,
                state: Mutex::new(state),
                started_at: SystemTime::now(),
                closed: AtomicBool::new(false),
                failed: tokio::sync::watch::Sender::new(false),
                commands_changed: tokio::sync::Notify::new(),
                metrics,
            }),
        }
    }

    /// The limits and defaults it applies.
    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    /// The store the core writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The metrics the core records into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Refuses writes from now on and ends every stream with STREAM_END (shutdown).
    /// Reads keep working.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.hub.drain();
        self.drain_sessions();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Operations validate before they mutate, so a panic inside one (a bug) cannot
        // leave a half-applied change behind: keep serving rather than poison every call.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` under the state lock; on success appends its events, submits its batch
    /// to the store, and waits (lock released) until the batch is durable. `op` must
    /// validate before it mutates: an error leaves the state untouched.
    async fn write<T>(&self, op: impl FnOnce(&mut State, &mut Tx) -> Result<T, CoreError>) -> Result<T, CoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(CoreError::ShuttingDown);
        }
        let (value, commit, last_seq, wake, commands_changed): (T, Commit, u64, _, bool) = {
            let mut state = self.state();
            let mut tx = Tx {
                next_seq: state.head_seq + 1,
                time: SystemTime::now(),
                batch: Batch::default(),
                changed: Vec::new(),
            };
            let value = op(&mut state, &mut tx)?;
            tx.take_changed(&state);
            state.recount(&tx.batch);
            let published = tx.next_seq - 1 - state.head_seq;
            state.counters.events_published += published;
            self.inner.metrics.events_published().increment(published);
            state.head_seq = tx.next_seq - 1;
            let wake = self.inner.hub.append(&tx.batch.events);
            let commands_changed = tx.batch.events.iter().any(|e| {
                matches!(
                    e.kind,
                    EventType::AgentCoordination
                        | EventType::CoordinationDelivered
                        | EventType::CoordinationApplied
                        | EventType::CoordinationRejected
                        | EventType::CoordinationTimedOut
                )
            });
            (
                value,
                self.inner.store.commit(tx.batch),
                state.head_seq,
                wake,
                commands_changed,
            )
        };
        Publication {
            core: self.clone(),
            commit: Some(commit),
            last_seq,
            wake,
            commands_changed,
        }
        .finish()
        .await?;
        Ok(value)
    }

    /// A batch reached its end in the store: durable, subscribers may read it; failed,
    /// the server can no longer promise durability and refuses further writes.
    fn committed(
        &self,
        last_seq: u64,
        wake: Vec<Arc<hub::SubShared>>,
        commands_changed: bool,
        result: &Result<(), StoreError>,
    ) {
        match result {
            // After a failure nothing more is published: a later batch must not make the
            // lost one's events visible.
            Ok(()) if !*self.inner.failed.borrow() => {
                // Publish as far as is durable: the batches committed in the same group
                // become visible together, and subscribers wake once for them all.
                let durable = self.inner.store.durable_seq().max(last_seq);
                self.inner.hub.publish(durable, wake);
                if commands_changed {
                    self.inner.commands_changed.notify_waiters();
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, last_seq, "store commit failed; refusing further writes");
                self.inner.closed.store(true, Ordering::SeqCst);
                self.inner.failed.send_replace(true);
            }
        }
    }

    /// Returns `value` (read from the state just before) once everything the state held
    /// then is durable: a read never shows a change that a crash could still take back
    /// (which would let the same seq or version mean two things). Costs at most one
    /// group commit.
    pub async fn durable<T>(&self, value: T) -> Result<T, CoreError> {
        let head = self.head_seq();
        let mut visible = self.inner.hub.visible_signal();
        tokio::select! {
            reached = visible.wait_for(|v| *v >= head) => reached.map(|_| ()).map_err(|_| CoreError::ShuttingDown)?,
            () = self.failure() => return Err(CoreError::ShuttingDown),
        }
        Ok(value)
    }

    /// Resolves if a commit fails: the server should stop (and recover on restart).
    pub async fn failure(&self) {
        let mut failed = self.inner.failed.subscribe();
        let _ = failed.wait_for(|f| *f).await;
    }

    /// Whether a commit failed.
    pub fn has_failed(&self) -> bool {
        *self.inner.failed.borrow()
    }

    /// The newest seq in the log.
    pub fn head_seq(&self) -> u64 {
        self.state().head_seq
    }

    /// Subscribe stream counters.
    pub fn stream_stats(&self) -> StreamStats {
        let c = &self.inner.hub.counters;
        StreamStats {
            active: c.active(),
            delivered: c.delivered(),
            lagging: c.lagging(),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A batch on its way to the store. Its events become visible once the store has made
/// them durable, even if the caller that wrote them goes away meanwhile (a client that
/// cancels its call drops the handler's future): then a task finishes the job.
struct Publication {
    core: Core,
    commit: Option<Commit>,
    last_seq: u64,
    wake: Vec<Arc<hub::SubShared>>,
    commands_changed: bool,
}

impl Publication {
    async fn finish(mut self) -> Result<(), StoreError> {
        // Awaited in place: if this future is dropped meanwhile, `Drop` still holds the
        // commit and finishes it.
        let Some(commit) = self.commit.as_mut() else {
            return Ok(());
        };
        let result = commit.await;
        self.commit = None;
        let wake = std::mem::take(&mut self.wake);
        self.core.committed(self.last_seq, wake, self.commands_changed, &result);
        result
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        let Some(commit) = self.commit.take() else {
            return;
        };
        let core = self.core.clone();
        let (last_seq, wake, changed) = (self.last_seq, std::mem::take(&mut self.wake), self.commands_changed);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let result = commit.await;
                    core.committed(last_seq, wake, changed, &result);
                });
            }
            Err(_) => tracing::error!(last_seq, "a commit was abandoned outside a runtime"),
        }
    }
}

#[cfg(test)]
mod tests;
