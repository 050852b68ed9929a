//! The gRPC adapters: one file per service. Each handler converts and checks the request
//! (`convert`), calls the core, and maps a core error through `status` (the one place
//! errors become statuses). No business logic lives here.

mod agent;
mod authz;
pub(crate) mod convert;
mod coordinator;
mod monitor;
mod session;
mod status;
mod wire;

pub use agent::AgentApi;
pub use coordinator::CoordinatorApi;
pub use monitor::MonitorApi;
pub use session::SessionApi;
pub(crate) use status::limit_status;
pub use wire::MonitorRoutes;
