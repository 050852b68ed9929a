//! The task lifecycle: start, progress, real-time updates, finish, and reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::model::{InputRequest, InputState, LockCause};
use super::timers::Timer;
use super::{
    Core, EventDetail, EventType, JsonMap, MAX_STALL_TIMEOUT, Plan, State, Task, TaskError, TaskStatus, Tx, validate,
};
use crate::error::CoreError;

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

impl Core {
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
        validate::payload("metadata", new.metadata.as_ref(), limits.payloads())?;
        validate::payload("plan", new.plan.as_ref(), limits.payloads())?;
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
                lock: None,
                open_inputs: Vec::new(),
                open_commands: Vec::new(),
                last_command: None,
                wire: Default::default(),
            });
            let kind = if new.pending {
                EventType::TaskCreated
            } else {
                state.counters.tasks_started += 1;
                EventType::TaskStarted
            };
            tx.event(kind, &task, EventDetail::Task(Box::new((*task).clone())), None);
            state.ids.insert(task_id.clone(), create_seq);
            state.tasks.insert(create_seq, task.clone());
            let now = Instant::now();
            state.activity.insert(task_id.clone(), now);
            state.arm(now + stall_timeout, Timer::Stall(task_id));
            state.touch_session(&task.agent_id);
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
            task.orphaned = false;
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
            tx.changed(task);
            let (id, agent) = (task.id.clone(), task.agent_id.clone());
            if started {
                state.counters.tasks_started += 1;
            }
            state.activity.insert(id, Instant::now());
            state.touch_session(&agent);
            Ok(ack)
        })
        .await
    }

    /// Publishes structured real-time data about a live task (REAL_TIME_UPDATE).
    #[tracing::instrument(level = "debug", skip(self, data))]
    pub async fn publish_update(&self, task_id: &str, data: JsonMap) -> Result<Ack, CoreError> {
        validate::id("task_id", task_id)?;
        validate::payload("data", Some(&data), self.inner.config.payloads())?;
        self.write(|state, tx| {
            let task = state.live_task(task_id, "publish an update")?;
            task.version += 1;
            task.update_time = tx.time;
            task.stalled = false;
            task.orphaned = false;
            let seq = tx.event(EventType::RealTimeUpdate, task, EventDetail::None, Some(data));
            let ack = Ack {
                version: task.version,
                seq,
                status: task.status,
            };
            tx.changed(task);
            let (id, agent) = (task.id.clone(), task.agent_id.clone());
            state.activity.insert(id, Instant::now());
            state.touch_session(&agent);
            Ok(ack)
        })
        .await
    }

    /// Finishes a live task as COMPLETED, FAILED or CANCELLED.
    #[tracing::instrument(level = "debug", skip(self, outcome))]
    pub async fn finish_task(&self, task_id: &str, outcome: Outcome) -> Result<Arc<Task>, CoreError> {
        validate::id("task_id", task_id)?;
        let max_payload = self.inner.config.payloads();
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
            let agent = state.task_by_id(task_id).map(|t| t.agent_id.clone());
            let task = state.finish(tx, task_id, outcome, max_finished, None)?;
            if let Some(agent) = agent {
                state.touch_session(&agent);
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
}

impl State {
    /// The live task `task_id`, ready for `operation` (copied if a store still holds it);
    /// a finished one refuses, naming its state.
    pub(crate) fn live_task(&mut self, task_id: &str, operation: &'static str) -> Result<&mut Task, CoreError> {
        let task = self.ids.get(task_id).and_then(|seq| self.tasks.get_mut(seq));
        refuse_unless_live(task.as_ref().map(|t| t.status), task_id, operation)?;
        task.map(for_change).ok_or_else(|| not_found(task_id))
    }

    /// The live task `task_id`, to read before `operation` (a check that changes nothing:
    /// neither copied nor its reader's encoding cleared); a finished one refuses, as
    /// [`State::live_task`] does.
    pub(crate) fn live(&self, task_id: &str, operation: &'static str) -> Result<&Task, CoreError> {
        let task = self.task_by_id(task_id);
        refuse_unless_live(task.map(|t| t.status), task_id, operation)?;
        task.map(|t| &**t).ok_or_else(|| not_found(task_id))
    }

    /// The live task `task_id`, ready to move to `to` (copied if a store still holds it);
    /// a finished one refuses, naming its state and the state `to` it would have reached.
    pub(crate) fn live_task_mut(&mut self, task_id: &str, to: TaskStatus) -> Result<&mut Task, CoreError> {
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
        Ok(for_change(task))
    }

    /// The task `task_id`, if known.
    pub(crate) fn task_by_id(&self, task_id: &str) -> Option<&Arc<Task>> {
        self.ids.get(task_id).and_then(|seq| self.tasks.get(seq))
    }

    /// The task `task_id`, ready to change (copied if a store still holds it).
    pub(crate) fn task_mut(&mut self, task_id: &str) -> Option<&mut Task> {
        let seq = self.ids.get(task_id)?;
        self.tasks.get_mut(seq).map(for_change)
    }

    /// Finishes a live task: its lock is released, its open input requests cancelled,
    /// and finished tasks past retention are forgotten. `cause`: the coordinator and
    /// command that finished it.
    pub(crate) fn finish(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        outcome: Outcome,
        max_finished: usize,
        cause: Option<(&str, &str)>,
    ) -> Result<Arc<Task>, CoreError> {
        let to = match &outcome {
            Outcome::Completed(_) => TaskStatus::Completed,
            Outcome::Failed(_) => TaskStatus::Failed,
            Outcome::Cancelled(_) => TaskStatus::Cancelled,
        };
        self.live_task_mut(task_id, to)?;
        self.release_lock(tx, task_id, LockCause::TaskFinished);
        self.activity.remove(task_id);
        let Some(task) = self.task_mut(task_id) else {
            return Err(CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        };
        let now = tx.time;
        task.status = to;
        task.finish_time = Some(now);
        task.start_time.get_or_insert(now);
        task.update_time = now;
        task.version += 1;
        let cancelled_inputs: Vec<InputRequest> = task
            .open_inputs
            .drain(..)
            .map(|mut input| {
                input.state = InputState::Cancelled;
                input.close_time = Some(now);
                input
            })
            .collect();
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
        tx.changed(task);
        let create_seq = task.create_seq;
        // The state's own task, as finished (shared with the batch, not copied). It was
        // just changed in place, so it is there; the error only keeps this panic-free.
        let Some(task) = self.tasks.get(&create_seq).cloned() else {
            return Err(CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        };
        let snapshot = Box::new((*task).clone());
        let (coordinator, command) = cause.unzip();
        tx.event_by(kind, &task, EventDetail::Task(snapshot), None, coordinator, command);
        match kind {
            EventType::TaskCompleted => self.counters.tasks_completed += 1,
            EventType::TaskFailed => self.counters.tasks_failed += 1,
            _ => self.counters.tasks_cancelled += 1,
        }
        for input in cancelled_inputs {
            // Each cancelled question is recorded, so that whoever would answer it knows.
            if let Some(task) = self.task_by_id(task_id).cloned() {
                tx.event(
                    EventType::InputProvided,
                    &task,
                    EventDetail::Input(Box::new(input.clone())),
                    None,
                );
            }
            self.input_index.remove(&input.id);
            self.keep_closed_input(tx, input);
        }
        self.finished.push_back(task.create_seq);
        while self.finished.len() > max_finished {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            let Some(gone_id) = self.tasks.get(&old).map(|t| t.id.clone()) else {
                continue;
            };
            // Commands still waiting for the agent reach a final state before the task goes.
            self.close_commands_of(
                tx,
                &gone_id,
                "the task was finished and forgotten before the agent answered",
            );
            self.tasks.remove(&old);
            self.ids.remove(&gone_id);
            tx.batch.removals.push(gone_id);
        }
        Ok(task)
    }
}

/// A task ready to change: copied if a store or a reader still holds it, and without its
/// wire encoding, which the change would make stale.
fn not_found(task_id: &str) -> CoreError {
    CoreError::TaskNotFound {
        task_id: task_id.to_owned(),
    }
}

/// Refuses `operation` unless the task (of `status`, `None`: unknown) is live.
fn refuse_unless_live(status: Option<TaskStatus>, task_id: &str, operation: &'static str) -> Result<(), CoreError> {
    match status {
        None => Err(not_found(task_id)),
        Some(status) if status.is_terminal() => Err(CoreError::TaskFinished {
            task_id: task_id.to_owned(),
            status,
            operation,
        }),
        Some(_) => Ok(()),
    }
}

fn for_change(task: &mut Arc<Task>) -> &mut Task {
    let task = Arc::make_mut(task);
    task.wire.clear();
    task
}
