//! `itc.v1.SessionService`: sessions and heartbeats (not implemented yet).

use std::pin::Pin;

use itc_proto::v1 as pb;
use itc_proto::v1::session_service_server::SessionService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status::not_yet;
use crate::core::Core;

/// The SessionService adapter over the core.
#[derive(Debug, Clone)]
pub struct SessionApi {
    #[allow(dead_code)] // used once sessions are implemented
    core: Core,
}

impl SessionApi {
    /// An adapter over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    type HeartbeatStream = Pin<Box<dyn Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

    async fn connect(&self, _request: Request<pb::ConnectRequest>) -> Result<Response<pb::ConnectResponse>, Status> {
        Err(not_yet("SessionService/Connect"))
    }

    async fn disconnect(
        &self,
        _request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        Err(not_yet("SessionService/Disconnect"))
    }

    async fn heartbeat(
        &self,
        _request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        Err(not_yet("SessionService/Heartbeat"))
    }
}
