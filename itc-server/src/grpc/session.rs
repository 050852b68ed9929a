//! `itc.v1.SessionService`: sessions and the bidirectional heartbeat.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use itc_proto::v1 as pb;
use itc_proto::v1::session_service_server::SessionService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use super::authz::Caller;
use super::convert;
use crate::auth::Revocation;
use crate::core::{Capabilities, ConnectRequest, Core, Heartbeat, Notice, Push};
use crate::error::CoreError;
use crate::ratelimit::RateLimiter;

/// The SessionService adapter over the core.
#[derive(Debug, Clone)]
pub struct SessionApi {
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

    async fn connect(&self, request: Request<pb::ConnectRequest>) -> Result<Response<pb::ConnectResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let caps = req.capabilities.unwrap_or_default();
        let request = ConnectRequest {
            kind: convert::session_kind_from("kind", req.kind)?,
            session_id: req.session_id,
            capabilities: Capabilities {
                streaming: caps.streaming,
                interruption: caps.interruption,
                task_coordination: caps.task_coordination,
                background_monitoring: caps.background_monitoring,
            },
            lease_ttl: convert::duration_field("lease_ttl", req.lease_ttl.as_ref())?,
        };
        caller.may_connect(&request.session_id, request.kind)?;
        let (info, taken_over) = self.core.connect(request).await?;
        Ok(Response::new(pb::ConnectResponse {
            session: Some(convert::session(&info)),
            taken_over,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        Caller::of(&request).acts_as("session_id", &request.get_ref().session_id)?;
        self.core.disconnect(&request.get_ref().session_id).await?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let caller = Caller::of(&request);
        let request_rate = request.extensions().get::<Arc<RateLimiter>>().cloned();
        let revocation = request.extensions().get::<Revocation>().cloned();
        let mut inbound = request.into_inner();
        // The first ping names the session.
        let first = match inbound.next().await {
            Some(Ok(ping)) => ping,
            Some(Err(status)) => return Err(status),
            None => return Err(CoreError::invalid("session_id", "send a first ping naming the session").into()),
        };
        // Check the first ping before opening: a faulty stream must not take over a good one.
        // (Later pings must name the same session: checked as they come.)
        caller.acts_as("session_id", &first.session_id)?;
        // Each later ping counts against the principal's request rate, as a call does.
        let rate = Rate::of(&caller, &request_rate);
        for id in &first.task_ids {
            crate::core::validate_id("task_ids", id)?;
        }
        let heartbeat = self.core.heartbeat(&first.session_id, first.generation)?;
        let lease = heartbeat.ping(&first.task_ids).await?;
        let state = Beat {
            core: self.core.clone(),
            heartbeat,
            inbound: Some(inbound),
            first: Some(lease),
            ended: false,
            rate,
            revoked: revocation.map(|r| Box::pin(r.revoked()) as Pin<Box<dyn Future<Output = ()> + Send>>),
        };
        let stream = futures_util::stream::unfold(state, |mut beat| async move {
            let item = beat.next().await?;
            Some((item, beat))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One Heartbeat call: pings in, lease renewals and pushes out.
struct Beat {
    core: Core,
    heartbeat: Heartbeat,
    /// `None` once the client closed its side (pushes still flow until the lease ends).
    inbound: Option<Streaming<pb::HeartbeatRequest>>,
    first: Option<SystemTime>,
    ended: bool,
    rate: Option<Rate>,
    /// Resolves once the caller's token is removed from the tokens file.
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// The request rate a stream's pings count against: its principal's bucket.
struct Rate {
    limiter: Arc<RateLimiter>,
    principal: String,
}

impl Rate {
    fn of(caller: &Caller, limiter: &Option<Arc<RateLimiter>>) -> Option<Self> {
        Some(Self {
            limiter: limiter.clone()?,
            principal: caller.id()?.to_owned(),
        })
    }
}

impl Beat {
    async fn next(&mut self) -> Option<Result<pb::HeartbeatResponse, Status>> {
        if let Some(expire) = self.first.take() {
            return Some(Ok(renewed(expire)));
        }
        if self.ended {
            return None;
        }
        loop {
            let ping = async {
                match self.inbound.as_mut() {
                    Some(inbound) => inbound.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = ping => match message {
                    Some(Ok(ping)) => {
                        if ping.session_id != self.heartbeat.session_id() {
                            self.ended = true;
                            return Some(Err(CoreError::invalid(
                                "session_id",
                                "every ping of a Heartbeat stream must name the same session",
                            ).into()));
                        }
                        if let Some(rate) = &self.rate
                            && let Err(status) = rate.limiter.check(&rate.principal)
                        {
                            self.ended = true;
                            return Some(Err(status));
                        }
                        return Some(self.heartbeat.ping(&ping.task_ids).await.map(renewed).map_err(Status::from));
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "heartbeat stream broke");
                        return None;
                    }
                    None => self.inbound = None,
                },
                () = async {
                    match self.revoked.as_mut() {
                        Some(revoked) => revoked.await,
                        None => std::future::pending().await,
                    }
                } => {
                    // The session then ends with its lease, releasing its locks.
                    self.ended = true;
                    return Some(Err(Status::unauthenticated("the token was revoked (tokens file reloaded)")));
                }
                push = self.heartbeat.next() => {
                    if let Some(response) = self.respond(push?).await {
                        return Some(Ok(response));
                    }
                }
            }
        }
    }

    /// The message for a push; `None` for a command that closed while it was queued.
    async fn respond(&mut self, push: Push) -> Option<pb::HeartbeatResponse> {
        use pb::heartbeat_response::Message;
        let message = match push {
            Push::Command(queued) => match self.core.command_delivered(&queued.id).await {
                Ok(Some(command)) => Message::Command(convert::command(&command)),
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "could not mark a command delivered");
                    return None;
                }
            },
            Push::Input(input) => Message::Input(convert::input(&input)),
            Push::Notice(notice) => {
                self.ended = true;
                let (kind, message) = match notice {
                    Notice::LeaseLost => (pb::NoticeKind::LeaseLost, "the session's lease ran out: connect again"),
                    Notice::TakenOver => (
                        pb::NoticeKind::TakenOver,
                        "the session was taken over by a newer connection or Heartbeat stream",
                    ),
                    Notice::ServerDraining => (
                        pb::NoticeKind::ServerDraining,
                        "the server is shutting down: reconnect later or elsewhere",
                    ),
                    Notice::Disconnected => (pb::NoticeKind::Disconnected, "the session was disconnected"),
                };
                Message::Notice(pb::SessionNotice {
                    kind: kind as i32,
                    message: message.into(),
                })
            }
        };
        Some(pb::HeartbeatResponse { message: Some(message) })
    }
}

fn renewed(expire: SystemTime) -> pb::HeartbeatResponse {
    pb::HeartbeatResponse {
        message: Some(pb::heartbeat_response::Message::Lease(pb::LeaseRenewed {
            expire_time: Some(convert::timestamp(expire)),
        })),
    }
}
