//! Rust SDK for ITC (Interactive Task Control): agents report long-running tasks,
//! coordinators watch and steer them.
//!
//! # Layout
//!
//! - [`Client`] (`client.rs`): a cheap `Clone` handle over one HTTP/2 channel, built with
//!   [`Client::connect`] or [`Client::builder`] (timeouts, [`RetryPolicy`]); typed task
//!   and status calls.
//! - [`types`]: what calls return — [`Task`], [`Event`], [`Command`], [`InputRequest`]…
//!   with `serde_json` for structured data; the generated protocol stays behind the API
//!   (reachable as [`proto`] for what the SDK does not cover yet).
//! - [`Client::subscribe`] → [`SubscriptionBuilder`] → [`EventStream`] (`stream.rs`): a
//!   named stream of typed events that resumes by itself, exactly once, in order.
//! - [`Client::coordinate`] → [`CoordinateCall`] (`coordination.rs`), locks, answers.
//! - [`Error`]: typed, `#[non_exhaustive]`, each variant saying whether a retry helps.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn run() -> Result<(), itc_client::Error> {
//! use itc_client::{Client, StartTask};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let task = client.start_task(StartTask::new("agent-1", "Process large dataset")).await?;
//! client.report_progress(&task.id, 0.5, "halfway").await?;
//! client.publish_update(&task.id, serde_json::json!({"records": 5000})).await?;
//! client.complete_task(&task.id, serde_json::json!({"records": 10000})).await?;
//! let status = client.status(Default::default()).await?;
//! println!("{} tasks, {} live", status.total, status.active_tasks);
//! # Ok(()) }
//! ```

mod client;
mod coordination;
mod error;
mod session;
mod stream;
mod task;
pub mod types;

pub use client::{Ack, Client, ClientBuilder, RetryPolicy, StartTask, StatusQuery};
pub use coordination::{Capabilities, CoordinateCall, OpenedSession, SessionKind};
pub use error::Error;
pub use session::{Interruption, Session, SessionBuilder, SessionState};
pub use stream::{EventStream, SubscriptionBuilder};
pub use task::{InputCall, LockGuard, TaskHandle};
/// The gRPC status code [`Error::code`] returns.
pub use tonic::Code;
pub use types::{
    Action, Command, CommandState, Event, EventType, InputRequest, InputState, Lock, SessionInfo, StatusPage,
    SubscriptionInfo, Task, TaskStatus,
};

/// The README's Rust example, compiled as a doctest (its other code blocks are not Rust).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// The generated protocol types (package `itc.v1`), for what the SDK does not wrap.
pub use itc_proto::v1 as proto;
