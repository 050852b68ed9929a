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
