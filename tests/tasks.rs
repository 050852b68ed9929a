//! End-to-end: the task lifecycle and status polling over real gRPC, through the SDK and
//! through raw stubs for the protocol's edges.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use common::TestServer;
use itc_client::{Error, StartTask, StatusQuery, TaskStatus};
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

fn code(result: Result<impl std::fmt::Debug, Error>) -> Code {
    match result {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a status: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Asserts an INVALID_ARGUMENT status whose BadRequest detail names `field`.
fn assert_invalid_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("BadRequest detail");
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "no violation for {field}: {:?}",
        bad.field_violations
    );
    assert!(
        status.message().contains(field),
        "message names {field}: {}",
        status.message()
    );
}

/// start → progress → update → complete, seen through GetStatus and GetTask.
#[tokio::test]
async fn lifecycle_seen_by_polling() {
    let server = TestServer::start().await;
    let client = server.client().await;

    let task = client
        .start_task(StartTask::new("agent-1", "Process large dataset").with_metadata(json!({"source": "s3"})))
        .await
        .unwrap();
    assert!(uuid::Uuid::parse_str(&task.id).is_ok(), "server-assigned UUID");
    assert_eq!(task.status, Some(TaskStatus::Running));
    assert_eq!(task.version, 1);

    let ack = client.report_progress(&task.id, 0.4, "Step 2/5").await.unwrap();
    assert_eq!((ack.version, ack.seq, ack.status), (2, 2, Some(TaskStatus::Running)));
    let ack = client
        .publish_update(
            &task.id,
            json!({"records_processed": 2000, "update_type": "processing_progress"}),
        )
        .await
        .unwrap();
    assert_eq!((ack.version, ack.seq), (3, 3));

    // Polling sees the live task as the seed's task_details did, and more.
    let status = client.status(StatusQuery::default()).await.unwrap();
    assert_eq!(status.state, pb::ServiceState::Running);
    assert_eq!(status.active_tasks, 1);
    let polled = &status.tasks[0];
    assert_eq!(polled.id, task.id);
    assert_eq!(polled.description, "Process large dataset");
    assert_eq!(polled.agent_id, "agent-1");
    assert_eq!(polled.status, Some(TaskStatus::Running));
    assert_eq!(polled.progress, 0.4);
    assert_eq!(polled.status_message, "Step 2/5");
    assert_eq!(polled.version, 3);
    assert!(polled.created.is_some());
    assert_eq!(polled.metadata, Some(json!({"source": "s3"})));

    let done = client.complete_task(&task.id, json!({"records": 10000})).await.unwrap();
    assert_eq!(done.status, Some(TaskStatus::Completed));
    assert!(done.finished.is_some());

    // Finished tasks stay queryable, with their result.
    let fetched = client.get_task(&task.id).await.unwrap();
    assert_eq!(fetched.version, 4);
    assert_eq!(fetched.status, Some(TaskStatus::Completed));
    assert_eq!(fetched.result, Some(json!({"records": 10000})));

    let status = client.status(StatusQuery::default()).await.unwrap();
    assert_eq!(status.state, pb::ServiceState::Idle);
    let stats = status.statistics;
    assert_eq!((stats.tasks_started, stats.tasks_completed), (1, 1));
    assert_eq!((stats.events_published, stats.head_seq), (4, 4));
    assert_eq!(stats.tasks_by_status.unwrap().completed, 1);
    assert!(stats.started_at.is_some());
}

/// Failed and cancelled tasks keep their error and reason; filters by status and agent
/// and pagination work over the wire.
#[tokio::test]
async fn fail_cancel_filters_and_pages() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..5 {
        let agent = if i % 2 == 0 { "even" } else { "odd" };
        client
            .start_task(StartTask::new(agent, format!("task {i}")).with_task_id(format!("t{i}")))
            .await
            .unwrap();
    }
    let failed = client.fail_task("t1", "disk full").await.unwrap();
    assert_eq!(failed.error.as_deref(), Some("disk full"));
    let cancelled = client.cancel_task("t2", "no longer needed").await.unwrap();
    assert_eq!(cancelled.reason.as_deref(), Some("no longer needed"));

    let only_failed = client
        .status(StatusQuery {
            statuses: vec![TaskStatus::Failed],
            ..StatusQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&only_failed), vec!["t1"]);
    let stats = only_failed.statistics;
    assert_eq!((stats.tasks_failed, stats.tasks_cancelled), (1, 1));

    let mut query = StatusQuery {
        agent_ids: vec!["even".into()],
        page_size: 2,
        ..StatusQuery::default()
    };
    let first = client.status(query.clone()).await.unwrap();
    assert_eq!((ids(&first), first.total), (vec!["t0", "t2"], 3));
    query.page_token = first.next_page_token;
    let second = client.status(query.clone()).await.unwrap();
    assert_eq!(ids(&second), vec!["t4"]);
    assert!(second.next_page_token.is_none());
    // The paging helper walks every page.
    query.page_token = None;
    let all = client.all_tasks(query).await.unwrap();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["t0", "t2", "t4"]
    );
}

fn ids(page: &itc_client::StatusPage) -> Vec<&str> {
    page.tasks.iter().map(|t| t.id.as_str()).collect()
}

/// Every bad input answers its precise code and changes nothing.
#[tokio::test]
async fn bad_input_gets_precise_codes_and_changes_nothing() {
    let settings = itc_server::config::Settings {
        max_payload_bytes: 1024,
        ..common::memory()
    };
    let server = TestServer::start_with(settings).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let mut agent = AgentServiceClient::new(channel.clone());
    let mut monitor = MonitorServiceClient::new(channel);

    client
        .start_task(StartTask::new("agent-1", "work").with_task_id("t1"))
        .await
        .unwrap();

    // Malformed ids and empty required fields name the field.
    let start = |task_id: &str, agent_id: &str, description: &str| pb::StartTaskRequest {
        task_id: task_id.into(),
        agent_id: agent_id.into(),
        description: description.into(),
        ..pb::StartTaskRequest::default()
    };
    let err = agent.start_task(start("bad id", "a", "d")).await.unwrap_err();
    assert_invalid_field(&err, "task_id");
    let err = agent.start_task(start("", "", "d")).await.unwrap_err();
    assert_invalid_field(&err, "agent_id");
    let err = agent.start_task(start("", "a", "  ")).await.unwrap_err();
    assert_invalid_field(&err, "description");
    let err = monitor
        .get_task(pb::GetTaskRequest { task_id: String::new() })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "task_id");

    // Progress NaN or outside [0, 1].
    for progress in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let err = agent
            .report_progress(pb::ReportProgressRequest {
                task_id: "t1".into(),
                progress,
                message: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid_field(&err, "progress");
    }

    // Oversized structured payloads (a configurable limit), and NaN inside a Struct.
    let big = json!({"blob": "x".repeat(2048)});
    let err = client.publish_update("t1", big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("`data`"), "{err}");
    let err = client
        .start_task(StartTask::new("a", "d").with_metadata(big))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`metadata`"), "{err}");
    let nan = prost_types::Struct {
        fields: [(
            "x".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
            },
        )]
        .into(),
    };
    let err = agent
        .publish_update(pb::PublishUpdateRequest {
            task_id: "t1".into(),
            data: Some(nan),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "data/x");

    // Unknown task.
    assert_eq!(code(client.report_progress("nope", 0.5, "").await), Code::NotFound);
    assert_eq!(code(client.get_task("nope").await), Code::NotFound);
    assert_eq!(code(client.complete_task("nope", json!(null)).await), Code::NotFound);

    // Duplicate id.
    let dup = client
        .start_task(StartTask::new("agent-2", "other").with_task_id("t1"))
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);

    // Nothing above changed anything: t1 is as started, and no event was written.
    let t1 = client.get_task("t1").await.unwrap();
    assert_eq!((t1.version, t1.progress, t1.agent_id.as_str()), (1, 0.0, "agent-1"));
    let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
    assert_eq!((stats.head_seq, stats.tasks_started), (1, 1));

    // Updates to a finished task: FAILED_PRECONDITION naming its state; finishing it
    // again names both states.
    client.complete_task("t1", json!("ok")).await.unwrap();
    let err = client.report_progress("t1", 0.9, "late").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(
        err.to_string()
            .contains("is COMPLETED, a final state: cannot report progress"),
        "{err}"
    );
    let err = client.cancel_task("t1", "again").await.unwrap_err();
    assert!(
        err.to_string().contains("is COMPLETED: cannot move it to CANCELLED"),
        "{err}"
    );
    assert_eq!(
        code(client.publish_update("t1", json!({})).await),
        Code::FailedPrecondition
    );
    assert_eq!(code(client.fail_task("t1", "x").await), Code::FailedPrecondition);
    assert_eq!(code(client.cancel_task("t1", "x").await), Code::FailedPrecondition);
    let fail_without_error = agent
        .fail_task(pb::FailTaskRequest {
            task_id: "t1".into(),
            error: None,
        })
        .await
        .unwrap_err();
    assert_invalid_field(&fail_without_error, "error");

    // Bad filters and pages.
    let err = monitor
        .get_status(pb::GetStatusRequest {
            statuses: vec![0],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "statuses");
    let err = monitor
        .get_status(pb::GetStatusRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "page_size");
    let err = monitor
        .get_status(pb::GetStatusRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "page_token");

    let t1 = client.get_task("t1").await.unwrap();
    assert_eq!(t1.version, 2);
}

/// A PENDING task is created, then started by its first progress report.
#[tokio::test]
async fn pending_task_starts_with_progress() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let task = client
        .start_task(StartTask::new("agent-1", "queued").pending())
        .await
        .unwrap();
    assert_eq!(task.status, Some(TaskStatus::Pending));
    let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
    assert_eq!(stats.tasks_started, 0);
    let ack = client.report_progress(&task.id, 0.1, "starting").await.unwrap();
    assert_eq!(ack.status, Some(TaskStatus::Running));
    let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
    assert_eq!((stats.tasks_started, stats.head_seq), (1, 3));
}
