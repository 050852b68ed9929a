//! Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).
//!
//! Each takes arbitrary bytes and must neither panic nor hang; refusing them is fine.
//!
//! - [`open_log_segment`]: the bytes as the first segment of a log store's data dir, then
//!   the store opened (headers, committed length, record checksums, MessagePack and JSON
//!   bodies, recovery).
//! - [`call_services`]: the first byte picks a request type (its low bits) and the caller
//!   (its high bits: nobody, as with authentication off, or the principal `agent` with
//!   the agent role, or `sup` with the coordinator role); the rest is decoded as that
//!   protobuf message and sent through the gRPC adapters (conversion, authorization,
//!   validation, the core) of a server that holds one running task `t` of `agent`, one
//!   coordinator session `sup` and one agent session `agent`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_server::AgentService;
use itc_proto::v1::coordinator_service_server::CoordinatorService;
use itc_proto::v1::monitor_service_server::MonitorService;
use itc_proto::v1::session_service_server::SessionService;
use prost::Message;
use tonic::Request;

use crate::auth::{Principal, Role};
use crate::core::{Capabilities, ConnectRequest, Core, CoreConfig, NewTask, SessionKind};
use crate::grpc::{AgentApi, CoordinatorApi, MonitorApi, SessionApi};
use crate::store::{LogOptions, LogStore, SyncLevel};

/// Opens a log store whose only segment holds `bytes`.
pub fn open_log_segment(bytes: &[u8]) {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "itc-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let log = dir.join("log");
    if std::fs::create_dir_all(&log).is_err() || std::fs::write(log.join(format!("{:020}.seg", 1)), bytes).is_err() {
        return;
    }
    let opened = LogStore::open(LogOptions {
        data_dir: dir.clone(),
        sync: SyncLevel::Off,
        sync_interval: Duration::from_secs(1),
        retention_count: 1000,
        retention_age: Duration::from_secs(3600),
        segment_bytes: 1 << 16,
    });
    drop(opened);
    let _ = std::fs::remove_dir_all(&dir);
}

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
}

/// Sends one fuzzed request through the adapters (see the module docs).
pub fn call_services(bytes: &[u8]) {
    let Some((&kind, body)) = bytes.split_first() else {
        return;
    };
    RUNTIME.with(|runtime| {
        if let Some(runtime) = runtime {
            runtime.block_on(call(kind, body));
        }
    });
}

async fn call(kind: u8, body: &[u8]) {
    let core = Core::in_memory(CoreConfig {
        max_payload_bytes: 4096,
        coordination_timeout: Duration::from_millis(50),
        ..CoreConfig::default()
    });
    if seed(&core).await.is_none() {
        return;
    }
    let agent = AgentApi::new(core.clone());
    let coordinator = CoordinatorApi::new(core.clone());
    let monitor = MonitorApi::new(core.clone());
    let sessions = SessionApi::new(core.clone());
    // The caller, as the auth layer would have put it in the request.
    let principal = match kind / 32 {
        1 | 3 => Some(("agent", Role::Agent)),
        2 | 4 => Some(("sup", Role::Coordinator)),
        _ => None,
    }
    .map(|(id, role)| {
        Arc::new(Principal {
            id: id.into(),
            roles: vec![role],
        })
    });
    macro_rules! send {
        ($api:ident . $method:ident ($message:ty)) => {
            if let Ok(message) = <$message>::decode(body) {
                let _ = $api.$method(with_caller(message, &principal)).await;
            }
        };
    }
    match kind % 32 {
        0 => send!(agent.start_task(pb::StartTaskRequest)),
        1 => send!(agent.report_progress(pb::ReportProgressRequest)),
        2 => send!(agent.publish_update(pb::PublishUpdateRequest)),
        3 => send!(agent.complete_task(pb::CompleteTaskRequest)),
        4 => send!(agent.fail_task(pb::FailTaskRequest)),
        5 => send!(agent.cancel_task(pb::CancelTaskRequest)),
        6 => send!(agent.request_input(pb::RequestInputRequest)),
        7 => send!(agent.acknowledge_command(pb::AcknowledgeCommandRequest)),
        8 => send!(coordinator.coordinate(pb::CoordinateRequest)),
        9 => send!(coordinator.acquire_lock(pb::AcquireLockRequest)),
        10 => send!(coordinator.renew_lock(pb::RenewLockRequest)),
        11 => send!(coordinator.release_lock(pb::ReleaseLockRequest)),
        12 => send!(coordinator.answer_input(pb::AnswerInputRequest)),
        13 => send!(coordinator.interrupt_all(pb::InterruptAllRequest)),
        14 => send!(coordinator.interact(pb::InteractRequest)),
        15 => send!(monitor.get_status(pb::GetStatusRequest)),
        16 => send!(monitor.get_task(pb::GetTaskRequest)),
        17 => {
            // Subscribe: opening it converts and validates the request; the first item is
            // the stream's start (or its error).
            if let Ok(message) = pb::SubscribeRequest::decode(body)
                && let Ok(stream) = monitor.subscribe(with_caller(message, &principal)).await
            {
                let mut stream = stream.into_inner();
                let _ = tokio_stream::StreamExt::next(&mut stream).await;
            }
        }
        18 => send!(sessions.connect(pb::ConnectRequest)),
        19 => send!(sessions.disconnect(pb::DisconnectRequest)),
        20 => send!(coordinator.get_command(pb::GetCommandRequest)),
        21 => send!(monitor.get_input(pb::GetInputRequest)),
        22 => send!(coordinator.resume_all(pb::ResumeAllRequest)),
        _ => {
            // Heartbeat is a client stream; its handler is driven by the adapters' tests.
        }
    }
}

/// `message` as a request of `principal` (as the auth layer leaves it), or of nobody.
fn with_caller<T>(message: T, principal: &Option<Arc<Principal>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal.clone());
    }
    request
}

/// A task `t` of agent `agent`, running, with the agent and coordinator `sup` connected.
async fn seed(core: &Core) -> Option<()> {
    for (id, kind) in [("agent", SessionKind::Agent), ("sup", SessionKind::Supervisor)] {
        core.connect(ConnectRequest {
            session_id: id.into(),
            kind,
            capabilities: Capabilities {
                streaming: true,
                interruption: true,
                task_coordination: true,
                background_monitoring: true,
            },
            lease_ttl: None,
        })
        .await
        .ok()?;
    }
    core.start_task(NewTask {
        task_id: Some("t".into()),
        agent_id: "agent".into(),
        description: "fuzzed".into(),
        metadata: None,
        priority: 0,
        plan: None,
        stall_timeout: None,
        pending: false,
    })
    .await
    .ok()?;
    Some(())
}
