//! Rust client for ITC (Interactive Task Control).
//!
//! This first version covers the task lifecycle and status polling with typed calls; the
//! full SDK (sessions, subscriptions, coordination) builds on it.
//!
//! # Layout
//!
//! - [`Client`]: a cheap `Clone` handle over one HTTP/2 channel.
//! - [`StartTask`], [`StatusQuery`]: options of the calls that take many.
//! - [`Error`]: what a call can fail with, and whether a retry can help.
//! - [`proto`]: the generated protocol types the calls return.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn run() -> Result<(), itc_client::Error> {
//! use itc_client::{Client, StartTask};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let task = client.start_task(StartTask::new("agent-1", "Process large dataset")).await?;
//! client.report_progress(&task.task_id, 0.5, "halfway").await?;
//! client.publish_update(&task.task_id, serde_json::json!({"records": 5000})).await?;
//! client.complete_task(&task.task_id, serde_json::json!({"records": 10000})).await?;
//! let status = client.status(Default::default()).await?;
//! println!("{} tasks", status.total_size);
//! # Ok(()) }
//! ```

use std::time::Duration;

use itc_proto::json::{json_to_struct, json_to_value};
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use tonic::transport::{Channel, Endpoint};

/// The generated protocol types (package `itc.v1`) that calls return.
pub use itc_proto::v1 as proto;

/// What a call failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not a valid URI.
    #[error("invalid server address `{uri}`: {reason}")]
    InvalidUri {
        /// The address given.
        uri: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot connect to the ITC server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// Structured data given to a call cannot be sent (it must be a JSON object).
    #[error("invalid `{field}`: {reason}")]
    InvalidData {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Whether the same call may succeed if retried later (server unavailable or
    /// overloaded). Validation, not-found and state errors never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) => true,
            Error::Status(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
            ),
            Error::InvalidUri { .. } | Error::InvalidData { .. } => false,
        }
    }

    /// The gRPC status code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// Options of [`Client::start_task`].
#[derive(Debug, Clone, Default)]
pub struct StartTask {
    /// The agent running the task.
    pub agent_id: String,
    /// What the task does.
    pub description: String,
    /// The id to use; `None`: the server assigns a UUID.
    pub task_id: Option<String>,
    /// Metadata (a JSON object).
    pub metadata: Option<serde_json::Value>,
    /// Priority.
    pub priority: i32,
    /// Stall timeout; `None`: the server's default.
    pub stall_timeout: Option<Duration>,
    /// Create the task PENDING; the first progress report starts it.
    pub pending: bool,
}

impl StartTask {
    /// A task of `agent_id` doing `description`.
    pub fn new(agent_id: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            description: description.into(),
            ..Self::default()
        }
    }

    /// Uses this id instead of a server-assigned one.
    #[must_use]
    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// Attaches metadata (a JSON object).
    #[must_use]
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Creates the task PENDING.
    #[must_use]
    pub fn pending(mut self) -> Self {
        self.pending = true;
        self
    }
}

/// Filters and page of [`Client::status`].
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// Only tasks in these states; empty: all.
    pub statuses: Vec<pb::TaskStatus>,
    /// Only tasks of these agents; empty: all.
    pub agent_ids: Vec<String>,
    /// Tasks per page; 0: the server's default (100).
    pub page_size: u32,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// A connection to an ITC server. Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct Client {
    agent: AgentServiceClient<Channel>,
    monitor: MonitorServiceClient<Channel>,
}

impl Client {
    /// Connects to `uri` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(uri: impl Into<String>) -> Result<Self, Error> {
        let uri = uri.into();
        let endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| Error::InvalidUri {
            uri,
            reason: e.to_string(),
        })?;
        let channel = endpoint.connect_timeout(Duration::from_secs(10)).connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            agent: AgentServiceClient::new(channel.clone()),
            monitor: MonitorServiceClient::new(channel),
        }
    }

    /// Starts a task; returns it with its id.
    pub async fn start_task(&self, options: StartTask) -> Result<pb::Task, Error> {
        let request = pb::StartTaskRequest {
            task_id: options.task_id.unwrap_or_default(),
            agent_id: options.agent_id,
            description: options.description,
            metadata: options.metadata.map(|m| object("metadata", &m)).transpose()?,
            priority: options.priority,
            plan: None,
            stall_timeout: options
                .stall_timeout
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            pending: options.pending,
        };
        let response = self.agent.clone().start_task(request).await?.into_inner();
        response.task.ok_or_else(|| missing("StartTaskResponse.task"))
    }

    /// Reports progress in [0, 1] with a status line.
    pub async fn report_progress(
        &self,
        task_id: &str,
        progress: f64,
        message: impl Into<String>,
    ) -> Result<pb::ReportProgressResponse, Error> {
        let request = pb::ReportProgressRequest {
            task_id: task_id.to_owned(),
            progress,
            message: message.into(),
        };
        Ok(self.agent.clone().report_progress(request).await?.into_inner())
    }

    /// Publishes structured real-time data (a JSON object) about a task.
    pub async fn publish_update(
        &self,
        task_id: &str,
        data: serde_json::Value,
    ) -> Result<pb::PublishUpdateResponse, Error> {
        let request = pb::PublishUpdateRequest {
            task_id: task_id.to_owned(),
            data: Some(object("data", &data)?),
        };
        Ok(self.agent.clone().publish_update(request).await?.into_inner())
    }

    /// Finishes a task as COMPLETED with a result (any JSON value).
    pub async fn complete_task(&self, task_id: &str, result: serde_json::Value) -> Result<pb::Task, Error> {
        let request = pb::CompleteTaskRequest {
            task_id: task_id.to_owned(),
            result: Some(json_to_value(&result)),
        };
        let response = self.agent.clone().complete_task(request).await?.into_inner();
        response.task.ok_or_else(|| missing("CompleteTaskResponse.task"))
    }

    /// Finishes a task as FAILED with an error message.
    pub async fn fail_task(&self, task_id: &str, message: impl Into<String>) -> Result<pb::Task, Error> {
        let request = pb::FailTaskRequest {
            task_id: task_id.to_owned(),
            error: Some(pb::TaskError {
                message: message.into(),
                details: None,
            }),
        };
        let response = self.agent.clone().fail_task(request).await?.into_inner();
        response.task.ok_or_else(|| missing("FailTaskResponse.task"))
    }

    /// Finishes a task as CANCELLED.
    pub async fn cancel_task(&self, task_id: &str, reason: impl Into<String>) -> Result<pb::Task, Error> {
        let request = pb::CancelTaskRequest {
            task_id: task_id.to_owned(),
            reason: reason.into(),
        };
        let response = self.agent.clone().cancel_task(request).await?.into_inner();
        response.task.ok_or_else(|| missing("CancelTaskResponse.task"))
    }

    /// One task by id.
    pub async fn get_task(&self, task_id: &str) -> Result<pb::Task, Error> {
        let request = pb::GetTaskRequest {
            task_id: task_id.to_owned(),
        };
        let response = self.monitor.clone().get_task(request).await?.into_inner();
        response.task.ok_or_else(|| missing("GetTaskResponse.task"))
    }

    /// One page of tasks with statistics.
    pub async fn status(&self, query: StatusQuery) -> Result<pb::GetStatusResponse, Error> {
        let request = pb::GetStatusRequest {
            statuses: query.statuses.into_iter().map(|s| s as i32).collect(),
            agent_ids: query.agent_ids,
            page_size: i32::try_from(query.page_size).unwrap_or(i32::MAX),
            page_token: query.page_token.unwrap_or_default(),
        };
        Ok(self.monitor.clone().get_status(request).await?.into_inner())
    }
}

fn object(field: &'static str, value: &serde_json::Value) -> Result<prost_types::Struct, Error> {
    match value {
        serde_json::Value::Object(map) => Ok(json_to_struct(map)),
        other => Err(Error::InvalidData {
            field,
            reason: format!("must be a JSON object, not {other}"),
        }),
    }
}

fn missing(field: &str) -> Error {
    Error::Status(tonic::Status::internal(format!("the server sent no {field}")))
}
