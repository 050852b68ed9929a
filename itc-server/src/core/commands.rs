//! Coordination commands: one command steers one live task, under its lock, and is
//! tracked ADMITTED → DELIVERED → APPLIED | REJECTED | TIMED_OUT.
//!
//! The coordinator's authority applies the state change at admission (an interrupt makes
//! the task INTERRUPTED at once, a cancel finishes it, a plan or priority changes); the
//! command then travels to the agent, whose answer (applied, or rejected with a reason,
//! or an answer to a query) closes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::model::{Command, CommandAction, CommandState, EventDetail, EventType, JsonMap, TaskStatus};
use super::sessions::{Capability, Push, is_open};
use super::tasks::Outcome;
use super::timers::Timer;
use super::{Core, State, Tx, validate};
use crate::error::CoreError;

/// Finished commands kept for GetCommand and idempotent retries.
const KEPT_CLOSED_COMMANDS: usize = 10_000;

/// How long Coordinate waits before it answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommandWait {
    /// Once admitted.
    #[default]
    Admitted,
    /// Once pushed to the agent (or final).
    Delivered,
    /// Once final.
    Final,
}

/// One command to admit.
#[derive(Debug, Clone)]
pub struct CoordinateRequest {
    /// The task.
    pub task_id: String,
    /// The coordinator's session.
    pub coordinator_id: String,
    /// What to do.
    pub action: CommandAction,
    /// Parameters.
    pub data: Option<JsonMap>,
    /// The token of a lock the caller holds; 0: take the lock for this call.
    pub fencing_token: u64,
    /// The task's version must be this.
    pub expected_version: Option<u64>,
    /// Makes retries safe.
    pub idempotency_key: Option<String>,
    /// How long to wait before answering.
    pub wait: CommandWait,
    /// Bound on the wait; `None`: `coordination_timeout`.
    pub wait_timeout: Option<Duration>,
}

impl Core {
    /// Admits one command (see the module docs), then waits as asked.
    pub async fn coordinate(&self, request: CoordinateRequest) -> Result<Command, CoreError> {
        let config = &self.inner.config;
        if !config.enable_agent_coordination {
            return Err(CoreError::FailedPrecondition(
                "coordination is disabled on this server (enable_agent_coordination = false)".into(),
            ));
        }
        validate::id("task_id", &request.task_id)?;
        validate::id("coordinator_id", &request.coordinator_id)?;
        validate::payload("data", request.data.as_ref(), config.payloads())?;
        if let Some(key) = &request.idempotency_key {
            validate::id("idempotency_key", key)?;
        }
        check_data(request.action, request.data.as_ref())?;
        let timeout = config.coordination_timeout;
        let max_finished = config.max_finished_tasks;
        let wait = request.wait;
        // Never longer than coordination_timeout: the command is final by then.
        let wait_timeout = request
            .wait_timeout
            .filter(|t| !t.is_zero())
            .map_or(timeout, |t| t.min(timeout));
        let command = self
            .write(move |state, tx| {
                let needs = match request.action {
                    CommandAction::Interrupt | CommandAction::Resume => Capability::Interruption,
                    _ => Capability::TaskCoordination,
                };
                state.session_for(&request.coordinator_id, Some(needs))?;
                if let Some(key) = &request.idempotency_key
                    && let Some(id) = state.idempotency.get(&(request.coordinator_id.clone(), key.clone()))
                    && let Some(existing) = state.command(id)
                {
                    if existing.task_id != request.task_id || existing.action != request.action {
                        return Err(CoreError::invalid(
                            "idempotency_key",
                            format!(
                                "was used for another command ({} on task `{}`)",
                                existing.action.name(),
                                existing.task_id
                            ),
                        ));
                    }
                    return Ok(existing);
                }
                let version = state.live(&request.task_id, "coordinate it")?.version;
                let token = match state.effective_lock(&request.task_id) {
                    Some(lock) if lock.holder_id != request.coordinator_id => {
                        return Err(CoreError::Aborted(format!(
                            "task `{}` is locked by `{}` until {} (fencing token {})",
                            request.task_id,
                            lock.holder_id,
                            humantime::format_rfc3339_millis(lock.expire_time),
                            lock.fencing_token
                        )));
                    }
                    Some(lock) if request.fencing_token != 0 && request.fencing_token != lock.fencing_token => {
                        return Err(CoreError::Aborted(format!(
                            "fencing token {} is stale: the lock of task `{}` is held with token {}",
                            request.fencing_token, request.task_id, lock.fencing_token
                        )));
                    }
                    Some(lock) if request.fencing_token == 0 => {
                        return Err(CoreError::Aborted(format!(
                            "task `{}` is locked by you with fencing token {}: pass it, so that a stale \
                             process of yours is fenced off",
                            request.task_id, lock.fencing_token
                        )));
                    }
                    Some(lock) => lock.fencing_token,
                    None if request.fencing_token != 0 => {
                        return Err(CoreError::Aborted(format!(
                            "fencing token {} is stale: task `{}` is not locked; acquire the lock again",
                            request.fencing_token, request.task_id
                        )));
                    }
                    None => 0,
                };
                if let Some(expected) = request.expected_version
                    && expected != version
                {
                    return Err(CoreError::Aborted(format!(
                        "task `{}` is at version {version}, not the expected {expected}",
                        request.task_id
                    )));
                }
                state.check_transition(&request.task_id, request.action)?;
                // Every check passed: a lease that ran out is freed now (its timer may lag).
                state.expire_lock_if_due(tx, &request.task_id);
                let command = state.admit(tx, request, token, timeout, max_finished)?;
                Ok(command)
            })
            .await?;
        if wait == CommandWait::Admitted {
            return Ok(command);
        }
        self.wait_for_command(&command.id, wait, wait_timeout).await
    }

    /// The command `command_id`, open or finished (within retention).
    pub fn command(&self, command_id: &str) -> Result<Command, CoreError> {
        validate::id("command_id", command_id)?;
        self.state()
            .command(command_id)
            .ok_or_else(|| command_not_found(command_id))
    }

    /// The agent's answer to a command: applied (with an optional result, the answer to
    /// a query) or rejected with a reason.
    pub async fn acknowledge_command(
        &self,
        command_id: &str,
        outcome: CommandState,
        reason: Option<String>,
        result: Option<serde_json::Value>,
    ) -> Result<Command, CoreError> {
        validate::id("command_id", command_id)?;
        if !matches!(outcome, CommandState::Applied | CommandState::Rejected) {
            return Err(CoreError::invalid(
                "outcome",
                "must be COMMAND_STATE_APPLIED or COMMAND_STATE_REJECTED",
            ));
        }
        validate::text("reason", reason.as_deref().unwrap_or(""))?;
        validate::value("result", result.as_ref(), self.inner.config.payloads())?;
        self.write(|state, tx| {
            let Some(task_id) = state.command_index.get(command_id).cloned() else {
                return Err(match state.closed_commands.get(command_id) {
                    Some(done) => CoreError::FailedPrecondition(format!(
                        "command `{command_id}` is already {}",
                        done.state.name()
                    )),
                    None => command_not_found(command_id),
                });
            };
            if let Some(agent) = state.task_by_id(&task_id).map(|t| t.agent_id.clone()) {
                state.touch_session(&agent);
            }
            let kind = if outcome == CommandState::Applied {
                EventType::CoordinationApplied
            } else {
                EventType::CoordinationRejected
            };
            state
                .close_command(tx, &task_id, command_id, kind, |c| {
                    c.state = outcome;
                    c.reason = reason;
                    c.result = result;
                })
                .ok_or_else(|| command_not_found(command_id))
        })
        .await
    }

    /// Marks a command DELIVERED as its agent's Heartbeat stream sends it; returns it as it
    /// is now, or `None` if it is no longer open (then it must not be sent).
    pub async fn command_delivered(&self, command_id: &str) -> Result<Option<Command>, CoreError> {
        self.write(|state, tx| {
            let Some(task_id) = state.command_index.get(command_id).cloned() else {
                return Ok(None);
            };
            let Some(task) = state.task_mut(&task_id) else {
                return Ok(None);
            };
            let Some(shared) = task.open_commands.iter_mut().find(|c| c.id == command_id) else {
                return Ok(None);
            };
            if shared.state != CommandState::Admitted {
                // Sent again to a new stream: already DELIVERED.
                return Ok(Some((**shared).clone()));
            }
            // Copied if anything else (an event, the store) still holds this version.
            let command = Arc::make_mut(shared);
            command.state = CommandState::Delivered;
            command.update_time = tx.time;
            let delivered = command.clone();
            let coordinator = command.coordinator_id.clone();
            let shared = shared.clone();
            let detail = EventDetail::Command(shared.clone());
            tx.batch.commands.push(shared.clone());
            if task.last_command.as_ref().is_some_and(|c| c.id == command_id) {
                task.last_command = Some(shared);
            }
            tx.event_by(
                EventType::CoordinationDelivered,
                task,
                detail,
                None,
                Some(&coordinator),
                Some(command_id),
            );
            tx.changed(task);
            Ok(Some(delivered))
        })
        .await
    }

    /// Waits until the command reaches `wait` (or the timeout); returns it as it is then.
    async fn wait_for_command(
        &self,
        command_id: &str,
        wait: CommandWait,
        timeout: Duration,
    ) -> Result<Command, CoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.commands_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let command = self.command(command_id)?;
            let reached = match wait {
                CommandWait::Admitted => true,
                CommandWait::Delivered => command.state != CommandState::Admitted,
                CommandWait::Final => command.state.is_final(),
            };
            if reached || Instant::now() >= deadline {
                return Ok(command);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.command(command_id);
            }
        }
    }
}

fn command_not_found(command_id: &str) -> CoreError {
    CoreError::NotFound {
        kind: "command",
        id: command_id.to_owned(),
        hint: "",
    }
}

/// Parameters each action requires.
fn check_data(action: CommandAction, data: Option<&JsonMap>) -> Result<(), CoreError> {
    match action {
        CommandAction::BoostPriority => match data.and_then(|d| d.get("priority")) {
            None => Ok(()),
            Some(p) if p.as_i64().is_some_and(|p| i32::try_from(p).is_ok()) => Ok(()),
            Some(p) => Err(CoreError::invalid(
                "data.priority",
                format!("{p} is not a 32-bit integer"),
            )),
        },
        CommandAction::ModifyPlan if data.is_none_or(JsonMap::is_empty) => {
            Err(CoreError::invalid("data", "is required: the new plan"))
        }
        CommandAction::Query if data.is_none_or(JsonMap::is_empty) => Err(CoreError::invalid(
            "data",
            "is required: the question (e.g. {\"question\": \"...\"})",
        )),
        _ => Ok(()),
    }
}

fn reason_in(data: Option<&JsonMap>, default: &str) -> String {
    data.and_then(|d| d.get("reason"))
        .and_then(|r| r.as_str())
        .map_or_else(|| default.to_owned(), str::to_owned)
}

impl State {
    /// The command `id`, open or kept after it finished.
    pub(crate) fn command(&self, id: &str) -> Option<Command> {
        if let Some(task_id) = self.command_index.get(id) {
            return self
                .task_by_id(task_id)
                .and_then(|t| t.open_commands.iter().find(|c| c.id == id).map(|c| (**c).clone()));
        }
        self.closed_commands.get(id).cloned()
    }

    /// Whether `action` may apply to the live task `task_id` now (no change made).
    pub(crate) fn check_transition(&self, task_id: &str, action: CommandAction) -> Result<(), CoreError> {
        let status = self.live(task_id, "coordinate it")?.status;
        let to = match action {
            CommandAction::Interrupt if !matches!(status, TaskStatus::Running | TaskStatus::InputRequired) => {
                TaskStatus::Interrupted
            }
            CommandAction::Resume if status != TaskStatus::Interrupted => TaskStatus::Running,
            _ => return Ok(()),
        };
        Err(CoreError::IllegalTransition {
            task_id: task_id.to_owned(),
            from: status,
            to,
        })
    }

    /// Admits a command whose checks passed: applies its effect to the task, records it,
    /// pushes it to the agent, and arms its timeout.
    pub(crate) fn admit(
        &mut self,
        tx: &mut Tx,
        request: CoordinateRequest,
        fencing_token: u64,
        timeout: Duration,
        max_finished: usize,
    ) -> Result<Command, CoreError> {
        let CoordinateRequest {
            task_id,
            coordinator_id,
            action,
            data,
            idempotency_key,
            ..
        } = request;
        let now = tx.time;
        // Check the transition before anything changes.
        self.check_transition(&task_id, action)?;

        let task = self.live_task(&task_id, "coordinate it")?;
        task.version += 1;
        let command = Command {
            id: uuid::Uuid::new_v4().to_string(),
            idempotency_key: idempotency_key.clone(),
            task_id: task_id.clone(),
            coordinator_id: coordinator_id.clone(),
            action,
            data: data.clone(),
            state: CommandState::Admitted,
            reason: None,
            result: None,
            fencing_token,
            create_time: now,
            update_time: now,
            deadline: now + timeout,
            task_version: task.version,
        };
        let coordinator = Some(coordinator_id.as_str());
        let caused_by = Some(command.id.as_str());
        task.update_time = now;
        task.controlling_coordinator = Some(coordinator_id.clone());
        // One command, shared by the task, the store's batch, its event and the agent's push.
        let shared = Arc::new(command.clone());
        task.open_commands.push(shared.clone());
        tx.batch.commands.push(shared.clone());
        task.last_command = Some(shared.clone());
        match action {
            CommandAction::BoostPriority => {
                let priority = data
                    .as_ref()
                    .and_then(|d| d.get("priority"))
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok());
                task.priority = priority.unwrap_or_else(|| task.priority.saturating_add(1));
            }
            CommandAction::ModifyPlan => {
                task.plan.version += 1;
                task.plan.content = data.clone();
                task.plan.updated_by = Some(coordinator_id.clone());
                task.plan.update_time = Some(now);
            }
            CommandAction::Interrupt => {
                task.status = TaskStatus::Interrupted;
                task.reason = Some(reason_in(data.as_ref(), "User interrupt"));
            }
            CommandAction::Resume => {
                task.status = if task.open_inputs.is_empty() {
                    TaskStatus::Running
                } else {
                    TaskStatus::InputRequired
                };
                task.reason = None;
            }
            CommandAction::Cancel | CommandAction::Query | CommandAction::Custom => {}
        }
        let admitted = EventDetail::Command(shared.clone());
        tx.event_by(
            EventType::AgentCoordination,
            task,
            admitted,
            data.clone(),
            coordinator,
            caused_by,
        );
        let effect = match action {
            CommandAction::ModifyPlan => Some(EventType::PlanModification),
            CommandAction::Interrupt => Some(EventType::TaskInterrupted),
            CommandAction::Resume => Some(EventType::TaskResumed),
            CommandAction::Query => Some(EventType::CoordinatorQuery),
            _ => None,
        };
        if let Some(kind) = effect {
            let snapshot = EventDetail::Task(Box::new(task.clone()));
            tx.event_by(kind, task, snapshot, data.clone(), coordinator, caused_by);
        }
        let agent_id = task.agent_id.clone();
        tx.changed(task);
        self.command_index.insert(command.id.clone(), task_id.clone());
        if action == CommandAction::Cancel {
            let reason = reason_in(data.as_ref(), &format!("cancelled by {coordinator_id}"));
            self.finish(
                tx,
                &task_id,
                Outcome::Cancelled(Some(reason)),
                max_finished,
                Some((&coordinator_id, &command.id)),
            )?;
        }
        if action == CommandAction::Interrupt {
            self.counters.tasks_interrupted += 1;
        }
        self.counters.coordinator_interactions += 1;
        self.counters.commands_admitted += 1;
        if let Some(key) = idempotency_key {
            self.idempotency.insert((coordinator_id, key), command.id.clone());
        }
        self.push_to_agent(&agent_id, Push::Command(shared));
        self.arm(Instant::now() + timeout, Timer::Command(command.id.clone()));
        Ok(command)
    }

    /// Moves an open command to its final state (`change` sets it), recording `kind`.
    pub(crate) fn close_command(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        command_id: &str,
        kind: EventType,
        change: impl FnOnce(&mut Command),
    ) -> Option<Command> {
        let task = self.task_mut(task_id)?;
        let at = task.open_commands.iter().position(|c| c.id == command_id)?;
        let mut command = Arc::unwrap_or_clone(task.open_commands.remove(at));
        change(&mut command);
        command.update_time = tx.time;
        let closed = Arc::new(command.clone());
        if task.last_command.as_ref().is_some_and(|c| c.id == command_id) {
            task.last_command = Some(closed.clone());
        }
        let coordinator = command.coordinator_id.clone();
        let detail = EventDetail::Command(closed);
        tx.event_by(kind, task, detail, None, Some(&coordinator), Some(command_id));
        tx.changed(task);
        self.command_index.remove(command_id);
        tx.batch.closed_commands.push(command.clone());
        self.closed_commands.insert(command_id.to_owned(), command.clone());
        self.closed_command_order.push_back(command_id.to_owned());
        while self.closed_command_order.len() > KEPT_CLOSED_COMMANDS {
            if let Some(old) = self.closed_command_order.pop_front()
                && let Some(gone) = self.closed_commands.remove(&old)
                && let Some(key) = gone.idempotency_key
            {
                self.idempotency.remove(&(gone.coordinator_id, key));
            }
        }
        Some(command)
    }

    /// Closes every open command of a task that is being forgotten (retention), so that
    /// each still reaches a final state and stays readable.
    pub(crate) fn close_commands_of(&mut self, tx: &mut Tx, task_id: &str, reason: &str) {
        let open: Vec<String> = self
            .task_by_id(task_id)
            .map(|t| t.open_commands.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        for id in open {
            self.close_command(tx, task_id, &id, EventType::CoordinationTimedOut, |c| {
                c.state = CommandState::TimedOut;
                c.reason = Some(reason.to_owned());
            });
        }
    }

    /// A command's deadline passed: TIMED_OUT unless it was answered.
    pub(crate) fn time_out_command(&mut self, tx: &mut Tx, command_id: &str, _now: Instant) {
        let Some(task_id) = self.command_index.get(command_id).cloned() else {
            return;
        };
        if self.task_by_id(&task_id).is_none() {
            self.command_index.remove(command_id);
            return;
        }
        let open = self
            .task_by_id(&task_id)
            .and_then(|t| t.open_commands.iter().find(|c| c.id == command_id))
            .is_some_and(|c| is_open(c));
        if open {
            self.close_command(tx, &task_id, command_id, EventType::CoordinationTimedOut, |c| {
                c.state = CommandState::TimedOut;
                c.reason = Some("the agent did not answer within coordination_timeout".into());
            });
        }
    }
}
