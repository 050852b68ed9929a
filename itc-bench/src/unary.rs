//! Unary calls: a GetStatus page over many tasks, Coordinate, and progress reports from
//! many agents — against the baseline's echo of the same sizes (or its publish).

use std::time::Duration;

use itc_proto::v1 as pb;
use itc_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_proto::v1::session_service_client::SessionServiceClient;
use prost::Message;
use tonic::transport::Channel;

use crate::BenchError;
use crate::baseline::proto::EchoRequest;
use crate::baseline::proto::baseline_client::BaselineClient;
use crate::drive::{self, Load, Publisher};
use crate::server::Server;

/// A unary load's figures.
pub(crate) struct Figures {
    /// Calls per second.
    pub(crate) rate: f64,
    /// Median latency, seconds.
    pub(crate) p50: f64,
    /// 99th percentile latency, seconds.
    pub(crate) p99: f64,
}

impl From<&Load> for Figures {
    fn from(load: &Load) -> Self {
        Self {
            rate: load.rate(),
            p50: drive::quantile(&load.latency, 0.5),
            p99: drive::quantile(&load.latency, 0.99),
        }
    }
}

/// Request and response sizes of an ITC call, for the baseline's echo to mirror.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sizes {
    /// Encoded request bytes.
    pub(crate) request: usize,
    /// Encoded response bytes.
    pub(crate) response: usize,
}

/// How a load is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Calls in flight.
    pub(crate) in_flight: usize,
    /// At most this long.
    pub(crate) duration: Duration,
    /// At most this many calls.
    pub(crate) max_calls: u64,
}

async fn one_channel(server: &Server) -> Result<Channel, BenchError> {
    drive::channels(server, 1)
        .await?
        .pop()
        .ok_or_else(|| BenchError::Failed("no connection".into()))
}

/// GetStatus, a page of 100, over `tasks` tasks: the figures and the sizes.
pub(crate) async fn get_status(server: &Server, tasks: usize, bounds: Bounds) -> Result<(Figures, Sizes), BenchError> {
    let channel = one_channel(server).await?;
    drive::start_tasks(server, &channel, "bench-status", tasks).await?;
    let request = pb::GetStatusRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut client = MonitorServiceClient::new(channel.clone());
    let first = client.get_status(request.clone()).await.map_err(BenchError::from)?;
    let sizes = Sizes {
        request: request.encoded_len(),
        response: first.get_ref().encoded_len(),
    };
    if first.get_ref().tasks.len() < 100.min(tasks) {
        return Err(BenchError::Failed(format!(
            "GetStatus answered {} tasks, expected a page of 100",
            first.get_ref().tasks.len()
        )));
    }
    let load = drive::closed_loop(bounds.in_flight, bounds.duration, bounds.max_calls, move |_, _| {
        call_unread(channel.clone(), "/itc.v1.MonitorService/GetStatus", request.clone())
    })
    .await?;
    Ok(((&load).into(), sizes))
}

/// Coordinate (BOOST_PRIORITY, each call taking the task's lock for itself) on `tasks`
/// tasks, worker `w` steering tasks `w`, `w + in_flight`, … of its own (workers share
/// tasks only when there are fewer tasks than workers): the figures and the sizes.
pub(crate) async fn coordinate(server: &Server, tasks: usize, bounds: Bounds) -> Result<(Figures, Sizes), BenchError> {
    let channel = one_channel(server).await?;
    let ids = drive::start_tasks(server, &channel, "bench-steered", tasks).await?;
    let coordinator = "bench-coordinator".to_owned();
    SessionServiceClient::new(channel.clone())
        .connect(pb::ConnectRequest {
            session_id: coordinator.clone(),
            kind: pb::SessionKind::Supervisor as i32,
            capabilities: Some(pb::Capabilities {
                task_coordination: true,
                ..Default::default()
            }),
            lease_ttl: Some(prost_types::Duration { seconds: 120, nanos: 0 }),
        })
        .await
        .map_err(BenchError::from)?;
    let request = move |task: &str, i: u64| pb::CoordinateRequest {
        task_id: task.to_owned(),
        coordinator_id: coordinator.clone(),
        action: pb::CommandAction::BoostPriority as i32,
        data: Some(itc_proto::json::json_to_struct(&serde_json::Map::from_iter([(
            "priority".to_owned(),
            serde_json::Value::from(i % 10),
        )]))),
        ..Default::default()
    };
    let sample = request(&ids[0], 0);
    let mut client = CoordinatorServiceClient::new(channel.clone());
    let first = client.coordinate(sample.clone()).await.map_err(BenchError::from)?;
    let sizes = Sizes {
        request: sample.encoded_len(),
        response: first.get_ref().encoded_len(),
    };
    let in_flight = bounds.in_flight;
    let load = drive::closed_loop(in_flight, bounds.duration, bounds.max_calls, move |worker, i| {
        // Whole rounds only: a last, partial round would wrap onto other workers' tasks.
        let slots = (ids.len() / in_flight).max(1);
        let task = &ids[(worker + in_flight * (i as usize % slots)) % ids.len()];
        call_unread(
            channel.clone(),
            "/itc.v1.CoordinatorService/Coordinate",
            request(task, i),
        )
    })
    .await?;
    Ok(((&load).into(), sizes))
}

/// The baseline's echo with ITC's `sizes`.
pub(crate) async fn echo(server: &Server, sizes: Sizes, bounds: Bounds) -> Result<Figures, BenchError> {
    let channel = one_channel(server).await?;
    let request = EchoRequest {
        // The length field and tag take a few bytes: pad to the same encoded size.
        payload: vec![7u8; sizes.request.saturating_sub(8)],
        response_bytes: u32::try_from(sizes.response.saturating_sub(4)).unwrap_or(u32::MAX),
    };
    // The first echo is decoded and checked, as ITC's first answer is.
    let first = BaselineClient::new(channel.clone())
        .echo(request.clone())
        .await
        .map_err(BenchError::from)?;
    if first.get_ref().payload.len() != request.response_bytes as usize {
        return Err(BenchError::Failed(format!(
            "the echo answered {} bytes, expected {}",
            first.get_ref().payload.len(),
            request.response_bytes
        )));
    }
    let load = drive::closed_loop(bounds.in_flight, bounds.duration, bounds.max_calls, move |_, _| {
        call_unread(channel.clone(), "/itc.bench.v1.Baseline/Echo", request.clone())
    })
    .await?;
    Ok((&load).into())
}

/// Progress reports from `agents` agents, each on its own task and waiting for each
/// answer before the next report (ITC's ReportProgress; the baseline's Publish), over a
/// few connections.
pub(crate) async fn progress(server: &Server, agents: usize, bounds: Bounds) -> Result<Figures, BenchError> {
    let channels = drive::channels(server, drive::connections_for(agents)).await?;
    let ids = drive::start_tasks(server, &channels[0], "bench-agent", agents).await?;
    let publishers: Vec<Publisher> = (0..agents)
        .map(|i| Publisher::new(server, channels[i % channels.len()].clone()))
        .collect();
    let load = drive::closed_loop(agents, bounds.duration, bounds.max_calls, move |worker, i| {
        let mut publisher = publishers[worker].clone();
        let task = ids[worker].clone();
        async move {
            publisher
                .publish(&task, (i % 1000) as f64 / 1000.0, drive::stamp())
                .await
        }
    })
    .await?;
    Ok((&load).into())
}

/// An answer read off the wire but not decoded into a message: every field is skipped.
/// The loads read ITC's answers and the baseline's echoes this way alike, so that the
/// figure is the server's work and not the client's decoder's (the client shares the
/// machine's cores; a page of 100 tasks costs far more to decode than an echo of the same
/// size). The first answer of each load is decoded in full and checked.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Unread;

impl Message for Unread {
    fn encode_raw(&self, _buf: &mut impl prost::bytes::BufMut) {}

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {}
}

/// One unary call of `path` on `channel`, its answer read as [`Unread`].
pub(crate) async fn call_unread<Q>(channel: Channel, path: &'static str, request: Q) -> Result<(), tonic::Status>
where
    Q: Message + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the connection is not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<Q, Unread>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(request), path, codec).await.map(drop)
}
