//! `itc.v1.MonitorService`: status polling and live streams.

use std::pin::Pin;
use std::time::SystemTime;

use futures_util::StreamExt;
use itc_proto::v1 as pb;
use itc_proto::v1::monitor_service_server::MonitorService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::authz::Caller;
use super::convert;
use super::wire::{StatusWire, SubscribeWire};
use crate::auth::Revocation;
use crate::core::{Core, StreamItem};
use crate::error::CoreError;
use crate::ratelimit::RateLimiter;

/// A Subscribe stream as Subscribe sends it.
pub(crate) type WireStream = Pin<Box<dyn Stream<Item = Result<SubscribeWire, Status>> + Send>>;

/// The MonitorService adapter over the core.
#[derive(Debug, Clone)]
pub struct MonitorApi {
    core: Core,
}

impl MonitorApi {
    /// An adapter over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// Subscribe: the subscription's items as stream messages.
    pub(crate) fn subscribe_wire(&self, request: Request<pb::SubscribeRequest>) -> Result<WireStream, Status> {
        let caller = Caller::of(&request);
        let limiter = request.extensions().get::<Arc<RateLimiter>>().cloned();
        let revocation = request.extensions().get::<Revocation>().cloned();
        let mut request = convert::subscribe_request(request.into_inner())?;
        // An agent's stream carries its own tasks' events only (filters are ANDed).
        caller.narrow_agents("filter.agent_ids", &mut request.filter.agent_ids)?;
        if let Some(session_id) = &request.session_id {
            caller.acts_as("session_id", session_id)?;
        }
        // A stream under a session is counted by the core; one without, per principal.
        let permit = match (&request.session_id, caller.id(), limiter) {
            (None, Some(id), Some(limiter)) => {
                Some(limiter.open_stream(id, self.core.config().max_subscriptions_per_session)?)
            }
            _ => None,
        };
        let subscription = self.core.subscribe(request)?;
        tracing::debug!(subscription = subscription.id(), "subscribed");
        // The stream owns the subscription: when the client goes away tonic drops the
        // stream, and the subscription unregisters at once.
        // Items come in batches (everything sendable at a wake-up) and are converted one
        // at a time as tonic encodes them.
        // The permit lives as long as the stream.
        let stream = futures_util::stream::unfold((subscription, permit), |(mut sub, permit)| async move {
            let batch = sub.next_batch().await?;
            Some((batch, (sub, permit)))
        })
        .flat_map(|batch| futures_util::stream::iter(Batch::from(batch)));
        // A token removed from the tokens file (SIGHUP) ends its streams: UNAUTHENTICATED.
        if let Some(revocation) = revocation {
            let revoked = futures_util::stream::once(async move {
                revocation.revoked().await;
                Err(Status::unauthenticated("the token was revoked (tokens file reloaded)"))
            });
            let stream = futures_util::stream::select(stream, revoked).scan(false, |ended, item| {
                let next = (!*ended).then(|| {
                    *ended = item.is_err();
                    item
                });
                std::future::ready(next)
            });
            return Ok(Box::pin(stream));
        }
        Ok(Box::pin(stream))
    }

    /// GetStatus: one page of tasks with the statistics and sessions.
    pub(crate) async fn status_wire(&self, request: Request<pb::GetStatusRequest>) -> Result<StatusWire, Status> {
        let caller = Caller::of(&request);
        let mut query = convert::status_query(request.into_inner())?;
        caller.narrow_agents("agent_ids", &mut query.agent_ids)?;
        let page = self.core.durable(self.core.status(&query)?).await?;
        let mut sessions = self.core.sessions();
        let mut response = convert::status_page(page);
        response.rest.statistics.get_or_insert_default().connected_sessions = sessions.len() as u64;
        // The counter counts every session; the list shows an agent its own.
        if let Some(own) = caller.only_agent() {
            sessions.retain(|s| s.info.id == own);
        }
        response.rest.sessions = sessions.iter().map(convert::session_view).collect();
        Ok(response)
    }
}

#[tonic::async_trait]
impl MonitorService for MonitorApi {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

    /// Served by [`super::MonitorRoutes`], which writes each event's kept encoding; this
    /// is the same stream decoded, for a caller of the plain generated server.
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self.subscribe_wire(request)?.map(|item| {
            item.and_then(|wire| {
                wire.into_response()
                    .map_err(|e| Status::internal(format!("a stream message did not decode: {e}")))
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// Served by [`super::MonitorRoutes`], which writes the kept encodings directly; this
    /// is the same answer decoded, for a caller of the plain generated server.
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let response = self.status_wire(request).await?.into_response();
        response
            .map(Response::new)
            .map_err(|e| Status::internal(format!("a status page did not decode: {e}")))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::GetTaskResponse>, Status> {
        let task = self.core.task(&request.get_ref().task_id)?;
        Caller::of(&request).sees(&format!("task `{}`", task.id), &task.agent_id)?;
        let task = self.core.durable(task).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(convert::task(&task, SystemTime::now())),
        }))
    }

    async fn get_input(&self, request: Request<pb::GetInputRequest>) -> Result<Response<pb::GetInputResponse>, Status> {
        let input = self.core.input(&request.get_ref().request_id)?;
        Caller::of(&request).sees(&format!("input request `{}`", input.id), &input.agent_id)?;
        let input = self.core.durable(input).await?;
        Ok(Response::new(pb::GetInputResponse {
            input: Some(convert::input(&input)),
        }))
    }
}

/// One batch of a subscription as stream messages: its items, or the error that ended it.
enum Batch {
    Items(std::vec::IntoIter<StreamItem>),
    Error(Option<CoreError>),
}

impl From<Result<Vec<StreamItem>, CoreError>> for Batch {
    fn from(batch: Result<Vec<StreamItem>, CoreError>) -> Self {
        match batch {
            Ok(items) => Self::Items(items.into_iter()),
            Err(e) => Self::Error(Some(e)),
        }
    }
}

impl Iterator for Batch {
    type Item = Result<SubscribeWire, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Items(items) => items.next().map(|item| Ok(convert::stream_item_wire(item))),
            Self::Error(error) => error.take().map(|e| Err(Status::from(e))),
        }
    }
}
