//! `itc status --watch`: a live view, one line per task with a progress bar (indicatif),
//! redrawn as events arrive.
//!
//! It subscribes with a snapshot (the tasks as they are, then every change), so nothing
//! is polled: an event marks its task changed; the changed tasks are read back once per
//! burst of events (GetTask carries what events do not: the lock holder, open input
//! requests). A one-second tick only advances the shown durations.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use itc_client::{Client, Code, Event, EventType, StatusQuery, Task, TaskStatus};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

use crate::cli::StatusArgs;
use crate::commands::Interrupted;
use crate::error::CliError;
use crate::render::{cut, duration, paint, status_name, status_style};

/// How often the shown durations advance.
const TICK: Duration = Duration::from_secs(1);
/// Bar positions per task: progress is shown to a tenth of a percent.
const STEPS: u64 = 1000;

/// Where a task goes on screen: live tasks first, oldest first, then finished ones, most
/// recently finished first (the terminal's height cuts the list from the bottom).
type Order = (bool, std::cmp::Reverse<SystemTime>, SystemTime, String);

fn order(task: &Task) -> Order {
    let finished = task.status.is_some_and(TaskStatus::is_finished);
    let created = task.created.unwrap_or(UNIX_EPOCH);
    // For live tasks the second part is the same for all: creation order decides.
    let finish = if finished {
        task.finished.unwrap_or(created)
    } else {
        UNIX_EPOCH
    };
    (finished, std::cmp::Reverse(finish), created, task.id.clone())
}

/// One task on screen.
struct Row {
    task: Task,
    /// When `task` was read: the shown duration of a live task grows from here.
    read_at: Instant,
    bar: ProgressBar,
}

struct View {
    multi: MultiProgress,
    header: ProgressBar,
    columns: ProgressBar,
    rows: BTreeMap<Order, Row>,
    statuses: Vec<TaskStatus>,
    colors: bool,
    summary: String,
}

pub(crate) async fn run(client: Client, args: &StatusArgs, mut stop: Interrupted) -> Result<(), CliError> {
    // Keys typed (and the `^C` the terminal would echo) must not land in the frame.
    let _quiet = NoEcho::new();
    let mut builder = client.subscribe().snapshot(true);
    for agent in &args.agents {
        builder = builder.agent(agent);
    }
    let mut events = builder.start().await?;
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    // One line each: indicatif keeps count of lines per bar, and a message with a line
    // break in it throws that count off.
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(style("{msg}"));
    let columns = multi.add(ProgressBar::new_spinner());
    columns.set_style(style("{msg}"));
    let colors = anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never;
    let mut view = View {
        multi,
        header,
        columns,
        rows: BTreeMap::new(),
        statuses: args.statuses.iter().map(|&s| s.into()).collect(),
        colors,
        summary: String::new(),
    };
    view.summarize(&client).await?;
    view.draw();
    let mut tick = tokio::time::interval(TICK);
    let outcome = loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break Ok(()) };
                if let Err(e) = view.apply(&client, event, &mut events).await {
                    break Err(e);
                }
            }
            _ = tick.tick() => view.draw(),
            _ = &mut stop => break Ok(()),
        }
    };
    // Leave the last frame on screen as it is.
    for bar in [&view.header, &view.columns]
        .into_iter()
        .chain(view.rows.values().map(|r| &r.bar))
    {
        bar.abandon();
    }
    let _ = writeln!(std::io::stdout());
    outcome
}

/// Takes note of an event: the task it changed (and the task itself, for a snapshot).
/// True for a STREAM_RESET.
fn note(event: Event, changed: &mut BTreeSet<String>, fresh: &mut BTreeMap<String, Task>) -> bool {
    if event.kind == EventType::StreamReset {
        changed.clear();
        fresh.clear();
        return true;
    }
    if event.kind == EventType::Heartbeat {
        return false;
    }
    if let Some(task_id) = event.task_id {
        if let Some(task) = event.task.filter(|_| event.kind == EventType::TaskSnapshot) {
            fresh.insert(task_id.clone(), task);
        } else {
            fresh.remove(&task_id);
        }
        changed.insert(task_id);
    }
    false
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl View {
    /// Applies an event and the rest of its burst: one read per changed task, one redraw.
    async fn apply(
        &mut self,
        client: &Client,
        first: Result<Event, itc_client::Error>,
        events: &mut itc_client::EventStream,
    ) -> Result<(), CliError> {
        let mut changed = BTreeSet::new();
        let mut fresh = BTreeMap::new();
        let mut reset = note(first?, &mut changed, &mut fresh);
        while let Some(Some(event)) = events.next().now_or_never() {
            reset |= note(event?, &mut changed, &mut fresh);
        }
        if reset {
            // The stream fell past retention: fresh snapshots follow. A task that went away
            // meanwhile gets none, so the screen starts over from them.
            for row in std::mem::take(&mut self.rows).into_values() {
                self.multi.remove(&row.bar);
            }
        }
        for task_id in changed {
            let task = match fresh.remove(&task_id) {
                Some(task) => Some(task),
                None => match client.get_task(&task_id).await {
                    Ok(task) => Some(task),
                    Err(e) if e.code() == Some(Code::NotFound) => None,
                    Err(e) => return Err(e.into()),
                },
            };
            self.put(&task_id, task);
        }
        self.summarize(client).await?;
        self.draw();
        Ok(())
    }

    /// Puts the task as read (or removes it: gone, or filtered out by status).
    fn put(&mut self, task_id: &str, task: Option<Task>) {
        let old = self
            .rows
            .iter()
            .find(|(_, r)| r.task.id == task_id)
            .map(|(k, _)| k.clone());
        let shown = task.filter(|t| self.statuses.is_empty() || t.status.is_some_and(|s| self.statuses.contains(&s)));
        let new = shown.as_ref().map(order);
        if old.is_some() && old == new {
            if let (Some(row), Some(task)) = (old.and_then(|k| self.rows.get_mut(&k)), shown) {
                row.task = task;
                row.read_at = Instant::now();
            }
            return;
        }
        // New, gone, or moving (it finished): out of its old place, into its new one.
        if let Some(row) = old.and_then(|k| self.rows.remove(&k)) {
            self.multi.remove(&row.bar);
        }
        let (Some(key), Some(task)) = (new, shown) else { return };
        // Blank until `draw` styles it (the default style is a full-width bar).
        let bar = ProgressBar::new(STEPS).with_style(style("{prefix}"));
        let bar = match self.rows.range(key.clone()..).next() {
            Some((_, later)) => self.multi.insert_before(&later.bar, bar),
            None => self.multi.add(bar),
        };
        self.rows.insert(
            key,
            Row {
                task,
                read_at: Instant::now(),
                bar,
            },
        );
    }

    /// The header line: the service state and counts.
    async fn summarize(&mut self, client: &Client) -> Result<(), CliError> {
        let page = client
            .status(StatusQuery {
                page_size: 1,
                ..StatusQuery::default()
            })
            .await?;
        let state = page.state.as_str_name().trim_start_matches("SERVICE_STATE_");
        let interrupt = if page.global_interrupt {
            " · GLOBAL INTERRUPT"
        } else {
            ""
        };
        let sessions = page.sessions.len();
        self.summary = format!(
            "ITC {state} · {} live · {sessions} session{}{interrupt} · Ctrl-C to quit",
            page.active_tasks,
            if sessions == 1 { "" } else { "s" }
        );
        Ok(())
    }

    fn paint(&self, style: anstyle::Style, text: &str) -> String {
        if self.colors {
            paint(style, text)
        } else {
            text.to_owned()
        }
    }

    fn draw(&self) {
        let tasks: Vec<&Row> = self.rows.values().collect();
        let width = |f: &dyn Fn(&Row) -> usize| tasks.iter().map(|r| f(r)).max().unwrap_or(0);
        let id_w = width(&|r| r.task.id.chars().count()).min(36);
        let agent_w = width(&|r| r.task.agent_id.chars().count()).min(24);
        let status_w = width(&|r| status_text(&r.task).len());
        self.header.set_message(self.summary.clone());
        let columns = if tasks.is_empty() {
            "(no tasks yet)".to_owned()
        } else {
            let columns = format!(
                "{:<id_w$}  {:<agent_w$}  {:<status_w$}  {:<27}  {:>6}  {}",
                "TASK", "AGENT", "STATUS", "PROGRESS", "TIME", "LOCK · INPUT · MESSAGE"
            );
            self.paint(anstyle::Style::new().bold(), &columns)
        };
        self.columns.set_message(columns);
        for row in tasks {
            let task = &row.task;
            let live = !task.status.is_some_and(TaskStatus::is_finished);
            let status = format!("{:<status_w$}", status_text(task));
            row.bar.set_prefix(format!(
                "{:<id_w$}  {:<agent_w$}  {}",
                cut(&task.id, id_w),
                cut(&task.agent_id, agent_w),
                self.paint(status_style(task.status), &status)
            ));
            let color = match task.status {
                Some(TaskStatus::Running) => "cyan",
                Some(TaskStatus::Completed) => "green",
                Some(TaskStatus::Failed) => "red",
                Some(TaskStatus::Interrupted) => "yellow",
                Some(TaskStatus::InputRequired) => "magenta",
                _ => "white",
            };
            let bar = if self.colors {
                format!("{{bar:20.{color}}}")
            } else {
                "{bar:20}".into()
            };
            row.bar
                .set_style(style(&format!("{{prefix}}  {bar} {{percent:>3}}%  {{msg}}")).progress_chars("█▉▊▋▌▍▎▏░"));
            row.bar
                .set_position((task.progress.clamp(0.0, 1.0) * STEPS as f64).round() as u64);
            let elapsed = if live && task.status != Some(TaskStatus::Pending) {
                task.duration + row.read_at.elapsed()
            } else {
                task.duration
            };
            let mut parts = Vec::new();
            if let Some(lock) = &task.lock {
                parts.push(format!("locked by {}", lock.holder_id));
            }
            for input in &task.open_inputs {
                let choices = if input.choices.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", input.choices.join("/"))
                };
                parts.push(self.paint(
                    status_style(Some(TaskStatus::InputRequired)),
                    &format!("asks {:?}{choices} (itc answer {})", cut(&input.prompt, 40), input.id),
                ));
            }
            let message = task
                .error
                .as_deref()
                .or(task.reason.as_deref())
                .unwrap_or(&task.status_message);
            if !message.is_empty() {
                parts.push(cut(message, 48));
            }
            row.bar
                .set_message(format!("{:>6}  {}", duration(elapsed), parts.join(" · ")));
        }
    }
}

fn status_text(task: &Task) -> String {
    let mut text = status_name(task.status).to_owned();
    if task.stalled {
        text.push_str(" (stalled)");
    }
    if task.orphaned {
        text.push_str(" (orphaned)");
    }
    text
}

/// Turns the terminal's echo off while the view owns the screen (as `top` and `less` do),
/// and back on when dropped.
struct NoEcho {
    #[cfg(unix)]
    saved: Option<rustix::termios::Termios>,
}

impl NoEcho {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
            let stdout = std::io::stdout();
            let saved = tcgetattr(&stdout).ok();
            if let Some(saved) = &saved {
                let mut quiet = saved.clone();
                quiet.local_modes.remove(LocalModes::ECHO | LocalModes::ECHOCTL);
                let _ = tcsetattr(&stdout, OptionalActions::Now, &quiet);
            }
            Self { saved }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(std::io::stdout(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}
