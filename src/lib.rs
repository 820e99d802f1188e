pub mod bitmap_view;
pub mod bulk;
pub mod cohorts;
pub mod demo;
pub mod engine;
pub mod error;
pub mod ids;
pub mod import;
pub mod log;
pub mod segment;
pub mod server;
pub mod snapshot;
pub mod users;
pub mod workload;
pub mod workspace;

pub use error::{Error, Result};
pub use ids::{CohortKey, Partner, UserId, UserRef};
pub use workspace::Workspace;
