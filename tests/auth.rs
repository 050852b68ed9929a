//! Authentication and authorization end to end: bearer tokens from a tokens file, and
//! "nobody acts as someone else" (issue 9). Every refusal is checked to change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::path::PathBuf;

use common::{TestServer, memory};
use itc_client::{Action, Capabilities, Client, EventType, SessionKind, StartTask, StatusQuery};
use itc_proto::v1 as pb;
use itc_server::auth::token_sha256;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

/// Principals: two agents, a coordinator, an admin; each token is `<id>-token`.
const PRINCIPALS: [(&str, &str); 4] = [
    ("worker-1", r#"["agent"]"#),
    ("worker-2", r#"["agent"]"#),
    ("sup", r#"["coordinator"]"#),
    ("root", r#"["admin"]"#),
];

struct Secured {
    server: TestServer,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The tokens file's text for `principals`.
fn tokens_file(principals: &[(&str, &str)]) -> String {
    principals
        .iter()
        .map(|(id, roles)| {
            format!(
                "[[principal]]\nid = \"{id}\"\nroles = {roles}\ntoken_sha256 = \"{}\"\n\n",
                token_sha256(&format!("{id}-token"))
            )
        })
        .collect()
}

/// A request with `id`'s token.
fn with_token<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {id}-token").parse().unwrap());
    request
}

impl Secured {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("tokens.toml");
        std::fs::write(&path, tokens_file(&PRINCIPALS)).unwrap();
        let settings = itc_server::config::Settings {
            auth_tokens_file: Some(path.clone()),
            ..memory()
        };
        Self {
            server: TestServer::start_with(settings).await,
            path,
            _dir: dir,
        }
    }

    /// worker-1 with task `a`, worker-2 with task `b`, and the coordinator `sup`.
    async fn two_agents(&self) -> (Client, Client, Client) {
        let (one, two) = (self.as_("worker-1").await, self.as_("worker-2").await);
        one.start_task(StartTask::new("worker-1", "a").with_task_id("a"))
            .await
            .unwrap();
        two.start_task(StartTask::new("worker-2", "b").with_task_id("b"))
            .await
            .unwrap();
        (one, two, self.as_("sup").await)
    }

    async fn as_(&self, id: &str) -> Client {
        Client::builder(self.server.uri())
            .with_auth_token(format!("{id}-token"))
            .connect()
            .await
            .unwrap()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, itc_client::Error>) -> Code {
    result.unwrap_err().code().expect("a status from the server")
}

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated_and_health_stays_open() {
    let secured = Secured::start().await;
    let anonymous = Client::connect(secured.server.uri()).await.unwrap();
    assert_eq!(
        code(anonymous.start_task(StartTask::new("worker-1", "x")).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(anonymous.status(StatusQuery::default()).await),
        Code::Unauthenticated
    );
    let stranger = Client::builder(secured.server.uri())
        .with_auth_token("guess")
        .connect()
        .await
        .unwrap();
    let err = stranger.status(StatusQuery::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("unknown token"), "{err}");

    // Health and reflection need no token (load balancers, grpcurl-style tools).
    let channel = secured.server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The refused calls changed nothing.
    let root = secured.as_("root").await;
    let status = root.status(StatusQuery::default()).await.unwrap();
    assert_eq!(status.total, 0);
    assert_eq!(status.statistics.tasks_started, 0);
}

#[tokio::test]
async fn nobody_acts_as_someone_else() {
    let secured = Secured::start().await;
    let worker = secured.as_("worker-1").await;
    let sup = secured.as_("sup").await;
    let root = secured.as_("root").await;

    // An agent starts tasks as itself only.
    let err = worker
        .start_task(StartTask::new("worker-2", "not mine"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(
        err.to_string()
            .contains("`agent_id` is `worker-2`, but the caller is `worker-1`"),
        "{err}"
    );
    worker
        .start_task(StartTask::new("worker-1", "mine").with_task_id("t1"))
        .await
        .unwrap();

    // Sessions: as itself, with the role the kind takes.
    for (id, kind) in [("worker-2", SessionKind::Agent), ("sup", SessionKind::Supervisor)] {
        assert_eq!(
            code(worker.open_session(id, kind, Capabilities::default()).await),
            Code::PermissionDenied
        );
    }
    assert_eq!(
        code(
            worker
                .open_session("worker-1", SessionKind::Human, Capabilities::all())
                .await
        ),
        Code::PermissionDenied,
        "an agent is no coordinator"
    );
    assert_eq!(
        code(
            sup.open_session("root", SessionKind::Supervisor, Capabilities::all())
                .await
        ),
        Code::PermissionDenied
    );
    sup.open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    assert_eq!(code(sup.close_session("root").await), Code::PermissionDenied);

    // Coordinators coordinate, lock and answer as themselves.
    assert_eq!(
        code(sup.coordinate("root", "t1", Action::Interrupt).send().await),
        Code::PermissionDenied
    );
    assert_eq!(code(sup.acquire_lock("root", "t1", None).await), Code::PermissionDenied);
    assert_eq!(code(sup.interrupt_all("root", "x").await), Code::PermissionDenied);
    assert_eq!(
        code(root.coordinate("sup", "t1", Action::Interrupt).send().await),
        Code::PermissionDenied
    );
    let err = sup
        .subscribe()
        .session("root")
        .start()
        .await
        .expect_err("a stream under another's session");
    assert_eq!(err.code(), Some(Code::PermissionDenied));

    // A heartbeat stream for another's session.
    let mut sessions = pb::session_service_client::SessionServiceClient::new(secured.server.channel().await);
    let mut ping = tonic::Request::new(tokio_stream::iter([pb::HeartbeatRequest {
        session_id: "sup".into(),
        ..Default::default()
    }]));
    ping.metadata_mut()
        .insert("authorization", "Bearer worker-1-token".parse().unwrap());
    let refused = sessions.heartbeat(ping).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // None of it changed anything: one task (t1), untouched; only sup's session.
    let status = root.status(StatusQuery::default()).await.unwrap();
    assert_eq!(status.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1"]);
    let t1 = &status.tasks[0];
    assert_eq!((t1.version, t1.open_commands.len(), t1.lock.is_none()), (1, 0, true));
    assert_eq!(
        status.sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["sup"]
    );
    assert!(!status.global_interrupt);
}

#[tokio::test]
async fn agents_change_only_their_own_tasks_and_only_coordinators_steer() {
    let secured = Secured::start().await;
    let one = secured.as_("worker-1").await;
    let two = secured.as_("worker-2").await;
    let sup = secured.as_("sup").await;
    one.start_task(StartTask::new("worker-1", "mine").with_task_id("t1"))
        .await
        .unwrap();

    // Another agent cannot touch it.
    let err = two.report_progress("t1", 0.5, "hijack").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(
        err.to_string().contains("task `t1` is not one of `worker-2`'s tasks"),
        "{err}"
    );
    assert!(!err.to_string().contains("worker-1"), "the owner is not named: {err}");
    assert_eq!(
        code(two.publish_update("t1", json!({"x": 1})).await),
        Code::PermissionDenied
    );
    assert_eq!(code(two.complete_task("t1", json!(null)).await), Code::PermissionDenied);
    assert_eq!(code(two.fail_task("t1", "no").await), Code::PermissionDenied);
    assert_eq!(code(two.cancel_task("t1", "no").await), Code::PermissionDenied);
    // …nor can a coordinator act as its agent.
    assert_eq!(code(sup.report_progress("t1", 0.5, "x").await), Code::PermissionDenied);

    // An agent does not steer.
    one.open_session("worker-1", SessionKind::Agent, Capabilities::default())
        .await
        .unwrap();
    assert_eq!(
        code(one.coordinate("worker-1", "t1", Action::BoostPriority).send().await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(one.acquire_lock("worker-1", "t1", None).await),
        Code::PermissionDenied
    );
    assert_eq!(code(one.interrupt_all("worker-1", "x").await), Code::PermissionDenied);
    assert_eq!(code(one.resume_all("worker-1").await), Code::PermissionDenied);

    // Its own agent reports; the coordinator steers; the command's answer is the agent's.
    one.report_progress("t1", 0.25, "mine").await.unwrap();
    sup.open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    let command = sup
        .coordinate("sup", "t1", Action::Query)
        .data(json!({"question": "ETA?"}))
        .send()
        .await
        .unwrap();
    let mut agent_stub = pb::agent_service_client::AgentServiceClient::new(secured.server.channel().await);
    let mut ack = tonic::Request::new(pb::AcknowledgeCommandRequest {
        command_id: command.id.clone(),
        outcome: pb::CommandState::Applied as i32,
        ..Default::default()
    });
    ack.metadata_mut()
        .insert("authorization", "Bearer worker-2-token".parse().unwrap());
    assert_eq!(
        agent_stub.acknowledge_command(ack).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Only what the owner did shows.
    let t1 = sup.get_task("t1").await.unwrap();
    assert_eq!((t1.version, t1.progress, t1.status_message.as_str()), (3, 0.25, "mine"));
    assert_eq!(
        sup.command(&command.id).await.unwrap().state,
        itc_client::CommandState::Admitted
    );
}

#[tokio::test]
async fn agents_see_only_their_own_and_coordinators_see_everything() {
    let secured = Secured::start().await;
    let (one, two, sup) = secured.two_agents().await;
    let root = secured.as_("root").await;
    two.open_session("worker-2", SessionKind::Agent, Capabilities::default())
        .await
        .unwrap();
    one.open_session("worker-1", SessionKind::Agent, Capabilities::default())
        .await
        .unwrap();

    // GetStatus: an agent's own tasks and session; naming another agent is refused.
    let mine = one.status(StatusQuery::default()).await.unwrap();
    assert_eq!(mine.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(mine.total, 1);
    assert_eq!(
        mine.sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["worker-1"]
    );
    assert_eq!(mine.statistics.connected_sessions, 2, "counters stay global");
    let other = StatusQuery {
        agent_ids: vec!["worker-2".into()],
        ..StatusQuery::default()
    };
    assert_eq!(code(one.status(other.clone()).await), Code::PermissionDenied);
    assert_eq!(code(one.get_task("b").await), Code::PermissionDenied);

    // Coordinators and admins see all of it.
    for who in [&sup, &root] {
        let all = who.status(StatusQuery::default()).await.unwrap();
        assert_eq!(all.total, 2);
        assert_eq!(all.sessions.len(), 2);
        assert_eq!(who.status(other.clone()).await.unwrap().total, 1);
        who.get_task("b").await.unwrap();
    }

    // Subscribe: an agent's unfiltered stream carries only its own tasks' events.
    let mut events = one.subscribe().after_seq(0).start().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(common::DEADLINE, events.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        if event.kind != EventType::Heartbeat {
            seen.push((event.kind, event.agent_id.clone()));
        }
    }
    let agents: Vec<_> = seen.iter().map(|(_, a)| a.as_deref()).collect();
    assert_eq!(agents, [Some("worker-1"), Some("worker-1")], "{seen:?}");
    let err = one.subscribe().agent("worker-2").start().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn inputs_commands_streams_and_sessions_of_others_stay_out_of_reach() {
    let secured = Secured::start().await;
    let (one, two, sup) = secured.two_agents().await;
    let channel = secured.server.channel().await;
    let mut agents = pb::agent_service_client::AgentServiceClient::new(channel.clone());
    let ask = |task: &str| pb::RequestInputRequest {
        task_id: task.into(),
        prompt: "Ship it?".into(),
        choices: vec!["yes".into(), "no".into()],
        ..Default::default()
    };

    // Input requests: only on one's own task; seen only by their agent and coordinators.
    let refused = agents
        .request_input(with_token(ask("a"), "worker-2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let request = agents
        .request_input(with_token(ask("a"), "worker-1"))
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap()
        .request_id;
    assert_eq!(code(two.get_input(&request).await), Code::PermissionDenied);
    sup.get_input(&request).await.unwrap();
    one.get_input(&request).await.unwrap();
    // An agent does not answer, interact, or resume everything.
    one.open_session("worker-1", SessionKind::Agent, Capabilities::default())
        .await
        .unwrap();
    assert_eq!(
        code(one.answer("worker-1", &request, json!("yes")).await),
        Code::PermissionDenied
    );
    let mut coordinators = pb::coordinator_service_client::CoordinatorServiceClient::new(channel.clone());
    let interact = pb::InteractRequest {
        query: "status".into(),
        ..Default::default()
    };
    let refused = coordinators
        .interact(with_token(interact, "worker-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(one.get_task("a").await.unwrap().open_inputs.len(), 1, "still open");

    // Commands: seen by the agent of their task and by coordinators.
    sup.open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    let command = sup
        .coordinate("sup", "a", Action::Query)
        .data(json!({"question": "ETA?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(two.command(&command.id).await), Code::PermissionDenied);
    one.command(&command.id).await.unwrap();

    // Subscribe naming another agent's task: narrowed to one's own agent, so nothing of
    // it arrives (the first HEARTBEAT comes once the replay from seq 0 is through).
    let mut events = two.subscribe().task("a").after_seq(0).start().await.unwrap();
    let first = tokio::time::timeout(common::DEADLINE, events.next())
        .await
        .expect("a heartbeat in time")
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, EventType::Heartbeat, "{first:?}");

    // Disconnecting another's (connected) session: refused; it stays.
    assert_eq!(code(two.close_session("worker-1").await), Code::PermissionDenied);
    let sessions = sup.status(StatusQuery::default()).await.unwrap().sessions;
    assert!(sessions.iter().any(|s| s.id == "worker-1"), "{sessions:?}");
}

/// A token removed from the file (SIGHUP) ends the streams it opened: UNAUTHENTICATED.
#[tokio::test]
async fn revoked_tokens_end_their_open_streams() {
    let secured = Secured::start().await;
    let channel = secured.server.channel().await;
    let sup = secured.as_("sup").await;
    sup.open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    let mut monitor = pb::monitor_service_client::MonitorServiceClient::new(channel.clone());
    let mut stream = monitor
        .subscribe(with_token(pb::SubscribeRequest::default(), "sup"))
        .await
        .unwrap()
        .into_inner();
    let start = tokio::time::timeout(common::DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(start.is_some(), "STREAM_START");

    // The file without sup; SIGHUP to this process reloads every in-process server's file
    // (the other tests' files are unchanged, so their principals stay).
    let others: Vec<_> = PRINCIPALS.iter().copied().filter(|(id, _)| *id != "sup").collect();
    std::fs::write(&secured.path, tokens_file(&others)).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = tokio::time::timeout(common::DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue, // heartbeats until the reload lands
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after the reload");
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(code(sup.status(StatusQuery::default()).await), Code::Unauthenticated);
}
