//! End-to-end: what every ITC server offers besides its own services — health and
//! reflection — and a graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use common::{DEADLINE, TestServer};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Health answers SERVING for the server and each ITC service, then NOT_SERVING once
/// shutdown begins; the server then returns within the deadline.
#[tokio::test]
async fn health_serving_then_not_serving_on_shutdown() {
    let mut server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in std::iter::once("").chain(itc_server::SERVICE_NAMES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    server.signal_shutdown();
    let next = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    drop(health);
    server.stop().await.unwrap();
}

/// Reflection (v1 and v1alpha) lists the ITC services and health, so grpcurl-style tools
/// need no proto files.
#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha;

    let server = TestServer::start().await;
    let channel = server.channel().await;

    let mut v1 = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in itc_server::SERVICE_NAMES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // v1alpha answers too, and can describe a symbol of ours.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("itc.v1.MonitorService".into()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
}

/// Once shutdown began, the server refuses new work and stops within its grace.
#[tokio::test]
async fn shutdown_returns_promptly_when_idle() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.start_task(itc_client::StartTask::new("a", "d")).await.unwrap();
    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < DEADLINE, "stopped in {:?}", started.elapsed());
}
