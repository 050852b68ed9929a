//! Conversions between protocol messages and the core's types. Requests are converted and
//! checked here (shape only: a field present, an enum known); the core checks values.

use std::time::{Duration, SystemTime};

use itc_proto::json;
use itc_proto::v1 as pb;

use super::wire::{StatusWire, SubscribeWire};
use crate::core::{self, Event, EventDetail, EventType, JsonMap, Task, TaskStatus};
use crate::error::CoreError;

/// A `Struct` field as a JSON object; a non-finite number names its path.
pub(crate) fn struct_field(field: &str, value: Option<&prost_types::Struct>) -> Result<Option<JsonMap>, CoreError> {
    value
        .map(|s| {
            json::struct_to_json(s)
                .map_err(|e| CoreError::invalid(format!("{field}{}", e.path), "number is NaN or infinite"))
        })
        .transpose()
}

/// A `Value` field as JSON (unset: `None`).
pub(crate) fn value_field(
    field: &str,
    value: Option<&prost_types::Value>,
) -> Result<Option<serde_json::Value>, CoreError> {
    value
        .map(|v| {
            json::value_to_json(v).map_err(|e| {
                let path = if e.path == "/" { String::new() } else { e.path };
                CoreError::invalid(format!("{field}{path}"), "number is NaN or infinite")
            })
        })
        .transpose()
}

/// A `Duration` field; negative or out of range: invalid.
pub(crate) fn duration_field(
    field: &str,
    value: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, CoreError> {
    value
        .map(|d| Duration::try_from(*d).map_err(|_| CoreError::invalid(field, "must be a non-negative duration")))
        .transpose()
}

/// An optional id: empty means absent.
pub(crate) fn optional(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// A status filter entry: UNSPECIFIED or unknown values are refused.
pub(crate) fn task_status_from(field: &str, value: i32) -> Result<TaskStatus, CoreError> {
    Ok(match pb::TaskStatus::try_from(value) {
        Ok(pb::TaskStatus::Pending) => TaskStatus::Pending,
        Ok(pb::TaskStatus::Running) => TaskStatus::Running,
        Ok(pb::TaskStatus::Interrupted) => TaskStatus::Interrupted,
        Ok(pb::TaskStatus::InputRequired) => TaskStatus::InputRequired,
        Ok(pb::TaskStatus::Completed) => TaskStatus::Completed,
        Ok(pb::TaskStatus::Failed) => TaskStatus::Failed,
        Ok(pb::TaskStatus::Cancelled) => TaskStatus::Cancelled,
        Ok(pb::TaskStatus::Unspecified) => {
            return Err(CoreError::invalid(field, "TASK_STATUS_UNSPECIFIED is not a status"));
        }
        Err(_) => return Err(CoreError::invalid(field, format!("{value} is not a TaskStatus"))),
    })
}

/// The protocol's status.
pub(crate) fn task_status(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::Running => pb::TaskStatus::Running,
        TaskStatus::Interrupted => pb::TaskStatus::Interrupted,
        TaskStatus::InputRequired => pb::TaskStatus::InputRequired,
        TaskStatus::Completed => pb::TaskStatus::Completed,
        TaskStatus::Failed => pb::TaskStatus::Failed,
        TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
    }
}

/// The protocol's event type.
pub(crate) fn event_type(kind: EventType) -> pb::EventType {
    use pb::EventType as P;
    match kind {
        EventType::TaskStarted => P::TaskStarted,
        EventType::TaskProgress => P::TaskProgress,
        EventType::TaskCompleted => P::TaskCompleted,
        EventType::TaskFailed => P::TaskFailed,
        EventType::TaskInterrupted => P::TaskInterrupted,
        EventType::CoordinatorQuery => P::CoordinatorQuery,
        EventType::StatusRequest => P::StatusRequest,
        EventType::PlanModification => P::PlanModification,
        EventType::AgentCoordination => P::AgentCoordination,
        EventType::StreamStart => P::StreamStart,
        EventType::StreamData => P::StreamData,
        EventType::StreamEnd => P::StreamEnd,
        EventType::CoordinatorConnected => P::CoordinatorConnected,
        EventType::CoordinatorDisconnected => P::CoordinatorDisconnected,
        EventType::RealTimeUpdate => P::RealTimeUpdate,
        EventType::TaskCreated => P::TaskCreated,
        EventType::TaskResumed => P::TaskResumed,
        EventType::TaskCancelled => P::TaskCancelled,
        EventType::InputRequested => P::InputRequested,
        EventType::InputProvided => P::InputProvided,
        EventType::CoordinationDelivered => P::CoordinationDelivered,
        EventType::CoordinationApplied => P::CoordinationApplied,
        EventType::CoordinationRejected => P::CoordinationRejected,
        EventType::CoordinationTimedOut => P::CoordinationTimedOut,
        EventType::LockAcquired => P::LockAcquired,
        EventType::LockReleased => P::LockReleased,
        EventType::TaskStalled => P::TaskStalled,
        EventType::Heartbeat => P::Heartbeat,
        EventType::TaskOrphaned => P::TaskOrphaned,
        EventType::TaskSnapshot => P::TaskSnapshot,
        EventType::StreamReset => P::StreamReset,
        EventType::TaskRecovered => P::TaskRecovered,
    }
}

pub(crate) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    // Durations here are far below prost's ~292-year limit.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A task as the protocol shows it; `now` computes the running time of live tasks.
pub(crate) fn task(t: &Task, now: SystemTime) -> pb::Task {
    pb::Task {
        task_id: t.id.clone(),
        agent_id: t.agent_id.clone(),
        description: t.description.clone(),
        status: task_status(t.status) as i32,
        progress: t.progress,
        status_message: t.status_message.clone(),
        metadata: t.metadata.as_ref().map(json::json_to_struct),
        priority: t.priority,
        plan: (t.plan.version > 0).then(|| pb::Plan {
            version: t.plan.version,
            content: t.plan.content.as_ref().map(json::json_to_struct),
            updated_by: t.plan.updated_by.clone().unwrap_or_default(),
            update_time: t.plan.update_time.map(timestamp),
        }),
        version: t.version,
        create_time: Some(timestamp(t.create_time)),
        start_time: t.start_time.map(timestamp),
        update_time: Some(timestamp(t.update_time)),
        finish_time: t.finish_time.map(timestamp),
        duration: Some(duration(t.duration(now))),
        lock: t.lock.as_ref().map(lock),
        controlling_coordinator: t.controlling_coordinator.clone().unwrap_or_default(),
        open_inputs: t.open_inputs.iter().map(input).collect(),
        result: t.result.as_ref().map(json::json_to_value),
        error: t.error.as_ref().map(|e| pb::TaskError {
            message: e.message.clone(),
            details: e.details.as_ref().map(json::json_to_struct),
        }),
        reason: t.reason.clone().unwrap_or_default(),
        stalled: t.stalled,
        orphaned: t.orphaned,
        stall_timeout: Some(duration(t.stall_timeout)),
        open_commands: t.open_commands.iter().map(|c| command(c)).collect(),
        last_command: t.last_command.as_deref().map(command),
    }
}

/// A lock as the protocol shows it.
pub(crate) fn lock(l: &core::TaskLock) -> pb::TaskLock {
    pb::TaskLock {
        holder_id: l.holder_id.clone(),
        fencing_token: l.fencing_token,
        expire_time: Some(timestamp(l.expire_time)),
        acquire_time: Some(timestamp(l.acquire_time)),
    }
}

/// A command as the protocol shows it.
pub(crate) fn command(c: &core::Command) -> pb::Command {
    use core::{CommandAction as A, CommandState as S};
    pb::Command {
        command_id: c.id.clone(),
        idempotency_key: c.idempotency_key.clone().unwrap_or_default(),
        task_id: c.task_id.clone(),
        coordinator_id: c.coordinator_id.clone(),
        action: match c.action {
            A::BoostPriority => pb::CommandAction::BoostPriority,
            A::ModifyPlan => pb::CommandAction::ModifyPlan,
            A::Interrupt => pb::CommandAction::Interrupt,
            A::Resume => pb::CommandAction::Resume,
            A::Cancel => pb::CommandAction::Cancel,
            A::Query => pb::CommandAction::Query,
            A::Custom => pb::CommandAction::Custom,
        } as i32,
        data: c.data.as_ref().map(json::json_to_struct),
        state: match c.state {
            S::Admitted => pb::CommandState::Admitted,
            S::Delivered => pb::CommandState::Delivered,
            S::Applied => pb::CommandState::Applied,
            S::Rejected => pb::CommandState::Rejected,
            S::TimedOut => pb::CommandState::TimedOut,
        } as i32,
        reason: c.reason.clone().unwrap_or_default(),
        result: c.result.as_ref().map(json::json_to_value),
        fencing_token: c.fencing_token,
        create_time: Some(timestamp(c.create_time)),
        update_time: Some(timestamp(c.update_time)),
        deadline: Some(timestamp(c.deadline)),
    }
}

/// An input request as the protocol shows it.
pub(crate) fn input(i: &core::InputRequest) -> pb::InputRequest {
    use core::{InputState as S, InputTimeoutAction as A};
    pb::InputRequest {
        request_id: i.id.clone(),
        task_id: i.task_id.clone(),
        agent_id: i.agent_id.clone(),
        prompt: i.prompt.clone(),
        schema: i.schema.as_ref().map(json::json_to_struct),
        choices: i.choices.clone(),
        deadline: i.deadline.map(timestamp),
        timeout_action: match i.timeout_action {
            A::Expire => pb::InputTimeoutAction::Unspecified,
            A::UseDefault => pb::InputTimeoutAction::UseDefault,
            A::FailTask => pb::InputTimeoutAction::FailTask,
            A::CancelTask => pb::InputTimeoutAction::CancelTask,
        } as i32,
        default_value: i.default_value.as_ref().map(json::json_to_value),
        state: match i.state {
            S::Open => pb::InputState::Open,
            S::Answered => pb::InputState::Answered,
            S::Expired => pb::InputState::Expired,
            S::Cancelled => pb::InputState::Cancelled,
        } as i32,
        answer: i.answer.as_ref().map(json::json_to_value),
        answered_by: i.answered_by.clone().unwrap_or_default(),
        create_time: Some(timestamp(i.create_time)),
        close_time: i.close_time.map(timestamp),
    }
}

/// A session as the protocol shows it (without its subscriptions and locks).
pub(crate) fn session(s: &core::SessionInfo) -> pb::Session {
    pb::Session {
        session_id: s.id.clone(),
        kind: session_kind(s.kind) as i32,
        capabilities: Some(pb::Capabilities {
            streaming: s.capabilities.streaming,
            interruption: s.capabilities.interruption,
            task_coordination: s.capabilities.task_coordination,
            background_monitoring: s.capabilities.background_monitoring,
        }),
        connect_time: Some(timestamp(s.connect_time)),
        last_activity_time: Some(timestamp(s.last_activity_time)),
        lease_expire_time: Some(timestamp(s.lease_expire_time)),
        lease_ttl: Some(duration(s.lease_ttl)),
        generation: s.generation,
        subscriptions: Vec::new(),
        locked_task_ids: Vec::new(),
    }
}

/// A session with its subscriptions and locks, as GetStatus lists it.
pub(crate) fn session_view(view: &core::SessionView) -> pb::Session {
    let mut session = session(&view.info);
    session.locked_task_ids.clone_from(&view.locked_task_ids);
    session.subscriptions = view
        .subscriptions
        .iter()
        .map(|sub| pb::SubscriptionInfo {
            subscription_id: sub.id.to_string(),
            filter: Some(filter(&sub.matcher.filter)),
            delivered_seq: sub.delivered_seq.load(std::sync::atomic::Ordering::Relaxed),
            delivered_events: sub.delivered_events.load(std::sync::atomic::Ordering::Relaxed),
            create_time: Some(timestamp(sub.create_time)),
        })
        .collect();
    session
}

pub(crate) fn session_kind(kind: core::SessionKind) -> pb::SessionKind {
    match kind {
        core::SessionKind::Agent => pb::SessionKind::Agent,
        core::SessionKind::Supervisor => pb::SessionKind::Supervisor,
        core::SessionKind::CoordinatorAgent => pb::SessionKind::CoordinatorAgent,
        core::SessionKind::Human => pb::SessionKind::Human,
    }
}

/// A session kind from a request: UNSPECIFIED or unknown values are refused.
pub(crate) fn session_kind_from(field: &str, value: i32) -> Result<core::SessionKind, CoreError> {
    match pb::SessionKind::try_from(value) {
        Ok(pb::SessionKind::Agent) => Ok(core::SessionKind::Agent),
        Ok(pb::SessionKind::Supervisor) => Ok(core::SessionKind::Supervisor),
        Ok(pb::SessionKind::CoordinatorAgent) => Ok(core::SessionKind::CoordinatorAgent),
        Ok(pb::SessionKind::Human) => Ok(core::SessionKind::Human),
        Ok(pb::SessionKind::Unspecified) => Err(CoreError::invalid(
            field,
            "is required (AGENT, SUPERVISOR, COORDINATOR_AGENT or HUMAN)",
        )),
        Err(_) => Err(CoreError::invalid(field, format!("{value} is not a SessionKind"))),
    }
}

/// An event as the protocol shows it.
pub(crate) fn event(e: &Event) -> pb::Event {
    let detail = match &e.detail {
        EventDetail::None => None,
        EventDetail::Task(t) => Some(pb::event::Detail::Task(task(t, e.time))),
        EventDetail::Progress { progress, message } => Some(pb::event::Detail::Progress(pb::ProgressDetail {
            progress: *progress,
            message: message.clone(),
        })),
        EventDetail::Command(c) => Some(pb::event::Detail::Command(command(c))),
        EventDetail::Input(i) => Some(pb::event::Detail::Input(input(i))),
        EventDetail::Lock { lock: l, cause } => Some(pb::event::Detail::Lock(pb::LockDetail {
            lock: Some(lock(l)),
            cause: match cause {
                core::LockCause::Acquired => pb::LockCause::Acquired,
                core::LockCause::Released => pb::LockCause::Released,
                core::LockCause::Expired => pb::LockCause::Expired,
                core::LockCause::Disconnected => pb::LockCause::Disconnected,
                core::LockCause::TaskFinished => pb::LockCause::TaskFinished,
            } as i32,
        })),
        EventDetail::Session { session: s, end } => Some(pb::event::Detail::Session(pb::SessionDetail {
            session: Some(session(s)),
            reason: match end {
                None => pb::SessionEndReason::Unspecified,
                Some(core::SessionEnd::Disconnected) => pb::SessionEndReason::Disconnected,
                Some(core::SessionEnd::LeaseExpired) => pb::SessionEndReason::LeaseExpired,
                Some(core::SessionEnd::ServerDraining) => pb::SessionEndReason::ServerDraining,
            } as i32,
        })),
    };
    pb::Event {
        seq: e.seq,
        r#type: event_type(e.kind) as i32,
        time: Some(timestamp(e.time)),
        task_id: e.task_id.clone().unwrap_or_default(),
        agent_id: e.agent_id.clone().unwrap_or_default(),
        coordinator_id: e.coordinator_id.clone().unwrap_or_default(),
        caused_by: e.caused_by.clone().unwrap_or_default(),
        data: e.data.as_ref().map(json::json_to_struct),
        task_version: e.task_version,
        task_status: e.task_status.map_or(pb::TaskStatus::Unspecified, task_status) as i32,
        detail,
    }
}

/// An event's encoding, made once and kept with the event: every stream that sends it
/// copies the same bytes instead of converting and encoding it again.
pub(crate) fn event_wire(e: &Event) -> bytes::Bytes {
    e.wire
        .get_or_encode(e.seq, || bytes::Bytes::from(prost::Message::encode_to_vec(&event(e))))
}

/// A stream item as Subscribe sends it: log events as their kept encodings.
pub(crate) fn stream_item_wire(item: core::StreamItem) -> SubscribeWire {
    match item {
        core::StreamItem::Event(e) => SubscribeWire::Event(event_wire(&e)),
        other => SubscribeWire::Message(Box::new(stream_item(other))),
    }
}

/// A filter entry: UNSPECIFIED or unknown values are refused.
pub(crate) fn event_type_from(field: &str, value: i32) -> Result<EventType, CoreError> {
    use pb::EventType as P;
    let kind = pb::EventType::try_from(value)
        .map_err(|_| CoreError::invalid(field, format!("{value} is not an EventType")))?;
    Ok(match kind {
        P::Unspecified => return Err(CoreError::invalid(field, "EVENT_TYPE_UNSPECIFIED is not an event type")),
        P::TaskStarted => EventType::TaskStarted,
        P::TaskProgress => EventType::TaskProgress,
        P::TaskCompleted => EventType::TaskCompleted,
        P::TaskFailed => EventType::TaskFailed,
        P::TaskInterrupted => EventType::TaskInterrupted,
        P::CoordinatorQuery => EventType::CoordinatorQuery,
        P::StatusRequest => EventType::StatusRequest,
        P::PlanModification => EventType::PlanModification,
        P::AgentCoordination => EventType::AgentCoordination,
        P::StreamStart => EventType::StreamStart,
        P::StreamData => EventType::StreamData,
        P::StreamEnd => EventType::StreamEnd,
        P::CoordinatorConnected => EventType::CoordinatorConnected,
        P::CoordinatorDisconnected => EventType::CoordinatorDisconnected,
        P::RealTimeUpdate => EventType::RealTimeUpdate,
        P::TaskCreated => EventType::TaskCreated,
        P::TaskResumed => EventType::TaskResumed,
        P::TaskCancelled => EventType::TaskCancelled,
        P::InputRequested => EventType::InputRequested,
        P::InputProvided => EventType::InputProvided,
        P::CoordinationDelivered => EventType::CoordinationDelivered,
        P::CoordinationApplied => EventType::CoordinationApplied,
        P::CoordinationRejected => EventType::CoordinationRejected,
        P::CoordinationTimedOut => EventType::CoordinationTimedOut,
        P::LockAcquired => EventType::LockAcquired,
        P::LockReleased => EventType::LockReleased,
        P::TaskStalled => EventType::TaskStalled,
        P::Heartbeat => EventType::Heartbeat,
        P::TaskOrphaned => EventType::TaskOrphaned,
        P::TaskSnapshot => EventType::TaskSnapshot,
        P::StreamReset => EventType::StreamReset,
        P::TaskRecovered => EventType::TaskRecovered,
    })
}

/// A Subscribe request as a core request.
pub(crate) fn subscribe_request(req: pb::SubscribeRequest) -> Result<core::SubscribeRequest, CoreError> {
    let filter = req.filter.unwrap_or_default();
    let event_types = filter
        .event_types
        .iter()
        .map(|t| event_type_from("filter.event_types", *t))
        .collect::<Result<Vec<_>, _>>()?;
    let session_id = optional(req.session_id);
    if let Some(id) = &session_id {
        super::super::core::validate_id("session_id", id)?;
    }
    Ok(core::SubscribeRequest {
        filter: core::Filter {
            task_ids: filter.task_ids,
            agent_ids: filter.agent_ids,
            event_types,
        },
        after_seq: req.after_seq,
        snapshot: req.snapshot,
        session_id,
    })
}

fn filter(f: &core::Filter) -> pb::SubscriptionFilter {
    pb::SubscriptionFilter {
        task_ids: f.task_ids.clone(),
        agent_ids: f.agent_ids.clone(),
        event_types: f.event_types.iter().map(|t| event_type(*t) as i32).collect(),
    }
}

/// One item of a subscription as a Subscribe message.
pub(crate) fn stream_item(item: core::StreamItem) -> pb::SubscribeResponse {
    use core::StreamItem;
    let now = SystemTime::now();
    let control = |kind: pb::EventType, detail: pb::StreamDetail| pb::Event {
        r#type: kind as i32,
        time: Some(timestamp(now)),
        detail: Some(pb::event::Detail::Stream(detail)),
        ..pb::Event::default()
    };
    let event = match item {
        StreamItem::Event(e) => event(&e),
        StreamItem::Start {
            subscription_id,
            head_seq,
            oldest_retained_seq,
            resume_after_seq,
            filter: f,
        } => control(
            pb::EventType::StreamStart,
            pb::StreamDetail {
                head_seq,
                resume_after_seq,
                oldest_retained_seq,
                filter: Some(filter(&f)),
                subscription_id: subscription_id.to_string(),
                reason: pb::StreamEndReason::Unspecified as i32,
            },
        ),
        StreamItem::Snapshot { task: t, .. } => pb::Event {
            r#type: pb::EventType::TaskSnapshot as i32,
            time: Some(timestamp(now)),
            task_id: t.id.clone(),
            agent_id: t.agent_id.clone(),
            task_version: t.version,
            task_status: task_status(t.status) as i32,
            detail: Some(pb::event::Detail::Task(task(&t, now))),
            ..pb::Event::default()
        },
        StreamItem::Reset {
            oldest_retained_seq,
            resume_after_seq,
        } => control(
            pb::EventType::StreamReset,
            pb::StreamDetail {
                head_seq: resume_after_seq,
                resume_after_seq,
                oldest_retained_seq,
                ..pb::StreamDetail::default()
            },
        ),
        StreamItem::Heartbeat {
            head_seq,
            resume_after_seq,
        } => control(
            pb::EventType::Heartbeat,
            pb::StreamDetail {
                head_seq,
                resume_after_seq,
                ..pb::StreamDetail::default()
            },
        ),
        StreamItem::End {
            reason,
            head_seq,
            resume_after_seq,
        } => control(
            pb::EventType::StreamEnd,
            pb::StreamDetail {
                head_seq,
                resume_after_seq,
                reason: match reason {
                    core::EndReason::MaxDuration => pb::StreamEndReason::MaxDuration,
                    core::EndReason::Draining => pb::StreamEndReason::ServerDraining,
                    core::EndReason::SessionEnded => pb::StreamEndReason::SessionEnded,
                } as i32,
                ..pb::StreamDetail::default()
            },
        ),
    };
    pb::SubscribeResponse { event: Some(event) }
}

/// A GetStatus request as a core query.
pub(crate) fn status_query(req: pb::GetStatusRequest) -> Result<core::StatusQuery, CoreError> {
    let statuses = req
        .statuses
        .iter()
        .map(|s| task_status_from("statuses", *s))
        .collect::<Result<Vec<_>, _>>()?;
    let page_size = usize::try_from(req.page_size)
        .map_err(|_| CoreError::invalid("page_size", format!("{} is negative", req.page_size)))?;
    Ok(core::StatusQuery {
        statuses,
        agent_ids: req.agent_ids,
        page_size,
        page_token: optional(req.page_token),
    })
}

/// A task's encoding without `duration` (which changes while it runs), made once per
/// version of the task and kept with it.
pub(crate) fn task_wire(t: &Task) -> bytes::Bytes {
    t.wire.get_or_encode(t.version, || {
        let mut message = task(t, SystemTime::UNIX_EPOCH);
        message.duration = None;
        bytes::Bytes::from(prost::Message::encode_to_vec(&message))
    })
}

/// A status page as a GetStatus response, its tasks as their kept encodings.
pub(crate) fn status_page(page: core::StatusPage) -> StatusWire {
    let tasks = page
        .tasks
        .iter()
        .map(|t| (task_wire(t), duration(t.duration(page.time))))
        .collect();
    StatusWire {
        rest: status_page_rest(&page),
        tasks,
    }
}

/// Everything of a GetStatus response but its tasks.
fn status_page_rest(page: &core::StatusPage) -> pb::GetStatusResponse {
    let c = &page.counters;
    let [
        pending,
        running,
        interrupted,
        input_required,
        completed,
        failed,
        cancelled,
    ] = page.tasks_by_status;
    pb::GetStatusResponse {
        state: match page.state {
            core::ServiceState::Idle => pb::ServiceState::Idle,
            core::ServiceState::Running => pb::ServiceState::Running,
            core::ServiceState::Interrupted => pb::ServiceState::Interrupted,
        } as i32,
        tasks: Vec::new(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
        total_size: page.total_size,
        active_tasks: page.active_tasks,
        global_interrupt: page.global_interrupt,
        sessions: Vec::new(),
        statistics: Some(pb::Statistics {
            tasks_started: c.tasks_started,
            tasks_completed: c.tasks_completed,
            tasks_interrupted: c.tasks_interrupted,
            coordinator_interactions: c.coordinator_interactions,
            agent_queries: c.agent_queries,
            human_queries: c.human_queries,
            started_at: Some(timestamp(page.started_at)),
            tasks_failed: c.tasks_failed,
            tasks_cancelled: c.tasks_cancelled,
            tasks_by_status: Some(pb::TaskCounts {
                pending,
                running,
                interrupted,
                input_required,
                completed,
                failed,
                cancelled,
            }),
            events_published: c.events_published,
            head_seq: page.head_seq,
            oldest_retained_seq: page.oldest_retained_seq,
            active_streams: page.streams.active,
            events_delivered: page.streams.delivered,
            lagging_subscribers: page.streams.lagging,
            dropped_subscribers: page.streams.dropped,
            connected_sessions: 0,
            commands_admitted: c.commands_admitted,
        }),
        time: Some(timestamp(page.time)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A progress event keeps its seq, type, task fields and typed detail on the wire.
    #[test]
    fn progress_event_to_proto() {
        let e = Event {
            seq: 7,
            kind: EventType::TaskProgress,
            time: SystemTime::UNIX_EPOCH,
            task_id: Some("t".into()),
            agent_id: Some("a".into()),
            coordinator_id: None,
            caused_by: None,
            data: json!({"k": 1}).as_object().cloned(),
            task_version: 3,
            task_status: Some(TaskStatus::Running),
            detail: EventDetail::Progress {
                progress: 0.5,
                message: "half".into(),
            },
            wire: Default::default(),
        };
        let p = event(&e);
        assert_eq!(
            (p.seq, p.r#type, p.task_version),
            (7, pb::EventType::TaskProgress as i32, 3)
        );
        assert_eq!(
            (p.task_id.as_str(), p.agent_id.as_str(), p.coordinator_id.as_str()),
            ("t", "a", "")
        );
        assert_eq!(p.task_status, pb::TaskStatus::Running as i32);
        assert_eq!(
            p.detail,
            Some(pb::event::Detail::Progress(pb::ProgressDetail {
                progress: 0.5,
                message: "half".into()
            }))
        );
        let data = p.data.map(|d| itc_proto::json::struct_to_json(&d));
        assert_eq!(data, Some(Ok(json!({"k": 1}).as_object().cloned().unwrap_or_default())));
    }
}
