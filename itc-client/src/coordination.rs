//! Steering tasks: coordination commands, locks, answers to input requests.

use std::time::Duration;

use itc_proto::json::json_to_value;
use itc_proto::v1 as pb;
use serde_json::Value;

use crate::client::{Client, object};
use crate::error::Error;
use crate::types::{Action, Command, CommandState, InputRequest, Lock};

/// One coordination command to send: built by [`Client::coordinate`], sent by
/// [`CoordinateCall::send`] or [`CoordinateCall::wait_for`].
#[derive(Debug, Clone)]
pub struct CoordinateCall {
    client: Client,
    request: pb::CoordinateRequest,
    /// A problem with what the builder was given, reported when sending.
    invalid: Option<(&'static str, String)>,
}

impl CoordinateCall {
    /// Structured parameters (a JSON object; anything else fails the call when sent).
    #[must_use]
    pub fn data(mut self, data: Value) -> Self {
        match object("data", &data) {
            Ok(s) => self.request.data = Some(s),
            Err(_) => self.invalid = Some(("data", format!("must be a JSON object, not {data}"))),
        }
        self
    }

    /// Issue it under a lock held with this token.
    #[must_use]
    pub fn under(mut self, lock: &Lock) -> Self {
        self.request.fencing_token = lock.fencing_token;
        self
    }

    /// Refuse it (ABORTED) unless the task is at this version.
    #[must_use]
    pub fn expected_version(mut self, version: u64) -> Self {
        self.request.expected_version = Some(version);
        self
    }

    /// Makes retries safe: the same key returns the first command. With a key the call
    /// is retried on UNAVAILABLE.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    /// Sends it; answers once admitted.
    pub async fn send(self) -> Result<Command, Error> {
        self.call(pb::CommandWait::Unspecified, None).await
    }

    /// Sends it and waits until it reaches `state` (DELIVERED, or a final state for
    /// APPLIED/REJECTED/TIMED_OUT) or `coordination_timeout` passes; returns it as it is
    /// then.
    pub async fn wait_for(self, state: CommandState) -> Result<Command, Error> {
        self.call(wait_of(state), None).await
    }

    /// As [`CoordinateCall::wait_for`], bounded by `timeout`.
    pub async fn wait_for_within(self, state: CommandState, timeout: Duration) -> Result<Command, Error> {
        self.call(wait_of(state), Some(timeout)).await
    }

    async fn call(mut self, wait: pb::CommandWait, timeout: Option<Duration>) -> Result<Command, Error> {
        if let Some((field, reason)) = self.invalid.take() {
            return Err(Error::InvalidData { field, reason });
        }
        self.request.wait = wait as i32;
        self.request.wait_timeout = timeout.and_then(|t| prost_types::Duration::try_from(t).ok());
        let retry = if self.request.idempotency_key.is_empty() {
            crate::client::RetryPolicy::none()
        } else {
            self.client.retry
        };
        let response = retry
            .run(|| {
                let mut coordinator = self.client.coordinator_stub();
                let request = self.request.clone();
                async move { coordinator.coordinate(request).await }
            })
            .await?
            .into_inner();
        response
            .command
            .as_ref()
            .map(Command::from_proto)
            .ok_or_else(|| Error::missing("command"))
    }
}

/// The server-side wait that reaches `state`.
fn wait_of(state: CommandState) -> pb::CommandWait {
    if state >= CommandState::Applied {
        pb::CommandWait::Final
    } else if state == CommandState::Delivered {
        pb::CommandWait::Delivered
    } else {
        pb::CommandWait::Unspecified
    }
}

impl Client {
    /// A command of `coordinator_id` (a connected session) for `task_id`.
    pub fn coordinate(&self, coordinator_id: &str, task_id: &str, action: Action) -> CoordinateCall {
        CoordinateCall {
            client: self.clone(),
            request: pb::CoordinateRequest {
                task_id: task_id.to_owned(),
                coordinator_id: coordinator_id.to_owned(),
                action: action.to_proto() as i32,
                ..Default::default()
            },
            invalid: None,
        }
    }

    /// A command by id (retried on UNAVAILABLE).
    pub async fn command(&self, command_id: &str) -> Result<Command, Error> {
        let request = pb::GetCommandRequest {
            command_id: command_id.to_owned(),
        };
        let response = self
            .retry
            .run(|| {
                let mut coordinator = self.coordinator_stub();
                let request = request.clone();
                async move { coordinator.get_command(request).await }
            })
            .await?
            .into_inner();
        response
            .command
            .as_ref()
            .map(Command::from_proto)
            .ok_or_else(|| Error::missing("command"))
    }

    /// Takes a task's lock for `lease` (`None`: the server's coordination_timeout).
    pub async fn acquire_lock(
        &self,
        coordinator_id: &str,
        task_id: &str,
        lease: Option<Duration>,
    ) -> Result<Lock, Error> {
        let request = pb::AcquireLockRequest {
            task_id: task_id.to_owned(),
            coordinator_id: coordinator_id.to_owned(),
            lease: lease.and_then(|l| prost_types::Duration::try_from(l).ok()),
        };
        let response = self.coordinator_stub().acquire_lock(request).await?.into_inner();
        response
            .lock
            .as_ref()
            .map(|l| Lock::from_proto(task_id, l))
            .ok_or_else(|| Error::missing("lock"))
    }

    /// Extends a held lock.
    pub async fn renew_lock(&self, coordinator_id: &str, lock: &Lock, lease: Option<Duration>) -> Result<Lock, Error> {
        let request = pb::RenewLockRequest {
            task_id: lock.task_id.clone(),
            coordinator_id: coordinator_id.to_owned(),
            fencing_token: lock.fencing_token,
            lease: lease.and_then(|l| prost_types::Duration::try_from(l).ok()),
        };
        let response = self.coordinator_stub().renew_lock(request).await?.into_inner();
        response
            .lock
            .as_ref()
            .map(|l| Lock::from_proto(&lock.task_id, l))
            .ok_or_else(|| Error::missing("lock"))
    }

    /// Frees a held lock.
    pub async fn release_lock(&self, coordinator_id: &str, lock: &Lock) -> Result<(), Error> {
        let request = pb::ReleaseLockRequest {
            task_id: lock.task_id.clone(),
            coordinator_id: coordinator_id.to_owned(),
            fencing_token: lock.fencing_token,
        };
        self.coordinator_stub().release_lock(request).await?;
        Ok(())
    }

    /// Answers an agent's input request.
    pub async fn answer(&self, coordinator_id: &str, request_id: &str, answer: Value) -> Result<InputRequest, Error> {
        let request = pb::AnswerInputRequest {
            request_id: request_id.to_owned(),
            coordinator_id: coordinator_id.to_owned(),
            answer: Some(json_to_value(&answer)),
        };
        let response = self.coordinator_stub().answer_input(request).await?.into_inner();
        response
            .input
            .as_ref()
            .map(InputRequest::from_proto)
            .ok_or_else(|| Error::missing("input"))
    }

    /// Interrupts every running task (the seed's global interrupt); returns their ids.
    pub async fn interrupt_all(&self, coordinator_id: &str, reason: &str) -> Result<Vec<String>, Error> {
        let request = pb::InterruptAllRequest {
            coordinator_id: coordinator_id.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(self
            .coordinator_stub()
            .interrupt_all(request)
            .await?
            .into_inner()
            .task_ids)
    }

    /// Resumes every interrupted task; returns their ids.
    pub async fn resume_all(&self, coordinator_id: &str) -> Result<Vec<String>, Error> {
        let request = pb::ResumeAllRequest {
            coordinator_id: coordinator_id.to_owned(),
        };
        Ok(self.coordinator_stub().resume_all(request).await?.into_inner().task_ids)
    }
}

/// What a session may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Subscribe to event streams tied to the session.
    pub streaming: bool,
    /// Interrupt and resume tasks.
    pub interruption: bool,
    /// Send commands and take locks.
    pub task_coordination: bool,
}

impl Capabilities {
    /// Everything a coordinator may do.
    pub fn all() -> Self {
        Self {
            streaming: true,
            interruption: true,
            task_coordination: true,
        }
    }
}

pub use itc_proto::v1::SessionKind;

/// A session as [`Client::open_session`] opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenedSession {
    /// Its lease: it ends unless a call or heartbeat renews it within this.
    pub lease: Duration,
    /// Its generation (each takeover adds one).
    pub generation: u64,
    /// Whether a session of the same id was connected and is now taken over.
    pub taken_over: bool,
}

impl Client {
    /// Opens (or takes over) the session `session_id`. Without heartbeats it lasts as
    /// long as its lease, renewed by every call it makes.
    pub async fn open_session(
        &self,
        session_id: &str,
        kind: SessionKind,
        capabilities: Capabilities,
    ) -> Result<OpenedSession, Error> {
        self.connect_session(session_id, kind, capabilities).await
    }

    /// Opens a session.
    pub(crate) async fn connect_session(
        &self,
        session_id: &str,
        kind: SessionKind,
        capabilities: Capabilities,
    ) -> Result<OpenedSession, Error> {
        let request = pb::ConnectRequest {
            session_id: session_id.to_owned(),
            kind: kind as i32,
            capabilities: Some(pb::Capabilities {
                streaming: capabilities.streaming,
                interruption: capabilities.interruption,
                task_coordination: capabilities.task_coordination,
                background_monitoring: false,
            }),
            lease_ttl: None,
        };
        let response = self.sessions_stub().connect(request).await?.into_inner();
        let session = response.session.ok_or_else(|| Error::missing("session"))?;
        let lease = session
            .lease_ttl
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        Ok(OpenedSession {
            lease,
            generation: session.generation,
            taken_over: response.taken_over,
        })
    }

    /// Ends the session `session_id`.
    pub async fn close_session(&self, session_id: &str) -> Result<(), Error> {
        let request = pb::DisconnectRequest {
            session_id: session_id.to_owned(),
        };
        self.sessions_stub().disconnect(request).await?;
        Ok(())
    }
}
