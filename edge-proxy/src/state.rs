//! The routing state built from one control-plane snapshot: the validated catalog, the key
//! ring, the regions' live status and each tenant's jobs there, each tenant's month-to-date
//! spend and rate limiter, and each region's resolved agent address. Built off the request path and swapped in whole.
//!
//! Most snapshots differ from the last only in live status (every heartbeat makes one), so
//! the parts that follow from the configuration — the validated catalog, the key ring, the
//! agents' addresses and the rate limiters — are carried over, shared, while the catalog
//! and keys are unchanged, and built afresh only when they change.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use control_plane_client::wire::Snapshot;
use policy::key::ApiKeyRecord;
use policy::quota::{RateLimiter, Spend};
use policy::{Catalog, CatalogSpec, KeyRing, LiveStatus};

use crate::instances::Instances;
use crate::jobs::JobCounts;

/// Where a region's agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Resolved address.
    pub address: SocketAddr,
    /// Whether to speak TLS to it.
    pub tls: bool,
    /// Host name for TLS (SNI) and the `Host` header.
    pub host: String,
}

/// One tenant's rate limiter. It outlives snapshots while the tenant's rate stays the same,
/// so a new snapshot never refills a tenant's rate bucket. (Its bound on jobs is checked
/// against [`RoutingState::jobs`], see [`jobs`](crate::jobs).)
#[derive(Debug)]
pub struct TenantLimits {
    key: Option<(u64, u32)>,
    /// Its rate limiter, if it has a rate limit.
    pub rate: Option<RateLimiter>,
}

/// Everything the request path reads, from one snapshot.
#[derive(Debug)]
pub struct RoutingState {
    /// The snapshot's store revision.
    pub revision: i64,
    /// The validated catalog.
    pub catalog: Arc<Catalog>,
    /// API keys.
    pub keys: Arc<KeyRing>,
    /// Regions' reported status (without this edge's own breakers and in-flight counts).
    pub live: LiveStatus,
    /// Each region's reported jobs queued or running, per tenant.
    pub jobs: JobCounts,
    /// Month-to-date spend by tenant id, for the month the snapshot was received in.
    pub spend: HashMap<String, Spend>,
    /// When the snapshot was received (or read from the cache), Unix seconds.
    pub received_unix: i64,
    /// Per region index: the catalog's endpoint for its agents, or `None` when it gives
    /// none or it cannot be used.
    pub upstreams: Arc<Vec<Option<Upstream>>>,
    /// The regions' instances: where each is reached and what it reported, and those away.
    pub instances: Instances,
    /// Quota limiters by tenant id.
    pub limits: Arc<HashMap<String, Arc<TenantLimits>>>,
    /// The catalog and keys as received, to tell whether the next snapshot changes them.
    source: Arc<(CatalogSpec, Vec<ApiKeyRecord>)>,
}

impl RoutingState {
    /// Builds the state from `snapshot`, keeping the limiters of `previous` for tenants
    /// whose limits did not change. Resolves host names, so call it off the async runtime.
    ///
    /// # Errors
    ///
    /// The catalog's validation problems, when it does not validate: such a snapshot must
    /// never replace a good one.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&RoutingState>,
        received_unix: i64,
    ) -> Result<Self, String> {
        contract::schema::SNAPSHOT
            .accepts("snapshot", snapshot.schema)
            .map_err(|e| e.to_string())?;
        let unchanged = previous.filter(|p| {
            let (catalog, keys) = &*p.source;
            *catalog == snapshot.catalog && *keys == snapshot.keys
        });
        let configured = match unchanged {
            Some(previous) => Configured {
                catalog: Arc::clone(&previous.catalog),
                keys: Arc::clone(&previous.keys),
                upstreams: Arc::clone(&previous.upstreams),
                limits: Arc::clone(&previous.limits),
                source: Arc::clone(&previous.source),
            },
            None => Configured::build(snapshot, previous)?,
        };
        let spend = snapshot
            .spend
            .iter()
            .map(|s| {
                let spend = Spend {
                    money: s.cost,
                    gpu_seconds: s.gpu_seconds,
                };
                (s.tenant.clone(), spend)
            })
            .collect();
        let now_ms = u64::try_from(received_unix)
            .unwrap_or(0)
            .saturating_mul(1000);
        let (live, instances) = Instances::build(
            snapshot,
            &configured.catalog,
            &configured.upstreams,
            previous.map(|p| &p.instances.resolved),
            now_ms,
        );
        Ok(Self {
            revision: snapshot.revision,
            live,
            instances,
            jobs: JobCounts::of(snapshot, &configured.catalog),
            catalog: configured.catalog,
            keys: configured.keys,
            spend,
            received_unix,
            upstreams: configured.upstreams,
            limits: configured.limits,
            source: configured.source,
        })
    }

    /// Whether `self` and `other` were built from the same catalog and keys.
    pub fn same_configuration(&self, other: &RoutingState) -> bool {
        Arc::ptr_eq(&self.source, &other.source)
    }
}

/// What a routing state takes from the catalog and keys alone.
struct Configured {
    catalog: Arc<Catalog>,
    keys: Arc<KeyRing>,
    upstreams: Arc<Vec<Option<Upstream>>>,
    limits: Arc<HashMap<String, Arc<TenantLimits>>>,
    source: Arc<(CatalogSpec, Vec<ApiKeyRecord>)>,
}

impl Configured {
    /// Validates the snapshot's catalog and builds what follows from it and the keys,
    /// keeping `previous`'s limiters where a tenant's limits are unchanged.
    fn build(snapshot: &Snapshot, previous: Option<&RoutingState>) -> Result<Self, String> {
        let catalog = snapshot.catalog.validate().map_err(|e| e.to_string())?;
        let keys = KeyRing::new(snapshot.keys.iter().cloned());
        let upstreams = catalog
            .regions()
            .iter()
            .map(|r| {
                if r.endpoint.is_empty() {
                    return None;
                }
                let upstream = parse_endpoint(&r.endpoint);
                if upstream.is_none() {
                    tracing::warn!(region = %r.id, endpoint = %r.endpoint, "agent endpoint cannot be used");
                }
                upstream
            })
            .collect();
        let mut limits = HashMap::new();
        for tenant in catalog.tenants() {
            let quotas = &tenant.quotas;
            let key = quotas.rate.map(|r| (r.per_second.to_bits(), r.burst));
            let kept = previous
                .and_then(|p| p.limits.get(tenant.id.as_str()))
                .filter(|l| l.key == key)
                .cloned();
            let entry = match kept {
                Some(entry) => entry,
                None => Arc::new(TenantLimits {
                    key,
                    // Validation has checked that the limiter accepts the tenant's rate.
                    rate: quotas.rate.and_then(|r| RateLimiter::new(r).ok()),
                }),
            };
            limits.insert(tenant.id.to_string(), entry);
        }
        Ok(Self {
            catalog: Arc::new(catalog),
            keys: Arc::new(keys),
            upstreams: Arc::new(upstreams),
            limits: Arc::new(limits),
            source: Arc::new((snapshot.catalog.clone(), snapshot.keys.clone())),
        })
    }
}

/// Parses an agent endpoint `http(s)://host[:port][/]` and resolves its host.
pub(crate) fn parse_endpoint(endpoint: &str) -> Option<Upstream> {
    let (tls, rest) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest)
    } else {
        return None;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, with_port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[1..end];
        match &authority[end + 1..] {
            "" => (host, format!("[{host}]:{default_port}")),
            port => (host, format!("[{host}]{port}")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) => (host, authority.to_owned()),
            None => (authority, format!("{authority}:{default_port}")),
        }
    };
    let address = with_port.to_socket_addrs().ok()?.next()?;
    Some(Upstream {
        address,
        tls,
        host: host.to_owned(),
    })
}

/// Snapshots for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    use control_plane_client::wire::{Snapshot, TenantSpend};
    use policy::CatalogSpec;

    use super::RoutingState;

    /// A snapshot of one region, one model and tenant `acme` with `quota` (a TOML line).
    pub fn snapshot(quota: &str) -> Snapshot {
        let catalog = CatalogSpec::from_toml(&format!(
            r#"
            [[jurisdictions]]
            id = "eu"
            [[regions]]
            id = "eu-west"
            jurisdiction = "eu"
            location = {{ lat = 53.35, lon = -6.26 }}
            endpoint = "http://127.0.0.1:9"
            pools = [{{ id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.0 }}]
            [[models]]
            id = "meridian/esrgan-x4"
            kind = "image-to-image"
            unit = "megapixel"
            price_per_unit = 0.002
            gpu_seconds_per_unit = 0.4
            [[tenants]]
            id = "acme"
            residency = "any"
            {quota}
            "#
        ))
        .unwrap();
        Snapshot {
            schema: contract::schema::SNAPSHOT,
            revision: 7,
            catalog,
            keys: Vec::new(),
            regions: Vec::new(),
            spend: vec![TenantSpend {
                tenant: "acme".into(),
                month: "2024-06".into(),
                cost: 0.0,
                gpu_seconds: 0.0,
            }],
            instances: Vec::new(),
        }
    }

    /// The state of `snapshot`, received at `received_unix`.
    pub fn state_of(snapshot: &Snapshot, received_unix: i64) -> RoutingState {
        RoutingState::build(snapshot, None, received_unix).unwrap()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_ports() {
        let up = parse_endpoint("http://127.0.0.1:9102").unwrap();
        assert_eq!(up.address, "127.0.0.1:9102".parse().unwrap());
        assert!(!up.tls);
        let up = parse_endpoint("https://[::1]/v1").unwrap();
        assert_eq!(up.address, "[::1]:443".parse().unwrap());
        assert_eq!(up.host, "::1");
        assert!(up.tls);
        let up = parse_endpoint("http://localhost:81/").unwrap();
        assert_eq!(up.address.port(), 81);
        assert_eq!(up.host, "localhost");
        assert_eq!(parse_endpoint("ftp://x"), None);
        assert_eq!(parse_endpoint("http://"), None);
    }

    #[test]
    fn a_live_status_change_shares_the_configuration_and_a_catalog_change_rebuilds_it() {
        use control_plane_client::wire::{AgentReport, RegionLive};

        let first = testing::snapshot("");
        let one = RoutingState::build(&first, None, 0).unwrap();
        let mut heartbeat = first.clone();
        heartbeat.revision += 1;
        heartbeat.regions.push(RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1234,
            report: AgentReport::default(),
        });
        let two = RoutingState::build(&heartbeat, Some(&one), 0).unwrap();
        assert!(two.same_configuration(&one));
        assert!(Arc::ptr_eq(&two.catalog, &one.catalog));
        assert_eq!(two.revision, heartbeat.revision);
        let reported = |state: &RoutingState| state.live.region(0).unwrap().last_heartbeat_ms;
        assert_eq!(reported(&two), Some(1234), "the new live status is used");
        assert_eq!(reported(&one), None);

        let mut changed = heartbeat.clone();
        changed.revision += 1;
        changed.catalog.tenants[0].quotas.requests_per_second = Some(3.0);
        let three = RoutingState::build(&changed, Some(&two), 0).unwrap();
        assert!(!three.same_configuration(&two));
        assert!(three.limits["acme"].rate.is_some());
        assert_eq!(reported(&three), Some(1234));
    }
}
