//! The limits against abuse (issue 9): each is a setting, and each answers its own code:
//! a gRPC status and a `google.rpc.ErrorInfo` reason (domain `itc.v1`). Every refusal
//! changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use common::{TestServer, memory};
use itc_client::{Capabilities, Client, SessionKind, StartTask, StatusQuery};
use itc_proto::v1 as pb;
use itc_server::config::Settings;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// The status code and ErrorInfo reason of a failed SDK call.
fn refusal<T: std::fmt::Debug>(result: Result<T, itc_client::Error>) -> (Code, String, String) {
    match result.unwrap_err() {
        itc_client::Error::Status(status) => {
            let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
            (status.code(), reason, status.message().to_owned())
        }
        other => panic!("not a status from the server: {other}"),
    }
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

async fn small_limits() -> (TestServer, Client) {
    let settings = Settings {
        max_payload_bytes: 512,
        max_message_bytes: 1024,
        max_payload_depth: 4,
        max_filter_entries: 2,
        max_subscriptions_per_session: 2,
        max_open_inputs_per_task: 2,
        ..memory()
    };
    let server = TestServer::start_with(settings).await;
    let client = server.client().await;
    client
        .start_task(StartTask::new("agent", "limited").with_task_id("t"))
        .await
        .unwrap();
    (server, client)
}

#[tokio::test]
async fn payloads_over_size_or_depth_are_invalid_naming_the_field_and_the_setting() {
    let (_server, client) = small_limits().await;
    let (code, reason, message) = refusal(client.publish_update("t", json!({"blob": "x".repeat(600)})).await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::InvalidArgument, "PAYLOAD_TOO_LARGE"),
        "{message}"
    );
    assert!(
        message.contains("`data`") && message.contains("max_payload_bytes (512"),
        "{message}"
    );

    let (code, reason, message) = refusal(client.publish_update("t", json!({"deep": nested(4)})).await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::InvalidArgument, "PAYLOAD_TOO_DEEP"),
        "{message}"
    );
    assert!(message.contains("max_payload_depth (4 levels)"), "{message}");
    client.publish_update("t", json!({"deep": nested(3)})).await.unwrap();
    let (_, reason, _) = refusal(client.complete_task("t", nested(5)).await);
    assert_eq!(reason, "PAYLOAD_TOO_DEEP");

    // The whole message over max_message_bytes: tonic's own OUT_OF_RANGE, before any of ours.
    let err = client
        .start_task(StartTask::new("agent", "y".repeat(2000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::OutOfRange), "{err}");

    // Nothing of it landed: version 1 (start) + 1 (the one update that fit).
    assert_eq!(client.get_task("t").await.unwrap().version, 2);
    assert_eq!(client.status(StatusQuery::default()).await.unwrap().total, 1);
}

#[tokio::test]
async fn filter_lists_subscriptions_and_open_inputs_are_bounded() {
    let (server, client) = small_limits().await;

    // Filter lists: Subscribe and GetStatus.
    let (code, reason, message) = refusal(client.subscribe().agent("a").agent("b").agent("c").start().await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::InvalidArgument, "FILTER_TOO_LONG"),
        "{message}"
    );
    assert!(
        message.contains("filter.agent_ids") && message.contains("max_filter_entries (2)"),
        "{message}"
    );
    let too_many = StatusQuery {
        agent_ids: vec!["a".into(), "b".into(), "c".into()],
        ..StatusQuery::default()
    };
    assert_eq!(refusal(client.status(too_many).await).1, "FILTER_TOO_LONG");

    // Streams per session.
    client
        .open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    let _one = client.subscribe().session("sup").start().await.unwrap();
    let _two = client.subscribe().session("sup").start().await.unwrap();
    let (code, reason, message) = refusal(client.subscribe().session("sup").start().await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_SUBSCRIPTIONS"),
        "{message}"
    );
    assert!(message.contains("max_subscriptions_per_session"), "{message}");
    drop(_two);
    // A closed stream frees its place (the server sees the cancel asynchronously).
    tokio::time::timeout(common::DEADLINE, async {
        loop {
            if client.subscribe().session("sup").start().await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a place frees up once a stream closes");

    // Open input requests per task (raw stubs: the SDK's request_input waits for answers).
    let mut agent = pb::agent_service_client::AgentServiceClient::new(server.channel().await);
    let ask = |n: usize| pb::RequestInputRequest {
        task_id: "t".into(),
        prompt: format!("question {n}?"),
        ..Default::default()
    };
    agent.request_input(ask(1)).await.unwrap();
    agent.request_input(ask(2)).await.unwrap();
    let status = agent.request_input(ask(3)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "TOO_MANY_OPEN_INPUTS");
    assert!(
        status.message().contains("max_open_inputs_per_task"),
        "{}",
        status.message()
    );
    assert_eq!(client.get_task("t").await.unwrap().open_inputs.len(), 2);
}

#[tokio::test]
async fn sessions_past_the_limit_answer_their_reason() {
    let settings = Settings {
        max_concurrent_coordinators: 1,
        ..memory()
    };
    let server = TestServer::start_with(settings).await;
    let client = server.client().await;
    client
        .open_session("a", SessionKind::Human, Capabilities::all())
        .await
        .unwrap();
    let (code, reason, message) = refusal(client.open_session("b", SessionKind::Human, Capabilities::all()).await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_SESSIONS"),
        "{message}"
    );
}

#[tokio::test]
async fn a_principal_past_its_request_rate_is_told_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[principal]]\nid = \"busy\"\nroles = [\"coordinator\"]\ntoken_sha256 = \"{}\"\n\
             [[principal]]\nid = \"calm\"\nroles = [\"coordinator\"]\ntoken_sha256 = \"{}\"\n",
            itc_server::auth::token_sha256("busy-token"),
            itc_server::auth::token_sha256("calm-token"),
        ),
    )
    .unwrap();
    let settings = Settings {
        auth_tokens_file: Some(path),
        max_requests_per_second: 3,
        ..memory()
    };
    let server = TestServer::start_with(settings).await;
    let as_ = |token: &'static str| {
        Client::builder(server.uri())
            .with_auth_token(token)
            .with_retry(itc_client::RetryPolicy::none())
            .connect()
    };
    let busy = as_("busy-token").await.unwrap();
    // A bucket holds a second's worth (3); ten calls in a row cannot all fit.
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = busy.status(StatusQuery::default()).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("ten calls in a row at 3 per second were all admitted");
    let itc_client::Error::Status(status) = err else {
        panic!("not a status: {err}")
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.get_details_error_info().unwrap().reason, "RATE_LIMITED");
    assert!(status.get_details_retry_info().unwrap().retry_delay.is_some());
    assert!(
        status.message().contains("max_requests_per_second (3)"),
        "{}",
        status.message()
    );
    // Another principal has its own bucket.
    as_("calm-token")
        .await
        .unwrap()
        .status(StatusQuery::default())
        .await
        .unwrap();
}

/// A principal's Heartbeat pings count against its request rate (a stream is one call
/// when it opens, its pings more), and its session-less Subscribe streams against
/// max_subscriptions_per_session, as one session's.
#[tokio::test]
async fn pings_count_toward_the_rate_and_sessionless_streams_toward_the_stream_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[principal]]\nid = \"agent\"\nroles = [\"agent\", \"coordinator\"]\ntoken_sha256 = \"{}\"\n",
            itc_server::auth::token_sha256("agent-token"),
        ),
    )
    .unwrap();
    let settings = Settings {
        auth_tokens_file: Some(path),
        max_requests_per_second: 5,
        max_subscriptions_per_session: 2,
        ..memory()
    };
    let server = TestServer::start_with(settings).await;
    let client = Client::builder(server.uri())
        .with_auth_token("agent-token")
        .with_retry(itc_client::RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    client
        .open_session("agent", SessionKind::Agent, Capabilities::default())
        .await
        .unwrap();

    // Pings back to back: the stream ends with RATE_LIMITED within a bucket's worth.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(64);
    let ping = || pb::HeartbeatRequest {
        session_id: "agent".into(),
        ..Default::default()
    };
    for _ in 0..20 {
        tx.send(ping()).await.unwrap();
    }
    let mut sessions = pb::session_service_client::SessionServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer agent-token".parse().unwrap());
    let mut replies = sessions.heartbeat(request).await.unwrap().into_inner();
    let status = tokio::time::timeout(common::DEADLINE, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("refused within the deadline");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "RATE_LIMITED");
    drop(tx);

    // Session-less streams: two, then TOO_MANY_SUBSCRIPTIONS (after the bucket refills).
    let streams = tokio::time::timeout(common::DEADLINE, async {
        let mut open = Vec::new();
        loop {
            match client.subscribe().start().await {
                Ok(stream) => open.push(stream),
                Err(itc_client::Error::Status(s))
                    if s.get_details_error_info().is_some_and(|i| i.reason == "RATE_LIMITED") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // the bucket refills
                }
                Err(e) => return (open, e),
            }
        }
    })
    .await
    .expect("the stream limit answers within the deadline");
    let (open, err) = streams;
    assert_eq!(open.len(), 2);
    let (code, reason, message) = refusal::<()>(Err(err));
    assert_eq!(
        (code, reason.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_SUBSCRIPTIONS"),
        "{message}"
    );
}
