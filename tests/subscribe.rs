//! End-to-end: Subscribe streams over real gRPC — filters, ordering, resume, snapshots,
//! heartbeats, ends, retention, and what a vanished client leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::{DEADLINE, TestServer};
use itc_client::{StartTask, StatusQuery};
use itc_proto::v1 as pb;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_server::config::Settings;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

type Events = tonic::Streaming<pb::SubscribeResponse>;

fn filter(task_ids: &[&str], agent_ids: &[&str], types: &[pb::EventType]) -> pb::SubscriptionFilter {
    pb::SubscriptionFilter {
        task_ids: task_ids.iter().map(|s| s.to_string()).collect(),
        agent_ids: agent_ids.iter().map(|s| s.to_string()).collect(),
        event_types: types.iter().map(|t| *t as i32).collect(),
    }
}

async fn subscribe(channel: &Channel, request: pb::SubscribeRequest) -> Result<Events, tonic::Status> {
    Ok(MonitorServiceClient::new(channel.clone())
        .subscribe(request)
        .await?
        .into_inner())
}

/// The next event of a stream, within the deadline.
async fn next(stream: &mut Events) -> pb::Event {
    common::next_event(stream).await
}

/// The next log event (seq > 0), skipping heartbeats.
async fn next_logged(stream: &mut Events) -> pb::Event {
    loop {
        let event = next(stream).await;
        if event.seq > 0 {
            return event;
        }
        assert_eq!(event.r#type(), pb::EventType::Heartbeat, "{event:?}");
    }
}

/// Opens a stream and checks its STREAM_START; returns the stream and the start detail.
async fn open(channel: &Channel, request: pb::SubscribeRequest) -> (Events, pb::StreamDetail) {
    let mut stream = subscribe(channel, request).await.unwrap();
    let start = next(&mut stream).await;
    assert_eq!(start.r#type(), pb::EventType::StreamStart);
    let Some(pb::event::Detail::Stream(detail)) = start.detail else {
        panic!("STREAM_START without stream detail: {start:?}");
    };
    (stream, detail)
}

fn settings() -> Settings {
    Settings {
        stream_interval: Duration::from_millis(100),
        ..common::memory()
    }
}

/// The seed's fan-out test: 10 subscribers each receive exactly the 50 updates, in order,
/// no loss and no duplicate.
#[tokio::test]
async fn ten_subscribers_get_all_fifty_updates() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client.start_task(StartTask::new("agent", "fan-out")).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..10 {
        let request = pb::SubscribeRequest {
            filter: Some(filter(&[], &[], &[pb::EventType::RealTimeUpdate])),
            ..Default::default()
        };
        streams.push(open(&channel, request).await.0);
    }
    for i in 0..50 {
        client.publish_update(&task.id, json!({"i": i})).await.unwrap();
    }
    for stream in &mut streams {
        for i in 0..50 {
            let event = next_logged(stream).await;
            assert_eq!(event.r#type(), pb::EventType::RealTimeUpdate);
            let data = itc_proto::json::struct_to_json(event.data.as_ref().unwrap()).unwrap();
            assert_eq!(data.get("i"), Some(&json!(i)), "update {i} in order");
        }
    }
    let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
    assert_eq!(stats.active_streams, 10);
    assert_eq!(stats.events_delivered, 500);
}

/// A task filter passes only that task; an agent filter only that agent; lifecycle
/// events (started, progress, completed) reach a subscriber filtered by agent.
#[tokio::test]
async fn task_and_agent_filters_and_lifecycle_events() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;

    let by_task = pb::SubscribeRequest {
        filter: Some(filter(&["task_1"], &[], &[])),
        ..Default::default()
    };
    let (mut task_stream, start) = open(&channel, by_task).await;
    assert_eq!(
        start.filter.unwrap().task_ids,
        vec!["task_1"],
        "STREAM_START echoes the filter"
    );
    let by_agent = pb::SubscribeRequest {
        filter: Some(filter(
            &[],
            &["agent-b"],
            &[pb::EventType::TaskStarted, pb::EventType::TaskCompleted],
        )),
        ..Default::default()
    };
    let (mut agent_stream, _) = open(&channel, by_agent).await;

    client
        .start_task(StartTask::new("agent-a", "one").with_task_id("task_1"))
        .await
        .unwrap();
    client
        .start_task(StartTask::new("agent-b", "two").with_task_id("task_2"))
        .await
        .unwrap();
    client
        .publish_update("task_2", json!({"message": "task_2_update"}))
        .await
        .unwrap();
    client
        .publish_update("task_1", json!({"message": "task_1_update"}))
        .await
        .unwrap();
    client.report_progress("task_2", 0.5, "half").await.unwrap();
    client.complete_task("task_2", json!("done")).await.unwrap();
    client.complete_task("task_1", json!("done")).await.unwrap();

    // Only task_1's events, every type.
    let kinds: Vec<(String, pb::EventType)> = [
        next_logged(&mut task_stream).await,
        next_logged(&mut task_stream).await,
        next_logged(&mut task_stream).await,
    ]
    .into_iter()
    .map(|e| (e.task_id.clone(), e.r#type()))
    .collect();
    assert_eq!(
        kinds,
        vec![
            ("task_1".into(), pb::EventType::TaskStarted),
            ("task_1".into(), pb::EventType::RealTimeUpdate),
            ("task_1".into(), pb::EventType::TaskCompleted),
        ]
    );

    // Only agent-b's lifecycle events of the chosen types: started (with the task) and
    // completed (with its result).
    let started = next_logged(&mut agent_stream).await;
    assert_eq!(
        (started.r#type(), started.agent_id.as_str()),
        (pb::EventType::TaskStarted, "agent-b")
    );
    let Some(pb::event::Detail::Task(task)) = started.detail else {
        panic!("TASK_STARTED carries the task");
    };
    assert_eq!(task.description, "two");
    let completed = next_logged(&mut agent_stream).await;
    assert_eq!(completed.r#type(), pb::EventType::TaskCompleted);
    assert_eq!(completed.task_id, "task_2");

    // Nothing else arrives on either stream: only heartbeats until the deadline below.
    let quiet = tokio::time::timeout(Duration::from_millis(300), next_logged(&mut task_stream)).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
}

/// A publisher emits thousands of events while a subscriber is cut and resumed with
/// `after_seq` over 100 times: it ends with every seq exactly once, in order.
#[tokio::test]
async fn resume_after_seq_across_many_cuts_sees_every_seq_once() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client.start_task(StartTask::new("agent", "busy")).await.unwrap();
    const UPDATES: u64 = 3000;

    let publisher = {
        let client = client.clone();
        let task_id = task.id.clone();
        tokio::spawn(async move {
            for i in 0..UPDATES {
                client.publish_update(&task_id, json!({"i": i})).await.unwrap();
            }
        })
    };

    // Seq 1 is TASK_STARTED; the updates are seqs 2..=UPDATES+1.
    let last_seq = UPDATES + 1;
    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0u64;
    let mut cuts = 0u32;
    while after < last_seq {
        let request = pb::SubscribeRequest {
            after_seq: Some(after),
            ..Default::default()
        };
        let (mut stream, start) = open(&channel, request).await;
        assert_eq!(start.resume_after_seq, after);
        // Read a few events (varying), then cut the stream.
        let take = 5 + (cuts as usize * 7) % 40;
        for _ in 0..take {
            if after == last_seq {
                break;
            }
            let event = next_logged(&mut stream).await;
            seen.push(event.seq);
            after = event.seq;
        }
        drop(stream);
        cuts += 1;
    }
    publisher.await.unwrap();
    assert!(cuts >= 100, "only {cuts} cuts");
    let expected: Vec<u64> = (1..=last_seq).collect();
    assert_eq!(seen, expected, "every seq exactly once, in order");
}

/// A snapshot taken while publishers are busy, followed by the live tail, loses and
/// doubles nothing: applying the tail to the snapshot gives the final state.
#[tokio::test]
async fn snapshot_then_live_tail_under_concurrent_publishing() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let ids: Vec<String> = (0..8).map(|i| format!("snap-{i}")).collect();
    for id in &ids {
        client
            .start_task(StartTask::new("agent", "work").with_task_id(id))
            .await
            .unwrap();
    }
    const ROUNDS: u64 = 200;
    let publishers: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                for i in 1..=ROUNDS {
                    client
                        .report_progress(&id, i as f64 / ROUNDS as f64, format!("{i}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Subscribe while they run.
    tokio::task::yield_now().await;
    let request = pb::SubscribeRequest {
        filter: Some(filter(&[], &["agent"], &[])),
        snapshot: true,
        ..Default::default()
    };
    let (mut stream, start) = open(&channel, request).await;
    let mut versions = std::collections::HashMap::new();
    for _ in 0..ids.len() {
        let snap = next(&mut stream).await;
        assert_eq!(snap.r#type(), pb::EventType::TaskSnapshot);
        let Some(pb::event::Detail::Task(task)) = snap.detail else {
            panic!("snapshot carries the task");
        };
        versions.insert(task.task_id.clone(), task.version);
    }
    for p in publishers {
        p.await.unwrap();
    }
    // Each task ends at version 1 + ROUNDS; every event after the snapshot must bump the
    // version by exactly one (nothing lost, nothing doubled) and have seq > the snapshot's.
    let mut last_seq = start.resume_after_seq;
    while versions.values().any(|v| *v < 1 + ROUNDS) {
        let event = next_logged(&mut stream).await;
        assert!(event.seq > last_seq, "seq {} after {last_seq}", event.seq);
        last_seq = event.seq;
        let version = versions.get_mut(&event.task_id).unwrap();
        assert_eq!(
            event.task_version,
            *version + 1,
            "task {} continues its version",
            event.task_id
        );
        *version = event.task_version;
    }
}

/// OUT_OF_RANGE after retention, naming the oldest retained seq; a snapshot subscriber
/// gets STREAM_RESET and fresh snapshots instead.
#[tokio::test]
async fn out_of_range_after_retention_and_reset_with_snapshot() {
    let server = TestServer::start_with(Settings {
        event_retention_count: 10,
        ..settings()
    })
    .await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client
        .start_task(StartTask::new("agent", "x").with_task_id("r1"))
        .await
        .unwrap();
    for i in 0..30 {
        client.publish_update(&task.id, json!({"i": i})).await.unwrap();
    }
    // Head is 31; the 10 newest (22..=31) are retained.
    let err = subscribe(
        &channel,
        pb::SubscribeRequest {
            after_seq: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("oldest retained seq is 22"), "{}", err.message());

    // Still retained: replays from there.
    let (mut stream, _) = open(
        &channel,
        pb::SubscribeRequest {
            after_seq: Some(21),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next_logged(&mut stream).await.seq, 22);

    // With a snapshot: reset marker, then the task's current state.
    let (mut stream, _) = open(
        &channel,
        pb::SubscribeRequest {
            after_seq: Some(5),
            snapshot: true,
            ..Default::default()
        },
    )
    .await;
    let reset = next(&mut stream).await;
    assert_eq!(reset.r#type(), pb::EventType::StreamReset);
    let snap = next(&mut stream).await;
    assert_eq!(snap.r#type(), pb::EventType::TaskSnapshot);
    assert_eq!(snap.task_version, 31);

    // after_seq ahead of the head is out of range too (another server's seq).
    let err = subscribe(
        &channel,
        pb::SubscribeRequest {
            after_seq: Some(1000),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}

/// An idle stream gets a HEARTBEAT with the head seq, a fresh resume point even for a
/// filter that matched nothing.
#[tokio::test]
async fn heartbeat_on_idle_carries_head_seq() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let (mut stream, _) = open(
        &channel,
        pb::SubscribeRequest {
            filter: Some(filter(&["other"], &[], &[])),
            ..Default::default()
        },
    )
    .await;
    let task = client.start_task(StartTask::new("agent", "x")).await.unwrap();
    client.report_progress(&task.id, 0.5, "").await.unwrap();
    // The first heartbeat after both writes carries head 2 and resume point 2.
    loop {
        let event = next(&mut stream).await;
        assert_eq!(event.r#type(), pb::EventType::Heartbeat);
        let Some(pb::event::Detail::Stream(detail)) = event.detail else {
            panic!("heartbeat carries stream detail");
        };
        if detail.head_seq == 2 {
            assert_eq!(detail.resume_after_seq, 2);
            break;
        }
    }
}

/// After `max_stream_duration` the stream ends with STREAM_END carrying the resume seq,
/// and then closes.
#[tokio::test]
async fn stream_end_at_max_duration() {
    let server = TestServer::start_with(Settings {
        stream_interval: Duration::from_millis(50),
        max_stream_duration: Duration::from_millis(300),
        ..common::memory()
    })
    .await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client.start_task(StartTask::new("agent", "x")).await.unwrap();
    let (mut stream, _) = open(&channel, pb::SubscribeRequest::default()).await;
    client.report_progress(&task.id, 0.5, "").await.unwrap();
    let end = loop {
        let event = next(&mut stream).await;
        if event.r#type() == pb::EventType::StreamEnd {
            break event;
        }
    };
    let Some(pb::event::Detail::Stream(detail)) = end.detail else {
        panic!("STREAM_END carries stream detail");
    };
    assert_eq!(detail.reason(), pb::StreamEndReason::MaxDuration);
    assert_eq!(detail.resume_after_seq, 2);
    let after = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap();
    assert!(after.is_none(), "the stream closes after STREAM_END: {after:?}");
}

/// `enable_streaming = false`: Subscribe answers UNAVAILABLE while polling works.
#[tokio::test]
async fn streaming_disabled_is_unavailable() {
    let server = TestServer::start_with(Settings {
        enable_streaming: false,
        ..common::memory()
    })
    .await;
    let channel = server.channel().await;
    let err = subscribe(&channel, pb::SubscribeRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("enable_streaming"), "{}", err.message());
    let client = server.client().await;
    assert!(client.status(StatusQuery::default()).await.is_ok());
}

/// A client that goes away frees its subscription at once (statistics show it).
#[tokio::test]
async fn dropped_client_frees_its_subscription() {
    let server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    {
        // A separate connection that is closed entirely.
        let channel = server.channel().await;
        let (_stream, _) = open(&channel, pb::SubscribeRequest::default()).await;
        let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
        assert_eq!(stats.active_streams, 1);
    }
    // Freed as soon as the server sees the stream reset: wait for it by watching the
    // counter with a deadline, not a fixed sleep.
    let freed = tokio::time::timeout(DEADLINE, async {
        loop {
            let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
            if stats.active_streams == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(freed.is_ok(), "subscription not freed");
}

/// Bad filters are refused naming the field.
#[tokio::test]
async fn bad_filters_are_refused() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    for (request, field) in [
        (
            pb::SubscribeRequest {
                filter: Some(pb::SubscriptionFilter {
                    event_types: vec![0],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.event_types",
        ),
        (
            pb::SubscribeRequest {
                filter: Some(filter(&["bad id"], &[], &[])),
                ..Default::default()
            },
            "filter.task_ids",
        ),
    ] {
        let err = subscribe(&channel, request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
}

/// A subscriber that never reads does not slow the others or the publisher: over gRPC,
/// others receive every event while one stream sits unread.
#[tokio::test]
async fn unread_stream_does_not_block_others() {
    let server = TestServer::start_with(Settings {
        subscriber_buffer: 64,
        ..settings()
    })
    .await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client.start_task(StartTask::new("agent", "x")).await.unwrap();
    // Its own connection, never read after the start.
    let slow_channel = server.channel().await;
    let (_slow, _) = open(&slow_channel, pb::SubscribeRequest::default()).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        readers.push(open(&channel, pb::SubscribeRequest::default()).await.0);
    }
    const N: u64 = 5000;
    let publisher = {
        let client = client.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            for i in 0..N {
                // ~1.5 KB an event, 7.5 MB in all: far more than HTTP/2 buffers (2 MB window).
                client
                    .publish_update(&id, json!({"i": i, "pad": "x".repeat(1500)}))
                    .await
                    .unwrap();
            }
        })
    };
    // Readers share one connection, so they read concurrently (HTTP/2 flow control is
    // per connection too).
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                for expected in 2..=N + 1 {
                    let event = next_logged(&mut reader).await;
                    assert_eq!(event.seq, expected);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    tokio::time::timeout(DEADLINE, publisher).await.unwrap().unwrap();
    let stats = client.status(StatusQuery::default()).await.unwrap().statistics;
    // The readers were dropped when done; the unread stream is still open, and lagging.
    assert_eq!(stats.active_streams, 1);
    assert!(
        stats.lagging_subscribers >= 1,
        "the unread stream is counted lagging: {stats:?}"
    );
}

/// On shutdown every open stream ends with STREAM_END (reason SERVER_DRAINING, with its
/// resume seq), so the server is not held up by streams that never finish.
#[tokio::test]
async fn drain_ends_streams_with_stream_end() {
    let mut server = TestServer::start_with(settings()).await;
    let client = server.client().await;
    let channel = server.channel().await;
    let task = client.start_task(StartTask::new("agent", "x")).await.unwrap();
    let (mut stream, _) = open(&channel, pb::SubscribeRequest::default()).await;
    client.report_progress(&task.id, 0.5, "").await.unwrap();
    assert_eq!(next_logged(&mut stream).await.seq, 2);
    server.signal_shutdown();
    let end = loop {
        let event = next(&mut stream).await;
        if event.r#type() == pb::EventType::StreamEnd {
            break event;
        }
    };
    let Some(pb::event::Detail::Stream(detail)) = end.detail else {
        panic!("STREAM_END carries stream detail");
    };
    assert_eq!(detail.reason(), pb::StreamEndReason::ServerDraining);
    assert_eq!(detail.resume_after_seq, 2);
    let started = std::time::Instant::now();
    drop(stream);
    drop(channel);
    drop(client);
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
}
