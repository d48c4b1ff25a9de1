//! Why an agent refused a job before accepting it: sent in the [`REFUSED`] header (and the
//! error body's `reason`) with a `503`, so the edge knows it may try the next region.
//!
//! [`REFUSED`]: crate::headers::REFUSED

use std::fmt;

/// An agent's refusal; nothing was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The agent is draining (shutting down or being replaced).
    Draining,
    /// The model's queue is full.
    QueueFull,
    /// The agent does not serve the model (no weights, or the catalog does not place the
    /// model in its region).
    ModelNotServed,
    /// The agent has no catalog yet (it cannot price jobs or count its GPUs).
    NoCatalog,
    /// The agent's data directory is short of free space: it keeps what is left for the
    /// jobs it has accepted.
    DiskFull,
    /// The agent has as many connections open as it allows (in all, or from the caller's
    /// address); it answered before reading the request.
    TooManyConnections,
}

impl Refusal {
    /// Every refusal, for documentation and tests.
    pub const ALL: [Self; 6] = [
        Self::Draining,
        Self::QueueFull,
        Self::ModelNotServed,
        Self::NoCatalog,
        Self::DiskFull,
        Self::TooManyConnections,
    ];

    /// The header value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::QueueFull => "queue_full",
            Self::ModelNotServed => "model_not_served",
            Self::NoCatalog => "no_catalog",
            Self::DiskFull => "disk_full",
            Self::TooManyConnections => "too_many_connections",
        }
    }

    /// The refusal a header value names; `None` for a value this build does not know (a
    /// newer agent's), which the edge still treats as a refusal.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.reason() == reason)
    }

    /// A sentence for a person.
    pub fn message(self) -> &'static str {
        match self {
            Self::Draining => "the agent is draining",
            Self::QueueFull => "the model's queue is full",
            Self::ModelNotServed => "this agent does not serve the model",
            Self::NoCatalog => "the agent has not received its catalog from the control plane yet",
            Self::DiskFull => "the agent's disk is short of free space; it takes no new jobs",
            Self::TooManyConnections => "the agent has too many connections open",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_reason(refusal.reason()), Some(refusal));
        }
        assert_eq!(Refusal::from_reason("overheated"), None);
    }
}
