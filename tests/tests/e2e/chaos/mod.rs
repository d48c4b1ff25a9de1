//! Chaos: real processes on loopback (the control plane and the agents as `meridian-node`
//! processes, etcd, an in-process edge), an open-loop load, one fault per scenario, and an
//! accounting of every request sent — sent, accepted, completed, failed with a reason,
//! lost (none may be) — printed as one table line (`-- --nocapture` shows it).
//!
//! Each scenario holds its load a few seconds; `MERIDIAN_CHAOS_SOAK_S` sets how many
//! seconds instead (the long variants).

mod agent_killed;
mod black_hole;
mod control_plane;
mod cut_link;
mod instances;
mod mid_job;

use std::time::Duration;

use contract::Nanos;
use control_plane_client::RecordQuery;
use control_plane_client::wire::{Outcome, UsageRecord};
use tests::chaos::{Sent, Tally, World, WorldSpec};
use tests::{RegionDef, eventually};

use crate::{DUBLIN, FRANKFURT, NEW_YORK, TENANTS};

/// The scenarios run one at a time: each starts several processes and holds a load, and
/// together they would starve the other end-to-end tests of the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this scenario's turn; it lasts while the guard lives.
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// The `meridian-node` binary built with these tests.
pub const NODE: &str = env!("CARGO_BIN_EXE_meridian-node");

/// Frankfurt with on-demand GPUs only: while Dublin has an idle reserved GPU, London's
/// requests go to Dublin.
pub const FRANKFURT_ON_DEMAND: RegionDef = RegionDef {
    reserved: 0,
    on_demand: 2,
    on_demand_price: 3.0,
    ..FRANKFURT
};

/// A world of `regions` on `store` with the test kit's tenants, its edge in New York.
pub fn spec(store: tests::chaos::Store, regions: &'static [RegionDef]) -> WorldSpec<'static> {
    WorldSpec {
        store,
        regions,
        instances: &[],
        tenants: TENANTS,
        edge_location: NEW_YORK,
        proxied: None,
        read_timeout: Duration::from_secs(60),
    }
}

/// Dublin alone.
pub const DUBLIN_ONLY: &[RegionDef] = &[DUBLIN];

/// Both EU regions: Dublin reserved, Frankfurt on demand.
pub const TWO_REGIONS: &[RegionDef] = &[DUBLIN, FRANKFURT_ON_DEMAND];

/// Every per-job record `region` keeps, read page by page through the control plane; for a
/// region of several instances, from each instance (see [`World::agent_records`]).
pub async fn records(world: &World, region: &str) -> Vec<UsageRecord> {
    let instances = world.instances(region);
    if !instances.is_empty() {
        let mut all = Vec::new();
        for instance in &instances {
            all.extend(world.agent_records(instance).await);
        }
        return all;
    }
    let admin = world.admin();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin
            .usage_records(&RecordQuery {
                region: region.into(),
                cursor: cursor.take(),
                limit: Some(500),
                ..RecordQuery::default()
            })
            .await
            .unwrap();
        all.extend(page.records);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// The money the control plane's ledger holds for `region`.
async fn ledger(world: &World, region: &str) -> Option<Nanos> {
    let query = control_plane_client::UsageQuery {
        region: Some(region.to_owned()),
        ..Default::default()
    };
    let report = world.admin().usage(&query).await.ok()?;
    Some(report.total.cost_nanos)
}

/// Usage counted once in `region`: each job it finished has one record, every job the
/// client saw completed there is among them and no other job completed there (after the
/// clients sent lost answers again with their keys, each billed job is one a client got),
/// and the control plane's ledger for the region comes to the sum of the completed jobs'
/// costs. Returns the figure to print, and the ids of jobs billed that no client got.
pub async fn usage_counted_once(
    world: &World,
    region: &str,
    sent: &[Sent],
) -> (String, Vec<String>) {
    let seen: Vec<&str> = sent
        .iter()
        .filter(|s| s.completed() && s.region.as_deref() == Some(region))
        .filter_map(|s| s.id.as_deref())
        .collect();
    let kept = records(world, region).await;
    let mut ids: Vec<&str> = kept.iter().map(|r| r.job_id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "{region} recorded a job twice");
    for id in &seen {
        assert!(
            ids.binary_search(id).is_ok(),
            "{region} has no record of {id}, which the client saw completed"
        );
    }
    let completed: Vec<&UsageRecord> = kept
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .collect();
    let charged: Nanos = completed.iter().map(|r| r.cost_nanos).sum();
    eventually(&format!("{region}'s ledger comes to {charged}"), || async {
        ledger(world, region).await == Some(charged)
    })
    .await;
    let figure = format!(
        "{region}: {} jobs recorded once ({} completed, {} of them unseen by a client), ledger {charged} = records",
        kept.len(),
        completed.len(),
        completed.len().saturating_sub(seen.len())
    );
    let unseen = completed
        .iter()
        .filter(|r| !seen.contains(&r.job_id.as_str()))
        .map(|r| r.job_id.clone())
        .collect();
    (figure, unseen)
}

/// Adds `region`'s usage figure to `tally`; returns the jobs billed there that no client got.
pub async fn add_usage(
    tally: &mut Tally,
    world: &World,
    region: &str,
    sent: &[Sent],
) -> Vec<String> {
    let (figure, unseen) = usage_counted_once(world, region, sent).await;
    tally.figure(figure);
    unseen
}

/// Prints `tally`, then checks that nothing was lost and that every billed job is one a
/// client got (none made twice, none whose answer could not be had again).
pub fn settle(tally: &Tally, unseen: &[String], sent: &[Sent]) {
    tally.print();
    if !unseen.is_empty() {
        for s in sent.iter().filter(|s| s.resent() || !s.completed()) {
            eprintln!("chaos | {} | {s:?}", tally.scenario);
        }
    }
    tally.assert_nothing_lost();
    assert!(
        unseen.is_empty(),
        "{}: jobs billed that no client got (one request made two jobs, or a lost answer \
         could not be had again): {unseen:?}",
        tally.scenario
    );
}
