//! The fan-out hub: the recent event log in memory and the index of live subscriptions.
//!
//! Publishing never waits for a subscriber, and costs what the *matching* subscriptions
//! cost (DESIGN §5, guarantees 1–3):
//!
//! - Subscriptions are indexed by task id, by agent id, or under "all" (by their most
//!   selective non-empty filter), so an event only visits the subscriptions that can
//!   match it.
//! - Each subscription has a bounded inbox. Under the core's lock, in seq order, a
//!   matching event's `Arc` is pushed into it; after the batch is durable, the
//!   subscription is woken (a [`Notify`] permit: never lost, never queued twice).
//! - A subscription whose inbox is full switches to *scan* mode: the inbox is dropped and
//!   the subscription reads the log (the ring, then the store) from its own cursor at its
//!   own pace; it returns to its inbox once it has caught up. Past retention it is told
//!   (OUT_OF_RANGE), never silently skipped.
//!
//! Events become visible to subscribers only up to `visible`, the newest seq whose batch
//! the store has made durable.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tokio::sync::{Notify, watch};

use super::model::{Event, EventType};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// What a subscription wants. Empty sets mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events of these tasks.
    pub task_ids: Vec<String>,
    /// Only events of these agents.
    pub agent_ids: Vec<String>,
    /// Only events of these types.
    pub event_types: Vec<EventType>,
}

/// A [`Filter`] prepared for matching.
#[derive(Debug)]
pub(crate) struct Matcher {
    pub(crate) filter: Filter,
    task_ids: HashSet<String>,
    agent_ids: HashSet<String>,
    types: HashSet<EventType>,
}

impl Matcher {
    pub(crate) fn new(filter: Filter) -> Self {
        Self {
            task_ids: filter.task_ids.iter().cloned().collect(),
            agent_ids: filter.agent_ids.iter().cloned().collect(),
            types: filter.event_types.iter().copied().collect(),
            filter,
        }
    }

    /// Whether `event` passes every non-empty part of the filter.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let within = |set: &HashSet<String>, value: &Option<String>| {
            set.is_empty() || value.as_ref().is_some_and(|v| set.contains(v))
        };
        within(&self.task_ids, &event.task_id)
            && within(&self.agent_ids, &event.agent_id)
            && (self.types.is_empty() || self.types.contains(&event.kind))
    }

    /// Whether `event`, found through the index `via`, passes the rest of the filter.
    fn matches_via(&self, event: &Event, via: Via) -> bool {
        let types = self.types.is_empty() || self.types.contains(&event.kind);
        match via {
            Via::Task => {
                types
                    && (self.agent_ids.is_empty()
                        || event.agent_id.as_ref().is_some_and(|a| self.agent_ids.contains(a)))
            }
            Via::Agent | Via::All => types,
        }
    }

    /// Whether a task of `task_id`/`agent_id` is within the filter (for snapshots).
    pub(crate) fn covers_task(&self, task_id: &str, agent_id: &str) -> bool {
        (self.task_ids.is_empty() || self.task_ids.contains(task_id))
            && (self.agent_ids.is_empty() || self.agent_ids.contains(agent_id))
    }
}

/// Stream counters, shown by GetStatus and, updated at the same places, as Prometheus
/// metrics.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    /// Subscribe streams open now.
    active: AtomicU64,
    /// Log events delivered to subscribers.
    delivered: AtomicU64,
    /// Subscriptions currently reading the log because they fell behind their inbox.
    lagging: AtomicU64,
    /// Subscriptions that fell past retention (told OUT_OF_RANGE or reset).
    pub(crate) dropped: AtomicU64,
    metrics: Metrics,
}

impl StreamCounters {
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(crate) fn lagging(&self) -> u64 {
        self.lagging.load(Ordering::Relaxed)
    }

    /// `n` log events were sent to a subscriber (counted per batch, not per event).
    pub(crate) fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.metrics.events_delivered().increment(n);
    }

    /// A subscription's inbox overflowed: it reads the log now.
    pub(crate) fn lag_started(&self) {
        self.lagging.fetch_add(1, Ordering::Relaxed);
        self.metrics.subscribers_lagging().increment(1.0);
    }

    /// A lagging subscription caught up (or went away).
    pub(crate) fn lag_ended(&self) {
        self.lagging.fetch_sub(1, Ordering::Relaxed);
        self.metrics.subscribers_lagging().decrement(1.0);
    }
}

/// The part of a subscription the publishers see.
#[derive(Debug)]
pub(crate) struct SubShared {
    pub(crate) id: u64,
    pub(crate) matcher: Matcher,
    pub(crate) notify: Notify,
    pub(crate) inbox: Mutex<Inbox>,
    /// The newest seq delivered, for GetStatus.
    pub(crate) delivered_seq: AtomicU64,
    /// Events delivered, for GetStatus.
    pub(crate) delivered_events: AtomicU64,
    /// Set when that session ends: the stream ends too.
    pub(crate) session_ended: std::sync::atomic::AtomicBool,
    /// When it was opened.
    pub(crate) create_time: std::time::SystemTime,
}

impl SubShared {
    pub(crate) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }
}

/// A subscription's bounded inbox of matching events, in seq order.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) events: VecDeque<Arc<Event>>,
    /// The subscription reads the log instead; publishers skip the inbox.
    pub(crate) scanning: bool,
    /// The newest matching seq skipped while scanning: the subscription may only go back
    /// to its inbox once its cursor is past it.
    pub(crate) last_skipped: u64,
    /// Scanning because the inbox overflowed (counted as lagging).
    pub(crate) lagging: bool,
}

/// Subscriptions by their most selective non-empty filter. The lists hold the
/// subscriptions themselves, so that publishing looks up each event's keys once and
/// nothing per candidate.
#[derive(Debug, Default)]
struct Index {
    /// Every registered subscription, by id.
    subs: super::Map<u64, Arc<SubShared>>,
    /// Subscriptions with task ids, under each of them.
    by_task: super::Map<String, Vec<Arc<SubShared>>>,
    /// Subscriptions with agent ids and no task ids, under each agent.
    by_agent: super::Map<String, Vec<Arc<SubShared>>>,
    /// Subscriptions with neither.
    all: super::Map<u64, Arc<SubShared>>,
}

/// How a candidate was found: the part of its filter that the index already matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Under the event's task id: its task filter holds.
    Task,
    /// Under the event's agent id: its agent filter holds, and it has no task filter.
    Agent,
    /// It filters on neither tasks nor agents.
    All,
}

impl Index {
    fn candidates<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = (&'a Arc<SubShared>, Via)> + 'a {
        let by_task = event
            .task_id
            .as_ref()
            .and_then(|t| self.by_task.get(t))
            .into_iter()
            .flatten()
            .map(|sub| (sub, Via::Task));
        let by_agent = event
            .agent_id
            .as_ref()
            .and_then(|a| self.by_agent.get(a))
            .into_iter()
            .flatten()
            .map(|sub| (sub, Via::Agent));
        by_task
            .chain(by_agent)
            .chain(self.all.values().map(|sub| (sub, Via::All)))
    }
}

/// Events not (or no longer) in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone {
    /// The oldest seq still retained.
    pub(crate) oldest: u64,
}

/// The hub: ring, index, visibility watermark and drain signal.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The newest events, contiguous by seq, at most `ring_capacity`.
    ring: RwLock<VecDeque<Arc<Event>>>,
    ring_capacity: usize,
    /// Newest seq subscribers may read (its batch is durable). A watch, so that a
    /// subscription waiting for in-flight events (or for its start to become durable)
    /// can wait for it to advance.
    visible: watch::Sender<u64>,
    index: Mutex<Index>,
    next_id: AtomicU64,
    inbox_capacity: usize,
    pub(crate) counters: StreamCounters,
    /// Set to true when the server drains: every stream ends with STREAM_END.
    drain: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few pushes and pops that cannot be left half-done
    // in a way that matters more than stopping fan-out altogether.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub(crate) fn new(head_seq: u64, ring_capacity: usize, inbox_capacity: usize, metrics: Metrics) -> Self {
        Self {
            ring: RwLock::new(VecDeque::new()),
            ring_capacity: ring_capacity.max(1),
            visible: watch::Sender::new(head_seq),
            index: Mutex::new(Index::default()),
            next_id: AtomicU64::new(1),
            inbox_capacity: inbox_capacity.max(1),
            counters: StreamCounters {
                metrics,
                ..StreamCounters::default()
            },
            drain: watch::Sender::new(false),
        }
    }

    /// The newest seq subscribers may read.
    pub(crate) fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A receiver that changes whenever `visible` advances.
    pub(crate) fn visible_signal(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Registers a subscription that reads from `cursor` on. Call under the core's lock,
    /// with `head_seq` the newest seq appended: a subscription starting at the head uses
    /// its inbox at once; one that replays scans the log up to `head_seq` first.
    pub(crate) fn register(&self, matcher: Matcher, head_seq: u64, cursor: u64) -> Arc<SubShared> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SubShared {
            id,
            notify: Notify::new(),
            inbox: Mutex::new(Inbox {
                events: VecDeque::new(),
                scanning: cursor <= head_seq,
                last_skipped: head_seq,
                lagging: false,
            }),
            delivered_seq: AtomicU64::new(0),
            delivered_events: AtomicU64::new(0),
            session_ended: std::sync::atomic::AtomicBool::new(false),
            create_time: std::time::SystemTime::now(),
            matcher,
        });
        let mut index = lock(&self.index);
        let filter = &shared.matcher.filter;
        if !filter.task_ids.is_empty() {
            for task in &shared.matcher.task_ids {
                index.by_task.entry(task.clone()).or_default().push(shared.clone());
            }
        } else if !filter.agent_ids.is_empty() {
            for agent in &shared.matcher.agent_ids {
                index.by_agent.entry(agent.clone()).or_default().push(shared.clone());
            }
        } else {
            index.all.insert(id, shared.clone());
        }
        index.subs.insert(id, shared.clone());
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        self.counters.metrics.subscriptions_open().increment(1.0);
        shared
    }

    /// Removes a subscription from the index (its stream was dropped or ended).
    pub(crate) fn unregister(&self, shared: &SubShared) {
        let mut index = lock(&self.index);
        if index.subs.remove(&shared.id).is_none() {
            return;
        }
        let id = shared.id;
        let remove = |map: &mut super::Map<String, Vec<Arc<SubShared>>>, key: &String| {
            if let Some(subs) = map.get_mut(key) {
                subs.retain(|sub| sub.id != id);
                if subs.is_empty() {
                    map.remove(key);
                }
            }
        };
        for task in &shared.matcher.task_ids {
            remove(&mut index.by_task, task);
        }
        for agent in &shared.matcher.agent_ids {
            remove(&mut index.by_agent, agent);
        }
        index.all.remove(&id);
        drop(index);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.counters.metrics.subscriptions_open().decrement(1.0);
        if shared.inbox().lagging {
            self.counters.lag_ended();
        }
    }

    /// Appends a batch's events to the ring and to the inboxes of the subscriptions they
    /// match; returns the subscriptions to wake once the batch is durable. Call under the
    /// core's lock, in seq order.
    pub(crate) fn append(&self, events: &[Arc<Event>]) -> Vec<Arc<SubShared>> {
        if events.is_empty() {
            return Vec::new();
        }
        {
            let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
            for event in events {
                if ring.len() == self.ring_capacity {
                    ring.pop_front();
                }
                ring.push_back(event.clone());
            }
        }
        let mut wake: Vec<Arc<SubShared>> = Vec::new();
        // One event's candidates are distinct; only a multi-event batch needs de-duplication.
        let mut woken: HashSet<u64> = HashSet::new();
        let index = lock(&self.index);
        for event in events {
            for (sub, via) in index.candidates(event) {
                debug_assert_eq!(sub.matcher.matches_via(event, via), sub.matcher.matches(event));
                if !sub.matcher.matches_via(event, via) {
                    continue;
                }
                let mut inbox = sub.inbox();
                if inbox.scanning {
                    inbox.last_skipped = event.seq;
                } else if inbox.events.len() >= self.inbox_capacity {
                    // Too far behind: drop the inbox, let it read the log at its pace.
                    inbox.events.clear();
                    inbox.scanning = true;
                    inbox.last_skipped = event.seq;
                    if !inbox.lagging {
                        inbox.lagging = true;
                        self.counters.lag_started();
                    }
                } else {
                    inbox.events.push_back(event.clone());
                }
                drop(inbox);
                if events.len() == 1 || woken.insert(sub.id) {
                    wake.push(sub.clone());
                }
            }
        }
        wake
    }

    /// Makes events up to `last_seq` visible and wakes the subscriptions they matched.
    pub(crate) fn publish(&self, last_seq: u64, wake: Vec<Arc<SubShared>>) {
        self.visible.send_if_modified(|visible| {
            let advanced = last_seq > *visible;
            *visible = (*visible).max(last_seq);
            advanced
        });
        for sub in wake {
            sub.notify.notify_one();
        }
    }

    /// Up to `max` visible events with seq ≥ `cursor` from the in-memory ring; `None`
    /// when the cursor is older than the ring (then read the store, off the runtime).
    pub(crate) fn read_ring(&self, cursor: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let visible = self.visible();
        if cursor > visible {
            return Some(Vec::new());
        }
        let want = usize::try_from(visible - cursor + 1).unwrap_or(usize::MAX).min(max);
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let front = ring.front().map(|e| e.seq)?;
        if cursor < front {
            return None;
        }
        let skip = usize::try_from(cursor - front).unwrap_or(usize::MAX);
        Some(ring.iter().skip(skip).take(want).cloned().collect())
    }

    /// Up to `max` events with `cursor` ≤ seq ≤ `visible` from the store. Blocking: call
    /// it off the async runtime.
    pub(crate) fn read_store(
        store: &dyn Store,
        cursor: u64,
        max: usize,
        visible: u64,
    ) -> Result<Vec<Arc<Event>>, ReadError> {
        if cursor > visible {
            return Ok(Vec::new());
        }
        let want = usize::try_from(visible - cursor + 1).unwrap_or(usize::MAX).min(max);
        let oldest = store.oldest_seq();
        if cursor < oldest {
            return Err(ReadError::Gone(Gone { oldest }));
        }
        let mut events = store.read_events(cursor - 1, want)?;
        // Retention may have trimmed the store between the two reads: a first event
        // other than `cursor` means the events in between are gone, never skip them.
        if events.first().is_none_or(|e| e.seq != cursor) {
            let oldest = store.oldest_seq();
            if cursor < oldest {
                return Err(ReadError::Gone(Gone { oldest }));
            }
            if !events.is_empty() {
                return Err(ReadError::Store(StoreError::Backend(format!(
                    "the log has a hole before seq {}",
                    events[0].seq
                ))));
            }
        }
        events.retain(|e| e.seq <= visible);
        Ok(events)
    }

    /// Ends every stream with STREAM_END (server drain).
    pub(crate) fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// A receiver that turns true when the server drains.
    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }
}

/// Why the log could not be read.
#[derive(Debug, Clone)]
pub(crate) enum ReadError {
    /// The events are past retention.
    Gone(Gone),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}
