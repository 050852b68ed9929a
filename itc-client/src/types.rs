//! SDK types: what calls return, in plain Rust with `serde_json` for structured data
//! (the generated protocol types stay behind the API).

use std::time::{Duration, SystemTime};

use itc_proto::json::{struct_to_json, value_to_json};
use itc_proto::v1 as pb;
use serde_json::Value;

pub use itc_proto::v1::EventType;

fn time(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn json_struct(s: Option<&prost_types::Struct>) -> Option<Value> {
    s.and_then(|s| struct_to_json(s).ok()).map(Value::Object)
}

fn json_value(v: Option<&prost_types::Value>) -> Option<Value> {
    v.and_then(|v| value_to_json(v).ok())
}

fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A task's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskStatus {
    /// Created, not started.
    Pending,
    /// Being worked on.
    Running,
    /// Asked to stop at its next checkpoint.
    Interrupted,
    /// Waiting for an answer.
    InputRequired,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl TaskStatus {
    pub(crate) fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::TaskStatus::try_from(value).ok()? {
            pb::TaskStatus::Unspecified => return None,
            pb::TaskStatus::Pending => TaskStatus::Pending,
            pb::TaskStatus::Running => TaskStatus::Running,
            pb::TaskStatus::Interrupted => TaskStatus::Interrupted,
            pb::TaskStatus::InputRequired => TaskStatus::InputRequired,
            pb::TaskStatus::Completed => TaskStatus::Completed,
            pb::TaskStatus::Failed => TaskStatus::Failed,
            pb::TaskStatus::Cancelled => TaskStatus::Cancelled,
        })
    }

    pub(crate) fn to_proto(self) -> pb::TaskStatus {
        match self {
            TaskStatus::Pending => pb::TaskStatus::Pending,
            TaskStatus::Running => pb::TaskStatus::Running,
            TaskStatus::Interrupted => pb::TaskStatus::Interrupted,
            TaskStatus::InputRequired => pb::TaskStatus::InputRequired,
            TaskStatus::Completed => pb::TaskStatus::Completed,
            TaskStatus::Failed => pb::TaskStatus::Failed,
            TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
        }
    }

    /// COMPLETED, FAILED or CANCELLED.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// A task's coordination lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lock {
    /// The task.
    pub task_id: String,
    /// The coordinator holding it.
    pub holder_id: String,
    /// Its fencing token (pass it to coordinate under the lock).
    pub fencing_token: u64,
    /// When the lease runs out unless renewed.
    pub expires: Option<SystemTime>,
}

impl Lock {
    pub(crate) fn from_proto(task_id: &str, l: &pb::TaskLock) -> Self {
        Self {
            task_id: task_id.to_owned(),
            holder_id: l.holder_id.clone(),
            fencing_token: l.fencing_token,
            expires: time(l.expire_time.as_ref()),
        }
    }
}

/// The action of a coordination command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Raise (or set, with `{"priority": n}`) the priority.
    BoostPriority,
    /// Replace the plan with the data.
    ModifyPlan,
    /// Stop at the next checkpoint.
    Interrupt,
    /// Clear an interrupt.
    Resume,
    /// Cancel the task.
    Cancel,
    /// Ask the agent a question.
    Query,
    /// Anything else.
    Custom,
}

impl Action {
    pub(crate) fn to_proto(self) -> pb::CommandAction {
        match self {
            Action::BoostPriority => pb::CommandAction::BoostPriority,
            Action::ModifyPlan => pb::CommandAction::ModifyPlan,
            Action::Interrupt => pb::CommandAction::Interrupt,
            Action::Resume => pb::CommandAction::Resume,
            Action::Cancel => pb::CommandAction::Cancel,
            Action::Query => pb::CommandAction::Query,
            Action::Custom => pb::CommandAction::Custom,
        }
    }

    fn from_proto(value: i32) -> Self {
        match pb::CommandAction::try_from(value) {
            Ok(pb::CommandAction::BoostPriority) => Action::BoostPriority,
            Ok(pb::CommandAction::ModifyPlan) => Action::ModifyPlan,
            Ok(pb::CommandAction::Interrupt) => Action::Interrupt,
            Ok(pb::CommandAction::Resume) => Action::Resume,
            Ok(pb::CommandAction::Cancel) => Action::Cancel,
            Ok(pb::CommandAction::Query) => Action::Query,
            _ => Action::Custom,
        }
    }
}

/// Where a command is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CommandState {
    /// Accepted, not yet pushed to the agent.
    Admitted,
    /// Pushed to the agent.
    Delivered,
    /// Applied by the agent.
    Applied,
    /// Refused by the agent.
    Rejected,
    /// Not answered in time.
    TimedOut,
}

impl CommandState {
    fn from_proto(value: i32) -> Self {
        match pb::CommandState::try_from(value) {
            Ok(pb::CommandState::Delivered) => CommandState::Delivered,
            Ok(pb::CommandState::Applied) => CommandState::Applied,
            Ok(pb::CommandState::Rejected) => CommandState::Rejected,
            Ok(pb::CommandState::TimedOut) => CommandState::TimedOut,
            _ => CommandState::Admitted,
        }
    }

    /// APPLIED, REJECTED or TIMED_OUT.
    pub fn is_final(self) -> bool {
        self >= CommandState::Applied
    }
}

/// A coordination command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Command {
    /// Its id.
    pub id: String,
    /// The task it steers.
    pub task_id: String,
    /// Who sent it.
    pub coordinator_id: String,
    /// What to do.
    pub action: Action,
    /// Its parameters.
    pub data: Option<Value>,
    /// Where it is.
    pub state: CommandState,
    /// Why it was rejected or timed out.
    pub reason: Option<String>,
    /// The agent's answer (for a query).
    pub result: Option<Value>,
}

impl Command {
    pub(crate) fn from_proto(c: &pb::Command) -> Self {
        Self {
            id: c.command_id.clone(),
            task_id: c.task_id.clone(),
            coordinator_id: c.coordinator_id.clone(),
            action: Action::from_proto(c.action),
            data: json_struct(c.data.as_ref()),
            state: CommandState::from_proto(c.state),
            reason: text(&c.reason),
            result: json_value(c.result.as_ref()),
        }
    }
}

/// Where an input request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputState {
    /// Waiting for an answer.
    Open,
    /// Answered.
    Answered,
    /// Its deadline passed (the answer is the default, if it had one).
    Expired,
    /// Its task finished first.
    Cancelled,
}

/// A question an agent asked.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InputRequest {
    /// Its id (answers name it).
    pub id: String,
    /// The task that asks.
    pub task_id: String,
    /// The question.
    pub prompt: String,
    /// Allowed answers, if any.
    pub choices: Vec<String>,
    /// Where it is.
    pub state: InputState,
    /// The answer.
    pub answer: Option<Value>,
    /// Who answered.
    pub answered_by: Option<String>,
    /// When it expires.
    pub deadline: Option<SystemTime>,
}

impl InputRequest {
    pub(crate) fn from_proto(i: &pb::InputRequest) -> Self {
        Self {
            id: i.request_id.clone(),
            task_id: i.task_id.clone(),
            prompt: i.prompt.clone(),
            choices: i.choices.clone(),
            state: match pb::InputState::try_from(i.state) {
                Ok(pb::InputState::Answered) => InputState::Answered,
                Ok(pb::InputState::Expired) => InputState::Expired,
                Ok(pb::InputState::Cancelled) => InputState::Cancelled,
                _ => InputState::Open,
            },
            answer: json_value(i.answer.as_ref()),
            answered_by: text(&i.answered_by),
            deadline: time(i.deadline.as_ref()),
        }
    }
}

/// A task, as the server shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Task {
    /// Its id.
    pub id: String,
    /// The agent running it.
    pub agent_id: String,
    /// What it does.
    pub description: String,
    /// Lifecycle state (`None` if the server sent one this SDK does not know).
    pub status: Option<TaskStatus>,
    /// In [0, 1].
    pub progress: f64,
    /// The agent's latest status line.
    pub status_message: String,
    /// Metadata.
    pub metadata: Option<Value>,
    /// Priority.
    pub priority: i32,
    /// The plan and its version (0: none).
    pub plan: Option<Value>,
    /// The plan's version.
    pub plan_version: u64,
    /// Bumped on every change; usable as `expected_version`.
    pub version: u64,
    /// Running time so far (or in all, once finished).
    pub duration: Duration,
    /// The coordination lock, if held.
    pub lock: Option<Lock>,
    /// The coordinator that last steered it.
    pub controlling_coordinator: Option<String>,
    /// Open questions.
    pub open_inputs: Vec<InputRequest>,
    /// Commands not yet final.
    pub open_commands: Vec<Command>,
    /// The result, once completed.
    pub result: Option<Value>,
    /// The error message, once failed.
    pub error: Option<String>,
    /// Why it was interrupted or cancelled.
    pub reason: Option<String>,
    /// No progress or heartbeat for its stall timeout.
    pub stalled: bool,
    /// Its agent's lease expired.
    pub orphaned: bool,
    /// When it was created.
    pub created: Option<SystemTime>,
    /// When it finished.
    pub finished: Option<SystemTime>,
}

impl Task {
    pub(crate) fn from_proto(t: &pb::Task) -> Self {
        Self {
            id: t.task_id.clone(),
            agent_id: t.agent_id.clone(),
            description: t.description.clone(),
            status: TaskStatus::from_proto(t.status),
            progress: t.progress,
            status_message: t.status_message.clone(),
            metadata: json_struct(t.metadata.as_ref()),
            priority: t.priority,
            plan: t.plan.as_ref().and_then(|p| json_struct(p.content.as_ref())),
            plan_version: t.plan.as_ref().map_or(0, |p| p.version),
            version: t.version,
            duration: t.duration.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
            lock: t.lock.as_ref().map(|l| Lock::from_proto(&t.task_id, l)),
            controlling_coordinator: text(&t.controlling_coordinator),
            open_inputs: t.open_inputs.iter().map(InputRequest::from_proto).collect(),
            open_commands: t.open_commands.iter().map(Command::from_proto).collect(),
            result: json_value(t.result.as_ref()),
            error: t.error.as_ref().map(|e| e.message.clone()),
            reason: text(&t.reason),
            stalled: t.stalled,
            orphaned: t.orphaned,
            created: time(t.create_time.as_ref()),
            finished: time(t.finish_time.as_ref()),
        }
    }
}

/// One event of a subscription (log events have `seq > 0`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// Its place in the global log.
    pub seq: u64,
    /// What happened.
    pub kind: EventType,
    /// When.
    pub time: Option<SystemTime>,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
    /// The coordinator concerned.
    pub coordinator_id: Option<String>,
    /// The command that caused it.
    pub caused_by: Option<String>,
    /// Structured data (a real-time update's payload; a command's data).
    pub data: Option<Value>,
    /// The task's version after it.
    pub task_version: u64,
    /// The task's status after it.
    pub task_status: Option<TaskStatus>,
    /// The task, for lifecycle events and snapshots.
    pub task: Option<Task>,
    /// Progress and status line, for TASK_PROGRESS.
    pub progress: Option<(f64, String)>,
    /// The command, for coordination events.
    pub command: Option<Command>,
    /// The input request, for input events.
    pub input: Option<InputRequest>,
}

impl Event {
    pub(crate) fn from_proto(e: &pb::Event) -> Self {
        let mut event = Self {
            seq: e.seq,
            kind: e.r#type(),
            time: time(e.time.as_ref()),
            task_id: text(&e.task_id),
            agent_id: text(&e.agent_id),
            coordinator_id: text(&e.coordinator_id),
            caused_by: text(&e.caused_by),
            data: json_struct(e.data.as_ref()),
            task_version: e.task_version,
            task_status: TaskStatus::from_proto(e.task_status),
            task: None,
            progress: None,
            command: None,
            input: None,
        };
        match &e.detail {
            Some(pb::event::Detail::Task(t)) => event.task = Some(Task::from_proto(t)),
            Some(pb::event::Detail::Progress(p)) => event.progress = Some((p.progress, p.message.clone())),
            Some(pb::event::Detail::Command(c)) => event.command = Some(Command::from_proto(c)),
            Some(pb::event::Detail::Input(i)) => event.input = Some(InputRequest::from_proto(i)),
            _ => {}
        }
        event
    }
}

/// One page of GetStatus.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StatusPage {
    /// Matching tasks of this page, oldest first.
    pub tasks: Vec<Task>,
    /// The next page's token, if there is one.
    pub next_page_token: Option<String>,
    /// Matching tasks on all pages.
    pub total: u64,
    /// Live tasks, whatever the filters.
    pub active_tasks: u64,
    /// Whether a global interrupt is in force.
    pub global_interrupt: bool,
    /// The service state (the seed's idle / running / interrupted).
    pub state: pb::ServiceState,
    /// Connected sessions.
    pub sessions: Vec<SessionInfo>,
    /// The server's counters.
    pub statistics: pb::Statistics,
}

impl StatusPage {
    pub(crate) fn from_proto(r: pb::GetStatusResponse) -> Self {
        Self {
            tasks: r.tasks.iter().map(Task::from_proto).collect(),
            next_page_token: text(&r.next_page_token),
            total: r.total_size,
            active_tasks: r.active_tasks,
            global_interrupt: r.global_interrupt,
            state: r.state(),
            sessions: r.sessions.iter().map(SessionInfo::from_proto).collect(),
            statistics: r.statistics.unwrap_or_default(),
        }
    }
}

/// A connected session, as GetStatus lists it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session (coordinator or agent) id.
    pub id: String,
    /// Who it is.
    pub kind: pb::SessionKind,
    /// What it may do.
    pub capabilities: crate::Capabilities,
    /// When it connected.
    pub connected: Option<SystemTime>,
    /// Its last call or heartbeat.
    pub last_activity: Option<SystemTime>,
    /// When its lease runs out unless renewed.
    pub lease_expires: Option<SystemTime>,
    /// Its lease.
    pub lease_ttl: Duration,
    /// How many times the id connected (each takeover adds one).
    pub generation: u64,
    /// Its open Subscribe streams.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The tasks whose lock it holds.
    pub locked_task_ids: Vec<String>,
}

impl SessionInfo {
    pub(crate) fn from_proto(s: &pb::Session) -> Self {
        let caps = s.capabilities.unwrap_or_default();
        Self {
            id: s.session_id.clone(),
            kind: s.kind(),
            capabilities: crate::Capabilities {
                streaming: caps.streaming,
                interruption: caps.interruption,
                task_coordination: caps.task_coordination,
            },
            connected: time(s.connect_time.as_ref()),
            last_activity: time(s.last_activity_time.as_ref()),
            lease_expires: time(s.lease_expire_time.as_ref()),
            lease_ttl: s.lease_ttl.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
            generation: s.generation,
            subscriptions: s.subscriptions.iter().map(SubscriptionInfo::from_proto).collect(),
            locked_task_ids: s.locked_task_ids.clone(),
        }
    }
}

/// A session's open Subscribe stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// The subscription's id (as in its STREAM_START).
    pub id: String,
    /// Its task-id filter (empty: all).
    pub task_ids: Vec<String>,
    /// Its agent-id filter (empty: all).
    pub agent_ids: Vec<String>,
    /// Its event-type filter (empty: all).
    pub event_types: Vec<EventType>,
    /// The seq of the last event it was sent.
    pub delivered_seq: u64,
    /// Events it was sent.
    pub delivered_events: u64,
}

impl SubscriptionInfo {
    fn from_proto(s: &pb::SubscriptionInfo) -> Self {
        let filter = s.filter.clone().unwrap_or_default();
        Self {
            id: s.subscription_id.clone(),
            event_types: filter.event_types().collect(),
            task_ids: filter.task_ids,
            agent_ids: filter.agent_ids,
            delivered_seq: s.delivered_seq,
            delivered_events: s.delivered_events,
        }
    }
}
