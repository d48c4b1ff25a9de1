//! What crosses a process boundary in Meridian, defined once for every component.
//!
//! The edge, the region agents and the control plane all read these, so a header name, an
//! id grammar, a refusal reason, an error body, a configuration problem or a message's
//! schema version cannot drift between them. The crate has no network dependencies.
//!
//! - [`ids`]: ids and their one grammar, request ids ([`RequestId`]) included.
//! - [`headers`]: the `x-meridian-*` headers; [`Refusal`]: why an agent refused a job.
//! - [`ErrorBody`]: the JSON error body of every component.
//! - [`problems`]: configuration problems (`{place, problem, fix}`), their collector and
//!   strict reading of configuration files.
//! - [`schema`]: message schema versions and the rule for reading across versions.
//! - [`money`]: exact amounts in billionths and the one pricing rule.
//! - [`fs`]: durable, atomic file writes.
//! - [`Secret`]: a configured token that prints as `[redacted]`.

pub mod error;
pub mod fs;
pub mod headers;
pub mod ids;
pub mod money;
pub mod problems;
pub mod refusal;
pub mod schema;
pub mod secret;

pub use error::{ErrorBody, ErrorInfo};
pub use ids::{
    IdError, InstanceId, JurisdictionId, ModelId, PoolId, RegionId, RequestId, ReservationId,
    TenantId,
};
pub use money::{Nanos, charge};
pub use problems::{ConfigError, ConfigProblem, ConfigProblems, ParseError};
pub use refusal::Refusal;
pub use schema::{Schema, SchemaError};
pub use secret::Secret;
