//! End-to-end: the embedded store keeps everything acknowledged across a restart, and the
//! log's seq continues where it stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use common::TestServer;
use itc_proto::json::json_to_value;
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_proto::v1::session_service_client::SessionServiceClient;
use itc_server::config::Settings;
use serde_json::json;
use tokio_stream::StreamExt;

fn durable(dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: dir.to_owned(),
        in_memory: false,
        ..Settings::default()
    }
}

/// Stop the server, start it on the same data dir: GetStatus, GetTask, open commands and
/// input requests, and a Subscribe with `after_seq` from before the restart see
/// everything; the next event continues the seq.
#[tokio::test]
async fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (head, before_t1, command_id, request_id) = {
        let server = TestServer::start_with(durable(dir.path())).await;
        let client = server.client().await;
        let channel = server.channel().await;
        let t1 = client
            .start_task(itc_client::StartTask::new("agent-1", "first").with_task_id("t1"))
            .await
            .unwrap();
        client.report_progress(&t1.id, 0.5, "half").await.unwrap();
        client.publish_update(&t1.id, json!({"rows": 10})).await.unwrap();
        client.complete_task(&t1.id, json!({"rows": 20})).await.unwrap();
        client
            .start_task(itc_client::StartTask::new("agent-2", "second").with_task_id("t2"))
            .await
            .unwrap();
        let asked = AgentServiceClient::new(channel.clone())
            .request_input(pb::RequestInputRequest {
                task_id: "t2".into(),
                prompt: "Go on?".into(),
                choices: vec!["yes".into(), "no".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .input
            .unwrap();
        SessionServiceClient::new(channel.clone())
            .connect(pb::ConnectRequest {
                session_id: "sup".into(),
                kind: pb::SessionKind::Supervisor as i32,
                capabilities: Some(pb::Capabilities {
                    task_coordination: true,
                    ..Default::default()
                }),
                lease_ttl: None,
            })
            .await
            .unwrap();
        let command = CoordinatorServiceClient::new(channel)
            .coordinate(pb::CoordinateRequest {
                task_id: "t2".into(),
                coordinator_id: "sup".into(),
                action: pb::CommandAction::BoostPriority as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .command
            .unwrap();
        let stats = client.status(Default::default()).await.unwrap().statistics;
        let t1 = client.get_task("t1").await.unwrap();
        server.stop().await.unwrap();
        (stats.head_seq, t1, command.command_id, asked.request_id)
    };

    let server = TestServer::start_with(durable(dir.path())).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let t1 = client.get_task("t1").await.unwrap();
    assert_eq!(t1.version, before_t1.version);
    assert_eq!(t1.status, Some(itc_client::TaskStatus::Completed));
    assert_eq!(t1.result, before_t1.result);
    let status = client.status(Default::default()).await.unwrap();
    assert_eq!(status.total, 2);
    assert_eq!(status.statistics.head_seq, head);
    let t2 = client.get_task("t2").await.unwrap();
    assert_eq!(
        (t2.status, t2.priority),
        (Some(itc_client::TaskStatus::InputRequired), 1)
    );
    assert_eq!(t2.open_commands[0].id, command_id);
    assert_eq!(t2.open_inputs[0].id, request_id);

    // The log replays from the store, every seq once, in order.
    let mut stream = MonitorServiceClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while seqs.len() < head as usize {
        let event = stream.next().await.unwrap().unwrap().event.unwrap();
        if event.seq > 0 {
            seqs.push(event.seq);
        }
    }
    assert_eq!(seqs, (1..=head).collect::<Vec<u64>>());

    // Open things still work: the command is readable, the question answerable; the seq
    // continues.
    let command = CoordinatorServiceClient::new(channel.clone())
        .get_command(pb::GetCommandRequest {
            command_id: command_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap();
    assert_eq!(command.action(), pb::CommandAction::BoostPriority);
    let answered = CoordinatorServiceClient::new(channel)
        .answer_input(pb::AnswerInputRequest {
            request_id,
            coordinator_id: "human".into(),
            answer: Some(json_to_value(&json!("yes"))),
        })
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    assert_eq!(answered.state(), pb::InputState::Answered);
    let next = stream.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(next.seq, head + 1);
    assert_eq!(next.r#type(), pb::EventType::InputProvided);
}

/// After a restart: a finished command is still readable and its idempotency key still
/// dedupes; an answered input is readable; the global interrupt holds; a resume point
/// older than retention is OUT_OF_RANGE; locks are gone (not durable by design).
#[tokio::test]
async fn restart_keeps_closed_items_and_the_global_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || Settings {
        event_retention_count: 5,
        ..durable(dir.path())
    };
    let caps = pb::Capabilities {
        interruption: true,
        task_coordination: true,
        ..Default::default()
    };
    let connect = |channel: tonic::transport::Channel| async move {
        SessionServiceClient::new(channel)
            .connect(pb::ConnectRequest {
                session_id: "sup".into(),
                kind: pb::SessionKind::Supervisor as i32,
                capabilities: Some(caps),
                lease_ttl: None,
            })
            .await
            .unwrap();
    };
    let retry = pb::CoordinateRequest {
        task_id: "t".into(),
        coordinator_id: "sup".into(),
        action: pb::CommandAction::Custom as i32,
        idempotency_key: "once".into(),
        ..Default::default()
    };
    let (command_id, input_id) = {
        let server = TestServer::start_with(settings()).await;
        let channel = server.channel().await;
        let client = server.client().await;
        client
            .start_task(itc_client::StartTask::new("agent", "x").with_task_id("t"))
            .await
            .unwrap();
        connect(channel.clone()).await;
        let command = CoordinatorServiceClient::new(channel.clone())
            .coordinate(retry.clone())
            .await
            .unwrap()
            .into_inner()
            .command
            .unwrap();
        AgentServiceClient::new(channel.clone())
            .acknowledge_command(pb::AcknowledgeCommandRequest {
                command_id: command.command_id.clone(),
                outcome: pb::CommandState::Applied as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        let input = AgentServiceClient::new(channel.clone())
            .request_input(pb::RequestInputRequest {
                task_id: "t".into(),
                prompt: "ok?".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .input
            .unwrap();
        CoordinatorServiceClient::new(channel.clone())
            .answer_input(pb::AnswerInputRequest {
                request_id: input.request_id.clone(),
                coordinator_id: "sup".into(),
                answer: Some(json_to_value(&json!("yes"))),
            })
            .await
            .unwrap();
        CoordinatorServiceClient::new(channel.clone())
            .acquire_lock(pb::AcquireLockRequest {
                task_id: "t".into(),
                coordinator_id: "sup".into(),
                lease: None,
            })
            .await
            .unwrap();
        CoordinatorServiceClient::new(channel)
            .interrupt_all(pb::InterruptAllRequest {
                coordinator_id: "sup".into(),
                reason: String::new(),
            })
            .await
            .unwrap();
        server.stop().await.unwrap();
        (command.command_id, input.request_id)
    };

    let server = TestServer::start_with(settings()).await;
    let channel = server.channel().await;
    let mut coord = CoordinatorServiceClient::new(channel.clone());
    let command = coord
        .get_command(pb::GetCommandRequest {
            command_id: command_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap();
    assert_eq!(command.state(), pb::CommandState::Applied);
    let input = MonitorServiceClient::new(channel.clone())
        .get_input(pb::GetInputRequest { request_id: input_id })
        .await
        .unwrap()
        .into_inner()
        .input
        .unwrap();
    assert_eq!(input.state(), pb::InputState::Answered);
    let status = MonitorServiceClient::new(channel.clone())
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.global_interrupt);
    assert!(status.tasks[0].lock.is_none(), "locks are not durable");
    connect(channel.clone()).await;
    let again = coord.coordinate(retry).await.unwrap().into_inner().command.unwrap();
    assert_eq!(again.command_id, command_id, "the key still dedupes after a restart");
    let old = MonitorServiceClient::new(channel)
        .subscribe(pb::SubscribeRequest {
            after_seq: Some(0),
            ..Default::default()
        })
        .await;
    assert_eq!(old.unwrap_err().code(), tonic::Code::OutOfRange);
}
