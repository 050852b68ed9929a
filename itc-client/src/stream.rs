//! Subscriptions: a builder and a named stream of typed events that resumes by itself.
//!
//! The stream remembers the last resume point the server gave it (the seq of the last
//! event, or the one a HEARTBEAT or STREAM_END carried). When the connection drops, the
//! server restarts, or the stream reaches `max_stream_duration`, it subscribes again with
//! `after_seq` = that point: every event arrives exactly once, in order. If the server no
//! longer has those events, the stream yields [`Error::OutOfRange`] and ends (subscribe
//! again with a snapshot).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use itc_proto::v1 as pb;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::client::Client;
use crate::error::Error;
use crate::types::{Event, EventType};

/// How many times in a row a broken subscription tries to resume before giving up.
const RESUME_ATTEMPTS: u32 = 30;

/// Builds a subscription: filters (empty means all), a snapshot, a resume point.
#[derive(Debug, Clone)]
pub struct SubscriptionBuilder {
    client: Client,
    filter: pb::SubscriptionFilter,
    snapshot: bool,
    after_seq: Option<u64>,
    session_id: String,
}

impl SubscriptionBuilder {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            filter: pb::SubscriptionFilter::default(),
            snapshot: false,
            after_seq: None,
            session_id: String::new(),
        }
    }

    /// Only events of this task (may be given several times).
    #[must_use]
    pub fn task(mut self, task_id: impl Into<String>) -> Self {
        self.filter.task_ids.push(task_id.into());
        self
    }

    /// Only events of this agent (may be given several times).
    #[must_use]
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.filter.agent_ids.push(agent_id.into());
        self
    }

    /// Only events of these types.
    #[must_use]
    pub fn events(mut self, types: impl IntoIterator<Item = EventType>) -> Self {
        self.filter.event_types.extend(types.into_iter().map(|t| t as i32));
        self
    }

    /// Start with the current state of every matching task (TASK_SNAPSHOT events).
    #[must_use]
    pub fn snapshot(mut self, snapshot: bool) -> Self {
        self.snapshot = snapshot;
        self
    }

    /// Replay every retained event after this seq, then go live.
    #[must_use]
    pub fn after_seq(mut self, seq: u64) -> Self {
        self.after_seq = Some(seq);
        self
    }

    /// Tie the subscription to a session (it ends with the session).
    #[must_use]
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = session_id.into();
        self
    }

    /// Opens the stream. Errors that will not go away (a bad filter, streaming disabled,
    /// events no longer retained) are returned here.
    pub async fn start(self) -> Result<EventStream, Error> {
        let channel = match &self.client.endpoint {
            // Its own connection: an unread subscription cannot stall other calls.
            Some(endpoint) => endpoint.connect().await?,
            None => self.client.channel.clone(),
        };
        let resume = Arc::new(AtomicU64::new(self.after_seq.unwrap_or(0)));
        let mut state = Resuming {
            channel,
            filter: self.filter,
            snapshot: self.snapshot,
            session_id: self.session_id,
            resume: resume.clone(),
            auth: self.client.auth.clone(),
            started: self.after_seq.is_some(),
            current: None,
            done: false,
            retry: self.client.retry,
            pending: None,
            in_snapshot: false,
            breaks: 0,
        };
        state.open().await?;
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(EventStream {
            inner: Box::pin(stream),
            resume,
        })
    }
}

/// A live stream of events that resumes by itself. Implements [`Stream`].
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>,
    resume: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("resume_after_seq", &self.resume_after_seq())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The seq to resume after to miss nothing from here on (e.g. to persist it).
    pub fn resume_after_seq(&self) -> u64 {
        self.resume.load(Ordering::Acquire)
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct Resuming {
    channel: Channel,
    filter: pb::SubscriptionFilter,
    snapshot: bool,
    session_id: String,
    resume: Arc<AtomicU64>,
    auth: crate::client::Auth,
    /// Whether the resume point is meaningful (set by the caller or by the server).
    started: bool,
    current: Option<tonic::Streaming<pb::SubscribeResponse>>,
    done: bool,
    retry: crate::client::RetryPolicy,
    /// Snapshots are being sent: the resume point they were taken at only counts once
    /// they are all through (a break before that starts the snapshot over).
    pending: Option<u64>,
    in_snapshot: bool,
    /// Breaks in a row without an event delivered: the backoff before reopening.
    breaks: u32,
}

impl Resuming {
    async fn open(&mut self) -> Result<(), Error> {
        let request = pb::SubscribeRequest {
            filter: Some(self.filter.clone()),
            after_seq: self.started.then(|| self.resume.load(Ordering::Acquire)),
            snapshot: self.snapshot,
            session_id: self.session_id.clone(),
        };
        self.in_snapshot = self.snapshot && !self.started;
        self.pending = None;
        let stream = MonitorServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .subscribe(request)
            .await
            .map_err(|status| out_of_range(status, self.resume.load(Ordering::Acquire)))?
            .into_inner();
        self.current = Some(stream);
        Ok(())
    }

    /// Reopens after a break: backs off unless events flowed since the last opening;
    /// gives up on lasting errors.
    async fn reopen(&mut self) -> Result<(), Error> {
        self.current = None;
        loop {
            if self.breaks > 0 {
                tokio::time::sleep(self.retry.backoff(self.breaks.min(16))).await;
            }
            self.breaks = self.breaks.saturating_add(1);
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && self.breaks < RESUME_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn fail(&mut self, error: Error) -> Option<Result<Event, Error>> {
        self.done = true;
        self.current = None;
        Some(Err(error))
    }

    async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if self.done {
                return None;
            }
            let message = match self.current.as_mut() {
                Some(stream) => stream.next().await,
                None => None,
            };
            let event = match message {
                Some(Ok(pb::SubscribeResponse { event: Some(event) })) => event,
                Some(Ok(_)) => continue,
                Some(Err(status)) if status.code() == tonic::Code::OutOfRange => {
                    let error = out_of_range(status, self.resume.load(Ordering::Acquire));
                    return self.fail(error);
                }
                // A broken connection or a restarting server: resume.
                Some(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ) =>
                {
                    if let Err(e) = self.reopen().await {
                        return self.fail(e);
                    }
                    continue;
                }
                // Anything else will not go away by resubscribing.
                Some(Err(status)) => return self.fail(status.into()),
                // Ended without STREAM_END: resume.
                None => {
                    if let Err(e) = self.reopen().await {
                        return self.fail(e);
                    }
                    continue;
                }
            };
            let detail = match &event.detail {
                Some(pb::event::Detail::Stream(detail)) => Some(detail.clone()),
                _ => None,
            };
            match event.r#type() {
                EventType::StreamStart => {
                    if let Some(detail) = detail {
                        if self.in_snapshot {
                            self.pending = Some(detail.resume_after_seq);
                        } else {
                            self.mark(detail.resume_after_seq);
                        }
                    }
                    continue;
                }
                EventType::StreamEnd => {
                    if detail
                        .as_ref()
                        .is_some_and(|d| d.reason() == pb::StreamEndReason::SessionEnded)
                    {
                        return self.fail(Error::SessionEnded {
                            session_id: self.session_id.clone(),
                            reason: "the subscription's session ended".into(),
                        });
                    }
                    if let Some(detail) = detail
                        && !self.in_snapshot
                    {
                        self.mark(detail.resume_after_seq);
                    }
                    // max_stream_duration or drain: continue where it stopped.
                    self.breaks = 0;
                    if let Err(e) = self.reopen().await {
                        return self.fail(e);
                    }
                    continue;
                }
                EventType::StreamReset => {
                    // Past retention: fresh snapshots follow; they count once all through.
                    self.in_snapshot = true;
                    self.pending = detail.map(|d| d.resume_after_seq);
                }
                EventType::TaskSnapshot => {}
                EventType::Heartbeat => {
                    self.settle();
                    if let Some(detail) = detail {
                        self.mark(detail.resume_after_seq);
                    }
                    // Heartbeats keep the resume point fresh; the caller sees them only if
                    // it asked for every type, or for HEARTBEAT.
                    let wanted = self.filter.event_types.is_empty()
                        || self.filter.event_types.contains(&(EventType::Heartbeat as i32));
                    if !wanted {
                        self.breaks = 0;
                        continue;
                    }
                }
                _ => {
                    self.settle();
                    if event.seq > 0 {
                        self.mark(event.seq);
                    }
                }
            }
            self.breaks = 0;
            return Some(Ok(Event::from_proto(&event)));
        }
    }

    /// The snapshot is through: its resume point now counts.
    fn settle(&mut self) {
        self.in_snapshot = false;
        if let Some(seq) = self.pending.take() {
            self.mark(seq);
        }
    }

    fn mark(&mut self, seq: u64) {
        self.started = true;
        self.resume.store(seq, Ordering::Release);
    }
}

/// OUT_OF_RANGE as the typed error; other statuses as they are.
fn out_of_range(status: tonic::Status, after_seq: u64) -> Error {
    if status.code() != tonic::Code::OutOfRange {
        return status.into();
    }
    // The server's message names the oldest retained seq ("...the oldest retained seq is N...").
    let oldest = status
        .message()
        .split("oldest retained seq is ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Error::OutOfRange {
        after_seq,
        oldest_retained_seq: oldest,
    }
}

impl Client {
    /// A subscription builder.
    pub fn subscribe(&self) -> SubscriptionBuilder {
        SubscriptionBuilder::new(self.clone())
    }
}
