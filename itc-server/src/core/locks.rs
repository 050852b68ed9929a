//! Locks on tasks: leases with fencing tokens, for multi-step coordination.
//!
//! A grant's fencing token is the seq of its LOCK_ACQUIRED event: strictly increasing
//! across all grants, and never reused after a restart because the log's seq is not.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::model::{EventDetail, EventType, LockCause, TaskLock};
use super::sessions::Capability::TaskCoordination;
use super::timers::Timer;
use super::{Core, State, Tx, validate};
use crate::error::CoreError;

impl Core {
    /// Takes the lock of a live task for `lease` (at most `coordination_timeout`). Held
    /// by another: ABORTED naming the holder and expiry. Held by the caller: renewed.
    pub async fn acquire_lock(
        &self,
        task_id: &str,
        coordinator_id: &str,
        lease: Option<Duration>,
    ) -> Result<TaskLock, CoreError> {
        validate::id("task_id", task_id)?;
        validate::id("coordinator_id", coordinator_id)?;
        let lease = self.lock_lease(lease);
        self.write(|state, tx| {
            state.session_for(coordinator_id, Some(TaskCoordination))?;
            state.live(task_id, "take its lock")?;
            if let Some(lock) = state.effective_lock(task_id) {
                if lock.holder_id != coordinator_id {
                    return Err(held_by_other(task_id, lock));
                }
                // A retried acquire of the holder: extend, same token.
                return state
                    .extend_lock(task_id, lease)
                    .ok_or_else(|| CoreError::Aborted(format!("task `{task_id}` lost its lock")));
            }
            // Every check passed: a lease that ran out is freed now (its timer may lag).
            state.expire_lock_if_due(tx, task_id);
            let task = state.live_task(task_id, "take its lock")?;
            let now = Instant::now();
            let lock = TaskLock {
                holder_id: coordinator_id.to_owned(),
                fencing_token: tx.next_seq,
                expire_time: tx.time + lease,
                acquire_time: tx.time,
            };
            task.lock = Some(lock.clone());
            let detail = EventDetail::Lock {
                lock: lock.clone(),
                cause: LockCause::Acquired,
            };
            let seq = tx.event(EventType::LockAcquired, task, detail, None);
            debug_assert_eq!(seq, lock.fencing_token);
            if let Some(event) = tx.batch.events.last_mut() {
                Arc::make_mut(event).coordinator_id = Some(coordinator_id.to_owned());
            }
            state.lock_deadlines.insert(task_id.to_owned(), now + lease);
            if let Some(session) = state.sessions.get_mut(coordinator_id) {
                session.locks.insert(task_id.to_owned());
            }
            state.arm(now + lease, Timer::Lock(task_id.to_owned()));
            Ok(lock)
        })
        .await
    }

    /// Extends a held lock; the token must be the current grant's.
    pub async fn renew_lock(
        &self,
        task_id: &str,
        coordinator_id: &str,
        fencing_token: u64,
        lease: Option<Duration>,
    ) -> Result<TaskLock, CoreError> {
        validate::id("task_id", task_id)?;
        validate::id("coordinator_id", coordinator_id)?;
        let lease = self.lock_lease(lease);
        self.write(|state, _tx| {
            state.session_for(coordinator_id, Some(TaskCoordination))?;
            state.check_holder(task_id, coordinator_id, fencing_token)?;
            state
                .extend_lock(task_id, lease)
                .ok_or_else(|| CoreError::Aborted(format!("task `{task_id}` lost its lock")))
        })
        .await
    }

    /// Frees a held lock; the token must be the current grant's.
    pub async fn release_lock(&self, task_id: &str, coordinator_id: &str, fencing_token: u64) -> Result<(), CoreError> {
        validate::id("task_id", task_id)?;
        validate::id("coordinator_id", coordinator_id)?;
        self.write(|state, tx| {
            state.session_for(coordinator_id, None)?;
            state.check_holder(task_id, coordinator_id, fencing_token)?;
            state.release_lock(tx, task_id, LockCause::Released);
            Ok(())
        })
        .await
    }

    fn lock_lease(&self, lease: Option<Duration>) -> Duration {
        let max = self.inner.config.coordination_timeout;
        match lease {
            Some(l) if !l.is_zero() && l < max => l,
            _ => max,
        }
    }
}

fn held_by_other(task_id: &str, lock: &TaskLock) -> CoreError {
    CoreError::Aborted(format!(
        "task `{task_id}` is locked by `{}` until {} (fencing token {})",
        lock.holder_id,
        humantime::format_rfc3339_millis(lock.expire_time),
        lock.fencing_token
    ))
}

impl State {
    /// Frees a task's lock (if any) with `cause`, recording LOCK_RELEASED.
    pub(crate) fn release_lock(&mut self, tx: &mut Tx, task_id: &str, cause: LockCause) {
        self.lock_deadlines.remove(task_id);
        let Some(task) = self.task_mut(task_id) else {
            return;
        };
        let Some(lock) = task.lock.take() else {
            return;
        };
        let holder = lock.holder_id.clone();
        tx.event(EventType::LockReleased, task, EventDetail::Lock { lock, cause }, None);
        if let Some(event) = tx.batch.events.last_mut() {
            Arc::make_mut(event).coordinator_id = Some(holder.clone());
        }
        if let Some(session) = self.sessions.get_mut(&holder) {
            session.locks.remove(task_id);
        }
    }

    /// The task's lock unless its lease ran out (its timer may not have fired yet).
    pub(crate) fn effective_lock(&self, task_id: &str) -> Option<&TaskLock> {
        let expired = self.lock_deadlines.get(task_id).is_none_or(|d| *d <= Instant::now());
        if expired {
            return None;
        }
        self.task_by_id(task_id).and_then(|t| t.lock.as_ref())
    }

    /// A lock whose lease ran out (its timer may not have fired yet) is freed now. Call
    /// only once every check of the operation has passed: it writes an event.
    pub(crate) fn expire_lock_if_due(&mut self, tx: &mut Tx, task_id: &str) {
        if self.lock_deadlines.get(task_id).is_some_and(|d| *d <= Instant::now()) {
            self.release_lock(tx, task_id, LockCause::Expired);
        }
    }

    /// The caller holds the task's lock with this very token.
    pub(crate) fn check_holder(&self, task_id: &str, coordinator_id: &str, token: u64) -> Result<(), CoreError> {
        if self.task_by_id(task_id).is_none() {
            return Err(CoreError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        }
        match self.effective_lock(task_id) {
            None => Err(CoreError::Aborted(format!(
                "task `{task_id}` is not locked, or its lease ran out (fencing token {token} is stale); acquire \
                 the lock again"
            ))),
            Some(lock) if lock.holder_id != coordinator_id => Err(held_by_other(task_id, lock)),
            Some(lock) if lock.fencing_token != token => Err(CoreError::Aborted(format!(
                "fencing token {token} is stale: the lock of task `{task_id}` is held with token {}",
                lock.fencing_token
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Extends the task's lock by `lease` from now; `None` if it has none.
    fn extend_lock(&mut self, task_id: &str, lease: Duration) -> Option<TaskLock> {
        let now = Instant::now();
        let expire = SystemTime::now() + lease;
        let lock = self.task_mut(task_id)?.lock.as_mut()?;
        lock.expire_time = expire;
        let granted = lock.clone();
        self.lock_deadlines.insert(task_id.to_owned(), now + lease);
        self.arm(now + lease, Timer::Lock(task_id.to_owned()));
        Some(granted)
    }
}
