//! Sessions: a coordinator's or an agent's presence, kept alive by a background
//! Heartbeat, reconnecting by itself after transient failures, and routing what the
//! server pushes (commands for the agent's tasks, answered questions) to whoever waits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use itc_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, RetryPolicy};
use crate::coordination::{Capabilities, CoordinateCall, SessionKind};
use crate::error::Error;
use crate::types::{Action, Command, InputRequest};

/// Command ids remembered to drop duplicate deliveries.
const KEPT_SEEN: usize = 10_000;

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Connected, lease kept.
    Connected,
    /// Reconnecting, and why it had to.
    Reconnecting(Interruption),
    /// Over: closed, taken over by another connection of the same id, or disconnected.
    Ended(String),
}

/// Why a session had to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interruption {
    /// The connection broke.
    ConnectionLost,
    /// The lease ran out (the server ended the session: its locks were released).
    LeaseLost,
    /// The server is shutting down.
    ServerDraining,
}

/// Builds a session: `client.coordinator(id)` or `client.agent(id)`, then `.connect()`.
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    client: Client,
    id: String,
    kind: SessionKind,
    capabilities: Capabilities,
}

impl SessionBuilder {
    /// What kind of coordinator (default SUPERVISOR; agents are AGENT).
    #[must_use]
    pub fn kind(mut self, kind: SessionKind) -> Self {
        self.kind = kind;
        self
    }

    /// What it may do (coordinators default to everything).
    #[must_use]
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Connects and starts heartbeating in the background.
    pub async fn connect(self) -> Result<Session, Error> {
        let opened = self
            .client
            .connect_session(&self.id, self.kind, self.capabilities)
            .await?;
        let (lease, generation) = (opened.lease, opened.generation);
        let (state, _) = watch::channel(SessionState::Connected);
        let inner = Arc::new(Inner {
            client: self.client,
            id: self.id,
            kind: self.kind,
            capabilities: self.capabilities,
            state,
            routes: Mutex::default(),
            closed: AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(generation),
        });
        let background = tokio::spawn(run(inner.clone(), lease));
        inner.routes().background = Some(background);
        Ok(Session { inner })
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    id: String,
    kind: SessionKind,
    capabilities: Capabilities,
    state: watch::Sender<SessionState>,
    routes: Mutex<Routes>,
    closed: AtomicBool,
    /// The generation of our connection: a heartbeat of an older one is refused.
    generation: std::sync::atomic::AtomicU64,
}

/// Who waits for what the server pushes.
#[derive(Debug, Default)]
struct Routes {
    /// Commands by task id.
    commands: HashMap<String, mpsc::UnboundedSender<Command>>,
    /// Commands seen (delivery is at least once: duplicates are dropped).
    seen: HashSet<String>,
    /// Waiters of input requests by id.
    inputs: HashMap<String, oneshot::Sender<InputRequest>>,
    /// Closed input requests pushed before anyone waited for them.
    answered: HashMap<String, InputRequest>,
    /// Tasks the agent works on: named in every ping (keeps them from STALLED).
    tasks: HashSet<String>,
    /// Commands pushed before their task was routed.
    unrouted: HashMap<String, Vec<Command>>,
    /// `seen` in arrival order, to bound it.
    seen_order: std::collections::VecDeque<String>,
    background: Option<tokio::task::JoinHandle<()>>,
}

impl Inner {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deliver(&self, push: pb::heartbeat_response::Message) {
        match push {
            pb::heartbeat_response::Message::Command(c) => {
                let command = Command::from_proto(&c);
                let mut routes = self.routes();
                if !routes.seen.insert(command.id.clone()) {
                    return;
                }
                routes.seen_order.push_back(command.id.clone());
                while routes.seen_order.len() > KEPT_SEEN {
                    if let Some(old) = routes.seen_order.pop_front() {
                        routes.seen.remove(&old);
                    }
                }
                match routes.commands.get(&command.task_id) {
                    Some(tx) => {
                        let _ = tx.send(command);
                    }
                    // Pushed before its task handle routed it (right after StartTask).
                    None => routes
                        .unrouted
                        .entry(command.task_id.clone())
                        .or_default()
                        .push(command),
                }
            }
            pb::heartbeat_response::Message::Input(i) => self.deliver_input(InputRequest::from_proto(&i)),
            _ => {}
        }
    }

    fn deliver_input(&self, input: InputRequest) {
        let mut routes = self.routes();
        match routes.inputs.remove(&input.id) {
            Some(waiter) => {
                let _ = waiter.send(input);
            }
            None => {
                routes.answered.insert(input.id.clone(), input);
            }
        }
    }

    /// The session is over: waiters learn it, command streams close.
    fn end(&self, reason: String) {
        let mut routes = self.routes();
        routes.inputs.clear();
        routes.commands.clear();
        drop(routes);
        self.state.send_replace(SessionState::Ended(reason));
    }
}

/// A connected session. Cheap to clone; `close().await` ends it (dropping the last clone
/// ends it too, best effort).
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl Client {
    /// A coordinator session builder (kind SUPERVISOR, every capability, unless set).
    pub fn coordinator(&self, id: impl Into<String>) -> SessionBuilder {
        SessionBuilder {
            client: self.clone(),
            id: id.into(),
            kind: SessionKind::Supervisor,
            capabilities: Capabilities::all(),
        }
    }

    /// An agent session builder.
    pub fn agent(&self, id: impl Into<String>) -> SessionBuilder {
        SessionBuilder {
            client: self.clone(),
            id: id.into(),
            kind: SessionKind::Agent,
            capabilities: Capabilities::default(),
        }
    }
}

impl Session {
    /// The session's id (the coordinator's or agent's id).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The client it uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Where the session stands, as a watch: changes when the connection breaks, comes
    /// back, or ends.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    /// A command of this coordinator for `task_id`.
    pub fn coordinate(&self, task_id: &str, action: Action) -> CoordinateCall {
        self.inner.client.coordinate(&self.inner.id, task_id, action)
    }

    /// Answers an agent's input request as this session.
    pub async fn answer(&self, request_id: &str, answer: serde_json::Value) -> Result<InputRequest, Error> {
        self.inner.client.answer(&self.inner.id, request_id, answer).await
    }

    /// Ends the session (its locks are released and its streams end).
    pub async fn close(self) -> Result<(), Error> {
        let already = self.inner.closed.swap(true, Ordering::SeqCst);
        if let Some(background) = self.inner.routes().background.take() {
            background.abort();
        }
        self.inner.end("closed".into());
        if already {
            // Taken over or disconnected already: the id belongs to someone else now.
            return Ok(());
        }
        self.inner.client.close_session(&self.inner.id).await
    }

    /// Routes the commands pushed for `task_id` to the returned receiver.
    pub(crate) fn route_commands(&self, task_id: &str) -> mpsc::UnboundedReceiver<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut routes = self.inner.routes();
        for command in routes.unrouted.remove(task_id).unwrap_or_default() {
            let _ = tx.send(command);
        }
        routes.commands.insert(task_id.to_owned(), tx);
        routes.tasks.insert(task_id.to_owned());
        rx
    }

    /// Stops vouching for a task and routing its commands.
    pub(crate) fn forget_task(&self, task_id: &str) {
        let mut routes = self.inner.routes();
        routes.commands.remove(task_id);
        routes.tasks.remove(task_id);
        routes.unrouted.remove(task_id);
    }

    /// Waits for the input request `request_id` to be answered (or to expire), as pushed
    /// on the heartbeat; checks the server once too, in case the push came before.
    pub(crate) async fn wait_input(&self, request_id: &str) -> Result<InputRequest, Error> {
        let ended = || Error::SessionEnded {
            session_id: self.inner.id.clone(),
            reason: "the session ended while waiting for an answer".into(),
        };
        let rx = {
            let mut routes = self.inner.routes();
            if let Some(done) = routes.answered.remove(request_id) {
                return Ok(done);
            }
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(ended());
            }
            let (tx, rx) = oneshot::channel();
            routes.inputs.insert(request_id.to_owned(), tx);
            rx
        };
        let current = self.inner.client.get_input(request_id).await?;
        if current.state != crate::types::InputState::Open {
            self.inner.routes().inputs.remove(request_id);
            return Ok(current);
        }
        rx.await.map_err(|_| ended())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(background) = self.routes().background.take() {
            background.abort();
        }
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        // Best effort: tell the server now rather than at lease expiry.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let id = self.id.clone();
            runtime.spawn(async move {
                let _ = client.close_session(&id).await;
            });
        }
    }
}

/// The background heartbeat: pings at a third of the lease, routes pushes, reconnects
/// (with capped backoff) after a broken stream, a lost lease or a draining server, ends on
/// takeover, disconnect or close. It holds the session only weakly: dropping the last
/// `Session` ends it.
async fn run(inner: Arc<Inner>, mut lease: Duration) {
    let weak = Arc::downgrade(&inner);
    let (client, id) = (inner.client.clone(), inner.id.clone());
    drop(inner);
    let retry = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(2),
    };
    let mut attempt = 0u32;
    loop {
        let outcome = beat(&weak, &client, &id, lease).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let reason = match outcome {
            Beat::Gone => return,
            Beat::Ended(ref reason) => Some(reason.clone()),
            Beat::Healthy => {
                attempt = 0;
                None
            }
            Beat::Broken | Beat::Lost | Beat::Draining => None,
        };
        if let Some(reason) = reason {
            // Taken over or disconnected elsewhere: this handle must not disconnect the
            // new owner when dropped.
            inner.closed.store(true, Ordering::SeqCst);
            inner.end(reason);
            return;
        }
        inner.state.send_replace(SessionState::Reconnecting(match outcome {
            Beat::Lost => Interruption::LeaseLost,
            Beat::Draining => Interruption::ServerDraining,
            _ => Interruption::ConnectionLost,
        }));
        attempt = attempt.saturating_add(1);
        drop(inner);
        tokio::time::sleep(retry.backoff(attempt.min(16))).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        // Connect again: a takeover of our own session, or a new one after a loss.
        match client.connect_session(&id, inner.kind, inner.capabilities).await {
            Ok(opened) => {
                lease = opened.lease;
                inner.generation.store(opened.generation, Ordering::SeqCst);
                inner.state.send_replace(SessionState::Connected);
                // Answers pushed while we were away are not pushed again: ask.
                let waiting: Vec<String> = inner.routes().inputs.keys().cloned().collect();
                for request_id in waiting {
                    if let Ok(current) = client.get_input(&request_id).await
                        && current.state != crate::types::InputState::Open
                    {
                        inner.deliver_input(current);
                    }
                }
            }
            Err(e) if !e.is_transient() => {
                inner.closed.store(true, Ordering::SeqCst);
                inner.end(format!("cannot connect again: {e}"));
                return;
            }
            Err(_) => {}
        }
    }
}

enum Beat {
    /// The stream broke after working for a while (reconnect at once).
    Healthy,
    /// The stream broke (or could not open).
    Broken,
    /// The lease was lost: connect again.
    Lost,
    /// The server is shutting down: connect again (later, or to another).
    Draining,
    /// The session is over for this handle (taken over, disconnected).
    Ended(String),
    /// Every `Session` was dropped.
    Gone,
}

/// One Heartbeat stream, until it breaks or the server says the session is over.
async fn beat(weak: &Weak<Inner>, client: &Client, id: &str, lease: Duration) -> Beat {
    let ping = |weak: &Weak<Inner>| {
        weak.upgrade().map(|inner| pb::HeartbeatRequest {
            session_id: id.to_owned(),
            task_ids: inner.routes().tasks.iter().cloned().collect(),
            generation: inner.generation.load(Ordering::SeqCst),
        })
    };
    let (tx, rx) = mpsc::channel::<pb::HeartbeatRequest>(4);
    let Some(first) = ping(weak) else { return Beat::Gone };
    if tx.send(first).await.is_err() {
        return Beat::Broken;
    }
    let mut responses = match client.sessions_stub().heartbeat(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Beat::Lost,
        // Our generation is gone: another connection of the same id took over.
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return Beat::Ended("taken over by another connection".into());
        }
        Err(_) => return Beat::Broken,
    };
    let period = (lease / 3).max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    let opened = tokio::time::Instant::now();
    let broken = || {
        if opened.elapsed() > lease {
            Beat::Healthy
        } else {
            Beat::Broken
        }
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let Some(next) = ping(weak) else { return Beat::Gone };
                if tx.send(next).await.is_err() {
                    return broken();
                }
            }
            message = responses.next() => match message {
                Some(Ok(pb::HeartbeatResponse { message: Some(message) })) => match message {
                    pb::heartbeat_response::Message::Notice(notice) => {
                        return match notice.kind() {
                            pb::NoticeKind::TakenOver => Beat::Ended("taken over by another connection".into()),
                            pb::NoticeKind::Disconnected => Beat::Ended("disconnected".into()),
                            pb::NoticeKind::ServerDraining => Beat::Draining,
                            _ => Beat::Lost,
                        };
                    }
                    pb::heartbeat_response::Message::Lease(_) => {}
                    other => match weak.upgrade() {
                        Some(inner) => inner.deliver(other),
                        None => return Beat::Gone,
                    },
                },
                Some(Ok(_)) => {}
                Some(Err(status)) if status.code() == tonic::Code::NotFound => return Beat::Lost,
                Some(Err(_)) | None => return broken(),
            }
        }
    }
}
