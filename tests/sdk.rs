//! End-to-end tests of the SDK (`itc-client`) against a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::{DEADLINE, TestServer};
use itc_client::{Action, Capabilities, CommandState, Error, EventType, SessionKind, StartTask};
use itc_server::config::Settings;
use serde_json::json;
use tokio_stream::StreamExt;

/// A subscription resumes by itself across STREAM_END (a short max_stream_duration) and a
/// server restart: every event arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_resume_across_stream_ends_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || Settings {
        data_dir: dir.path().to_owned(),
        in_memory: false,
        stream_interval: Duration::from_millis(50),
        max_stream_duration: Duration::from_millis(300),
        ..Settings::default()
    };
    let server = TestServer::start_with(settings()).await;
    let addr = server.addr;
    let client = server.client().await;
    client
        .start_task(StartTask::new("agent", "long").with_task_id("t"))
        .await
        .unwrap();
    let mut events = client.subscribe().task("t").after_seq(0).start().await.unwrap();

    const UPDATES: u64 = 300;
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut i = 0;
            let mut failures = 0;
            while i < UPDATES {
                match client.publish_update("t", json!({"i": i})).await {
                    Ok(_) => i += 1,
                    // The server is restarting: try again, boundedly.
                    Err(e) if e.is_retryable() && failures < 400 => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
        })
    };

    let mut seqs = Vec::new();
    let mut restarted = false;
    let mut server = Some(server);
    while seqs.len() < (UPDATES + 1) as usize {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event before the deadline")
            .expect("the stream goes on")
            .expect("no error");
        if event.seq == 0 {
            continue;
        }
        seqs.push(event.seq);
        if !restarted && seqs.len() == 100 {
            restarted = true;
            server.take().unwrap().stop().await.unwrap();
            server = Some(TestServer::start_on(addr, settings()).await);
        }
    }
    publisher.await.unwrap();
    assert_eq!(
        seqs,
        (1..=UPDATES + 1).collect::<Vec<u64>>(),
        "every seq once, in order"
    );
    assert_eq!(events.resume_after_seq(), UPDATES + 1);
    drop(server);
}

/// A subscription asking for events no longer retained gets the typed OUT_OF_RANGE.
#[tokio::test]
async fn out_of_range_is_typed() {
    let server = TestServer::start_with(Settings {
        event_retention_count: 3,
        ..common::memory()
    })
    .await;
    let client = server.client().await;
    client
        .start_task(StartTask::new("a", "x").with_task_id("t"))
        .await
        .unwrap();
    for i in 0..10 {
        client.publish_update("t", json!({"i": i})).await.unwrap();
    }
    let err = client.subscribe().after_seq(1).start().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfRange {
                oldest_retained_seq: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
}

/// Coordination through the SDK: a lock is taken, a command without its token is refused,
/// one under it is admitted and seen by a subscriber.
#[tokio::test]
async fn coordinate_and_wait_for_the_answer() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .open_session("sup", SessionKind::Supervisor, Capabilities::all())
        .await
        .unwrap();
    client
        .start_task(StartTask::new("agent", "x").with_task_id("t"))
        .await
        .unwrap();
    let mut commands = client
        .subscribe()
        .task("t")
        .events([EventType::AgentCoordination])
        .start()
        .await
        .unwrap();
    let answering = {
        tokio::spawn(async move {
            let admitted = tokio::time::timeout(DEADLINE, commands.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            admitted.command.unwrap().id
        })
    };
    let lock = client.acquire_lock("sup", "t", None).await.unwrap();
    let call = client
        .coordinate("sup", "t", Action::Query)
        .data(json!({"question": "ETA?"}))
        .unwrap();
    let refused = call.clone().send().await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Aborted),
        "the holder must pass its token"
    );
    let command = call.under(&lock).send().await.unwrap();
    assert_eq!(command.state, CommandState::Admitted);
    assert_eq!(answering.await.unwrap(), command.id);
    client.release_lock("sup", &lock).await.unwrap();
}
