//! What an instance of a region served by several agents says about itself: where edges
//! reach it (`endpoint`) and its share of the region's GPU pools (`[pools]`). Both are
//! reported with every heartbeat; the share also bounds the slots the catalog gives.

use std::collections::BTreeMap;

use contract::ConfigProblems;
use contract::ids::PoolId;
use control_plane_client::wire::PoolShare;

use super::file::PoolsFile;

/// This instance's share of its region's pools: per catalog pool id, the reserved and
/// on-demand slots it serves (at most the catalog's; pools it does not name, none).
pub type PoolShares = BTreeMap<PoolId, PoolShare>;

/// `endpoint`, checked: an `http(s)://` URL with a host and nothing after its path, its
/// trailing `/` dropped.
pub(super) fn endpoint(p: &mut ConfigProblems, value: Option<&str>) -> Option<String> {
    let text = value?;
    match endpoint_problem(text) {
        None => Some(text.trim_end_matches('/').to_owned()),
        Some(problem) => {
            p.add(
                "endpoint",
                format!("{text:?} {problem}"),
                "write the URL edges reach this instance at, e.g. http://10.0.3.7:9100, or \
                 remove it to have edges use the catalog's endpoint for the region",
            );
            None
        }
    }
}

/// Why `text` is not a usable instance endpoint.
fn endpoint_problem(text: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(text) else {
        return Some("is not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some("is not an http(s) URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some("names no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("carries a user name or password");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("has a query or fragment");
    }
    None
}

/// `[pools]`, checked: each key a pool id, and at least one slot in all.
pub(super) fn pools(p: &mut ConfigProblems, file: Option<&PoolsFile>) -> Option<PoolShares> {
    let file = file?;
    let mut shares = PoolShares::new();
    let mut misnamed = false;
    for (pool, share) in &file.0 {
        let place = format!("pools.{pool}");
        match PoolId::new(pool) {
            Ok(id) => {
                let share = PoolShare {
                    reserved: share.reserved.unwrap_or(0),
                    on_demand: share.on_demand.unwrap_or(0),
                };
                shares.insert(id, share);
            }
            Err(e) => {
                misnamed = true;
                p.add(
                    place,
                    e.to_string(),
                    "name a pool as the catalog does, e.g. h100",
                );
            }
        }
    }
    let slots: u64 = shares
        .values()
        .map(|s| u64::from(s.reserved) + u64::from(s.on_demand))
        .sum();
    if slots == 0 && !misnamed {
        p.add(
            "pools",
            "gives this instance no slot",
            "give it a share of a catalog pool, e.g. h100 = { reserved = 1, on_demand = 0 }, \
             or remove [pools] to serve the region's whole pools",
        );
    }
    Some(shares)
}
