//! End-to-end: the Prometheus endpoint (`metrics_listen`) counts calls by method and
//! status code, open streams, sessions, events published and delivered, and the durable
//! store's commits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::{DEADLINE, TestServer};
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_proto::v1::session_service_client::SessionServiceClient;
use itc_server::config::Settings;
use tonic::Code;

/// One plain HTTP/1.1 request to the metrics endpoint: (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        stream.write_all(request.as_bytes()).expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read the response");
        response
    })
    .await
    .expect("the request does not panic");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// A scrape of `/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

/// The value of the series `name{labels}` (exactly those labels, in any order).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, mut have) = match series.split_once('{') {
            Some((n, rest)) => (
                n,
                rest.trim_end_matches('}')
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ),
            None => (series, Vec::new()),
        };
        have.sort();
        (series_name == name && have == want).then(|| value.parse().ok())?
    })
}

/// Scrapes until `check` holds for the text (scraping is not a notification path, so
/// this polls, within the deadline), and returns that text.
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr).await;
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} before the deadline:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next log event of a raw stream (seq > 0), skipping heartbeats.
async fn next_logged(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::Event {
    loop {
        let event = common::next_event(stream).await;
        if event.seq > 0 {
            return event;
        }
    }
}

/// A server with metrics on, over a durable store: calls are counted by method and code
/// (NOT_FOUND and OK apart, a stream when it ends), the stream and session gauges follow
/// what is open, events delivered to the one subscriber equal events published (and the
/// store's batches hold exactly those), and commits are timed. Other paths answer 404.
#[tokio::test]
async fn the_endpoint_reports_calls_streams_sessions_events_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_metrics(Settings {
        data_dir: dir.path().to_owned(),
        in_memory: false,
        ..Settings::default()
    })
    .await;
    let metrics = server.metrics_addr.unwrap();
    let channel = server.channel().await;
    let mut monitor = MonitorServiceClient::new(channel.clone());

    // Everything from the start: this subscriber receives every event published.
    let mut stream = monitor
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let start = common::next_event(&mut stream).await;
    assert_eq!(start.r#type(), pb::EventType::StreamStart);
    scrape_until(metrics, "one open subscription", |t| {
        value(t, "itc_subscriptions_open", &[]) == Some(1.0)
    })
    .await;

    SessionServiceClient::new(channel.clone())
        .connect(pb::ConnectRequest {
            session_id: "sup".into(),
            kind: pb::SessionKind::Supervisor as i32,
            capabilities: Some(pb::Capabilities::default()),
            lease_ttl: None,
        })
        .await
        .unwrap();
    AgentServiceClient::new(channel.clone())
        .start_task(pb::StartTaskRequest {
            task_id: "t1".into(),
            agent_id: "agent-1".into(),
            description: "counted".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    monitor
        .get_task(pb::GetTaskRequest { task_id: "t1".into() })
        .await
        .unwrap();
    let missing = monitor
        .get_task(pb::GetTaskRequest { task_id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let head = monitor
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .statistics
        .unwrap()
        .head_seq;
    assert!(head >= 2, "a session and a task event at least: {head}");
    let mut last = 0;
    while last < head {
        last = next_logged(&mut stream).await.seq;
    }

    let get_task = "/itc.v1.MonitorService/GetTask";
    let text = scrape_until(metrics, "the calls, events and commits counted", |t| {
        value(
            t,
            "itc_rpc_requests_total",
            &[("method", get_task), ("code", "NOT_FOUND")],
        ) == Some(1.0)
            && value(t, "itc_events_delivered_total", &[]) == Some(head as f64)
    })
    .await;
    assert_eq!(
        value(&text, "itc_rpc_requests_total", &[("method", get_task), ("code", "OK")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "itc_rpc_duration_seconds_count",
            &[("method", get_task), ("code", "NOT_FOUND")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "itc_rpc_requests_total",
            &[("method", "/itc.v1.SessionService/Connect"), ("code", "OK")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "itc_events_published_total", &[]),
        Some(head as f64),
        "{text}"
    );
    assert_eq!(
        value(&text, "itc_sessions", &[("kind", "SUPERVISOR")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "itc_sessions", &[("kind", "AGENT")]), Some(0.0), "{text}");
    assert_eq!(value(&text, "itc_subscriptions_open", &[]), Some(1.0), "{text}");
    assert_eq!(value(&text, "itc_subscribers_lagging", &[]), Some(0.0), "{text}");
    assert!(
        value(&text, "itc_store_commit_seconds_count", &[]).is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "itc_store_batch_events_sum", &[]),
        Some(head as f64),
        "every event is in exactly one commit:\n{text}"
    );
    let writes = value(&text, "itc_store_write_records_count", &[]).unwrap_or(0.0);
    assert!(writes > 0.0, "{text}");
    assert_eq!(
        value(&text, "itc_store_write_records_sum", &[]),
        value(&text, "itc_store_commit_seconds_count", &[]),
        "every committed record is in exactly one write:\n{text}"
    );
    // The Subscribe call is still open: not counted yet.
    assert!(!text.contains("MonitorService/Subscribe"), "{text}");

    // The client goes away: the stream closes and its call counts, as CANCELLED.
    drop(stream);
    scrape_until(metrics, "the stream closed and counted", |t| {
        value(t, "itc_subscriptions_open", &[]) == Some(0.0)
            && value(
                t,
                "itc_rpc_requests_total",
                &[("method", "/itc.v1.MonitorService/Subscribe"), ("code", "CANCELLED")],
            ) == Some(1.0)
    })
    .await;

    let (status, _) = get(metrics, "/").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    server.stop().await.unwrap();
}

/// Without metrics, no endpoint: the same calls leave nothing to scrape (and cost a
/// branch); a server with metrics counts only its own calls.
#[tokio::test]
async fn servers_in_one_process_count_apart() {
    let quiet = TestServer::start().await;
    let counted = TestServer::start_with_metrics(common::memory()).await;
    assert!(quiet.metrics_addr.is_none());
    for server in [&quiet, &quiet, &counted] {
        let err = MonitorServiceClient::new(server.channel().await)
            .get_task(pb::GetTaskRequest { task_id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let metrics = counted.metrics_addr.unwrap();
    let text = scrape_until(metrics, "the one call", |t| {
        value(
            t,
            "itc_rpc_requests_total",
            &[("method", "/itc.v1.MonitorService/GetTask"), ("code", "NOT_FOUND")],
        )
        .is_some()
    })
    .await;
    assert_eq!(
        value(
            &text,
            "itc_rpc_requests_total",
            &[("method", "/itc.v1.MonitorService/GetTask"), ("code", "NOT_FOUND")]
        ),
        Some(1.0),
        "{text}"
    );
    // The in-memory store records no commits.
    assert_eq!(
        value(&text, "itc_store_commit_seconds_count", &[]).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    quiet.stop().await.unwrap();
    counted.stop().await.unwrap();
}

/// The sessions gauge follows every way a session ends or changes: a takeover with another
/// kind moves it between kinds, a disconnect and an expired lease take it down.
#[tokio::test]
async fn the_sessions_gauge_goes_down_as_sessions_end() {
    let server = TestServer::start_with_metrics(common::memory()).await;
    let metrics = server.metrics_addr.unwrap();
    let mut sessions = SessionServiceClient::new(server.channel().await);
    let connect = |id: &str, kind: pb::SessionKind, lease_ms: Option<i32>| pb::ConnectRequest {
        session_id: id.into(),
        kind: kind as i32,
        capabilities: Some(pb::Capabilities::default()),
        lease_ttl: lease_ms.map(|ms| prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        }),
    };
    let gauge = |text: &str, kind: &str| value(text, "itc_sessions", &[("kind", kind)]);

    sessions
        .connect(connect("s1", pb::SessionKind::Supervisor, None))
        .await
        .unwrap();
    scrape_until(metrics, "one supervisor", |t| gauge(t, "SUPERVISOR") == Some(1.0)).await;

    // The same id comes back as a human: the session is taken over and changes kind.
    sessions
        .connect(connect("s1", pb::SessionKind::Human, None))
        .await
        .unwrap();
    let text = scrape_until(metrics, "the supervisor became a human", |t| {
        gauge(t, "SUPERVISOR") == Some(0.0) && gauge(t, "HUMAN") == Some(1.0)
    })
    .await;
    assert_eq!(gauge(&text, "AGENT"), Some(0.0), "{text}");

    sessions
        .disconnect(pb::DisconnectRequest {
            session_id: "s1".into(),
        })
        .await
        .unwrap();
    scrape_until(metrics, "the human disconnected", |t| gauge(t, "HUMAN") == Some(0.0)).await;

    // Two agents; the one that never heartbeats loses its 100 ms lease, the other stays.
    let mut ends = MonitorServiceClient::new(server.channel().await)
        .subscribe(pb::SubscribeRequest {
            filter: Some(pb::SubscriptionFilter {
                event_types: vec![pb::EventType::CoordinatorDisconnected as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::next_event(&mut ends).await.r#type(), pb::EventType::StreamStart);
    sessions
        .connect(connect("a2", pb::SessionKind::Agent, None))
        .await
        .unwrap();
    sessions
        .connect(connect("a1", pb::SessionKind::Agent, Some(100)))
        .await
        .unwrap();
    let expired = next_logged(&mut ends).await;
    assert_eq!(expired.r#type(), pb::EventType::CoordinatorDisconnected);
    let Some(pb::event::Detail::Session(detail)) = expired.detail else {
        panic!("a session event: {expired:?}");
    };
    assert_eq!(detail.session.as_ref().map(|s| s.session_id.as_str()), Some("a1"));
    assert_eq!(detail.reason(), pb::SessionEndReason::LeaseExpired);
    let text = scrape(metrics).await;
    assert_eq!(gauge(&text, "AGENT"), Some(1.0), "a2 is still connected: {text}");
    for kind in ["SUPERVISOR", "HUMAN", "COORDINATOR_AGENT"] {
        assert_eq!(gauge(&text, kind), Some(0.0), "{kind}: {text}");
    }
    server.stop().await.unwrap();
}
