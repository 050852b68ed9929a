//! `itc.v1.CoordinatorService`: coordination, locks and input answers (not implemented
//! yet).

use itc_proto::v1 as pb;
use itc_proto::v1::coordinator_service_server::CoordinatorService;
use tonic::{Request, Response, Status};

use super::status::not_yet;
use crate::core::Core;

/// The CoordinatorService adapter over the core.
#[derive(Debug, Clone)]
pub struct CoordinatorApi {
    #[allow(dead_code)] // used once coordination is implemented
    core: Core,
}

impl CoordinatorApi {
    /// An adapter over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn coordinate(
        &self,
        _request: Request<pb::CoordinateRequest>,
    ) -> Result<Response<pb::CoordinateResponse>, Status> {
        Err(not_yet("CoordinatorService/Coordinate"))
    }

    async fn get_command(
        &self,
        _request: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::GetCommandResponse>, Status> {
        Err(not_yet("CoordinatorService/GetCommand"))
    }

    async fn acquire_lock(
        &self,
        _request: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        Err(not_yet("CoordinatorService/AcquireLock"))
    }

    async fn renew_lock(
        &self,
        _request: Request<pb::RenewLockRequest>,
    ) -> Result<Response<pb::RenewLockResponse>, Status> {
        Err(not_yet("CoordinatorService/RenewLock"))
    }

    async fn release_lock(
        &self,
        _request: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        Err(not_yet("CoordinatorService/ReleaseLock"))
    }

    async fn answer_input(
        &self,
        _request: Request<pb::AnswerInputRequest>,
    ) -> Result<Response<pb::AnswerInputResponse>, Status> {
        Err(not_yet("CoordinatorService/AnswerInput"))
    }

    async fn interrupt_all(
        &self,
        _request: Request<pb::InterruptAllRequest>,
    ) -> Result<Response<pb::InterruptAllResponse>, Status> {
        Err(not_yet("CoordinatorService/InterruptAll"))
    }

    async fn resume_all(
        &self,
        _request: Request<pb::ResumeAllRequest>,
    ) -> Result<Response<pb::ResumeAllResponse>, Status> {
        Err(not_yet("CoordinatorService/ResumeAll"))
    }

    async fn interact(&self, _request: Request<pb::InteractRequest>) -> Result<Response<pb::InteractResponse>, Status> {
        Err(not_yet("CoordinatorService/Interact"))
    }
}
