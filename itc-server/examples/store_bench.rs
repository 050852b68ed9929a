//! Durable event appends per second through the core: the log store, and SQLite with and
//! without group commit.
//!
//! `cargo run --release -p itc-server --example store_bench -- [EVENTS] [WRITERS] [SYNC]`
//! (defaults: 20000 events, 64 concurrent writers, sync normal). Each configuration runs 3
//! times on a fresh temporary data dir; the table shows the median with min and max, and
//! one JSON line per configuration follows for scripts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use itc_server::core::{Core, CoreConfig, NewTask};
use itc_server::store::{LogOptions, LogStore, SqliteOptions, SqliteStore, Store, StoreKind, SyncLevel};

const RUNS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let writers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let sync: SyncLevel = args.next().map_or(Ok(SyncLevel::Normal), |a| a.parse())?;
    println!("durable appends: {events} events, {writers} concurrent writers, sync {sync:?}, {RUNS} runs each");
    println!("{:<32} {:>12} {:>12} {:>12}", "store", "median ev/s", "min", "max");
    let configurations = [
        (StoreKind::Log, true, "log"),
        (StoreKind::Sqlite, true, "sqlite, group commit"),
        (StoreKind::Sqlite, false, "sqlite, a commit per batch"),
    ];
    for (kind, group_commit, label) in configurations {
        let mut rates = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            rates.push(run(events, writers, sync, kind, group_commit).await?);
        }
        rates.sort_by(f64::total_cmp);
        let (min, median, max) = (rates[0], rates[RUNS / 2], rates[RUNS - 1]);
        println!("{label:<32} {median:>12.0} {min:>12.0} {max:>12.0}");
        let store = format!("{kind:?}").to_lowercase();
        println!(
            "{{\"scenario\":\"durable_append\",\"store\":\"{store}\",\"group_commit\":{group_commit},\"sync\":\"{sync:?}\",\"events\":{events},\"writers\":{writers},\"median_per_s\":{median:.0},\"min_per_s\":{min:.0},\"max_per_s\":{max:.0}}}"
        );
    }
    Ok(())
}

/// Events per second for one configuration, on a fresh data dir.
async fn run(
    events: usize,
    writers: usize,
    sync: SyncLevel,
    kind: StoreKind,
    group_commit: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = match kind {
        StoreKind::Log => Arc::new(LogStore::open(LogOptions {
            data_dir: dir.path().to_owned(),
            sync,
            sync_interval: Duration::from_secs(1),
            retention_count: events * 2,
            retention_age: Duration::from_secs(3600),
            segment_bytes: LogOptions::SEGMENT_BYTES,
        })?),
        StoreKind::Sqlite => Arc::new(SqliteStore::open(SqliteOptions {
            data_dir: dir.path().to_owned(),
            sync,
            retention_count: events * 2,
            retention_age: Duration::from_secs(3600),
            group_commit,
        })?),
    };
    let core = Core::open(CoreConfig::default(), store)?;
    for w in 0..writers {
        core.start_task(NewTask {
            task_id: Some(format!("bench-{w}")),
            agent_id: "bench".into(),
            description: "benchmark".into(),
            ..NewTask::default()
        })
        .await?;
    }
    let per_writer = events / writers;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(writers);
    for w in 0..writers {
        let core = core.clone();
        handles.push(tokio::spawn(async move {
            let task_id = format!("bench-{w}");
            let mut data = serde_json::Map::new();
            data.insert("writer".into(), w.into());
            for _ in 0..per_writer {
                core.publish_update(&task_id, data.clone()).await?;
            }
            Ok::<_, itc_server::error::CoreError>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    core.store().flush();
    Ok((per_writer * writers) as f64 / elapsed)
}
