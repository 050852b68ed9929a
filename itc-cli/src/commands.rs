//! One function per verb.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use clap::CommandFactory as _;
use futures_util::FutureExt as _;
use itc_client::{Action, Capabilities, Client, Command, CommandState, EventType, SessionKind, StatusQuery};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::cli::{
    AnswerArgs, CancelArgs, Cli, CoordinateArgs, InterruptArgs, ResumeArgs, SendArgs, StatusArgs, Verb, WatchArgs,
};
use crate::error::CliError;
use crate::render;

/// The longest a call other than a waiting Coordinate may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the verb.
pub(crate) async fn run(cli: Cli) -> Result<(), CliError> {
    let addr = uri(&cli.addr, cli.ca_cert.is_some() || cli.client_cert.is_some());
    verb(cli).await.map_err(|e| broken_connection(e, addr))
}

/// A call that failed because the connection broke under it, reported as unreachable
/// with the innermost cause. tonic shows it as UNKNOWN "transport error", or as
/// CANCELLED when the connection closed before the call was sent (the CLI cancels no
/// call itself; its own timeout is CANCELLED "Timeout expired", already exit 6). A TLS
/// server refusing the client's certificate after the handshake does either.
fn broken_connection(error: CliError, addr: String) -> CliError {
    match error {
        CliError::Client(itc_client::Error::Status(status))
            if (status.code() == itc_client::Code::Unknown && status.message() == "transport error")
                || (status.code() == itc_client::Code::Cancelled && status.message() != "Timeout expired") =>
        {
            let reason = match std::error::Error::source(&status) {
                Some(source) => root_cause(source),
                None => format!("the connection closed before the call completed ({})", status.message()),
            };
            CliError::Unreachable { addr, reason }
        }
        other => other,
    }
}

async fn verb(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Verb::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "itc", &mut std::io::stdout());
            Ok(())
        }
        Verb::Status(args) if args.watch => {
            if !std::io::stdout().is_terminal() {
                return Err(CliError::Usage(
                    "`itc status --watch` needs a terminal; for a stream a program can read, use \
                     `itc watch --json` (or `itc status --json` to poll)"
                        .into(),
                ));
            }
            let stop = interrupted();
            let client = connect(&cli, CALL_TIMEOUT).await?;
            crate::live::run(client, args, stop).await
        }
        Verb::Status(args) => status(&connect(&cli, CALL_TIMEOUT).await?, &cli.addr, args).await,
        Verb::Sessions(args) => sessions(&connect(&cli, CALL_TIMEOUT).await?, args.json).await,
        Verb::Watch(args) => {
            let stop = interrupted();
            watch(&connect(&cli, CALL_TIMEOUT).await?, args, stop).await
        }
        Verb::Coordinate(args) => {
            let mut steer = Steering::from_send(&cli, &args.send).await?;
            coordinate(&mut steer, args).await
        }
        Verb::Interrupt(args) => {
            let mut steer = Steering::from_send(&cli, &args.send).await?;
            interrupt(&mut steer, args).await
        }
        Verb::Resume(args) => {
            let mut steer = Steering::from_send(&cli, &args.send).await?;
            resume(&mut steer, args).await
        }
        Verb::Cancel(args) => {
            let mut steer = Steering::from_send(&cli, &args.send).await?;
            cancel(&mut steer, args).await
        }
        Verb::Answer(args) => {
            let mut steer = Steering::open(&cli, CommandState::Admitted, Duration::ZERO, args.json).await?;
            answer(&mut steer, args).await
        }
    }
}

/// Resolves at Ctrl-C (SIGINT). Listening starts here, at once (a signal future starts
/// listening when first polled), so that a Ctrl-C while connecting ends the command
/// the same way as one later: exit 0.
pub(crate) fn interrupted() -> Interrupted {
    let mut ctrl_c: Interrupted = Box::pin(tokio::signal::ctrl_c());
    let _ = (&mut ctrl_c).now_or_never();
    ctrl_c
}

/// What [`interrupted`] returns.
pub(crate) type Interrupted = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// `host:port` or a URI, as a URI; with TLS options, `https://` (an `http://` address,
/// such as the default, is upgraded: the token must not travel in plaintext).
fn uri(addr: &str, tls: bool) -> String {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    match uri.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => uri,
    }
}

/// A PEM file named by a flag, or a usage error naming both.
fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))
}

/// Connects, turning "nobody there" into a message that says what to do.
async fn connect(cli: &Cli, request_timeout: Duration) -> Result<Client, CliError> {
    let uri = uri(&cli.addr, cli.ca_cert.is_some() || cli.client_cert.is_some());
    let mut builder = Client::builder(uri.clone())
        .with_connect_timeout(cli.connect_timeout)
        .with_request_timeout(request_timeout);
    if let Some(token) = &cli.token {
        builder = builder.with_auth_token(token);
    }
    if let Some(ca) = &cli.ca_cert {
        builder = builder.with_ca_certificate(read_pem("--ca-cert", ca)?);
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        builder = builder.with_client_identity(read_pem("--client-cert", cert)?, read_pem("--client-key", key)?);
    }
    let connected = builder.connect().await;
    match connected {
        Ok(client) => Ok(client),
        Err(itc_client::Error::Connect(e)) => Err(CliError::Unreachable {
            addr: uri,
            reason: root_cause(&e),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

fn out() -> anstream::AutoStream<std::io::Stdout> {
    anstream::stdout()
}

fn print_json(value: &Value) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::from)?;
    writeln!(stdout)?;
    Ok(())
}

// --- status and sessions -------------------------------------------------------------------

async fn status(client: &Client, addr: &str, args: &StatusArgs) -> Result<(), CliError> {
    let query = StatusQuery {
        statuses: args.statuses.iter().map(|&s| s.into()).collect(),
        agent_ids: args.agents.clone(),
        page_size: 1000,
        page_token: None,
    };
    let mut pages = std::pin::pin!(client.status_pages(query));
    let Some(first) = pages.next().await.transpose()? else {
        return Err(itc_client::Error::Protocol("GetStatus answered no page".into()).into());
    };
    let mut tasks = first.tasks.clone();
    while let Some(page) = pages.next().await.transpose()? {
        tasks.extend(page.tasks);
    }
    if args.json {
        let by_status = first.statistics.tasks_by_status.unwrap_or_default();
        return print_json(&json!({
            "state": service_state(first.state),
            "global_interrupt": first.global_interrupt,
            "active_tasks": first.active_tasks,
            "total": first.total,
            "counts": {
                "pending": by_status.pending,
                "running": by_status.running,
                "interrupted": by_status.interrupted,
                "input_required": by_status.input_required,
                "completed": by_status.completed,
                "failed": by_status.failed,
                "cancelled": by_status.cancelled,
            },
            "tasks": tasks.iter().map(render::task_json).collect::<Vec<_>>(),
        }));
    }
    let mut stdout = out();
    let interrupt = if first.global_interrupt {
        " · global interrupt in force"
    } else {
        ""
    };
    writeln!(
        stdout,
        "{}  {} · {} live · {} shown{interrupt}",
        addr,
        service_state(first.state),
        first.active_tasks,
        tasks.len(),
    )?;
    if tasks.is_empty() {
        writeln!(
            stdout,
            "no tasks{}",
            if args.statuses.is_empty() && args.agents.is_empty() {
                ""
            } else {
                " match"
            }
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks.iter().map(render::task_row).collect();
    write!(stdout, "{}", render::table(&render::TASK_HEADER, &rows))?;
    if let Some(inputs) = render::inputs_table(&tasks) {
        writeln!(stdout)?;
        write!(stdout, "{inputs}")?;
        writeln!(stdout, "answer with: itc answer REQUEST_ID VALUE")?;
    }
    Ok(())
}

fn service_state(state: itc_client::proto::ServiceState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("SERVICE_STATE_").unwrap_or(name)
}

async fn sessions(client: &Client, json: bool) -> Result<(), CliError> {
    let page = client
        .status(StatusQuery {
            page_size: 1,
            ..StatusQuery::default()
        })
        .await?;
    if json {
        let sessions: Vec<Value> = page
            .sessions
            .iter()
            .map(|s| {
                json!({
                    "session_id": s.id,
                    "kind": s.kind.as_str_name().trim_start_matches("SESSION_KIND_"),
                    "capabilities": {
                        "streaming": s.capabilities.streaming,
                        "interruption": s.capabilities.interruption,
                        "task_coordination": s.capabilities.task_coordination,
                    },
                    "connected": s.connected.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "last_activity": s.last_activity.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "lease_expires": s.lease_expires.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "lease_ttl_seconds": s.lease_ttl.as_secs_f64(),
                    "generation": s.generation,
                    "locked_task_ids": s.locked_task_ids,
                    "subscriptions": s.subscriptions.iter().map(|sub| json!({
                        "subscription_id": sub.id,
                        "task_ids": sub.task_ids,
                        "agent_ids": sub.agent_ids,
                        "event_types": sub.event_types.iter().map(|t| crate::cli::short_event_name(*t)).collect::<Vec<_>>(),
                        "delivered_seq": sub.delivered_seq,
                        "delivered_events": sub.delivered_events,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&Value::Array(sessions));
    }
    let mut stdout = out();
    if page.sessions.is_empty() {
        writeln!(stdout, "no sessions connected")?;
    } else {
        write!(stdout, "{}", render::sessions_table(&page.sessions))?;
    }
    Ok(())
}

// --- watch -------------------------------------------------------------------------------------

async fn watch(client: &Client, args: &WatchArgs, mut stop: Interrupted) -> Result<(), CliError> {
    let mut builder = client.subscribe().snapshot(args.snapshot);
    for task in &args.tasks {
        builder = builder.task(task);
    }
    for agent in &args.agents {
        builder = builder.agent(agent);
    }
    if !args.events.is_empty() {
        builder = builder.events(args.events.iter().copied());
    }
    if let Some(seq) = args.after_seq {
        builder = builder.after_seq(seq);
    }
    let show_heartbeats = args.events.contains(&EventType::Heartbeat);
    let mut events = builder.start().await?;
    let mut shown = 0_u64;
    if args.count == Some(0) {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = &mut stop => return Ok(()),
        };
        let Some(event) = event else { return Ok(()) };
        let event = event?;
        if event.kind == EventType::Heartbeat && !show_heartbeats {
            continue;
        }
        if args.json {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &render::event_json(&event)).map_err(std::io::Error::from)?;
            writeln!(stdout)?;
            stdout.flush()?;
        } else {
            let mut stdout = out();
            writeln!(stdout, "{}", render::event_line(&event))?;
            stdout.flush()?;
        }
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
}

// --- steering --------------------------------------------------------------------------------

/// The coordinator session a steering verb acts as: the one connected under `--as`, or
/// one opened (kind HUMAN) just before the command's first call. An opened session is
/// not closed: it ends with its lease (`session_ttl`). Closing it could end the session
/// of another command running at the same time under the same id, which found it
/// connected and is using it.
struct Steering {
    client: Client,
    id: String,
    /// Whether the session is known to be connected.
    ready: bool,
    wait: CommandState,
    wait_timeout: Duration,
    json: bool,
}

impl Steering {
    async fn from_send(cli: &Cli, send: &SendArgs) -> Result<Self, CliError> {
        Self::open(cli, send.wait.into(), send.wait_timeout, send.json).await
    }

    async fn open(cli: &Cli, wait: CommandState, wait_timeout: Duration, json: bool) -> Result<Self, CliError> {
        let client = connect(cli, CALL_TIMEOUT + wait_timeout).await?;
        let id = cli
            .as_id
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "itc-cli".into());
        Ok(Self {
            client,
            id,
            ready: false,
            wait,
            wait_timeout,
            json,
        })
    }

    /// Makes sure the session is connected: uses the one connected under this id (a
    /// takeover would cut its owner's heartbeat stream), or opens one.
    async fn session(&mut self) -> Result<&str, CliError> {
        if !self.ready {
            let status = self
                .client
                .status(StatusQuery {
                    page_size: 1,
                    ..StatusQuery::default()
                })
                .await?;
            if !status.sessions.iter().any(|s| s.id == self.id) {
                let opened = self
                    .client
                    .open_session(&self.id, SessionKind::Human, Capabilities::all())
                    .await?;
                if opened.taken_over {
                    // It connected elsewhere between the look and the Connect.
                    let _ = writeln!(
                        anstream::stderr(),
                        "itc: note: session `{}` connected elsewhere just now and was taken over; \
                         its owner reconnects if it heartbeats",
                        self.id
                    );
                }
            }
            self.ready = true;
        }
        Ok(&self.id)
    }

    async fn send(
        &mut self,
        task: &str,
        action: Action,
        data: Option<Value>,
        tweak: impl FnOnce(itc_client::CoordinateCall) -> itc_client::CoordinateCall,
    ) -> Result<Command, CliError> {
        self.session().await?;
        let mut call = self.client.coordinate(&self.id, task, action);
        if let Some(data) = data {
            call = call.data(data);
        }
        let call = tweak(call);
        let command = if self.wait == CommandState::Admitted {
            call.send().await?
        } else {
            call.wait_for_within(self.wait, self.wait_timeout).await?
        };
        Ok(command)
    }

    /// Prints the command, then fails unless it reached the state `--wait` asked for.
    fn report(&self, verb: &str, command: &Command) -> Result<(), CliError> {
        self.print(verb, command)?;
        match command.state {
            CommandState::Rejected => Err(CliError::Refused(format!(
                "the agent rejected command {} on task {}: {}",
                command.id,
                command.task_id,
                command.reason.as_deref().unwrap_or("no reason given")
            ))),
            CommandState::TimedOut => Err(CliError::Refused(format!(
                "command {} on task {} timed out: {}",
                command.id,
                command.task_id,
                command.reason.as_deref().unwrap_or("the agent did not answer")
            ))),
            state if state < self.wait => Err(CliError::NotReached(format!(
                "command {} is {} after {}, not yet {}; it may still be (`itc watch --task {}` shows it)",
                command.id,
                render::command_state_name(state),
                humantime::format_duration(self.wait_timeout),
                render::command_state_name(self.wait),
                command.task_id
            ))),
            _ => Ok(()),
        }
    }

    fn print(&self, verb: &str, command: &Command) -> Result<(), CliError> {
        if self.json {
            return print_json(&render::command_json(command));
        }
        let mut stdout = out();
        write!(
            stdout,
            "{verb} {}: command {} {} (as {})",
            command.task_id,
            command.id,
            render::command_state_name(command.state),
            self.id
        )?;
        if let Some(reason) = &command.reason {
            write!(stdout, ": {reason}")?;
        }
        if let Some(result) = &command.result {
            write!(stdout, " → {result}")?;
        }
        writeln!(stdout)?;
        Ok(())
    }

    fn report_all(&self, verb: &str, task_ids: &[String]) -> Result<(), CliError> {
        if self.json {
            return print_json(&json!({ "task_ids": task_ids }));
        }
        let mut stdout = out();
        writeln!(
            stdout,
            "{verb} {} task{} (as {})",
            task_ids.len(),
            if task_ids.len() == 1 { "" } else { "s" },
            self.id
        )?;
        for id in task_ids {
            writeln!(stdout, "  {id}")?;
        }
        Ok(())
    }
}

fn with_reason(reason: Option<&String>) -> Option<Value> {
    reason.map(|r| json!({ "reason": r }))
}

async fn coordinate(steer: &mut Steering, args: &CoordinateArgs) -> Result<(), CliError> {
    let command = steer
        .send(&args.task, args.action.into(), args.data.clone(), |mut call| {
            if let Some(version) = args.expected_version {
                call = call.expected_version(version);
            }
            if let Some(key) = &args.idempotency_key {
                call = call.idempotency_key(key);
            }
            call
        })
        .await?;
    steer.report("sent", &command)
}

async fn interrupt(steer: &mut Steering, args: &InterruptArgs) -> Result<(), CliError> {
    match &args.task {
        Some(task) => {
            let command = steer
                .send(task, Action::Interrupt, with_reason(args.reason.as_ref()), |c| c)
                .await?;
            steer.report("interrupted", &command)
        }
        None => {
            let reason = args.reason.as_deref().unwrap_or("");
            steer.session().await?;
            let ids = steer.client.interrupt_all(&steer.id, reason).await?;
            steer.report_all("interrupted", &ids)
        }
    }
}

async fn resume(steer: &mut Steering, args: &ResumeArgs) -> Result<(), CliError> {
    match &args.task {
        Some(task) => {
            let command = steer.send(task, Action::Resume, None, |c| c).await?;
            steer.report("resumed", &command)
        }
        None => {
            steer.session().await?;
            let ids = steer.client.resume_all(&steer.id).await?;
            steer.report_all("resumed", &ids)
        }
    }
}

async fn cancel(steer: &mut Steering, args: &CancelArgs) -> Result<(), CliError> {
    let command = steer
        .send(&args.task, Action::Cancel, with_reason(args.reason.as_ref()), |c| c)
        .await?;
    steer.report("cancelled", &command)
}

// --- answer ----------------------------------------------------------------------------------

/// `42`, `true`, `{"a": 1}` as JSON; anything else as text.
fn answer_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

async fn answer(steer: &mut Steering, args: &AnswerArgs) -> Result<(), CliError> {
    let request = steer.client.get_input(&args.request_id).await?;
    if request.state != itc_client::InputState::Open {
        let by = request
            .answered_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
        return Err(CliError::Conflict(format!(
            "input request {} is {}{by}: nothing to answer",
            request.id,
            format!("{:?}", request.state).to_ascii_lowercase()
        )));
    }
    let one_of = if request.choices.is_empty() {
        String::new()
    } else {
        format!(" (one of: {})", request.choices.join(", "))
    };
    let text = match &args.value {
        Some(value) => value.clone(),
        None => {
            let mut stderr = anstream::stderr();
            writeln!(stderr, "task {} asks: {}{one_of}", request.task_id, request.prompt)?;
            if !std::io::stdin().is_terminal() {
                return Err(CliError::Usage(format!(
                    "give the answer as VALUE: itc answer {} VALUE{one_of}",
                    request.id
                )));
            }
            for (n, choice) in request.choices.iter().enumerate() {
                writeln!(stderr, "  {}) {choice}", n + 1)?;
            }
            write!(stderr, "answer> ")?;
            stderr.flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let line = line.trim();
            match line.parse::<usize>() {
                Ok(n) if (1..=request.choices.len()).contains(&n) => request.choices[n - 1].clone(),
                _ => line.to_owned(),
            }
        }
    };
    let value = if request.choices.is_empty() {
        answer_value(&text)
    } else if request.choices.contains(&text) {
        Value::String(text)
    } else {
        return Err(CliError::Usage(format!(
            "`{text}` is not a choice of input request {}{one_of}",
            request.id
        )));
    };
    steer.session().await?;
    let answered = steer.client.answer(&steer.id, &request.id, value).await?;
    if args.json {
        return print_json(&render::input_json(&answered));
    }
    writeln!(
        out(),
        "answered input request {} of task {}: {} (as {})",
        answered.id,
        answered.task_id,
        answered.answer.as_ref().map_or_else(|| "null".into(), Value::to_string),
        steer.id
    )?;
    Ok(())
}
