//! Sessions of coordinators and agents: leases kept by heartbeats (and by every call of the
//! session), takeover by the same id, and the channel through which the server pushes
//! what a session must act on.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::hub::SubShared;
use super::model::{
    Capabilities, Command, CommandState, EventDetail, EventType, InputRequest, LockCause, SessionEnd, SessionInfo,
    SessionKind,
};
use super::timers::Timer;
use super::{Core, State, Tx, validate};
use crate::error::CoreError;

/// A capability a call needs from its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability {
    /// Subscriptions tied to the session.
    Streaming,
    /// Interrupt and resume.
    Interruption,
    /// Commands and locks.
    TaskCoordination,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Capability::Streaming => "streaming",
            Capability::Interruption => "interruption",
            Capability::TaskCoordination => "task_coordination",
        }
    }

    fn held_by(self, caps: &Capabilities) -> bool {
        match self {
            Capability::Streaming => caps.streaming,
            Capability::Interruption => caps.interruption,
            Capability::TaskCoordination => caps.task_coordination,
        }
    }
}

/// The shortest lease a session may ask for.
const MIN_TTL: Duration = Duration::from_millis(100);
/// The longest lease, as a multiple of `session_ttl`.
const MAX_TTL_FACTOR: u32 = 10;

/// A session to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The coordinator or agent id.
    pub session_id: String,
    /// Who connects.
    pub kind: SessionKind,
    /// What it may do.
    pub capabilities: Capabilities,
    /// The lease wanted; `None`: the server default.
    pub lease_ttl: Option<Duration>,
}

/// What the server pushes on a session's Heartbeat stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A command for one of the agent's tasks.
    Command(std::sync::Arc<Command>),
    /// An input request of one of the agent's tasks was answered or expired.
    Input(Box<InputRequest>),
    /// The session is over (or this stream is); nothing follows.
    Notice(Notice),
}

/// Why a Heartbeat stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The lease ran out.
    LeaseLost,
    /// The same id connected again, or another Heartbeat stream took over.
    TakenOver,
    /// The server is shutting down.
    ServerDraining,
    /// The session was disconnected.
    Disconnected,
}

/// A session as the core keeps it.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub(crate) info: SessionInfo,
    pub(crate) lease_deadline: Instant,
    /// Tasks whose lock the session holds.
    pub(crate) locks: BTreeSet<String>,
    /// Its subscriptions (they end with the session).
    pub(crate) subscriptions: Vec<Weak<SubShared>>,
    pub(crate) channel: Arc<SessionChannel>,
}

/// The push channel of one session generation: a small outbox that its Heartbeat stream
/// drains. Pushes are rare (commands, answers), and bounded by the open commands and
/// input requests of the session's tasks.
#[derive(Debug, Default)]
pub(crate) struct SessionChannel {
    state: Mutex<ChannelState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct ChannelState {
    outbox: VecDeque<Push>,
    closed: Option<Notice>,
    /// Bumped by each Heartbeat stream that opens: only the newest one is served.
    epoch: u64,
}

impl SessionChannel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a push for the session's Heartbeat stream.
    pub(crate) fn push(&self, push: Push) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.outbox.push_back(push);
        }
        drop(state);
        self.notify.notify_waiters();
    }

    /// Ends the channel: its stream sends `notice` and stops.
    pub(crate) fn close(&self, notice: Notice) {
        let mut state = self.lock();
        state.closed.get_or_insert(notice);
        drop(state);
        self.notify.notify_waiters();
    }

    fn take_outbox(&self) -> VecDeque<Push> {
        std::mem::take(&mut self.lock().outbox)
    }
}

/// One Heartbeat stream of a session: the server side of the bidirectional call.
#[derive(Debug)]
pub struct Heartbeat {
    core: Core,
    session_id: String,
    generation: u64,
    channel: Arc<SessionChannel>,
    epoch: u64,
    done: bool,
}

impl Heartbeat {
    /// The session it belongs to.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Renews the lease (a ping); `task_ids` are tasks the agent vouches it works on (a
    /// STALLED one among them is un-flagged). Returns the new lease expiry.
    pub async fn ping(&self, task_ids: &[String]) -> Result<SystemTime, CoreError> {
        // Bounded before the ids are looked up under the state lock.
        validate::entries("task_ids", task_ids.len(), self.core.inner.config.max_filter_entries)?;
        for id in task_ids {
            validate::id("task_ids", id)?;
        }
        let (expire, stalled) = self.core.renew(&self.session_id, Some(self.generation), task_ids)?;
        if !stalled.is_empty() {
            self.core.unstall(&stalled).await?;
        }
        Ok(expire)
    }

    /// The next push; `None` once a notice has been sent.
    pub async fn next(&mut self) -> Option<Push> {
        if self.done {
            return None;
        }
        loop {
            let notified = self.channel.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.channel.lock();
                let notice = if state.epoch != self.epoch {
                    Some(Notice::TakenOver)
                } else {
                    state.closed
                };
                if let Some(notice) = notice {
                    self.done = true;
                    return Some(Push::Notice(notice));
                }
                if let Some(push) = state.outbox.pop_front() {
                    return Some(push);
                }
            }
            notified.await;
        }
    }
}

impl Core {
    /// Opens a session, or takes over the one of the same id (its locks and
    /// subscriptions survive). Returns it and whether it was a takeover.
    pub async fn connect(&self, request: ConnectRequest) -> Result<(SessionInfo, bool), CoreError> {
        validate::id("session_id", &request.session_id)?;
        let default_ttl = self.inner.config.session_ttl;
        let ttl = match request.lease_ttl {
            None => default_ttl,
            Some(t) if t.is_zero() => default_ttl,
            Some(t) if t < MIN_TTL => return Err(CoreError::invalid("lease_ttl", "must be at least 100ms")),
            Some(t) => t.min(default_ttl * MAX_TTL_FACTOR),
        };
        let limits = (
            self.inner.config.max_concurrent_coordinators,
            self.inner.config.max_concurrent_agents,
        );
        self.write(move |state, tx| {
            let now = Instant::now();
            let id = request.session_id;
            let taken_over = state.sessions.contains_key(&id);
            let previous_kind = state.sessions.get(&id).map(|s| s.info.kind);
            let coordinator_now = request.kind.is_coordinator();
            let counts_again = previous_kind.is_none_or(|k| k.is_coordinator() != coordinator_now);
            if counts_again {
                let (count, limit, what) = if coordinator_now {
                    (state.coordinator_sessions(), limits.0, "coordinator")
                } else {
                    (state.agent_sessions(), limits.1, "agent")
                };
                if count >= limit as usize {
                    let setting = if coordinator_now {
                        "max_concurrent_coordinators"
                    } else {
                        "max_concurrent_agents"
                    };
                    return Err(CoreError::limit(
                        crate::error::Limit::Sessions,
                        None,
                        format!("{count} {what} sessions are connected, the limit ({setting}); disconnect one first"),
                    ));
                }
            }
            let info = match state.sessions.get_mut(&id) {
                Some(entry) => {
                    entry.info.generation += 1;
                    if entry.info.kind != request.kind {
                        state.metrics.sessions(entry.info.kind).decrement(1.0);
                        state.metrics.sessions(request.kind).increment(1.0);
                    }
                    entry.info.kind = request.kind;
                    entry.info.capabilities = request.capabilities;
                    entry.info.lease_ttl = ttl;
                    entry.lease_deadline = now + ttl;
                    entry.info.last_activity_time = tx.time;
                    entry.info.lease_expire_time = tx.time + ttl;
                    // The old generation's streams end; what they had not delivered moves on.
                    let fresh = Arc::new(SessionChannel::default());
                    let old = std::mem::replace(&mut entry.channel, fresh.clone());
                    old.close(Notice::TakenOver);
                    fresh.lock().outbox = old.take_outbox();
                    entry.info.clone()
                }
                None => {
                    let info = SessionInfo {
                        id: id.clone(),
                        kind: request.kind,
                        capabilities: request.capabilities,
                        connect_time: tx.time,
                        last_activity_time: tx.time,
                        lease_expire_time: tx.time + ttl,
                        lease_ttl: ttl,
                        generation: 1,
                    };
                    let channel = Arc::new(SessionChannel::default());
                    state.metrics.sessions(request.kind).increment(1.0);
                    state.sessions.insert(
                        id.clone(),
                        SessionEntry {
                            info: info.clone(),
                            lease_deadline: now + ttl,
                            locks: BTreeSet::new(),
                            subscriptions: Vec::new(),
                            channel,
                        },
                    );
                    info
                }
            };
            state.arm(now + ttl, Timer::Session(id.clone()));
            tx.session_event(EventType::CoordinatorConnected, &info, None);
            if request.kind == SessionKind::Agent {
                // The agent is back: its orphaned tasks are not orphans any more.
                let orphans: Vec<String> = state
                    .tasks
                    .values()
                    .filter(|t| t.agent_id == id && t.is_live() && t.orphaned)
                    .map(|t| t.id.clone())
                    .collect();
                for task_id in orphans {
                    state.recover_task(tx, &task_id);
                }
            }
            Ok((info, taken_over))
        })
        .await
    }

    /// Ends a session: its locks are released, its subscriptions and Heartbeat stream end.
    pub async fn disconnect(&self, session_id: &str) -> Result<(), CoreError> {
        validate::id("session_id", session_id)?;
        self.write(|state, tx| {
            if !state.sessions.contains_key(session_id) {
                return Err(session_not_found(session_id));
            }
            state.end_session(tx, session_id, SessionEnd::Disconnected);
            Ok(())
        })
        .await
    }

    /// Opens the Heartbeat stream of a session; an older stream of it ends (TAKEN_OVER).
    /// `generation` (when not 0) must be the current one: a stream of a connection that
    /// was taken over is refused, so it cannot take the session back.
    pub fn heartbeat(&self, session_id: &str, generation: u64) -> Result<Heartbeat, CoreError> {
        validate::id("session_id", session_id)?;
        let state = self.state();
        let entry = state
            .sessions
            .get(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        if generation != 0 && generation != entry.info.generation {
            return Err(CoreError::FailedPrecondition(format!(
                "session `{session_id}` was taken over (generation {generation} is now {})",
                entry.info.generation
            )));
        }
        let channel = entry.channel.clone();
        // Commands are delivered at least once: a new stream gets every command of the
        // agent's tasks that is still open (an older stream may have taken some with it).
        let open: Vec<Push> = state
            .tasks
            .values()
            .filter(|t| t.agent_id == session_id)
            .flat_map(|t| t.open_commands.iter().map(|c| Push::Command(c.clone())))
            .collect();
        let epoch = {
            let mut ch = channel.lock();
            ch.epoch += 1;
            let queued: std::collections::HashSet<String> = ch
                .outbox
                .iter()
                .filter_map(|p| match p {
                    Push::Command(c) => Some(c.id.clone()),
                    _ => None,
                })
                .collect();
            for push in open {
                if let Push::Command(c) = &push
                    && !queued.contains(&c.id)
                {
                    ch.outbox.push_back(push);
                }
            }
            ch.epoch
        };
        channel.notify.notify_waiters();
        Ok(Heartbeat {
            core: self.clone(),
            session_id: session_id.to_owned(),
            generation: entry.info.generation,
            channel,
            epoch,
            done: false,
        })
    }

    /// Renews a session's lease (of `generation`, if given) and vouches for the agent's
    /// tasks; returns the new lease expiry.
    pub(crate) fn renew(
        &self,
        session_id: &str,
        generation: Option<u64>,
        task_ids: &[String],
    ) -> Result<(SystemTime, Vec<String>), CoreError> {
        let mut state = self.state();
        let now = Instant::now();
        let entry = state
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        if generation.is_some_and(|g| g != entry.info.generation) {
            return Err(CoreError::FailedPrecondition(format!(
                "session `{session_id}` was taken over by a newer connection"
            )));
        }
        let expire = entry.touch(now);
        let mut stalled = Vec::new();
        for task_id in task_ids {
            if let Some(task) = state
                .task_by_id(task_id)
                .filter(|t| t.agent_id == session_id && t.is_live())
            {
                if task.stalled || task.orphaned {
                    stalled.push(task_id.clone());
                }
                state.activity.insert(task_id.clone(), now);
            }
        }
        Ok((expire, stalled))
    }

    /// Clears the STALLED and ORPHANED flags of tasks a heartbeat vouched for.
    async fn unstall(&self, task_ids: &[String]) -> Result<(), CoreError> {
        self.write(|state, tx| {
            for task_id in task_ids {
                state.recover_task(tx, task_id);
            }
            Ok(())
        })
        .await
    }

    /// The sessions connected now, with their locks and live subscriptions.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut state = self.state();
        let mut views = Vec::with_capacity(state.sessions.len());
        for entry in state.sessions.values_mut() {
            entry.subscriptions.retain(|w| w.strong_count() > 0);
            views.push(SessionView {
                info: entry.info.clone(),
                locked_task_ids: entry.locks.iter().cloned().collect(),
                subscriptions: entry.subscriptions.iter().filter_map(Weak::upgrade).collect(),
            });
        }
        views.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        views
    }

    /// Tells every Heartbeat stream that the server drains (at shutdown).
    pub(crate) fn drain_sessions(&self) {
        let state = self.state();
        for entry in state.sessions.values() {
            entry.channel.close(Notice::ServerDraining);
        }
    }
}

/// A session as GetStatus lists it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The session.
    pub info: SessionInfo,
    /// Tasks whose lock it holds.
    pub locked_task_ids: Vec<String>,
    /// Its open subscriptions.
    pub(crate) subscriptions: Vec<Arc<SubShared>>,
}

impl SessionEntry {
    /// Refreshes activity and the lease; returns the new expiry.
    pub(crate) fn touch(&mut self, now: Instant) -> SystemTime {
        let ttl = self.info.lease_ttl;
        self.lease_deadline = now + ttl;
        let wall = SystemTime::now();
        self.info.last_activity_time = wall;
        self.info.lease_expire_time = wall + ttl;
        self.info.lease_expire_time
    }
}

pub(crate) fn session_not_found(session_id: &str) -> CoreError {
    CoreError::NotFound {
        kind: "session",
        id: session_id.to_owned(),
        hint: " (connect first, or the lease ran out)",
    }
}

impl State {
    /// A live task whose agent showed up again is healthy: flags cleared, TASK_RECOVERED.
    pub(crate) fn recover_task(&mut self, tx: &mut Tx, task_id: &str) {
        if let Some(task) = self
            .task_mut(task_id)
            .filter(|t| (t.stalled || t.orphaned) && t.is_live())
        {
            task.stalled = false;
            task.orphaned = false;
            task.version += 1;
            task.update_time = tx.time;
            let snapshot = Box::new(task.clone());
            tx.event(EventType::TaskRecovered, task, EventDetail::Task(snapshot), None);
            tx.changed(task);
        }
    }

    fn coordinator_sessions(&self) -> usize {
        self.sessions.values().filter(|s| s.info.kind.is_coordinator()).count()
    }

    fn agent_sessions(&self) -> usize {
        self.sessions.values().filter(|s| !s.info.kind.is_coordinator()).count()
    }

    /// Refreshes the session `id`, if connected (every call of a session counts).
    pub(crate) fn touch_session(&mut self, id: &str) {
        if let Some(entry) = self.sessions.get_mut(id) {
            entry.touch(Instant::now());
        }
    }

    /// The connected session `id`, refreshed, with the capability `needs` (if any).
    pub(crate) fn session_for(&mut self, id: &str, needs: Option<Capability>) -> Result<&mut SessionEntry, CoreError> {
        let entry = self.sessions.get_mut(id).ok_or_else(|| session_not_found(id))?;
        if let Some(capability) = needs
            && !capability.held_by(&entry.info.capabilities)
        {
            return Err(CoreError::PermissionDenied(format!(
                "session `{id}` did not declare the `{}` capability",
                capability.name()
            )));
        }
        entry.touch(Instant::now());
        Ok(entry)
    }

    /// Ends a session: releases its locks, ends its subscriptions and Heartbeat stream,
    /// flags its agent's live tasks ORPHANED when its lease ran out, and records it.
    pub(crate) fn end_session(&mut self, tx: &mut Tx, id: &str, end: SessionEnd) {
        let Some(entry) = self.sessions.remove(id) else {
            return;
        };
        self.metrics.sessions(entry.info.kind).decrement(1.0);
        for task_id in &entry.locks {
            self.release_lock(tx, task_id, LockCause::Disconnected);
        }
        for sub in entry.subscriptions.iter().filter_map(Weak::upgrade) {
            sub.session_ended.store(true, Ordering::Release);
            sub.notify.notify_one();
        }
        if end == SessionEnd::LeaseExpired {
            let orphans: Vec<String> = self
                .tasks
                .values()
                .filter(|t| t.agent_id == id && t.is_live() && !t.orphaned)
                .map(|t| t.id.clone())
                .collect();
            for task_id in orphans {
                if let Some(task) = self.task_mut(&task_id) {
                    task.orphaned = true;
                    task.version += 1;
                    task.update_time = tx.time;
                    let snapshot = Box::new(task.clone());
                    tx.event(EventType::TaskOrphaned, task, EventDetail::Task(snapshot), None);
                    tx.changed(task);
                }
            }
        }
        tx.session_event(EventType::CoordinatorDisconnected, &entry.info, Some(end));
        entry.channel.close(match end {
            SessionEnd::Disconnected => Notice::Disconnected,
            SessionEnd::LeaseExpired => Notice::LeaseLost,
            SessionEnd::ServerDraining => Notice::ServerDraining,
        });
    }

    /// Pushes a command to the agent's session, if connected.
    pub(crate) fn push_to_agent(&self, agent_id: &str, push: Push) {
        if let Some(entry) = self.sessions.get(agent_id) {
            entry.channel.push(push);
        }
    }
}

impl Tx {
    /// Appends a session event (COORDINATOR_CONNECTED / _DISCONNECTED).
    pub(crate) fn session_event(&mut self, kind: EventType, info: &SessionInfo, end: Option<SessionEnd>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch.events.push(Arc::new(super::Event {
            seq,
            kind,
            time: self.time,
            task_id: None,
            agent_id: (info.kind == SessionKind::Agent).then(|| info.id.clone()),
            coordinator_id: Some(info.id.clone()),
            caused_by: None,
            data: None,
            task_version: 0,
            task_status: None,
            detail: EventDetail::Session {
                session: Box::new(info.clone()),
                end,
            },
            wire: Default::default(),
        }));
        seq
    }
}

/// Whether a command is still waiting for the agent.
pub(crate) fn is_open(command: &Command) -> bool {
    matches!(command.state, CommandState::Admitted | CommandState::Delivered)
}
