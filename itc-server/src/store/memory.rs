//! The in-memory store: nothing survives the process. It keeps the event log within its
//! retention (count and age) so that subscribers can replay recent events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use super::{Batch, Commit, Recovered, Store, StoreError};
use crate::core::Event;

/// A store that keeps the event log in memory, within retention.
#[derive(Debug)]
pub struct MemoryStore {
    log: Mutex<Log>,
    retention_count: usize,
    retention_age: Duration,
}

#[derive(Debug, Default)]
struct Log {
    /// Contiguous by seq: `events[i].seq == first_seq + i`.
    events: VecDeque<Arc<Event>>,
    /// The newest seq appended (events may have been trimmed since).
    head_seq: u64,
}

impl MemoryStore {
    /// A store retaining at most `retention_count` events, none older than `retention_age`.
    pub fn new(retention_count: usize, retention_age: Duration) -> Self {
        Self {
            log: Mutex::new(Log::default()),
            retention_count: retention_count.max(1),
            retention_age,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the deque half-updated in a way
        // that matters more than losing the whole log: keep serving.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }

    fn commit(&self, batch: Batch) -> Commit {
        let result = {
            let mut log = self.log();
            let mut result = Ok(());
            // All or nothing: check the whole batch continues the log before applying it.
            let contiguous = batch
                .events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == log.head_seq + 1 + i as u64);
            if contiguous {
                // The hub's own `Arc`s: an event streamed from the hub keeps its wire
                // encoding here too, for as long as this log retains it (a copy of each
                // event would spare that memory, but cost 8% of the in-memory fan-out rate
                // at one subscriber, measured; the durable store keeps no encodings).
                for event in batch.events {
                    log.head_seq = event.seq;
                    log.events.push_back(event);
                }
            } else if let Some(first) = batch.events.first() {
                result = Err(StoreError::Backend(format!(
                    "event seq {} does not follow head {}",
                    first.seq, log.head_seq
                )));
            }
            while log.events.len() > self.retention_count {
                log.events.pop_front();
            }
            if let Some(cutoff) = SystemTime::now().checked_sub(self.retention_age) {
                while log.events.front().is_some_and(|e| e.time < cutoff) {
                    log.events.pop_front();
                }
            }
            result
        };
        Box::pin(std::future::ready(result))
    }

    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let log = self.log();
        let Some(first) = log.events.front().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(after_seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        Ok(log.events.iter().skip(skip).take(limit).cloned().collect())
    }

    fn oldest_seq(&self) -> u64 {
        let log = self.log();
        log.events.front().map_or(log.head_seq + 1, |e| e.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{EventDetail, EventType};

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            kind: EventType::RealTimeUpdate,
            time: SystemTime::now(),
            task_id: None,
            agent_id: None,
            coordinator_id: None,
            caused_by: None,
            data: None,
            task_version: 0,
            task_status: None,
            detail: EventDetail::None,
            wire: Default::default(),
        })
    }

    /// Retention by count drops the oldest; reads start after the asked seq.
    #[tokio::test]
    async fn retention_and_reads() {
        let store = MemoryStore::new(3, Duration::from_secs(60));
        let batch = Batch {
            events: (1..=5).map(event).collect(),
            ..Batch::default()
        };
        store.commit(batch).await.unwrap();
        assert_eq!(store.oldest_seq(), 3);
        let seqs: Vec<u64> = store.read_events(3, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        let seqs: Vec<u64> = store.read_events(0, 2).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
    }

    /// A batch that would leave a gap in the log is refused.
    #[tokio::test]
    async fn gap_is_refused() {
        let store = MemoryStore::new(10, Duration::from_secs(60));
        let batch = Batch {
            events: vec![event(2)],
            ..Batch::default()
        };
        assert!(store.commit(batch).await.is_err());
    }
}
