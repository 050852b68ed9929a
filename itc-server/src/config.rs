//! Server configuration: the seed's `ITCConfig` settings with its defaults, plus what a
//! network service needs.
//!
//! Sources, highest first: command-line flags, `ITC_*` environment variables, a TOML file
//! (`--config`), defaults. [`Settings`] is the merged, validated result; [`Overrides`]
//! is one layer of it (every field optional), used for the file and for flags/env.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is not valid (unknown key, wrong type…).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A setting has a value outside what it allows.
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's name (as in the TOML file; `ITC_` + upper case in the environment).
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The effective configuration of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// false: Subscribe answers UNAVAILABLE; polling still works.
    pub enable_streaming: bool,
    /// An idle Subscribe stream gets a HEARTBEAT after this long without events.
    pub stream_interval: Duration,
    /// A Subscribe stream ends with STREAM_END after this.
    pub max_stream_duration: Duration,
    /// false: Coordinate answers FAILED_PRECONDITION.
    pub enable_agent_coordination: bool,
    /// Lock lease, and the time an agent has to acknowledge a coordination.
    pub coordination_timeout: Duration,
    /// Coordinator sessions (kinds other than AGENT) connected at once.
    pub max_concurrent_coordinators: u32,
    /// Agent sessions connected at once.
    pub max_concurrent_agents: u32,
    /// Default session lease TTL (a client may ask for less, never more than 10×).
    pub session_ttl: Duration,
    /// Default stall timeout of a task (no progress or heartbeat for this long: STALLED).
    pub stall_timeout: Duration,
    /// Largest structured payload (metadata, plan, update data, result…), as JSON bytes.
    pub max_payload_bytes: usize,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Deepest nesting of a structured payload (objects and arrays).
    pub max_payload_depth: usize,
    /// Longest filter list (task ids, agent ids, event types, statuses) in Subscribe or GetStatus.
    pub max_filter_entries: usize,
    /// Subscribe streams open at once under one session.
    pub max_subscriptions_per_session: usize,
    /// Open input requests on one task.
    pub max_open_inputs_per_task: usize,
    /// Calls per second by one authenticated principal (a token bucket holding a second's worth); off without authentication.
    pub max_requests_per_second: u32,
    /// Finished tasks kept queryable; the oldest finished beyond this are forgotten.
    pub max_finished_tasks: usize,
    /// Events retained in the log, by count.
    pub event_retention_count: usize,
    /// Events retained in the log, by age.
    pub event_retention_age: Duration,
    /// Recent events kept in memory for subscribers; older ones are read from the store.
    pub event_buffer: usize,
    /// Matching events queued per subscriber before it falls back to reading the log at
    /// its own pace (bounds server memory per subscriber).
    pub subscriber_buffer: usize,
    /// On shutdown, how long in-flight calls may take before the server exits anyway.
    pub shutdown_grace: Duration,
    /// Where the embedded store keeps its database.
    pub data_dir: PathBuf,
    /// Keep everything in memory (nothing survives a restart) instead of `data_dir`.
    pub in_memory: bool,
    /// Which embedded store keeps the state in `data_dir`.
    pub store: crate::store::StoreKind,
    /// When a commit is acknowledged, relative to the disk.
    pub sync: crate::store::SyncLevel,
    /// With `sync = normal`, the log store syncs to disk this often.
    pub sync_interval: Duration,
    /// The log store's segment size: a segment rolls over once it is this long.
    pub log_segment_bytes: u64,
    /// After a restart, live tasks whose agent has not reconnected within this are
    /// flagged ORPHANED.
    pub orphan_grace: Duration,
    /// Where Prometheus metrics are served (`GET /metrics`); `None` (the default): no
    /// metrics are recorded at all.
    pub metrics_listen: Option<SocketAddr>,
    /// The tokens file (TOML: principals, roles, token hashes; see [`crate::auth`]).
    /// Set: every call to the ITC services needs `authorization: Bearer <token>`.
    /// Unset: no authentication, allowed only on a loopback `listen` unless `insecure`.
    pub auth_tokens_file: Option<PathBuf>,
    /// Accept listening beyond loopback without authentication.
    pub insecure: bool,
    /// TLS: the server's certificate chain (PEM). With `tls_key_file`, calls need TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// TLS: the server's private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: the CA (PEM) client certificates must chain to; set, every client must
    /// present one.
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            enable_streaming: true,
            stream_interval: Duration::from_millis(500),
            max_stream_duration: Duration::from_secs(3600),
            enable_agent_coordination: true,
            coordination_timeout: Duration::from_secs(60),
            max_concurrent_coordinators: 10,
            max_concurrent_agents: 1000,
            session_ttl: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(300),
            max_payload_bytes: 64 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_payload_depth: 32,
            max_filter_entries: 1000,
            max_subscriptions_per_session: 64,
            max_open_inputs_per_task: 16,
            max_requests_per_second: 1000,
            max_finished_tasks: 10_000,
            event_retention_count: 1_000_000,
            event_retention_age: Duration::from_secs(24 * 3600),
            event_buffer: 65_536,
            subscriber_buffer: 256,
            shutdown_grace: Duration::from_secs(10),
            data_dir: PathBuf::from("itc-data"),
            in_memory: false,
            store: crate::store::StoreKind::Log,
            sync: crate::store::SyncLevel::Normal,
            sync_interval: Duration::from_secs(1),
            log_segment_bytes: 64 << 20,
            orphan_grace: Duration::from_secs(30),
            metrics_listen: None,
            auth_tokens_file: None,
            insecure: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

/// One layer of settings: every field optional. The TOML file deserializes into this, and
/// the binary's flags (with their `ITC_*` environment variables) fill one too.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each field is the [`Settings`] field of the same name
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub enable_streaming: Option<bool>,
    pub stream_interval: Option<Seconds>,
    pub max_stream_duration: Option<Seconds>,
    pub enable_agent_coordination: Option<bool>,
    pub coordination_timeout: Option<Seconds>,
    pub max_concurrent_coordinators: Option<i64>,
    pub max_concurrent_agents: Option<i64>,
    pub session_ttl: Option<Seconds>,
    pub stall_timeout: Option<Seconds>,
    pub max_payload_bytes: Option<i64>,
    pub max_message_bytes: Option<i64>,
    pub max_payload_depth: Option<i64>,
    pub max_filter_entries: Option<i64>,
    pub max_subscriptions_per_session: Option<i64>,
    pub max_open_inputs_per_task: Option<i64>,
    pub max_requests_per_second: Option<i64>,
    pub max_finished_tasks: Option<i64>,
    pub event_retention_count: Option<i64>,
    pub event_retention_age: Option<Seconds>,
    pub event_buffer: Option<i64>,
    pub subscriber_buffer: Option<i64>,
    pub shutdown_grace: Option<Seconds>,
    pub data_dir: Option<PathBuf>,
    pub in_memory: Option<bool>,
    pub store: Option<crate::store::StoreKind>,
    pub sync: Option<crate::store::SyncLevel>,
    pub sync_interval: Option<Seconds>,
    pub log_segment_bytes: Option<i64>,
    pub orphan_grace: Option<Seconds>,
    pub metrics_listen: Option<SocketAddr>,
    pub auth_tokens_file: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
}

/// A duration as written in a config: a number of seconds (`0.5`, `3600`) or a
/// human-readable string (`"500ms"`, `"1h 30m"`). Kept as written until validated, so
/// a negative or non-finite number is reported against its setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    /// Seconds as a number.
    Number(f64),
    /// A human-readable duration.
    Text(String),
}

impl std::str::FromStr for Seconds {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().parse::<f64>() {
            Ok(n) => Seconds::Number(n),
            Err(_) => Seconds::Text(s.trim().to_owned()),
        })
    }
}

impl Seconds {
    fn to_duration(&self, setting: &'static str) -> Result<Duration, ConfigError> {
        match self {
            Seconds::Number(n) => Duration::try_from_secs_f64(*n).map_err(|_| ConfigError::Invalid {
                setting,
                reason: format!("{n} is not a non-negative number of seconds"),
            }),
            Seconds::Text(text) => humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
                setting,
                reason: format!("{text:?} is not a duration ({e}); write seconds (0.5) or e.g. \"500ms\""),
            }),
        }
    }
}

impl Overrides {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// This layer on top of `lower`: each field set here wins.
    #[must_use]
    pub fn over(self, lower: Overrides) -> Overrides {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Overrides { $($field: self.$field.or(lower.$field),)* }
            };
        }
        pick!(
            listen,
            enable_streaming,
            stream_interval,
            max_stream_duration,
            enable_agent_coordination,
            coordination_timeout,
            max_concurrent_coordinators,
            max_concurrent_agents,
            session_ttl,
            stall_timeout,
            max_payload_bytes,
            max_message_bytes,
            max_payload_depth,
            max_filter_entries,
            max_subscriptions_per_session,
            max_open_inputs_per_task,
            max_requests_per_second,
            max_finished_tasks,
            event_retention_count,
            event_retention_age,
            event_buffer,
            subscriber_buffer,
            shutdown_grace,
            data_dir,
            in_memory,
            store,
            sync,
            sync_interval,
            log_segment_bytes,
            orphan_grace,
            metrics_listen,
            auth_tokens_file,
            insecure,
            tls_cert_file,
            tls_key_file,
            tls_client_ca_file,
        )
    }

    /// Applies this layer to the defaults and validates the result.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let dur = |value: Option<Seconds>, setting: &'static str, default: Duration| {
            value.map_or(Ok(default), |v| v.to_duration(setting))
        };
        let settings = Settings {
            listen: self.listen.unwrap_or(d.listen),
            enable_streaming: self.enable_streaming.unwrap_or(d.enable_streaming),
            stream_interval: dur(self.stream_interval, "stream_interval", d.stream_interval)?,
            max_stream_duration: dur(self.max_stream_duration, "max_stream_duration", d.max_stream_duration)?,
            enable_agent_coordination: self.enable_agent_coordination.unwrap_or(d.enable_agent_coordination),
            coordination_timeout: dur(
                self.coordination_timeout,
                "coordination_timeout",
                d.coordination_timeout,
            )?,
            max_concurrent_coordinators: count(
                self.max_concurrent_coordinators,
                "max_concurrent_coordinators",
                d.max_concurrent_coordinators,
            )?,
            max_concurrent_agents: count(
                self.max_concurrent_agents,
                "max_concurrent_agents",
                d.max_concurrent_agents,
            )?,
            session_ttl: dur(self.session_ttl, "session_ttl", d.session_ttl)?,
            stall_timeout: dur(self.stall_timeout, "stall_timeout", d.stall_timeout)?,
            max_payload_bytes: count(self.max_payload_bytes, "max_payload_bytes", d.max_payload_bytes)?,
            max_message_bytes: count(self.max_message_bytes, "max_message_bytes", d.max_message_bytes)?,
            max_payload_depth: count(self.max_payload_depth, "max_payload_depth", d.max_payload_depth)?,
            max_filter_entries: count(self.max_filter_entries, "max_filter_entries", d.max_filter_entries)?,
            max_subscriptions_per_session: count(
                self.max_subscriptions_per_session,
                "max_subscriptions_per_session",
                d.max_subscriptions_per_session,
            )?,
            max_open_inputs_per_task: count(
                self.max_open_inputs_per_task,
                "max_open_inputs_per_task",
                d.max_open_inputs_per_task,
            )?,
            max_requests_per_second: count(
                self.max_requests_per_second,
                "max_requests_per_second",
                d.max_requests_per_second,
            )?,
            max_finished_tasks: count(self.max_finished_tasks, "max_finished_tasks", d.max_finished_tasks)?,
            event_retention_count: count(
                self.event_retention_count,
                "event_retention_count",
                d.event_retention_count,
            )?,
            event_retention_age: dur(self.event_retention_age, "event_retention_age", d.event_retention_age)?,
            event_buffer: count(self.event_buffer, "event_buffer", d.event_buffer)?,
            subscriber_buffer: count(self.subscriber_buffer, "subscriber_buffer", d.subscriber_buffer)?,
            shutdown_grace: dur(self.shutdown_grace, "shutdown_grace", d.shutdown_grace)?,
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            in_memory: self.in_memory.unwrap_or(d.in_memory),
            store: self.store.unwrap_or(d.store),
            sync: self.sync.unwrap_or(d.sync),
            sync_interval: dur(self.sync_interval, "sync_interval", d.sync_interval)?,
            log_segment_bytes: count(self.log_segment_bytes, "log_segment_bytes", d.log_segment_bytes)?,
            orphan_grace: dur(self.orphan_grace, "orphan_grace", d.orphan_grace)?,
            metrics_listen: self.metrics_listen.or(d.metrics_listen),
            auth_tokens_file: self.auth_tokens_file.or(d.auth_tokens_file),
            insecure: self.insecure.unwrap_or(d.insecure),
            tls_cert_file: self.tls_cert_file.or(d.tls_cert_file),
            tls_key_file: self.tls_key_file.or(d.tls_key_file),
            tls_client_ca_file: self.tls_client_ca_file.or(d.tls_client_ca_file),
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The longest duration any setting accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A count setting: at least 1 and within the target type.
fn count<T: TryFrom<i64>>(value: Option<i64>, setting: &'static str, default: T) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if n < 1 => Err(ConfigError::Invalid {
            setting,
            reason: format!("{n} is not a positive count"),
        }),
        Some(n) => T::try_from(n).map_err(|_| ConfigError::Invalid {
            setting,
            reason: format!("{n} is too large"),
        }),
    }
}

impl Settings {
    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        let positive = [
            ("stream_interval", self.stream_interval),
            ("max_stream_duration", self.max_stream_duration),
            ("coordination_timeout", self.coordination_timeout),
            ("session_ttl", self.session_ttl),
            ("stall_timeout", self.stall_timeout),
            ("event_retention_age", self.event_retention_age),
            ("orphan_grace", self.orphan_grace),
            ("sync_interval", self.sync_interval),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return invalid(setting, "must be greater than zero".into());
            }
        }
        for (setting, value) in positive {
            if value > MAX_DURATION {
                return invalid(setting, format!("{value:?} is longer than the maximum of 365 days"));
            }
        }
        if self.shutdown_grace > MAX_DURATION {
            return invalid("shutdown_grace", "is longer than the maximum of 365 days".into());
        }
        if self.stream_interval > self.max_stream_duration {
            return invalid(
                "stream_interval",
                format!(
                    "{:?} is longer than max_stream_duration ({:?})",
                    self.stream_interval, self.max_stream_duration
                ),
            );
        }
        if self.log_segment_bytes < 4096 {
            return invalid(
                "log_segment_bytes",
                format!("{} is below the minimum of 4096", self.log_segment_bytes),
            );
        }
        if self.log_segment_bytes > 1 << 30 {
            return invalid(
                "log_segment_bytes",
                format!("{} is above the maximum of 1073741824 (1 GiB)", self.log_segment_bytes),
            );
        }
        if self.max_message_bytes < 1024 {
            return invalid(
                "max_message_bytes",
                format!("{} is below the minimum of 1024", self.max_message_bytes),
            );
        }
        if let Some(metrics) = self.metrics_listen
            && metrics.port() != 0
            && metrics == self.listen
        {
            return invalid(
                "metrics_listen",
                format!("{metrics} is the gRPC address (listen): choose another port"),
            );
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return invalid("tls_key_file", "is needed with tls_cert_file".into()),
            (None, Some(_)) => return invalid("tls_cert_file", "is needed with tls_key_file".into()),
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return invalid(
                "tls_client_ca_file",
                "client certificates (mTLS) need TLS: give tls_cert_file and tls_key_file".into(),
            );
        }
        if self.auth_tokens_file.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return invalid(
                "listen",
                format!(
                    "{} is not a loopback address, and authentication is off: anyone who can reach \
                     it could act as any agent or coordinator. Give auth_tokens_file \
                     (--auth-tokens-file), or insecure (--insecure) to accept that",
                    self.listen
                ),
            );
        }
        if self.max_payload_bytes > self.max_message_bytes {
            return invalid(
                "max_payload_bytes",
                format!(
                    "{} exceeds max_message_bytes ({}): such payloads could never arrive",
                    self.max_payload_bytes, self.max_message_bytes
                ),
            );
        }
        Ok(())
    }
}

impl fmt::Display for Settings {
    /// One `name = value` line per setting, as the server logs it at start (no secrets yet
    /// to mask).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        writeln!(f, "listen = {}", self.listen)?;
        writeln!(f, "enable_streaming = {}", self.enable_streaming)?;
        writeln!(f, "stream_interval = {}", d(self.stream_interval))?;
        writeln!(f, "max_stream_duration = {}", d(self.max_stream_duration))?;
        writeln!(f, "enable_agent_coordination = {}", self.enable_agent_coordination)?;
        writeln!(f, "coordination_timeout = {}", d(self.coordination_timeout))?;
        writeln!(f, "max_concurrent_coordinators = {}", self.max_concurrent_coordinators)?;
        writeln!(f, "max_concurrent_agents = {}", self.max_concurrent_agents)?;
        writeln!(f, "session_ttl = {}", d(self.session_ttl))?;
        writeln!(f, "stall_timeout = {}", d(self.stall_timeout))?;
        writeln!(f, "max_payload_bytes = {}", self.max_payload_bytes)?;
        writeln!(f, "max_message_bytes = {}", self.max_message_bytes)?;
        writeln!(f, "max_payload_depth = {}", self.max_payload_depth)?;
        writeln!(f, "max_filter_entries = {}", self.max_filter_entries)?;
        writeln!(
            f,
            "max_subscriptions_per_session = {}",
            self.max_subscriptions_per_session
        )?;
        writeln!(f, "max_open_inputs_per_task = {}", self.max_open_inputs_per_task)?;
        writeln!(f, "max_requests_per_second = {}", self.max_requests_per_second)?;
        writeln!(f, "max_finished_tasks = {}", self.max_finished_tasks)?;
        writeln!(f, "event_retention_count = {}", self.event_retention_count)?;
        writeln!(f, "event_retention_age = {}", d(self.event_retention_age))?;
        writeln!(f, "event_buffer = {}", self.event_buffer)?;
        writeln!(f, "subscriber_buffer = {}", self.subscriber_buffer)?;
        writeln!(f, "shutdown_grace = {}", d(self.shutdown_grace))?;
        if self.in_memory {
            writeln!(f, "in_memory = true (nothing survives a restart)")?;
        } else {
            writeln!(f, "data_dir = {}", self.data_dir.display())?;
            writeln!(f, "store = {:?}", self.store)?;
            writeln!(f, "sync = {:?}", self.sync)?;
            writeln!(f, "sync_interval = {}", d(self.sync_interval))?;
            writeln!(f, "log_segment_bytes = {}", self.log_segment_bytes)?;
        }
        writeln!(f, "orphan_grace = {}", d(self.orphan_grace))?;
        match self.metrics_listen {
            Some(addr) => writeln!(f, "metrics_listen = {addr}")?,
            None => writeln!(f, "metrics_listen = off")?,
        }
        match &self.auth_tokens_file {
            Some(path) => write!(f, "auth_tokens_file = {}", path.display())?,
            None if self.insecure => write!(f, "auth = off (insecure)")?,
            None => write!(f, "auth = off (loopback only)")?,
        }
        match (&self.tls_cert_file, &self.tls_client_ca_file) {
            (Some(cert), Some(ca)) => write!(
                f,
                "\ntls = on ({}), client certificates required ({})",
                cert.display(),
                ca.display()
            )?,
            (Some(cert), None) => write!(f, "\ntls = on ({})", cert.display())?,
            _ => write!(f, "\ntls = off")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With nothing set, the seed's six settings have the seed's defaults.
    #[test]
    fn seed_defaults() {
        let s = Overrides::default().resolve().unwrap_or_else(|e| panic!("{e}"));
        assert!(s.enable_streaming);
        assert_eq!(s.stream_interval, Duration::from_millis(500));
        assert_eq!(s.max_stream_duration, Duration::from_secs(3600));
        assert!(s.enable_agent_coordination);
        assert_eq!(s.coordination_timeout, Duration::from_secs(60));
        assert_eq!(s.max_concurrent_coordinators, 10);
        assert_eq!(s.listen, "127.0.0.1:50051".parse().unwrap_or_else(|e| panic!("{e}")));
    }

    /// A TOML file is read; durations accept seconds or text; an upper layer wins.
    #[test]
    fn file_then_override() {
        let file: Overrides =
            toml::from_str("stream_interval = 0.25\nmax_stream_duration = \"2h\"\nmax_concurrent_coordinators = 3\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let top = Overrides {
            max_concurrent_coordinators: Some(5),
            ..Overrides::default()
        };
        let s = top.over(file).resolve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.stream_interval, Duration::from_millis(250));
        assert_eq!(s.max_stream_duration, Duration::from_secs(7200));
        assert_eq!(s.max_concurrent_coordinators, 5);
    }

    /// Bad values are refused with the setting's name.
    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(Overrides, &str)> = vec![
            (
                Overrides {
                    stream_interval: Some(Seconds::Number(-1.0)),
                    ..Default::default()
                },
                "stream_interval",
            ),
            (
                Overrides {
                    stream_interval: Some(Seconds::Number(0.0)),
                    ..Default::default()
                },
                "stream_interval",
            ),
            (
                Overrides {
                    coordination_timeout: Some(Seconds::Text("soon".into())),
                    ..Default::default()
                },
                "coordination_timeout",
            ),
            (
                Overrides {
                    max_concurrent_coordinators: Some(0),
                    ..Default::default()
                },
                "max_concurrent_coordinators",
            ),
            (
                Overrides {
                    stream_interval: Some(Seconds::Number(10.0)),
                    max_stream_duration: Some(Seconds::Number(5.0)),
                    ..Default::default()
                },
                "stream_interval",
            ),
            (
                Overrides {
                    max_payload_bytes: Some(10_000_000),
                    ..Default::default()
                },
                "max_payload_bytes",
            ),
            (
                Overrides {
                    listen: "127.0.0.1:9090".parse().ok(),
                    metrics_listen: "127.0.0.1:9090".parse().ok(),
                    ..Default::default()
                },
                "metrics_listen",
            ),
            (
                Overrides {
                    log_segment_bytes: Some(1000),
                    ..Default::default()
                },
                "log_segment_bytes",
            ),
            (
                Overrides {
                    // A typo of extra zeros: segments would never roll, nor be compacted.
                    log_segment_bytes: Some(64 << 30),
                    ..Default::default()
                },
                "log_segment_bytes",
            ),
            (
                Overrides {
                    sync_interval: Some(Seconds::Number(0.0)),
                    ..Default::default()
                },
                "sync_interval",
            ),
        ];
        for (overrides, setting) in cases {
            match overrides.clone().resolve() {
                Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting, "{overrides:?}"),
                other => panic!("{overrides:?}: expected invalid {setting}, got {other:?}"),
            }
        }
    }

    /// Metrics are off unless `metrics_listen` is set, from the file or above it.
    /// Beyond loopback takes authentication, or `insecure` said out loud; on loopback
    /// neither is needed (the quick start).
    #[test]
    fn listening_beyond_loopback_takes_auth_or_insecure() {
        let wide = Settings {
            listen: "0.0.0.0:50051".parse().unwrap_or(Settings::default().listen),
            ..Settings::default()
        };
        let err = wide.validate().unwrap_err().to_string();
        assert!(err.contains("listen") && err.contains("--insecure"), "{err}");
        let insecure = Settings {
            insecure: true,
            ..wide.clone()
        };
        assert!(insecure.validate().is_ok());
        let authenticated = Settings {
            auth_tokens_file: Some("tokens.toml".into()),
            ..wide
        };
        assert!(authenticated.validate().is_ok());
        assert!(Settings::default().validate().is_ok(), "loopback needs neither");
    }

    #[test]
    fn metrics_listen_is_off_by_default() {
        let s = Overrides::default().resolve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.metrics_listen, None);
        assert!(s.to_string().contains("metrics_listen = off"));
        let file: Overrides = toml::from_str("metrics_listen = \"127.0.0.1:9090\"\n").unwrap_or_else(|e| panic!("{e}"));
        let s = Overrides::default()
            .over(file)
            .resolve()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.metrics_listen, "127.0.0.1:9090".parse().ok());
        assert!(s.to_string().contains("metrics_listen = 127.0.0.1:9090"));
    }

    /// An unknown key in the file is an error naming it.
    #[test]
    fn unknown_key_in_file() {
        let err = toml::from_str::<Overrides>("stream_intervall = 1")
            .err()
            .map(|e| e.message().to_owned());
        assert!(err.is_some_and(|m| m.contains("stream_intervall")));
    }
}
