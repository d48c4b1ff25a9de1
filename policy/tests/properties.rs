//! Invariants of the route decision over random configurations, statuses and requests.
//!
//! - every candidate is inside the tenant's residency and the request's narrowing;
//! - no unhealthy, draining, silent, stale or circuit-open region is ever a candidate;
//! - when a region with an idle reserved slot meets the latency goal, no region that needs
//!   on-demand capacity ranks above it;
//! - the same inputs give the same answer;
//! - (in debug builds, by an assertion in the decision) skipping the other ways into a region
//!   that has an idle reserved slot meeting the goal never changes the answer;
//! - every region is a candidate or excluded, exactly once, and a 451 is only given when no
//!   region inside the allowed set serves the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use policy::{
    CapacityClass, CatalogSpec, Exclusion, LiveStatus, Location, ModelLoad, ModelSpec, PoolSpec,
    Refusal, RegionSpec, RegionStatus, ResidencySpec, RouteRequest, SlotPath, TenantSpec,
    spec::{JurisdictionSpec, RoutingSpec},
};

const JURISDICTIONS: [&str; 4] = ["eu", "us", "uk", "in"];
const NOW_MS: u64 = 1_800_000_000_000;

fn location() -> impl Strategy<Value = Location> {
    (-80.0..80.0f64, -180.0..180.0f64).prop_map(|(lat, lon)| Location::new(lat, lon))
}

fn region(i: usize) -> impl Strategy<Value = RegionSpec> {
    (
        0..JURISDICTIONS.len(),
        location(),
        0..4i64,
        0..4i64,
        0.5..5.0f64,
        0.5..8.0f64,
    )
        .prop_map(
            move |(j, location, reserved, on_demand, reserved_price, on_demand_price)| {
                // A pool needs at least one slot.
                let reserved = if reserved + on_demand == 0 {
                    1
                } else {
                    reserved
                };
                RegionSpec {
                    id: format!("r{i}"),
                    jurisdiction: JURISDICTIONS[j].to_owned(),
                    location,
                    endpoint: format!("http://r{i}.test"),
                    pools: vec![PoolSpec {
                        id: "gpu".into(),
                        gpu: "H100".into(),
                        reserved,
                        reserved_price_per_hour: Some(reserved_price),
                        on_demand_max: on_demand,
                        on_demand_price_per_hour: Some(on_demand_price),
                    }],
                }
            },
        )
}

fn model(i: usize, regions: usize) -> impl Strategy<Value = ModelSpec> {
    (
        proptest::option::of(proptest::sample::subsequence(
            (0..regions).collect::<Vec<_>>(),
            1..=regions,
        )),
        0.01..3.0f64,
    )
        .prop_map(move |(served, gpu_seconds)| ModelSpec {
            id: format!("m/model-{i}"),
            kind: "image-to-image".into(),
            unit: "image".into(),
            price_per_unit: 0.01,
            gpu_seconds_per_unit: gpu_seconds,
            regions: served.map(|rs| rs.into_iter().map(|r| format!("r{r}")).collect()),
            weights: None,
        })
}

fn tenant(i: usize, regions: usize) -> impl Strategy<Value = TenantSpec> {
    let residency = prop_oneof![
        Just(ResidencySpec::Any),
        (
            proptest::sample::subsequence(JURISDICTIONS.to_vec(), 0..=2),
            proptest::sample::subsequence((0..regions).collect::<Vec<_>>(), 0..=regions.min(2)),
        )
            .prop_filter("residency must allow something", |(j, r)| !j.is_empty()
                || !r.is_empty())
            .prop_map(|(j, r)| ResidencySpec::Only {
                jurisdictions: j.into_iter().map(str::to_owned).collect(),
                regions: r.into_iter().map(|r| format!("r{r}")).collect(),
            }),
    ];
    (
        residency,
        proptest::option::of(50.0..3000.0f64),
        0.0..0.1f64,
    )
        .prop_map(move |(residency, goal, lambda)| TenantSpec {
            id: format!("t{i}"),
            name: None,
            residency,
            quotas: Default::default(),
            allowed_models: None,
            latency_goal_ms: goal,
            latency_value_per_second: lambda,
        })
}

fn catalog_spec() -> impl Strategy<Value = CatalogSpec> {
    (1..10usize, 1..4usize, 1..4usize).prop_flat_map(|(nr, nm, nt)| {
        (
            (0..nr).map(region).collect::<Vec<_>>(),
            (0..nm).map(|i| model(i, nr)).collect::<Vec<_>>(),
            (0..nt).map(|i| tenant(i, nr)).collect::<Vec<_>>(),
            // Up to above the on-demand prices, so buying capacity is sometimes cheaper.
            0.0..10.0f64,
        )
            .prop_map(|(regions, models, tenants, opportunity)| CatalogSpec {
                jurisdictions: JURISDICTIONS
                    .iter()
                    .map(|j| JurisdictionSpec {
                        id: (*j).into(),
                        name: None,
                    })
                    .collect(),
                regions,
                models,
                tenants,
                routing: RoutingSpec {
                    reserved_opportunity_cost_per_gpu_hour: opportunity,
                    ..RoutingSpec::default()
                },
                ..CatalogSpec::default()
            })
    })
}

fn region_status() -> impl Strategy<Value = RegionStatus> {
    (
        prop_oneof![4 => Just(Some(NOW_MS - 100)), 1 => Just(Some(NOW_MS - 60_000)), 1 => Just(None)],
        proptest::bool::weighted(0.85),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        (0..3u32, 0..3u32, 0..3u32, 0..3u32),
        proptest::option::of((0..5u32, 0.0..2000.0f64, any::<bool>())),
        // Measured service times, a faulty one included.
        prop_oneof![4 => Just(None), 2 => (0.0..3000.0f64).prop_map(Some), 1 => Just(Some(f64::NAN))],
    )
        .prop_map(|(hb, healthy, draining, circuit_open, (free_reserved, free_on_demand, startable, in_flight), load, service)| {
            let mut st = RegionStatus {
                last_heartbeat_ms: hb,
                healthy,
                draining,
                circuit_open,
                free_reserved,
                free_on_demand,
                on_demand_startable: startable,
                in_flight,
                ..RegionStatus::default()
            };
            if let Some((room, wait, loaded)) = load {
                for m in 0..4 {
                    st.set_model_load(m, ModelLoad { queue_depth: 2, queue_room: room, expected_wait_ms: wait, service_ms_per_unit: service, loaded, cold_start_ms: 900.0 });
                }
            }
            st
        })
}

#[derive(Debug, Clone)]
struct World {
    spec: CatalogSpec,
    statuses: Vec<RegionStatus>,
    tenant: usize,
    model: usize,
    client: Location,
    narrowing: Option<Vec<&'static str>>,
    units: f64,
}

fn world() -> impl Strategy<Value = World> {
    catalog_spec().prop_flat_map(|spec| {
        let (nr, nm, nt) = (spec.regions.len(), spec.models.len(), spec.tenants.len());
        (
            Just(spec),
            proptest::collection::vec(region_status(), nr),
            0..nt,
            0..nm,
            location(),
            proptest::option::of(proptest::sample::subsequence(JURISDICTIONS.to_vec(), 1..=2)),
            0.1..4.0f64,
        )
            .prop_map(
                |(spec, statuses, tenant, model, client, narrowing, units)| World {
                    spec,
                    statuses,
                    tenant,
                    model,
                    client,
                    narrowing,
                    units,
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn route_decision_invariants(w in world()) {
        let catalog = w.spec.validate().expect("generated configurations are valid");
        let mut live = LiveStatus::new(&catalog);
        for (i, st) in w.statuses.iter().enumerate() {
            *live.region_mut(i).unwrap() = st.clone();
        }
        let narrowing = w.narrowing.as_ref().map(|j| catalog.narrowing(j, &[]).unwrap());
        let tenant = catalog.tenants()[w.tenant].clone();
        let model = catalog.models()[w.model].clone();
        let request = RouteRequest {
            tenant: tenant.id.as_str(),
            model: model.id.as_str(),
            client: w.client,
            narrowing: narrowing.as_ref(),
            units: w.units,
            now_ms: NOW_MS,
        };
        let decision = catalog.route(&live, &request).unwrap();

        // Same inputs, same answer (also through a reused buffer).
        prop_assert_eq!(&catalog.route(&live, &request).unwrap(), &decision);
        let mut reused = catalog.route(&live, &RouteRequest { units: 1.0, ..request.clone() }).unwrap();
        catalog.route_into(&live, &request, &mut reused).unwrap();
        prop_assert_eq!(&reused, &decision);
        // Resolved once to indices, the same answer.
        let resolved = catalog.resolve(&request).unwrap();
        catalog.route_resolved_into(&live, &resolved, &mut reused).unwrap();
        prop_assert_eq!(&reused, &decision);

        let inside = |r: usize| tenant.allowed_regions.contains(r) && narrowing.as_ref().is_none_or(|n| n.contains(r));
        for c in &decision.candidates {
            let st = &w.statuses[c.region];
            prop_assert!(inside(c.region), "candidate {} outside the residency", c.region);
            prop_assert!(model.served_by.contains(c.region));
            prop_assert!(st.healthy && !st.draining && !st.circuit_open);
            prop_assert!(st.last_heartbeat_ms.is_some_and(|hb| NOW_MS - hb <= 3000));
            prop_assert!(c.latency.total_ms() >= c.latency.service_ms && c.marginal_cost >= 0.0);
        }

        // Reserved before on-demand: an idle reserved slot meeting the goal outranks every
        // candidate that would buy on-demand capacity.
        if let Some(first_idle) = decision.candidates.iter().position(|c| c.path == SlotPath::ReservedIdle && c.meets_goal) {
            for c in &decision.candidates[..first_idle] {
                prop_assert_eq!(c.capacity, CapacityClass::Reserved, "on-demand region {} ranked above idle reserved capacity", c.region);
            }
        }
        // Tiers never interleave.
        let tiers: Vec<u8> = decision.candidates.iter().map(|c| c.tier()).collect();
        prop_assert!(tiers.windows(2).all(|w| w[0] <= w[1]), "tiers out of order: {:?}", tiers);

        // Every region accounted for exactly once.
        let mut seen: Vec<usize> = decision.candidates.iter().map(|c| c.region).chain(decision.excluded.iter().map(|(r, _)| *r)).collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..catalog.regions().len()).collect::<Vec<_>>());

        match decision.refusal() {
            Some(Refusal::Residency) => {
                for r in 0..catalog.regions().len() {
                    prop_assert!(!(inside(r) && model.served_by.contains(r)), "451 although region {} is allowed and serves the model", r);
                }
            }
            Some(Refusal::Unavailable) => {
                let served_inside = (0..catalog.regions().len()).any(|r| inside(r) && model.served_by.contains(r));
                let why: Vec<Exclusion> = decision.excluded.iter().map(|(_, e)| *e).collect();
                prop_assert!(served_inside || why.iter().all(|e| *e == Exclusion::ModelNotServed), "503 with {:?}", why);
            }
            None => prop_assert!(!decision.candidates.is_empty()),
        }
    }
}
