//! Configuration warnings: legal but probably unintended settings. Problems that make a
//! configuration unusable are [`contract::ConfigProblem`]s, shared by every component.

use std::fmt;

/// Something legal but probably unintended, e.g. a tenant whose residency holds no region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where the value is.
    pub place: String,
    /// What will happen because of it.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}
