//! The `itc-server` binary: flags and environment, logging, signals; the rest is the
//! library's [`itc_server::serve`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::BoolishValueParser;
use itc_server::config::{Overrides, Seconds};
use tracing_subscriber::EnvFilter;

/// ITC (Interactive Task Control): a gRPC service through which AI agents and people
/// coordinate long-running tasks in real time.
///
/// Every setting can also be given as an `ITC_*` environment variable or in the TOML
/// file; flags win over the environment, which wins over the file. Durations are seconds
/// (`0.5`) or text (`500ms`, `1h`).
#[derive(Debug, Parser)]
#[command(name = "itc-server", version, about, long_about)]
struct Args {
    /// TOML file of settings (keys as in the configuration table of the README).
    #[arg(long, env = "ITC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `itc_server=debug`.
    #[arg(long, env = "ITC_LOG", default_value = "info", value_name = "FILTER")]
    log: String,

    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "ITC_LISTEN", value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// false: Subscribe answers UNAVAILABLE; polling still works [default: true].
    #[arg(long, env = "ITC_ENABLE_STREAMING", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    enable_streaming: Option<bool>,

    /// Idle Subscribe streams get a HEARTBEAT this often [default: 0.5].
    #[arg(
        long,
        env = "ITC_STREAM_INTERVAL",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    stream_interval: Option<Seconds>,

    /// Subscribe streams end with STREAM_END after this [default: 3600].
    #[arg(
        long,
        env = "ITC_MAX_STREAM_DURATION",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    max_stream_duration: Option<Seconds>,

    /// false: Coordinate answers FAILED_PRECONDITION [default: true].
    #[arg(long, env = "ITC_ENABLE_AGENT_COORDINATION", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    enable_agent_coordination: Option<bool>,

    /// Lock lease, and time an agent has to acknowledge a command [default: 60].
    #[arg(
        long,
        env = "ITC_COORDINATION_TIMEOUT",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    coordination_timeout: Option<Seconds>,

    /// Coordinator sessions connected at once [default: 10].
    #[arg(
        long,
        env = "ITC_MAX_CONCURRENT_COORDINATORS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    max_concurrent_coordinators: Option<i64>,

    /// Agent sessions connected at once [default: 1000].
    #[arg(
        long,
        env = "ITC_MAX_CONCURRENT_AGENTS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    max_concurrent_agents: Option<i64>,

    /// Default session lease TTL [default: 15].
    #[arg(
        long,
        env = "ITC_SESSION_TTL",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    session_ttl: Option<Seconds>,

    /// Default task stall timeout [default: 300].
    #[arg(
        long,
        env = "ITC_STALL_TIMEOUT",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    stall_timeout: Option<Seconds>,

    /// Largest structured payload, in JSON bytes [default: 65536].
    #[arg(
        long,
        env = "ITC_MAX_PAYLOAD_BYTES",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    max_payload_bytes: Option<i64>,

    /// Largest gRPC message [default: 4194304].
    #[arg(
        long,
        env = "ITC_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    max_message_bytes: Option<i64>,

    /// Deepest nesting of a structured payload [default: 32].
    #[arg(long, env = "ITC_MAX_PAYLOAD_DEPTH", value_name = "N")]
    max_payload_depth: Option<i64>,

    /// Longest filter list in Subscribe or GetStatus [default: 1000].
    #[arg(long, env = "ITC_MAX_FILTER_ENTRIES", value_name = "N")]
    max_filter_entries: Option<i64>,

    /// Subscribe streams open at once under one session [default: 64].
    #[arg(long, env = "ITC_MAX_SUBSCRIPTIONS_PER_SESSION", value_name = "N")]
    max_subscriptions_per_session: Option<i64>,

    /// Open input requests on one task [default: 16].
    #[arg(long, env = "ITC_MAX_OPEN_INPUTS_PER_TASK", value_name = "N")]
    max_open_inputs_per_task: Option<i64>,

    /// Calls per second by one authenticated principal [default: 1000].
    #[arg(long, env = "ITC_MAX_REQUESTS_PER_SECOND", value_name = "N")]
    max_requests_per_second: Option<i64>,

    /// Finished tasks kept queryable [default: 10000].
    #[arg(
        long,
        env = "ITC_MAX_FINISHED_TASKS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    max_finished_tasks: Option<i64>,

    /// Events retained in the log, by count [default: 1000000].
    #[arg(
        long,
        env = "ITC_EVENT_RETENTION_COUNT",
        value_name = "N",
        allow_negative_numbers = true
    )]
    event_retention_count: Option<i64>,

    /// Events retained in the log, by age [default: 24h].
    #[arg(
        long,
        env = "ITC_EVENT_RETENTION_AGE",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    event_retention_age: Option<Seconds>,

    /// Recent events kept in memory for subscribers [default: 65536].
    #[arg(long, env = "ITC_EVENT_BUFFER", value_name = "N", allow_negative_numbers = true)]
    event_buffer: Option<i64>,

    /// Matching events queued per subscriber before it reads the log instead [default: 256].
    #[arg(long, env = "ITC_SUBSCRIBER_BUFFER", value_name = "N", allow_negative_numbers = true)]
    subscriber_buffer: Option<i64>,

    /// Directory of the embedded database [default: ./itc-data].
    #[arg(long, env = "ITC_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Keep everything in memory: nothing survives a restart [default: false].
    #[arg(long, env = "ITC_IN_MEMORY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    in_memory: Option<bool>,

    /// The embedded store in the data dir: log (an append-only log with snapshots) or
    /// sqlite [default: log].
    #[arg(long, env = "ITC_STORE", value_name = "KIND")]
    store: Option<itc_server::store::StoreKind>,

    /// With sync = normal, how often the log store syncs to disk [default: 1].
    #[arg(
        long,
        env = "ITC_SYNC_INTERVAL",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    sync_interval: Option<Seconds>,

    /// The log store's segment size in bytes (4096 to 1 GiB) [default: 67108864].
    #[arg(
        long,
        env = "ITC_LOG_SEGMENT_BYTES",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    log_segment_bytes: Option<i64>,

    /// When a write is acknowledged: full (after a disk sync; survives a power loss), normal
    /// (once the OS has it; survives a crash of the server), off (never synced) [default:
    /// normal].
    #[arg(long, env = "ITC_SYNC", value_name = "LEVEL")]
    sync: Option<itc_server::store::SyncLevel>,

    /// After a restart, live tasks whose agent has not reconnected within this are flagged
    /// ORPHANED [default: 30].
    #[arg(
        long,
        env = "ITC_ORPHAN_GRACE",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    orphan_grace: Option<Seconds>,

    /// How long in-flight calls may run on after a shutdown signal [default: 10].
    #[arg(
        long,
        env = "ITC_SHUTDOWN_GRACE",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    shutdown_grace: Option<Seconds>,

    /// Serve Prometheus metrics on this address, at `/metrics` [default: off].
    #[arg(long, env = "ITC_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Require a bearer token on every call, from this tokens file (principals, roles,
    /// SHA-256 of each token; reloaded on SIGHUP) [default: off, loopback only].
    #[arg(long, env = "ITC_AUTH_TOKENS_FILE", value_name = "FILE")]
    auth_tokens_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM) and `--tls-key-file` [default: off].
    #[arg(long, env = "ITC_TLS_CERT_FILE", value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,

    /// The TLS private key (PEM).
    #[arg(long, env = "ITC_TLS_KEY_FILE", value_name = "FILE")]
    tls_key_file: Option<PathBuf>,

    /// Require client certificates (mTLS) that chain to this CA (PEM) [default: off].
    #[arg(long, env = "ITC_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    tls_client_ca_file: Option<PathBuf>,

    /// Allow listening beyond loopback without authentication [default: false].
    #[arg(long, env = "ITC_INSECURE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    insecure: Option<bool>,
}

impl Args {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            enable_streaming: self.enable_streaming,
            stream_interval: self.stream_interval.clone(),
            max_stream_duration: self.max_stream_duration.clone(),
            enable_agent_coordination: self.enable_agent_coordination,
            coordination_timeout: self.coordination_timeout.clone(),
            max_concurrent_coordinators: self.max_concurrent_coordinators,
            max_concurrent_agents: self.max_concurrent_agents,
            session_ttl: self.session_ttl.clone(),
            stall_timeout: self.stall_timeout.clone(),
            max_payload_bytes: self.max_payload_bytes,
            max_message_bytes: self.max_message_bytes,
            max_payload_depth: self.max_payload_depth,
            max_filter_entries: self.max_filter_entries,
            max_subscriptions_per_session: self.max_subscriptions_per_session,
            max_open_inputs_per_task: self.max_open_inputs_per_task,
            max_requests_per_second: self.max_requests_per_second,
            max_finished_tasks: self.max_finished_tasks,
            event_retention_count: self.event_retention_count,
            event_retention_age: self.event_retention_age.clone(),
            event_buffer: self.event_buffer,
            subscriber_buffer: self.subscriber_buffer,
            shutdown_grace: self.shutdown_grace.clone(),
            data_dir: self.data_dir.clone(),
            in_memory: self.in_memory,
            store: self.store,
            sync: self.sync,
            sync_interval: self.sync_interval.clone(),
            log_segment_bytes: self.log_segment_bytes,
            orphan_grace: self.orphan_grace.clone(),
            metrics_listen: self.metrics_listen,
            auth_tokens_file: self.auth_tokens_file.clone(),
            insecure: self.insecure,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            tls_client_ca_file: self.tls_client_ca_file.clone(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();

    let file = match &args.config {
        Some(path) => match Overrides::from_file(path) {
            Ok(file) => file,
            Err(e) => return fail(&e),
        },
        None => Overrides::default(),
    };
    let settings = match args.overrides().over(file).resolve() {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };

    let filter = match EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => return fail(&format!("invalid setting `log`: {e}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(settings))
}

async fn run(settings: itc_server::config::Settings) -> ExitCode {
    // The files the settings name, before the server announces itself.
    if let Err(e) = itc_server::preflight(&settings) {
        return fail(&e);
    }
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", settings.listen)),
    };
    // Bound here too, so that a busy port stops the server before it announces itself.
    let metrics = match settings.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(source) => return fail(&itc_server::ServeError::MetricsListen { addr, source }.to_string()),
        },
        None => None,
    };
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return fail(&format!("cannot read the bound address: {e}")),
    };
    for line in settings.to_string().lines() {
        tracing::info!("config: {line}");
    }
    tracing::info!(%addr, "itc-server listening");
    if let Some(metrics) = &metrics {
        match metrics.local_addr() {
            Ok(addr) => tracing::info!("metrics at http://{addr}/metrics"),
            Err(e) => return fail(&format!("cannot read the bound metrics address: {e}")),
        }
    }
    // One line on stdout, for scripts started with `--listen 127.0.0.1:0`.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    let served = match metrics {
        Some(metrics) => itc_server::serve_with_metrics(listener, metrics, settings, signals.recv()).await,
        None => itc_server::serve(listener, settings, signals.recv()).await,
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP handlers, installed before the server announces its
/// address so that a signal sent right after is never missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    /// Held (never read) so that SIGHUP never takes the default action (exit): the server
    /// reloads the tokens file on it (`itc_server::auth`), and ignores it otherwise.
    #[cfg(unix)]
    _hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                _hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the first of the signals.
    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("received SIGINT"),
            _ = self.terminate.recv() => tracing::info!("received SIGTERM"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("received Ctrl-C");
        }
    }
}

fn fail(message: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("itc-server: {message}");
    ExitCode::from(2)
}
