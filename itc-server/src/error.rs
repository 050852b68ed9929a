//! The core's errors. They are mapped to `tonic::Status` once, in `grpc::status`.

use crate::core::TaskStatus;
use crate::store::StoreError;

/// Why a core operation was refused. Every variant leaves the state unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request field is malformed, missing or out of range.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument {
        /// The field, as named in the protocol (`progress`, `data.items`…).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No task has this id (or it was forgotten after retention).
    #[error("task `{task_id}` not found")]
    TaskNotFound {
        /// The id asked for.
        task_id: String,
    },
    /// A task with this id exists already.
    #[error("task `{task_id}` already exists")]
    TaskExists {
        /// The duplicate id.
        task_id: String,
    },
    /// The task's state does not allow the operation.
    #[error("task `{task_id}` is {from}: cannot move it to {to}")]
    IllegalTransition {
        /// The task.
        task_id: String,
        /// Its current state.
        from: TaskStatus,
        /// The state the operation would lead to.
        to: TaskStatus,
    },
    /// The task is finished: it takes no more progress or updates.
    #[error("task `{task_id}` is {status}, a final state: cannot {operation}")]
    TaskFinished {
        /// The task.
        task_id: String,
        /// Its final state.
        status: TaskStatus,
        /// What was refused.
        operation: &'static str,
    },
    /// A session, command or input request that does not exist (or is no longer kept).
    #[error("{kind} `{id}` not found{hint}")]
    NotFound {
        /// What was looked for: `session`, `command`, `input request`.
        kind: &'static str,
        /// Its id.
        id: String,
        /// What to do about it (may be empty).
        hint: &'static str,
    },
    /// A limit was reached (sessions, open input requests…).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A limit against abuse was passed: its own reason code, and the setting that sets it.
    #[error("{message}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The request field it concerns, if one does.
        field: Option<String>,
        /// What happened, naming the setting.
        message: String,
    },
    /// The caller may not do this (a capability it did not declare…).
    #[error("{0}")]
    PermissionDenied(String),
    /// A lock or version check failed: someone else holds the lock, a fencing token is
    /// stale, or the task changed since the caller looked.
    #[error("{0}")]
    Aborted(String),
    /// The state of the service or of a command/request does not allow this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The events asked for are not in the log (past retention, or ahead of its head).
    #[error(
        "events after seq {after_seq} are not retained: the oldest retained seq is {oldest_retained_seq} and the head is {head_seq}; resubscribe with a snapshot"
    )]
    OutOfRange {
        /// The resume point asked for.
        after_seq: u64,
        /// The oldest seq still retained.
        oldest_retained_seq: u64,
        /// The newest seq.
        head_seq: u64,
    },
    /// Streaming is disabled by configuration (`enable_streaming = false`).
    #[error("streaming is disabled on this server (enable_streaming = false); poll GetStatus instead")]
    StreamingDisabled,
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed; the change may not be durable.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

impl CoreError {
    /// An [`CoreError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The limits against abuse. Each is a setting with a safe default and answers its own
/// reason code (`google.rpc.ErrorInfo.reason`, domain `itc.v1`) with a gRPC status
/// (INVALID_ARGUMENT for a request's own content, RESOURCE_EXHAUSTED otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A structured payload larger than `max_payload_bytes`.
    PayloadBytes,
    /// A structured payload nested deeper than `max_payload_depth`.
    PayloadDepth,
    /// A filter list longer than `max_filter_entries`.
    FilterEntries,
    /// More Subscribe streams under one session than `max_subscriptions_per_session`.
    SubscriptionsPerSession,
    /// More open input requests on one task than `max_open_inputs_per_task`.
    OpenInputsPerTask,
    /// More calls per second by one principal than `max_requests_per_second`.
    RequestRate,
    /// More coordinator or agent sessions than `max_concurrent_*`.
    Sessions,
}

impl Limit {
    /// The reason code (`ErrorInfo.reason`).
    pub fn reason(self) -> &'static str {
        match self {
            Limit::PayloadBytes => "PAYLOAD_TOO_LARGE",
            Limit::PayloadDepth => "PAYLOAD_TOO_DEEP",
            Limit::FilterEntries => "FILTER_TOO_LONG",
            Limit::SubscriptionsPerSession => "TOO_MANY_SUBSCRIPTIONS",
            Limit::OpenInputsPerTask => "TOO_MANY_OPEN_INPUTS",
            Limit::RequestRate => "RATE_LIMITED",
            Limit::Sessions => "TOO_MANY_SESSIONS",
        }
    }

    /// Whether the request itself is at fault (INVALID_ARGUMENT), rather than a quota
    /// (RESOURCE_EXHAUSTED).
    pub fn is_request_content(self) -> bool {
        matches!(self, Limit::PayloadBytes | Limit::PayloadDepth | Limit::FilterEntries)
    }
}

impl CoreError {
    /// A [`CoreError::LimitExceeded`].
    pub fn limit(limit: Limit, field: Option<&str>, message: impl Into<String>) -> Self {
        CoreError::LimitExceeded {
            limit,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}
