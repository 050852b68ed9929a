//! Status polling: filtered, paginated task listings with the statistics.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Core, Counters, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, StreamStats, Task, TaskStatus, validate};
use crate::error::CoreError;

/// A status query: filters and a page.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// Only these states; empty: all.
    pub statuses: Vec<TaskStatus>,
    /// Only these agents; empty: all.
    pub agent_ids: Vec<String>,
    /// Page size; 0: [`DEFAULT_PAGE_SIZE`].
    pub page_size: usize,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// The service-level state (the seed's `ITCStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// No live task.
    Idle,
    /// At least one live task.
    Running,
    /// A global interrupt is in force.
    Interrupted,
}

/// A page of a status query, with everything GetStatus reports.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// Service-level state.
    pub state: ServiceState,
    /// Matching tasks of this page, oldest first.
    pub tasks: Vec<Arc<Task>>,
    /// Token of the next page, if there is one.
    pub next_page_token: Option<String>,
    /// Matching tasks on all pages.
    pub total_size: u64,
    /// Live tasks, whatever the filters.
    pub active_tasks: u64,
    /// Whether a global interrupt is in force.
    pub global_interrupt: bool,
    /// Known tasks by status, in [`TaskStatus::ALL`] order.
    pub tasks_by_status: [u64; 7],
    /// Counters.
    pub counters: Counters,
    /// When the service started.
    pub started_at: SystemTime,
    /// The newest seq.
    pub head_seq: u64,
    /// The oldest retained seq.
    pub oldest_retained_seq: u64,
    /// Stream counters.
    pub streams: StreamStats,
    /// When this page was taken.
    pub time: SystemTime,
}

impl Core {
    /// Tasks matching a query, one page, with the statistics.
    pub fn status(&self, query: &StatusQuery) -> Result<StatusPage, CoreError> {
        let max_entries = self.inner.config.max_filter_entries;
        validate::entries("agent_ids", query.agent_ids.len(), max_entries)?;
        validate::entries("statuses", query.statuses.len(), max_entries)?;
        for agent in &query.agent_ids {
            validate::id("agent_ids", agent)?;
        }
        let page_size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(CoreError::invalid(
                    "page_size",
                    format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        let statuses: HashSet<TaskStatus> = query.statuses.iter().copied().collect();
        let agents: HashSet<&str> = query.agent_ids.iter().map(String::as_str).collect();
        let fingerprint = filter_fingerprint(&statuses, &agents);
        let after = match query.page_token.as_deref() {
            None | Some("") => None,
            Some(token) => Some(parse_page_token(token, fingerprint)?),
        };

        let oldest_retained_seq = self.inner.store.oldest_seq();
        let state = self.state();
        let tasks_by_status = state.by_status;
        #[cfg(debug_assertions)]
        {
            // Every test checks the kept counts against a full count.
            let mut recount = [0u64; 7];
            for task in state.tasks.values() {
                recount[task.status.index()] += 1;
            }
            debug_assert_eq!(recount, tasks_by_status, "by_status is out of step with the tasks");
        }
        let matches = |task: &Task| {
            (statuses.is_empty() || statuses.contains(&task.status))
                && (agents.is_empty() || agents.contains(task.agent_id.as_str()))
        };
        // The total comes from the counts unless agents are filtered (then it is counted).
        let total = if agents.is_empty() {
            if statuses.is_empty() {
                state.tasks.len() as u64
            } else {
                statuses.iter().map(|s| tasks_by_status[s.index()]).sum()
            }
        } else {
            state.tasks.values().filter(|t| matches(t)).count() as u64
        };
        // The page: from the token's position, only as far as it takes to fill it.
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut page = Vec::with_capacity(page_size.min(state.tasks.len()));
        let mut last_in_page = None;
        let mut more = false;
        for (seq, task) in state.tasks.range(from..) {
            if !matches(task) {
                continue;
            }
            if page.len() == page_size {
                more = true;
                break;
            }
            page.push(task.clone());
            last_in_page = Some(*seq);
        }
        let active = tasks_by_status[..4].iter().sum::<u64>();
        let state_kind = if state.global_interrupt {
            ServiceState::Interrupted
        } else if active > 0 {
            ServiceState::Running
        } else {
            ServiceState::Idle
        };
        Ok(StatusPage {
            state: state_kind,
            tasks: page,
            next_page_token: if more {
                last_in_page.map(|seq| format!("{seq}.{fingerprint:016x}"))
            } else {
                None
            },
            total_size: total,
            active_tasks: active,
            global_interrupt: state.global_interrupt,
            tasks_by_status,
            counters: state.counters.clone(),
            started_at: self.inner.started_at,
            head_seq: state.head_seq,
            oldest_retained_seq,
            streams: self.stream_stats(),
            time: SystemTime::now(),
        })
    }
}

/// A fingerprint of a query's filters, carried in its page tokens so that a token is not
/// used with other filters.
fn filter_fingerprint(statuses: &HashSet<TaskStatus>, agents: &HashSet<&str>) -> u64 {
    let mut s: Vec<usize> = statuses.iter().map(|s| s.index()).collect();
    s.sort_unstable();
    let mut a: Vec<&str> = agents.iter().copied().collect();
    a.sort_unstable();
    let mut hasher = DefaultHasher::new();
    s.hash(&mut hasher);
    a.hash(&mut hasher);
    hasher.finish()
}

fn parse_page_token(token: &str, fingerprint: u64) -> Result<u64, CoreError> {
    let bad = || CoreError::invalid("page_token", "not a token from a previous GetStatus response");
    let (seq, print) = token.split_once('.').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let print = u64::from_str_radix(print, 16).map_err(|_| bad())?;
    if print != fingerprint {
        return Err(CoreError::invalid(
            "page_token",
            "was issued for different filters (statuses, agent_ids)",
        ));
    }
    Ok(seq)
}
