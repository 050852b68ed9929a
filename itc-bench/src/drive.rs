//! Client-side building blocks shared by the scenarios: connections, the calls that
//! differ between ITC and the baseline, closed-loop load, latency histograms.

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::BenchError;
use crate::baseline::proto::baseline_client::BaselineClient;
use crate::server::Server;

/// The longest any call, stream start or scenario step may wait (every call carries it
/// as its deadline, so a server that stops answering fails the run instead of hanging it).
pub(crate) const WAIT: Duration = Duration::from_secs(300);

/// `n` separate HTTP/2 connections to the server.
pub(crate) async fn channels(server: &Server, n: usize) -> Result<Vec<Channel>, BenchError> {
    let endpoint = Endpoint::from_shared(server.url.clone())
        .map_err(|e| BenchError::Server(format!("bad address {}: {e}", server.url)))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(WAIT);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(endpoint.connect().await.map_err(|e| BenchError::Connect {
            url: server.url.clone(),
            message: chain(&e),
        })?);
    }
    Ok(out)
}

/// An error with its causes: tonic's "transport error" alone says nothing.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How many connections carry `streams` streams: a few, and at most 100 streams each.
pub(crate) fn connections_for(streams: usize) -> usize {
    streams.clamp(1, 4).max(streams.div_ceil(100))
}

/// Nanoseconds since this process's first call, as a fixed-width progress message: the
/// publish time a subscriber in this process subtracts from its receive time.
pub(crate) fn stamp() -> String {
    format!("{:020}", epoch().elapsed().as_nanos())
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How long ago `stamp` (from [`stamp`]) was taken.
pub(crate) fn since_stamp(stamp: &str) -> Option<Duration> {
    let nanos: u64 = stamp.parse().ok()?;
    epoch().elapsed().checked_sub(Duration::from_nanos(nanos))
}

/// A latency histogram in microseconds, 1 µs to 100 s, three significant figures.
#[allow(clippy::expect_used)] // constant, valid bounds: it cannot fail
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` in `hist` (saturating at its top).
pub(crate) fn record(hist: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    hist.saturating_record(micros);
}

/// The `q` quantile of `hist`, in seconds.
pub(crate) fn quantile(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1e6
}

/// A publisher: ITC's ReportProgress or the baseline's Publish.
#[derive(Clone)]
pub(crate) enum Publisher {
    /// ITC.
    Itc(AgentServiceClient<Channel>),
    /// The baseline.
    Baseline(BaselineClient<Channel>),
}

impl Publisher {
    /// A publisher of `server`'s kind over `channel`.
    pub(crate) fn new(server: &Server, channel: Channel) -> Self {
        if server.kind.is_itc() {
            Self::Itc(AgentServiceClient::new(channel))
        } else {
            Self::Baseline(BaselineClient::new(channel))
        }
    }

    /// Reports progress (publishes one event).
    pub(crate) async fn publish(&mut self, task_id: &str, progress: f64, message: String) -> Result<(), Status> {
        let request = pb::ReportProgressRequest {
            task_id: task_id.to_owned(),
            progress,
            message,
        };
        match self {
            Self::Itc(client) => client.report_progress(request).await.map(drop),
            Self::Baseline(client) => client.publish(request).await.map(drop),
        }
    }
}

/// Opens a Subscribe stream on `channel`, filtered to `task` when given.
pub(crate) async fn subscribe(
    itc: bool,
    channel: Channel,
    task: Option<&str>,
) -> Result<Streaming<pb::SubscribeResponse>, Status> {
    let request = pb::SubscribeRequest {
        filter: task.map(|t| pb::SubscriptionFilter {
            task_ids: vec![t.to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    if itc {
        Ok(MonitorServiceClient::new(channel)
            .subscribe(request)
            .await?
            .into_inner())
    } else {
        Ok(BaselineClient::new(channel).subscribe(request).await?.into_inner())
    }
}

/// Starts `n` ITC tasks of agent `agent` (64 calls in flight), returning their ids; for
/// the baseline, which has no tasks, just names them.
pub(crate) async fn start_tasks(
    server: &Server,
    channel: &Channel,
    agent: &str,
    n: usize,
) -> Result<Vec<String>, BenchError> {
    if !server.kind.is_itc() {
        return Ok((0..n).map(|i| format!("bench-task-{i}")).collect());
    }
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); n]));
    let client = AgentServiceClient::new(channel.clone());
    let agent = agent.to_owned();
    let ids2 = ids.clone();
    closed_loop(64, Duration::from_secs(600), n as u64, move |_, i| {
        let mut client = client.clone();
        let agent = agent.clone();
        let ids = ids2.clone();
        async move {
            let task = client
                .start_task(pb::StartTaskRequest {
                    agent_id: agent,
                    description: format!("benchmark task {i}"),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .task
                .ok_or_else(|| Status::internal("StartTask answered no task"))?;
            if let Ok(mut ids) = ids.lock() {
                ids[i as usize] = task.task_id;
            }
            Ok(())
        }
    })
    .await?;
    let ids = std::mem::take(&mut *ids.lock().map_err(|_| BenchError::Failed("poisoned".into()))?);
    Ok(ids)
}

/// What a closed-loop load did.
pub(crate) struct Load {
    /// Calls completed.
    pub(crate) calls: u64,
    /// From the first call to the last answer.
    pub(crate) elapsed: Duration,
    /// Call latencies.
    pub(crate) latency: Histogram<u64>,
}

impl Load {
    /// Calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `call(worker, i)` from `workers` concurrent workers, each starting its next call
/// when the previous answers, until `max_calls` calls were made or `duration` passed.
/// The first failed call stops the load and is returned.
pub(crate) async fn closed_loop<F, Fut>(
    workers: usize,
    duration: Duration,
    max_calls: u64,
    call: F,
) -> Result<Load, BenchError>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut handles: Vec<tokio::task::JoinHandle<Result<Histogram<u64>, Status>>> = Vec::with_capacity(workers);
    for worker in 0..workers {
        let call = call.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut hist = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_calls || Instant::now() >= end {
                    return Ok(hist);
                }
                let t0 = Instant::now();
                call(worker, i).await?;
                record(&mut hist, t0.elapsed());
            }
        }));
    }
    let mut latency = histogram();
    let mut handles = handles.into_iter();
    while let Some(handle) = handles.next() {
        let failure = match handle.await {
            Ok(Ok(hist)) => {
                latency.add(&hist).map_err(|e| BenchError::Failed(e.to_string()))?;
                continue;
            }
            Ok(Err(status)) => BenchError::from(status),
            Err(e) => BenchError::Failed(e.to_string()),
        };
        // The first failure stops the load: no worker is left running.
        for rest in handles {
            rest.abort();
        }
        return Err(failure);
    }
    Ok(Load {
        calls: latency.len(),
        elapsed: start.elapsed(),
        latency,
    })
}
