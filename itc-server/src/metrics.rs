//! Prometheus metrics (`--metrics-listen`): the handles the core, the store and the RPC
//! layer update, and the `/metrics` endpoint.
//!
//! Each server has a recorder of its own, never a process-global one, so that servers in
//! one process (tests, embedding) count apart. Every handle is registered once, when the
//! server starts, and hot paths only add to it; per-RPC series are registered on their
//! first call. Without `--metrics-listen` the handles are the `metrics` crate's no-ops:
//! updating one is a branch on `None`.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `itc_rpc_requests_total{method,code}` | counter | finished calls, by path and gRPC status |
//! | `itc_rpc_duration_seconds{method,code}` | histogram | call duration; a stream's whole lifetime |
//! | `itc_subscriptions_open` | gauge | open Subscribe streams |
//! | `itc_subscribers_lagging` | gauge | subscriptions reading the log because their inbox overflowed |
//! | `itc_sessions{kind}` | gauge | connected sessions, by kind |
//! | `itc_events_published_total` | counter | events appended to the log |
//! | `itc_events_delivered_total` | counter | log events sent to subscribers |
//! | `itc_store_commit_seconds` | histogram | a commit's duration until acknowledged (durable store) |
//! | `itc_store_batch_events` | histogram | events per commit (durable store) |
//! | `itc_store_write_records` | histogram | records per group written to the log (log store) |
//! | `itc_store_compaction_failures_total` | counter | failed log compactions (log store) |
//!
//! A call is counted when it ends: at its trailers (the status of a trailers-only
//! response is in its headers), or as `CANCELLED` when the client goes away first. A
//! Subscribe or Heartbeat stream therefore counts once, with its whole lifetime as its
//! duration. `method` is the request path (`/itc.v1.MonitorService/GetTask`) for the
//! methods this server knows and `other` for any other path, so that clients cannot
//! create series at will.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use prost::Message as _;
use tokio::net::TcpListener;

use crate::core::SessionKind;

const RPC_REQUESTS: &str = "itc_rpc_requests_total";
const RPC_DURATION: &str = "itc_rpc_duration_seconds";
const SUBSCRIPTIONS_OPEN: &str = "itc_subscriptions_open";
const SUBSCRIBERS_LAGGING: &str = "itc_subscribers_lagging";
const SESSIONS: &str = "itc_sessions";
const EVENTS_PUBLISHED: &str = "itc_events_published_total";
const EVENTS_DELIVERED: &str = "itc_events_delivered_total";
const STORE_COMMIT: &str = "itc_store_commit_seconds";
const STORE_BATCH: &str = "itc_store_batch_events";
const STORE_WRITE_RECORDS: &str = "itc_store_write_records";
const STORE_COMPACTION_FAILURES: &str = "itc_store_compaction_failures_total";

enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// What each metric is (Prometheus' `# HELP` and `# TYPE` lines).
const DESCRIPTIONS: [(&str, MetricType, Option<Unit>, &str); 11] = [
    (
        RPC_REQUESTS,
        MetricType::Counter,
        None,
        "gRPC calls finished, by method (request path) and status code",
    ),
    (
        RPC_DURATION,
        MetricType::Histogram,
        Some(Unit::Seconds),
        "gRPC call duration, by method and status code (a stream: its whole lifetime)",
    ),
    (SUBSCRIPTIONS_OPEN, MetricType::Gauge, None, "Subscribe streams open"),
    (
        SUBSCRIBERS_LAGGING,
        MetricType::Gauge,
        None,
        "Subscriptions reading the log because their inbox overflowed",
    ),
    (SESSIONS, MetricType::Gauge, None, "Sessions connected, by kind"),
    (
        EVENTS_PUBLISHED,
        MetricType::Counter,
        None,
        "Events appended to the log",
    ),
    (
        EVENTS_DELIVERED,
        MetricType::Counter,
        None,
        "Log events sent to subscribers",
    ),
    (
        STORE_COMMIT,
        MetricType::Histogram,
        Some(Unit::Seconds),
        "Duration of a store commit, until it is acknowledged",
    ),
    (
        STORE_BATCH,
        MetricType::Histogram,
        Some(Unit::Count),
        "Events per store commit (log store: per batch; SQLite: per group)",
    ),
    (
        STORE_WRITE_RECORDS,
        MetricType::Histogram,
        Some(Unit::Count),
        "Records (batches) per group written to the log: more than one when commits queued while another wrote",
    ),
    (
        STORE_COMPACTION_FAILURES,
        MetricType::Counter,
        None,
        "Log compactions that failed (old segments stay until one succeeds)",
    ),
];

/// Histogram buckets (upper bounds). Calls: from sub-millisecond unary calls to streams
/// that live up to `max_stream_duration`.
const RPC_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];
const COMMIT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Up to the store's largest group (4096 batches).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// How often histogram samples are folded into their buckets between scrapes (so that
/// they do not pile up when nobody scrapes).
const UPKEEP: Duration = Duration::from_secs(5);

/// gRPC status code names, by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus recorder refused its configuration (a bug: the buckets are fixed).
    #[error("cannot configure the Prometheus recorder: {0}")]
    Recorder(#[from] BuildError),
}

/// The metrics of one server: a cheap handle (an `Arc` inside), shared by the core, the
/// store's writer and the RPC layer.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: metrics are off and every handle below is a no-op.
    exporter: Option<Exporter>,
    subscriptions_open: Gauge,
    subscribers_lagging: Gauge,
    /// By [`kind_index`].
    sessions: [Gauge; 4],
    events_published: Counter,
    events_delivered: Counter,
    store: StoreMetrics,
}

struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    rpc: RpcTable,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::disabled()
    }
}

/// The metadata every handle is registered with (the exporter ignores it).
const METADATA: Metadata<'static> = Metadata::new("itc_server", Level::INFO, Some(module_path!()));

impl Metrics {
    /// No metrics: every handle is a no-op.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                exporter: None,
                subscriptions_open: Gauge::noop(),
                subscribers_lagging: Gauge::noop(),
                sessions: [Gauge::noop(), Gauge::noop(), Gauge::noop(), Gauge::noop()],
                events_published: Counter::noop(),
                events_delivered: Counter::noop(),
                store: StoreMetrics::default(),
            }),
        }
    }

    /// Metrics recorded for Prometheus, by a recorder of this server's own. Histogram
    /// samples are kept until they are folded into their buckets: serve them with
    /// [`serve_endpoint`] (which does so every few seconds) or [`Metrics::render`] them
    /// regularly.
    pub fn prometheus() -> Result<Self, MetricsError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), RPC_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(STORE_COMMIT.into()), COMMIT_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(STORE_BATCH.into()), BATCH_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(STORE_WRITE_RECORDS.into()), BATCH_BUCKETS)?
            .build_recorder();
        for (name, kind, unit, text) in DESCRIPTIONS {
            let (name, text) = (KeyName::from_const_str(name), SharedString::const_str(text));
            match kind {
                MetricType::Counter => recorder.describe_counter(name, unit, text),
                MetricType::Gauge => recorder.describe_gauge(name, unit, text),
                MetricType::Histogram => recorder.describe_histogram(name, unit, text),
            }
        }
        let counter = |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge = |key: Key| recorder.register_gauge(&key, &METADATA);
        let histogram = |name: &'static str| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        let session = |kind: SessionKind| gauge(Key::from_parts(SESSIONS, vec![Label::new("kind", kind_name(kind))]));
        let inner = Inner {
            subscriptions_open: gauge(Key::from_static_name(SUBSCRIPTIONS_OPEN)),
            subscribers_lagging: gauge(Key::from_static_name(SUBSCRIBERS_LAGGING)),
            sessions: [
                session(SessionKind::Agent),
                session(SessionKind::Supervisor),
                session(SessionKind::CoordinatorAgent),
                session(SessionKind::Human),
            ],
            events_published: counter(EVENTS_PUBLISHED),
            events_delivered: counter(EVENTS_DELIVERED),
            store: StoreMetrics {
                commit_seconds: histogram(STORE_COMMIT),
                batch_events: histogram(STORE_BATCH),
                write_records: histogram(STORE_WRITE_RECORDS),
                compaction_failures: counter(STORE_COMPACTION_FAILURES),
            },
            exporter: Some(Exporter {
                handle: recorder.handle(),
                recorder,
                rpc: RpcTable::new(),
            }),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.exporter.is_some()
    }

    /// The metrics in Prometheus' text format (`None` when metrics are off).
    pub fn render(&self) -> Option<String> {
        self.inner.exporter.as_ref().map(|e| e.handle.render())
    }

    /// The store's part, for its writer thread.
    pub fn store(&self) -> StoreMetrics {
        self.inner.store.clone()
    }

    pub(crate) fn subscriptions_open(&self) -> &Gauge {
        &self.inner.subscriptions_open
    }

    pub(crate) fn subscribers_lagging(&self) -> &Gauge {
        &self.inner.subscribers_lagging
    }

    pub(crate) fn sessions(&self, kind: SessionKind) -> &Gauge {
        &self.inner.sessions[kind_index(kind)]
    }

    pub(crate) fn events_published(&self) -> &Counter {
        &self.inner.events_published
    }

    pub(crate) fn events_delivered(&self) -> &Counter {
        &self.inner.events_delivered
    }

    /// A call to `path` starts now (`None` when metrics are off).
    fn start_call(&self, path: &str) -> Option<Call> {
        let exporter = self.inner.exporter.as_ref()?;
        Some(Call {
            metrics: self.clone(),
            method: exporter.rpc.method(path),
            start: Instant::now(),
        })
    }
}

fn kind_index(kind: SessionKind) -> usize {
    match kind {
        SessionKind::Agent => 0,
        SessionKind::Supervisor => 1,
        SessionKind::CoordinatorAgent => 2,
        SessionKind::Human => 3,
    }
}

fn kind_name(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Agent => "AGENT",
        SessionKind::Supervisor => "SUPERVISOR",
        SessionKind::CoordinatorAgent => "COORDINATOR_AGENT",
        SessionKind::Human => "HUMAN",
    }
}

/// The durable store's metrics: the log store records each commit when it is
/// acknowledged, the SQLite writer each group commit.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    commit_seconds: Histogram,
    batch_events: Histogram,
    write_records: Histogram,
    compaction_failures: Counter,
}

impl Default for StoreMetrics {
    /// No-ops.
    fn default() -> Self {
        Self {
            commit_seconds: Histogram::noop(),
            batch_events: Histogram::noop(),
            write_records: Histogram::noop(),
            compaction_failures: Counter::noop(),
        }
    }
}

impl StoreMetrics {
    /// A commit (a group, for SQLite) of `events` events took `took`.
    pub(crate) fn committed(&self, events: usize, took: Duration) {
        self.commit_seconds.record(took);
        self.batch_events.record(events as f64);
    }

    /// One `write` of the log took `records` records.
    pub(crate) fn wrote(&self, records: usize) {
        self.write_records.record(records as f64);
    }

    /// A log compaction failed.
    pub(crate) fn compaction_failed(&self) {
        self.compaction_failures.increment(1);
    }
}

/// Per-RPC series, registered on first use: `method × code` handles, looked up without
/// a lock once registered.
struct RpcTable {
    /// Known request paths → index into `names` and `slots`.
    index: HashMap<Box<str>, usize>,
    /// Label values; the last one is `other`.
    names: Vec<SharedString>,
    slots: Vec<[OnceLock<RpcHandles>; 17]>,
}

struct RpcHandles {
    requests: Counter,
    duration: Histogram,
}

impl RpcTable {
    /// Every method of the services a server serves (ITC's, health and reflection).
    fn new() -> Self {
        let sets: [&[u8]; 4] = [
            itc_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut names: Vec<SharedString> = Vec::new();
        let mut index = HashMap::new();
        for set in sets {
            let set = match prost_types::FileDescriptorSet::decode(set) {
                Ok(set) => set,
                Err(e) => {
                    // A build problem; those calls are counted under `other`.
                    tracing::warn!(error = %e, "metrics: cannot read a descriptor set");
                    continue;
                }
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let path = if package.is_empty() {
                            format!("/{}/{}", service.name(), method.name())
                        } else {
                            format!("/{package}.{}/{}", service.name(), method.name())
                        };
                        if !index.contains_key(path.as_str()) {
                            index.insert(path.clone().into_boxed_str(), names.len());
                            names.push(SharedString::from_owned(path));
                        }
                    }
                }
            }
        }
        names.push(SharedString::const_str("other"));
        let slots = names.iter().map(|_| std::array::from_fn(|_| OnceLock::new())).collect();
        Self { index, names, slots }
    }

    /// The index of the method at `path` (`other` for unknown paths).
    fn method(&self, path: &str) -> usize {
        self.index
            .get(path)
            .copied()
            .unwrap_or(self.names.len().saturating_sub(1))
    }

    fn record(&self, recorder: &PrometheusRecorder, method: usize, code: usize, took: Duration) {
        let (Some(slot), Some(name)) = (
            self.slots.get(method).and_then(|codes| codes.get(code)),
            self.names.get(method),
        ) else {
            return;
        };
        let handles = slot.get_or_init(|| {
            let labels = vec![
                Label::new("method", name.clone()),
                Label::new("code", CODE_NAMES.get(code).copied().unwrap_or("UNKNOWN")),
            ];
            RpcHandles {
                requests: recorder.register_counter(&Key::from_parts(RPC_REQUESTS, labels.clone()), &METADATA),
                duration: recorder.register_histogram(&Key::from_parts(RPC_DURATION, labels), &METADATA),
            }
        });
        handles.requests.increment(1);
        handles.duration.record(took);
    }
}

/// One call being measured.
struct Call {
    metrics: Metrics,
    method: usize,
    start: Instant,
}

impl Call {
    fn record(self, code: usize) {
        if let Some(exporter) = &self.metrics.inner.exporter {
            exporter
                .rpc
                .record(&exporter.recorder, self.method, code, self.start.elapsed());
        }
    }
}

/// A call not counted yet: counted once, with the first code it is given, or as
/// `CANCELLED` if it is dropped before (the client went away).
#[derive(Default)]
struct Pending(Option<Call>);

impl Pending {
    fn finish(&mut self, code: usize) {
        if let Some(call) = self.0.take() {
            call.record(code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// The status code in `grpc-status`, if the header is there (`UNKNOWN` if it is not a
/// code).
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|c| *c < CODE_NAMES.len());
    Some(code.unwrap_or(UNKNOWN))
}

/// A tower layer counting every call by method and status code (added to tonic's server
/// with `Server::builder().layer(..)`).
#[derive(Debug, Clone)]
pub(crate) struct RpcLayer {
    metrics: Metrics,
}

impl RpcLayer {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`RpcLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RpcService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Pending(self.metrics.start_call(request.uri().path()));
        RpcFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcService`]: a trailers-only response (an error before
    /// any message) is counted here, any other when its body ends.
    pub(crate) struct RpcFuture<F> {
        #[pin]
        inner: F,
        call: Pending,
    }
}

impl<F, B, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = std::mem::take(this.call);
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = grpc_status(response.headers()) {
                    call.finish(code);
                }
                Ok(response.map(|inner| MeteredBody { inner, call }))
            }
            Err(e) => {
                call.finish(UNKNOWN);
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when its trailers pass (or it ends or is
    /// dropped without them).
    pub(crate) struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Pending,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(grpc_status(trailers).unwrap_or(UNKNOWN));
                }
            }
            // A gRPC response ends with trailers: anything else is a broken call.
            Poll::Ready(Some(Err(_)) | None) => this.call.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `GET /metrics` (HTTP/1.1) on `listener` until `shutdown` resolves; connections
/// still open then are closed. Also folds histogram samples into their buckets every few
/// seconds, scraped or not. Does nothing but wait for `shutdown` when metrics are off.
pub async fn serve_endpoint(listener: TcpListener, metrics: Metrics, shutdown: impl Future<Output = ()>) {
    let Some(handle) = metrics.inner.exporter.as_ref().map(|e| e.handle.clone()) else {
        shutdown.await;
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = upkeep.tick() => handle.run_upkeep(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            std::future::ready(Ok::<_, Infallible>(respond(&handle, &request)))
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "metrics connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: give the other connections
                    // a moment to free some rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Dropping `connections` aborts those still open.
}

/// The answer to one HTTP request to the endpoint.
fn respond<B>(handle: &PrometheusHandle, request: &http::Request<B>) -> http::Response<String> {
    use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_owned(),
        )
    } else if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        )
    } else {
        (
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        )
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == http::StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a recorder every handle is a no-op and nothing renders.
    #[test]
    fn disabled_records_nothing() {
        let metrics = Metrics::disabled();
        metrics.events_published().increment(3);
        assert!(!metrics.is_enabled());
        assert!(metrics.render().is_none());
        assert!(metrics.start_call("/itc.v1.MonitorService/GetTask").is_none());
    }

    /// Two servers' metrics are apart; known paths are labelled as they are, unknown ones
    /// as `other`; a dropped call counts as CANCELLED.
    #[test]
    fn per_server_recorders_and_bounded_method_labels() {
        let a = Metrics::prometheus().unwrap_or_else(|e| panic!("{e}"));
        let b = Metrics::prometheus().unwrap_or_else(|e| panic!("{e}"));
        a.events_published().increment(5);
        Pending(a.start_call("/itc.v1.MonitorService/GetTask")).finish(5);
        drop(Pending(a.start_call("/no.such.Service/Method")));
        let text = a.render().unwrap_or_default();
        assert!(text.contains("itc_events_published_total 5"), "{text}");
        assert!(
            text.contains(r#"itc_rpc_requests_total{method="/itc.v1.MonitorService/GetTask",code="NOT_FOUND"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"itc_rpc_requests_total{method="other",code="CANCELLED"} 1"#),
            "{text}"
        );
        let other = b.render().unwrap_or_default();
        assert!(other.contains("itc_events_published_total 0"), "{other}");
    }
}
