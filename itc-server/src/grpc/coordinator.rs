//! `itc.v1.CoordinatorService`: coordination commands, locks, input answers, the global
//! interrupt and the plain-words interaction.

use itc_proto::v1 as pb;
use itc_proto::v1::coordinator_service_server::CoordinatorService;
use tonic::{Request, Response, Status};

use super::authz::Caller;
use super::convert::{self, optional};
use crate::auth::Role;
use crate::core::{CommandAction, CommandWait, CoordinateRequest, Core};
use crate::error::CoreError;

/// The CoordinatorService adapter over the core.
#[derive(Debug, Clone)]
pub struct CoordinatorApi {
    core: Core,
}

impl CoordinatorApi {
    /// An adapter over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }
}

fn action(value: i32) -> Result<CommandAction, CoreError> {
    Ok(match pb::CommandAction::try_from(value) {
        Ok(pb::CommandAction::BoostPriority) => CommandAction::BoostPriority,
        Ok(pb::CommandAction::ModifyPlan) => CommandAction::ModifyPlan,
        Ok(pb::CommandAction::Interrupt) => CommandAction::Interrupt,
        Ok(pb::CommandAction::Resume) => CommandAction::Resume,
        Ok(pb::CommandAction::Cancel) => CommandAction::Cancel,
        Ok(pb::CommandAction::Query) => CommandAction::Query,
        Ok(pb::CommandAction::Custom) => CommandAction::Custom,
        Ok(pb::CommandAction::Unspecified) => return Err(CoreError::invalid("action", "is required")),
        Err(_) => return Err(CoreError::invalid("action", format!("{value} is not a CommandAction"))),
    })
}

fn wait(value: i32) -> Result<CommandWait, CoreError> {
    match pb::CommandWait::try_from(value) {
        Ok(pb::CommandWait::Unspecified) => Ok(CommandWait::Admitted),
        Ok(pb::CommandWait::Delivered) => Ok(CommandWait::Delivered),
        Ok(pb::CommandWait::Final) => Ok(CommandWait::Final),
        Err(_) => Err(CoreError::invalid("wait", format!("{value} is not a CommandWait"))),
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn coordinate(
        &self,
        request: Request<pb::CoordinateRequest>,
    ) -> Result<Response<pb::CoordinateResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "coordinate tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        let request = CoordinateRequest {
            action: action(req.action)?,
            data: convert::struct_field("data", req.data.as_ref())?,
            wait: wait(req.wait)?,
            wait_timeout: convert::duration_field("wait_timeout", req.wait_timeout.as_ref())?,
            task_id: req.task_id,
            coordinator_id: req.coordinator_id,
            fencing_token: req.fencing_token,
            expected_version: req.expected_version,
            idempotency_key: optional(req.idempotency_key),
        };
        let command = self.core.coordinate(request).await?;
        Ok(Response::new(pb::CoordinateResponse {
            command: Some(convert::command(&command)),
        }))
    }

    async fn get_command(
        &self,
        request: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::GetCommandResponse>, Status> {
        let command = self.core.command(&request.get_ref().command_id)?;
        // Coordinators see every command; an agent, those of its own tasks.
        let caller = Caller::of(&request);
        if caller.only_agent().is_some() {
            let task = self.core.task(&command.task_id)?;
            caller.sees(&format!("command `{}`", command.id), &task.agent_id)?;
        }
        let command = self.core.durable(command).await?;
        Ok(Response::new(pb::GetCommandResponse {
            command: Some(convert::command(&command)),
        }))
    }

    async fn acquire_lock(
        &self,
        request: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "lock tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        let lease = convert::duration_field("lease", req.lease.as_ref())?;
        let lock = self.core.acquire_lock(&req.task_id, &req.coordinator_id, lease).await?;
        Ok(Response::new(pb::AcquireLockResponse {
            lock: Some(convert::lock(&lock)),
        }))
    }

    async fn renew_lock(
        &self,
        request: Request<pb::RenewLockRequest>,
    ) -> Result<Response<pb::RenewLockResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "lock tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        let lease = convert::duration_field("lease", req.lease.as_ref())?;
        let lock = self
            .core
            .renew_lock(&req.task_id, &req.coordinator_id, req.fencing_token, lease)
            .await?;
        Ok(Response::new(pb::RenewLockResponse {
            lock: Some(convert::lock(&lock)),
        }))
    }

    async fn release_lock(
        &self,
        request: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "lock tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        self.core
            .release_lock(&req.task_id, &req.coordinator_id, req.fencing_token)
            .await?;
        Ok(Response::new(pb::ReleaseLockResponse {}))
    }

    async fn answer_input(
        &self,
        request: Request<pb::AnswerInputRequest>,
    ) -> Result<Response<pb::AnswerInputResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "answer input requests")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        let answer = convert::value_field("answer", req.answer.as_ref())?
            .ok_or_else(|| CoreError::invalid("answer", "is required"))?;
        let input = self
            .core
            .answer_input(&req.request_id, &req.coordinator_id, answer)
            .await?;
        Ok(Response::new(pb::AnswerInputResponse {
            input: Some(convert::input(&input)),
        }))
    }

    async fn interrupt_all(
        &self,
        request: Request<pb::InterruptAllRequest>,
    ) -> Result<Response<pb::InterruptAllResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "interrupt tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let req = request.into_inner();
        let task_ids = self
            .core
            .interrupt_all(&req.coordinator_id, optional(req.reason))
            .await?;
        Ok(Response::new(pb::InterruptAllResponse { task_ids }))
    }

    async fn resume_all(
        &self,
        request: Request<pb::ResumeAllRequest>,
    ) -> Result<Response<pb::ResumeAllResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Coordinator, "resume tasks")?;
        caller.acts_as("coordinator_id", &request.get_ref().coordinator_id)?;
        let task_ids = self.core.resume_all(&request.get_ref().coordinator_id).await?;
        Ok(Response::new(pb::ResumeAllResponse { task_ids }))
    }

    async fn interact(&self, request: Request<pb::InteractRequest>) -> Result<Response<pb::InteractResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(
            Role::Coordinator,
            "interact (it reports on every task and may stop them)",
        )?;
        if !request.get_ref().requestor_id.is_empty() {
            caller.acts_as("requestor_id", &request.get_ref().requestor_id)?;
        }
        let req = request.into_inner();
        let kind = match req.requestor_kind {
            0 => None,
            k => Some(convert::session_kind_from("requestor_kind", k)?),
        };
        let requestor = optional(req.requestor_id);
        let answer = self.core.interact(&req.query, requestor.as_deref(), kind).await?;
        Ok(Response::new(pb::InteractResponse {
            query: answer.query,
            response: answer.response,
            time: Some(convert::timestamp(answer.time)),
            conversation_id: answer.conversation_id,
        }))
    }
}
