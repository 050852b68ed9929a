//! GetStatus written from each task's cached encoding, Subscribe from each event's.
//!
//! A status page holds up to 1,000 tasks, and pollers ask for the same unchanged tasks
//! again and again. Converting each task to its protobuf form and encoding it on every
//! call cost more than the rest of the call together. Each task therefore keeps its
//! encoding, made once per version of the task ([`crate::core::WireCache`]), and a page is
//! written by copying those bytes. Only `duration`, which grows while a task runs, is
//! written fresh; protobuf readers accept a message's fields in any order.
//!
//! The bytes on the wire decode to exactly the `GetStatusResponse` the plain conversion
//! gives (the tests check it), so clients see no difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use itc_proto::v1 as pb;
use itc_proto::v1::monitor_service_server::MonitorServiceServer;
use prost::Message;
use prost::encoding::{DecodeContext, WireType};
use tonic::server::NamedService;
use tower_service::Service;

use super::MonitorApi;

/// `GetStatusResponse.tasks`.
const TASKS_FIELD: u32 = 2;
/// `Task.duration`.
pub(crate) const DURATION_FIELD: u32 = 15;

/// The path of GetStatus.
const GET_STATUS: &str = "/itc.v1.MonitorService/GetStatus";
/// The path of Subscribe.
const SUBSCRIBE: &str = "/itc.v1.MonitorService/Subscribe";

/// A GetStatus answer: its tasks as cached encodings.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StatusWire {
    /// Every field but the page's tasks.
    pub(crate) rest: pb::GetStatusResponse,
    /// Each task of the page: its encoding without `duration`, and its duration now.
    pub(crate) tasks: Vec<(Bytes, prost_types::Duration)>,
}

impl StatusWire {
    fn task_len((bytes, duration): &(Bytes, prost_types::Duration)) -> usize {
        bytes.len() + prost::encoding::message::encoded_len(DURATION_FIELD, duration)
    }

    /// The answer as the generated type (for the plain service trait, and tests).
    pub(crate) fn into_response(self) -> Result<pb::GetStatusResponse, prost::DecodeError> {
        pb::GetStatusResponse::decode(self.encode_to_vec().as_slice())
    }
}

impl Message for StatusWire {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.rest.encode_raw(buf);
        for task in &self.tasks {
            prost::encoding::encode_key(TASKS_FIELD, WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(Self::task_len(task) as u64, buf);
            buf.put_slice(&task.0);
            prost::encoding::message::encode(DURATION_FIELD, &task.1, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only the server writes this type; read back, every field lands in `rest`.
        self.rest.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.rest.encoded_len()
            + self
                .tasks
                .iter()
                .map(|task| {
                    let len = Self::task_len(task);
                    prost::encoding::key_len(TASKS_FIELD) + prost::encoding::encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
    }

    fn clear(&mut self) {
        self.rest.clear();
        self.tasks.clear();
    }
}

/// `SubscribeResponse.event`.
const EVENT_FIELD: u32 = 1;

/// A Subscribe message: a log event as its kept encoding (the same bytes for every
/// stream that sends it), or a message made for this stream (start, snapshot, heartbeat,
/// end).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SubscribeWire {
    /// The encoding of the `Event` of a `SubscribeResponse`.
    Event(Bytes),
    /// A whole response (boxed: a response is large, and most messages are events).
    Message(Box<pb::SubscribeResponse>),
}

impl Default for SubscribeWire {
    fn default() -> Self {
        Self::Message(Box::default())
    }
}

impl SubscribeWire {
    /// The message as the generated type (for the plain service trait, and tests).
    pub(crate) fn into_response(self) -> Result<pb::SubscribeResponse, prost::DecodeError> {
        match self {
            Self::Message(message) => Ok(*message),
            Self::Event(_) => pb::SubscribeResponse::decode(self.encode_to_vec().as_slice()),
        }
    }
}

impl Message for SubscribeWire {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Event(event) => {
                prost::encoding::encode_key(EVENT_FIELD, WireType::LengthDelimited, buf);
                prost::encoding::encode_varint(event.len() as u64, buf);
                buf.put_slice(event);
            }
            Self::Message(message) => message.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only the server writes this type; read back, it is a plain response.
        if let Self::Event(_) = self {
            *self = Self::default();
        }
        match self {
            Self::Message(message) => message.merge_field(tag, wire_type, buf, ctx),
            Self::Event(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Event(event) => {
                prost::encoding::key_len(EVENT_FIELD)
                    + prost::encoding::encoded_len_varint(event.len() as u64)
                    + event.len()
            }
            Self::Message(message) => message.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// `itc.v1.MonitorService` as served: GetStatus writes cached task encodings and
/// Subscribe cached event encodings; every other method goes to the generated server.
#[derive(Debug, Clone)]
pub struct MonitorRoutes {
    api: MonitorApi,
    generated: MonitorServiceServer<MonitorApi>,
    max_message_bytes: usize,
}

impl MonitorRoutes {
    /// The service over `api`, with `max_message_bytes` as the largest message either way.
    pub fn new(api: MonitorApi, max_message_bytes: usize) -> Self {
        Self {
            generated: MonitorServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            api,
            max_message_bytes,
        }
    }
}

impl NamedService for MonitorRoutes {
    const NAME: &'static str = <MonitorServiceServer<MonitorApi> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<http::Request<tonic::body::Body>> for MonitorRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let (api, max) = (self.api.clone(), self.max_message_bytes);
        match request.uri().path() {
            GET_STATUS => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<StatusWire, pb::GetStatusRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), Some(max));
                Ok(grpc.unary(GetStatus(api), request).await)
            }),
            SUBSCRIBE => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<SubscribeWire, pb::SubscribeRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), Some(max));
                Ok(grpc.server_streaming(Subscribe(api), request).await)
            }),
            _ => self.generated.call(request),
        }
    }
}

/// The Subscribe call of [`MonitorRoutes`].
struct Subscribe(MonitorApi);

impl tonic::server::ServerStreamingService<pb::SubscribeRequest> for Subscribe {
    type Response = SubscribeWire;
    type ResponseStream = super::monitor::WireStream;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.subscribe_wire(request).map(tonic::Response::new) })
    }
}

/// The GetStatus call of [`MonitorRoutes`].
struct GetStatus(MonitorApi);

impl tonic::server::UnaryService<pb::GetStatusRequest> for GetStatus {
    type Response = StatusWire;
    type Future = BoxFuture<Result<tonic::Response<StatusWire>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::GetStatusRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.status_wire(request).await.map(tonic::Response::new) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::core::{
        Capabilities, CommandAction, CommandWait, ConnectRequest, CoordinateRequest, Core, CoreConfig, JsonMap,
        NewInput, NewTask, Outcome, SessionKind, StatusQuery,
    };
    use crate::grpc::convert;

    fn map(v: serde_json::Value) -> JsonMap {
        v.as_object().cloned().unwrap_or_default()
    }

    async fn page(core: &Core) -> crate::core::StatusPage {
        core.status(&StatusQuery::default()).unwrap()
    }

    async fn connect_supervisor(core: &Core, id: &str) {
        core.connect(ConnectRequest {
            session_id: id.into(),
            kind: SessionKind::Supervisor,
            capabilities: Capabilities {
                task_coordination: true,
                ..Capabilities::default()
            },
            lease_ttl: None,
        })
        .await
        .unwrap();
    }

    fn new_task(id: &str, agent: &str) -> NewTask {
        NewTask {
            task_id: Some(id.into()),
            agent_id: agent.into(),
            description: format!("task {id}"),
            ..NewTask::default()
        }
    }

    /// What the kept encodings put on the wire decodes to exactly the plain conversion,
    /// and the length announced is the length written: tasks with metadata, a plan, a
    /// lock, open and last commands, an open input request, a result, or nothing started.
    #[tokio::test]
    async fn a_page_decodes_to_the_plain_conversion() {
        let core = rich_core().await;
        let page = page(&core).await;
        let plain: Vec<pb::Task> = page.tasks.iter().map(|t| convert::task(t, page.time)).collect();
        let wire = convert::status_page(page);
        assert_eq!(wire.encoded_len(), wire.encode_to_vec().len());
        let decoded = wire.clone().into_response().unwrap();
        assert_eq!(decoded.tasks, plain);
        assert_eq!(decoded.tasks.len(), 3);
        let rich = &decoded.tasks[0];
        assert!(rich.lock.is_some() && rich.last_command.is_some());
        assert_eq!((rich.open_commands.len(), rich.open_inputs.len()), (1, 1));
        assert!(decoded.tasks.iter().all(|t| t.duration.is_some()));
        assert_eq!(
            pb::GetStatusResponse {
                tasks: Vec::new(),
                ..decoded
            },
            wire.rest
        );
    }

    /// Every kind of log event a stream sends decodes from its kept encoding to exactly
    /// the plain conversion, with the length announced the length written; the encoding
    /// is made once per event and shared by every stream that sends it.
    #[tokio::test]
    async fn stream_events_decode_to_the_plain_conversion() {
        let core = rich_core().await;
        let head = core.head_seq();
        let mut subscription = core
            .subscribe(crate::core::SubscribeRequest {
                filter: Default::default(),
                after_seq: Some(0),
                snapshot: false,
                session_id: None,
            })
            .unwrap();
        let mut events = Vec::new();
        let replay = async {
            while events.len() < head as usize {
                let batch = subscription.next_batch().await.expect("the stream is open").unwrap();
                for item in batch {
                    match item {
                        crate::core::StreamItem::Event(e) => events.push(e),
                        other => assert!(matches!(convert::stream_item_wire(other), SubscribeWire::Message(_))),
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), replay)
            .await
            .expect("the whole log replays within 10 s");
        let mut kinds = std::collections::HashSet::new();
        for event in &events {
            kinds.insert(event.kind);
            let wire = convert::stream_item_wire(crate::core::StreamItem::Event(event.clone()));
            let SubscribeWire::Event(bytes) = &wire else {
                panic!("a log event is sent as its kept encoding");
            };
            assert_eq!(wire.encoded_len(), wire.encode_to_vec().len());
            let plain = convert::stream_item(crate::core::StreamItem::Event(event.clone()));
            assert_eq!(wire.clone().into_response().unwrap(), plain, "event {}", event.seq);
            // A second stream sends the same bytes, not a new encoding.
            let again = convert::stream_item_wire(crate::core::StreamItem::Event(event.clone()));
            let SubscribeWire::Event(again) = again else {
                panic!("a log event is sent as its kept encoding");
            };
            assert_eq!(again.as_ptr(), bytes.as_ptr());
        }
        // Task, progress, command, lock, input and session details are all covered.
        assert!(kinds.len() >= 8, "{kinds:?}");
    }

    /// A core holding tasks with metadata, a plan, a lock, open and last commands, an
    /// open input request, a result, and one not started.
    async fn rich_core() -> Core {
        let core = Core::in_memory(CoreConfig::default());
        core.start_task(NewTask {
            metadata: Some(map(json!({"team": "a", "n": [1, 2.5, null, {"deep": true}]}))),
            priority: 3,
            plan: Some(map(json!({"steps": ["x", "y"]}))),
            ..new_task("rich", "agent-1")
        })
        .await
        .unwrap();
        core.start_task(NewTask {
            pending: true,
            ..new_task("waiting", "agent-2")
        })
        .await
        .unwrap();
        core.start_task(new_task("done", "agent-1")).await.unwrap();
        core.report_progress("rich", 0.25, "a quarter".into()).await.unwrap();
        connect_supervisor(&core, "boss").await;
        let lock = core.acquire_lock("rich", "boss", None).await.unwrap();
        core.coordinate(CoordinateRequest {
            task_id: "rich".into(),
            coordinator_id: "boss".into(),
            action: CommandAction::BoostPriority,
            data: Some(map(json!({"priority": 9}))),
            fencing_token: lock.fencing_token,
            expected_version: None,
            idempotency_key: Some("k1".into()),
            wait: CommandWait::Admitted,
            wait_timeout: None,
        })
        .await
        .unwrap();
        core.request_input(NewInput {
            task_id: "rich".into(),
            prompt: "which one?".into(),
            choices: vec!["a".into(), "b".into()],
            ..NewInput::default()
        })
        .await
        .unwrap();
        core.finish_task("done", Outcome::Completed(Some(json!({"ok": [1, 2]}))))
            .await
            .unwrap();
        core
    }

    /// A task's encoding is made once per version: a second poll reuses it, a change
    /// makes a new one, and the page shows the change.
    #[tokio::test]
    async fn a_change_is_never_answered_from_an_old_encoding() {
        let core = Core::in_memory(CoreConfig::default());
        core.start_task(new_task("t", "agent-1")).await.unwrap();
        let first = page(&core).await;
        assert!(!first.tasks[0].wire.is_set());
        let bytes = convert::task_wire(&first.tasks[0]);
        assert!(first.tasks[0].wire.is_set());
        let again = page(&core).await;
        // Same version, same kept bytes (not a new encoding).
        assert_eq!(convert::task_wire(&again.tasks[0]).as_ptr(), bytes.as_ptr());
        drop((first, again));

        // Changed in place (nobody else holds it) or copied: either way not from the cache.
        core.report_progress("t", 0.5, "half".into()).await.unwrap();
        core.publish_update("t", map(json!({"k": 1}))).await.unwrap();
        let changed = page(&core).await;
        assert!(!changed.tasks[0].wire.is_set());
        let decoded = convert::status_page(changed).into_response().unwrap();
        assert_eq!(decoded.tasks[0].progress, 0.5);
        assert_eq!(decoded.tasks[0].status_message, "half");
        assert_eq!(decoded.tasks[0].version, 3);

        // A change that keeps the version (a lock renewal moves its expiry) is shown too.
        connect_supervisor(&core, "boss").await;
        let lock = core.acquire_lock("t", "boss", None).await.unwrap();
        let locked = page(&core).await;
        let before = convert::status_page(locked).into_response().unwrap().tasks[0].clone();
        let renewed = core
            .renew_lock("t", "boss", lock.fencing_token, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let after = convert::status_page(page(&core).await).into_response().unwrap().tasks[0].clone();
        assert_eq!(after.version, before.version, "a renewal keeps the version");
        assert_ne!(after.lock, before.lock);
        assert_eq!(after.lock, Some(convert::lock(&renewed)));

        // The duration is written fresh at every poll, not kept with the encoding.
        let later = page(&core).await;
        let time = later.time;
        let start = later.tasks[0].start_time.unwrap();
        let decoded = convert::status_page(later).into_response().unwrap();
        let expected = convert::duration(time.duration_since(start).unwrap_or_default());
        assert_eq!(decoded.tasks[0].duration, Some(expected));
        assert!(SystemTime::now() >= time);
    }
}
