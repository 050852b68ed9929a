//! The one place where core errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::CoreError;
use crate::store::StoreError;

impl From<CoreError> for Status {
    fn from(err: CoreError) -> Self {
        let message = err.to_string();
        match err {
            CoreError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            CoreError::TaskNotFound { .. } | CoreError::NotFound { .. } => Status::not_found(message),
            CoreError::ResourceExhausted(_) => Status::resource_exhausted(message),
            CoreError::PermissionDenied(_) => Status::permission_denied(message),
            CoreError::Aborted(_) => Status::aborted(message),
            CoreError::FailedPrecondition(_) => Status::failed_precondition(message),
            CoreError::TaskExists { .. } => Status::already_exists(message),
            CoreError::IllegalTransition { .. } | CoreError::TaskFinished { .. } => {
                Status::failed_precondition(message)
            }
            CoreError::OutOfRange { .. } => Status::out_of_range(message),
            CoreError::StreamingDisabled => Status::unavailable(message),
            CoreError::ShuttingDown => Status::unavailable(message),
            CoreError::Store(StoreError::Closed) => Status::unavailable(message),
            CoreError::Store(StoreError::Backend(cause)) => {
                // The cause is logged here, once, and not leaked to clients.
                tracing::error!(%cause, "storage failure");
                Status::internal("storage failure: the change may not be durable")
            }
        }
    }
}
