//! End-to-end: sessions and heartbeats, locks with fencing, coordination commands, the
//! seed's interrupt/resume, input requests, and what GetStatus shows of them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, TestServer, next_event};
use itc_proto::json::{json_to_struct, json_to_value, value_to_json};
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_proto::v1::session_service_client::SessionServiceClient;
use itc_server::config::Settings;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// Raw stubs of every service over one channel.
#[derive(Clone)]
struct Itc {
    agent: AgentServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    coord: CoordinatorServiceClient<Channel>,
    monitor: MonitorServiceClient<Channel>,
}

impl Itc {
    async fn new(server: &TestServer) -> Self {
        let channel = server.channel().await;
        Self {
            agent: AgentServiceClient::new(channel.clone()),
            sessions: SessionServiceClient::new(channel.clone()),
            coord: CoordinatorServiceClient::new(channel.clone()),
            monitor: MonitorServiceClient::new(channel),
        }
    }

    async fn connect(&self, id: &str, kind: pb::SessionKind, caps: pb::Capabilities) -> pb::ConnectResponse {
        self.try_connect(id, kind, caps, None).await.unwrap()
    }

    async fn try_connect(
        &self,
        id: &str,
        kind: pb::SessionKind,
        caps: pb::Capabilities,
        ttl: Option<Duration>,
    ) -> Result<pb::ConnectResponse, tonic::Status> {
        let request = pb::ConnectRequest {
            session_id: id.into(),
            kind: kind as i32,
            capabilities: Some(caps),
            lease_ttl: ttl.map(|t| prost_types::Duration::try_from(t).unwrap()),
        };
        Ok(self.sessions.clone().connect(request).await?.into_inner())
    }

    async fn coordinator(&self, id: &str) -> pb::ConnectResponse {
        self.connect(id, pb::SessionKind::Supervisor, all_caps()).await
    }

    async fn start(&self, task_id: &str, agent_id: &str) -> pb::Task {
        let request = pb::StartTaskRequest {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            description: format!("work of {agent_id}"),
            ..Default::default()
        };
        self.agent
            .clone()
            .start_task(request)
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }

    async fn task(&self, task_id: &str) -> pb::Task {
        let request = pb::GetTaskRequest {
            task_id: task_id.into(),
        };
        self.monitor
            .clone()
            .get_task(request)
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }

    async fn interact(&self, request: pb::InteractRequest) -> pb::InteractResponse {
        self.coord.clone().interact(request).await.unwrap().into_inner()
    }

    async fn status(&self) -> pb::GetStatusResponse {
        self.monitor
            .clone()
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    async fn acquire(&self, task_id: &str, coordinator: &str) -> Result<pb::TaskLock, tonic::Status> {
        let request = pb::AcquireLockRequest {
            task_id: task_id.into(),
            coordinator_id: coordinator.into(),
            lease: None,
        };
        Ok(self
            .coord
            .clone()
            .acquire_lock(request)
            .await?
            .into_inner()
            .lock
            .unwrap())
    }

    async fn coordinate(&self, request: pb::CoordinateRequest) -> Result<pb::Command, tonic::Status> {
        Ok(self
            .coord
            .clone()
            .coordinate(request)
            .await?
            .into_inner()
            .command
            .unwrap())
    }

    async fn ack(&self, command_id: &str, outcome: pb::CommandState, result: Option<serde_json::Value>) -> pb::Command {
        let request = pb::AcknowledgeCommandRequest {
            command_id: command_id.into(),
            outcome: outcome as i32,
            reason: if outcome == pb::CommandState::Rejected {
                "cannot do that now".into()
            } else {
                String::new()
            },
            result: result.as_ref().map(json_to_value),
        };
        self.agent
            .clone()
            .acknowledge_command(request)
            .await
            .unwrap()
            .into_inner()
            .command
            .unwrap()
    }

    /// A subscription to every event.
    async fn watch(&self) -> Watch {
        let mut stream = self
            .monitor
            .clone()
            .subscribe(pb::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        let start = next_event(&mut stream).await;
        assert_eq!(start.r#type(), pb::EventType::StreamStart);
        Watch { stream }
    }

    async fn heartbeat(&self, session_id: &str) -> Beat {
        let (tx, rx) = mpsc::channel(16);
        tx.send(ping(session_id)).await.unwrap();
        let stream = self
            .sessions
            .clone()
            .heartbeat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut beat = Beat { tx, stream };
        assert!(matches!(beat.next().await, pb::heartbeat_response::Message::Lease(_)));
        beat
    }
}

fn all_caps() -> pb::Capabilities {
    pb::Capabilities {
        streaming: true,
        interruption: true,
        task_coordination: true,
        background_monitoring: false,
    }
}

fn ping(session_id: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        session_id: session_id.into(),
        task_ids: Vec::new(),
        generation: 0,
    }
}

fn command(
    task_id: &str,
    coordinator: &str,
    action: pb::CommandAction,
    data: serde_json::Value,
) -> pb::CoordinateRequest {
    pb::CoordinateRequest {
        task_id: task_id.into(),
        coordinator_id: coordinator.into(),
        action: action as i32,
        data: data.as_object().map(json_to_struct),
        ..Default::default()
    }
}

struct Watch {
    stream: tonic::Streaming<pb::SubscribeResponse>,
}

impl Watch {
    /// The first event of `kind` (earlier ones are skipped), within the deadline.
    async fn until(&mut self, kind: pb::EventType) -> pb::Event {
        loop {
            let event = next_event(&mut self.stream).await;
            if event.r#type() == kind {
                return event;
            }
        }
    }
}

/// A client's side of a Heartbeat stream.
struct Beat {
    tx: mpsc::Sender<pb::HeartbeatRequest>,
    stream: tonic::Streaming<pb::HeartbeatResponse>,
}

impl Beat {
    async fn next(&mut self) -> pb::heartbeat_response::Message {
        tokio::time::timeout(DEADLINE, self.stream.next())
            .await
            .expect("a heartbeat message before the deadline")
            .expect("the stream goes on")
            .expect("no error")
            .message
            .unwrap()
    }

    /// The next push (skipping lease renewals).
    async fn push(&mut self) -> pb::heartbeat_response::Message {
        loop {
            let message = self.next().await;
            if !matches!(message, pb::heartbeat_response::Message::Lease(_)) {
                return message;
            }
        }
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    match result {
        Err(status) => (status.code(), status.message().to_owned()),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Connect and Disconnect emit COORDINATOR_CONNECTED / _DISCONNECTED; coordinator and
/// agent sessions have their own limits; bad kinds and unknown sessions are refused.
#[tokio::test]
async fn connect_disconnect_and_limits() {
    let server = TestServer::start_with(Settings {
        max_concurrent_coordinators: 2,
        max_concurrent_agents: 3,
        ..common::memory()
    })
    .await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;

    let first = itc.coordinator("sup-1").await;
    let session = first.session.unwrap();
    assert_eq!((session.session_id.as_str(), session.generation), ("sup-1", 1));
    assert!(!first.taken_over);
    assert!(session.lease_expire_time.is_some() && session.lease_ttl.is_some());
    let connected = watch.until(pb::EventType::CoordinatorConnected).await;
    assert_eq!(connected.coordinator_id, "sup-1");

    itc.connect("human-1", pb::SessionKind::Human, all_caps()).await;
    let (c, message) = code(
        itc.try_connect("coord-3", pb::SessionKind::CoordinatorAgent, all_caps(), None)
            .await,
    );
    assert_eq!(c, Code::ResourceExhausted);
    assert!(message.contains("max_concurrent_coordinators"), "{message}");
    // Agents count apart.
    for i in 0..3 {
        itc.connect(&format!("agent-{i}"), pb::SessionKind::Agent, Default::default())
            .await;
    }
    let (c, message) = code(
        itc.try_connect("agent-9", pb::SessionKind::Agent, Default::default(), None)
            .await,
    );
    assert_eq!(c, Code::ResourceExhausted);
    assert!(message.contains("max_concurrent_agents"), "{message}");

    let disconnect = |id: &str| pb::DisconnectRequest { session_id: id.into() };
    itc.sessions.clone().disconnect(disconnect("sup-1")).await.unwrap();
    let gone = watch.until(pb::EventType::CoordinatorDisconnected).await;
    let Some(pb::event::Detail::Session(detail)) = gone.detail else {
        panic!("session detail");
    };
    assert_eq!(detail.reason(), pb::SessionEndReason::Disconnected);
    // A coordinator slot is free again.
    itc.coordinator("coord-3").await;
    let (c, _) = code(itc.sessions.clone().disconnect(disconnect("sup-1")).await);
    assert_eq!(c, Code::NotFound);
    let (c, message) = code(
        itc.try_connect("x", pb::SessionKind::Unspecified, all_caps(), None)
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{message}");
    assert_eq!(itc.status().await.statistics.unwrap().connected_sessions, 5);
}

/// The same id connecting again takes the session over: its locks and subscriptions
/// survive, and its old Heartbeat stream is told TAKEN_OVER.
#[tokio::test]
async fn takeover_keeps_locks_and_subscriptions() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("sup").await;
    itc.start("t1", "agent").await;
    let lock = itc.acquire("t1", "sup").await.unwrap();
    let mut sub = itc
        .monitor
        .clone()
        .subscribe(pb::SubscribeRequest {
            session_id: "sup".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    next_event(&mut sub).await; // STREAM_START
    let mut old_beat = itc.heartbeat("sup").await;

    let again = itc.coordinator("sup").await;
    assert!(again.taken_over);
    assert_eq!(again.session.unwrap().generation, 2);
    let notice = old_beat.push().await;
    let pb::heartbeat_response::Message::Notice(notice) = notice else {
        panic!("expected a notice, got {notice:?}");
    };
    assert_eq!(notice.kind(), pb::NoticeKind::TakenOver);

    // The lock is still held with the same token; the subscription still delivers.
    let status = itc.status().await;
    let session = status.sessions.iter().find(|s| s.session_id == "sup").unwrap();
    assert_eq!(session.locked_task_ids, vec!["t1"]);
    assert_eq!(session.subscriptions.len(), 1);
    assert_eq!(itc.task("t1").await.lock.unwrap().fencing_token, lock.fencing_token);
    itc.agent
        .clone()
        .report_progress(pb::ReportProgressRequest {
            task_id: "t1".into(),
            progress: 0.5,
            message: String::new(),
        })
        .await
        .unwrap();
    let event = loop {
        let e = next_event(&mut sub).await;
        if e.seq > 0 {
            break e;
        }
    };
    assert_eq!(event.r#type(), pb::EventType::CoordinatorConnected);
}

/// Heartbeats keep a session alive past its TTL; without them the lease runs out: the
/// session is disconnected (LEASE_EXPIRED), its lock released, its stream ended, its
/// agent's live tasks flagged ORPHANED, and its heartbeat stream told LEASE_LOST.
#[tokio::test]
async fn lease_expiry_releases_and_orphans() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;
    // The agent pings every 100 ms against a 1 s lease: slack for a loaded machine.
    let agent_ttl = Some(Duration::from_secs(1));
    itc.try_connect("agent-a", pb::SessionKind::Agent, Default::default(), agent_ttl)
        .await
        .unwrap();
    let sup_ttl = Some(Duration::from_millis(300));
    itc.try_connect("sup", pb::SessionKind::Supervisor, all_caps(), sup_ttl)
        .await
        .unwrap();
    itc.start("t1", "agent-a").await;
    itc.acquire("t1", "sup").await.unwrap();
    let mut sup_stream = itc
        .monitor
        .clone()
        .subscribe(pb::SubscribeRequest {
            session_id: "sup".into(),
            filter: Some(pb::SubscriptionFilter {
                task_ids: vec!["none".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    next_event(&mut sup_stream).await;

    // The agent heartbeats every 100 ms and stays; the supervisor does not.
    let mut beat = itc.heartbeat("agent-a").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let pinger = {
        let tx = beat.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if tx.send(ping("agent-a")).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let released = watch.until(pb::EventType::LockReleased).await;
    let Some(pb::event::Detail::Lock(lock)) = released.detail else {
        panic!("lock detail");
    };
    assert_eq!(lock.cause(), pb::LockCause::Disconnected);
    let gone = watch.until(pb::EventType::CoordinatorDisconnected).await;
    assert_eq!(gone.coordinator_id, "sup");
    let Some(pb::event::Detail::Session(detail)) = gone.detail else {
        panic!("session detail");
    };
    assert_eq!(detail.reason(), pb::SessionEndReason::LeaseExpired);
    let end = loop {
        let e = next_event(&mut sup_stream).await;
        if e.r#type() == pb::EventType::StreamEnd {
            break e;
        }
    };
    let Some(pb::event::Detail::Stream(stream)) = end.detail else {
        panic!("stream detail");
    };
    assert_eq!(stream.reason(), pb::StreamEndReason::SessionEnded);

    // Past two of its TTLs the agent is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = itc.status().await;
    assert_eq!(
        status
            .sessions
            .iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        vec!["agent-a"]
    );

    // Now the agent goes quiet too.
    let _ = stop.send(());
    pinger.await.unwrap();
    let notice = beat.push().await;
    let pb::heartbeat_response::Message::Notice(notice) = notice else {
        panic!("expected a notice, got {notice:?}");
    };
    assert_eq!(notice.kind(), pb::NoticeKind::LeaseLost);
    let orphaned = watch.until(pb::EventType::TaskOrphaned).await;
    assert_eq!(orphaned.task_id, "t1");
    assert!(itc.task("t1").await.orphaned);
    // The agent's next report clears the flag.
    itc.agent
        .clone()
        .report_progress(pb::ReportProgressRequest {
            task_id: "t1".into(),
            progress: 0.1,
            message: String::new(),
        })
        .await
        .unwrap();
    assert!(!itc.task("t1").await.orphaned);
}

/// Every call of a session refreshes it: a coordinator that never heartbeats but keeps
/// calling stays connected past its TTL.
#[tokio::test]
async fn calls_refresh_the_session() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.try_connect(
        "sup",
        pb::SessionKind::Supervisor,
        all_caps(),
        Some(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    itc.start("t1", "agent").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let request = command("t1", "sup", pb::CommandAction::Custom, json!({"n": 1}));
        itc.coordinate(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(itc.status().await.sessions.len(), 1);
}

/// A RUNNING task with no progress past its stall timeout is flagged STALLED (event and
/// flag); its next progress report clears the flag.
#[tokio::test]
async fn stalled_task_is_flagged() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;
    let request = pb::StartTaskRequest {
        task_id: "slow".into(),
        agent_id: "agent".into(),
        description: "slow work".into(),
        stall_timeout: Some(prost_types::Duration::try_from(Duration::from_millis(200)).unwrap()),
        ..Default::default()
    };
    itc.agent.clone().start_task(request).await.unwrap();
    let stalled = watch.until(pb::EventType::TaskStalled).await;
    assert_eq!(stalled.task_id, "slow");
    assert!(itc.task("slow").await.stalled);
    itc.agent
        .clone()
        .report_progress(pb::ReportProgressRequest {
            task_id: "slow".into(),
            progress: 0.2,
            message: "alive".into(),
        })
        .await
        .unwrap();
    assert!(!itc.task("slow").await.stalled);
}

/// Locks: a grant returns a fencing token; another holder is refused naming holder and
/// expiry; renew and release need the current token; tokens strictly increase; an
/// expired lock goes to the next coordinator with a higher token, and the first one's
/// stale token is refused.
#[tokio::test]
async fn locks_with_fencing_tokens() {
    let server = TestServer::start_with(Settings {
        coordination_timeout: Duration::from_millis(400),
        ..common::memory()
    })
    .await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;
    itc.coordinator("a").await;
    itc.coordinator("b").await;
    itc.start("t1", "agent").await;

    let first = itc.acquire("t1", "a").await.unwrap();
    assert_eq!(first.holder_id, "a");
    let acquired = watch.until(pb::EventType::LockAcquired).await;
    assert_eq!(acquired.seq, first.fencing_token, "the token is the grant's seq");
    let (c, message) = code(itc.acquire("t1", "b").await);
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("locked by `a` until"), "{message}");

    let renew = |token| pb::RenewLockRequest {
        task_id: "t1".into(),
        coordinator_id: "a".into(),
        fencing_token: token,
        lease: None,
    };
    let (c, message) = code(itc.coord.clone().renew_lock(renew(first.fencing_token + 100)).await);
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("stale"), "{message}");
    itc.coord.clone().renew_lock(renew(first.fencing_token)).await.unwrap();
    let release = |who: &str, token| pb::ReleaseLockRequest {
        task_id: "t1".into(),
        coordinator_id: who.into(),
        fencing_token: token,
    };
    itc.coord
        .clone()
        .release_lock(release("a", first.fencing_token))
        .await
        .unwrap();
    let released = watch.until(pb::EventType::LockReleased).await;
    let Some(pb::event::Detail::Lock(detail)) = released.detail else {
        panic!("lock detail");
    };
    assert_eq!(detail.cause(), pb::LockCause::Released);

    // A new grant, left to expire: b takes it over with a higher token.
    let second = itc.acquire("t1", "a").await.unwrap();
    assert!(second.fencing_token > first.fencing_token);
    let expired = watch.until(pb::EventType::LockReleased).await;
    let Some(pb::event::Detail::Lock(detail)) = expired.detail else {
        panic!("lock detail");
    };
    assert_eq!(detail.cause(), pb::LockCause::Expired);
    let third = itc.acquire("t1", "b").await.unwrap();
    assert!(third.fencing_token > second.fencing_token);
    let mut stale = command("t1", "a", pb::CommandAction::Custom, json!({}));
    stale.fencing_token = second.fencing_token;
    let (c, message) = code(itc.coordinate(stale).await);
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("locked by `b`"), "{message}");
    let (c, _) = code(itc.coord.clone().release_lock(release("a", second.fencing_token)).await);
    assert_eq!(c, Code::Aborted);
}

/// Two coordinators racing for one task's lock: exactly one wins, every round.
#[tokio::test]
async fn racing_coordinators_exactly_one_wins() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("a").await;
    itc.coordinator("b").await;
    for round in 0..20 {
        let task = format!("race-{round}");
        itc.start(&task, "agent").await;
        let (ra, rb) = tokio::join!(itc.acquire(&task, "a"), itc.acquire(&task, "b"));
        let wins = [ra.is_ok(), rb.is_ok()];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "round {round}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert_eq!(loser.unwrap_err().code(), Code::Aborted);
    }
}

/// Coordinate: the lock is taken for the call when free; another holder, a stale token or
/// a mismatched expected_version is ABORTED; an idempotency key applies a retry once.
#[tokio::test]
async fn coordinate_lock_version_and_idempotency() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("a").await;
    itc.coordinator("b").await;
    let task = itc.start("t1", "agent").await;

    // Free: implicit lock, applied at once (boost).
    let mut boost = command("t1", "a", pb::CommandAction::BoostPriority, json!({"priority": 5}));
    boost.expected_version = Some(task.version);
    let cmd = itc.coordinate(boost.clone()).await.unwrap();
    assert_eq!(cmd.state(), pb::CommandState::Admitted);
    let after = itc.task("t1").await;
    assert_eq!((after.priority, after.version), (5, task.version + 1));
    assert_eq!(after.controlling_coordinator, "a");
    let last = after.last_command.unwrap();
    assert_eq!(
        (last.coordinator_id.as_str(), last.action()),
        ("a", pb::CommandAction::BoostPriority)
    );

    // The same expected_version again is now stale.
    let (c, message) = code(itc.coordinate(boost).await);
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("not the expected"), "{message}");

    // Held by b: a is refused, naming the holder.
    let lock = itc.acquire("t1", "b").await.unwrap();
    let (c, message) = code(
        itc.coordinate(command("t1", "a", pb::CommandAction::Custom, json!({})))
            .await,
    );
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("locked by `b`"), "{message}");
    let mut with_token = command("t1", "b", pb::CommandAction::Custom, json!({}));
    with_token.fencing_token = lock.fencing_token;
    assert_eq!(
        itc.coordinate(with_token.clone()).await.unwrap().fencing_token,
        lock.fencing_token
    );
    with_token.fencing_token = lock.fencing_token - 1;
    assert_eq!(code(itc.coordinate(with_token).await).0, Code::Aborted);

    // Idempotency: the retry returns the first command and changes nothing more.
    let mut plan = command("t1", "b", pb::CommandAction::ModifyPlan, json!({"steps": ["a", "b"]}));
    plan.idempotency_key = "plan-1".into();
    // The holder passes its token (0 would let a stale process of b through).
    let (c, message) = code(itc.coordinate(plan.clone()).await);
    assert_eq!(c, Code::Aborted);
    assert!(message.contains("pass it"), "{message}");
    plan.fencing_token = lock.fencing_token;
    let one = itc.coordinate(plan.clone()).await.unwrap();
    let version = itc.task("t1").await.version;
    let two = itc.coordinate(plan.clone()).await.unwrap();
    assert_eq!(one.command_id, two.command_id);
    // The same key for another action is a mistake, not a retry.
    plan.action = pb::CommandAction::Custom as i32;
    let (c, message) = code(itc.coordinate(plan).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.contains("idempotency_key"), "{message}");
    let task = itc.task("t1").await;
    assert_eq!(task.version, version);
    assert_eq!(task.plan.unwrap().version, 1);
}

/// With coordination disabled, Coordinate answers FAILED_PRECONDITION.
#[tokio::test]
async fn coordination_disabled() {
    let server = TestServer::start_with(Settings {
        enable_agent_coordination: false,
        ..common::memory()
    })
    .await;
    let itc = Itc::new(&server).await;
    itc.coordinator("a").await;
    itc.start("t1", "agent").await;
    let (c, message) = code(
        itc.coordinate(command("t1", "a", pb::CommandAction::Custom, json!({})))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert!(message.contains("enable_agent_coordination"), "{message}");
}

/// Capabilities are enforced: no `interruption`, no interrupt; no `task_coordination`,
/// no lock.
#[tokio::test]
async fn capabilities_are_enforced() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    let watcher = pb::Capabilities {
        streaming: true,
        task_coordination: true,
        ..Default::default()
    };
    itc.connect("watcher", pb::SessionKind::Human, watcher).await;
    itc.connect("mute", pb::SessionKind::Human, Default::default()).await;
    itc.start("t1", "agent").await;
    let (c, message) = code(
        itc.coordinate(command("t1", "watcher", pb::CommandAction::Interrupt, json!({})))
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    assert!(message.contains("interruption"), "{message}");
    let (c, message) = code(itc.acquire("t1", "mute").await);
    assert_eq!(c, Code::PermissionDenied);
    assert!(message.contains("task_coordination"), "{message}");
    assert_eq!(itc.task("t1").await.status(), pb::TaskStatus::Running);
}

/// A command's lifecycle: ADMITTED, DELIVERED when pushed on the agent's heartbeat
/// (within milliseconds, not at its next ping), then APPLIED or REJECTED by the agent, or
/// TIMED_OUT; every stage is an event; Coordinate can wait for the final state; a query
/// is answered back.
#[tokio::test]
async fn command_lifecycle_and_push() {
    let server = TestServer::start_with(Settings {
        coordination_timeout: Duration::from_millis(500),
        ..common::memory()
    })
    .await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;
    itc.coordinator("sup").await;
    itc.connect("agent", pb::SessionKind::Agent, Default::default()).await;
    itc.start("t1", "agent").await;
    let mut beat = itc.heartbeat("agent").await;

    // Interrupt: the task is INTERRUPTED at once and the agent hears it at once.
    let sent = Instant::now();
    let cmd = itc
        .coordinate(command(
            "t1",
            "sup",
            pb::CommandAction::Interrupt,
            json!({"reason": "check this"}),
        ))
        .await
        .unwrap();
    let pushed = beat.push().await;
    let elapsed = sent.elapsed();
    let pb::heartbeat_response::Message::Command(pushed) = pushed else {
        panic!("expected a command, got {pushed:?}");
    };
    assert_eq!(pushed.command_id, cmd.command_id);
    assert_eq!(pushed.state(), pb::CommandState::Delivered);
    assert!(elapsed < Duration::from_secs(2), "pushed after {elapsed:?}");
    let task = itc.task("t1").await;
    assert_eq!(
        (task.status(), task.reason.as_str()),
        (pb::TaskStatus::Interrupted, "check this")
    );
    assert_eq!(
        watch.until(pb::EventType::AgentCoordination).await.caused_by,
        cmd.command_id
    );
    assert_eq!(
        watch.until(pb::EventType::TaskInterrupted).await.caused_by,
        cmd.command_id
    );
    assert_eq!(
        watch.until(pb::EventType::CoordinationDelivered).await.caused_by,
        cmd.command_id
    );
    let applied = itc.ack(&cmd.command_id, pb::CommandState::Applied, None).await;
    assert_eq!(applied.state(), pb::CommandState::Applied);
    watch.until(pb::EventType::CoordinationApplied).await;
    // Answered twice: refused.
    let again = itc
        .agent
        .clone()
        .acknowledge_command(pb::AcknowledgeCommandRequest {
            command_id: cmd.command_id.clone(),
            outcome: pb::CommandState::Rejected as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(code(again).0, Code::FailedPrecondition);

    // Resume, waiting for the final state while the agent answers.
    let waiter = {
        let itc = itc.clone();
        tokio::spawn(async move {
            let mut resume = command("t1", "sup", pb::CommandAction::Resume, json!({}));
            resume.wait = pb::CommandWait::Final as i32;
            itc.coordinate(resume).await.unwrap()
        })
    };
    let pb::heartbeat_response::Message::Command(resume) = beat.push().await else {
        panic!("expected the resume command");
    };
    itc.ack(&resume.command_id, pb::CommandState::Rejected, None).await;
    let done = waiter.await.unwrap();
    assert_eq!(
        (done.state(), done.reason.as_str()),
        (pb::CommandState::Rejected, "cannot do that now")
    );
    assert_eq!(itc.task("t1").await.status(), pb::TaskStatus::Running);

    // A query answered back.
    let question = itc
        .coordinate(command(
            "t1",
            "sup",
            pb::CommandAction::Query,
            json!({"question": "ETA?"}),
        ))
        .await
        .unwrap();
    let pb::heartbeat_response::Message::Command(q) = beat.push().await else {
        panic!("expected the query");
    };
    assert_eq!(q.action(), pb::CommandAction::Query);
    itc.ack(
        &q.command_id,
        pb::CommandState::Applied,
        Some(json!({"eta_seconds": 30})),
    )
    .await;
    let answered = itc
        .coord
        .clone()
        .get_command(pb::GetCommandRequest {
            command_id: question.command_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap();
    assert_eq!(
        value_to_json(&answered.result.unwrap()).unwrap(),
        json!({"eta_seconds": 30})
    );

    // Never answered: TIMED_OUT after coordination_timeout.
    let ignored = itc
        .coordinate(command("t1", "sup", pb::CommandAction::Custom, json!({"x": 1})))
        .await
        .unwrap();
    let timed_out = watch.until(pb::EventType::CoordinationTimedOut).await;
    assert_eq!(timed_out.caused_by, ignored.command_id);
    let Some(pb::event::Detail::Command(c)) = timed_out.detail else {
        panic!("command detail");
    };
    assert_eq!(c.state(), pb::CommandState::TimedOut);
}

/// The seed's verbs: interrupt all (ids, global interrupt, INTERRUPTED service state),
/// resume all, and cancel as a terminal state; the statistics count them.
#[tokio::test]
async fn interrupt_all_resume_all_and_cancel() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("sup").await;
    for i in 0..3 {
        itc.start(&format!("t{i}"), "agent").await;
    }
    let request = pb::InterruptAllRequest {
        coordinator_id: "sup".into(),
        reason: String::new(),
    };
    let mut ids = itc
        .coord
        .clone()
        .interrupt_all(request)
        .await
        .unwrap()
        .into_inner()
        .task_ids;
    ids.sort();
    assert_eq!(ids, vec!["t0", "t1", "t2"]);
    let status = itc.status().await;
    assert!(status.global_interrupt);
    assert_eq!(status.state(), pb::ServiceState::Interrupted);
    assert!(
        status
            .tasks
            .iter()
            .all(|t| t.status() == pb::TaskStatus::Interrupted && t.reason == "Global interrupt")
    );
    let stats = status.statistics.unwrap();
    assert_eq!(stats.tasks_interrupted, 3);

    let request = pb::ResumeAllRequest {
        coordinator_id: "sup".into(),
    };
    let resumed = itc
        .coord
        .clone()
        .resume_all(request)
        .await
        .unwrap()
        .into_inner()
        .task_ids;
    assert_eq!(resumed.len(), 3);
    let status = itc.status().await;
    assert!(!status.global_interrupt);
    assert!(status.tasks.iter().all(|t| t.status() == pb::TaskStatus::Running));

    let cancel = itc
        .coordinate(command(
            "t1",
            "sup",
            pb::CommandAction::Cancel,
            json!({"reason": "not needed"}),
        ))
        .await
        .unwrap();
    let task = itc.task("t1").await;
    assert_eq!(
        (task.status(), task.reason.as_str()),
        (pb::TaskStatus::Cancelled, "not needed")
    );
    assert_eq!(task.last_command.unwrap().command_id, cancel.command_id);
    let (c, _) = code(
        itc.coordinate(command("t1", "sup", pb::CommandAction::Resume, json!({})))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    let stats = itc.status().await.statistics.unwrap();
    assert_eq!(
        (
            stats.tasks_cancelled,
            stats.commands_admitted,
            stats.coordinator_interactions
        ),
        (1, 7, 7)
    );
}

/// Input requests: the task goes INPUT_REQUIRED; several may be open; an answer by id is
/// pushed to the agent; a wrong choice, a second answer or an unknown id is refused; at
/// the deadline the timeout action applies.
#[tokio::test]
async fn input_requests() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("human").await;
    itc.connect("agent", pb::SessionKind::Agent, Default::default()).await;
    itc.start("t1", "agent").await;
    let mut beat = itc.heartbeat("agent").await;
    let ask = |prompt: &str, choices: &[&str]| pb::RequestInputRequest {
        task_id: "t1".into(),
        prompt: prompt.into(),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    let approve = itc
        .agent
        .clone()
        .request_input(ask("Deploy to production?", &["yes", "no"]))
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    let name = itc
        .agent
        .clone()
        .request_input(ask("Name the release", &[]))
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    let task = itc.task("t1").await;
    assert_eq!(task.status(), pb::TaskStatus::InputRequired);
    assert_eq!(task.open_inputs.len(), 2);

    let answer = |id: &str, value: serde_json::Value| pb::AnswerInputRequest {
        request_id: id.into(),
        coordinator_id: "human".into(),
        answer: Some(json_to_value(&value)),
    };
    let (c, message) = code(
        itc.coord
            .clone()
            .answer_input(answer(&approve.request_id, json!("maybe")))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.contains("choices"), "{message}");
    itc.coord
        .clone()
        .answer_input(answer(&approve.request_id, json!("yes")))
        .await
        .unwrap();
    let pb::heartbeat_response::Message::Input(pushed) = beat.push().await else {
        panic!("expected the answered input");
    };
    assert_eq!(
        (pushed.request_id.as_str(), pushed.state()),
        (approve.request_id.as_str(), pb::InputState::Answered)
    );
    assert_eq!(value_to_json(&pushed.answer.unwrap()).unwrap(), json!("yes"));
    // Still one open: still INPUT_REQUIRED.
    assert_eq!(itc.task("t1").await.status(), pb::TaskStatus::InputRequired);
    let (c, _) = code(
        itc.coord
            .clone()
            .answer_input(answer(&approve.request_id, json!("no")))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    let (c, _) = code(
        itc.coord
            .clone()
            .answer_input(answer("no-such-request", json!("x")))
            .await,
    );
    assert_eq!(c, Code::NotFound);
    itc.coord
        .clone()
        .answer_input(answer(&name.request_id, json!("v1.2")))
        .await
        .unwrap();
    assert!(matches!(beat.push().await, pb::heartbeat_response::Message::Input(i) if i.request_id == name.request_id));
    assert_eq!(itc.task("t1").await.status(), pb::TaskStatus::Running);
    let fetched = itc
        .monitor
        .clone()
        .get_input(pb::GetInputRequest {
            request_id: name.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    assert_eq!(
        (fetched.state(), fetched.answered_by.as_str()),
        (pb::InputState::Answered, "human")
    );

    // Deadlines: the default answer, then a task failed by its timeout action.
    let mut with_default = ask("Retry?", &["yes", "no"]);
    with_default.timeout = Some(prost_types::Duration::try_from(Duration::from_millis(200)).unwrap());
    with_default.timeout_action = pb::InputTimeoutAction::UseDefault as i32;
    with_default.default_value = Some(json_to_value(&json!("no")));
    let retry = itc
        .agent
        .clone()
        .request_input(with_default)
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    let pb::heartbeat_response::Message::Input(expired) = beat.push().await else {
        panic!("expected the expired input");
    };
    assert_eq!(
        (expired.request_id.as_str(), expired.state()),
        (retry.request_id.as_str(), pb::InputState::Expired)
    );
    assert_eq!(value_to_json(&expired.answer.unwrap()).unwrap(), json!("no"));
    let mut failing = ask("Continue?", &[]);
    failing.timeout = Some(prost_types::Duration::try_from(Duration::from_millis(200)).unwrap());
    failing.timeout_action = pb::InputTimeoutAction::FailTask as i32;
    itc.agent.clone().request_input(failing).await.unwrap();
    beat.push().await;
    let task = itc.task("t1").await;
    assert_eq!(task.status(), pb::TaskStatus::Failed);
    assert!(task.error.unwrap().message.contains("expired unanswered"));
}

/// Interact answers the seed's keywords and counts queries by the requester's kind.
#[tokio::test]
async fn interact_keyword_router() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    let ask = |query: &str, kind: pb::SessionKind| pb::InteractRequest {
        query: query.into(),
        requestor_id: String::new(),
        requestor_kind: kind as i32,
    };
    let idle = itc.interact(ask("What's the status?", pb::SessionKind::Human)).await;
    assert_eq!(idle.response, "I'm currently idle. No active tasks running.");
    assert_eq!(idle.conversation_id, 1);
    itc.start("t1", "agent").await;
    let busy = itc.interact(ask("progress?", pb::SessionKind::CoordinatorAgent)).await;
    assert!(
        busy.response
            .starts_with("Currently running 1 task(s):\nTask 'work of agent' is 0% complete"),
        "{}",
        busy.response
    );
    // Stopping everything needs a connected session with the interruption capability.
    let anonymous = itc
        .coord
        .clone()
        .interact(ask("please halt", pb::SessionKind::Human))
        .await;
    assert_eq!(code(anonymous).0, Code::PermissionDenied);
    itc.coordinator("boss").await;
    let as_boss = |query: &str, kind: pb::SessionKind| pb::InteractRequest {
        requestor_id: "boss".into(),
        ..ask(query, kind)
    };
    let stop = itc.interact(as_boss("please halt", pb::SessionKind::Human)).await;
    assert_eq!(stop.response, "Interrupted 1 active task(s): t1");
    let resume = itc.interact(as_boss("proceed", pb::SessionKind::Agent)).await;
    assert_eq!(resume.response, "Cleared interrupt flags. Tasks can resume.");
    let other = itc.interact(ask("hello", pb::SessionKind::Human)).await;
    assert!(
        other.response.starts_with("I understand you asked: 'hello'."),
        "{}",
        other.response
    );
    assert_eq!(other.conversation_id, 5);
    let stats = itc.status().await.statistics.unwrap();
    assert_eq!((stats.human_queries, stats.agent_queries), (3, 2));
    assert_eq!(itc.task("t1").await.status(), pb::TaskStatus::Running);
}

/// GetStatus shows sessions (kind, capabilities, subscriptions, locks, last activity),
/// open commands and open input requests.
#[tokio::test]
async fn status_shows_sessions_commands_and_inputs() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("sup").await;
    itc.start("t1", "agent").await;
    itc.acquire("t1", "sup").await.unwrap();
    let _sub = itc
        .monitor
        .clone()
        .subscribe(pb::SubscribeRequest {
            session_id: "sup".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let lock = itc.task("t1").await.lock.unwrap();
    let mut custom = command("t1", "sup", pb::CommandAction::Custom, json!({"k": "v"}));
    custom.fencing_token = lock.fencing_token;
    itc.coordinate(custom).await.unwrap();
    itc.agent
        .clone()
        .request_input(pb::RequestInputRequest {
            task_id: "t1".into(),
            prompt: "ok?".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = itc.status().await;
    let session = &status.sessions[0];
    assert_eq!(session.session_id, "sup");
    assert_eq!(session.kind(), pb::SessionKind::Supervisor);
    assert!(session.capabilities.unwrap().interruption);
    assert_eq!(session.locked_task_ids, vec!["t1"]);
    assert_eq!(session.subscriptions.len(), 1);
    assert!(session.last_activity_time.is_some());
    let task = &status.tasks[0];
    assert_eq!(task.lock.as_ref().unwrap().holder_id, "sup");
    assert_eq!(task.open_commands.len(), 1);
    assert_eq!(task.open_commands[0].state(), pb::CommandState::Admitted);
    assert_eq!(task.open_inputs.len(), 1);
    assert_eq!(status.statistics.unwrap().connected_sessions, 1);
}

/// On shutdown a session's Heartbeat stream is told SERVER_DRAINING and ends, so the
/// server stops promptly.
#[tokio::test]
async fn heartbeat_told_server_draining() {
    let mut server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.connect("agent", pb::SessionKind::Agent, Default::default()).await;
    let mut beat = itc.heartbeat("agent").await;
    server.signal_shutdown();
    let pb::heartbeat_response::Message::Notice(notice) = beat.push().await else {
        panic!("expected a notice");
    };
    assert_eq!(notice.kind(), pb::NoticeKind::ServerDraining);
    let end = tokio::time::timeout(DEADLINE, beat.stream.next()).await.unwrap();
    assert!(end.is_none(), "the stream ends after the notice: {end:?}");
    drop(beat);
    drop(itc);
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
}

/// A heartbeat naming a STALLED task clears the flag (TASK_RECOVERED); a second,
/// faulty Heartbeat stream is refused without ending the working one.
#[tokio::test]
async fn vouching_heartbeat_recovers_a_stalled_task() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    let mut watch = itc.watch().await;
    itc.connect("agent", pb::SessionKind::Agent, Default::default()).await;
    let request = pb::StartTaskRequest {
        task_id: "slow".into(),
        agent_id: "agent".into(),
        description: "slow work".into(),
        stall_timeout: Some(prost_types::Duration::try_from(Duration::from_millis(200)).unwrap()),
        ..Default::default()
    };
    itc.agent.clone().start_task(request).await.unwrap();
    let mut beat = itc.heartbeat("agent").await;
    watch.until(pb::EventType::TaskStalled).await;

    // A second stream whose first ping is malformed is refused; the first goes on.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::HeartbeatRequest {
        session_id: "agent".into(),
        task_ids: vec!["bad id".into()],
        generation: 0,
    })
    .await
    .unwrap();
    let refused = itc.sessions.clone().heartbeat(ReceiverStream::new(rx)).await;
    assert_eq!(code(refused).0, Code::InvalidArgument);

    beat.tx
        .send(pb::HeartbeatRequest {
            session_id: "agent".into(),
            task_ids: vec!["slow".into()],
            generation: 0,
        })
        .await
        .unwrap();
    assert!(matches!(beat.next().await, pb::heartbeat_response::Message::Lease(_)));
    let recovered = watch.until(pb::EventType::TaskRecovered).await;
    assert_eq!(recovered.task_id, "slow");
    assert!(!itc.task("slow").await.stalled);
}

/// A Heartbeat stream naming an older generation (its connection was taken over) is
/// refused, so it cannot take the session back from the newer connection.
#[tokio::test]
async fn heartbeat_of_an_old_generation_is_refused() {
    let server = TestServer::start().await;
    let itc = Itc::new(&server).await;
    itc.coordinator("sup").await;
    itc.coordinator("sup").await; // generation 2
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::HeartbeatRequest {
        session_id: "sup".into(),
        task_ids: Vec::new(),
        generation: 1,
    })
    .await
    .unwrap();
    let refused = itc.sessions.clone().heartbeat(ReceiverStream::new(rx)).await;
    let (c, message) = code(refused);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(message.contains("taken over"), "{message}");
}
