//! What can go wrong, and the exit code each maps to (listed in `itc --help`).

use std::process::ExitCode;

use itc_client::Code;

/// An error of the CLI, with the exit code scripts can rely on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line asks for something that cannot be (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The command's target is in a state that refuses it (exit 4).
    #[error("{0}")]
    Conflict(String),
    /// The server could not be reached at the address given (exit 6).
    #[error(
        "cannot reach the ITC server at {addr}: {reason}\n  (is itc-server running there? Set --addr or ITC_ADDR.)"
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// A call failed.
    #[error("{0}")]
    Client(#[from] itc_client::Error),
    /// Writing the output failed (a closed pipe ends quietly; see `main`).
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The exit code: 2 usage, 3 not found, 4 conflict, 5 not allowed, 6 unreachable, 1
    /// anything else.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => 2,
            CliError::Conflict(_) => 4,
            CliError::Unreachable { .. } => 6,
            CliError::Io(_) => 1,
            CliError::Client(e) => match e {
                itc_client::Error::InvalidUri { .. } | itc_client::Error::InvalidData { .. } => 2,
                itc_client::Error::Connect(_) => 6,
                itc_client::Error::OutOfRange { .. } => 2,
                _ => match e.code() {
                    Some(Code::InvalidArgument | Code::OutOfRange) => 2,
                    Some(Code::NotFound) => 3,
                    Some(Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists) => 4,
                    Some(Code::Unauthenticated | Code::PermissionDenied) => 5,
                    Some(Code::Unavailable | Code::DeadlineExceeded) => 6,
                    _ => 1,
                },
            },
        })
    }
}
