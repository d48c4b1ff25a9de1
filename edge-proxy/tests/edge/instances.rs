//! A region of several instances (agents): a job goes to the instance with an idle reserved
//! slot; an instance that cannot be reached is passed over for another of the same region
//! before any other region; a call about a request goes to the instance its id names, and
//! answers `503` with `Retry-After` while that instance cannot be reached.

use control_plane_client::wire::{AgentReport, ModelReport};
use testkit::tokens::AGENT;

use crate::support::{Answer, Behaviour, StandInAgent, TestEdge, World, run_esrgan};

/// The edge is in Frankfurt: `euro`'s jobs go to eu-central first, then eu-west.
const REGION: &str = "eu-central";

/// eu-central's instances, each a stand-in that names itself in its request ids.
struct Instances {
    gpu1: StandInAgent,
    gpu2: StandInAgent,
    gpu3: StandInAgent,
}

/// Registers `instance` of eu-central at `endpoint` with `reserved` and `on_demand` idle
/// slots and an expected wait for ESRGAN of `wait_ms`.
async fn report(
    world: &World,
    instance: &str,
    endpoint: &str,
    (reserved, on_demand): (u32, u32),
    wait_ms: f64,
) {
    let load = ModelReport {
        queue_depth: 0,
        queue_room: 8,
        expected_wait_ms: wait_ms,
        service_ms_per_unit: None,
        loaded: true,
        cold_start_ms: 0.0,
    };
    let report = AgentReport {
        healthy: true,
        instance: instance.into(),
        endpoint: endpoint.into(),
        free_reserved: reserved,
        free_on_demand: on_demand,
        models: [(crate::support::ESRGAN.to_owned(), load)].into(),
        ..AgentReport::default()
    };
    world.client(AGENT).register(REGION, &report).await.unwrap();
}

/// eu-central as three instances: gpu-1 with only on-demand slots idle, gpu-2 with an idle
/// reserved slot, gpu-3 (nothing listens) with an idle reserved slot and the shortest
/// expected wait; the region's one-agent registration is gone. Returns an edge that routes
/// on all of it.
async fn three_instances(world: &World) -> (Instances, TestEdge) {
    let instances = Instances {
        gpu1: StandInAgent::start_as(REGION, "gpu-1", Behaviour::Accept).await,
        gpu2: StandInAgent::start_as(REGION, "gpu-2", Behaviour::Accept).await,
        gpu3: StandInAgent::start_as(REGION, "gpu-3", Behaviour::Down).await,
    };
    world.client(AGENT).deregister(REGION, "").await.unwrap();
    report(world, "gpu-1", &instances.gpu1.endpoint, (0, 2), 0.0).await;
    report(world, "gpu-2", &instances.gpu2.endpoint, (1, 0), 50.0).await;
    report(world, "gpu-3", &instances.gpu3.endpoint, (4, 0), 0.0).await;
    let edge = world.start_edge(world.edge_config()).await;
    let revision = world.client(testkit::tokens::EDGE).snapshot().await;
    edge.wait_for_revision(revision.unwrap().revision).await;
    (instances, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_passed_over_for_another_of_its_region_with_a_reserved_slot() {
    let world = World::start(&[]).await;
    let (instances, edge) = three_instances(&world).await;
    let key = world.key("euro");

    // gpu-3 ranks first (an idle reserved slot, no wait) but nothing listens there: the job moves
    // to gpu-2, the other instance with an idle reserved slot, not to gpu-1 (on-demand) and
    // not to eu-west.
    let job = run_esrgan(&edge, key, None).await;
    assert_eq!(job.status, 200, "{}", job.body);
    assert_eq!(job.header("x-meridian-region"), Some(REGION));
    assert_eq!(job.header("x-meridian-instance"), Some("gpu-2"));
    let id = job.body["request_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("eu-central.gpu-2."), "{id}");
    assert_eq!(instances.gpu2.seen().len(), 1);
    assert!(instances.gpu1.seen().is_empty());
    assert!(world.agent("eu-west").seen().is_empty());

    // Calls that fail on gpu-3 open its circuit, not the region's: the next job goes to
    // gpu-2 at once, and the region still serves.
    for _ in 0..8 {
        let path = format!("/v1/requests/{REGION}.gpu-3.0123456789abcdef0123456789abcdef");
        let failed = Answer::of(edge.get(&path, key).await.unwrap()).await;
        assert_eq!(failed.status, 503, "{}", failed.body);
    }
    let metrics = edge.metrics().await.unwrap();
    let gauge = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        gauge("meridian_edge_instance_circuit_state{instance=\"gpu-3\",region=\"eu-central\"} 1"),
        "{metrics}"
    );
    assert!(
        gauge("meridian_edge_circuit_state{region=\"eu-central\"} 0"),
        "{metrics}"
    );
    let again = run_esrgan(&edge, key, None).await;
    assert_eq!(again.header("x-meridian-instance"), Some("gpu-2"));
    assert_eq!(instances.gpu2.seen().len(), 2);

    // A call about the job goes to gpu-2, the instance its id names.
    let status = Answer::of(edge.get(&format!("/v1/requests/{id}"), key).await.unwrap()).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.header("x-meridian-instance"), Some("gpu-2"));
    assert_eq!(instances.gpu2.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_about_a_request_reach_only_its_instance_and_wait_for_it() {
    let world = World::start(&[]).await;
    let (instances, edge) = three_instances(&world).await;
    let key = world.key("euro");
    let hex = "0123456789abcdef0123456789abcdef";

    // gpu-3 reports but cannot be reached: its jobs are not lost, the call says to come back.
    let away = Answer::of(
        edge.get(&format!("/v1/requests/{REGION}.gpu-3.{hex}"), key)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(away.status, 503, "{}", away.body);
    assert_eq!(away.error_type(), "instance_unavailable");
    assert!(away.header("retry-after").is_some());
    // The edge closes the connection after a failed proxying, and says so.
    assert_eq!(away.header("connection"), Some("close"));
    assert!(
        away.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpu-3"),
        "{}",
        away.body
    );

    // gpu-2 drains and leaves: its jobs stay on its disk, so calls about them wait for it
    // rather than being told the request does not exist.
    world
        .client(AGENT)
        .deregister(REGION, "gpu-2")
        .await
        .unwrap();
    let revision = world.client(testkit::tokens::EDGE).snapshot().await;
    edge.wait_for_revision(revision.unwrap().revision).await;
    let left = Answer::of(
        edge.get(&format!("/v1/requests/{REGION}.gpu-2.{hex}/status"), key)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(left.status, 503, "{}", left.body);
    assert_eq!(left.error_type(), "instance_unavailable");
    assert_eq!(left.header("retry-after"), Some("5"));
    assert!(instances.gpu2.seen().is_empty(), "nothing reached it");

    // An instance the region never had holds nothing.
    let unknown = Answer::of(
        edge.get(&format!("/v1/requests/{REGION}.gpu-9.{hex}"), key)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // gpu-1's id goes to gpu-1 (which does not know it: its own 404), never to gpu-2.
    let other = Answer::of(
        edge.get(&format!("/v1/requests/{REGION}.gpu-1.{hex}"), key)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(instances.gpu1.seen().len(), 1);
    assert!(instances.gpu2.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_idle_reserved_slots_before_on_demand_ones() {
    let world = World::start(&[]).await;
    let instances = [
        StandInAgent::start_as(REGION, "gpu-1", Behaviour::Accept).await,
        StandInAgent::start_as(REGION, "gpu-2", Behaviour::Accept).await,
    ];
    world.client(AGENT).deregister(REGION, "").await.unwrap();
    report(&world, "gpu-1", &instances[0].endpoint, (1, 4), 0.0).await;
    report(&world, "gpu-2", &instances[1].endpoint, (1, 0), 0.0).await;
    let edge = world.start_edge(world.edge_config()).await;
    let revision = world.client(testkit::tokens::EDGE).snapshot().await;
    edge.wait_for_revision(revision.unwrap().revision).await;
    let key = world.key("euro").to_owned();

    // Both instances hold their answers, so the first two jobs stay in flight: the first
    // takes gpu-1's reserved slot, the second gpu-2's rather than gpu-1's on-demand slot.
    for instance in &instances {
        instance.hold();
    }
    let mut jobs = Vec::new();
    for sent in 1..=2 {
        let (edge_base, key) = (edge.base.clone(), key.clone());
        let http = edge.http.clone();
        jobs.push(tokio::spawn(async move {
            let response = http
                .post(format!("{edge_base}/v1/run/{}", crate::support::ESRGAN))
                .header("authorization", format!("Bearer {key}"))
                .json(&serde_json::json!({"input": {"image": "aGVsbG8="}}))
                .send()
                .await
                .unwrap();
            Answer::of(response).await
        }));
        let total = || instances.iter().map(|i| i.seen().len()).sum::<usize>();
        testkit::eventually("the job reaches an instance", || async { total() == sent }).await;
    }
    assert_eq!(instances[0].seen().len(), 1, "gpu-1's reserved slot");
    assert_eq!(instances[1].seen().len(), 1, "gpu-2's reserved slot");
    for instance in &instances {
        instance.release();
    }
    for job in jobs {
        assert_eq!(job.await.unwrap().status, 200);
    }
}
