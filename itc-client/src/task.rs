//! Tasks as an agent runs them: a handle that reports, checks for interrupts, receives
//! commands, asks questions, and finishes — and fails its task if dropped while running.

use std::time::Duration;

use itc_proto::json::json_to_value;
use itc_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::{Ack, StartTask, object};
use crate::error::Error;
use crate::session::Session;
use crate::types::{Command, InputRequest, Lock, Task, TaskStatus};

/// A running task of an agent session. Finish it with [`TaskHandle::complete`],
/// [`TaskHandle::fail`] or [`TaskHandle::cancel`]; dropped while running, it marks the
/// task FAILED with a clear reason, so tasks never leak.
#[derive(Debug)]
pub struct TaskHandle {
    session: Session,
    task: Task,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    finished: bool,
}

impl Session {
    /// Starts a task of this agent doing `description`.
    pub async fn start_task(&self, description: impl Into<String>) -> Result<TaskHandle, Error> {
        self.start_task_with(StartTask::new(self.id(), description)).await
    }

    /// Starts a task with options (its agent is this session).
    pub async fn start_task_with(&self, mut options: StartTask) -> Result<TaskHandle, Error> {
        options.agent_id = self.id().to_owned();
        let task = self.client().start_task(options).await?;
        let commands = self.route_commands(&task.id);
        Ok(TaskHandle {
            session: self.clone(),
            task,
            commands: Some(commands),
            finished: false,
        })
    }
}

/// A question to ask, built by [`TaskHandle::request_input`]; `.await` it for the answer.
#[derive(Debug)]
pub struct InputCall<'a> {
    handle: &'a TaskHandle,
    request: pb::RequestInputRequest,
}

impl InputCall<'_> {
    /// Allowed answers.
    #[must_use]
    pub fn choices(mut self, choices: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.request.choices = choices.into_iter().map(Into::into).collect();
        self
    }

    /// How long to wait; at the deadline the request expires (with `default` as answer,
    /// if given).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration, default: Option<Value>) -> Self {
        self.request.timeout = prost_types::Duration::try_from(timeout).ok();
        if let Some(value) = default {
            self.request.default_value = Some(json_to_value(&value));
            self.request.timeout_action = pb::InputTimeoutAction::UseDefault as i32;
        }
        self
    }

    /// Asks, and waits for the answer (or the deadline); the same as `.await`.
    pub async fn send(self) -> Result<InputRequest, Error> {
        self.await
    }
}

impl std::future::IntoFuture for InputCall<'_> {
    type Output = Result<InputRequest, Error>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        let session = self.handle.session.clone();
        let request = self.request;
        Box::pin(async move {
            let asked = session
                .client()
                .agent_stub()
                .request_input(request)
                .await?
                .into_inner()
                .input
                .ok_or_else(|| Error::missing("input"))?;
            session.wait_input(&asked.request_id).await
        })
    }
}

impl TaskHandle {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.task.id
    }

    /// The task as it was started.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Reports progress in [0, 1] with a status line.
    pub async fn progress(&self, progress: f64, message: impl Into<String>) -> Result<Ack, Error> {
        self.session
            .client()
            .report_progress(&self.task.id, progress, message)
            .await
    }

    /// Publishes structured real-time data (anything that serializes to a JSON object).
    pub async fn update(&self, data: impl Serialize) -> Result<Ack, Error> {
        let value = serde_json::to_value(data).map_err(|e| Error::InvalidData {
            field: "data",
            reason: e.to_string(),
        })?;
        object("data", &value)?;
        self.session.client().publish_update(&self.task.id, value).await
    }

    /// Reports progress, and returns [`Error::Interrupted`] if a coordinator interrupted
    /// the task: the place to stop (the seed's `itc_checkpoint`).
    pub async fn checkpoint(&self, progress: f64, message: impl Into<String>) -> Result<Ack, Error> {
        let ack = self.progress(progress, message).await?;
        if ack.status == Some(TaskStatus::Interrupted) {
            let reason = self
                .session
                .client()
                .get_task(&self.task.id)
                .await
                .ok()
                .and_then(|t| t.reason)
                .unwrap_or_else(|| "interrupted".into());
            return Err(Error::Interrupted {
                task_id: self.task.id.clone(),
                reason,
            });
        }
        Ok(ack)
    }

    /// The coordination commands pushed for this task, as they arrive (once each). Answer
    /// each with [`TaskHandle::apply`] or [`TaskHandle::reject`]. Can be taken once.
    pub fn commands(&mut self) -> Option<mpsc::UnboundedReceiver<Command>> {
        self.commands.take()
    }

    /// Tells the coordinator the command was applied (with an answer, for a query).
    pub async fn apply(&self, command: &Command, result: Option<Value>) -> Result<Command, Error> {
        self.acknowledge(command, pb::CommandState::Applied, String::new(), result)
            .await
    }

    /// Tells the coordinator the command was refused, and why.
    pub async fn reject(&self, command: &Command, reason: impl Into<String>) -> Result<Command, Error> {
        self.acknowledge(command, pb::CommandState::Rejected, reason.into(), None)
            .await
    }

    async fn acknowledge(
        &self,
        command: &Command,
        outcome: pb::CommandState,
        reason: String,
        result: Option<Value>,
    ) -> Result<Command, Error> {
        let request = pb::AcknowledgeCommandRequest {
            command_id: command.id.clone(),
            outcome: outcome as i32,
            reason,
            result: result.as_ref().map(json_to_value),
        };
        let response = self
            .session
            .client()
            .agent_stub()
            .acknowledge_command(request)
            .await?
            .into_inner();
        response
            .command
            .as_ref()
            .map(Command::from_proto)
            .ok_or_else(|| Error::missing("command"))
    }

    /// Asks a human or coordinator a question; `.await` it (or `.send().await`) for the
    /// answer.
    pub fn request_input(&self, prompt: impl Into<String>) -> InputCall<'_> {
        InputCall {
            handle: self,
            request: pb::RequestInputRequest {
                task_id: self.task.id.clone(),
                prompt: prompt.into(),
                ..Default::default()
            },
        }
    }

    /// Finishes the task as COMPLETED with a result. Transient failures are retried; if
    /// the call fails anyway, the handle is gone and its task is failed (so it never
    /// leaks), unless the server already finished it.
    pub async fn complete(mut self, result: impl Serialize) -> Result<Task, Error> {
        let value = match serde_json::to_value(result) {
            Ok(value) => value,
            Err(e) => {
                let reason = format!("the task's result could not be serialized: {e}");
                let _ = self
                    .finish(TaskStatus::Failed, |c, id| {
                        let reason = reason.clone();
                        async move { c.fail_task(&id, reason).await }
                    })
                    .await;
                return Err(Error::InvalidData {
                    field: "result",
                    reason: e.to_string(),
                });
            }
        };
        self.finish(TaskStatus::Completed, |c, id| {
            let value = value.clone();
            async move { c.complete_task(&id, value).await }
        })
        .await
    }

    /// Finishes the task as FAILED.
    pub async fn fail(mut self, error: impl Into<String>) -> Result<Task, Error> {
        let error = error.into();
        self.finish(TaskStatus::Failed, |c, id| {
            let error = error.clone();
            async move { c.fail_task(&id, error).await }
        })
        .await
    }

    /// Finishes the task as CANCELLED.
    pub async fn cancel(mut self, reason: impl Into<String>) -> Result<Task, Error> {
        let reason = reason.into();
        self.finish(TaskStatus::Cancelled, |c, id| {
            let reason = reason.clone();
            async move { c.cancel_task(&id, reason).await }
        })
        .await
    }

    /// Runs a finishing call, retried on transient failures. A retry refused because
    /// the task is finished means an earlier attempt took effect (or someone else
    /// finished it): the task as it is then decides.
    async fn finish<F, Fut>(&mut self, target: TaskStatus, call: F) -> Result<Task, Error>
    where
        F: Fn(crate::Client, String) -> Fut,
        Fut: std::future::Future<Output = Result<Task, Error>>,
    {
        let client = self.session.client().clone();
        let policy = client.retry;
        let mut attempt = 1;
        loop {
            match call(client.clone(), self.task.id.clone()).await {
                Ok(task) => {
                    self.finished = true;
                    return Ok(task);
                }
                Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                    tokio::time::sleep(policy.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                    if let Ok(task) = client.get_task(&self.task.id).await
                        && task.status.is_some_and(TaskStatus::is_finished)
                    {
                        self.finished = true;
                        if task.status == Some(target) && attempt > 1 {
                            return Ok(task);
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.session.forget_task(&self.task.id);
        if self.finished {
            return;
        }
        // Never leak a running task (the seed did on its error paths): fail it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.session.client().clone();
            let id = self.task.id.clone();
            runtime.spawn(async move {
                let reason = "the agent dropped its task handle without finishing the task (an error path or a panic)";
                if let Err(e) = client.fail_task(&id, reason).await {
                    // Already finished by a coordinator (cancelled), or the server is gone.
                    let _ = e;
                }
            });
        }
    }
}

/// A held lock that renews itself in the background and is released when dropped (or
/// by [`LockGuard::release`]). [`LockGuard::is_held`] turns false if a renewal is
/// refused (the lease ran out, or the lock went to someone else).
#[derive(Debug)]
pub struct LockGuard {
    session: Session,
    lock: Lock,
    renewer: Option<tokio::task::JoinHandle<()>>,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Session {
    /// Takes a task's lock; it renews itself until released or dropped.
    pub async fn lock(&self, task_id: &str) -> Result<LockGuard, Error> {
        let lock = self.client().acquire_lock(self.id(), task_id, None).await?;
        let lease = lock
            .expires
            .and_then(|e| e.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(1));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let renewer = {
            let session = self.clone();
            let lock = lock.clone();
            let held = held.clone();
            tokio::spawn(async move {
                // A third of the lease as granted (measured here, not by the server's clock).
                let period = (lease / 3).max(Duration::from_millis(50));
                loop {
                    tokio::time::sleep(period).await;
                    match session.client().renew_lock(session.id(), &lock, None).await {
                        Ok(_) => {}
                        // A transient failure: try again at the next period.
                        Err(e) if e.is_retryable() => {}
                        Err(_) => {
                            held.store(false, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        Ok(LockGuard {
            session: self.clone(),
            lock,
            renewer: Some(renewer),
            held,
        })
    }
}

impl LockGuard {
    /// The lock (its fencing token goes with commands: [`crate::CoordinateCall::under`]).
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Whether the lock is still held (false once a renewal was refused).
    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Releases the lock now.
    pub async fn release(mut self) -> Result<(), Error> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.session.client().release_lock(self.session.id(), &self.lock).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        renewer.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            let lock = self.lock.clone();
            runtime.spawn(async move {
                let _ = session.client().release_lock(session.id(), &lock).await;
            });
        }
    }
}
