//! Deadlines: session leases, lock leases, command timeouts, input deadlines and task
//! stalls, in one ordered set served by one background task.
//!
//! Timers are lazy: a renewal only moves the deadline kept with its object; when the old
//! timer fires it finds the new deadline and re-arms itself. So a heartbeat or a progress
//! report costs no timer work.

use tokio::time::Instant;

use super::model::{EventDetail, EventType, SessionEnd, TaskStatus};
use super::{Core, State, Tx};
use crate::error::CoreError;

/// What a timer is for; its subject is named by id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A session's lease.
    Session(String),
    /// The lock of a task.
    Lock(String),
    /// A command's deadline.
    Command(String),
    /// An input request's deadline.
    Input(String),
    /// A task's stall check.
    Stall(String),
    /// After a restart: flag the task ORPHANED unless its agent came back.
    Orphan(String),
}

impl State {
    /// Arms `timer` at `at`, waking the timer task if it is now the earliest.
    pub(crate) fn arm(&mut self, at: Instant, timer: Timer) {
        let earliest = self.timers.first().map(|(t, _)| *t);
        self.timers.insert((at, timer));
        if earliest.is_none_or(|e| at < e) {
            self.timer_signal.notify_one();
        }
    }

    fn fire(&mut self, tx: &mut Tx, timer: Timer, now: Instant) {
        match timer {
            Timer::Session(id) => {
                if let Some(deadline) = self.sessions.get(&id).map(|s| s.lease_deadline) {
                    if deadline <= now {
                        self.end_session(tx, &id, SessionEnd::LeaseExpired);
                    } else {
                        self.arm(deadline, Timer::Session(id));
                    }
                }
            }
            Timer::Lock(task_id) => {
                if let Some(deadline) = self.lock_deadlines.get(&task_id).copied() {
                    if deadline <= now {
                        self.release_lock(tx, &task_id, super::model::LockCause::Expired);
                    } else {
                        self.arm(deadline, Timer::Lock(task_id));
                    }
                }
            }
            Timer::Command(id) => self.time_out_command(tx, &id, now),
            Timer::Input(id) => self.expire_input(tx, &id, now),
            Timer::Stall(task_id) => self.check_stall(tx, &task_id, now),
            Timer::Orphan(task_id) => self.orphan_unless_back(tx, &task_id),
        }
    }

    /// A live task whose agent has no session (after a restart's grace) is ORPHANED.
    fn orphan_unless_back(&mut self, tx: &mut Tx, task_id: &str) {
        let Some(agent) = self
            .task_by_id(task_id)
            .filter(|t| t.is_live() && !t.orphaned)
            .map(|t| t.agent_id.clone())
        else {
            return;
        };
        // Back: connected, or reported on the task since the restart.
        let reported = self
            .activity
            .get(task_id)
            .zip(self.recovered_at)
            .is_some_and(|(last, recovered)| *last > recovered);
        if self.sessions.contains_key(&agent) || reported {
            return;
        }
        if let Some(task) = self.task_mut(task_id) {
            task.orphaned = true;
            task.version += 1;
            task.update_time = tx.time;
            let snapshot = Box::new(task.clone());
            tx.event(EventType::TaskOrphaned, task, EventDetail::Task(snapshot), None);
            tx.changed(task);
        }
    }

    /// Flags a RUNNING task STALLED once it went `stall_timeout` without progress or a
    /// heartbeat vouching for it; keeps checking while the task is live.
    fn check_stall(&mut self, tx: &mut Tx, task_id: &str, now: Instant) {
        let Some((timeout, status, stalled)) = self
            .task_by_id(task_id)
            .filter(|t| t.is_live())
            .map(|t| (t.stall_timeout, t.status, t.stalled))
        else {
            self.activity.remove(task_id);
            return;
        };
        let last = self.activity.get(task_id).copied().unwrap_or(now);
        let deadline = last + timeout;
        if status != TaskStatus::Running || stalled || deadline > now {
            let next = if deadline > now { deadline } else { now + timeout };
            self.arm(next, Timer::Stall(task_id.to_owned()));
            return;
        }
        if let Some(task) = self.task_mut(task_id) {
            task.stalled = true;
            task.version += 1;
            task.update_time = tx.time;
            let snapshot = Box::new(task.clone());
            tx.event(EventType::TaskStalled, task, EventDetail::Task(snapshot), None);
            tx.changed(task);
        }
        self.arm(now + timeout, Timer::Stall(task_id.to_owned()));
    }
}

impl Core {
    /// Serves the timers until the core closes. The server spawns this once.
    pub async fn run_timers(self) {
        let mut drain = self.inner.hub.drain_signal();
        let signal = self.state().timer_signal.clone();
        loop {
            if *drain.borrow() {
                return;
            }
            let next = self.state().timers.first().map(|(at, _)| *at);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = signal.notified() => continue,
                _ = drain.changed() => return,
            }
            let now = Instant::now();
            let due: Vec<Timer> = {
                let mut state = self.state();
                let mut due = Vec::new();
                while state.timers.first().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, timer)) = state.timers.pop_first() {
                        due.push(timer);
                    }
                }
                due
            };
            for timer in due {
                if let Err(e) = self.fire(timer.clone(), now).await {
                    tracing::warn!(?timer, error = %e, "timer could not be applied");
                }
            }
        }
    }

    async fn fire(&self, timer: Timer, now: Instant) -> Result<(), CoreError> {
        self.write(|state, tx| {
            state.fire(tx, timer, now);
            Ok(())
        })
        .await
    }
}
