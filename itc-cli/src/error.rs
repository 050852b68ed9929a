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
    /// The command reached a final state other than the one asked: the agent rejected it,
    /// or did not answer in time (exit 1).
    #[error("{0}")]
    Refused(String),
    /// `--wait` ended before the command reached the state asked (exit 7).
    #[error("{0}")]
    NotReached(String),
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
    /// The exit code: 2 usage, 3 not found, 4 conflict, 5 not allowed, 6 unreachable, 7
    /// not reached in time, 1 anything else.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Conflict(_) => 4,
            CliError::Refused(_) => 1,
            CliError::NotReached(_) => 7,
            CliError::Unreachable { .. } => 6,
            CliError::Io(_) => 1,
            CliError::Client(e) => match e {
                itc_client::Error::InvalidUri { .. } | itc_client::Error::InvalidData { .. } => 2,
                itc_client::Error::Connect(_) => 6,
                itc_client::Error::OutOfRange { .. } => 2,
                // tonic reports its own request timeout as CANCELLED "Timeout expired"
                // (tonic::TimeoutExpired): the server did not answer in time.
                itc_client::Error::Status(s) if s.code() == Code::Cancelled && s.message() == "Timeout expired" => 6,
                _ => match e.code() {
                    Some(Code::InvalidArgument | Code::OutOfRange) => 2,
                    Some(Code::NotFound) => 3,
                    Some(Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists) => 4,
                    Some(Code::Unauthenticated | Code::PermissionDenied) => 5,
                    Some(Code::Unavailable | Code::DeadlineExceeded) => 6,
                    _ => 1,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> CliError {
        CliError::Client(itc_client::Error::Status(tonic::Status::new(code, message)))
    }

    #[test]
    fn codes_scripts_rely_on() {
        let cases = [
            (status(Code::InvalidArgument, "bad"), 2),
            (status(Code::NotFound, "task `x` not found"), 3),
            (status(Code::Aborted, "locked"), 4),
            (status(Code::FailedPrecondition, "finished"), 4),
            (status(Code::PermissionDenied, "no"), 5),
            (status(Code::Unauthenticated, "who?"), 5),
            (status(Code::Unavailable, "down"), 6),
            (status(Code::DeadlineExceeded, "slow"), 6),
            // tonic's own request timeout.
            (status(Code::Cancelled, "Timeout expired"), 6),
            (status(Code::Cancelled, "the client went away"), 1),
            (status(Code::Internal, "oops"), 1),
            (CliError::Refused("rejected".into()), 1),
            (CliError::NotReached("still delivered".into()), 7),
            (CliError::Conflict("answered".into()), 4),
            (CliError::Usage("bad flag".into()), 2),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
