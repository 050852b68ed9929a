//! Input requests: an agent asks a human or coordinator a question and waits for the
//! answer (the human-in-the-loop part). Any number may be open per task, up to a limit.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::model::{
    EventDetail, EventType, InputRequest, InputState, InputTimeoutAction, JsonMap, TaskError, TaskStatus,
};
use super::sessions::Push;
use super::tasks::Outcome;
use super::timers::Timer;
use super::{Core, State, Tx, validate};
use crate::error::CoreError;

/// Open input requests one task may have.
/// Choices one request may offer.
const MAX_CHOICES: usize = 100;
/// Closed requests kept for GetInput.
const KEPT_CLOSED_INPUTS: usize = 10_000;
/// The longest an input request may wait.
const MAX_INPUT_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A question to ask.
#[derive(Debug, Clone, Default)]
pub struct NewInput {
    /// The task that asks.
    pub task_id: String,
    /// The question.
    pub prompt: String,
    /// JSON schema of the answer.
    pub schema: Option<JsonMap>,
    /// Allowed answers.
    pub choices: Vec<String>,
    /// How long to wait; `None`: no deadline.
    pub timeout: Option<Duration>,
    /// What happens at the deadline.
    pub timeout_action: InputTimeoutAction,
    /// The answer USE_DEFAULT gives.
    pub default_value: Option<serde_json::Value>,
}

impl Core {
    /// Opens an input request; the task becomes INPUT_REQUIRED.
    pub async fn request_input(&self, new: NewInput) -> Result<InputRequest, CoreError> {
        let max = self.inner.config.payloads();
        let max_open = self.inner.config.max_open_inputs_per_task;
        validate::id("task_id", &new.task_id)?;
        validate::required_text("prompt", &new.prompt)?;
        validate::payload("schema", new.schema.as_ref(), max)?;
        validate::value("default_value", new.default_value.as_ref(), max)?;
        if new.choices.len() > MAX_CHOICES {
            return Err(CoreError::invalid("choices", format!("at most {MAX_CHOICES} choices")));
        }
        for choice in &new.choices {
            validate::required_text("choices", choice)?;
        }
        let timeout = new.timeout.filter(|t| !t.is_zero());
        if timeout.is_some_and(|t| t > MAX_INPUT_TIMEOUT) {
            return Err(CoreError::invalid("timeout", "must be at most 30 days"));
        }
        if new.timeout_action != InputTimeoutAction::Expire && timeout.is_none() {
            return Err(CoreError::invalid(
                "timeout",
                "is required when a timeout action is set",
            ));
        }
        if new.timeout_action == InputTimeoutAction::UseDefault && new.default_value.is_none() {
            return Err(CoreError::invalid(
                "default_value",
                "is required by INPUT_TIMEOUT_ACTION_USE_DEFAULT",
            ));
        }
        if let Some(default) = &new.default_value {
            check_choice("default_value", &new.choices, default)?;
        }
        self.write(move |state, tx| {
            let task = state.live_task(&new.task_id, "ask for input")?;
            if !matches!(task.status, TaskStatus::Running | TaskStatus::InputRequired) {
                return Err(CoreError::IllegalTransition {
                    task_id: new.task_id,
                    from: task.status,
                    to: TaskStatus::InputRequired,
                });
            }
            if task.open_inputs.len() >= max_open {
                return Err(CoreError::limit(
                    crate::error::Limit::OpenInputsPerTask,
                    None,
                    format!(
                        "task `{}` already has {max_open} open input requests, the limit \
                         (max_open_inputs_per_task); answer or cancel one first",
                        new.task_id
                    ),
                ));
            }
            let now = tx.time;
            let input = InputRequest {
                id: uuid::Uuid::new_v4().to_string(),
                task_id: new.task_id.clone(),
                agent_id: task.agent_id.clone(),
                prompt: new.prompt,
                schema: new.schema,
                choices: new.choices,
                deadline: timeout.map(|t| now + t),
                timeout_action: new.timeout_action,
                default_value: new.default_value,
                state: InputState::Open,
                answer: None,
                answered_by: None,
                create_time: now,
                close_time: None,
            };
            task.status = TaskStatus::InputRequired;
            task.open_inputs.push(input.clone());
            task.version += 1;
            task.update_time = now;
            tx.event(
                EventType::InputRequested,
                task,
                EventDetail::Input(Box::new(input.clone())),
                None,
            );
            let agent = task.agent_id.clone();
            tx.changed(task);
            state.input_index.insert(input.id.clone(), new.task_id);
            state.touch_session(&agent);
            if let Some(t) = timeout {
                state.arm(Instant::now() + t, Timer::Input(input.id.clone()));
            }
            Ok(input)
        })
        .await
    }

    /// Answers an open input request. Unknown: NOT_FOUND; already closed: refused.
    pub async fn answer_input(
        &self,
        request_id: &str,
        coordinator_id: &str,
        answer: serde_json::Value,
    ) -> Result<InputRequest, CoreError> {
        validate::id("request_id", request_id)?;
        validate::id("coordinator_id", coordinator_id)?;
        validate::value("answer", Some(&answer), self.inner.config.payloads())?;
        self.write(|state, tx| {
            let Some(task_id) = state.input_index.get(request_id).cloned() else {
                return Err(match state.closed_inputs.get(request_id) {
                    Some(done) => CoreError::FailedPrecondition(format!(
                        "input request `{request_id}` is already closed ({:?}{})",
                        done.state,
                        done.answered_by
                            .as_ref()
                            .map(|b| format!(" by `{b}`"))
                            .unwrap_or_default()
                    )),
                    None => input_not_found(request_id),
                });
            };
            if let Some(open) = state
                .task_by_id(&task_id)
                .and_then(|t| t.open_inputs.iter().find(|i| i.id == request_id))
            {
                check_choice("answer", &open.choices, &answer)?;
            }
            state.touch_session(coordinator_id);
            state
                .close_input(tx, &task_id, request_id, Some(coordinator_id), |input, now| {
                    input.state = InputState::Answered;
                    input.answer = Some(answer);
                    input.answered_by = Some(coordinator_id.to_owned());
                    input.close_time = Some(now);
                })
                .ok_or_else(|| input_not_found(request_id))
        })
        .await
    }

    /// The input request `request_id`, open or closed (within retention).
    pub fn input(&self, request_id: &str) -> Result<InputRequest, CoreError> {
        validate::id("request_id", request_id)?;
        let state = self.state();
        if let Some(task_id) = state.input_index.get(request_id)
            && let Some(open) = state
                .task_by_id(task_id)
                .and_then(|t| t.open_inputs.iter().find(|i| i.id == request_id))
        {
            return Ok(open.clone());
        }
        state
            .closed_inputs
            .get(request_id)
            .cloned()
            .ok_or_else(|| input_not_found(request_id))
    }
}

fn input_not_found(request_id: &str) -> CoreError {
    CoreError::NotFound {
        kind: "input request",
        id: request_id.to_owned(),
        hint: "",
    }
}

/// With choices, a value must be one of them (as a JSON string).
fn check_choice(field: &str, choices: &[String], value: &serde_json::Value) -> Result<(), CoreError> {
    if choices.is_empty() || value.as_str().is_some_and(|v| choices.iter().any(|c| c == v)) {
        return Ok(());
    }
    Err(CoreError::invalid(
        field,
        format!("{value} is not one of the choices {choices:?}"),
    ))
}

impl State {
    /// Closes an open input request (`change` sets its final state), records
    /// INPUT_PROVIDED, returns the task to RUNNING once nothing is open, and pushes the
    /// request to the agent.
    fn close_input(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        request_id: &str,
        by: Option<&str>,
        change: impl FnOnce(&mut InputRequest, SystemTime),
    ) -> Option<InputRequest> {
        let now = tx.time;
        let task = self.task_mut(task_id)?;
        let at = task.open_inputs.iter().position(|i| i.id == request_id)?;
        let mut input = task.open_inputs.remove(at);
        change(&mut input, now);
        if task.open_inputs.is_empty() && task.status == TaskStatus::InputRequired {
            task.status = TaskStatus::Running;
        }
        task.version += 1;
        task.update_time = now;
        let detail = EventDetail::Input(Box::new(input.clone()));
        tx.event_by(EventType::InputProvided, task, detail, None, by, None);
        let agent = task.agent_id.clone();
        tx.changed(task);
        self.input_index.remove(request_id);
        self.keep_closed_input(tx, input.clone());
        self.push_to_agent(&agent, Push::Input(Box::new(input.clone())));
        Some(input)
    }

    /// Keeps a closed request for GetInput, within retention.
    pub(crate) fn keep_closed_input(&mut self, tx: &mut Tx, input: InputRequest) {
        tx.batch.closed_inputs.push(input.clone());
        self.closed_input_order.push_back(input.id.clone());
        self.closed_inputs.insert(input.id.clone(), input);
        while self.closed_input_order.len() > KEPT_CLOSED_INPUTS {
            if let Some(old) = self.closed_input_order.pop_front() {
                self.closed_inputs.remove(&old);
            }
        }
    }

    /// An input request's deadline passed: apply its timeout action.
    pub(crate) fn expire_input(&mut self, tx: &mut Tx, request_id: &str, _now: Instant) {
        let Some(task_id) = self.input_index.get(request_id).cloned() else {
            return;
        };
        let Some(input) = self.close_input(tx, &task_id, request_id, None, |input, now| {
            input.state = InputState::Expired;
            input.close_time = Some(now);
            if input.timeout_action == InputTimeoutAction::UseDefault {
                input.answer = input.default_value.clone();
            }
        }) else {
            return;
        };
        let outcome = match input.timeout_action {
            InputTimeoutAction::FailTask => Outcome::Failed(TaskError {
                message: format!("input request `{request_id}` expired unanswered"),
                details: None,
            }),
            InputTimeoutAction::CancelTask => {
                Outcome::Cancelled(Some(format!("input request `{request_id}` expired unanswered")))
            }
            InputTimeoutAction::Expire | InputTimeoutAction::UseDefault => return,
        };
        let max_finished = self.max_finished;
        if let Err(e) = self.finish(tx, &task_id, outcome, max_finished, None) {
            tracing::debug!(error = %e, "input timeout could not finish its task");
        }
    }
}
