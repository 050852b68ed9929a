//! One live subscription: the stream of items a Subscribe call sends.
//!
//! A subscription *pulls*: from its inbox while it keeps up, from the log at its own
//! cursor when it does not (see `hub`). It holds no unbounded queue, and dropping it (the
//! client went away) unregisters it at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::hub::{Filter, ReadError, SubShared};
use super::model::{Event, Task};
use super::{Core, CoreError};

/// What one `fill` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fill {
    /// The cursor moved: call again.
    Moved,
    /// Nothing more is visible now.
    CaughtUp,
    /// The cursor is older than the in-memory ring: read the store.
    NeedStore,
}

/// How many log events a lagging subscription reads at a time.
const SCAN_BATCH: usize = 256;

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `max_stream_duration` was reached.
    MaxDuration,
    /// The server is shutting down.
    Draining,
    /// The session the stream belonged to ended.
    SessionEnded,
}

/// One item of a Subscribe stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// First item: where the stream starts.
    Start {
        /// The subscription's id.
        subscription_id: u64,
        /// The newest seq in the log.
        head_seq: u64,
        /// The oldest seq retained.
        oldest_retained_seq: u64,
        /// Events after this seq follow (replay, then live).
        resume_after_seq: u64,
        /// The filter in effect.
        filter: Filter,
    },
    /// The current state of a matching task, as of `seq`.
    Snapshot {
        /// The task.
        task: Arc<Task>,
        /// The seq the snapshot was taken at.
        seq: u64,
    },
    /// The events asked for are past retention: drop local state; snapshots follow.
    Reset {
        /// The oldest seq retained.
        oldest_retained_seq: u64,
        /// The seq the fresh snapshots are taken at.
        resume_after_seq: u64,
    },
    /// A log event that matches the filter.
    Event(Arc<Event>),
    /// Nothing happened for `stream_interval`.
    Heartbeat {
        /// The newest visible seq.
        head_seq: u64,
        /// Resume after this seq to miss nothing.
        resume_after_seq: u64,
    },
    /// Last item.
    End {
        /// Why.
        reason: EndReason,
        /// The newest visible seq.
        head_seq: u64,
        /// Resume after this seq to miss nothing.
        resume_after_seq: u64,
    },
}

/// What a subscriber asks for.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// Which events.
    pub filter: Filter,
    /// Replay retained events after this seq; `None`: live only.
    pub after_seq: Option<u64>,
    /// Start with the state of every matching task (unless `after_seq` is retained).
    pub snapshot: bool,
    /// The subscriber's session: the stream ends with it, and is listed under it.
    pub session_id: Option<String>,
}

/// A live subscription. Drop it to unsubscribe.
#[derive(Debug)]
pub struct Subscription {
    core: Core,
    pub(super) shared: Arc<SubShared>,
    /// The next seq to examine; everything before it was delivered or did not match.
    cursor: u64,
    pub(super) pending: VecDeque<StreamItem>,
    /// Nothing in `pending` is sent before `visible` reaches this seq: a start point,
    /// snapshot or resume point is only ever one that is durable.
    gate: u64,
    snapshot: bool,
    interval: Duration,
    /// When something was last sent: a heartbeat is due `interval` after it.
    last_sent: Instant,
    /// The stream's one timer, for the idle interval and the end of its time, whichever
    /// comes first: armed once and left armed across waits. When it fires early
    /// (something was sent since it was set) it is moved to the new due time, instead of
    /// being set again for every event sent (a timer-wheel insert and removal per
    /// subscriber per event, as Netty's `IdleStateHandler` also avoids). Made at the
    /// first wait (a timer needs the runtime).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `None` when `max_stream_duration` is beyond what the clock can represent.
    end_at: Option<Instant>,
    drain: watch::Receiver<bool>,
    visible: watch::Receiver<u64>,
    /// Scanning and a skipped matching event is not durable yet: wait for `visible`.
    waiting_visible: bool,
    /// The idle interval ran out: send a heartbeat once caught up.
    heartbeat_due: bool,
    /// While a Reset waits in `pending` for its gate: the seq the client is known to have
    /// (its `after_seq`, or where it fell past retention). A stream ending before the
    /// Reset is sent gives this as its resume point, so the client is told again.
    reset_from: Option<u64>,
    done: bool,
}

impl Core {
    /// Opens a subscription: validates the request, registers it, and (race-free, under
    /// the state lock) takes the snapshot and the cursor it continues from.
    pub fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, CoreError> {
        let config = &self.inner.config;
        if !config.enable_streaming {
            return Err(CoreError::StreamingDisabled);
        }
        super::validate::filter(&request.filter, config.max_filter_entries)?;
        let matcher = super::hub::Matcher::new(request.filter.clone());
        let hub = &self.inner.hub;
        let oldest = self.inner.store.oldest_seq();

        let mut state = self.state();
        if let Some(session) = &request.session_id {
            state.session_for(session, Some(super::sessions::Capability::Streaming))?;
            let open = state.sessions.get(session).map_or(0, |entry| {
                entry.subscriptions.iter().filter(|w| w.strong_count() > 0).count()
            });
            if open >= config.max_subscriptions_per_session {
                return Err(CoreError::limit(
                    crate::error::Limit::SubscriptionsPerSession,
                    None,
                    format!(
                        "session `{session}` has {open} Subscribe streams open, the limit \
                         (max_subscriptions_per_session); close one first"
                    ),
                ));
            }
        }
        let head = state.head_seq;
        let mut pending = VecDeque::new();
        let (cursor, reset) = match request.after_seq {
            Some(after) if after > head => {
                return Err(CoreError::OutOfRange {
                    after_seq: after,
                    oldest_retained_seq: oldest,
                    head_seq: head,
                });
            }
            Some(after) if after.saturating_add(1) < oldest => {
                if !request.snapshot {
                    return Err(CoreError::OutOfRange {
                        after_seq: after,
                        oldest_retained_seq: oldest,
                        head_seq: head,
                    });
                }
                (head + 1, true)
            }
            Some(after) => (after + 1, false),
            None => (head + 1, false),
        };
        let shared = hub.register(matcher, head, cursor);
        if let Some(entry) = request.session_id.as_ref().and_then(|id| state.sessions.get_mut(id)) {
            entry.subscriptions.push(Arc::downgrade(&shared));
        }
        pending.push_back(StreamItem::Start {
            subscription_id: shared.id,
            head_seq: head,
            oldest_retained_seq: oldest,
            resume_after_seq: cursor - 1,
            filter: request.filter,
        });
        if reset {
            hub.counters.dropped.fetch_add(1, Ordering::Relaxed);
            pending.push_back(StreamItem::Reset {
                oldest_retained_seq: oldest,
                resume_after_seq: head,
            });
        }
        if request.snapshot && (request.after_seq.is_none() || reset) {
            for task in state.tasks.values() {
                if shared.matcher.covers_task(&task.id, &task.agent_id) {
                    pending.push_back(StreamItem::Snapshot {
                        task: task.clone(),
                        seq: head,
                    });
                }
            }
        }
        drop(state);

        let now = Instant::now();
        Ok(Subscription {
            core: self.clone(),
            shared,
            cursor,
            pending,
            gate: cursor - 1,
            snapshot: request.snapshot,
            interval: config.stream_interval,
            last_sent: now,
            timer: None,
            end_at: now.checked_add(config.max_stream_duration),
            drain: hub.drain_signal(),
            visible: hub.visible_signal(),
            waiting_visible: false,
            reset_from: reset.then(|| request.after_seq.unwrap_or(0)),
            heartbeat_due: false,
            done: false,
        })
    }

    /// A subscriber fell past retention and asked for snapshots: reset it to the current
    /// state, atomically with its inbox (no publisher runs meanwhile).
    fn resnapshot(&self, sub: &mut Subscription) {
        let oldest = self.inner.store.oldest_seq();
        let state = self.state();
        let head = state.head_seq;
        {
            let mut inbox = sub.shared.inbox();
            // The cursor moves to the head: from here on the inbox holds every match.
            inbox.events.clear();
            inbox.scanning = false;
            inbox.last_skipped = head;
            if inbox.lagging {
                inbox.lagging = false;
                self.inner.hub.counters.lag_ended();
            }
        }
        // The client has every match before the cursor: on a stream cut short, it resumes
        // from there and is reset again.
        sub.reset_from = Some(sub.cursor - 1);
        sub.cursor = head + 1;
        sub.gate = head;
        sub.pending.push_back(StreamItem::Reset {
            oldest_retained_seq: oldest,
            resume_after_seq: head,
        });
        for task in state.tasks.values() {
            if sub.shared.matcher.covers_task(&task.id, &task.agent_id) {
                sub.pending.push_back(StreamItem::Snapshot {
                    task: task.clone(),
                    seq: head,
                });
            }
        }
    }
}

impl Subscription {
    /// The subscription's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The next item; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<StreamItem, CoreError>> {
        if let Err(e) = self.ready().await? {
            return Some(Err(e));
        }
        let item = self.pending.pop_front()?;
        self.delivered(std::slice::from_ref(&item));
        Some(Ok(item))
    }

    /// Every item that can be sent now (at least one); `None` once the stream has ended.
    /// A stream sends batches: one wake-up, one timer reset and one counter update per
    /// batch instead of per event.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<StreamItem>, CoreError>> {
        if let Err(e) = self.ready().await? {
            return Some(Err(e));
        }
        let items: Vec<StreamItem> = self.pending.drain(..).collect();
        self.delivered(&items);
        Some(Ok(items))
    }

    /// Counts `items` as sent and restarts the idle interval.
    fn delivered(&mut self, items: &[StreamItem]) {
        let mut count = 0;
        let mut last = None;
        for item in items {
            if let StreamItem::Event(event) = item {
                count += 1;
                last = Some(event.seq);
            }
        }
        if let Some(last) = last {
            self.shared.delivered_seq.store(last, Ordering::Relaxed);
            self.shared.delivered_events.fetch_add(count, Ordering::Relaxed);
            self.core.inner.hub.counters.add_delivered(count);
        }
        self.last_sent = Instant::now();
        self.heartbeat_due = false;
    }

    /// Waits until `pending` holds an item that may be sent (`Some(Ok)`), the stream
    /// failed (`Some(Err)`: it is over), or it ended (`None`).
    async fn ready(&mut self) -> Option<Result<(), CoreError>> {
        loop {
            let visible = self.core.inner.hub.visible();
            if visible >= self.gate && !self.pending.is_empty() {
                return Some(Ok(()));
            }
            if self.done {
                return None;
            }
            if *self.drain.borrow() {
                self.end(EndReason::Draining);
                continue;
            }
            if self.shared.session_ended.load(Ordering::Acquire) {
                self.end(EndReason::SessionEnded);
                continue;
            }
            if self.end_at.is_some_and(|end| Instant::now() >= end) {
                self.end(EndReason::MaxDuration);
                continue;
            }
            if visible < self.gate {
                // The start (or reset) point is not durable yet: wait until it is.
                self.wait(true).await;
                continue;
            }
            let filled = match self.fill() {
                Ok(Fill::NeedStore) => {
                    // Older than the ring: read the store on a blocking thread.
                    let store = self.core.inner.store.clone();
                    let (cursor, visible) = (self.cursor, self.core.inner.hub.visible());
                    let read = tokio::task::spawn_blocking(move || {
                        super::hub::Hub::read_store(store.as_ref(), cursor, SCAN_BATCH, visible)
                    })
                    .await
                    .unwrap_or_else(|e| Err(ReadError::Store(crate::store::StoreError::Backend(e.to_string()))));
                    read.map(|events| self.absorb(events))
                }
                other => other,
            };
            match filled {
                Ok(Fill::Moved) => {
                    // A long replay must not hog the worker thread.
                    tokio::task::consume_budget().await;
                    continue;
                }
                Ok(Fill::CaughtUp | Fill::NeedStore) => {}
                Err(ReadError::Gone(gone)) => {
                    self.core.inner.hub.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if self.snapshot {
                        let core = self.core.clone();
                        core.resnapshot(self);
                        continue;
                    }
                    self.done = true;
                    let head = self.core.inner.hub.visible();
                    return Some(Err(CoreError::OutOfRange {
                        after_seq: self.cursor - 1,
                        oldest_retained_seq: gone.oldest,
                        head_seq: head,
                    }));
                }
                Err(ReadError::Store(e)) => {
                    self.done = true;
                    return Some(Err(CoreError::Store(e)));
                }
            }
            if self.heartbeat_due {
                // Caught up (the cursor is past everything visible that could match), so
                // the resume point is fresh even for a filter that matched nothing.
                self.heartbeat_due = false;
                self.pending.push_back(StreamItem::Heartbeat {
                    head_seq: self.core.inner.hub.visible(),
                    resume_after_seq: self.cursor - 1,
                });
                continue;
            }
            let waiting_visible = self.waiting_visible;
            self.wait(waiting_visible).await;
        }
    }

    /// Waits for a wake-up: a matching event, `visible` advancing (when `for_visible`),
    /// drain, the end of the stream's time, or the idle interval.
    async fn wait(&mut self, for_visible: bool) {
        let shared = self.shared.clone();
        let end_at = self.end_at;
        let capped = move |at: Instant| end_at.map_or(at, |end| at.min(end));
        let first = capped(self.last_sent + self.interval);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(first)));
        tokio::select! {
            () = shared.notify.notified() => {}
            _ = self.visible.changed(), if for_visible => {}
            _ = self.drain.changed() => {}
            () = timer.as_mut() => {
                let now = Instant::now();
                // Something sent since the timer was set moved the due time on.
                let due = self.last_sent + self.interval;
                if now >= due {
                    self.heartbeat_due = true;
                    timer.as_mut().reset(capped(now + self.interval));
                } else if end_at.is_some_and(|end| now >= end) {
                    // The stream's time is up: the caller ends it, and waits no more.
                    timer.as_mut().reset(now + self.interval);
                } else {
                    timer.as_mut().reset(capped(due));
                }
            }
        }
    }

    fn end(&mut self, reason: EndReason) {
        self.done = true;
        let visible = self.core.inner.hub.visible();
        let mut resume_after_seq = (self.cursor - 1).min(visible);
        if visible < self.gate {
            // Nothing gated was sent (the start point, or a reset and its snapshots, is not
            // durable yet): end without it. A client that was to be reset resumes from
            // where it was, and is told again.
            self.pending.clear();
            self.gate = 0;
            if let Some(from) = self.reset_from.take() {
                resume_after_seq = from;
            }
        }
        self.pending.push_back(StreamItem::End {
            reason,
            head_seq: visible,
            resume_after_seq,
        });
    }

    /// Moves matching events into `pending`: from the inbox while keeping up, else from
    /// the in-memory ring; says when the store must be read instead.
    pub(super) fn fill(&mut self) -> Result<Fill, ReadError> {
        let hub = &self.core.inner.hub;
        // Mark the current watermark seen before reading it, so that an advance after
        // this point wakes `wait`.
        let visible = *self.visible.borrow_and_update();
        self.waiting_visible = false;
        {
            let mut inbox = self.shared.inbox();
            if !inbox.scanning {
                let mut got = false;
                while inbox.events.front().is_some_and(|e| e.seq <= visible) {
                    if let Some(event) = inbox.events.pop_front()
                        && event.seq >= self.cursor
                    {
                        self.pending.push_back(StreamItem::Event(event));
                        got = true;
                    }
                }
                // Every matching event up to `visible` went through the inbox.
                self.cursor = self.cursor.max(visible + 1);
                return Ok(if got { Fill::Moved } else { Fill::CaughtUp });
            }
            if self.cursor > visible {
                if inbox.last_skipped < self.cursor {
                    // Caught up: back to the inbox.
                    inbox.scanning = false;
                    if inbox.lagging {
                        inbox.lagging = false;
                        hub.counters.lag_ended();
                    }
                } else {
                    // A matching event was appended but is not durable yet.
                    self.waiting_visible = true;
                }
                return Ok(Fill::CaughtUp);
            }
        }
        match hub.read_ring(self.cursor, SCAN_BATCH) {
            Some(events) => Ok(self.absorb(events)),
            None => Ok(Fill::NeedStore),
        }
    }

    /// Takes the matching ones of `events` (read from the log at the cursor).
    fn absorb(&mut self, events: Vec<Arc<Event>>) -> Fill {
        let Some(last) = events.last().map(|e| e.seq) else {
            return Fill::CaughtUp;
        };
        for event in events {
            if self.shared.matcher.matches(&event) {
                self.pending.push_back(StreamItem::Event(event));
            }
        }
        self.cursor = last + 1;
        Fill::Moved
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.core.inner.hub.unregister(&self.shared);
    }
}
