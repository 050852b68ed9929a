//! Long-lived streams: the memory of idle subscriptions and the CPU cost of heartbeating
//! sessions, both read from the server process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use itc_proto::v1 as pb;
use itc_proto::v1::session_service_client::SessionServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::BenchError;
use crate::baseline::proto::baseline_client::BaselineClient;
use crate::drive::{self, WAIT};
use crate::server::Server;

/// Server memory while `streams` Subscribe streams (unfiltered) are open and idle, after
/// `settle`: (total RSS in MiB, the growth per stream in KiB). `None` when the server's
/// memory cannot be read (an `--addr` server without `--server-pid`).
pub(crate) async fn idle(server: &Server, streams: usize, settle: Duration) -> Result<Option<(f64, f64)>, BenchError> {
    let channels = drive::channels(server, drive::connections_for(streams)).await?;
    tokio::time::sleep(settle).await;
    let before = server.rss_bytes();
    let itc = server.kind.is_itc();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams.max(1));
    let mut tasks = JoinSet::new();
    for i in 0..streams {
        let channel = channels[i % channels.len()].clone();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let mut stream = drive::subscribe(itc, channel, None).await?;
            let mut ready = Some(ready);
            // Read (and drop) whatever comes, heartbeats included, until the end.
            while let Some(message) = stream.message().await? {
                if message
                    .event
                    .is_some_and(|e| e.r#type == pb::EventType::StreamStart as i32)
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(()).await;
                }
            }
            Ok::<(), Status>(())
        });
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + WAIT;
    for started in 0..streams {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => {
                tasks.abort_all();
                while let Some(result) = tasks.join_next().await {
                    if let Ok(Err(status)) = result {
                        return Err(BenchError::from(status));
                    }
                }
                return Err(BenchError::Failed(format!(
                    "only {started} of {streams} streams opened"
                )));
            }
        }
    }
    tokio::time::sleep(settle).await;
    let after = server.rss_bytes();
    tasks.abort_all();
    Ok(before.zip(after).map(|(before, after)| {
        let mib = after as f64 / (1024.0 * 1024.0);
        let per_stream = after.saturating_sub(before) as f64 / 1024.0 / streams.max(1) as f64;
        (mib, per_stream)
    }))
}

/// Share of one core (percent) the server spends while `sessions` sessions each send a
/// heartbeat every `period` (spread evenly), measured over `measure` after a warm-up of
/// two periods. ITC sessions are agent sessions opened with Connect; the baseline echoes
/// the same messages on its Ping stream. `None` when the server's CPU time cannot be read.
pub(crate) async fn heartbeats(
    server: &Server,
    sessions: usize,
    period: Duration,
    measure: Duration,
) -> Result<Option<f64>, BenchError> {
    let channels = drive::channels(server, drive::connections_for(sessions)).await?;
    let itc = server.kind.is_itc();
    let ids: Vec<String> = (0..sessions).map(|i| format!("bench-hb-{i}")).collect();
    let mut generations = vec![0u64; sessions];
    if itc {
        for (i, id) in ids.iter().enumerate() {
            let channel = channels[i % channels.len()].clone();
            let response = SessionServiceClient::new(channel)
                .connect(pb::ConnectRequest {
                    session_id: id.clone(),
                    kind: pb::SessionKind::Agent as i32,
                    ..Default::default()
                })
                .await
                .map_err(BenchError::from)?;
            generations[i] = response.into_inner().session.map_or(0, |s| s.generation);
        }
    }
    let answers = Arc::new(AtomicU64::new(0));
    let mut tasks: JoinSet<Result<(), Status>> = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        let answers = answers.clone();
        let generation = generations[i];
        let offset = period.mul_f64(i as f64 / sessions as f64);
        tasks.spawn(async move {
            let ping = move || pb::HeartbeatRequest {
                session_id: id.clone(),
                task_ids: Vec::new(),
                generation,
            };
            let (tx, rx) = mpsc::channel(4);
            // ITC answers the call once it has the first ping.
            let _ = tx.send(ping()).await;
            let mut responses = if itc {
                SessionServiceClient::new(channel)
                    .heartbeat(ReceiverStream::new(rx))
                    .await?
                    .into_inner()
            } else {
                BaselineClient::new(channel)
                    .ping(ReceiverStream::new(rx))
                    .await?
                    .into_inner()
            };
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if tx.send(ping()).await.is_err() {
                            return Err(Status::aborted("the heartbeat stream closed"));
                        }
                    }
                    message = responses.message() => match message? {
                        Some(_) => { answers.fetch_add(1, Ordering::Relaxed); }
                        None => return Err(Status::aborted("the server ended the heartbeat stream")),
                    },
                }
            }
        });
    }
    tokio::time::sleep(period * 2).await;
    if let Some(result) = tasks.try_join_next() {
        tasks.abort_all();
        return match result {
            Ok(Err(status)) => Err(BenchError::from(status)),
            _ => Err(BenchError::Failed("a heartbeat stream ended".into())),
        };
    }
    let answered_before = answers.load(Ordering::Relaxed);
    let cpu_before = server.cpu_seconds();
    let start = std::time::Instant::now();
    tokio::time::sleep(measure).await;
    let cpu_after = server.cpu_seconds();
    let elapsed = start.elapsed().as_secs_f64();
    let answered = answers.load(Ordering::Relaxed) - answered_before;
    tasks.abort_all();
    let expected = sessions as f64 * elapsed / period.as_secs_f64();
    if (answered as f64) < expected * 0.8 {
        return Err(BenchError::Failed(format!(
            "the server answered {answered} heartbeats, expected about {expected:.0}"
        )));
    }
    Ok(cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) / elapsed * 100.0))
}
