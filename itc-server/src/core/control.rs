//! The seed's global verbs: interrupt all, resume all (its `clear_interrupts`), and the
//! plain-words interaction (its `handle_interaction`, with the keyword router it meant
//! to call).

use std::fmt::Write as _;
use std::time::SystemTime;

use super::commands::{CommandWait, CoordinateRequest};
use super::model::{CommandAction, EventType, JsonMap, SessionKind, TaskStatus};
use super::sessions::Capability::Interruption;
use super::{Core, State, Tx, validate};
use crate::error::CoreError;

/// The answer to an Interact call.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// The question, echoed.
    pub query: String,
    /// ITC's answer.
    pub response: String,
    /// When the question was received.
    pub time: SystemTime,
    /// The conversation's turn number.
    pub conversation_id: u64,
}

impl Core {
    /// Interrupts every RUNNING or INPUT_REQUIRED task (one tracked INTERRUPT command
    /// each, pushed to its agent) and sets the global interrupt. Locks are not consulted:
    /// this is the emergency stop.
    pub async fn interrupt_all(&self, coordinator_id: &str, reason: Option<String>) -> Result<Vec<String>, CoreError> {
        validate::id("coordinator_id", coordinator_id)?;
        validate::text("reason", reason.as_deref().unwrap_or(""))?;
        let reason = reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "Global interrupt".into());
        let (timeout, max_finished) = (
            self.inner.config.coordination_timeout,
            self.inner.config.max_finished_tasks,
        );
        self.write(|state, tx| {
            state.session_for(coordinator_id, Some(Interruption))?;
            Ok(state.interrupt_all(tx, coordinator_id, &reason, timeout, max_finished))
        })
        .await
    }

    /// Resumes every INTERRUPTED task (one tracked RESUME command each) and clears the
    /// global interrupt.
    pub async fn resume_all(&self, coordinator_id: &str) -> Result<Vec<String>, CoreError> {
        validate::id("coordinator_id", coordinator_id)?;
        let (timeout, max_finished) = (
            self.inner.config.coordination_timeout,
            self.inner.config.max_finished_tasks,
        );
        self.write(|state, tx| {
            state.session_for(coordinator_id, Some(Interruption))?;
            Ok(state.resume_all(tx, coordinator_id, timeout, max_finished))
        })
        .await
    }

    /// Answers a question in plain words, as the seed's `handle_interaction` meant to:
    /// status/progress/what/how → a summary; stop/interrupt/cancel/halt → interrupt all;
    /// resume/continue/proceed → resume all; anything else → what ITC can help with.
    /// Counts the interaction and the query by the requester's kind.
    pub async fn interact(
        &self,
        query: &str,
        requestor_id: Option<&str>,
        requestor_kind: Option<SessionKind>,
    ) -> Result<Interaction, CoreError> {
        validate::required_text("query", query)?;
        if let Some(id) = requestor_id {
            validate::id("requestor_id", id)?;
        }
        let (timeout, max_finished) = (
            self.inner.config.coordination_timeout,
            self.inner.config.max_finished_tasks,
        );
        let kind = requestor_kind.unwrap_or(SessionKind::Human);
        let query = query.to_owned();
        self.write(move |state, tx| {
            let words = query.to_lowercase();
            let has = |keys: &[&str]| keys.iter().any(|k| words.contains(k));
            let acting = requestor_id.unwrap_or("interact");
            let wants_stop = has(&["stop", "interrupt", "cancel", "halt"]);
            let wants_resume = has(&["resume", "continue", "proceed"]);
            let wants_status = has(&["status", "progress", "what", "how"]);
            if !wants_status && (wants_stop || wants_resume) {
                // Stopping or resuming everything is an act of a connected session with
                // the interruption capability, as InterruptAll and ResumeAll are.
                let Some(id) = requestor_id else {
                    return Err(CoreError::PermissionDenied(
                        "stop and resume need `requestor_id`: a connected session with the interruption \
                         capability"
                            .into(),
                    ));
                };
                state.session_for(id, Some(Interruption))?;
            }
            let response = if wants_status {
                state.summary(tx.time)
            } else if wants_stop {
                let ids = state.interrupt_all(tx, acting, "User requested stop", timeout, max_finished);
                if ids.is_empty() {
                    "No active tasks to interrupt.".to_owned()
                } else {
                    format!("Interrupted {} active task(s): {}", ids.len(), ids.join(", "))
                }
            } else if wants_resume {
                state.resume_all(tx, acting, timeout, max_finished);
                "Cleared interrupt flags. Tasks can resume.".to_owned()
            } else {
                format!(
                    "I understand you asked: '{query}'. I can help with status queries, interrupts, or task \
                     management. What would you like to know?"
                )
            };
            state.counters.coordinator_interactions += 1;
            match kind {
                SessionKind::Human => state.counters.human_queries += 1,
                _ => state.counters.agent_queries += 1,
            }
            state.interactions += 1;
            tx.batch
                .meta
                .push(("interactions", i64::try_from(state.interactions).unwrap_or(i64::MAX)));
            let mut data = JsonMap::new();
            data.insert("query".into(), query.clone().into());
            data.insert("requestor_kind".into(), format!("{kind:?}").into());
            tx.global_event(EventType::CoordinatorQuery, requestor_id, data);
            if let Some(id) = requestor_id {
                state.touch_session(id);
            }
            Ok(Interaction {
                query,
                response,
                time: tx.time,
                conversation_id: state.interactions,
            })
        })
        .await
    }
}

impl State {
    fn interrupt_all(
        &mut self,
        tx: &mut Tx,
        coordinator_id: &str,
        reason: &str,
        timeout: std::time::Duration,
        max_finished: usize,
    ) -> Vec<String> {
        self.global_interrupt = true;
        tx.batch.meta.push(("global_interrupt", 1));
        let targets = self.tasks_in(&[TaskStatus::Running, TaskStatus::InputRequired]);
        self.command_each(
            tx,
            coordinator_id,
            CommandAction::Interrupt,
            Some(reason),
            targets,
            timeout,
            max_finished,
        )
    }

    fn resume_all(
        &mut self,
        tx: &mut Tx,
        coordinator_id: &str,
        timeout: std::time::Duration,
        max_finished: usize,
    ) -> Vec<String> {
        self.global_interrupt = false;
        tx.batch.meta.push(("global_interrupt", 0));
        let targets = self.tasks_in(&[TaskStatus::Interrupted]);
        self.command_each(
            tx,
            coordinator_id,
            CommandAction::Resume,
            None,
            targets,
            timeout,
            max_finished,
        )
    }

    fn tasks_in(&self, statuses: &[TaskStatus]) -> Vec<String> {
        self.tasks
            .values()
            .filter(|t| statuses.contains(&t.status))
            .map(|t| t.id.clone())
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn command_each(
        &mut self,
        tx: &mut Tx,
        coordinator_id: &str,
        action: CommandAction,
        reason: Option<&str>,
        targets: Vec<String>,
        timeout: std::time::Duration,
        max_finished: usize,
    ) -> Vec<String> {
        let data = reason.map(|r| {
            let mut d = JsonMap::new();
            d.insert("reason".into(), r.into());
            d
        });
        let mut done = Vec::with_capacity(targets.len());
        for task_id in targets {
            let request = CoordinateRequest {
                task_id: task_id.clone(),
                coordinator_id: coordinator_id.to_owned(),
                action,
                data: data.clone(),
                fencing_token: 0,
                expected_version: None,
                idempotency_key: None,
                wait: CommandWait::Admitted,
                wait_timeout: None,
            };
            if self.admit(tx, request, 0, timeout, max_finished).is_ok() {
                done.push(task_id);
            }
        }
        done
    }

    /// The seed's status answer.
    fn summary(&self, now: SystemTime) -> String {
        let live: Vec<_> = self.tasks.values().filter(|t| t.is_live()).collect();
        if live.is_empty() {
            return "I'm currently idle. No active tasks running.".to_owned();
        }
        let mut out = format!("Currently running {} task(s):\n", live.len());
        for task in live {
            let _ = writeln!(
                out,
                "Task '{}' is {:.0}% complete (running for {:.1}s)",
                task.description,
                task.progress * 100.0,
                task.duration(now).as_secs_f64()
            );
        }
        out.trim_end().to_owned()
    }
}

impl Tx {
    /// An event about no task in particular (COORDINATOR_QUERY of Interact).
    fn global_event(&mut self, kind: EventType, coordinator_id: Option<&str>, data: JsonMap) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch.events.push(std::sync::Arc::new(super::Event {
            seq,
            kind,
            time: self.time,
            task_id: None,
            agent_id: None,
            coordinator_id: coordinator_id.map(str::to_owned),
            caused_by: None,
            data: Some(data),
            task_version: 0,
            task_status: None,
            detail: super::EventDetail::None,
            wire: Default::default(),
        }));
        seq
    }
}
