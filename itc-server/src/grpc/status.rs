//! The one place where core errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{CoreError, Limit};
use crate::store::StoreError;

/// A limit's status: its code, its reason (`ErrorInfo`), the field (`BadRequest`) when
/// the request's content is at fault, and when to retry (`RetryInfo`) for the rate.
pub(crate) fn limit_status(limit: Limit, field: Option<String>, message: String) -> Status {
    let mut details = ErrorDetails::with_error_info(
        limit.reason(),
        "itc.v1",
        std::collections::HashMap::from([("limit".to_owned(), format!("{limit:?}"))]),
    );
    if let Some(field) = &field {
        details.add_bad_request_violation(field.clone(), message.clone());
    }
    if limit == Limit::RequestRate {
        details.set_retry_info(Some(std::time::Duration::from_secs(1)));
    }
    let code = if limit.is_request_content() {
        Code::InvalidArgument
    } else {
        Code::ResourceExhausted
    };
    Status::with_error_details(code, message, details)
}

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
            CoreError::LimitExceeded { limit, field, .. } => limit_status(limit, field, message),
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
