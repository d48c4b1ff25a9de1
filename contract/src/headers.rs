//! The headers Meridian's components send each other and its clients, by name.
//!
//! Every `x-meridian-*` header is internal to Meridian except those the edge passes on to
//! clients ([`REGION`], [`INSTANCE`], [`COST`], [`REFUSED`] on a final refusal); the edge
//! strips every `x-meridian-*` header a client sends before it forwards a request.

/// Edge → agent: the shared secret that proves the call comes from an edge.
pub const EDGE_TOKEN: &str = "x-meridian-edge-token";
/// Edge → agent: the tenant the request acts for (a tenant id).
pub const TENANT: &str = "x-meridian-tenant";
/// Agent → edge → client: the region that served the request (a region id).
pub const REGION: &str = "x-meridian-region";
/// Edge → client: the region's instance (agent) that served the request (an instance id);
/// absent for an agent that names none.
pub const INSTANCE: &str = "x-meridian-instance";
/// Agent → edge → client: what the request cost, in the catalog's currency, written with
/// nine decimals ([`crate::money::Nanos`]).
pub const COST: &str = "x-meridian-cost";
/// Agent → edge: the agent refused the job before accepting it, and why
/// ([`crate::Refusal`]); the edge may try the next region.
pub const REFUSED: &str = "x-meridian-refused";
/// Edge → agent: the most jobs the tenant may have queued or running in all regions
/// together (its `max_concurrent` quota); absent when the tenant has no such quota.
pub const TENANT_MAX_JOBS: &str = "x-meridian-tenant-max-jobs";
/// Edge → agent: the tenant's jobs queued or running in the other regions, as the edge last
/// heard from them (sent with [`TENANT_MAX_JOBS`]). The agent refuses the job with `429`
/// when its own count plus this reaches the maximum.
pub const TENANT_JOBS_ELSEWHERE: &str = "x-meridian-tenant-jobs-elsewhere";
/// Client → edge → agent: the client's key for a submission it may send again
/// (`Idempotency-Key`); the same key from the same tenant names the same job for
/// [`IDEMPOTENCY_WINDOW_SECS`].
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long an idempotency key keeps naming its job, in seconds (24 h).
pub const IDEMPOTENCY_WINDOW_SECS: u64 = 24 * 3600;
/// The longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;
/// Edge → agent: the scheme, host and port (and path prefix, if any) under which the client
/// reached the public API, e.g. `https://api.example.com`; the agent writes absolute URLs
/// (status, result and file links) under it. Absent: the agent writes paths.
pub const PUBLIC_URL: &str = "x-meridian-public-url";
/// Every component → client: the request's id ([`crate::RequestId`]) where it has one.
pub const REQUEST_ID: &str = "x-request-id";
/// The prefix of every internal header; the edge drops these from what clients send.
pub const INTERNAL_PREFIX: &str = "x-meridian-";

/// Whether `name` (lowercase) is one of Meridian's internal headers.
pub fn is_internal(name: &str) -> bool {
    name.starts_with(INTERNAL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_header_has_the_prefix_and_is_lowercase() {
        for name in [
            EDGE_TOKEN,
            TENANT,
            REGION,
            COST,
            REFUSED,
            TENANT_MAX_JOBS,
            TENANT_JOBS_ELSEWHERE,
        ] {
            assert!(is_internal(name), "{name}");
            assert_eq!(name, name.to_ascii_lowercase());
        }
        assert!(!is_internal(REQUEST_ID));
        assert!(!is_internal(IDEMPOTENCY_KEY));
    }
}
