//! The domain model: tasks and events as the core keeps them (no protobuf, no gRPC).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Free-form structured data (a JSON object).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// A task's lifecycle state. See DESIGN §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Created, not started.
    Pending,
    /// Being worked on.
    Running,
    /// Asked to stop at its next checkpoint.
    Interrupted,
    /// Waiting for an answer to an input request.
    InputRequired,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Interrupted,
        TaskStatus::InputRequired,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// COMPLETED, FAILED and CANCELLED: nothing changes a task after these.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    /// The name used in messages, as in the protocol (`RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Interrupted => "INTERRUPTED",
            TaskStatus::InputRequired => "INPUT_REQUIRED",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task's plan: content and a version bumped on each change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// 0 before any plan was set.
    pub version: u64,
    /// The plan.
    pub content: Option<JsonMap>,
    /// Who set this version.
    pub updated_by: Option<String>,
    /// When.
    pub update_time: Option<SystemTime>,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Human-readable message.
    pub message: String,
    /// Structured details.
    pub details: Option<JsonMap>,
}

/// A task as the core keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id.
    pub id: String,
    /// The agent running it.
    pub agent_id: String,
    /// What it does.
    pub description: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// In [0, 1].
    pub progress: f64,
    /// The agent's latest status line.
    pub status_message: String,
    /// Metadata given at start.
    pub metadata: Option<JsonMap>,
    /// Priority.
    pub priority: i32,
    /// Plan.
    pub plan: Plan,
    /// Bumped on every change.
    pub version: u64,
    /// Created.
    pub create_time: SystemTime,
    /// Started running.
    pub start_time: Option<SystemTime>,
    /// Last changed.
    pub update_time: SystemTime,
    /// Finished.
    pub finish_time: Option<SystemTime>,
    /// The coordinator that last steered it.
    pub controlling_coordinator: Option<String>,
    /// Result, once completed.
    pub result: Option<serde_json::Value>,
    /// Error, once failed.
    pub error: Option<TaskError>,
    /// Why it was interrupted or cancelled.
    pub reason: Option<String>,
    /// Health flag: no progress or heartbeat within `stall_timeout`.
    pub stalled: bool,
    /// Health flag: its agent's lease expired.
    pub orphaned: bool,
    /// Stall timeout.
    pub stall_timeout: Duration,
    /// The seq of the event that created it: its position in listings, oldest first.
    pub create_seq: u64,
}

impl Task {
    /// Running time: from start to finish, or to `now` while live; zero before start.
    pub fn duration(&self, now: SystemTime) -> Duration {
        match self.start_time {
            None => Duration::ZERO,
            Some(start) => self
                .finish_time
                .unwrap_or(now)
                .duration_since(start)
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// The type of an event (the protocol's `EventType`, the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // documented in proto/itc/v1/types.proto
pub enum EventType {
    TaskStarted,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    CoordinatorQuery,
    StatusRequest,
    PlanModification,
    AgentCoordination,
    StreamStart,
    StreamData,
    StreamEnd,
    CoordinatorConnected,
    CoordinatorDisconnected,
    RealTimeUpdate,
    TaskCreated,
    TaskResumed,
    TaskCancelled,
    InputRequested,
    InputProvided,
    CoordinationDelivered,
    CoordinationApplied,
    CoordinationRejected,
    CoordinationTimedOut,
    LockAcquired,
    LockReleased,
    TaskStalled,
    Heartbeat,
    TaskOrphaned,
    TaskSnapshot,
    StreamReset,
}

/// Typed detail of an event, by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventDetail {
    /// No typed detail.
    None,
    /// The task's state after a lifecycle event.
    Task(Box<Task>),
    /// A progress report.
    Progress {
        /// In [0, 1].
        progress: f64,
        /// Status line.
        message: String,
    },
}

/// One entry of the global event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global, strictly increasing, gap-free.
    pub seq: u64,
    /// What happened.
    pub kind: EventType,
    /// When.
    pub time: SystemTime,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
    /// The coordinator concerned.
    pub coordinator_id: Option<String>,
    /// The command that caused it.
    pub caused_by: Option<String>,
    /// Structured data (the agent's payload for REAL_TIME_UPDATE).
    pub data: Option<JsonMap>,
    /// For task events: the task's version after the event.
    pub task_version: u64,
    /// For task events: the task's status after the event.
    pub task_status: Option<TaskStatus>,
    /// Typed detail.
    pub detail: EventDetail,
}
