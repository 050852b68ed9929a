//! `itc.v1.AgentService`: task lifecycle, progress and updates.

use std::time::SystemTime;

use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::authz::Caller;
use super::convert::{self, optional};
use crate::auth::Role;
use crate::core::{CommandState, Core, InputTimeoutAction, NewInput, NewTask, Outcome, TaskError};
use crate::error::CoreError;

/// The AgentService adapter over the core.
#[derive(Debug, Clone)]
pub struct AgentApi {
    core: Core,
}

impl AgentApi {
    /// An adapter over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn start_task(
        &self,
        request: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Agent, "start a task")?;
        caller.acts_as("agent_id", &request.get_ref().agent_id)?;
        let req = request.into_inner();
        let new = NewTask {
            task_id: optional(req.task_id),
            agent_id: req.agent_id,
            description: req.description,
            metadata: convert::struct_field("metadata", req.metadata.as_ref())?,
            priority: req.priority,
            plan: convert::struct_field("plan", req.plan.as_ref())?,
            stall_timeout: convert::duration_field("stall_timeout", req.stall_timeout.as_ref())?,
            pending: req.pending,
        };
        let task = self.core.start_task(new).await?;
        Ok(Response::new(pb::StartTaskResponse {
            task: Some(convert::task(&task, SystemTime::now())),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let ack = self
            .core
            .report_progress(&req.task_id, req.progress, req.message)
            .await?;
        Ok(Response::new(pb::ReportProgressResponse {
            version: ack.version,
            seq: ack.seq,
            status: convert::task_status(ack.status) as i32,
        }))
    }

    async fn publish_update(
        &self,
        request: Request<pb::PublishUpdateRequest>,
    ) -> Result<Response<pb::PublishUpdateResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let data = convert::struct_field("data", req.data.as_ref())?.unwrap_or_default();
        let ack = self.core.publish_update(&req.task_id, data).await?;
        Ok(Response::new(pb::PublishUpdateResponse {
            version: ack.version,
            seq: ack.seq,
            status: convert::task_status(ack.status) as i32,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let result = convert::value_field("result", req.result.as_ref())?;
        let task = self.core.finish_task(&req.task_id, Outcome::Completed(result)).await?;
        Ok(Response::new(pb::CompleteTaskResponse {
            task: Some(convert::task(&task, SystemTime::now())),
        }))
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let error = req
            .error
            .ok_or_else(|| CoreError::invalid("error", "is required (with a message)"))?;
        let error = TaskError {
            message: error.message,
            details: convert::struct_field("error.details", error.details.as_ref())?,
        };
        let task = self.core.finish_task(&req.task_id, Outcome::Failed(error)).await?;
        Ok(Response::new(pb::FailTaskResponse {
            task: Some(convert::task(&task, SystemTime::now())),
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let task = self
            .core
            .finish_task(&req.task_id, Outcome::Cancelled(optional(req.reason)))
            .await?;
        Ok(Response::new(pb::CancelTaskResponse {
            task: Some(convert::task(&task, SystemTime::now())),
        }))
    }

    async fn request_input(
        &self,
        request: Request<pb::RequestInputRequest>,
    ) -> Result<Response<pb::RequestInputResponse>, Status> {
        Caller::of(&request).owns_task(&self.core, &request.get_ref().task_id)?;
        let req = request.into_inner();
        let timeout_action = match pb::InputTimeoutAction::try_from(req.timeout_action) {
            Ok(pb::InputTimeoutAction::Unspecified) => InputTimeoutAction::Expire,
            Ok(pb::InputTimeoutAction::UseDefault) => InputTimeoutAction::UseDefault,
            Ok(pb::InputTimeoutAction::FailTask) => InputTimeoutAction::FailTask,
            Ok(pb::InputTimeoutAction::CancelTask) => InputTimeoutAction::CancelTask,
            Err(_) => {
                return Err(CoreError::invalid(
                    "timeout_action",
                    format!("{} is not an InputTimeoutAction", req.timeout_action),
                )
                .into());
            }
        };
        let new = NewInput {
            schema: convert::struct_field("schema", req.schema.as_ref())?,
            timeout: convert::duration_field("timeout", req.timeout.as_ref())?,
            default_value: convert::value_field("default_value", req.default_value.as_ref())?,
            task_id: req.task_id,
            prompt: req.prompt,
            choices: req.choices,
            timeout_action,
        };
        let input = self.core.request_input(new).await?;
        Ok(Response::new(pb::RequestInputResponse {
            input: Some(convert::input(&input)),
        }))
    }

    async fn acknowledge_command(
        &self,
        request: Request<pb::AcknowledgeCommandRequest>,
    ) -> Result<Response<pb::AcknowledgeCommandResponse>, Status> {
        let caller = Caller::of(&request);
        caller.needs(Role::Agent, "answer a command")?;
        let command = self.core.command(&request.get_ref().command_id)?;
        caller.owns_task(&self.core, &command.task_id)?;
        let req = request.into_inner();
        let outcome = match pb::CommandState::try_from(req.outcome) {
            Ok(pb::CommandState::Applied) => CommandState::Applied,
            Ok(pb::CommandState::Rejected) => CommandState::Rejected,
            _ => {
                return Err(
                    CoreError::invalid("outcome", "must be COMMAND_STATE_APPLIED or COMMAND_STATE_REJECTED").into(),
                );
            }
        };
        let result = convert::value_field("result", req.result.as_ref())?;
        let command = self
            .core
            .acknowledge_command(&req.command_id, outcome, optional(req.reason), result)
            .await?;
        Ok(Response::new(pb::AcknowledgeCommandResponse {
            command: Some(convert::command(&command)),
        }))
    }
}
