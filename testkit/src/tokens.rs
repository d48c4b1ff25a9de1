//! The secrets every test world uses, so that the components it starts agree.

/// The control plane's admin token.
pub const ADMIN: &str = "test-admin-token-0123456789";
/// The token edges read snapshots with.
pub const EDGE: &str = "test-edge-token-0123456789";
/// The token agents register and report with (and the control plane reads their records
/// with).
pub const AGENT: &str = "test-agent-token-0123456789";
/// What edges send agents in `x-meridian-edge-token`.
pub const AGENT_EDGE: &str = "test-agent-edge-token-0123456789";
