//! What SDK calls fail with, and whether a retry can help.

use tonic::Code;

/// Whether the server refused the call with an HTTP/2 GOAWAY: it is draining (shutting
/// down to restart) and tells the client to go elsewhere. h2 fails the streams the server
/// did not take with the GOAWAY's error, which tonic reports as INTERNAL ("h2 protocol
/// error"); gRPC's meaning is UNAVAILABLE.
pub(crate) fn refused_by_go_away(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote();
        }
        source = error.source();
    }
    false
}

/// An SDK error. Each variant says whether the same call may succeed later
/// ([`Error::is_retryable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not a valid URI. Not retryable.
    #[error("invalid server address `{uri}`: {reason}")]
    InvalidUri {
        /// The address given.
        uri: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The server could not be reached. Retryable.
    #[error("cannot connect to the ITC server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server refused the request or failed; the status says why. Retryable only
    /// for UNAVAILABLE and RESOURCE_EXHAUSTED, and for a call the server refused with an
    /// HTTP/2 GOAWAY while draining (tonic reports it as INTERNAL; gRPC means
    /// UNAVAILABLE). A DEADLINE_EXCEEDED call may have taken effect: retry it only if it
    /// is idempotent.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// Data given to a call cannot be sent (e.g. it must be a JSON object). Not
    /// retryable.
    #[error("invalid `{field}`: {reason}")]
    InvalidData {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The events a subscription needs are no longer retained by the server: drop local
    /// state and subscribe again with a snapshot. Not retryable as is.
    #[error("events after seq {after_seq} are no longer retained (oldest retained: {oldest_retained_seq})")]
    OutOfRange {
        /// The resume point.
        after_seq: u64,
        /// The oldest seq the server still has (0 if it did not say).
        oldest_retained_seq: u64,
    },
    /// A coordinator interrupted the task: stop at this checkpoint. Not retryable until
    /// the task is resumed.
    #[error("task `{task_id}` was interrupted: {reason}")]
    Interrupted {
        /// The task.
        task_id: String,
        /// Why, as the coordinator said.
        reason: String,
    },
    /// The session is over (lease lost, taken over, disconnected, server draining).
    /// Retryable by connecting again.
    #[error("the session `{session_id}` ended: {reason}")]
    SessionEnded {
        /// The session.
        session_id: String,
        /// Why.
        reason: String,
    },
    /// The server sent something this SDK cannot use (a missing field…). Not retryable.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::SessionEnded { .. } => true,
            Error::Status(status) => {
                matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) || refused_by_go_away(status)
            }
            Error::InvalidUri { .. }
            | Error::InvalidData { .. }
            | Error::OutOfRange { .. }
            | Error::Interrupted { .. }
            | Error::Protocol(_) => false,
        }
    }

    /// A broken connection or a restarting server: reconnecting may help (wider than
    /// [`Error::is_retryable`]: a cut connection shows as CANCELLED or UNKNOWN).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Status(status) => {
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::ResourceExhausted
                ) || refused_by_go_away(status)
            }
            other => other.is_retryable(),
        }
    }

    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }

    pub(crate) fn missing(field: &str) -> Self {
        Error::Protocol(format!("the server sent no {field}"))
    }
}
