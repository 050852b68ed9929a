//! Domain tests of the core, without gRPC.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::store::MemoryStore;

fn core() -> Core {
    Core::in_memory(CoreConfig {
        max_payload_bytes: 1024,
        default_stall_timeout: Duration::from_secs(300),
        max_finished_tasks: 3,
        ..CoreConfig::default()
    })
}

fn new_task(id: &str) -> NewTask {
    NewTask {
        task_id: Some(id.to_owned()),
        agent_id: "agent-1".to_owned(),
        description: "work".to_owned(),
        ..NewTask::default()
    }
}

fn map(v: serde_json::Value) -> JsonMap {
    v.as_object().cloned().unwrap_or_default()
}

/// Start, progress, update and complete each bump the version and append one event with
/// the next seq, with no gap.
#[tokio::test]
async fn lifecycle_bumps_version_and_seq() {
    let core = core();
    let task = core.start_task(new_task("t1")).await.unwrap();
    assert_eq!(
        (task.version, task.status, task.create_seq),
        (1, TaskStatus::Running, 1)
    );
    let ack = core.report_progress("t1", 0.5, "half".into()).await.unwrap();
    assert_eq!((ack.version, ack.seq), (2, 2));
    let ack = core.publish_update("t1", map(json!({"k": 1}))).await.unwrap();
    assert_eq!((ack.version, ack.seq), (3, 3));
    let done = core
        .finish_task("t1", Outcome::Completed(Some(json!({"ok": true}))))
        .await
        .unwrap();
    assert_eq!((done.version, done.status), (4, TaskStatus::Completed));
    let events = core.store().read_events(0, 100).unwrap();
    let kinds: Vec<(u64, EventType)> = events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, EventType::TaskStarted),
            (2, EventType::TaskProgress),
            (3, EventType::RealTimeUpdate),
            (4, EventType::TaskCompleted),
        ]
    );
    assert_eq!(core.head_seq(), 4);
    // Finished tasks stay queryable.
    assert_eq!(core.task("t1").unwrap().result, Some(json!({"ok": true})));
}

/// A duplicate id is refused and the first task is untouched.
#[tokio::test]
async fn duplicate_id_is_refused() {
    let core = core();
    core.start_task(new_task("t1")).await.unwrap();
    let mut other = new_task("t1");
    other.description = "other".into();
    assert!(matches!(
        core.start_task(other).await,
        Err(CoreError::TaskExists { .. })
    ));
    assert_eq!(core.task("t1").unwrap().description, "work");
    assert_eq!(core.head_seq(), 1);
}

/// Without an id the server assigns a UUID.
#[tokio::test]
async fn server_assigns_uuid() {
    let core = core();
    let mut new = new_task("x");
    new.task_id = None;
    let task = core.start_task(new).await.unwrap();
    assert!(uuid::Uuid::parse_str(&task.id).is_ok());
}

/// A finished task refuses changes naming both states, and nothing is appended.
#[tokio::test]
async fn finished_task_refuses_changes() {
    let core = core();
    core.start_task(new_task("t1")).await.unwrap();
    core.finish_task("t1", Outcome::Cancelled(Some("stop".into())))
        .await
        .unwrap();
    let err = core.report_progress("t1", 0.1, String::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "task `t1` is CANCELLED, a final state: cannot report progress"
    );
    let err = core.finish_task("t1", Outcome::Completed(None)).await.unwrap_err();
    assert!(matches!(
        err,
        CoreError::IllegalTransition {
            from: TaskStatus::Cancelled,
            to: TaskStatus::Completed,
            ..
        }
    ));
    assert_eq!(core.head_seq(), 2);
}

/// Invalid input changes nothing.
#[tokio::test]
async fn invalid_input_changes_nothing() {
    let core = core();
    core.start_task(new_task("t1")).await.unwrap();
    assert!(core.report_progress("t1", f64::NAN, String::new()).await.is_err());
    assert!(core.report_progress("t1", 1.5, String::new()).await.is_err());
    assert!(core.report_progress("nope", 0.5, String::new()).await.is_err());
    let big = map(json!({"k": "x".repeat(2000)}));
    assert!(core.publish_update("t1", big).await.is_err());
    let task = core.task("t1").unwrap();
    assert_eq!((task.version, task.progress), (1, 0.0));
    assert_eq!(core.head_seq(), 1);
}

/// A PENDING task starts with its first progress report (TASK_CREATED, then
/// TASK_STARTED and TASK_PROGRESS).
#[tokio::test]
async fn pending_task_starts_on_progress() {
    let core = core();
    let mut new = new_task("p");
    new.pending = true;
    let task = core.start_task(new).await.unwrap();
    assert_eq!(task.status, TaskStatus::Pending);
    assert!(task.start_time.is_none());
    core.report_progress("p", 0.1, "go".into()).await.unwrap();
    let kinds: Vec<EventType> = core
        .store()
        .read_events(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![EventType::TaskCreated, EventType::TaskStarted, EventType::TaskProgress]
    );
    let page = core.status(&StatusQuery::default()).unwrap();
    assert_eq!(page.counters.tasks_started, 1);
}

/// Finished tasks past `max_finished_tasks` are forgotten, oldest finish first.
#[tokio::test]
async fn finished_task_retention() {
    let core = core();
    for i in 0..5 {
        let id = format!("t{i}");
        core.start_task(new_task(&id)).await.unwrap();
        core.finish_task(&id, Outcome::Completed(None)).await.unwrap();
    }
    assert!(matches!(core.task("t0"), Err(CoreError::TaskNotFound { .. })));
    assert!(matches!(core.task("t1"), Err(CoreError::TaskNotFound { .. })));
    assert!(core.task("t2").is_ok());
    assert_eq!(core.status(&StatusQuery::default()).unwrap().total_size, 3);
}

/// Pages follow creation order, carry the filters, and cover every match once.
#[tokio::test]
async fn pagination_and_filters() {
    let core = core();
    for i in 0..7 {
        let mut new = new_task(&format!("t{i}"));
        new.agent_id = if i % 2 == 0 { "even".into() } else { "odd".into() };
        core.start_task(new).await.unwrap();
    }
    let mut query = StatusQuery {
        agent_ids: vec!["even".into()],
        page_size: 2,
        ..StatusQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = core.status(&query).unwrap();
        assert_eq!(page.total_size, 4);
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => break,
        }
    }
    assert_eq!(seen, vec!["t0", "t2", "t4", "t6"]);
    // A token with other filters is refused.
    let page = core
        .status(&StatusQuery {
            agent_ids: vec!["even".into()],
            page_size: 2,
            ..StatusQuery::default()
        })
        .unwrap();
    let other = StatusQuery {
        page_token: page.next_page_token,
        ..StatusQuery::default()
    };
    assert!(matches!(core.status(&other), Err(CoreError::InvalidArgument { ref field, .. }) if field == "page_token"));
    // Status filter.
    core.finish_task(
        "t1",
        Outcome::Failed(TaskError {
            message: "boom".into(),
            details: None,
        }),
    )
    .await
    .unwrap();
    let failed = core
        .status(&StatusQuery {
            statuses: vec![TaskStatus::Failed],
            ..StatusQuery::default()
        })
        .unwrap();
    assert_eq!(
        failed.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["t1"]
    );
    assert_eq!(failed.active_tasks, 6);
    assert_eq!(failed.counters.tasks_failed, 1);
}

/// After close, writes are refused as shutting down; reads still work.
#[tokio::test]
async fn close_refuses_writes() {
    let core = core();
    core.start_task(new_task("t1")).await.unwrap();
    core.close();
    assert!(matches!(
        core.report_progress("t1", 0.2, String::new()).await,
        Err(CoreError::ShuttingDown)
    ));
    assert!(core.task("t1").is_ok());
}

/// A subscriber that never reads does not hold back 100 readers or the publisher through
/// 100,000 events: the readers get every event in order, the publisher finishes, and the
/// unread subscription's memory stays within its inbox bound (it is counted lagging and
/// reads the log instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_publisher_or_others() {
    const EVENTS: u64 = 100_000;
    const READERS: usize = 100;
    const INBOX: usize = 256;
    let core = Core::in_memory(CoreConfig {
        subscriber_buffer: INBOX,
        event_buffer: 4096,
        ..CoreConfig::default()
    });
    core.start_task(new_task("t")).await.unwrap();
    let slow = core.subscribe(SubscribeRequest::default()).unwrap();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
        readers.push(tokio::spawn(async move {
            let mut expected = 2u64;
            while expected <= EVENTS + 1 {
                match sub.next().await {
                    Some(Ok(StreamItem::Event(e))) => {
                        assert_eq!(e.seq, expected);
                        expected += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    let data = map(json!({"k": 1}));
    let mut max_inbox = 0;
    for i in 0..EVENTS {
        core.publish_update("t", data.clone()).await.unwrap();
        if i % 1000 == 0 {
            max_inbox = max_inbox.max(slow.shared.inbox().events.len());
        }
    }
    for reader in readers {
        reader.await.unwrap();
    }
    max_inbox = max_inbox.max(slow.shared.inbox().events.len());
    assert!(max_inbox <= INBOX, "unread inbox grew to {max_inbox}");
    let stats = core.stream_stats();
    assert_eq!(stats.lagging, 1, "{stats:?}");
    assert_eq!(stats.delivered, EVENTS * READERS as u64);
    drop(slow);
    assert_eq!(
        core.stream_stats(),
        StreamStats {
            active: 0,
            lagging: 0,
            ..core.stream_stats()
        }
    );
}

/// With 10,000 subscriptions each on its own task, an event reaches only the matching
/// one: the others' inboxes stay empty and none of them is woken.
#[tokio::test]
async fn fan_out_follows_matching_subscribers() {
    const SUBS: usize = 10_000;
    let core = core();
    for i in 0..SUBS {
        core.start_task(new_task(&format!("t{i}"))).await.unwrap();
    }
    let mut subs = Vec::new();
    for i in 0..SUBS {
        let request = SubscribeRequest {
            filter: Filter {
                task_ids: vec![format!("t{i}")],
                ..Filter::default()
            },
            ..SubscribeRequest::default()
        };
        subs.push(core.subscribe(request).unwrap());
    }
    let event = {
        let _ = core.publish_update("t7", map(json!({}))).await.unwrap();
        core.store().read_events(core.head_seq() - 1, 1).unwrap()
    };
    let with_events: Vec<usize> = subs
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.shared.inbox().events.is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(with_events, vec![7]);
    // The index hands an event to its matching subscription only.
    let wake = core.inner.hub.append(&event);
    assert_eq!(wake.iter().map(|s| s.id).collect::<Vec<_>>(), vec![subs[7].id()]);
}

/// A replay older than the in-memory ring reads the store, then the ring, in order.
#[tokio::test]
async fn replay_reads_the_store_past_the_ring() {
    let core = Core::in_memory(CoreConfig {
        event_buffer: 16,
        ..CoreConfig::default()
    });
    core.start_task(new_task("t")).await.unwrap();
    for i in 0..99 {
        core.publish_update("t", map(json!({"i": i}))).await.unwrap();
    }
    let mut sub = core
        .subscribe(SubscribeRequest {
            after_seq: Some(0),
            ..SubscribeRequest::default()
        })
        .unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 100 {
        match sub.next().await {
            Some(Ok(StreamItem::Event(e))) => seqs.push(e.seq),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
}

/// The parts of a test store other than `commit`: its name, and reads from its `inner`
/// in-memory store.
macro_rules! reads_from_inner {
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn recover(&self) -> Result<Recovered, crate::store::StoreError> {
            self.inner.recover()
        }
        fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, crate::store::StoreError> {
            self.inner.read_events(after_seq, limit)
        }
        fn oldest_seq(&self) -> u64 {
            self.inner.oldest_seq()
        }
    };
}

/// A store whose commits complete only when the test lets them: the window in which a
/// batch is appended but not yet durable, which the in-memory store never shows.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Store for GatedStore {
    reads_from_inner!("gated");
    fn commit(&self, batch: Batch) -> Commit {
        let done = self.inner.commit(batch);
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            done.await
        })
    }
}

fn gated() -> (Core, Arc<tokio::sync::Semaphore>) {
    gated_keeping(1000)
}

/// As [`gated`], retaining only the newest `retained` events.
fn gated_keeping(retained: usize) -> (Core, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Arc::new(GatedStore {
        inner: MemoryStore::new(retained, Duration::from_secs(3600)),
        gate: gate.clone(),
    });
    let config = CoreConfig {
        // Long enough that no test here can pass by waiting for a heartbeat.
        stream_interval: Duration::from_secs(60),
        ..CoreConfig::default()
    };
    (Core::open(config, store).unwrap(), gate)
}

async fn next_item(sub: &mut Subscription) -> StreamItem {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an item before the deadline")
        .expect("the stream goes on")
        .expect("no error")
}

/// A subscription opened while a write is in flight starts only once that write is
/// durable: its start point is never one that a crash could take back.
#[tokio::test]
async fn start_waits_until_the_head_is_durable() {
    let (core, gate) = gated();
    gate.add_permits(1);
    core.start_task(new_task("t")).await.unwrap();
    let writer = tokio::spawn({
        let core = core.clone();
        async move { core.report_progress("t", 0.5, String::new()).await }
    });
    while core.head_seq() < 2 {
        tokio::task::yield_now().await;
    }
    let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(early.is_err(), "sent before durable: {early:?}");
    gate.add_permits(1);
    match next_item(&mut sub).await {
        StreamItem::Start { resume_after_seq, .. } => assert_eq!(resume_after_seq, 2),
        other => panic!("unexpected {other:?}"),
    }
    writer.await.unwrap().unwrap();
}

/// A snapshot subscriber past retention whose stream ends (drain) before its Reset is
/// durable is not told to resume from the head: its resume point is its own `after_seq`,
/// so that resuming resets it again instead of silently skipping events.
#[tokio::test]
async fn a_stream_ended_before_its_reset_resumes_from_where_the_client_was() {
    let (core, gate) = gated_keeping(3);
    gate.add_permits(8);
    core.start_task(new_task("t")).await.unwrap();
    for i in 0..7 {
        core.report_progress("t", f64::from(i) / 10.0, String::new())
            .await
            .unwrap();
    }
    assert_eq!(core.head_seq(), 8);
    let writer = tokio::spawn({
        let core = core.clone();
        async move { core.report_progress("t", 0.9, String::new()).await }
    });
    while core.head_seq() < 9 {
        tokio::task::yield_now().await;
    }
    // after_seq 1 is past retention (the oldest is 6): a Reset waits for seq 9.
    let mut sub = core
        .subscribe(SubscribeRequest {
            after_seq: Some(1),
            snapshot: true,
            ..SubscribeRequest::default()
        })
        .unwrap();
    core.close();
    match next_item(&mut sub).await {
        StreamItem::End { resume_after_seq, .. } => assert_eq!(resume_after_seq, 1),
        other => panic!("expected the stream to end first, got {other:?}"),
    }
    gate.add_permits(1);
    let _ = writer.await;
}

/// A replaying subscriber that has caught up with what is durable is woken when an
/// in-flight matching write becomes durable, without waiting for a heartbeat.
#[tokio::test]
async fn replay_wakes_when_an_in_flight_write_becomes_durable() {
    let (core, gate) = gated();
    gate.add_permits(1);
    core.start_task(new_task("t")).await.unwrap();
    let writer = tokio::spawn({
        let core = core.clone();
        async move { core.report_progress("t", 0.5, String::new()).await }
    });
    while core.head_seq() < 2 {
        tokio::task::yield_now().await;
    }
    let mut sub = core
        .subscribe(SubscribeRequest {
            after_seq: Some(0),
            ..SubscribeRequest::default()
        })
        .unwrap();
    assert!(matches!(next_item(&mut sub).await, StreamItem::Start { .. }));
    assert!(matches!(next_item(&mut sub).await, StreamItem::Event(e) if e.seq == 1));
    let waiting = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(waiting.is_err(), "seq 2 is not durable yet: {waiting:?}");
    gate.add_permits(1);
    assert!(matches!(next_item(&mut sub).await, StreamItem::Event(e) if e.seq == 2));
    writer.await.unwrap().unwrap();
}

/// A writer whose caller goes away before its commit completes still makes its events
/// visible once they are durable (a cancelled gRPC call drops the handler's future).
#[tokio::test]
async fn abandoned_write_still_becomes_visible() {
    let (core, gate) = gated();
    gate.add_permits(1);
    core.start_task(new_task("t")).await.unwrap();
    let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
    assert!(matches!(next_item(&mut sub).await, StreamItem::Start { .. }));
    let writer = tokio::spawn({
        let core = core.clone();
        async move { core.report_progress("t", 0.5, String::new()).await }
    });
    while core.head_seq() < 2 {
        tokio::task::yield_now().await;
    }
    writer.abort();
    assert!(writer.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    assert!(matches!(next_item(&mut sub).await, StreamItem::Event(e) if e.seq == 2));
}

/// A subscriber that falls past retention in mid-stream is told OUT_OF_RANGE (counted
/// dropped); one that asked for snapshots is reset to fresh snapshots instead.
#[tokio::test]
async fn falling_past_retention_mid_stream() {
    let store = Arc::new(MemoryStore::new(100, Duration::from_secs(3600)));
    let config = CoreConfig {
        event_buffer: 16,
        ..CoreConfig::default()
    };
    let core = Core::open(config, store).unwrap();
    core.start_task(new_task("t")).await.unwrap();
    for _ in 0..99 {
        core.publish_update("t", map(json!({}))).await.unwrap();
    }
    let replay = |snapshot| SubscribeRequest {
        after_seq: Some(0),
        snapshot,
        ..SubscribeRequest::default()
    };
    let mut plain = core.subscribe(replay(false)).unwrap();
    let mut snap = core.subscribe(replay(true)).unwrap();
    for sub in [&mut plain, &mut snap] {
        assert!(matches!(next_item(sub).await, StreamItem::Start { .. }));
        assert!(matches!(next_item(sub).await, StreamItem::Event(e) if e.seq == 1));
    }
    // 200 more events: the store keeps seqs 201..=300, the ring the last 16.
    for _ in 0..200 {
        core.publish_update("t", map(json!({}))).await.unwrap();
    }
    // The plain subscriber still has a batch it read before; it then hits the hole.
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), plain.next())
            .await
            .unwrap()
        {
            Some(Ok(StreamItem::Event(_))) => {}
            Some(Err(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        matches!(
            err,
            CoreError::OutOfRange {
                oldest_retained_seq: 201,
                ..
            }
        ),
        "{err}"
    );
    assert!(plain.next().await.is_none(), "the stream ends after OUT_OF_RANGE");
    let reset = loop {
        match next_item(&mut snap).await {
            StreamItem::Event(_) => {}
            other => break other,
        }
    };
    assert!(
        matches!(
            reset,
            StreamItem::Reset {
                oldest_retained_seq: 201,
                resume_after_seq: 300
            }
        ),
        "{reset:?}"
    );
    assert!(matches!(next_item(&mut snap).await, StreamItem::Snapshot { task, .. } if task.version == 300));
    core.publish_update("t", map(json!({}))).await.unwrap();
    assert!(matches!(next_item(&mut snap).await, StreamItem::Event(e) if e.seq == 301));
    assert_eq!(core.stream_stats().dropped, 2);
}

/// A lagging subscriber is counted while it reads the log and uncounted once it has
/// caught up and returned to its inbox, in GetStatus and in the Prometheus gauge.
#[tokio::test]
async fn lagging_is_counted_until_caught_up() {
    let metrics = crate::metrics::Metrics::prometheus().unwrap();
    let store = Arc::new(MemoryStore::new(1000, Duration::from_secs(3600)));
    let config = CoreConfig {
        subscriber_buffer: 4,
        ..CoreConfig::default()
    };
    let core = Core::open_with_metrics(config, store, metrics.clone()).unwrap();
    let gauge = || {
        let text = metrics.render().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("itc_subscribers_lagging ").map(str::to_owned))
            .unwrap_or_default()
    };
    core.start_task(new_task("t")).await.unwrap();
    let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
    assert!(matches!(next_item(&mut sub).await, StreamItem::Start { .. }));
    for _ in 0..10 {
        core.publish_update("t", map(json!({}))).await.unwrap();
    }
    assert_eq!(core.stream_stats().lagging, 1);
    assert_eq!(gauge(), "1");
    for seq in 2..=11 {
        assert!(matches!(next_item(&mut sub).await, StreamItem::Event(e) if e.seq == seq));
    }
    // The next read finds it caught up: back to the inbox.
    let idle = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
    assert!(idle.is_err());
    assert_eq!(core.stream_stats().lagging, 0);
    assert_eq!(gauge(), "0");
    core.publish_update("t", map(json!({}))).await.unwrap();
    assert!(matches!(next_item(&mut sub).await, StreamItem::Event(e) if e.seq == 12));
    assert!(sub.shared.inbox().events.is_empty());
}

async fn session(core: &Core, id: &str, kind: SessionKind) {
    let caps = Capabilities {
        streaming: true,
        interruption: true,
        task_coordination: true,
        background_monitoring: false,
    };
    let request = ConnectRequest {
        session_id: id.into(),
        kind,
        capabilities: caps,
        lease_ttl: None,
    };
    core.connect(request).await.unwrap();
}

fn coordinate(task: &str, by: &str, action: CommandAction) -> CoordinateRequest {
    CoordinateRequest {
        task_id: task.into(),
        coordinator_id: by.into(),
        action,
        data: None,
        fencing_token: 0,
        expected_version: None,
        idempotency_key: None,
        wait: CommandWait::Admitted,
        wait_timeout: None,
    }
}

fn kinds(core: &Core) -> Vec<EventType> {
    core.store()
        .read_events(0, 10_000)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

/// A call refused after a lock's lease ran out (its timer not yet fired) changes
/// nothing; the next successful call frees the lock with its LOCK_RELEASED event.
#[tokio::test(start_paused = true)]
async fn expired_lock_is_released_only_by_a_successful_call() {
    let core = Core::in_memory(CoreConfig {
        coordination_timeout: Duration::from_millis(50),
        ..CoreConfig::default()
    });
    session(&core, "a", SessionKind::Supervisor).await;
    session(&core, "b", SessionKind::Supervisor).await;
    core.start_task(new_task("t")).await.unwrap();
    let lock = core.acquire_lock("t", "a", None).await.unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    let head = core.head_seq();
    assert!(matches!(
        core.renew_lock("t", "a", lock.fencing_token, None).await,
        Err(CoreError::Aborted(_))
    ));
    let mut wrong = coordinate("t", "b", CommandAction::Custom);
    wrong.expected_version = Some(999);
    assert!(matches!(core.coordinate(wrong).await, Err(CoreError::Aborted(_))));
    assert_eq!(core.head_seq(), head, "refused calls wrote nothing");
    assert!(core.task("t").unwrap().lock.is_some(), "and changed nothing");
    let taken = core.acquire_lock("t", "b", None).await.unwrap();
    assert!(taken.fencing_token > lock.fencing_token);
    let tail: Vec<EventType> = kinds(&core).into_iter().skip(head as usize).collect();
    assert_eq!(tail, vec![EventType::LockReleased, EventType::LockAcquired]);
}

/// Commands still open when their task is finished and forgotten reach a final state and
/// stay readable; a Coordinate CANCEL waiting for delivery answers even when the
/// cancelled task is forgotten at once.
#[tokio::test]
async fn commands_of_forgotten_tasks_reach_a_final_state() {
    let core = Core::in_memory(CoreConfig {
        max_finished_tasks: 0,
        coordination_timeout: Duration::from_millis(50),
        ..CoreConfig::default()
    });
    session(&core, "sup", SessionKind::Supervisor).await;
    core.start_task(new_task("t1")).await.unwrap();
    let pending = core
        .coordinate(coordinate("t1", "sup", CommandAction::Custom))
        .await
        .unwrap();
    core.finish_task("t1", Outcome::Completed(None)).await.unwrap();
    assert!(core.task("t1").is_err(), "forgotten");
    let closed = core.command(&pending.id).unwrap();
    assert_eq!(closed.state, CommandState::TimedOut);

    core.start_task(new_task("t2")).await.unwrap();
    let mut cancel = coordinate("t2", "sup", CommandAction::Cancel);
    cancel.wait = CommandWait::Delivered;
    let answered = core.coordinate(cancel).await.unwrap();
    assert_eq!(answered.state, CommandState::TimedOut);
}

/// A client's wait_timeout is capped at coordination_timeout (no overflow, no long
/// hang).
#[tokio::test]
async fn huge_wait_timeout_is_capped() {
    let core = Core::in_memory(CoreConfig {
        coordination_timeout: Duration::from_millis(100),
        ..CoreConfig::default()
    });
    session(&core, "sup", SessionKind::Supervisor).await;
    core.start_task(new_task("t")).await.unwrap();
    let mut request = coordinate("t", "sup", CommandAction::Custom);
    request.wait = CommandWait::Final;
    request.wait_timeout = Some(Duration::MAX);
    let command = tokio::time::timeout(Duration::from_secs(5), core.coordinate(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.state, CommandState::Admitted, "no timer task here: still open");
}

/// A command that closed while queued is not pushed; a new Heartbeat stream gets every
/// command still open (at least once), already DELIVERED ones again.
#[tokio::test]
async fn heartbeat_pushes_open_commands_only() {
    let core = core();
    session(&core, "sup", SessionKind::Supervisor).await;
    session(&core, "agent-1", SessionKind::Agent).await;
    core.start_task(new_task("t")).await.unwrap();
    let closed = core
        .coordinate(coordinate("t", "sup", CommandAction::Custom))
        .await
        .unwrap();
    let mut query = coordinate("t", "sup", CommandAction::Query);
    query.data = Some(map(json!({"question": "ETA?"})));
    let open = core.coordinate(query).await.unwrap();
    core.acknowledge_command(&closed.id, CommandState::Applied, None, None)
        .await
        .unwrap();
    let mut first = core.heartbeat("agent-1", 0).unwrap();
    let mut delivered = Vec::new();
    while let Ok(Some(Push::Command(c))) = tokio::time::timeout(Duration::from_millis(50), first.next()).await {
        if let Some(now) = core.command_delivered(&c.id).await.unwrap() {
            delivered.push(now.id);
        }
    }
    assert_eq!(delivered, vec![open.id.clone()]);
    assert_eq!(core.command(&open.id).unwrap().state, CommandState::Delivered);
    // A second stream (a reconnecting agent) gets it again; the first is taken over.
    let mut second = core.heartbeat("agent-1", 0).unwrap();
    assert!(matches!(first.next().await, Some(Push::Notice(Notice::TakenOver))));
    assert!(matches!(second.next().await, Some(Push::Command(c)) if c.id == open.id));
}

/// Open input requests of a task that finishes are cancelled, each with its event.
#[tokio::test]
async fn finishing_cancels_open_inputs_with_events() {
    let core = core();
    core.start_task(new_task("t")).await.unwrap();
    let asked = core
        .request_input(NewInput {
            task_id: "t".into(),
            prompt: "ok?".into(),
            ..NewInput::default()
        })
        .await
        .unwrap();
    core.finish_task("t", Outcome::Cancelled(None)).await.unwrap();
    assert_eq!(core.input(&asked.id).unwrap().state, InputState::Cancelled);
    let last = core.store().read_events(core.head_seq() - 1, 1).unwrap();
    assert!(
        matches!(&last[0].detail, EventDetail::Input(i) if i.id == asked.id && i.state == InputState::Cancelled),
        "{last:?}"
    );
}

/// After a restart on a durable store, a live task whose agent neither reconnects nor
/// reports within `orphan_grace` is flagged ORPHANED; one whose agent reports is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_orphans_tasks_of_agents_that_do_not_come_back() {
    use crate::store::{LogOptions, LogStore, SyncLevel};
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn Store> {
        Arc::new(
            LogStore::open(LogOptions {
                data_dir: dir.path().to_owned(),
                sync: SyncLevel::Normal,
                sync_interval: Duration::from_secs(1),
                retention_count: 1000,
                retention_age: Duration::from_secs(3600),
                segment_bytes: LogOptions::SEGMENT_BYTES,
            })
            .unwrap(),
        )
    };
    let config = CoreConfig {
        orphan_grace: Duration::from_millis(200),
        ..CoreConfig::default()
    };
    {
        let core = Core::open(config.clone(), open()).unwrap();
        core.start_task(new_task("gone")).await.unwrap();
        let mut back = new_task("back");
        back.agent_id = "agent-2".into();
        core.start_task(back).await.unwrap();
        core.store().flush();
    }
    let core = Core::open(config, open()).unwrap();
    let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
    tokio::spawn(core.clone().run_timers());
    core.report_progress("back", 0.5, "still here".into()).await.unwrap();
    let orphaned = loop {
        match next_item(&mut sub).await {
            StreamItem::Event(e) if e.kind == EventType::TaskOrphaned => break e,
            _ => {}
        }
    };
    assert_eq!(orphaned.task_id.as_deref(), Some("gone"));
    assert!(core.task("gone").unwrap().orphaned);
    assert!(!core.task("back").unwrap().orphaned);
    core.close();
}

/// A store that fails every commit from the n-th on.
#[derive(Debug)]
struct FailingStore {
    inner: MemoryStore,
    commits: std::sync::atomic::AtomicUsize,
    fail_from: usize,
}

impl Store for FailingStore {
    reads_from_inner!("failing");
    fn commit(&self, batch: Batch) -> Commit {
        let n = self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.fail_from {
            return Box::pin(std::future::ready(Err(crate::store::StoreError::Backend(
                "disk on fire".into(),
            ))));
        }
        self.inner.commit(batch)
    }
}

/// A failed commit is not acknowledged, its events never become visible, the core refuses
/// every later write, and `failure()` resolves (the server then stops to recover).
#[tokio::test]
async fn failed_commit_stops_writes_and_publishes_nothing() {
    let store = Arc::new(FailingStore {
        inner: MemoryStore::new(100, Duration::from_secs(60)),
        commits: Default::default(),
        fail_from: 1,
    });
    let core = Core::open(CoreConfig::default(), store).unwrap();
    core.start_task(new_task("t")).await.unwrap();
    let err = core.report_progress("t", 0.5, String::new()).await.unwrap_err();
    assert!(matches!(err, CoreError::Store(_)), "{err}");
    assert!(core.has_failed());
    assert_eq!(core.inner.hub.visible(), 1, "the failed batch is not visible");
    assert!(matches!(
        core.report_progress("t", 0.6, String::new()).await,
        Err(CoreError::ShuttingDown)
    ));
    tokio::time::timeout(Duration::from_secs(1), core.failure())
        .await
        .unwrap();
    assert!(matches!(core.durable(()).await, Err(CoreError::ShuttingDown)));
}

/// A store that keeps every upsert it is given, as given.
#[derive(Debug)]
struct KeepingStore {
    inner: MemoryStore,
    upserts: Mutex<Vec<Arc<Task>>>,
}

impl Store for KeepingStore {
    reads_from_inner!("keeping");
    fn commit(&self, batch: Batch) -> Commit {
        self.upserts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch.upserts.iter().cloned());
        self.inner.commit(batch)
    }
}

/// A change hands the store the state's own task rather than a copy, and a later change
/// never alters what an earlier batch holds: the task is copied only because the store
/// still holds it. A task changed twice in one operation is written as it ends.
#[tokio::test]
async fn batches_share_tasks_and_never_see_later_changes() {
    let store = Arc::new(KeepingStore {
        inner: MemoryStore::new(1000, Duration::from_secs(3600)),
        upserts: Mutex::new(Vec::new()),
    });
    let core = Core::open(CoreConfig::default(), store.clone()).unwrap();
    core.start_task(new_task("t")).await.unwrap();
    core.report_progress("t", 0.25, "a quarter".into()).await.unwrap();
    core.publish_update("t", map(json!({"k": 1}))).await.unwrap();
    // Cancelling by command admits the command and finishes the task in one operation.
    session(&core, "boss", SessionKind::Supervisor).await;
    core.coordinate(coordinate("t", "boss", CommandAction::Cancel))
        .await
        .unwrap();
    let kept = store.upserts.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let seen: Vec<(u64, f64, TaskStatus)> = kept.iter().map(|t| (t.version, t.progress, t.status)).collect();
    let last = kept.last().unwrap();
    assert_eq!(
        &seen[..3],
        &[
            (1, 0.0, TaskStatus::Running),
            (2, 0.25, TaskStatus::Running),
            (3, 0.25, TaskStatus::Running)
        ]
    );
    // The last write of the cancel is the task as the operation left it: the state's own.
    assert_eq!(last.status, TaskStatus::Cancelled);
    assert!(
        Arc::ptr_eq(last, &core.task("t").unwrap()),
        "the state's own task, not a copy"
    );
    // Each change copied the task the store still held, so each batch kept its own.
    assert!(!Arc::ptr_eq(&kept[0], &kept[1]) && !Arc::ptr_eq(&kept[1], &kept[2]));
}

/// Live delivery through the subscription index honours the whole filter: a task filter
/// with an agent filter, with types, an agent filter with types, and types alone each
/// get exactly their events.
#[tokio::test(start_paused = true)]
async fn indexed_delivery_applies_every_part_of_the_filter() {
    let core = core();
    let subscribe = |task_ids: &[&str], agent_ids: &[&str], event_types: &[EventType]| {
        core.subscribe(SubscribeRequest {
            filter: Filter {
                task_ids: task_ids.iter().map(|s| s.to_string()).collect(),
                agent_ids: agent_ids.iter().map(|s| s.to_string()).collect(),
                event_types: event_types.to_vec(),
            },
            after_seq: None,
            snapshot: false,
            session_id: None,
        })
        .unwrap()
    };
    let mut subs = vec![
        subscribe(&["a1"], &["agent-b"], &[]),
        subscribe(&["a1", "b1"], &["agent-b"], &[]),
        subscribe(&["b1"], &[], &[EventType::TaskProgress]),
        subscribe(&[], &["agent-a"], &[EventType::TaskProgress]),
        subscribe(&[], &[], &[EventType::RealTimeUpdate]),
    ];
    let start = |id: &str, agent: &str| NewTask {
        agent_id: agent.into(),
        ..new_task(id)
    };
    core.start_task(start("a1", "agent-a")).await.unwrap();
    core.start_task(start("b1", "agent-b")).await.unwrap();
    core.report_progress("a1", 0.5, "a".into()).await.unwrap();
    core.publish_update("b1", map(json!({"k": 1}))).await.unwrap();
    core.report_progress("b1", 0.5, "b".into()).await.unwrap();

    let mut got = Vec::new();
    for sub in &mut subs {
        // Everything published is visible now; the idle heartbeat (virtual time) marks
        // the end of what this subscription receives.
        let mut events = Vec::new();
        'reading: loop {
            for item in sub.next_batch().await.unwrap().unwrap() {
                match item {
                    StreamItem::Event(e) => events.push((e.task_id.clone().unwrap_or_default(), e.kind)),
                    StreamItem::Heartbeat { .. } => break 'reading,
                    _ => {}
                }
            }
        }
        got.push(events);
    }
    let b1 = |kind| ("b1".to_owned(), kind);
    assert_eq!(got[0], vec![], "a1 is not agent-b's");
    assert_eq!(
        got[1],
        vec![
            b1(EventType::TaskStarted),
            b1(EventType::RealTimeUpdate),
            b1(EventType::TaskProgress)
        ]
    );
    assert_eq!(got[2], vec![b1(EventType::TaskProgress)]);
    assert_eq!(got[3], vec![("a1".to_owned(), EventType::TaskProgress)]);
    assert_eq!(got[4], vec![b1(EventType::RealTimeUpdate)]);
}

/// A HEARTBEAT comes `stream_interval` after the last item the stream sent, however the
/// idle timer was set: while events flow faster than the interval none is sent (the
/// timer, set at the first wait, fires early and is moved on), and once they stop one is
/// sent an interval after the last event.
#[tokio::test(start_paused = true)]
async fn heartbeats_come_an_interval_after_the_last_item_sent() {
    let interval = Duration::from_millis(500);
    let core = Core::in_memory(CoreConfig {
        stream_interval: interval,
        ..CoreConfig::default()
    });
    core.start_task(new_task("t")).await.unwrap();
    let mut sub = core.subscribe(SubscribeRequest::default()).unwrap();
    assert!(matches!(next_item(&mut sub).await, StreamItem::Start { .. }));
    let (tx, mut items) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(item)) = sub.next().await {
            if tx.send((tokio::time::Instant::now(), item)).is_err() {
                return;
            }
        }
    });
    // An event every 200 ms for 1.2 s: the stream is never idle for an interval.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        core.publish_update("t", map(json!({ "i": i }))).await.unwrap();
        let (_, item) = items.recv().await.unwrap();
        assert!(matches!(item, StreamItem::Event(_)), "event {i}: got {item:?}");
    }
    let last = tokio::time::Instant::now();
    let (at, item) = items.recv().await.unwrap();
    assert!(matches!(item, StreamItem::Heartbeat { .. }), "{item:?}");
    let idle = at - last;
    assert!(
        idle >= interval && idle < interval + Duration::from_millis(20),
        "{idle:?}"
    );
}
