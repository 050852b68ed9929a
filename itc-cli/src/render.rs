//! How things look: status colours, durations, progress bars, tables, event lines, and
//! the JSON shapes `--json` prints.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anstyle::{AnsiColor, Style};
use itc_client::{Command, Event, EventType, InputRequest, SessionInfo, Task, TaskStatus};
use serde_json::{Value, json};

use crate::cli::short_event_name;

/// A task status as shown: `RUNNING`, `INPUT_REQUIRED`…
pub(crate) fn status_name(status: Option<TaskStatus>) -> &'static str {
    match status {
        Some(TaskStatus::Pending) => "PENDING",
        Some(TaskStatus::Running) => "RUNNING",
        Some(TaskStatus::Interrupted) => "INTERRUPTED",
        Some(TaskStatus::InputRequired) => "INPUT_REQUIRED",
        Some(TaskStatus::Completed) => "COMPLETED",
        Some(TaskStatus::Failed) => "FAILED",
        Some(TaskStatus::Cancelled) => "CANCELLED",
        _ => "UNKNOWN",
    }
}

/// The colour of a status.
pub(crate) fn status_style(status: Option<TaskStatus>) -> Style {
    let color = match status {
        Some(TaskStatus::Running) => AnsiColor::Cyan,
        Some(TaskStatus::Completed) => AnsiColor::Green,
        Some(TaskStatus::Failed) => AnsiColor::Red,
        Some(TaskStatus::Interrupted) => AnsiColor::Yellow,
        Some(TaskStatus::InputRequired) => AnsiColor::Magenta,
        _ => return Style::new().dimmed(),
    };
    Style::new().fg_color(Some(color.into())).bold()
}

/// `text` in `style` (the ANSI codes are stripped on output when colours are off).
pub(crate) fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// A status with its flags, coloured: `RUNNING (stalled)`.
pub(crate) fn status_cell(task: &Task) -> String {
    let mut text = status_name(task.status).to_owned();
    if task.stalled {
        text.push_str(" (stalled)");
    }
    if task.orphaned {
        text.push_str(" (orphaned)");
    }
    paint(status_style(task.status), &text)
}

/// A compact duration: `0s`, `42s`, `3m05s`, `1h02m`, `2d03h`.
pub(crate) fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago `t` was, compactly (`-` when unknown).
pub(crate) fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{} ago", duration(d)),
        None => "-".into(),
    }
}

/// How long until `t` (`-` when unknown or past).
pub(crate) fn within(t: Option<SystemTime>) -> String {
    match t.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
        Some(d) => format!("in {}", duration(d)),
        None => "-".into(),
    }
}

/// A text progress bar: `████▌░░░░░ 45%`.
pub(crate) fn bar(progress: f64, width: usize) -> String {
    let progress = if progress.is_finite() {
        progress.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let eighths = (progress * width as f64 * 8.0).round() as usize;
    let mut out = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        out.push([' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8]);
    }
    let filled = out.chars().count();
    out.push_str(&"░".repeat(width.saturating_sub(filled)));
    format!("{out} {:>3.0}%", progress * 100.0)
}

/// At most `max` characters of `text`, with `…` when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The number of characters `text` shows (ANSI styles do not count).
fn shown_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// Rows under a bold header, columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(shown_width(cell));
        }
    }
    let bold = Style::new().bold();
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(w - shown_width(cell) + 2));
            }
        }
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    };
    line(header.iter().map(|h| paint(bold, h)).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

/// The status table's columns.
pub(crate) const TASK_HEADER: [&str; 8] = [
    "TASK", "AGENT", "STATUS", "PROGRESS", "TIME", "LOCK", "INPUT", "MESSAGE",
];

/// One task as a row of the status table.
pub(crate) fn task_row(task: &Task) -> Vec<String> {
    let progress = if task.status.is_some_and(TaskStatus::is_finished) {
        format!("{:>3.0}%", task.progress * 100.0)
    } else {
        bar(task.progress, 10)
    };
    let message = task
        .error
        .as_deref()
        .or(task.reason.as_deref())
        .unwrap_or(&task.status_message);
    vec![
        task.id.clone(),
        task.agent_id.clone(),
        status_cell(task),
        progress,
        duration(task.duration),
        task.lock.as_ref().map_or("-".into(), |l| l.holder_id.clone()),
        match task.open_inputs.len() {
            0 => "-".into(),
            n => paint(status_style(Some(TaskStatus::InputRequired)), &format!("{n} open")),
        },
        cut(message, 48),
    ]
}

/// The open input requests of `tasks`, as a table to answer from.
pub(crate) fn inputs_table(tasks: &[Task]) -> Option<String> {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .flat_map(|t| &t.open_inputs)
        .map(|i| {
            vec![
                i.id.clone(),
                i.task_id.clone(),
                cut(&i.prompt, 60),
                if i.choices.is_empty() {
                    "-".into()
                } else {
                    i.choices.join(" / ")
                },
            ]
        })
        .collect();
    (!rows.is_empty()).then(|| table(&["INPUT REQUEST", "TASK", "QUESTION", "CHOICES"], &rows))
}

/// The sessions table.
pub(crate) fn sessions_table(sessions: &[SessionInfo]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let mut caps = Vec::new();
            for (on, name) in [
                (s.capabilities.streaming, "streaming"),
                (s.capabilities.interruption, "interruption"),
                (s.capabilities.task_coordination, "coordination"),
            ] {
                if on {
                    caps.push(name);
                }
            }
            vec![
                s.id.clone(),
                kind_name(s.kind).to_owned(),
                ago(s.connected),
                ago(s.last_activity),
                within(s.lease_expires),
                s.subscriptions.len().to_string(),
                if s.locked_task_ids.is_empty() {
                    "-".into()
                } else {
                    s.locked_task_ids.join(", ")
                },
                if caps.is_empty() { "-".into() } else { caps.join(", ") },
            ]
        })
        .collect();
    table(
        &[
            "SESSION",
            "KIND",
            "CONNECTED",
            "LAST SEEN",
            "LEASE ENDS",
            "STREAMS",
            "LOCKS",
            "CAPABILITIES",
        ],
        &rows,
    )
}

fn kind_name(kind: itc_client::SessionKind) -> &'static str {
    let name = kind.as_str_name();
    name.strip_prefix("SESSION_KIND_").unwrap_or(name)
}

fn time_json(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_millis(t).to_string())
    })
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

/// A task as JSON (what `itc status --json` lists).
pub(crate) fn task_json(t: &Task) -> Value {
    json!({
        "task_id": t.id,
        "agent_id": t.agent_id,
        "description": t.description,
        "status": status_name(t.status),
        "progress": t.progress,
        "status_message": t.status_message,
        "priority": t.priority,
        "version": t.version,
        "duration_seconds": t.duration.as_secs_f64(),
        "created": time_json(t.created),
        "finished": time_json(t.finished),
        "lock": t.lock.as_ref().map_or(Value::Null, |l| json!({
            "holder_id": l.holder_id,
            "fencing_token": l.fencing_token,
            "expires": time_json(l.expires),
        })),
        "controlling_coordinator": opt(t.controlling_coordinator.clone()),
        "open_inputs": t.open_inputs.iter().map(input_json).collect::<Vec<_>>(),
        "open_commands": t.open_commands.iter().map(command_json).collect::<Vec<_>>(),
        "stalled": t.stalled,
        "orphaned": t.orphaned,
        "metadata": opt(t.metadata.clone()),
        "plan": opt(t.plan.clone()),
        "plan_version": t.plan_version,
        "result": opt(t.result.clone()),
        "error": opt(t.error.clone()),
        "reason": opt(t.reason.clone()),
    })
}

/// An input request as JSON.
pub(crate) fn input_json(i: &InputRequest) -> Value {
    json!({
        "request_id": i.id,
        "task_id": i.task_id,
        "prompt": i.prompt,
        "choices": i.choices,
        "state": screaming(&format!("{:?}", i.state)),
        "answer": opt(i.answer.clone()),
        "answered_by": opt(i.answered_by.clone()),
        "deadline": time_json(i.deadline),
    })
}

/// A command as JSON.
pub(crate) fn command_json(c: &Command) -> Value {
    json!({
        "command_id": c.id,
        "task_id": c.task_id,
        "coordinator_id": c.coordinator_id,
        "action": action_name(c.action),
        "data": opt(c.data.clone()),
        "state": command_state_name(c.state),
        "reason": opt(c.reason.clone()),
        "result": opt(c.result.clone()),
    })
}

/// `BOOST_PRIORITY`…
pub(crate) fn action_name(a: itc_client::Action) -> String {
    screaming(&format!("{a:?}"))
}

/// `APPLIED`, `TIMED_OUT`…
pub(crate) fn command_state_name(s: itc_client::CommandState) -> String {
    screaming(&format!("{s:?}"))
}

/// `TimedOut` as `TIMED_OUT`.
fn screaming(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// An event as one JSON object (what `itc watch --json` prints per line).
pub(crate) fn event_json(e: &Event) -> Value {
    json!({
        "seq": e.seq,
        "type": short_event_name(e.kind),
        "time": time_json(e.time),
        "task_id": opt(e.task_id.clone()),
        "agent_id": opt(e.agent_id.clone()),
        "coordinator_id": opt(e.coordinator_id.clone()),
        "caused_by": opt(e.caused_by.clone()),
        "task_version": e.task_version,
        "task_status": e.task_status.map_or(Value::Null, |s| status_name(Some(s)).into()),
        "progress": e.progress.as_ref().map_or(Value::Null, |(p, m)| json!({"progress": p, "message": m})),
        "data": opt(e.data.clone()),
        "command": e.command.as_ref().map_or(Value::Null, command_json),
        "input": e.input.as_ref().map_or(Value::Null, input_json),
        "task": e.task.as_ref().map_or(Value::Null, task_json),
    })
}

/// An event as one human-readable line.
pub(crate) fn event_line(e: &Event) -> String {
    let time = e.time.map_or_else(
        || "-".repeat(12),
        |t| {
            let full = humantime::format_rfc3339_millis(t).to_string();
            full.get(11..23).unwrap_or(&full).to_owned()
        },
    );
    let kind = short_event_name(e.kind);
    let kind_style = match e.kind {
        EventType::TaskCompleted => status_style(Some(TaskStatus::Completed)),
        EventType::TaskFailed | EventType::CoordinationRejected | EventType::CoordinationTimedOut => {
            status_style(Some(TaskStatus::Failed))
        }
        EventType::TaskInterrupted | EventType::TaskStalled | EventType::TaskOrphaned => {
            status_style(Some(TaskStatus::Interrupted))
        }
        EventType::InputRequested => status_style(Some(TaskStatus::InputRequired)),
        EventType::Heartbeat => Style::new().dimmed(),
        _ => Style::new().bold(),
    };
    let mut line = format!(
        "{time}  {:>6}  {} ",
        format!("#{}", e.seq),
        paint(kind_style, &format!("{kind:<24}"))
    );
    let who = match (&e.task_id, &e.agent_id) {
        (Some(t), Some(a)) => format!("{t} ({a})"),
        (Some(t), None) => t.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => e.coordinator_id.clone().unwrap_or_default(),
    };
    line.push_str(&who);
    let mut detail = String::new();
    if let Some((p, m)) = &e.progress {
        let _ = write!(detail, "{:.0}%", p * 100.0);
        if !m.is_empty() {
            let _ = write!(detail, " {m}");
        }
    }
    if let Some(c) = &e.command {
        let _ = write!(
            detail,
            "{} by {} ({})",
            action_name(c.action),
            c.coordinator_id,
            command_state_name(c.state)
        );
        if let Some(reason) = &c.reason {
            let _ = write!(detail, ": {reason}");
        }
    }
    if let Some(i) = &e.input {
        match &i.answer {
            Some(answer) => {
                let _ = write!(detail, "answered {answer}");
                if let Some(by) = &i.answered_by {
                    let _ = write!(detail, " by {by}");
                }
            }
            None => {
                let _ = write!(detail, "asks {:?}", i.prompt);
                if !i.choices.is_empty() {
                    let _ = write!(detail, " [{}]", i.choices.join("/"));
                }
                let _ = write!(detail, " (request {})", i.id);
            }
        }
    }
    if let Some(t) = &e.task {
        let _ = write!(
            detail,
            "{} {:.0}% {}",
            status_name(t.status),
            t.progress * 100.0,
            t.status_message
        );
    }
    if let Some(data) = &e.data
        && e.command.is_none()
    {
        if !detail.is_empty() {
            detail.push(' ');
        }
        detail.push_str(&data.to_string());
    }
    if e.kind == EventType::Heartbeat {
        detail.clear();
    }
    if !detail.is_empty() {
        line.push_str("  ");
        line.push_str(detail.trim_end());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_compact() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (185, "3m05s"),
            (3720, "1h02m"),
            (183_600, "2d03h"),
        ];
        for (secs, shown) in cases {
            assert_eq!(duration(Duration::from_secs(secs)), shown);
        }
    }

    #[test]
    fn bars_fill_by_eighths() {
        assert_eq!(bar(0.0, 4), "░░░░   0%");
        assert_eq!(bar(0.5, 4), "██░░  50%");
        assert_eq!(bar(0.53125, 4), "██▏░  53%");
        assert_eq!(bar(1.0, 4), "████ 100%");
        assert_eq!(bar(f64::NAN, 2), "░░   0%");
        assert_eq!(bar(7.0, 2), "██ 100%");
    }

    #[test]
    fn tables_pad_by_shown_width() {
        let red = paint(Style::new().fg_color(Some(AnsiColor::Red.into())), "FAILED");
        let out = table(
            &["A", "B"],
            &[vec![red, "x".into()], vec!["long cell".into(), "y".into()]],
        );
        let plain: Vec<String> = out
            .lines()
            .map(|l| anstream::adapter::strip_str(l).to_string())
            .collect();
        assert_eq!(plain, ["A          B", "FAILED     x", "long cell  y"]);
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(action_name(itc_client::Action::BoostPriority), "BOOST_PRIORITY");
        assert_eq!(command_state_name(itc_client::CommandState::TimedOut), "TIMED_OUT");
    }
}
