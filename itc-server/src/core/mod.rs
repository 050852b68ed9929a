//! The domain core: tasks, the event log and the statistics. No gRPC here: the adapters in
//! `grpc/` convert requests into the calls below and map [`CoreError`] to statuses.
//!
//! One [`Core`] is a cheap, cloneable handle. Every change happens under one short-lived
//! lock (never held across an `.await`): validate, mutate, append events with the next
//! seqs, hand the batch to the store; then, with the lock released, wait for the store to
//! make the batch durable before acknowledging.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::error::CoreError;
use crate::store::{Batch, Commit, MemoryStore, Recovered, Store, StoreError};

mod hub;
mod model;
mod subscription;
mod validate;

pub use hub::Filter;
pub use model::{Event, EventDetail, EventType, JsonMap, Plan, Task, TaskError, TaskStatus};
pub use subscription::{EndReason, StreamItem, SubscribeRequest, Subscription};
pub(crate) use validate::id as validate_id;

/// Limits and defaults the core applies to requests.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Largest structured payload, in JSON bytes.
    pub max_payload_bytes: usize,
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
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self::from_settings(&crate::config::Settings::default())
    }
}

impl CoreConfig {
    /// The core's part of the server settings.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            max_payload_bytes: s.max_payload_bytes,
            default_stall_timeout: s.stall_timeout,
            max_finished_tasks: s.max_finished_tasks,
            enable_streaming: s.enable_streaming,
            stream_interval: s.stream_interval,
            max_stream_duration: s.max_stream_duration,
            event_buffer: s.event_buffer,
            subscriber_buffer: s.subscriber_buffer,
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

/// A task to start.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// The id to use; `None`: a UUID is assigned.
    pub task_id: Option<String>,
    /// The agent that runs it.
    pub agent_id: String,
    /// What it does.
    pub description: String,
    /// Metadata.
    pub metadata: Option<JsonMap>,
    /// Priority.
    pub priority: i32,
    /// Initial plan.
    pub plan: Option<JsonMap>,
    /// Stall timeout; `None`: the server default.
    pub stall_timeout: Option<Duration>,
    /// Create it PENDING rather than RUNNING.
    pub pending: bool,
}

/// How a task finishes.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// COMPLETED with an optional result.
    Completed(Option<serde_json::Value>),
    /// FAILED with an error.
    Failed(TaskError),
    /// CANCELLED with an optional reason.
    Cancelled(Option<String>),
}

/// What an agent learns back from a progress report or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The task's version after the change.
    pub version: u64,
    /// The seq of the event written.
    pub seq: u64,
    /// The task's status (INTERRUPTED: stop at this checkpoint).
    pub status: TaskStatus,
}

/// A status query: filters and a page.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// Only these states; empty: all.
    pub statuses: Vec<TaskStatus>,
    /// Only these agents; empty: all.
    pub agent_ids: Vec<String>,
    /// Page size; 0: [`DEFAULT_PAGE_SIZE`].
    pub page_size: usize,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// The service-level state (the seed's `ITCStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// No live task.
    Idle,
    /// At least one live task.
    Running,
    /// A global interrupt is in force.
    Interrupted,
}

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

/// A page of a status query, with everything GetStatus reports.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// Service-level state.
    pub state: ServiceState,
    /// Matching tasks of this page, oldest first.
    pub tasks: Vec<Arc<Task>>,
    /// Token of the next page, if there is one.
    pub next_page_token: Option<String>,
    /// Matching tasks on all pages.
    pub total_size: u64,
    /// Live tasks, whatever the filters.
    pub active_tasks: u64,
    /// Whether a global interrupt is in force.
    pub global_interrupt: bool,
    /// Known tasks by status, in [`TaskStatus::ALL`] order.
    pub tasks_by_status: [u64; 7],
    /// Counters.
    pub counters: Counters,
    /// When the service started.
    pub started_at: SystemTime,
    /// The newest seq.
    pub head_seq: u64,
    /// The oldest retained seq.
    pub oldest_retained_seq: u64,
    /// Stream counters.
    pub streams: StreamStats,
    /// When this page was taken.
    pub time: SystemTime,
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
}

#[derive(Debug, Default)]
struct State {
    /// Tasks by `create_seq`: listing order, and stable page boundaries.
    tasks: BTreeMap<u64, Arc<Task>>,
    /// Task id → `create_seq`.
    ids: HashMap<String, u64>,
    /// `create_seq` of finished tasks, oldest finish first (retention).
    finished: VecDeque<u64>,
    /// The newest seq appended.
    head_seq: u64,
    counters: Counters,
    global_interrupt: bool,
}

/// The changes of one operation, gathered before they are applied to the store.
struct Tx {
    next_seq: u64,
    time: SystemTime,
    batch: Batch,
}

impl Tx {
    fn event(&mut self, kind: EventType, task: &Task, detail: EventDetail, data: Option<JsonMap>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch.events.push(Arc::new(Event {
            seq,
            kind,
            time: self.time,
            task_id: Some(task.id.clone()),
            agent_id: Some(task.agent_id.clone()),
            coordinator_id: None,
            caused_by: None,
            data,
            task_version: task.version,
            task_status: Some(task.status),
            detail,
        }));
        seq
    }
}

impl Core {
    /// A core over `store`, recovering what the store holds.
    pub fn open(config: CoreConfig, store: Arc<dyn Store>) -> Result<Self, CoreError> {
        let recovered = store.recover()?;
        Ok(Self::from_recovered(config, store, recovered))
    }

    /// A core over a fresh in-memory store with default retention (tests, embedding).
    pub fn in_memory(config: CoreConfig) -> Self {
        let store = Arc::new(MemoryStore::new(1_000_000, Duration::from_secs(24 * 3600)));
        Self::from_recovered(config, store, Recovered::default())
    }

    fn from_recovered(config: CoreConfig, store: Arc<dyn Store>, recovered: Recovered) -> Self {
        let mut state = State {
            head_seq: recovered.head_seq,
            ..State::default()
        };
        let mut finished: Vec<(SystemTime, u64)> = Vec::new();
        for task in recovered.tasks {
            if let Some(done) = task.finish_time {
                finished.push((done, task.create_seq));
            }
            state.ids.insert(task.id.clone(), task.create_seq);
            state.tasks.insert(task.create_seq, Arc::new(task));
        }
        finished.sort();
        state.finished = finished.into_iter().map(|(_, seq)| seq).collect();
        let hub = hub::Hub::new(state.head_seq, config.event_buffer, config.subscriber_buffer);
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                hub,
                state: Mutex::new(state),
                started_at: SystemTime::now(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The store the core writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Refuses writes from now on and ends every stream with STREAM_END (shutdown).
    /// Reads keep working.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.hub.drain();
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
        let (value, commit, last_seq, wake): (T, Commit, u64, _) = {
            let mut state = self.state();
            let mut tx = Tx {
                next_seq: state.head_seq + 1,
                time: SystemTime::now(),
                batch: Batch::default(),
            };
            let value = op(&mut state, &mut tx)?;
            state.counters.events_published += tx.next_seq - 1 - state.head_seq;
            state.head_seq = tx.next_seq - 1;
            let wake = self.inner.hub.append(&tx.batch.events);
            (value, self.inner.store.commit(tx.batch), state.head_seq, wake)
        };
        Publication {
            core: self.clone(),
            commit: Some(commit),
            last_seq,
            wake,
        }
        .finish()
        .await?;
        Ok(value)
    }

    /// A batch reached its end in the store: durable, subscribers may read it; failed,
    /// the server can no longer promise durability and refuses further writes.
    fn committed(&self, last_seq: u64, wake: Vec<Arc<hub::SubShared>>, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.inner.hub.publish(last_seq, wake),
            Err(e) => {
                tracing::error!(error = %e, last_seq, "store commit failed; refusing further writes");
                self.inner.closed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Starts (or creates PENDING) a task. A duplicate id: [`CoreError::TaskExists`].
    #[tracing::instrument(level = "debug", skip_all, fields(task_id = new.task_id.as_deref(), agent_id = %new.agent_id))]
    pub async fn start_task(&self, new: NewTask) -> Result<Arc<Task>, CoreError> {
        let limits = &self.inner.config;
        let task_id = match new.task_id {
            Some(id) => validate::id("task_id", &id).map(|()| id)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        validate::id("agent_id", &new.agent_id)?;
        validate::required_text("description", &new.description)?;
        validate::payload("metadata", new.metadata.as_ref(), limits.max_payload_bytes)?;
        validate::payload("plan", new.plan.as_ref(), limits.max_payload_bytes)?;
        let stall_timeout = match new.stall_timeout {
            None => limits.default_stall_timeout,
            Some(t) if t.is_zero() => limits.default_stall_timeout,
            Some(t) if t > MAX_STALL_TIMEOUT => {
                return Err(CoreError::invalid("stall_timeout", "must be at most 7 days"));
            }
            Some(t) => t,
        };
        self.write(move |state, tx| {
            if state.ids.contains_key(&task_id) {
                return Err(CoreError::TaskExists { task_id });
            }
            let now = tx.time;
            let create_seq = tx.next_seq;
            let status = if new.pending {
                TaskStatus::Pending
            } else {
                TaskStatus::Running
            };
            let plan = match new.plan {
                Some(content) => Plan {
                    version: 1,
                    content: Some(content),
                    updated_by: Some(new.agent_id.clone()),
                    update_time: Some(now),
                },
                None => Plan::default(),
            };
            let task = Arc::new(Task {
                id: task_id.clone(),
                agent_id: new.agent_id,
                description: new.description,
                status,
                progress: 0.0,
                status_message: String::new(),
                metadata: new.metadata,
                priority: new.priority,
                plan,
                version: 1,
                create_time: now,
                start_time: (!new.pending).then_some(now),
                update_time: now,
                finish_time: None,
                controlling_coordinator: None,
                result: None,
                error: None,
                reason: None,
                stalled: false,
                orphaned: false,
                stall_timeout,
                create_seq,
            });
            let kind = if new.pending {
                EventType::TaskCreated
            } else {
                state.counters.tasks_started += 1;
                EventType::TaskStarted
            };
            tx.event(kind, &task, EventDetail::Task(Box::new((*task).clone())), None);
            state.ids.insert(task_id, create_seq);
            state.tasks.insert(create_seq, task.clone());
            tx.batch.upserts.push(task.clone());
            Ok(task)
        })
        .await
    }

    /// Records progress in [0, 1] with a status line; starts a PENDING task.
    #[tracing::instrument(level = "debug", skip(self, message))]
    pub async fn report_progress(&self, task_id: &str, progress: f64, message: String) -> Result<Ack, CoreError> {
        validate::id("task_id", task_id)?;
        validate::progress(progress)?;
        validate::text("message", &message)?;
        self.write(|state, tx| {
            let task = state.live_task(task_id, "report progress")?;
            let now = tx.time;
            let mut started = false;
            if task.status == TaskStatus::Pending {
                task.status = TaskStatus::Running;
                task.start_time = Some(now);
                task.version += 1;
                task.update_time = now;
                let snapshot = Box::new(task.clone());
                tx.event(EventType::TaskStarted, task, EventDetail::Task(snapshot), None);
                started = true;
            }
            task.progress = progress;
            task.status_message.clone_from(&message);
            task.stalled = false;
            task.version += 1;
            task.update_time = now;
            let seq = tx.event(
                EventType::TaskProgress,
                task,
                EventDetail::Progress { progress, message },
                None,
            );
            let ack = Ack {
                version: task.version,
                seq,
                status: task.status,
            };
            let task = Arc::new(task.clone());
            if started {
                state.counters.tasks_started += 1;
            }
            tx.batch.upserts.push(task);
            Ok(ack)
        })
        .await
    }

    /// Publishes structured real-time data about a live task (REAL_TIME_UPDATE).
    #[tracing::instrument(level = "debug", skip(self, data))]
    pub async fn publish_update(&self, task_id: &str, data: JsonMap) -> Result<Ack, CoreError> {
        validate::id("task_id", task_id)?;
        validate::payload("data", Some(&data), self.inner.config.max_payload_bytes)?;
        self.write(|state, tx| {
            let task = state.live_task(task_id, "publish an update")?;
            task.version += 1;
            task.update_time = tx.time;
            task.stalled = false;
            let seq = tx.event(EventType::RealTimeUpdate, task, EventDetail::None, Some(data));
            let ack = Ack {
                version: task.version,
                seq,
                status: task.status,
            };
            let task = Arc::new(task.clone());
            tx.batch.upserts.push(task);
            Ok(ack)
        })
        .await
    }

    /// Finishes a live task as COMPLETED, FAILED or CANCELLED.
    #[tracing::instrument(level = "debug", skip(self, outcome))]
    pub async fn finish_task(&self, task_id: &str, outcome: Outcome) -> Result<Arc<Task>, CoreError> {
        validate::id("task_id", task_id)?;
        let max_payload = self.inner.config.max_payload_bytes;
        match &outcome {
            Outcome::Completed(result) => validate::value("result", result.as_ref(), max_payload)?,
            Outcome::Failed(error) => {
                validate::required_text("error.message", &error.message)?;
                validate::payload("error.details", error.details.as_ref(), max_payload)?;
            }
            Outcome::Cancelled(reason) => validate::text("reason", reason.as_deref().unwrap_or(""))?,
        }
        let max_finished = self.inner.config.max_finished_tasks;
        self.write(move |state, tx| {
            let to = match &outcome {
                Outcome::Completed(_) => TaskStatus::Completed,
                Outcome::Failed(_) => TaskStatus::Failed,
                Outcome::Cancelled(_) => TaskStatus::Cancelled,
            };
            let task = state.live_task_mut(task_id, to)?;
            let now = tx.time;
            task.status = to;
            task.finish_time = Some(now);
            task.start_time.get_or_insert(now);
            task.update_time = now;
            task.version += 1;
            let kind = match outcome {
                Outcome::Completed(result) => {
                    task.result = result;
                    EventType::TaskCompleted
                }
                Outcome::Failed(error) => {
                    task.error = Some(error);
                    EventType::TaskFailed
                }
                Outcome::Cancelled(reason) => {
                    task.reason = reason;
                    EventType::TaskCancelled
                }
            };
            let snapshot = Box::new(task.clone());
            tx.event(kind, task, EventDetail::Task(snapshot), None);
            let task = Arc::new(task.clone());
            match kind {
                EventType::TaskCompleted => state.counters.tasks_completed += 1,
                EventType::TaskFailed => state.counters.tasks_failed += 1,
                _ => state.counters.tasks_cancelled += 1,
            }
            state.finished.push_back(task.create_seq);
            tx.batch.upserts.push(task.clone());
            while state.finished.len() > max_finished {
                if let Some(old) = state.finished.pop_front()
                    && let Some(gone) = state.tasks.remove(&old)
                {
                    state.ids.remove(&gone.id);
                    tx.batch.removals.push(gone.id.clone());
                }
            }
            Ok(task)
        })
        .await
    }

    /// One task by id, live or finished (within retention).
    pub fn task(&self, task_id: &str) -> Result<Arc<Task>, CoreError> {
        validate::id("task_id", task_id)?;
        let state = self.state();
        state
            .ids
            .get(task_id)
            .and_then(|seq| state.tasks.get(seq))
            .cloned()
            .ok_or_else(|| CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            })
    }

    /// Tasks matching a query, one page, with the statistics.
    pub fn status(&self, query: &StatusQuery) -> Result<StatusPage, CoreError> {
        for agent in &query.agent_ids {
            validate::id("agent_ids", agent)?;
        }
        let page_size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(CoreError::invalid(
                    "page_size",
                    format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        let statuses: HashSet<TaskStatus> = query.statuses.iter().copied().collect();
        let agents: HashSet<&str> = query.agent_ids.iter().map(String::as_str).collect();
        let fingerprint = filter_fingerprint(&statuses, &agents);
        let after = match query.page_token.as_deref() {
            None | Some("") => None,
            Some(token) => Some(parse_page_token(token, fingerprint)?),
        };

        let oldest_retained_seq = self.inner.store.oldest_seq();
        let state = self.state();
        let mut tasks_by_status = [0u64; 7];
        let mut total = 0u64;
        let mut page = Vec::with_capacity(page_size.min(state.tasks.len()));
        let mut last_in_page = None;
        let mut more = false;
        for (seq, task) in &state.tasks {
            tasks_by_status[status_index(task.status)] += 1;
            let matches = (statuses.is_empty() || statuses.contains(&task.status))
                && (agents.is_empty() || agents.contains(task.agent_id.as_str()));
            if !matches {
                continue;
            }
            total += 1;
            if after.is_some_and(|a| *seq <= a) {
                continue;
            }
            if page.len() < page_size {
                page.push(task.clone());
                last_in_page = Some(*seq);
            } else {
                more = true;
            }
        }
        let active = tasks_by_status[..4].iter().sum::<u64>();
        let state_kind = if state.global_interrupt {
            ServiceState::Interrupted
        } else if active > 0 {
            ServiceState::Running
        } else {
            ServiceState::Idle
        };
        Ok(StatusPage {
            state: state_kind,
            tasks: page,
            next_page_token: if more {
                last_in_page.map(|seq| format!("{seq}.{fingerprint:016x}"))
            } else {
                None
            },
            total_size: total,
            active_tasks: active,
            global_interrupt: state.global_interrupt,
            tasks_by_status,
            counters: state.counters.clone(),
            started_at: self.inner.started_at,
            head_seq: state.head_seq,
            oldest_retained_seq,
            streams: self.stream_stats(),
            time: SystemTime::now(),
        })
    }

    /// The newest seq in the log.
    pub fn head_seq(&self) -> u64 {
        self.state().head_seq
    }

    /// Subscribe stream counters.
    pub fn stream_stats(&self) -> StreamStats {
        let c = &self.inner.hub.counters;
        StreamStats {
            active: c.active.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            lagging: c.lagging.load(Ordering::Relaxed),
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
        self.core
            .committed(self.last_seq, std::mem::take(&mut self.wake), &result);
        result
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        let Some(commit) = self.commit.take() else {
            return;
        };
        let core = self.core.clone();
        let (last_seq, wake) = (self.last_seq, std::mem::take(&mut self.wake));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let result = commit.await;
                    core.committed(last_seq, wake, &result);
                });
            }
            Err(_) => tracing::error!(last_seq, "a commit was abandoned outside a runtime"),
        }
    }
}

impl State {
    /// The live task `task_id`, ready for `operation` (copied if a store still holds it);
    /// a finished one refuses, naming its state.
    fn live_task(&mut self, task_id: &str, operation: &'static str) -> Result<&mut Task, CoreError> {
        let Some(task) = self.ids.get(task_id).and_then(|seq| self.tasks.get_mut(seq)) else {
            return Err(CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        };
        if task.status.is_terminal() {
            return Err(CoreError::TaskFinished {
                task_id: task_id.to_owned(),
                status: task.status,
                operation,
            });
        }
        Ok(Arc::make_mut(task))
    }

    /// The live task `task_id`, ready to move to `to` (copied if a store still holds it);
    /// a finished one refuses, naming its state and the state `to` it would have reached.
    fn live_task_mut(&mut self, task_id: &str, to: TaskStatus) -> Result<&mut Task, CoreError> {
        let Some(task) = self.ids.get(task_id).and_then(|seq| self.tasks.get_mut(seq)) else {
            return Err(CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        };
        if task.status.is_terminal() {
            return Err(CoreError::IllegalTransition {
                task_id: task_id.to_owned(),
                from: task.status,
                to,
            });
        }
        Ok(Arc::make_mut(task))
    }
}

fn status_index(status: TaskStatus) -> usize {
    match status {
        TaskStatus::Pending => 0,
        TaskStatus::Running => 1,
        TaskStatus::Interrupted => 2,
        TaskStatus::InputRequired => 3,
        TaskStatus::Completed => 4,
        TaskStatus::Failed => 5,
        TaskStatus::Cancelled => 6,
    }
}

/// A fingerprint of a query's filters, carried in its page tokens so that a token is not
/// used with other filters.
fn filter_fingerprint(statuses: &HashSet<TaskStatus>, agents: &HashSet<&str>) -> u64 {
    let mut s: Vec<usize> = statuses.iter().map(|s| status_index(*s)).collect();
    s.sort_unstable();
    let mut a: Vec<&str> = agents.iter().copied().collect();
    a.sort_unstable();
    let mut hasher = DefaultHasher::new();
    s.hash(&mut hasher);
    a.hash(&mut hasher);
    hasher.finish()
}

fn parse_page_token(token: &str, fingerprint: u64) -> Result<u64, CoreError> {
    let bad = || CoreError::invalid("page_token", "not a token from a previous GetStatus response");
    let (seq, print) = token.split_once('.').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let print = u64::from_str_radix(print, 16).map_err(|_| bad())?;
    if print != fingerprint {
        return Err(CoreError::invalid(
            "page_token",
            "was issued for different filters (statuses, agent_ids)",
        ));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests;
