//! The command line: every verb, flag and help text (clap derive).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use itc_client::{Action, CommandState, EventType, TaskStatus};

/// Exit codes, as the help and the README list them.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  refused for another reason: a server error, or a command its agent rejected or
     did not answer in time
  2  a usage error: a bad flag or value, or the server found an argument invalid
  3  not found: no such task, input request or command
  4  conflict: the task is locked by another coordinator, already finished, or the
     request was already answered
  5  not allowed: unauthenticated or permission denied
  6  unreachable: no server at --addr, or it did not answer in time
  7  --wait ended (--wait-timeout) before the command reached the state asked; it may
     still get there";

const EXAMPLES: &str = "\
Examples:
  itc status                          every task as a table
  itc status --watch                  a live view with a progress bar per running task
  itc status --status running --json  running tasks as JSON, for scripts
  itc watch --agent worker-1          follow one agent's events
  itc watch --event task-progress --json --count 10
  itc interrupt TASK --reason 'wrong branch'
  itc coordinate TASK boost-priority --data '{\"priority\": 9}' --wait applied
  itc answer REQUEST_ID yes
  itc sessions
  itc completions bash > ~/.local/share/bash-completion/completions/itc";

/// `itc`: watch and steer the tasks of an ITC server.
#[derive(Debug, Parser)]
#[command(name = "itc", version, about, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub(crate) struct Cli {
    /// The server: `host:port` or a URI (`http://host:port`).
    #[arg(long, global = true, env = "ITC_ADDR", default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,

    /// How long to wait for the server to accept the connection.
    #[arg(long, global = true, env = "ITC_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// The bearer token, when the server requires one (`--auth-tokens-file`).
    #[arg(long, global = true, env = "ITC_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,

    /// TLS: trust this CA certificate (PEM) for the server's; turns TLS on (`https://`
    /// addresses use TLS with the system's roots).
    #[arg(long, global = true, env = "ITC_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,

    /// mTLS: present this client certificate chain (PEM), with --client-key.
    #[arg(
        long,
        global = true,
        env = "ITC_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<std::path::PathBuf>,

    /// mTLS: the client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "ITC_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<std::path::PathBuf>,

    /// Colours: auto (a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto)]
    pub(crate) color: ColorWhen,

    /// Who steers: the coordinator session the steering verbs act as (the connected one,
    /// or one opened as HUMAN and left to its lease). Default: $USER.
    #[arg(long = "as", global = true, env = "ITC_AS", value_name = "SESSION_ID")]
    pub(crate) as_id: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Verb,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Verb {
    /// Tasks as a table (or live with --watch, or JSON with --json).
    Status(StatusArgs),
    /// Follow events as they happen, resuming by itself after a cut.
    Watch(WatchArgs),
    /// Send a command to a live task (under its lock, taken for the call).
    Coordinate(CoordinateArgs),
    /// Interrupt a task (it stops at its next checkpoint), or every running task.
    Interrupt(InterruptArgs),
    /// Resume an interrupted task, or every interrupted task.
    Resume(ResumeArgs),
    /// Cancel a live task.
    Cancel(CancelArgs),
    /// Answer an agent's input request (its choices are shown when it has some).
    Answer(AnswerArgs),
    /// Connected sessions: coordinators and agents.
    Sessions(JsonArg),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only tasks in this state (repeatable).
    #[arg(long = "status", value_enum, value_name = "STATUS")]
    pub(crate) statuses: Vec<StatusArg>,
    /// Only tasks of this agent (repeatable).
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub(crate) agents: Vec<String>,
    /// One JSON document (service state, counts, tasks) instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub(crate) json: bool,
    /// Redraw live: a progress bar per running task, updated as events arrive. Ctrl-C
    /// ends it. Needs a terminal.
    #[arg(long)]
    pub(crate) watch: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only events of this task (repeatable).
    #[arg(long = "task", value_name = "TASK_ID")]
    pub(crate) tasks: Vec<String>,
    /// Only events of this agent (repeatable).
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub(crate) agents: Vec<String>,
    /// Only events of this type, e.g. task-progress or TASK_PROGRESS (repeatable).
    #[arg(long = "event", value_name = "TYPE", value_parser = parse_event_type)]
    pub(crate) events: Vec<EventType>,
    /// Start with every retained event after this seq (0: all retained), then go live.
    #[arg(long, value_name = "SEQ")]
    pub(crate) after_seq: Option<u64>,
    /// Start with the current state of every matching task.
    #[arg(long)]
    pub(crate) snapshot: bool,
    /// One JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stop after this many events (stream heartbeats are not shown nor counted).
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CoordinateArgs {
    /// The task.
    pub(crate) task: String,
    /// What to do.
    #[arg(value_enum)]
    pub(crate) action: ActionArg,
    /// The command's data: a JSON object, e.g. '{"priority": 9}'.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub(crate) data: Option<serde_json::Value>,
    #[command(flatten)]
    pub(crate) send: SendArgs,
    /// Refuse unless the task is at this version (ABORTED otherwise).
    #[arg(long, value_name = "VERSION")]
    pub(crate) expected_version: Option<u64>,
    /// Makes a retry safe: the same key returns the first command.
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,
}

/// How a steering verb waits and prints.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Answer once the command is admitted, delivered to the agent, or applied (or
    /// rejected) by it.
    #[arg(long, value_enum, default_value_t = WaitArg::Admitted)]
    pub(crate) wait: WaitArg,
    /// The longest --wait may take.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) wait_timeout: Duration,
    /// The command as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InterruptArgs {
    /// The task (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) task: Option<String>,
    /// Every running task (the global interrupt).
    #[arg(long)]
    pub(crate) all: bool,
    /// Why (the agent sees it).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    #[command(flatten)]
    pub(crate) send: SendArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    /// The task (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) task: Option<String>,
    /// Every interrupted task (ends the global interrupt).
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) send: SendArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The task.
    pub(crate) task: String,
    /// Why (the agent sees it).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    #[command(flatten)]
    pub(crate) send: SendArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AnswerArgs {
    /// The input request (as `itc status` and `itc watch` show it).
    pub(crate) request_id: String,
    /// The answer: JSON when it parses as JSON (`42`, `true`, `{"a": 1}`), text otherwise.
    /// Leave it out to see the question and its choices; in a terminal, you are asked.
    pub(crate) value: Option<String>,
    /// The answered request as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    Pending,
    Running,
    Interrupted,
    InputRequired,
    Completed,
    Failed,
    Cancelled,
}

impl From<StatusArg> for TaskStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => TaskStatus::Pending,
            StatusArg::Running => TaskStatus::Running,
            StatusArg::Interrupted => TaskStatus::Interrupted,
            StatusArg::InputRequired => TaskStatus::InputRequired,
            StatusArg::Completed => TaskStatus::Completed,
            StatusArg::Failed => TaskStatus::Failed,
            StatusArg::Cancelled => TaskStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ActionArg {
    BoostPriority,
    ModifyPlan,
    Interrupt,
    Resume,
    Cancel,
    Query,
    Custom,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::BoostPriority => Action::BoostPriority,
            ActionArg::ModifyPlan => Action::ModifyPlan,
            ActionArg::Interrupt => Action::Interrupt,
            ActionArg::Resume => Action::Resume,
            ActionArg::Cancel => Action::Cancel,
            ActionArg::Query => Action::Query,
            ActionArg::Custom => Action::Custom,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WaitArg {
    /// Once the server admitted it (the effect on the task is immediate).
    Admitted,
    /// Once it was pushed to the agent.
    Delivered,
    /// Once the agent applied or rejected it.
    Applied,
}

impl From<WaitArg> for CommandState {
    fn from(w: WaitArg) -> Self {
        match w {
            WaitArg::Admitted => CommandState::Admitted,
            WaitArg::Delivered => CommandState::Delivered,
            WaitArg::Applied => CommandState::Applied,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 500ms, 5s, 2m)"))
}

/// `task-progress`, `TASK_PROGRESS` or `EVENT_TYPE_TASK_PROGRESS`, in any case.
pub(crate) fn parse_event_type(text: &str) -> Result<EventType, String> {
    let upper = text.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("EVENT_TYPE_") {
        upper
    } else {
        format!("EVENT_TYPE_{upper}")
    };
    match EventType::from_str_name(&name) {
        Some(EventType::Unspecified) | None => Err(format!(
            "unknown event type `{text}`; one of: {}",
            event_type_names().join(", ")
        )),
        Some(t) => Ok(t),
    }
}

/// Every event type as the CLI writes it (`task-progress`).
pub(crate) fn event_type_names() -> Vec<String> {
    (1..)
        .map_while(|n| EventType::try_from(n).ok())
        .map(|t| short_event_name(t).to_ascii_lowercase().replace('_', "-"))
        .collect()
}

/// `TASK_PROGRESS` for EVENT_TYPE_TASK_PROGRESS.
pub(crate) fn short_event_name(t: EventType) -> &'static str {
    let name = t.as_str_name();
    name.strip_prefix("EVENT_TYPE_").unwrap_or(name)
}

fn parse_json_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(other) => Err(format!("must be a JSON object like '{{\"priority\": 9}}', not {other}")),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed expectation is a failed test
mod tests {
    use super::*;

    #[test]
    fn event_types_parse_in_every_spelling() {
        for text in [
            "task-progress",
            "TASK_PROGRESS",
            "event_type_task_progress",
            " Task-Progress ",
        ] {
            assert_eq!(parse_event_type(text), Ok(EventType::TaskProgress), "{text}");
        }
        let err = parse_event_type("progress").unwrap_err();
        assert!(
            err.contains("task-progress") && err.contains("input-requested"),
            "{err}"
        );
        assert!(parse_event_type("unspecified").is_err());
        assert_eq!(event_type_names().len(), 32);
    }

    #[test]
    fn durations_and_data() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_json_object("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_json_object("{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
