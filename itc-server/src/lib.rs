//! The ITC service: a gRPC server through which agents report long-running tasks and
//! coordinators watch and steer them.
//!
//! # Layout
//!
//! - [`core`]: the domain (tasks, the event log, statistics); no gRPC.
//! - [`store`]: persistence behind the [`store::Store`] trait.
//! - [`grpc`]: thin adapters, one per service, converting requests and mapping errors.
//! - [`config`]: settings (flags, `ITC_*` environment, TOML file, defaults).
//! - [`metrics`]: Prometheus metrics and their `/metrics` endpoint (`--metrics-listen`).
//! - [`serve`]: runs the whole service on a bound listener until a shutdown signal.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = itc_server::config::Settings::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! itc_server::serve(listener, settings, shutdown).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use itc_proto::v1::agent_service_server::AgentServiceServer;
use itc_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use itc_proto::v1::session_service_server::SessionServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

pub mod auth;
pub mod config;
pub mod core;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod metrics;
mod ratelimit;
pub mod store;

use config::Settings;
use core::{Core, CoreConfig};
use metrics::Metrics;
use store::{LogOptions, LogStore, MemoryStore, SqliteOptions, SqliteStore, Store, StoreKind};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The core could not start (its store failed to recover).
    #[error("cannot start: {0}")]
    Core(#[from] error::CoreError),
    /// The store could not be opened (unusable data dir, newer schema, corruption…).
    #[error("cannot open the store: {0}")]
    Store(store::StoreError),
    /// A commit failed while serving: the server stopped; restart it to recover.
    #[error("the store failed while serving (see the log); restart to recover from the data dir")]
    StoreFailed,
    /// Reflection could not load the descriptor sets (a build problem).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// `metrics_listen` could not be bound.
    #[error("invalid setting `metrics_listen`: cannot listen on {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// A TLS file could not be read, or the TLS configuration not built.
    #[error("invalid setting `{setting}`: {reason}")]
    Tls {
        /// The setting whose file failed.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The listener is beyond loopback while authentication is off and `insecure` unset.
    #[error(
        "invalid setting `listen`: {0} is not a loopback address, and authentication is off; give auth_tokens_file, or insecure to accept that"
    )]
    Unprotected(SocketAddr),
    /// The tokens file (`auth_tokens_file`) could not be used.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}

/// Reads what the settings name (the tokens file, the TLS certificate and key) and checks
/// it can be used, without serving: the binary calls it before it announces itself, so a
/// bad file stops the start with its reason, not after `listening on`.
pub fn preflight(settings: &Settings) -> Result<(), ServeError> {
    if let Some(path) = &settings.auth_tokens_file {
        auth::Authenticator::load(path)?;
    }
    if let Some(tls) = tls_config(settings)? {
        tonic::transport::Server::builder().tls_config(tls).map_err(tls_error)?;
    }
    Ok(())
}

/// A TLS configuration tonic refused, with its innermost cause (tonic's own message is
/// only "transport error").
fn tls_error(error: tonic::transport::Error) -> ServeError {
    let mut cause: &dyn std::error::Error = &error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    ServeError::Tls {
        setting: "tls_cert_file",
        reason: format!("the certificate or key cannot be used: {cause}"),
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS configuration, when `tls_cert_file` is set: its identity, and with
/// `tls_client_ca_file` the CA every client certificate must chain to (mTLS, required).
fn tls_config(settings: &Settings) -> Result<Option<tonic::transport::ServerTlsConfig>, ServeError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) else {
        return Ok(None);
    };
    let read = |setting: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServeError::Tls {
            setting,
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("tls_cert_file", cert)?,
            read("tls_key_file", key)?,
        ))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &settings.tls_client_ca_file {
        tls = tls
            .client_ca_root(Certificate::from_pem(read("tls_client_ca_file", ca)?))
            .client_auth_optional(false);
    }
    tracing::debug!(
        cert = %cert.display(),
        client_certificates = settings.tls_client_ca_file.is_some(),
        "TLS configuration read"
    );
    Ok(Some(tls))
}

/// Aborts a background task when dropped (when `serve` returns, however it returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The fully-qualified names of the services ITC serves (as health and reflection see
/// them).
pub const SERVICE_NAMES: [&str; 4] = [
    "itc.v1.AgentService",
    "itc.v1.CoordinatorService",
    "itc.v1.MonitorService",
    "itc.v1.SessionService",
];

/// Serves ITC on `listener` until `shutdown` resolves, then drains: health goes
/// NOT_SERVING, the core refuses new writes, the listener closes, and in-flight calls get
/// up to `shutdown_grace` to finish before this returns anyway. With
/// `settings.metrics_listen`, binds it and serves Prometheus metrics there too.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    serve_listeners(listener, metrics_listener, settings, shutdown).await
}

/// As [`serve`], with Prometheus metrics served at `/metrics` on `metrics_listener`
/// (bound by the caller, who so knows its address even for port 0), whatever
/// `settings.metrics_listen` says. The endpoint closes when the server stops.
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics_listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_listeners(listener, Some(metrics_listener), settings, shutdown).await
}

async fn serve_listeners(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = match metrics_listener {
        Some(_) => Metrics::prometheus()?,
        None => Metrics::disabled(),
    };
    let store = open_store(&settings, &metrics)?;
    let core = Core::open_with_metrics(CoreConfig::from_settings(&settings), store, metrics)?;
    serve_all(listener, metrics_listener, settings, core, shutdown).await
}

/// The store the settings ask for: the log store in `data_dir` (the default), SQLite
/// there, or memory. A durable store records its commits in `metrics`.
pub fn open_store(settings: &Settings, metrics: &Metrics) -> Result<Arc<dyn Store>, ServeError> {
    if settings.in_memory {
        return Ok(Arc::new(MemoryStore::new(
            settings.event_retention_count,
            settings.event_retention_age,
        )));
    }
    if settings.store == StoreKind::Log {
        let store = LogStore::open_with_metrics(
            LogOptions {
                data_dir: settings.data_dir.clone(),
                sync: settings.sync,
                sync_interval: settings.sync_interval,
                retention_count: settings.event_retention_count,
                retention_age: settings.event_retention_age,
                segment_bytes: settings.log_segment_bytes,
            },
            metrics.store(),
        )
        .map_err(ServeError::Store)?;
        tracing::info!(path = %store.path().display(), sync = ?settings.sync, "embedded store open (log)");
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open_with_metrics(
        SqliteOptions {
            data_dir: settings.data_dir.clone(),
            sync: settings.sync,
            retention_count: settings.event_retention_count,
            retention_age: settings.event_retention_age,
            group_commit: true,
        },
        metrics.store(),
    )
    .map_err(ServeError::Store)?;
    tracing::info!(path = %store.path().display(), sync = ?settings.sync, "embedded store open (sqlite)");
    Ok(Arc::new(store))
}

/// As [`serve`], over an existing core (tests that look inside, embedding). Calls are
/// counted in the core's metrics ([`Core::open_with_metrics`]), but no endpoint is
/// served: `settings.metrics_listen` is not looked at.
pub async fn serve_core(
    listener: TcpListener,
    settings: Settings,
    core: Core,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_all(listener, None, settings, core, shutdown).await
}

async fn serve_all(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    settings: Settings,
    core: Core,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // The loopback rule, for embedders too (the binary's settings were checked already).
    let local = listener.local_addr().ok();
    let beyond_loopback = local.is_some_and(|a| !a.ip().is_loopback());
    if let Some(local) = local
        && beyond_loopback
        && settings.auth_tokens_file.is_none()
        && !settings.insecure
    {
        return Err(ServeError::Unprotected(local));
    }
    if beyond_loopback && settings.auth_tokens_file.is_some() && settings.tls_cert_file.is_none() {
        tracing::warn!(
            ?local,
            "authentication without TLS beyond loopback: tokens cross the network in plaintext \
            (set tls_cert_file and tls_key_file, or terminate TLS in front of the server)"
        );
    }
    // Authentication: the tokens file, read now (a bad one stops the start), and again on
    // every SIGHUP while serving.
    let auth = match &settings.auth_tokens_file {
        Some(path) => {
            let auth = Arc::new(auth::Authenticator::load(path)?);
            tracing::info!(path = %path.display(), "authentication on: bearer tokens from the tokens file");
            Some(auth)
        }
        None => None,
    };
    // The request rate of each principal (there are none without authentication).
    let rate = auth
        .as_ref()
        .map(|_| Arc::new(ratelimit::RateLimiter::new(settings.max_requests_per_second)));
    #[cfg(unix)]
    let _reloads = auth
        .clone()
        .map(|auth| AbortOnDrop(tokio::spawn(auth::reload_on_sighup(auth))));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    for name in SERVICE_NAMES {
        health.set_service_status(name, ServingStatus::Serving).await;
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(itc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(itc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = settings.max_message_bytes;
    let agent = AgentServiceServer::new(grpc::AgentApi::new(core.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let monitor = grpc::MonitorRoutes::new(grpc::MonitorApi::new(core.clone()), max);
    let session = SessionServiceServer::new(grpc::SessionApi::new(core.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let coordinator = CoordinatorServiceServer::new(grpc::CoordinatorApi::new(core.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    // Dead peers (no FIN) are noticed by HTTP/2 and TCP keepalives and their calls freed.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));

    // Leases, lock expiry, command timeouts, input deadlines and stalls.
    tokio::spawn(core.clone().run_timers());

    // `/metrics`, until this returns (however it returns).
    let _endpoint = metrics_listener.map(|metrics_listener| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(metrics::serve_endpoint(
            metrics_listener,
            core.metrics().clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        stop
    });

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_core = core.clone();
    let failure_core = core.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            () = failure_core.failure() => tracing::error!("the store failed: shutting down so that a restart recovers"),
        }
        tracing::info!("shutting down: health NOT_SERVING, refusing new work, draining calls");
        health.set_service_status("", ServingStatus::NotServing).await;
        for name in SERVICE_NAMES {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        drain_core.close();
        let _ = drained_tx.send(());
    };

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(&settings)? {
        builder = builder.tls_config(tls).map_err(tls_error)?;
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One span per call, at DEBUG as tower-http's TraceLayer does: at INFO, with no
        // line to show for it, the span alone (its fields formatted, entered on every
        // poll) cost about 7% of a Coordinate load's throughput (BENCHMARKS.md).
        .trace_fn(|req| tracing::debug_span!("rpc", method = %req.uri().path()))
        .layer(metrics::RpcLayer::new(core.metrics().clone()))
        .layer(auth::AuthLayer::new(auth, rate))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent)
        .add_service(monitor)
        .add_service(session)
        .add_service(coordinator)
        .serve_with_incoming_shutdown(incoming, signal);

    let grace = settings.shutdown_grace;
    let deadline = async move {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result?,
        () = deadline => tracing::warn!(?grace, "in-flight calls still open after the shutdown grace; exiting anyway"),
    }
    // Everything acknowledged is durable already; this lets queued batches finish.
    let store = core.store().clone();
    let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    tracing::info!("stopped");
    if core.has_failed() {
        return Err(ServeError::StoreFailed);
    }
    Ok(())
}
