//! End-to-end tests of the `itc` binary against a real server (in this process, on
//! 127.0.0.1:0): its tables, JSON, exit codes, steering verbs, event lines, completions,
//! and the live view driven in a pseudo-terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::sync::mpsc;
use std::time::Instant;

use assert_cmd::Command;
use common::{DEADLINE, TestServer};
use itc_client::proto::agent_service_client::AgentServiceClient;
use itc_client::proto::{RequestInputRequest, RequestInputResponse};
use itc_client::{Capabilities, Client, SessionKind, StartTask, TaskStatus};
use serde_json::{Value, json};

/// A server and a runtime for the test's own SDK calls; the `itc` runs are blocking
/// processes on the test's thread.
struct World {
    runtime: tokio::runtime::Runtime,
    server: Option<TestServer>,
    client: Client,
    uri: String,
}

impl World {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(TestServer::start());
        let client = runtime.block_on(server.client());
        let uri = server.uri();
        Self {
            runtime,
            server: Some(server),
            client,
            uri,
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// `itc --addr URI ARGS…`, with colours off and a fixed `--as` default.
    fn itc(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        itc().env("ITC_ADDR", &self.uri).args(args).assert()
    }

    fn start(&self, agent: &str, id: &str) {
        self.block_on(
            self.client
                .start_task(StartTask::new(agent, format!("task {id}")).with_task_id(id)),
        )
        .unwrap();
    }

    fn ask(&self, task: &str, prompt: &str, choices: &[&str]) -> String {
        let response: RequestInputResponse = self.block_on(async {
            let mut agent = AgentServiceClient::new(self.server.as_ref().unwrap().channel().await);
            agent
                .request_input(RequestInputRequest {
                    task_id: task.into(),
                    prompt: prompt.into(),
                    choices: choices.iter().map(|c| (*c).into()).collect(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        });
        response.input.unwrap().request_id
    }

    /// Connects a HUMAN coordinator session `id` (without heartbeats: it lives on its lease).
    fn human(&self, id: &str) {
        self.block_on(self.client.open_session(id, SessionKind::Human, Capabilities::all()))
            .unwrap();
    }

    fn status_of(&self, task: &str) -> itc_client::Task {
        self.block_on(self.client.get_task(task)).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.stop());
        }
    }
}

/// The `itc` binary, with an environment that does not leak from the test's.
fn itc() -> Command {
    let mut command = Command::cargo_bin("itc").unwrap();
    command
        .env_remove("ITC_ADDR")
        .env_remove("ITC_AS")
        .env_remove("ITC_TOKEN")
        .env("USER", "tester")
        .env("NO_COLOR", "1")
        .timeout(DEADLINE * 3);
    command
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stdout.clone()).unwrap()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stderr.clone()).unwrap()
}

fn json_of(assert: &assert_cmd::assert::Assert) -> Value {
    serde_json::from_str(&stdout(assert)).unwrap()
}

#[test]
fn status_as_a_table_and_as_json_with_filters() {
    let world = World::new();
    world.start("worker-1", "build-1");
    world.start("worker-2", "deploy-7");
    world.start("worker-1", "done-3");
    world
        .block_on(world.client.report_progress("build-1", 0.42, "compiling"))
        .unwrap();
    world.block_on(world.client.complete_task("done-3", json!(1))).unwrap();
    let request = world.ask("deploy-7", "Ship it?", &["yes", "no"]);

    let table = stdout(&world.itc(&["status"]).success());
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("RUNNING · 2 live · 3 shown"), "{table}");
    assert!(lines[1].starts_with("TASK") && lines[1].contains("PROGRESS"), "{table}");
    let build = lines.iter().find(|l| l.starts_with("build-1")).unwrap();
    assert!(build.contains("worker-1") && build.contains("RUNNING") && build.contains("████▎░░░░░  42%"));
    assert!(build.ends_with("compiling"), "{build}");
    let deploy = lines.iter().find(|l| l.starts_with("deploy-7")).unwrap();
    assert!(
        deploy.contains("INPUT_REQUIRED") && deploy.contains("1 open"),
        "{deploy}"
    );
    assert!(lines.iter().any(|l| l.starts_with("done-3") && l.contains("COMPLETED")));
    let input = lines.iter().find(|l| l.starts_with(&request)).unwrap();
    assert!(input.contains("deploy-7") && input.contains("Ship it?") && input.contains("yes / no"));
    assert!(!table.contains('\x1b'), "NO_COLOR: no ANSI codes");

    // The same as JSON, filtered by status and agent; host:port without a scheme.
    let addr = world.uri.trim_start_matches("http://").to_owned();
    let doc = json_of(
        &itc()
            .args([
                "--addr", &addr, "status", "--json", "--status", "running", "--agent", "worker-1",
            ])
            .assert()
            .success(),
    );
    assert_eq!(doc["state"], "RUNNING");
    assert_eq!(doc["active_tasks"], 2);
    assert_eq!(doc["counts"]["input_required"], 1);
    let tasks = doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{doc}");
    assert_eq!(tasks[0]["task_id"], "build-1");
    assert_eq!(tasks[0]["progress"], 0.42);
    assert_eq!(tasks[0]["status_message"], "compiling");
    let all = json_of(&world.itc(&["status", "--json"]).success());
    let deploy = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "deploy-7")
        .unwrap();
    assert_eq!(deploy["open_inputs"][0]["request_id"], request.as_str());
    assert_eq!(deploy["open_inputs"][0]["choices"], json!(["yes", "no"]));

    // Colours on request.
    let colored = stdout(&world.itc(&["--color", "always", "status"]).success());
    assert!(colored.contains("\x1b[1m\x1b[36mRUNNING"), "{colored:?}");
}

#[test]
fn an_unreachable_server_exits_6_saying_what_to_do() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is dropped: nothing listens there now.
    let assert = itc()
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--connect-timeout",
            "2s",
            "status",
        ])
        .assert()
        .code(6);
    let err = stderr(&assert);
    assert!(
        err.contains(&format!("cannot reach the ITC server at http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("ITC_ADDR"), "{err}");
    assert!(stdout(&assert).is_empty());
}

#[test]
fn steering_verbs_change_the_task_and_exit_codes_tell_why_not() {
    let world = World::new();
    for id in ["t1", "t2", "t3"] {
        world.start("worker", id);
    }

    // interrupt with a reason, as the default session ($USER), opened and closed for it.
    let out = stdout(&world.itc(&["interrupt", "t1", "--reason", "wrong branch"]).success());
    assert!(
        out.starts_with("interrupted t1: command ") && out.contains("ADMITTED (as tester)"),
        "{out}"
    );
    let t1 = world.status_of("t1");
    assert_eq!(t1.status, Some(TaskStatus::Interrupted));
    assert_eq!(t1.open_commands[0].data, Some(json!({"reason": "wrong branch"})));
    assert_eq!(t1.open_commands[0].coordinator_id, "tester");
    let sessions = world
        .block_on(world.client.status(Default::default()))
        .unwrap()
        .sessions;
    // The session it opened stays until its lease ends (closing it could cut another
    // command using it).
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        (sessions[0].id.as_str(), sessions[0].kind),
        ("tester", SessionKind::Human)
    );

    // resume, as JSON.
    let command = json_of(&world.itc(&["resume", "t1", "--json"]).success());
    assert_eq!(command["action"], "RESUME");
    assert_eq!(command["state"], "ADMITTED");
    assert_eq!(world.status_of("t1").status, Some(TaskStatus::Running));

    // coordinate with data, under an existing session given by --as (left connected).
    world.human("alice");
    let out = stdout(
        &world
            .itc(&[
                "--as",
                "alice",
                "coordinate",
                "t2",
                "boost-priority",
                "--data",
                r#"{"priority": 9}"#,
            ])
            .success(),
    );
    assert!(out.contains("(as alice)"), "{out}");
    assert_eq!(world.status_of("t2").priority, 9);
    let sessions = world
        .block_on(world.client.status(Default::default()))
        .unwrap()
        .sessions;
    let alice = sessions.iter().find(|s| s.id == "alice").unwrap();
    assert_eq!(alice.generation, 1, "used as it was, not taken over");

    // sessions, as a table and as JSON.
    let table = stdout(&world.itc(&["sessions"]).success());
    let row = table.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(
        row.contains("HUMAN") && row.contains("streaming, interruption, coordination"),
        "{row}"
    );
    let listed = json_of(&world.itc(&["sessions", "--json"]).success());
    assert_eq!(listed[0]["session_id"], "alice");
    assert_eq!(listed[0]["kind"], "HUMAN");

    // A lock held by someone else: 4, naming the holder; nothing changes.
    let lock = world.block_on(world.client.acquire_lock("alice", "t3", None)).unwrap();
    let assert = world.itc(&["cancel", "t3"]).code(4);
    assert!(stderr(&assert).contains("locked by `alice`"), "{}", stderr(&assert));
    assert_eq!(world.status_of("t3").status, Some(TaskStatus::Running));
    world.block_on(world.client.release_lock("alice", &lock)).unwrap();

    // cancel.
    world.itc(&["cancel", "t3", "--reason", "not needed"]).success();
    assert_eq!(world.status_of("t3").status, Some(TaskStatus::Cancelled));
    // …and a finished task cannot be steered: 4.
    world.itc(&["interrupt", "t3"]).code(4);

    // Not found: 3. Bad arguments: 2 (before any call, or from the server).
    let assert = world.itc(&["interrupt", "nope"]).code(3);
    assert!(stderr(&assert).contains("task `nope` not found"), "{}", stderr(&assert));
    world
        .itc(&["coordinate", "t2", "boost-priority", "--data", "[1]"])
        .code(2);
    world.itc(&["interrupt"]).code(2);
    world.itc(&["interrupt", "t1", "--all"]).code(2);

    // The global verbs.
    let out = stdout(&world.itc(&["interrupt", "--all", "--reason", "lunch"]).success());
    assert!(
        out.starts_with("interrupted 2 tasks (as tester)") && out.contains("  t1") && out.contains("  t2"),
        "{out}"
    );
    let status = world.block_on(world.client.status(Default::default())).unwrap();
    assert!(status.global_interrupt);
    let resumed = json_of(&world.itc(&["resume", "--all", "--json"]).success());
    let mut ids: Vec<&str> = resumed["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["t1", "t2"]);
}

#[test]
fn answer_shows_the_choices_and_checks_them() {
    let world = World::new();
    world.start("worker", "t");
    let request = world.ask("t", "Ship it?", &["yes", "no"]);

    // No value and no terminal: the question and its choices, exit 2.
    let assert = world.itc(&["answer", &request]).code(2);
    let err = stderr(&assert);
    assert!(err.contains("task t asks: Ship it? (one of: yes, no)"), "{err}");
    assert!(err.contains(&format!("itc answer {request} VALUE")), "{err}");
    // Not a choice: 2, and the request stays open.
    let assert = world.itc(&["answer", &request, "maybe"]).code(2);
    assert!(
        stderr(&assert).contains("`maybe` is not a choice"),
        "{}",
        stderr(&assert)
    );
    assert_eq!(world.status_of("t").status, Some(TaskStatus::InputRequired));

    let out = stdout(&world.itc(&["--as", "bob", "answer", &request, "yes"]).success());
    assert_eq!(
        out,
        format!("answered input request {request} of task t: \"yes\" (as bob)\n")
    );
    let task = world.status_of("t");
    assert_eq!(task.status, Some(TaskStatus::Running));
    // Already answered: 4, saying by whom.
    let assert = world.itc(&["answer", &request, "no"]).code(4);
    assert!(stderr(&assert).contains("is answered by bob"), "{}", stderr(&assert));

    // Without choices, a value that parses as JSON is JSON.
    let free = world.ask("t", "How many replicas?", &[]);
    let answered = json_of(&world.itc(&["answer", &free, "3", "--json"]).success());
    assert_eq!(answered["answer"], json!(3));
    assert_eq!(answered["state"], "ANSWERED");
    world.itc(&["answer", "no-such-request", "x"]).code(3);
}

#[test]
fn watch_prints_lines_or_json_lines_with_the_subscribe_filters() {
    let world = World::new();
    world.start("worker-1", "a");
    world.start("worker-2", "b");
    for (task, p) in [("a", 0.25), ("b", 0.3), ("a", 0.5)] {
        world
            .block_on(world.client.report_progress(task, p, format!("at {p}")))
            .unwrap();
    }
    let out = stdout(
        &world
            .itc(&[
                "watch",
                "--after-seq",
                "0",
                "--agent",
                "worker-1",
                "--event",
                "task-progress",
                "--json",
                "--count",
                "2",
            ])
            .success(),
    );
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "{out}");
    for (event, p) in events.iter().zip([0.25, 0.5]) {
        assert_eq!(event["type"], "TASK_PROGRESS");
        assert_eq!(event["task_id"], "a");
        assert_eq!(event["progress"], json!({"progress": p, "message": format!("at {p}")}));
    }
    assert!(events[0]["seq"].as_u64() < events[1]["seq"].as_u64());

    let out = stdout(
        &world
            .itc(&["watch", "--after-seq", "0", "--task", "b", "--count", "2"])
            .success(),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("TASK_STARTED") && lines[0].contains("b (worker-2)"),
        "{out}"
    );
    assert!(
        lines[1].contains("TASK_PROGRESS") && lines[1].ends_with("b (worker-2)  30% at 0.3"),
        "{out}"
    );

    // A live event reaches a running `itc watch` (its stream is open once the first
    // replayed line is out).
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("itc"))
        .args([
            "--addr",
            &world.uri,
            "watch",
            "--after-seq",
            "0",
            "--task",
            "a",
            "--json",
            "--count",
            "4",
        ])
        .env_remove("ITC_ADDR")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its lines arrive on a channel, so that every wait has a deadline.
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(DEADLINE).expect("the replayed TASK_STARTED");
    assert!(first.contains("TASK_STARTED"), "{first}");
    world.block_on(world.client.complete_task("a", json!("done"))).unwrap();
    let rest: Vec<String> = (0..3).map(|_| rx.recv_timeout(DEADLINE).expect("a line")).collect();
    let last: Value = serde_json::from_str(&rest[2]).unwrap();
    assert_eq!(last["type"], "TASK_COMPLETED");
    let (done, exit) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait()));
    assert!(
        exit.recv_timeout(DEADLINE).unwrap().unwrap().success(),
        "--count 4 ends it"
    );
}

/// `--wait` is kept: a command the agent rejects exits 1 (after printing it); one that
/// is not delivered within `--wait-timeout` exits 7.
#[test]
fn waiting_for_a_command_reports_what_became_of_it() {
    let world = World::new();
    let task_id = world.block_on(async {
        let agent = world.client.agent("worker").connect().await.unwrap();
        let mut task = agent.start_task("busy work").await.unwrap();
        let mut commands = task.commands().unwrap();
        let id = task.id().to_owned();
        tokio::spawn(async move {
            let _agent = agent; // keeps the session (and its heartbeats) alive
            while let Some(command) = commands.recv().await {
                task.reject(&command, "busy compiling").await.unwrap();
            }
        });
        id
    });
    let assert = world
        .itc(&[
            "coordinate",
            &task_id,
            "query",
            "--data",
            r#"{"q": "ETA?"}"#,
            "--wait",
            "applied",
            "--json",
        ])
        .code(1);
    assert_eq!(json_of(&assert)["state"], "REJECTED");
    let err = stderr(&assert);
    assert!(
        err.contains("the agent rejected command") && err.contains("busy compiling"),
        "{err}"
    );

    world.start("nobody-connected", "orphan");
    let assert = world
        .itc(&["interrupt", "orphan", "--wait", "delivered", "--wait-timeout", "500ms"])
        .code(7);
    let err = stderr(&assert);
    assert!(err.contains("is ADMITTED after 500ms, not yet DELIVERED"), "{err}");
    assert!(stdout(&assert).starts_with("interrupted orphan: command "));
}

#[test]
fn help_lists_examples_and_exit_codes_and_completions_generate() {
    let help = stdout(&itc().arg("--help").assert().success());
    for needle in [
        "Examples:",
        "itc status --watch",
        "Exit codes:",
        "6  unreachable",
        "ITC_ADDR",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let bash = stdout(&itc().args(["completions", "bash"]).assert().success());
    assert!(bash.contains("_itc()") && bash.contains("coordinate") && bash.contains("--after-seq"));
    let zsh = stdout(&itc().args(["completions", "zsh"]).assert().success());
    assert!(zsh.starts_with("#compdef itc"));
    let fish = stdout(&itc().args(["completions", "fish"]).assert().success());
    assert!(fish.contains("complete -c itc"));
    // --watch needs a terminal (the test's stdout is a pipe).
    let assert = itc().args(["status", "--watch"]).assert().code(2);
    assert!(stderr(&assert).contains("itc watch --json"));
}

/// The screen's rows, one per line (`contents()` joins rows a full-width line wrapped into).
fn rows(parser: &vt100::Parser) -> String {
    let (_, cols) = parser.screen().size();
    parser.screen().rows(0, cols.get()).collect::<Vec<_>>().join("\n")
}

/// The live view, driven in a pseudo-terminal and read back as a screen (vt100): it
/// shows the tasks as they are, redraws as events arrive (progress, an input request,
/// a lock, completion), and Ctrl-C ends it with exit 0, the last frame left on screen.
#[test]
fn the_live_view_redraws_in_a_terminal() {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};

    let world = World::new();
    world.start("worker-1", "build-1");
    world
        .block_on(world.client.report_progress("build-1", 0.42, "compiling"))
        .unwrap();

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 160,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut command = CommandBuilder::new(assert_cmd::cargo::cargo_bin("itc"));
    command.args(["--addr", &world.uri, "status", "--watch"]);
    command.env("TERM", "xterm-256color");
    command.env("USER", "tester");
    let mut child = pty.slave.spawn_command(command).unwrap();
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().unwrap();
    let mut writer = pty.master.take_writer().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let size = |n| std::num::NonZeroU16::new(n).unwrap();
    let mut screen = vt100::Parser::new(size(24), size(160), 0);
    let mut wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let contents = rows(&screen);
            if ok(&contents) {
                return contents;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => screen.process(&bytes),
                Err(_) => panic!("the live view did not show {what} within {DEADLINE:?}; the screen:\n{contents}"),
            }
        }
    };

    let first = wait_for("build-1 at 42%", &|s| {
        s.lines()
            .any(|l| l.starts_with("build-1") && l.contains("RUNNING") && l.contains(" 42%") && l.contains("compiling"))
    });
    assert!(first.contains("ITC RUNNING · 1 live"), "{first}");
    assert!(first.contains("TASK") && first.contains("PROGRESS"), "{first}");

    // Live changes: progress, a second task asking for input, a lock.
    world.start("worker-2", "deploy-7");
    let request = world.ask("deploy-7", "Ship it?", &["yes", "no"]);
    world
        .block_on(world.client.report_progress("build-1", 0.9, "linking"))
        .unwrap();
    world.human("alice");
    world
        .block_on(world.client.acquire_lock("alice", "build-1", None))
        .unwrap();
    let changed = wait_for("the changes", &|s| {
        s.lines().any(|l| {
            l.starts_with("build-1") && l.contains(" 90%") && l.contains("locked by alice") && l.contains("linking")
        }) && s
            .lines()
            .any(|l| l.starts_with("deploy-7") && l.contains("INPUT_REQUIRED") && l.contains(&request))
    });
    assert!(changed.contains("asks \"Ship it?\" [yes/no]"), "{changed}");

    world
        .block_on(world.client.complete_task("build-1", json!("ok")))
        .unwrap();
    let done = wait_for("build-1 COMPLETED", &|s| {
        s.lines().any(|l| l.starts_with("build-1") && l.contains("COMPLETED"))
    });
    // Live tasks first: the finished one moved below the one still waiting.
    let line_of = |id: &str| done.lines().position(|l| l.starts_with(id)).unwrap();
    assert!(line_of("deploy-7") < line_of("build-1"), "{done}");

    // Ctrl-C: exit 0, the last frame stays.
    writer.write_all(b"\x03").unwrap();
    writer.flush().unwrap();
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || exited.send(child.wait()));
    let status = exit
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("the live view did not exit on Ctrl-C; the screen:\n{done}"))
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // The rest of its output, until the terminal closes.
    while let Ok(bytes) = rx.recv_timeout(DEADLINE) {
        screen.process(&bytes);
    }
    let last = rows(&screen);
    assert!(last.contains("build-1") && last.contains("COMPLETED"), "{last}");
    // Left as it was, not redrawn one line low under the echoed ^C.
    assert_eq!(last.lines().filter(|l| l.starts_with("ITC ")).count(), 1, "{last}");
    // The capture, for whoever reads the test log.
    println!("--- the live view, last frame ---\n{last}");
}

/// Against a server that requires tokens: none is exit 5 (not allowed), saying so; the
/// right one (`--token` or `ITC_TOKEN`) works; acting as someone else is exit 5 too.
#[test]
fn tokens_are_sent_and_refusals_exit_5() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[principal]]\nid = \"alice\"\nroles = [\"coordinator\"]\ntoken_sha256 = \"{}\"\n",
            itc_server::auth::token_sha256("alice-secret")
        ),
    )
    .unwrap();
    let settings = itc_server::config::Settings {
        auth_tokens_file: Some(path),
        ..common::memory()
    };
    let server = runtime.block_on(TestServer::start_with(settings));
    let uri = server.uri();

    let assert = itc().args(["--addr", &uri, "status"]).assert().code(5);
    assert!(stderr(&assert).contains("no credentials"), "{}", stderr(&assert));
    itc()
        .args(["--addr", &uri, "--token", "alice-secret", "status"])
        .assert()
        .success();
    itc()
        .args(["--addr", &uri, "sessions"])
        .env("ITC_TOKEN", "alice-secret")
        .assert()
        .success();
    // The steering session is the principal's own id, or refused.
    let assert = itc()
        .args([
            "--addr",
            &uri,
            "--token",
            "alice-secret",
            "--as",
            "bob",
            "interrupt",
            "--all",
        ])
        .assert()
        .code(5);
    assert!(stderr(&assert).contains("acts only as itself"), "{}", stderr(&assert));
    itc()
        .args([
            "--addr",
            &uri,
            "--token",
            "alice-secret",
            "--as",
            "alice",
            "interrupt",
            "--all",
        ])
        .assert()
        .success();
    let _ = runtime.block_on(server.stop());
}

/// Over mTLS: `--ca-cert` with `--client-cert`/`--client-key` works (a `host:port` address
/// then means https); without the client certificate the handshake fails, exit 6, and
/// the message says what the server answered.
#[test]
fn tls_flags_reach_an_mtls_server() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    };
    let sign = |issuer: &Issuer<'static, KeyPair>, names: &[&str]| {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (server_ca, server_issuer) = ca("server CA");
    let (client_ca, client_issuer) = ca("client CA");
    let (server_cert, server_key) = sign(&server_issuer, &["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = sign(&client_issuer, &["alice"]);
    let settings = itc_server::config::Settings {
        tls_cert_file: Some(file("server.pem", &server_cert)),
        tls_key_file: Some(file("server.key", &server_key)),
        tls_client_ca_file: Some(file("client-ca.pem", &client_ca)),
        ..common::memory()
    };
    let ca_pem = file("ca.pem", &server_ca);
    let (cert_pem, key_pem) = (file("client.pem", &client_cert), file("client.key", &client_key));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(TestServer::start_with(settings));
    let addr = server.addr.to_string();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let out = stdout(
        &itc()
            .args(["--addr", &addr, "--ca-cert", &path(&ca_pem)])
            .args([
                "--client-cert",
                &path(&cert_pem),
                "--client-key",
                &path(&key_pem),
                "status",
            ])
            .assert()
            .success(),
    );
    assert!(out.contains("IDLE"), "{out}");
    let assert = itc()
        .args([
            "--addr",
            &addr,
            "--ca-cert",
            &path(&ca_pem),
            "--connect-timeout",
            "5s",
            "status",
        ])
        .assert()
        .code(6);
    assert!(
        stderr(&assert).contains(&format!("https://{addr}")),
        "{}",
        stderr(&assert)
    );
    // A client certificate needs its key.
    itc()
        .args(["--addr", &addr, "--client-cert", &path(&cert_pem), "status"])
        .assert()
        .code(2);
    let _ = runtime.block_on(server.stop());
}
