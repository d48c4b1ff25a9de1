//! A region served by three instances — agents of their own, each with one of the region's
//! three reserved slots, reporting where edges reach it — behind one edge: jobs spread over
//! all three; one SIGKILLed under load loses no submission (the other two take them) and
//! calls about its jobs answer `503` with `Retry-After` until it is back, when each of its
//! jobs ends; a rolling drain through the control plane, one instance after another, loses
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::chaos::{
    Call, End, InstanceDef, Load, Plan, Sent, Store, Tally, World, WorldSpec, follow,
    resend_unsettled, soak,
};
use tests::{RegionDef, eventually};
use tokio::time::Instant;

use super::{NODE, add_usage, settle, spec};
use crate::{DUBLIN, LONDON_IP};

/// The region of three instances.
const REGION: &str = "eu-west";

/// Dublin with one reserved slot per instance.
const DUBLIN_OF_THREE: RegionDef = RegionDef {
    reserved: 3,
    ..DUBLIN
};

/// Dublin's instances, a reserved slot each.
const THREE: &[InstanceDef] = &[instance("gpu-1"), instance("gpu-2"), instance("gpu-3")];

const fn instance(id: &'static str) -> InstanceDef {
    InstanceDef {
        region: REGION,
        id,
        reserved: 1,
        on_demand: 0,
    }
}

/// The instance SIGKILLed.
const VICTIM: &str = "gpu-2";

/// Dublin alone, served by [`THREE`].
fn world_spec() -> WorldSpec<'static> {
    WorldSpec {
        instances: THREE,
        ..spec(Store::Embedded, &[DUBLIN_OF_THREE])
    }
}

/// London's load: 20 jobs a second, long enough that several run at once.
fn plan(calls: &'static [Call], duration: Duration) -> Plan {
    Plan {
        rate: 20,
        duration,
        from: LONDON_IP,
        image_size: 32,
        calls,
    }
}

/// The control plane's view of the region's instances (admin API).
async fn listing(world: &World) -> Value {
    let url = format!(
        "{}/admin/v1/regions/{REGION}/instances",
        world.control_plane_url
    );
    let response = admin_http(world, reqwest::Method::GET, &url).await;
    assert_eq!(response.status(), 200, "list {REGION}'s instances");
    response.json().await.unwrap()
}

/// Asks the control plane to drain `instance`; returns the answer's status.
async fn order_drain(world: &World, instance: &str) -> u16 {
    let url = format!(
        "{}/admin/v1/regions/{REGION}/instances/{instance}/drain",
        world.control_plane_url
    );
    admin_http(world, reqwest::Method::POST, &url)
        .await
        .status()
        .as_u16()
}

async fn admin_http(world: &World, method: reqwest::Method, url: &str) -> reqwest::Response {
    world
        .edge
        .http
        .request(method, url)
        .bearer_auth(testkit::tokens::ADMIN)
        .send()
        .await
        .unwrap()
}

/// The instances the listing shows live, by id.
fn live_instances(listing: &Value) -> Vec<String> {
    let instances = listing["instances"].as_array().cloned().unwrap_or_default();
    instances
        .iter()
        .filter(|i| i["live"] == true)
        .filter_map(|i| i["instance"].as_str().map(str::to_owned))
        .collect()
}

/// Whether the listing shows `instance` live, healthy, neither draining nor ordered to.
fn serving(listing: &Value, instance: &str) -> bool {
    let instances = listing["instances"].as_array().cloned().unwrap_or_default();
    instances.iter().any(|i| {
        i["instance"] == instance
            && i["live"] == true
            && i["healthy"] == true
            && i["draining"] == false
            && i["drain_requested"] == false
    })
}

/// How a client asks about jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Each call on a new connection.
    New,
    /// Calls on kept-alive connections, as a pooled client makes them.
    KeptAlive,
}

impl Connection {
    fn client(self) -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(tests::patience());
        match self {
            Self::New => builder.pool_max_idle_per_host(0),
            Self::KeptAlive => builder,
        }
        .build()
        .unwrap()
    }
}

/// What a call about job `id` answers through the edge: its status and `Retry-After`.
async fn ask_about(
    http: &reqwest::Client,
    world: &World,
    key: &str,
    id: &str,
) -> (u16, Option<String>) {
    let response = http
        .get(format!("{}/v1/requests/{id}/status", world.edge.base))
        .header("authorization", format!("Key {key}"))
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

/// Every call about the jobs `ids` of the instance that is down answers `503` with
/// `Retry-After`.
async fn assert_away(http: &reqwest::Client, world: &World, key: &str, ids: &[String]) {
    for id in ids {
        let answer = ask_about(http, world, key, id).await;
        assert!(
            answer.0 == 503 && answer.1.is_some(),
            "{id} while {VICTIM} is down: {answer:?}"
        );
    }
}

/// The jobs agent `name` holds, running or queued.
async fn holds(world: &World, name: &str) -> f64 {
    world
        .agent_metric(name, "meridian_agent_jobs_in_progress")
        .await
        + world.agent_metric(name, "meridian_agent_queue_depth").await
}

/// Jobs accepted per instance, by their request ids.
fn accepted_per_instance(sent: &[Sent]) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for s in sent.iter().filter(|s| s.id.is_some()) {
        let instance = s
            .instance()
            .unwrap_or_else(|| format!("none in {:?}", s.id));
        *per.entry(instance).or_default() += 1;
    }
    per
}

fn describe(per: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = per.iter().map(|(i, n)| format!("{i} {n}")).collect();
    parts.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_spread_over_a_region_s_three_instances_whose_shares_add_up_to_its_pool() {
    let _turn = super::turn().await;
    let world = World::start(NODE, world_spec()).await;
    let key = world.key("acme");
    let plan = plan(&[Call::Run, Call::Queue], soak(Duration::from_secs(3)));
    let load = Load::start(&world.edge.base, &key, plan.clone());
    let mut sent = load.finish().await;
    follow(&world.edge.base, &key, &mut sent).await;

    let per = accepted_per_instance(&sent);
    let listed = listing(&world).await;
    let mut tally = Tally::of("three instances: spread", &plan, "none", &sent);
    tally.figure(format!("accepted per instance: {}", describe(&per)));
    let unseen = add_usage(&mut tally, &world, REGION, &sent).await;
    settle(&tally, &unseen, &sent);
    let ids: Vec<&str> = per.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["gpu-1", "gpu-2", "gpu-3"],
        "request ids name all three"
    );
    assert_eq!(
        live_instances(&listed),
        ["gpu-1", "gpu-2", "gpu-3"],
        "{listed:#}"
    );
    assert_eq!(listed["pools_match"], true, "{listed:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_under_load_loses_no_submission_and_its_jobs_wait_for_it() {
    kill_one_under_load(Connection::New).await;
}

/// The same, its calls about the dead instance's jobs made on kept-alive connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_about_a_killed_instance_s_jobs_keep_the_client_s_connection_usable() {
    kill_one_under_load(Connection::KeptAlive).await;
}

/// SIGKILLs [`VICTIM`] under a queue-API load, asks about its jobs over `connection`
/// while it is down, starts it again, and accounts for every request.
async fn kill_one_under_load(connection: Connection) {
    let _turn = super::turn().await;
    let http = connection.client();
    let mut world = World::start(NODE, world_spec()).await;
    let key = world.key("acme");
    let plan = plan(&[Call::Queue], soak(Duration::from_secs(5)));
    let load = Load::start(&world.edge.base, &key, plan.clone());
    let victim_jobs = |load: &Load| -> Vec<String> {
        let held = |id: &String| {
            contract::RequestId::new(id).is_ok_and(|id| id.instance() == Some(VICTIM))
        };
        load.accepted().into_iter().filter(held).collect()
    };
    eventually(&format!("{VICTIM} has accepted jobs"), || async {
        victim_jobs(&load).len() >= 5
    })
    .await;
    world.kill_agent(VICTIM).await;
    let killed = Instant::now();
    let killed_at = load.elapsed();
    let held = victim_jobs(&load);
    // Calls about its jobs: the instance may come back with them, so not 404 but 503.
    eventually(
        &format!("a call about {VICTIM}'s job answers 503 with Retry-After"),
        || async {
            let (status, retry_after) = ask_about(&http, &world, &key, &held[0]).await;
            status == 503 && retry_after.is_some()
        },
    )
    .await;
    let to_503 = killed.elapsed();
    assert_away(&http, &world, &key, &held).await;
    let mut sent = load.finish().await;
    // Still away once the load is over: its jobs wait for it.
    assert_away(&http, &world, &key, &held).await;
    let down_for = killed.elapsed();
    let after: Vec<Sent> = sent.iter().filter(|s| s.at >= killed_at).cloned().collect();
    let not_taken: Vec<&Sent> = after
        .iter()
        .filter(|s| {
            s.status != Some(202)
                || s.region.as_deref() != Some(REGION)
                || s.instance().is_none_or(|i| i == VICTIM)
        })
        .collect();
    world.restart_agent(VICTIM).await;
    let back = Instant::now();
    let mut victims: Vec<Sent> = sent
        .iter()
        .filter(|s| s.instance().as_deref() == Some(VICTIM))
        .cloned()
        .collect();
    follow(&world.edge.base, &key, &mut victims).await;
    let ended_after = back.elapsed();
    // Answers cut by the kill: the job may exist; the client asks again with its key.
    resend_unsettled(&world.edge.base, &key, &plan, &mut sent).await;
    follow(&world.edge.base, &key, &mut sent).await;

    let victim_ends: Vec<&Option<End>> = victims.iter().map(|s| &s.end).collect();
    let mut tally = Tally::of(
        "three instances: one SIGKILLed under load",
        &plan,
        &format!(
            "SIGKILL {VICTIM} holding {} accepted jobs, asked about on {connection:?} \
             connections; down {} ms",
            held.len(),
            down_for.as_millis()
        ),
        &sent,
    );
    tally.figure(format!(
        "kill → 503 with Retry-After {} ms; sent after the kill: {} ({} not taken by the \
         other two); {VICTIM}'s {} jobs all ended {} ms after its restart",
        to_503.as_millis(),
        after.len(),
        not_taken.len(),
        victim_ends.len(),
        ended_after.as_millis()
    ));
    tally.figure(format!(
        "accepted per instance: {}",
        describe(&accepted_per_instance(&sent))
    ));
    let unseen = add_usage(&mut tally, &world, REGION, &sent).await;
    settle(&tally, &unseen, &sent);
    assert!(!after.is_empty(), "requests were sent after the kill");
    assert!(
        not_taken.is_empty(),
        "submissions after the kill not accepted by the other two: {not_taken:#?}"
    );
    assert!(
        victim_ends
            .iter()
            .all(|end| matches!(end, Some(End::Completed | End::Failed(_)))),
        "{VICTIM}'s jobs end, completed or failed with a reason: {victim_ends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_drain_of_every_instance_under_load_loses_nothing() {
    let _turn = super::turn().await;
    let mut world = World::start(NODE, world_spec()).await;
    let key = world.key("acme");
    // Held until the roll ends (the duration only bounds it): enough that each instance
    // holds work when it is ordered to drain, little enough that the other two keep up.
    let plan = Plan {
        rate: 12,
        ..plan(&[Call::Queue, Call::Run], Duration::from_secs(120))
    };
    let load = Load::start(&world.edge.base, &key, plan.clone());
    eventually("the load is served", || async {
        load.served_by(REGION) >= 10
    })
    .await;
    let roll_started = Instant::now();
    let mut steps = Vec::new();
    for i in THREE {
        // Ordered to drain while it holds work.
        eventually(&format!("{} holds a job", i.id), || async {
            holds(&world, i.id).await > 0.0
        })
        .await;
        let holding = holds(&world, i.id).await;
        let ordered = Instant::now();
        assert_eq!(order_drain(&world, i.id).await, 202, "drain {}", i.id);
        let exit = world.await_exit(i.id).await;
        assert!(
            exit.success(),
            "{} exited after its drain with {exit}",
            i.id
        );
        let drained = ordered.elapsed();
        world.restart_agent(i.id).await;
        eventually(&format!("{} serves again", i.id), || async {
            serving(&listing(&world).await, i.id)
        })
        .await;
        steps.push(format!(
            "{} holding {holding} drained {} ms, serving again {} ms after the order",
            i.id,
            drained.as_millis(),
            ordered.elapsed().as_millis()
        ));
    }
    let roll = roll_started.elapsed();
    load.stop();
    let mut sent = load.finish().await;
    follow(&world.edge.base, &key, &mut sent).await;

    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.first_status(), Some(200 | 202)))
        .collect();
    let mut tally = Tally::of(
        "three instances: rolling drain",
        &plan,
        &format!(
            "drain each instance in turn, restart it; roll {} ms",
            roll.as_millis()
        ),
        &sent,
    );
    tally.load = format!("{} req/s until the roll ended", plan.rate);
    tally.figure(steps.join("; "));
    tally.figure(format!(
        "accepted per instance: {}",
        describe(&accepted_per_instance(&sent))
    ));
    let unseen = add_usage(&mut tally, &world, REGION, &sent).await;
    settle(&tally, &unseen, &sent);
    assert!(
        failed.is_empty(),
        "submissions failed during the roll: {failed:#?}"
    );
    assert_eq!(
        tally.completed, tally.sent,
        "every job accepted during the roll completes"
    );
}
