//! The raw tonic baseline: what a tonic service does on this machine with the same
//! messages and none of ITC's logic (no validation, no state, no store, no ordering).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use itc_proto::v1 as pb;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The generated baseline stubs.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod proto {
    tonic::include_proto!("itc.bench.v1");
}

use proto::baseline_server::{Baseline, BaselineServer};
use proto::{EchoRequest, EchoResponse};

/// Capacity of the broadcast channels: above any burst a scenario publishes, so no
/// subscriber of the baseline ever lags (a lagging one would lose events, and fail the
/// run with DATA_LOSS). Slots hold `Arc`s (32 bytes a slot), so the capacity costs
/// about 4 MiB, not the messages' size.
const CAPACITY: usize = 1 << 17;

/// Capacity of a per-task channel (the filtered scenario has 10,000 of them, each
/// receiving a few events): small, since a broadcast channel allocates all its slots.
const TASK_CAPACITY: usize = 1024;

/// The baseline service.
#[derive(Clone)]
pub(crate) struct BaselineService {
    inner: Arc<Inner>,
}

struct Inner {
    all: broadcast::Sender<Arc<pb::SubscribeResponse>>,
    /// One channel per task some subscriber filters on: the best a filtered raw fan-out
    /// can do (the cost follows the matching subscribers).
    by_task: Mutex<HashMap<String, broadcast::Sender<Arc<pb::SubscribeResponse>>>>,
    seq: AtomicU64,
}

impl BaselineService {
    /// A new baseline with nothing published.
    pub(crate) fn new() -> Self {
        let (all, _) = broadcast::channel(CAPACITY);
        Self {
            inner: Arc::new(Inner {
                all,
                by_task: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// The tonic service, with ITC's default message size limit.
    pub(crate) fn into_server(self) -> BaselineServer<Self> {
        BaselineServer::new(self)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(4 * 1024 * 1024)
    }
}

impl Default for BaselineService {
    fn default() -> Self {
        Self::new()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;
type PingStream = Pin<Box<dyn Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Baseline for BaselineService {
    async fn publish(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let req = request.into_inner();
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = Arc::new(pb::SubscribeResponse {
            event: Some(pb::Event {
                seq,
                r#type: pb::EventType::TaskProgress as i32,
                time: Some(SystemTime::now().into()),
                task_id: req.task_id.clone(),
                agent_id: "bench-agent".to_owned(),
                task_version: seq,
                task_status: pb::TaskStatus::Running as i32,
                detail: Some(pb::event::Detail::Progress(pb::ProgressDetail {
                    progress: req.progress,
                    message: req.message,
                })),
                ..Default::default()
            }),
        });
        let task_channel = self
            .inner
            .by_task
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .get(&req.task_id)
            .cloned();
        if let Some(tx) = task_channel {
            let _ = tx.send(event.clone());
        }
        let _ = self.inner.all.send(event);
        Ok(Response::new(pb::ReportProgressResponse {
            version: seq,
            seq,
            status: pb::TaskStatus::Running as i32,
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        let task = req.filter.and_then(|f| f.task_ids.into_iter().next());
        let rx = match &task {
            None => self.inner.all.subscribe(),
            Some(task) => self
                .inner
                .by_task
                .lock()
                .map_err(|_| Status::internal("poisoned"))?
                .entry(task.clone())
                .or_insert_with(|| broadcast::channel(TASK_CAPACITY).0)
                .subscribe(),
        };
        let start = pb::SubscribeResponse {
            event: Some(pb::Event {
                r#type: pb::EventType::StreamStart as i32,
                time: Some(SystemTime::now().into()),
                ..Default::default()
            }),
        };
        let events = BroadcastStream::new(rx).map(|item| match item {
            Ok(event) => Ok(pb::SubscribeResponse::clone(&event)),
            Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::data_loss(format!("lagged by {n}"))),
        });
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(start)).chain(events))))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let len = request.get_ref().response_bytes as usize;
        Ok(Response::new(EchoResponse {
            payload: vec![7u8; len],
        }))
    }

    type PingStream = PingStream;

    async fn ping(&self, request: Request<Streaming<pb::HeartbeatRequest>>) -> Result<Response<PingStream>, Status> {
        let pings = request.into_inner();
        let pongs = pings.map(|ping| {
            ping.map(|_| pb::HeartbeatResponse {
                message: Some(pb::heartbeat_response::Message::Lease(pb::LeaseRenewed {
                    expire_time: Some((SystemTime::now() + Duration::from_secs(15)).into()),
                })),
            })
        });
        Ok(Response::new(Box::pin(pongs)))
    }
}
