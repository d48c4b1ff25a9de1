//! Reading per-job records page by page, for audits (`GET /internal/v1/usage/records`):
//! filtered by tenant, model and finish time, oldest first, each page ending with an opaque
//! cursor (`<hour>-<offset>`, a journal position) where the next one starts.

use std::ops::ControlFlow;

use contract::{ModelId, TenantId};
use control_plane_client::wire::UsageRecord;

use super::LedgerError;
use super::journal::{Journal, Position};

/// Most records in one page.
pub const MAX_LIMIT: usize = 1000;
/// Records in a page when the query does not say.
pub const DEFAULT_LIMIT: usize = 100;

/// Which records a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this tenant's.
    pub tenant: Option<TenantId>,
    /// Only this model's.
    pub model: Option<ModelId>,
    /// Only jobs finished at or after this, Unix ms.
    pub from_ms: Option<u64>,
    /// Only jobs finished before this, Unix ms.
    pub to_ms: Option<u64>,
}

impl RecordFilter {
    fn matches(&self, record: &UsageRecord) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| record.tenant == t.as_str())
            && self
                .model
                .as_ref()
                .is_none_or(|m| record.model == m.as_str())
            && self
                .from_ms
                .is_none_or(|from| record.finished_at_ms >= from)
            && self.to_ms.is_none_or(|to| record.finished_at_ms < to)
    }
}

/// A page's cursor as a string.
pub fn encode_cursor(position: Position) -> String {
    format!("{}-{}", position.hour_ms, position.offset)
}

/// A cursor from a previous page; `None` when it is not one.
pub fn decode_cursor(text: &str) -> Option<Position> {
    let (hour, offset) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(hour) || !digits(offset) {
        return None;
    }
    Some(Position {
        hour_ms: hour.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// Up to `limit` records matching `filter` from `cursor` on, and where the next page starts
/// when more match.
pub fn page(
    journal: &Journal,
    filter: &RecordFilter,
    cursor: Option<Position>,
    limit: usize,
) -> Result<(Vec<UsageRecord>, Option<Position>), LedgerError> {
    // A record finished at t is in a file of t's hour or later.
    let start = cursor
        .unwrap_or_default()
        .max(filter.from_ms.map(Position::hour_start).unwrap_or_default());
    let mut records = Vec::new();
    let (mut last_end, mut more) = (None, false);
    journal.scan(start, |entry| {
        if !filter.matches(&entry.record) {
            return ControlFlow::Continue(());
        }
        if records.len() == limit {
            more = true;
            return ControlFlow::Break(());
        }
        records.push(entry.record);
        last_end = Some(entry.end);
        ControlFlow::Continue(())
    })?;
    Ok((records, last_end.filter(|_| more)))
}
