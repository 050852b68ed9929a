//! The client: one HTTP/2 channel, cheap to clone, with typed calls and a retry policy for
//! idempotent ones.

use std::future::Future;
use std::time::Duration;

use itc_proto::json::{json_to_struct, json_to_value};
use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use itc_proto::v1::session_service_client::SessionServiceClient;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::types::{InputRequest, StatusPage, Task, TaskStatus};

/// When and how often idempotent calls (reads, and writes the server deduplicates) are
/// retried: only when the server is unavailable or the connection broke under the call
/// (UNAVAILABLE, a GOAWAY from a draining server, or CANCELLED/UNKNOWN from the
/// transport), with capped exponential
/// backoff and full jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `attempt + 1` (`attempt` ≥ 1): a random duration up to the
    /// capped exponential backoff ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        exp.mul_f64(fastrand::f64())
    }

    /// Runs `call` until it succeeds, fails with something other than UNAVAILABLE, or
    /// the attempts run out.
    pub(crate) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                // UNAVAILABLE, or a call cut by a broken connection (CANCELLED/UNKNOWN from
                // the transport): only ever used for idempotent calls.
                Err(status)
                    if (matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    ) || crate::error::refused_by_go_away(&status))
                        && attempt < self.max_attempts =>
                {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

/// Builds a [`Client`]: address, timeouts, retry policy.
#[derive(Clone)]
pub struct ClientBuilder {
    uri: String,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
    token: Option<String>,
    tls: Option<Tls>,
}

impl std::fmt::Debug for ClientBuilder {
    /// Without the token or the client key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("uri", &self.uri)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// TLS options of a [`ClientBuilder`].
#[derive(Clone, Default)]
struct Tls {
    /// PEM CA certificates the server's chain must lead to; none: the system's roots.
    ca: Vec<Vec<u8>>,
    /// PEM certificate chain and key, for servers that require client certificates.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry; default: the URI's host.
    domain: Option<String>,
}

impl ClientBuilder {
    /// A builder for the server at `uri` (e.g. `http://127.0.0.1:50051`).
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: None,
            retry: RetryPolicy::default(),
            token: None,
            tls: None,
        }
    }

    /// Trust this CA certificate (PEM) for the server's certificate, instead of the
    /// system's roots; turns TLS on. `https://` URIs use TLS with the system's roots
    /// by default.
    #[must_use]
    pub fn with_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_default().ca.push(pem.into());
        self
    }

    /// Present this client certificate chain and private key (both PEM), for servers that
    /// require client certificates (mTLS); turns TLS on.
    #[must_use]
    pub fn with_client_identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_default().identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Check the server's certificate for this name instead of the URI's host; turns TLS
    /// on.
    #[must_use]
    pub fn with_tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls.get_or_insert_default().domain = Some(domain.into());
        self
    }

    /// The TLS configuration of both endpoints: the options given, or the system's roots
    /// for an `https://` URI; `None`: plaintext.
    fn tls_config(&self) -> Option<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let tls = match &self.tls {
            Some(tls) => tls.clone(),
            None if self.uri.starts_with("https://") => Tls::default(),
            None => return None,
        };
        let mut config = ClientTlsConfig::new();
        if tls.ca.is_empty() {
            config = config.with_native_roots();
        }
        for pem in tls.ca {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = tls.domain {
            config = config.domain_name(domain);
        }
        Some(config)
    }

    /// A bearer token sent with every call (`authorization: Bearer <token>`), for servers
    /// that require authentication.
    #[must_use]
    pub fn with_auth_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long connecting may take (default 10 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for every unary call (default none; streams are never cut by it).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The retry policy of idempotent calls.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Connects. TLS options with a URI that is not `https://` are refused: tonic would
    /// ignore them and connect in plaintext, token and all.
    pub async fn connect(self) -> Result<Client, Error> {
        if self.tls.is_some() && !self.uri.starts_with("https://") {
            return Err(Error::InvalidUri {
                uri: self.uri.clone(),
                reason: "TLS options (a CA certificate, a client identity or a TLS domain) need an https:// URI".into(),
            });
        }
        let mut endpoint = Endpoint::from_shared(self.uri.clone()).map_err(|e| Error::InvalidUri {
            uri: self.uri.clone(),
            reason: e.to_string(),
        })?;
        endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let tls = self.tls_config();
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let auth = match &self.token {
            None => Auth::default(),
            Some(token) => {
                let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                    format!("Bearer {token}").parse().map_err(|_| Error::InvalidData {
                        field: "auth_token",
                        reason: "must be printable ASCII".into(),
                    })?;
                // Kept out of debug output and HPACK's dynamic table.
                value.set_sensitive(true);
                Auth(Some(value))
            }
        };
        // Subscriptions get their own connection (an unread stream must not hold up the
        // others through HTTP/2's per-connection flow control), without the request
        // timeout, which would cut them.
        let mut streams = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| Error::InvalidUri {
                uri: self.uri.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            streams = streams.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let mut client = Client::from_channel(channel);
        client.retry = self.retry;
        client.auth = auth;
        client.endpoint = Some(streams);
        Ok(client)
    }
}

/// A connection to an ITC server. Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) channel: Channel,
    pub(crate) retry: RetryPolicy,
    /// Where subscriptions open their own connection (`None`: share `channel`).
    pub(crate) endpoint: Option<Endpoint>,
    /// The bearer token every call carries, if any.
    pub(crate) auth: Auth,
}

/// A channel whose calls carry the client's bearer token.
pub(crate) type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Default)]
pub(crate) struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Auth {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(<redacted>)"
        } else {
            "Auth(none)"
        })
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// Options of [`Client::start_task`].
#[derive(Debug, Clone, Default)]
pub struct StartTask {
    /// The agent running the task.
    pub agent_id: String,
    /// What the task does.
    pub description: String,
    /// The id to use; `None`: the server assigns a UUID.
    pub task_id: Option<String>,
    /// Metadata (a JSON object).
    pub metadata: Option<Value>,
    /// Priority.
    pub priority: i32,
    /// Stall timeout; `None`: the server's default.
    pub stall_timeout: Option<Duration>,
    /// Create the task PENDING; the first progress report starts it.
    pub pending: bool,
}

impl StartTask {
    /// A task of `agent_id` doing `description`.
    pub fn new(agent_id: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            description: description.into(),
            ..Self::default()
        }
    }

    /// Uses this id instead of a server-assigned one.
    #[must_use]
    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// Attaches metadata (a JSON object).
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the stall timeout.
    #[must_use]
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = Some(timeout);
        self
    }

    /// Creates the task PENDING.
    #[must_use]
    pub fn pending(mut self) -> Self {
        self.pending = true;
        self
    }

    pub(crate) fn to_proto(&self) -> Result<pb::StartTaskRequest, Error> {
        Ok(pb::StartTaskRequest {
            task_id: self.task_id.clone().unwrap_or_default(),
            agent_id: self.agent_id.clone(),
            description: self.description.clone(),
            metadata: self.metadata.as_ref().map(|m| object("metadata", m)).transpose()?,
            priority: self.priority,
            plan: None,
            stall_timeout: self.stall_timeout.and_then(|d| prost_types::Duration::try_from(d).ok()),
            pending: self.pending,
        })
    }
}

/// Filters and page of [`Client::status`].
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// Only tasks in these states; empty: all.
    pub statuses: Vec<TaskStatus>,
    /// Only tasks of these agents; empty: all.
    pub agent_ids: Vec<String>,
    /// Tasks per page; 0: the server's default (100).
    pub page_size: u32,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// What an agent learns back from a report: the task's version and status (INTERRUPTED
/// means: stop at this checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The task's version after the report.
    pub version: u64,
    /// The seq of the event written.
    pub seq: u64,
    /// The task's status.
    pub status: Option<TaskStatus>,
}

impl Client {
    /// Connects to `uri` with the default options.
    pub async fn connect(uri: impl Into<String>) -> Result<Self, Error> {
        ClientBuilder::new(uri).connect().await
    }

    /// A builder, for timeouts and the retry policy.
    pub fn builder(uri: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(uri)
    }

    /// A client over an existing channel (subscriptions share it).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            channel,
            retry: RetryPolicy::default(),
            endpoint: None,
            auth: Auth::default(),
        }
    }

    pub(crate) fn agent_stub(&self) -> AgentServiceClient<Authed> {
        AgentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn monitor(&self) -> MonitorServiceClient<Authed> {
        MonitorServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn coordinator_stub(&self) -> CoordinatorServiceClient<Authed> {
        CoordinatorServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn sessions_stub(&self) -> SessionServiceClient<Authed> {
        SessionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Starts a task; returns it with its id. Not retried (a retry could start it twice
    /// unless it has its own id: give it one with [`StartTask::with_task_id`]).
    pub async fn start_task(&self, options: StartTask) -> Result<Task, Error> {
        let request = options.to_proto()?;
        let response = self.agent_stub().start_task(request).await?.into_inner();
        response
            .task
            .as_ref()
            .map(Task::from_proto)
            .ok_or_else(|| Error::missing("task"))
    }

    /// Reports progress in [0, 1] with a status line.
    pub async fn report_progress(
        &self,
        task_id: &str,
        progress: f64,
        message: impl Into<String>,
    ) -> Result<Ack, Error> {
        let request = pb::ReportProgressRequest {
            task_id: task_id.to_owned(),
            progress,
            message: message.into(),
        };
        let ack = self.agent_stub().report_progress(request).await?.into_inner();
        Ok(Ack {
            version: ack.version,
            seq: ack.seq,
            status: TaskStatus::from_proto(ack.status),
        })
    }

    /// Publishes structured real-time data (a JSON object) about a task.
    pub async fn publish_update(&self, task_id: &str, data: Value) -> Result<Ack, Error> {
        let request = pb::PublishUpdateRequest {
            task_id: task_id.to_owned(),
            data: Some(object("data", &data)?),
        };
        let ack = self.agent_stub().publish_update(request).await?.into_inner();
        Ok(Ack {
            version: ack.version,
            seq: ack.seq,
            status: TaskStatus::from_proto(ack.status),
        })
    }

    /// Finishes a task as COMPLETED with a result (any JSON value).
    pub async fn complete_task(&self, task_id: &str, result: Value) -> Result<Task, Error> {
        let request = pb::CompleteTaskRequest {
            task_id: task_id.to_owned(),
            result: Some(json_to_value(&result)),
        };
        let response = self.agent_stub().complete_task(request).await?.into_inner();
        response
            .task
            .as_ref()
            .map(Task::from_proto)
            .ok_or_else(|| Error::missing("task"))
    }

    /// Finishes a task as FAILED with an error message.
    pub async fn fail_task(&self, task_id: &str, message: impl Into<String>) -> Result<Task, Error> {
        let request = pb::FailTaskRequest {
            task_id: task_id.to_owned(),
            error: Some(pb::TaskError {
                message: message.into(),
                details: None,
            }),
        };
        let response = self.agent_stub().fail_task(request).await?.into_inner();
        response
            .task
            .as_ref()
            .map(Task::from_proto)
            .ok_or_else(|| Error::missing("task"))
    }

    /// Finishes a task as CANCELLED.
    pub async fn cancel_task(&self, task_id: &str, reason: impl Into<String>) -> Result<Task, Error> {
        let request = pb::CancelTaskRequest {
            task_id: task_id.to_owned(),
            reason: reason.into(),
        };
        let response = self.agent_stub().cancel_task(request).await?.into_inner();
        response
            .task
            .as_ref()
            .map(Task::from_proto)
            .ok_or_else(|| Error::missing("task"))
    }

    /// One task by id (retried on UNAVAILABLE).
    pub async fn get_task(&self, task_id: &str) -> Result<Task, Error> {
        let request = pb::GetTaskRequest {
            task_id: task_id.to_owned(),
        };
        let response = self
            .retry
            .run(|| {
                let mut monitor = self.monitor();
                let request = request.clone();
                async move { monitor.get_task(request).await }
            })
            .await?
            .into_inner();
        response
            .task
            .as_ref()
            .map(Task::from_proto)
            .ok_or_else(|| Error::missing("task"))
    }

    /// One page of tasks with statistics (retried on UNAVAILABLE).
    pub async fn status(&self, query: StatusQuery) -> Result<StatusPage, Error> {
        let request = pb::GetStatusRequest {
            statuses: query.statuses.iter().map(|s| s.to_proto() as i32).collect(),
            agent_ids: query.agent_ids,
            page_size: i32::try_from(query.page_size).unwrap_or(i32::MAX),
            page_token: query.page_token.unwrap_or_default(),
        };
        let response = self
            .retry
            .run(|| {
                let mut monitor = self.monitor();
                let request = request.clone();
                async move { monitor.get_status(request).await }
            })
            .await?
            .into_inner();
        Ok(StatusPage::from_proto(response))
    }

    /// The pages of a query, one after the other, as a stream (it ends after the last
    /// page, or after an error).
    pub fn status_pages(&self, query: StatusQuery) -> impl tokio_stream::Stream<Item = Result<StatusPage, Error>> + '_ {
        futures_util::stream::unfold(Some(query), move |next| async move {
            let mut query = next?;
            match self.status(query.clone()).await {
                Ok(page) => {
                    let following = page.next_page_token.clone().map(|token| {
                        query.page_token = Some(token);
                        query
                    });
                    Some((Ok(page), following))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Every task matching `query`, page after page (the query's page size and token set
    /// where to start).
    pub async fn all_tasks(&self, query: StatusQuery) -> Result<Vec<Task>, Error> {
        use tokio_stream::StreamExt;
        let mut tasks = Vec::new();
        let mut pages = std::pin::pin!(self.status_pages(query));
        while let Some(page) = pages.next().await {
            tasks.extend(page?.tasks);
        }
        Ok(tasks)
    }

    /// One input request by id (retried on UNAVAILABLE).
    pub async fn get_input(&self, request_id: &str) -> Result<InputRequest, Error> {
        let request = pb::GetInputRequest {
            request_id: request_id.to_owned(),
        };
        let response = self
            .retry
            .run(|| {
                let mut monitor = self.monitor();
                let request = request.clone();
                async move { monitor.get_input(request).await }
            })
            .await?
            .into_inner();
        response
            .input
            .as_ref()
            .map(InputRequest::from_proto)
            .ok_or_else(|| Error::missing("input"))
    }
}

/// A JSON object as a `Struct`.
pub(crate) fn object(field: &'static str, value: &Value) -> Result<prost_types::Struct, Error> {
    match value {
        Value::Object(map) => Ok(json_to_struct(map)),
        other => Err(Error::InvalidData {
            field,
            reason: format!("must be a JSON object, not {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff grows exponentially, is capped, and is jittered below the cap.
    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for attempt in 1..10 {
            let cap = Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(policy.backoff(attempt) <= cap);
            }
        }
    }

    /// A token rides on every call as `authorization: Bearer <token>`.
    #[test]
    fn auth_token_header() {
        use tonic::service::Interceptor;
        let mut auth = Auth(Some("Bearer s3cret".parse().unwrap()));
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");
        let mut none = Auth::default();
        assert!(
            none.call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
    }

    /// Only UNAVAILABLE is retried, up to the attempts allowed.
    #[tokio::test]
    async fn retries_only_unavailable() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let mut calls = 0;
        let result: Result<(), Error> = policy
            .run(|| {
                calls += 1;
                async { Err(tonic::Status::unavailable("down")) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let result: Result<(), Error> = policy
            .run(|| {
                calls += 1;
                async { Err(tonic::Status::not_found("no")) }
            })
            .await;
        assert_eq!(result.err().and_then(|e| e.code()), Some(tonic::Code::NotFound));
        assert_eq!(calls, 1);
    }
}
