//! The domain model: tasks and events as the core keeps them (no protobuf, no gRPC).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Free-form structured data (a JSON object).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// A task's lifecycle state. See DESIGN §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Created, not started.
    Pending,
    /// Being worked on.
    Running,
    /// Asked to stop at its next checkpoint.
    Interrupted,
    /// Waiting for an answer to an input request.
    InputRequired,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Interrupted,
        TaskStatus::InputRequired,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Position in [`TaskStatus::ALL`].
    pub fn index(self) -> usize {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Running => 1,
            TaskStatus::Interrupted => 2,
            TaskStatus::InputRequired => 3,
            TaskStatus::Completed => 4,
            TaskStatus::Failed => 5,
            TaskStatus::Cancelled => 6,
        }
    }

    /// COMPLETED, FAILED and CANCELLED: nothing changes a task after these.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    /// The name used in messages, as in the protocol (`RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Interrupted => "INTERRUPTED",
            TaskStatus::InputRequired => "INPUT_REQUIRED",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task's plan: content and a version bumped on each change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// 0 before any plan was set.
    pub version: u64,
    /// The plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<JsonMap>,
    /// Who set this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::core::model::nanos::option_time"
    )]
    pub update_time: Option<SystemTime>,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Human-readable message.
    pub message: String,
    /// Structured details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<JsonMap>,
}

/// A task as the core keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id.
    pub id: String,
    /// The agent running it.
    pub agent_id: String,
    /// What it does.
    pub description: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// In [0, 1].
    pub progress: f64,
    /// The agent's latest status line.
    pub status_message: String,
    /// Metadata given at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
    /// Priority.
    pub priority: i32,
    /// Plan.
    pub plan: Plan,
    /// Bumped on every change.
    pub version: u64,
    /// Created.
    #[serde(with = "crate::core::model::nanos::time")]
    pub create_time: SystemTime,
    /// Started running.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::core::model::nanos::option_time"
    )]
    pub start_time: Option<SystemTime>,
    /// Last changed.
    #[serde(with = "crate::core::model::nanos::time")]
    pub update_time: SystemTime,
    /// Finished.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::core::model::nanos::option_time"
    )]
    pub finish_time: Option<SystemTime>,
    /// The coordinator that last steered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controlling_coordinator: Option<String>,
    /// Result, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Error, once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Why it was interrupted or cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Health flag: no progress or heartbeat within `stall_timeout`.
    pub stalled: bool,
    /// Health flag: its agent's lease expired.
    pub orphaned: bool,
    /// Stall timeout.
    #[serde(with = "crate::core::model::nanos::duration")]
    pub stall_timeout: Duration,
    /// The seq of the event that created it: its position in listings, oldest first.
    pub create_seq: u64,
    /// The coordination lock, while a coordinator holds one. Not stored: locks end with
    /// the server process by design.
    #[serde(skip)]
    pub lock: Option<TaskLock>,
    /// Input requests waiting for an answer.
    #[serde(default)]
    pub open_inputs: Vec<InputRequest>,
    /// Coordination commands not yet in a final state. Shared (`Arc`): copying a task for
    /// a change, an event or the store copies pointers, not commands.
    #[serde(default)]
    pub open_commands: Vec<std::sync::Arc<Command>>,
    /// The last command applied to the task: who changed what.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_command: Option<std::sync::Arc<Command>>,
    /// Its encoding for readers, made once per version of the task (not stored).
    #[serde(skip)]
    pub wire: WireCache,
}

/// A reader's encoding of a task or an event (the gRPC layer keeps its protobuf form
/// here), made at most once per version of the task, so that a page of unchanged tasks is
/// not converted and encoded again on every poll; and once per event, keyed by its seq,
/// however many subscribers it is sent to.
///
/// It is valid for the task as it is: the core clears it whenever it hands the task out
/// to be changed (some changes, such as a lock renewal, do not bump the version, so the
/// clear is what keeps it right), and a copy of the task starts without it. As a last
/// guard, it never answers for a version other than the one it was made for.
#[derive(Default)]
pub struct WireCache(std::sync::OnceLock<(u64, bytes::Bytes)>);

impl WireCache {
    /// The encoding of version `version`, made by `encode` if there is none yet. A cache
    /// made for another version is not used (nor replaced).
    pub fn get_or_encode(&self, version: u64, encode: impl FnOnce() -> bytes::Bytes) -> bytes::Bytes {
        match self.0.get() {
            Some((made_for, bytes)) if *made_for == version => bytes.clone(),
            Some(_) => {
                // Unreachable while every change goes through the core's accessors;
                // never serve a stale encoding if one does not.
                debug_assert!(false, "a task changed without clearing its wire cache");
                encode()
            }
            None => {
                let bytes = encode();
                // Two readers may race here: both made the same bytes.
                let _ = self.0.set((version, bytes.clone()));
                bytes
            }
        }
    }

    /// Forgets the encoding (the task is about to change).
    pub fn clear(&mut self) {
        self.0.take();
    }

    /// Whether an encoding is held.
    pub fn is_set(&self) -> bool {
        self.0.get().is_some()
    }
}

impl Clone for WireCache {
    /// A copy of a task is about to change: it starts without an encoding.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for WireCache {
    /// Not part of a task's value.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "WireCache(set)"
        } else {
            "WireCache(empty)"
        })
    }
}

impl Task {
    /// Whether the task is still being worked on (not finished).
    pub fn is_live(&self) -> bool {
        !self.status.is_terminal()
    }
}

impl Task {
    /// Running time: from start to finish, or to `now` while live; zero before start.
    pub fn duration(&self, now: SystemTime) -> Duration {
        match self.start_time {
            None => Duration::ZERO,
            Some(start) => self
                .finish_time
                .unwrap_or(now)
                .duration_since(start)
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// The type of an event (the protocol's `EventType`, the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // documented in proto/itc/v1/types.proto
pub enum EventType {
    TaskStarted,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    CoordinatorQuery,
    StatusRequest,
    PlanModification,
    AgentCoordination,
    StreamStart,
    StreamData,
    StreamEnd,
    CoordinatorConnected,
    CoordinatorDisconnected,
    RealTimeUpdate,
    TaskCreated,
    TaskResumed,
    TaskCancelled,
    InputRequested,
    InputProvided,
    CoordinationDelivered,
    CoordinationApplied,
    CoordinationRejected,
    CoordinationTimedOut,
    LockAcquired,
    LockReleased,
    TaskStalled,
    Heartbeat,
    TaskOrphaned,
    TaskSnapshot,
    StreamReset,
    TaskRecovered,
}

/// What kind of party a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionKind {
    /// An agent that runs tasks.
    Agent,
    /// A supervising program or agent.
    Supervisor,
    /// An agent that coordinates other agents.
    CoordinatorAgent,
    /// A person.
    Human,
}

impl SessionKind {
    /// Every kind but AGENT counts against `max_concurrent_coordinators`.
    pub fn is_coordinator(self) -> bool {
        self != SessionKind::Agent
    }
}

/// What a session may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// May subscribe to event streams.
    pub streaming: bool,
    /// May interrupt and resume tasks.
    pub interruption: bool,
    /// May send coordination commands and take locks.
    pub task_coordination: bool,
    /// Wants background status updates.
    pub background_monitoring: bool,
}

/// A session as GetStatus and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The coordinator or agent id.
    pub id: String,
    /// Who it is.
    pub kind: SessionKind,
    /// What it may do.
    pub capabilities: Capabilities,
    /// When it connected.
    #[serde(with = "crate::core::model::nanos::time")]
    pub connect_time: SystemTime,
    /// Its last heartbeat or call.
    #[serde(with = "crate::core::model::nanos::time")]
    pub last_activity_time: SystemTime,
    /// When its lease runs out unless renewed.
    #[serde(with = "crate::core::model::nanos::time")]
    pub lease_expire_time: SystemTime,
    /// The lease granted.
    #[serde(with = "crate::core::model::nanos::duration")]
    pub lease_ttl: Duration,
    /// Bumped by each takeover.
    pub generation: u64,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEnd {
    /// Disconnect was called.
    Disconnected,
    /// No heartbeat or call within the lease.
    LeaseExpired,
    /// The server is shutting down.
    ServerDraining,
}

/// A coordination lock: a lease with a fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLock {
    /// The coordinator holding it.
    pub holder_id: String,
    /// Strictly increasing across grants (the seq of the grant's LOCK_ACQUIRED event).
    pub fencing_token: u64,
    /// When the lease runs out unless renewed.
    #[serde(with = "crate::core::model::nanos::time")]
    pub expire_time: SystemTime,
    /// When it was granted.
    #[serde(with = "crate::core::model::nanos::time")]
    pub acquire_time: SystemTime,
}

/// Why a lock changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockCause {
    /// Granted by AcquireLock.
    Acquired,
    /// Released by its holder.
    Released,
    /// The lease ran out.
    Expired,
    /// The holder's session ended.
    Disconnected,
    /// The task finished.
    TaskFinished,
}

/// The action of a coordination command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandAction {
    /// Raise or set the priority.
    BoostPriority,
    /// Replace the plan.
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

impl CommandAction {
    /// The name used in messages and in the seed's coordination data (`boost_priority`).
    pub fn name(self) -> &'static str {
        match self {
            CommandAction::BoostPriority => "boost_priority",
            CommandAction::ModifyPlan => "modify_plan",
            CommandAction::Interrupt => "interrupt",
            CommandAction::Resume => "resume",
            CommandAction::Cancel => "cancel",
            CommandAction::Query => "query",
            CommandAction::Custom => "custom",
        }
    }
}

/// Where a command is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CommandState {
    /// Accepted, not yet pushed to the agent.
    Admitted,
    /// Pushed to the agent's session.
    Delivered,
    /// Applied by the agent (final).
    Applied,
    /// Refused by the agent (final).
    Rejected,
    /// Not answered in time (final).
    TimedOut,
}

impl CommandState {
    /// APPLIED, REJECTED and TIMED_OUT.
    pub fn is_final(self) -> bool {
        self >= CommandState::Applied
    }

    /// The protocol's name.
    pub fn name(self) -> &'static str {
        match self {
            CommandState::Admitted => "ADMITTED",
            CommandState::Delivered => "DELIVERED",
            CommandState::Applied => "APPLIED",
            CommandState::Rejected => "REJECTED",
            CommandState::TimedOut => "TIMED_OUT",
        }
    }
}

/// One coordination command against a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Server-assigned id.
    pub id: String,
    /// The caller's idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The task.
    pub task_id: String,
    /// Who issued it.
    pub coordinator_id: String,
    /// What to do.
    pub action: CommandAction,
    /// Parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonMap>,
    /// Lifecycle state.
    pub state: CommandState,
    /// Why it was rejected or timed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent's answer or result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The lock token it was issued under (0: taken implicitly for the call).
    pub fencing_token: u64,
    /// Admitted.
    #[serde(with = "crate::core::model::nanos::time")]
    pub create_time: SystemTime,
    /// Last state change.
    #[serde(with = "crate::core::model::nanos::time")]
    pub update_time: SystemTime,
    /// When it times out.
    #[serde(with = "crate::core::model::nanos::time")]
    pub deadline: SystemTime,
    /// The task's version that admitting it made: orders the task's open commands, which
    /// the log store keeps by it. 0 in a command written before it existed.
    #[serde(default)]
    pub task_version: u64,
}

/// Where an input request is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputState {
    /// Waiting for an answer.
    Open,
    /// Answered.
    Answered,
    /// The deadline passed.
    Expired,
    /// The task finished first.
    Cancelled,
}

/// What happens at an input request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InputTimeoutAction {
    /// The request expires; the agent decides.
    #[default]
    Expire,
    /// It is answered with its default value.
    UseDefault,
    /// The task fails.
    FailTask,
    /// The task is cancelled.
    CancelTask,
}

/// A question an agent asked a human or coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRequest {
    /// Server-assigned id.
    pub id: String,
    /// The task that asks.
    pub task_id: String,
    /// The agent that asks.
    pub agent_id: String,
    /// The question.
    pub prompt: String,
    /// JSON schema of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<JsonMap>,
    /// Allowed answers.
    pub choices: Vec<String>,
    /// When it expires.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::core::model::nanos::option_time"
    )]
    pub deadline: Option<SystemTime>,
    /// What happens then.
    pub timeout_action: InputTimeoutAction,
    /// The answer USE_DEFAULT gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_value: Option<serde_json::Value>,
    /// Lifecycle state.
    pub state: InputState,
    /// The answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<serde_json::Value>,
    /// Who answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// Asked.
    #[serde(with = "crate::core::model::nanos::time")]
    pub create_time: SystemTime,
    /// Answered or expired.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::core::model::nanos::option_time"
    )]
    pub close_time: Option<SystemTime>,
}

/// Typed detail of an event, by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventDetail {
    /// No typed detail.
    None,
    /// The task's state after a lifecycle event.
    Task(Box<Task>),
    /// A progress report.
    Progress {
        /// In [0, 1].
        progress: f64,
        /// Status line.
        message: String,
    },
    /// A coordination command.
    Command(std::sync::Arc<Command>),
    /// An input request.
    Input(Box<InputRequest>),
    /// A lock change.
    Lock {
        /// The lock granted, or as it was when freed.
        lock: TaskLock,
        /// Why.
        cause: LockCause,
    },
    /// A session change.
    Session {
        /// The session.
        session: Box<SessionInfo>,
        /// For disconnects: why.
        end: Option<SessionEnd>,
    },
}

/// One entry of the global event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global, strictly increasing, gap-free.
    pub seq: u64,
    /// What happened.
    pub kind: EventType,
    /// When.
    #[serde(with = "crate::core::model::nanos::time")]
    pub time: SystemTime,
    /// The task concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The coordinator concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator_id: Option<String>,
    /// The command that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// Structured data (the agent's payload for REAL_TIME_UPDATE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonMap>,
    /// For task events: the task's version after the event.
    pub task_version: u64,
    /// For task events: the task's status after the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_status: Option<TaskStatus>,
    /// Typed detail.
    pub detail: EventDetail,
    /// Its encoding for subscribers, made once (keyed by `seq`) and shared by every
    /// stream that sends the event from the hub's recent log (not stored; an event read
    /// back from the store is encoded again for its reader). An appended event never
    /// changes.
    #[serde(skip)]
    pub wire: WireCache,
}

/// Times and durations as integers of nanoseconds in the stores' JSON (since the Unix
/// epoch, for a time), instead of serde's `{"secs_since_epoch": …, "nanos_since_epoch": …}`
/// and `{"secs": …, "nanos": …}`: a third of the bytes, and cheaper to write and read.
/// Reading accepts both forms, so data written before keeps loading.
pub(crate) mod nanos {
    use std::fmt;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn to_u64<E: serde::ser::Error>(d: Duration) -> Result<u64, E> {
        u64::try_from(d.as_nanos()).map_err(|_| E::custom("a time or duration past the year 2554"))
    }

    /// An integer of nanoseconds made into a `T` by `from`, or `T` as serde's own map
    /// form (written before).
    fn nanos_or_map<'de, D, T>(d: D, expecting: &'static str, from: fn(u64) -> T) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Either<T> {
            expecting: &'static str,
            from: fn(u64) -> T,
        }
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Either<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.expecting)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
                Ok((self.from)(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(Either { expecting, from })
    }

    /// A [`SystemTime`] field.
    pub(crate) mod time {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            let since = time
                .duration_since(UNIX_EPOCH)
                .map_err(|_| serde::ser::Error::custom("a time before 1970"))?;
            s.serialize_u64(to_u64(since)?)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            super::nanos_or_map(d, "nanoseconds since the Unix epoch", |v| {
                UNIX_EPOCH + Duration::from_nanos(v)
            })
        }
    }

    /// An `Option<SystemTime>` field.
    pub(crate) mod option_time {
        use super::*;

        struct Wrapped<'a>(&'a SystemTime);
        impl Serialize for Wrapped<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                super::time::serialize(self.0, s)
            }
        }

        pub(crate) fn serialize<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => s.serialize_some(&Wrapped(time)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
            struct Unwrapped(SystemTime);
            impl<'de> Deserialize<'de> for Unwrapped {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    super::time::deserialize(d).map(Unwrapped)
                }
            }
            Ok(Option::<Unwrapped>::deserialize(d)?.map(|t| t.0))
        }
    }

    /// A [`Duration`] field.
    pub(crate) mod duration {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(to_u64(*duration)?)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            super::nanos_or_map(d, "a duration in nanoseconds", Duration::from_nanos)
        }
    }

    #[cfg(test)]
    mod tests {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};

        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Times {
            #[serde(with = "super::time")]
            at: SystemTime,
            #[serde(with = "super::option_time")]
            maybe: Option<SystemTime>,
            #[serde(with = "super::option_time")]
            never: Option<SystemTime>,
            #[serde(with = "super::duration")]
            took: Duration,
        }

        /// Integers of nanoseconds are written; both they and serde's own forms (what the
        /// stores wrote before) are read back exactly.
        #[test]
        fn nanos_are_written_and_both_forms_read() {
            let at = UNIX_EPOCH + Duration::new(1_796_001_890, 624_880_828);
            let times = Times {
                at,
                maybe: Some(at),
                never: None,
                took: Duration::new(300, 5),
            };
            let json = serde_json::to_string(&times).unwrap();
            assert_eq!(
                json,
                r#"{"at":1796001890624880828,"maybe":1796001890624880828,"never":null,"took":300000000005}"#
            );
            assert_eq!(serde_json::from_str::<Times>(&json).unwrap(), times);
            let old = r#"{"at":{"secs_since_epoch":1796001890,"nanos_since_epoch":624880828},
                "maybe":{"secs_since_epoch":1796001890,"nanos_since_epoch":624880828},
                "never":null,"took":{"secs":300,"nanos":5}}"#;
            assert_eq!(serde_json::from_str::<Times>(old).unwrap(), times);
            assert!(serde_json::from_str::<Times>(r#"{"at":-1,"maybe":null,"never":null,"took":0}"#).is_err());
        }
    }
}
