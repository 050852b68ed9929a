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
    // A request timeout: a call caught by the restart fails instead of hanging.
    let client = itc_client::Client::builder(server.uri())
        .with_request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    client
        .start_task(StartTask::new("agent", "long").with_task_id("t"))
        .await
        .unwrap();
    let mut events = client
        .subscribe()
        .task("t")
        .events([EventType::RealTimeUpdate, EventType::TaskStarted])
        .after_seq(0)
        .start()
        .await
        .unwrap();

    const UPDATES: u64 = 300;
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut i = 0;
            let mut failures = 0;
            while i < UPDATES {
                match client.publish_update("t", json!({"i": i})).await {
                    Ok(_) => i += 1,
                    // The server is restarting (or the call was cut by it): try again,
                    // boundedly. A retried update that had landed adds an event, which
                    // the reader's check tolerates (it reads seqs 1..=N).
                    Err(e)
                        if (e.is_retryable()
                            || matches!(
                                e.code(),
                                Some(tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled)
                            ))
                            && failures < 400 =>
                    {
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
    let overall = tokio::time::Instant::now() + Duration::from_secs(60);
    while seqs.len() < (UPDATES + 1) as usize {
        assert!(
            tokio::time::Instant::now() < overall,
            "no progress: {} of {} events",
            seqs.len(),
            UPDATES + 1
        );
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
    tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("the publisher ends")
        .unwrap();
    assert_eq!(
        seqs,
        (1..=UPDATES + 1).collect::<Vec<u64>>(),
        "every seq once, in order"
    );
    assert!(events.resume_after_seq() > UPDATES);
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
        .data(json!({"question": "ETA?"}));
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

/// The agent side: a checkpoint after an interrupt returns `Interrupted`; the command is
/// pushed to the task handle, applied; `request_input` returns the human's answer; a
/// dropped handle fails its task; a lock guard releases on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_handles_interrupts_questions_and_drops() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let agent = client.agent("worker").connect().await.unwrap();
    let human = client
        .coordinator("alice")
        .kind(SessionKind::Human)
        .connect()
        .await
        .unwrap();

    let mut task = agent.start_task("long job").await.unwrap();
    let mut commands = task.commands().unwrap();
    task.checkpoint(0.2, "step 1").await.unwrap();

    // Interrupt: pushed to the handle at once; the next checkpoint says stop.
    let sent = human
        .coordinate(task.id(), Action::Interrupt)
        .data(json!({"reason": "check the output"}))
        .send()
        .await
        .unwrap();
    let pushed = tokio::time::timeout(DEADLINE, commands.recv()).await.unwrap().unwrap();
    assert_eq!(
        (pushed.id.as_str(), pushed.action),
        (sent.id.as_str(), Action::Interrupt)
    );
    match task.checkpoint(0.3, "step 2").await {
        Err(Error::Interrupted { reason, .. }) => assert_eq!(reason, "check the output"),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let applied = task.apply(&pushed, None).await.unwrap();
    assert_eq!(applied.state, CommandState::Applied);
    human.coordinate(task.id(), Action::Resume).send().await.unwrap();

    // A question answered by the human.
    let mut asks = client
        .subscribe()
        .task(task.id())
        .events([EventType::InputRequested])
        .start()
        .await
        .unwrap();
    let answering = {
        let human = human.clone();
        tokio::spawn(async move {
            let asked = tokio::time::timeout(DEADLINE, asks.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let request = asked.input.unwrap();
            assert_eq!(request.choices, vec!["approve", "deny"]);
            human.answer(&request.id, json!("approve")).await.unwrap();
        })
    };
    let answer = tokio::time::timeout(
        DEADLINE,
        task.request_input("Deploy to production?")
            .choices(["approve", "deny"])
            .send(),
    )
    .await
    .expect("answered before the deadline")
    .unwrap();
    assert_eq!(answer.answer, Some(json!("approve")));
    assert_eq!(answer.answered_by.as_deref(), Some("alice"));
    answering.await.unwrap();

    // Dropped while running: the task fails with a clear reason.
    let id = task.id().to_owned();
    drop(task);
    let failed = tokio::time::timeout(DEADLINE, async {
        let mut changes = client
            .subscribe()
            .task(&id)
            .events([EventType::TaskFailed])
            .after_seq(0)
            .start()
            .await
            .unwrap();
        changes.next().await.unwrap().unwrap()
    })
    .await
    .unwrap();
    assert!(failed.task.unwrap().error.unwrap().contains("dropped its task handle"));

    // A lock guard holds the lock and releases it when dropped.
    let other = agent.start_task("second").await.unwrap();
    let guard = human.lock(other.id()).await.unwrap();
    assert_eq!(
        client.get_task(other.id()).await.unwrap().lock.unwrap().holder_id,
        "alice"
    );
    let mut released = client
        .subscribe()
        .task(other.id())
        .events([EventType::LockReleased])
        .start()
        .await
        .unwrap();
    drop(guard);
    tokio::time::timeout(DEADLINE, released.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(client.get_task(other.id()).await.unwrap().lock.is_none());
    other.complete(json!({"ok": true})).await.unwrap();
    human.close().await.unwrap();
}

/// The next event of `kind` (heartbeats and other events skipped), within the deadline.
async fn next_of(stream: &mut itc_client::EventStream, kind: EventType) -> itc_client::Event {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = stream.next().await.expect("the stream goes on").expect("no error");
            if event.kind == kind {
                return event;
            }
        }
    })
    .await
    .expect("the event before the deadline")
}

/// Waits (bounded) until the server lists exactly `expected` as connected sessions.
async fn sessions_become(client: &itc_client::Client, expected: &[&str]) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let status = client.status(Default::default()).await.unwrap();
            let ids: Vec<&str> = status.sessions.iter().map(|s| s.id.as_str()).collect();
            if ids == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sessions never became {expected:?}"));
}

/// Dropping the last handle of a session ends it on the server; a handle taken over by a
/// newer connection of the same id learns it (Ended) and, dropped, leaves the new owner
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_drop_and_takeover() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = client.coordinator("sup").connect().await.unwrap();
    sessions_become(&client, &["sup"]).await;
    drop(first);
    sessions_become(&client, &[]).await;

    let old = client.coordinator("sup").connect().await.unwrap();
    let mut state = old.state();
    let new = client.coordinator("sup").connect().await.unwrap();
    client
        .start_task(StartTask::new("agent", "x").with_task_id("t"))
        .await
        .unwrap();
    let guard = new.lock("t").await.unwrap();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, itc_client::SessionState::Ended(_))),
    )
    .await
    .expect("the old handle learns it was taken over")
    .unwrap();
    drop(state);
    drop(old);
    // The new owner keeps its session and its lock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sessions_become(&client, &["sup"]).await;
    assert_eq!(client.get_task("t").await.unwrap().lock.unwrap().holder_id, "sup");
    guard.release().await.unwrap();
    new.close().await.unwrap();
}

/// A snapshot subscription gets the current state of each matching task, then the live
/// events after it.
#[tokio::test]
async fn snapshot_then_live() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .start_task(StartTask::new("agent", "one").with_task_id("a"))
        .await
        .unwrap();
    client.report_progress("a", 0.5, "half").await.unwrap();
    let mut events = client.subscribe().agent("agent").snapshot(true).start().await.unwrap();
    let snapshot = next_of(&mut events, EventType::TaskSnapshot).await;
    assert_eq!(snapshot.task.unwrap().progress, 0.5);
    client.report_progress("a", 0.75, "more").await.unwrap();
    let live = next_of(&mut events, EventType::TaskProgress).await;
    assert_eq!(live.progress.unwrap().0, 0.75);
    assert_eq!(events.resume_after_seq(), live.seq);
}

/// A session's background heartbeat keeps it past many lease TTLs; when the server
/// drains, the session says so (Reconnecting(ServerDraining)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_the_session_and_reports_drain() {
    let mut server = TestServer::start_with(Settings {
        session_ttl: Duration::from_millis(300),
        ..common::memory()
    })
    .await;
    let client = server.client().await;
    let session = client.coordinator("sup").connect().await.unwrap();
    let mut state = session.state();
    // Five TTLs without any call of ours: the heartbeat alone keeps the lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sessions_become(&client, &["sup"]).await;
    assert_eq!(*state.borrow(), itc_client::SessionState::Connected);
    server.signal_shutdown();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| *s == itc_client::SessionState::Reconnecting(itc_client::Interruption::ServerDraining)),
    )
    .await
    .expect("the drain is reported")
    .unwrap();
    drop(session);
}

/// Finishing calls: a result that cannot be serialized fails the task with that reason;
/// completing a task a coordinator already cancelled is refused and leaves it CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_task_handle() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let agent = client.agent("worker").connect().await.unwrap();
    let boss = client.coordinator("boss").connect().await.unwrap();

    let task = agent.start_task("unserializable").await.unwrap();
    let id = task.id().to_owned();
    let mut bad = std::collections::HashMap::new();
    bad.insert((1, 2), "tuple keys are not JSON");
    let err = task.complete(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidData { field: "result", .. }), "{err}");
    let failed = client.get_task(&id).await.unwrap();
    assert_eq!(failed.status, Some(itc_client::TaskStatus::Failed));
    assert!(failed.error.unwrap().contains("could not be serialized"));

    let task = agent.start_task("cancelled under it").await.unwrap();
    let id = task.id().to_owned();
    boss.coordinate(&id, Action::Cancel).send().await.unwrap();
    let err = task.complete(json!({"late": true})).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert_eq!(
        client.get_task(&id).await.unwrap().status,
        Some(itc_client::TaskStatus::Cancelled)
    );
}

/// A subscription resumes after hard connection cuts (no STREAM_END: the network just
/// fails), every event once, in order; heartbeats stay out of a type-filtered stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_resume_across_hard_cuts() {
    let server = TestServer::start_with(Settings {
        stream_interval: Duration::from_millis(50),
        ..common::memory()
    })
    .await;
    let proxy = common::Proxy::start(server.addr).await;
    let through_proxy = itc_client::Client::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let direct = server.client().await;
    direct
        .start_task(StartTask::new("agent", "x").with_task_id("t"))
        .await
        .unwrap();
    let mut events = through_proxy
        .subscribe()
        .task("t")
        .events([EventType::RealTimeUpdate])
        .after_seq(1)
        .start()
        .await
        .unwrap();
    const UPDATES: u64 = 200;
    let publisher = {
        let direct = direct.clone();
        tokio::spawn(async move {
            for i in 0..UPDATES {
                direct.publish_update("t", json!({"i": i})).await.unwrap();
            }
        })
    };
    let mut seqs = Vec::new();
    while seqs.len() < UPDATES as usize {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event before the deadline")
            .expect("the stream goes on")
            .expect("no error");
        assert_eq!(event.kind, EventType::RealTimeUpdate, "only what was asked for");
        seqs.push(event.seq);
        if seqs.len() % 50 == 0 {
            proxy.cut();
        }
    }
    publisher.await.unwrap();
    assert_eq!(
        seqs,
        (2..=UPDATES + 1).collect::<Vec<u64>>(),
        "every seq once, in order"
    );
}

/// A session survives a hard cut of its connection: it reports the loss, reconnects, and
/// is connected again on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_a_hard_cut() {
    let server = TestServer::start().await;
    let proxy = common::Proxy::start(server.addr).await;
    let through_proxy = itc_client::Client::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let direct = server.client().await;
    let session = through_proxy.coordinator("sup").connect().await.unwrap();
    let mut state = session.state();
    sessions_become(&direct, &["sup"]).await;
    proxy.cut();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, itc_client::SessionState::Reconnecting(_))),
    )
    .await
    .expect("the loss is reported")
    .unwrap();
    tokio::time::timeout(DEADLINE, state.wait_for(|s| *s == itc_client::SessionState::Connected))
        .await
        .expect("connected again")
        .unwrap();
    sessions_become(&direct, &["sup"]).await;
    drop(state);
    session.close().await.unwrap();
}

/// Across a hard cut of the agent's connection, a command sent meanwhile still reaches
/// the task handle, once (re-pushed on the new Heartbeat stream), and a question answered
/// while the agent's heartbeat was down is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_answers_survive_a_cut() {
    let server = TestServer::start().await;
    let proxy = common::Proxy::start(server.addr).await;
    let through_proxy = itc_client::Client::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let direct = server.client().await;
    let agent = through_proxy.agent("worker").connect().await.unwrap();
    let human = direct
        .coordinator("alice")
        .kind(SessionKind::Human)
        .connect()
        .await
        .unwrap();
    let mut task = agent.start_task("cut off").await.unwrap();
    let mut commands = task.commands().unwrap();
    let mut state = agent.state();

    // The agent is idle (no call of its own in flight) when its connection drops.
    proxy.cut();
    let sent = human
        .coordinate(task.id(), Action::Custom)
        .data(json!({"note": "sent during the cut"}))
        .send()
        .await
        .unwrap();
    let received = tokio::time::timeout(DEADLINE, commands.recv()).await.unwrap().unwrap();
    assert_eq!(received.id, sent.id);
    task.apply(&received, None).await.unwrap();
    let again = tokio::time::timeout(Duration::from_millis(300), commands.recv()).await;
    assert!(again.is_err(), "delivered once: {again:?}");
    tokio::time::timeout(DEADLINE, state.wait_for(|s| *s == itc_client::SessionState::Connected))
        .await
        .unwrap()
        .unwrap();
    drop(state);

    // A question answered right away (perhaps before the waiter exists) is not lost.
    let mut asks = direct
        .subscribe()
        .task(task.id())
        .events([EventType::InputRequested])
        .start()
        .await
        .unwrap();
    let answering = {
        let human = human.clone();
        tokio::spawn(async move {
            let asked = next_of(&mut asks, EventType::InputRequested).await;
            human.answer(&asked.input.unwrap().id, json!("go")).await.unwrap();
        })
    };
    let answer = tokio::time::timeout(DEADLINE, task.request_input("Continue?").send())
        .await
        .expect("answered before the deadline")
        .unwrap();
    assert_eq!(answer.answer, Some(json!("go")));
    answering.await.unwrap();
    task.complete(json!("done")).await.unwrap();
}

/// GetStatus lists each session with what the CLI's `itc sessions` shows: kind,
/// capabilities, lease, its subscriptions with their filters, and the locks it holds;
/// opening an id again reports the takeover.
#[tokio::test]
async fn sessions_are_listed_in_full() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let opened = client
        .open_session("alice", SessionKind::Human, Capabilities::all())
        .await
        .unwrap();
    assert!(!opened.taken_over);
    assert!(opened.lease > Duration::ZERO);
    let again = client
        .open_session("alice", SessionKind::Human, Capabilities::all())
        .await
        .unwrap();
    assert!(again.taken_over);
    assert_eq!(again.generation, opened.generation + 1);
    client
        .start_task(StartTask::new("agent", "x").with_task_id("t"))
        .await
        .unwrap();
    let lock = client.acquire_lock("alice", "t", None).await.unwrap();
    let _events = client
        .subscribe()
        .session("alice")
        .agent("agent")
        .events([EventType::TaskProgress])
        .start()
        .await
        .unwrap();
    let status = client.status(Default::default()).await.unwrap();
    let alice = status.sessions.iter().find(|s| s.id == "alice").unwrap();
    assert_eq!(alice.kind, SessionKind::Human);
    assert_eq!(alice.capabilities, Capabilities::all());
    assert_eq!(alice.generation, again.generation);
    assert_eq!(alice.lease_ttl, again.lease);
    assert!(alice.connected.is_some() && alice.lease_expires > alice.last_activity);
    assert_eq!(alice.locked_task_ids, ["t"]);
    assert_eq!(alice.subscriptions.len(), 1);
    let subscription = &alice.subscriptions[0];
    assert_eq!(subscription.agent_ids, ["agent"]);
    assert_eq!(subscription.event_types, [EventType::TaskProgress]);
    assert!(subscription.task_ids.is_empty() && !subscription.id.is_empty());
    client.release_lock("alice", &lock).await.unwrap();
}
