//! Fan-out: one publisher, many subscribers — throughput, latency at a fixed rate, and a
//! filtered fan-out where every subscriber follows its own task.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use itc_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::BenchError;
use crate::drive::{self, Publisher, WAIT};
use crate::server::Server;

/// Publishes before the subscribers connect, so that connections and the task are warm.
const WARM_UP: u64 = 20;

struct Done {
    last: Instant,
    latency: Option<Histogram<u64>>,
}

/// Subscribers that each count `expected` progress events.
struct Subscribers {
    handles: Vec<JoinHandle<Result<Done, Status>>>,
    expected: u64,
}

impl Drop for Subscribers {
    /// A scenario that failed half-way leaves no subscriber running.
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

impl Subscribers {
    /// Opens one subscriber per entry of `filters` (a task id, or `None` for all events)
    /// and waits until every stream has started.
    async fn open(
        server: &Server,
        filters: Vec<Option<String>>,
        expected: u64,
        measure_latency: bool,
    ) -> Result<Self, BenchError> {
        let n = filters.len();
        let channels = drive::channels(server, drive::connections_for(n)).await?;
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
        let itc = server.kind.is_itc();
        let mut handles = Vec::with_capacity(n);
        for (i, filter) in filters.into_iter().enumerate() {
            let channel = channels[i % channels.len()].clone();
            let ready = ready_tx.clone();
            handles.push(tokio::spawn(async move {
                let mut stream = drive::subscribe(itc, channel, filter.as_deref()).await?;
                loop {
                    let message = stream
                        .message()
                        .await?
                        .ok_or_else(|| Status::aborted("the stream ended before it started"))?;
                    if message
                        .event
                        .is_some_and(|e| e.r#type == pb::EventType::StreamStart as i32)
                    {
                        break;
                    }
                }
                let _ = ready.send(()).await;
                drop(ready);
                let mut latency = measure_latency.then(drive::histogram);
                let mut received = 0;
                while received < expected {
                    let message = stream.message().await?.ok_or_else(|| {
                        Status::aborted(format!("the stream ended after {received} of {expected} events"))
                    })?;
                    let Some(event) = message.event else { continue };
                    if event.r#type != pb::EventType::TaskProgress as i32 {
                        continue;
                    }
                    received += 1;
                    if let (Some(hist), Some(pb::event::Detail::Progress(p))) = (&mut latency, &event.detail)
                        && let Some(d) = drive::since_stamp(&p.message)
                    {
                        drive::record(hist, d);
                    }
                }
                Ok(Done {
                    last: Instant::now(),
                    latency,
                })
            }));
        }
        drop(ready_tx);
        let deadline = tokio::time::Instant::now() + WAIT;
        for started in 0..n {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(())) => {}
                Ok(None) | Err(_) => {
                    for handle in &handles {
                        handle.abort();
                    }
                    // A subscriber that failed says why.
                    for handle in handles {
                        if let Ok(Err(status)) = handle.await {
                            return Err(BenchError::from(status));
                        }
                    }
                    return Err(BenchError::Failed(format!("only {started} of {n} subscribers started")));
                }
            }
        }
        Ok(Self { handles, expected })
    }

    /// Waits until every subscriber has its events: the last receive time and the merged
    /// latencies.
    async fn finish(mut self) -> Result<(Instant, Histogram<u64>), BenchError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last: Option<Instant> = None;
        let mut latency = drive::histogram();
        let n = self.handles.len();
        let mut handles = std::mem::take(&mut self.handles).into_iter();
        let mut finished = 0;
        while let Some(handle) = handles.next() {
            let abort = handle.abort_handle();
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(done))) => {
                    last = Some(last.map_or(done.last, |l| l.max(done.last)));
                    if let Some(hist) = done.latency {
                        latency.add(&hist).map_err(|e| BenchError::Failed(e.to_string()))?;
                    }
                    finished += 1;
                }
                Ok(Ok(Err(status))) => return Err(BenchError::from(status)),
                Ok(Err(e)) => return Err(BenchError::Failed(e.to_string())),
                Err(_) => {
                    abort.abort();
                    for rest in handles {
                        rest.abort();
                    }
                    return Err(BenchError::Failed(format!(
                        "{finished} of {n} subscribers got their {} events within {WAIT:?}",
                        self.expected
                    )));
                }
            }
        }
        if !stamped_all(&latency, n as u64 * self.expected) {
            return Err(BenchError::Failed(format!(
                "{} latency samples for {} deliveries: events without a publish stamp",
                latency.len(),
                n as u64 * self.expected
            )));
        }
        Ok((last.unwrap_or_else(Instant::now), latency))
    }
}

/// Every delivery of a latency run carries a stamp (throughput runs record none).
fn stamped_all(latency: &Histogram<u64>, deliveries: u64) -> bool {
    latency.is_empty() || latency.len() == deliveries
}

/// A publisher connection with its task started and warm.
async fn publisher(server: &Server, agent: &str, tasks: usize) -> Result<(Publisher, Vec<String>), BenchError> {
    let channel = drive::channels(server, 1)
        .await?
        .pop()
        .ok_or_else(|| BenchError::Failed("no connection".into()))?;
    let tasks = drive::start_tasks(server, &channel, agent, tasks).await?;
    let mut publisher = Publisher::new(server, channel);
    for i in 0..WARM_UP {
        let task = &tasks[i as usize % tasks.len()];
        publisher
            .publish(task, 0.0, drive::stamp())
            .await
            .map_err(BenchError::from)?;
    }
    Ok((publisher, tasks))
}

/// Filters for `n` subscribers of the publisher's one task: ITC's subscribers filter on
/// it; the baseline's take its whole broadcast, which carries only that task's events
/// (and whose capacity no burst of a scenario reaches).
fn one_task(server: &Server, task: &str, n: usize) -> Vec<Option<String>> {
    let filter = server.kind.is_itc().then(|| task.to_owned());
    vec![filter; n]
}

/// Publishes `events` events on `tasks` (round robin) with `window` calls in flight.
async fn publish_all(publisher: Publisher, tasks: Vec<String>, events: u64, window: usize) -> Result<(), BenchError> {
    let load = drive::closed_loop(window, WAIT, events, move |_, i| {
        let mut publisher = publisher.clone();
        let task = tasks[i as usize % tasks.len()].clone();
        async move { publisher.publish(&task, i as f64 / events as f64, drive::stamp()).await }
    })
    .await?;
    if load.calls < events {
        return Err(BenchError::Failed(format!(
            "published {} of {events} events within {WAIT:?}",
            load.calls
        )));
    }
    Ok(())
}

/// Delivered events per second with `subscribers` subscribers of one task while one
/// publisher publishes `events` events, `window` calls in flight.
pub(crate) async fn throughput(
    server: &Server,
    subscribers: usize,
    events: u64,
    window: usize,
) -> Result<f64, BenchError> {
    let (publisher, tasks) = publisher(server, "bench-publisher", 1).await?;
    let subs = Subscribers::open(server, one_task(server, &tasks[0], subscribers), events, false).await?;
    let start = Instant::now();
    publish_all(publisher, tasks, events, window).await?;
    let (last, _) = subs.finish().await?;
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok((subscribers as u64 * events) as f64 / seconds)
}

/// Publish-to-receive latency (p50, p99, in seconds) with `subscribers` subscribers while
/// events are published at a steady rate of `deliveries` deliveries per second in total,
/// for `duration`.
pub(crate) async fn latency(
    server: &Server,
    subscribers: usize,
    deliveries: f64,
    duration: Duration,
) -> Result<(f64, f64), BenchError> {
    let period = Duration::from_secs_f64(subscribers as f64 / deliveries);
    let events = ((duration.as_secs_f64() / period.as_secs_f64()) as u64).max(10);
    let (publisher, tasks) = publisher(server, "bench-publisher", 1).await?;
    let subs = Subscribers::open(server, one_task(server, &tasks[0], subscribers), events, true).await?;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = Vec::with_capacity(events as usize);
    for i in 0..events {
        ticks.tick().await;
        let mut publisher = publisher.clone();
        let task = tasks[0].clone();
        // Each publish on its own task: a slow answer never delays the next tick.
        calls.push(tokio::spawn(async move {
            publisher.publish(&task, i as f64 / events as f64, drive::stamp()).await
        }));
    }
    let publishing = started.elapsed();
    if publishing > duration.mul_f64(1.2) + period {
        return Err(BenchError::Failed(format!(
            "publishing at {deliveries} deliveries/s took {publishing:?} instead of {duration:?}: the load generator could not keep the rate"
        )));
    }
    for call in calls {
        call.await
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .map_err(BenchError::from)?;
    }
    let (_, hist) = subs.finish().await?;
    Ok((drive::quantile(&hist, 0.5), drive::quantile(&hist, 0.99)))
}

/// Delivered events per second when each of `tasks` subscribers follows its own task and
/// `per_task` events are published on every task (round robin), `window` in flight.
pub(crate) async fn filtered(server: &Server, tasks: usize, per_task: u64, window: usize) -> Result<f64, BenchError> {
    let (publisher, ids) = publisher(server, "bench-filtered", tasks).await?;
    let filters = ids.iter().cloned().map(Some).collect();
    let subs = Subscribers::open(server, filters, per_task, false).await?;
    let events = per_task * tasks as u64;
    let start = Instant::now();
    publish_all(publisher, ids, events, window).await?;
    let (last, _) = subs.finish().await?;
    Ok(events as f64 / last.duration_since(start).as_secs_f64().max(1e-9))
}
