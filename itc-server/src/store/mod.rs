//! Persistence behind a trait, so that the core does not know where its state lives.
//!
//! The core owns the working state in memory and hands every change to the store as a
//! [`Batch`], in the order the changes happened (it calls [`Store::commit`] while still
//! holding its own lock, so batches arrive in seq order). A call is acknowledged to its
//! client only once the batch's [`Commit`] resolves. Implementations: [`SqliteStore`]
//! (the default: embedded, durable, group-committed) and [`MemoryStore`] (nothing
//! survives the process; it retains the event log for replay). A networked backend is
//! another implementation of the same trait (DESIGN §8).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::core::{Command, Event, InputRequest, Task};

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, SyncLevel};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption…); the message says how.
    #[error("{0}")]
    Backend(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// One atomic unit of change: task rows to write or forget, and events to append.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tasks to insert or replace, as they are after the change.
    pub upserts: Vec<Arc<Task>>,
    /// Tasks to forget (finished tasks past retention).
    pub removals: Vec<String>,
    /// Events to append, in seq order, continuing the log without a gap.
    pub events: Vec<Arc<Event>>,
    /// Commands that reached their final state (kept, bounded, for reads and retries).
    pub closed_commands: Vec<Command>,
    /// Input requests that were closed (kept, bounded, for reads).
    pub closed_inputs: Vec<InputRequest>,
    /// Service-wide values to keep (`global_interrupt`, `interactions`).
    pub meta: Vec<(&'static str, i64)>,
}

/// Resolves once a batch is durable (or failed to be).
pub type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// What a store holds when the server starts.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every retained task.
    pub tasks: Vec<Task>,
    /// The newest seq written; the log continues after it.
    pub head_seq: u64,
    /// Closed commands kept, oldest first.
    pub closed_commands: Vec<Command>,
    /// Closed input requests kept, oldest first.
    pub closed_inputs: Vec<InputRequest>,
    /// Service-wide values.
    pub meta: std::collections::HashMap<String, i64>,
}

/// Where the core's state persists.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`memory`, `sqlite`).
    fn name(&self) -> &'static str;

    /// Reads back what the store holds, once, at start.
    fn recover(&self) -> Result<Recovered, StoreError>;

    /// Queues a batch. Must not block: the core calls it under its lock. The returned
    /// future resolves when the batch is durable; batches become durable in call order.
    fn commit(&self, batch: Batch) -> Commit;

    /// Up to `limit` retained events with seq greater than `after_seq`, oldest first.
    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError>;

    /// The oldest retained seq (head + 1 when the log is empty).
    fn oldest_seq(&self) -> u64;

    /// The newest seq known durable: every batch up to it has committed. Read after a
    /// batch's commit resolves, it covers at least that batch, and often the batches
    /// committed with it, so that one wake-up can publish the whole group (0: unknown).
    fn durable_seq(&self) -> u64 {
        0
    }

    /// Finishes every queued batch and stops taking new ones (at shutdown). Blocks.
    fn flush(&self) {}
}
