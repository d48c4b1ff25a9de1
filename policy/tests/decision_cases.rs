//! Table-driven route decisions: the world in `data/world.toml`, a few status changes and a
//! request → the expected order of regions, the reasons for the others, and the refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use policy::{
    Catalog, CatalogSpec, Exclusion, LiveStatus, Location, ModelLoad, RegionStatus, RouteError,
    RouteRequest, SlotPath,
};

const NOW_MS: u64 = 1_800_000_000_000;

const LONDON: Location = Location::new(51.51, -0.13);
const FRANKFURT: Location = Location::new(50.11, 8.68);
const SEATTLE: Location = Location::new(47.61, -122.33);
const NEW_YORK: Location = Location::new(40.71, -74.01);

/// A change to one region's healthy, idle default status.
#[derive(Clone, Copy)]
enum Change {
    /// Never reported.
    Silent,
    /// Last heartbeat 10 s ago.
    Stale,
    Unhealthy,
    Draining,
    CircuitOpen,
    /// Reserved capacity full (no idle slot, no queue room); `warm` idle on-demand slots and
    /// `startable` more.
    ReservedBusy {
        warm: u32,
        startable: u32,
    },
    /// Every slot busy; the model's queue has this wait and room.
    Queue {
        wait_ms: f64,
        room: u32,
    },
    /// This edge already sent this many requests since the last report.
    InFlight(u32),
}

struct Case {
    name: &'static str,
    tenant: &'static str,
    model: &'static str,
    client: Location,
    changes: &'static [(&'static str, Change)],
    narrow_to: Option<&'static [&'static str]>,
    /// Expected candidates, best first.
    order: &'static [&'static str],
    /// Expected exclusions for these regions (others are not checked).
    excluded: &'static [(&'static str, Exclusion)],
    /// Expected HTTP status of the refusal when there is no candidate.
    refusal: Option<u16>,
}

fn world() -> Catalog {
    CatalogSpec::from_toml(include_str!("data/world.toml"))
        .unwrap()
        .validate()
        .unwrap()
}

fn status(catalog: &Catalog, changes: &[(&str, Change)]) -> LiveStatus {
    let mut live = LiveStatus::new(catalog);
    for (i, region) in catalog.regions().iter().enumerate() {
        *live.region_mut(i).unwrap() = RegionStatus {
            last_heartbeat_ms: Some(NOW_MS - 500),
            healthy: true,
            free_reserved: region.reserved_slots(),
            free_on_demand: 0,
            on_demand_startable: region.on_demand_slots(),
            ..RegionStatus::default()
        };
    }
    for (region, change) in changes {
        let i = catalog.region_index(region).expect("region in world.toml");
        let st = live.region_mut(i).unwrap();
        match *change {
            Change::Silent => st.last_heartbeat_ms = None,
            Change::Stale => st.last_heartbeat_ms = Some(NOW_MS - 10_000),
            Change::Unhealthy => st.healthy = false,
            Change::Draining => st.draining = true,
            Change::CircuitOpen => st.circuit_open = true,
            Change::ReservedBusy { warm, startable } => {
                st.free_reserved = 0;
                st.free_on_demand = warm;
                st.on_demand_startable = startable;
                for m in 0..catalog.models().len() {
                    st.set_model_load(
                        m,
                        ModelLoad {
                            queue_depth: 8,
                            queue_room: 0,
                            expected_wait_ms: 4000.0,
                            ..ModelLoad::default()
                        },
                    );
                }
            }
            Change::Queue { wait_ms, room } => {
                st.free_reserved = 0;
                st.free_on_demand = 0;
                st.on_demand_startable = 0;
                for m in 0..catalog.models().len() {
                    st.set_model_load(
                        m,
                        ModelLoad {
                            queue_depth: 3,
                            queue_room: room,
                            expected_wait_ms: wait_ms,
                            ..ModelLoad::default()
                        },
                    );
                }
            }
            Change::InFlight(n) => st.in_flight = n,
        }
    }
    live
}

const EU_ONLY: &[(&str, Exclusion)] = &[
    ("uk-south", Exclusion::OutsideTenantResidency),
    ("us-east", Exclusion::OutsideTenantResidency),
    ("us-west", Exclusion::OutsideTenantResidency),
    ("ap-south", Exclusion::OutsideTenantResidency),
];

const CASES: &[Case] = &[
    Case {
        name: "EU tenant from London: both EU regions, nearest first, nothing outside the EU",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[],
        narrow_to: None,
        order: &["eu-west", "eu-central"],
        excluded: EU_ONLY,
        refusal: None,
    },
    Case {
        name: "EU tenant: a silent EU region is skipped, the other EU region serves",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[("eu-west", Change::Silent)],
        narrow_to: None,
        order: &["eu-central"],
        excluded: &[
            ("eu-west", Exclusion::NoHeartbeat),
            ("us-east", Exclusion::OutsideTenantResidency),
        ],
        refusal: None,
    },
    Case {
        name: "EU tenant: no EU region healthy gives 503, never another jurisdiction",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[
            ("eu-west", Change::Unhealthy),
            ("eu-central", Change::Draining),
        ],
        narrow_to: None,
        order: &[],
        excluded: &[
            ("eu-west", Exclusion::Unhealthy),
            ("eu-central", Exclusion::Draining),
            ("us-east", Exclusion::OutsideTenantResidency),
        ],
        refusal: Some(503),
    },
    Case {
        name: "EU tenant asking for a model served only outside the EU gets 451",
        tenant: "acme",
        model: "meridian/tiny-sd",
        client: LONDON,
        changes: &[],
        narrow_to: None,
        order: &[],
        excluded: &[
            ("eu-west", Exclusion::ModelNotServed),
            ("us-east", Exclusion::OutsideTenantResidency),
        ],
        refusal: Some(451),
    },
    Case {
        name: "reserved before on-demand: idle reserved in Dublin beats on-demand next door",
        tenant: "initech",
        model: "meridian/esrgan-x4",
        client: FRANKFURT,
        changes: &[
            (
                "eu-central",
                Change::ReservedBusy {
                    warm: 1,
                    startable: 3,
                },
            ),
            ("uk-south", Change::Draining),
        ],
        narrow_to: None,
        // All reserved regions (nearest first) before the only on-demand one.
        order: &["eu-west", "us-east", "ap-south", "eu-central", "us-west"],
        excluded: &[("uk-south", Exclusion::Draining)],
        refusal: None,
    },
    Case {
        name: "the cheaper of two on-demand regions wins when latency is worth nothing",
        tenant: "thrifty",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[
            (
                "eu-west",
                Change::ReservedBusy {
                    warm: 1,
                    startable: 0,
                },
            ),
            (
                "eu-central",
                Change::ReservedBusy {
                    warm: 1,
                    startable: 0,
                },
            ),
            ("uk-south", Change::Silent),
            ("us-east", Change::Silent),
            ("us-west", Change::Silent),
            ("ap-south", Change::Silent),
        ],
        narrow_to: None,
        order: &["eu-central", "eu-west"],
        excluded: &[],
        refusal: None,
    },
    Case {
        name: "a latency goal moves traffic from far idle reserved to a near on-demand region",
        tenant: "globex",
        model: "meridian/esrgan-x4",
        client: SEATTLE,
        changes: &[(
            "us-west",
            Change::ReservedBusy {
                warm: 2,
                startable: 6,
            },
        )],
        narrow_to: None,
        // us-east (reserved, ~56 ms away) misses the 540 ms goal with 500 ms of service.
        order: &[
            "us-west",
            "us-east",
            "eu-west",
            "uk-south",
            "eu-central",
            "ap-south",
        ],
        excluded: &[],
        refusal: None,
    },
    Case {
        name: "without a goal the same request stays on far reserved capacity",
        tenant: "initech",
        model: "meridian/esrgan-x4",
        client: SEATTLE,
        changes: &[(
            "us-west",
            Change::ReservedBusy {
                warm: 2,
                startable: 6,
            },
        )],
        narrow_to: None,
        order: &[
            "us-east",
            "eu-west",
            "uk-south",
            "eu-central",
            "ap-south",
            "us-west",
        ],
        excluded: &[],
        refusal: None,
    },
    Case {
        name: "a full region (no slot, no queue room) is excluded as full",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[(
            "eu-west",
            Change::Queue {
                wait_ms: 100.0,
                room: 0,
            },
        )],
        narrow_to: None,
        order: &["eu-central"],
        excluded: &[("eu-west", Exclusion::Full { queue_depth: 3 })],
        refusal: None,
    },
    Case {
        name: "stale heartbeat and open circuit are reasons of their own",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[
            ("eu-west", Change::Stale),
            ("eu-central", Change::CircuitOpen),
        ],
        narrow_to: None,
        order: &[],
        excluded: &[
            (
                "eu-west",
                Exclusion::StaleHeartbeat {
                    age_ms: 10_000,
                    limit_ms: 3000,
                },
            ),
            ("eu-central", Exclusion::CircuitOpen),
        ],
        refusal: Some(503),
    },
    Case {
        name: "a request narrowed to the UK goes only to the UK",
        tenant: "globex",
        model: "meridian/esrgan-x4",
        client: NEW_YORK,
        changes: &[],
        narrow_to: Some(&["uk"]),
        order: &["uk-south"],
        excluded: &[
            ("us-east", Exclusion::OutsideRequestResidency),
            ("eu-west", Exclusion::OutsideRequestResidency),
        ],
        refusal: None,
    },
    Case {
        name: "narrowing an EU tenant to the US leaves nothing: 451",
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client: NEW_YORK,
        changes: &[],
        narrow_to: Some(&["us"]),
        order: &[],
        excluded: &[
            ("eu-west", Exclusion::OutsideRequestResidency),
            ("us-east", Exclusion::OutsideTenantResidency),
        ],
        refusal: Some(451),
    },
    Case {
        name: "residency by jurisdiction plus a named region",
        tenant: "banker",
        model: "meridian/esrgan-x4",
        client: LONDON,
        changes: &[],
        narrow_to: None,
        order: &["uk-south", "eu-west"],
        excluded: &[("eu-central", Exclusion::OutsideTenantResidency)],
        refusal: None,
    },
    Case {
        name: "a model served in few regions: the others say so",
        tenant: "initech",
        model: "meridian/silero-vad",
        client: LONDON,
        changes: &[],
        narrow_to: None,
        order: &["eu-west", "us-east"],
        excluded: &[
            ("uk-south", Exclusion::ModelNotServed),
            ("ap-south", Exclusion::ModelNotServed),
        ],
        refusal: None,
    },
];

#[test]
fn decision_cases() {
    let catalog = world();
    let mut failures = Vec::new();
    for case in CASES {
        let live = status(&catalog, case.changes);
        let narrowing = case.narrow_to.map(|j| catalog.narrowing(j, &[]).unwrap());
        let request = RouteRequest {
            tenant: case.tenant,
            model: case.model,
            client: case.client,
            narrowing: narrowing.as_ref(),
            units: 1.0,
            now_ms: NOW_MS,
        };
        let decision = catalog.route(&live, &request).unwrap();
        let order: Vec<&str> = decision
            .candidates
            .iter()
            .map(|c| catalog.regions()[c.region].id.as_str())
            .collect();
        if order != case.order {
            failures.push(format!(
                "{}: order {order:?}, expected {:?}",
                case.name, case.order
            ));
        }
        for (region, expected) in case.excluded {
            let got = decision.why_not(catalog.region_index(region).unwrap());
            if got != Some(*expected) {
                failures.push(format!(
                    "{}: {region} excluded as {got:?}, expected {expected:?}",
                    case.name
                ));
            }
        }
        let refusal = decision.refusal().map(|r| r.http_status());
        if refusal != case.refusal {
            failures.push(format!(
                "{}: refusal {refusal:?}, expected {:?}",
                case.name, case.refusal
            ));
        }
        // Every region is either a candidate or excluded, exactly once.
        assert_eq!(
            decision.candidates.len() + decision.excluded.len(),
            catalog.regions().len(),
            "{}",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn route_one(
    catalog: &Catalog,
    live: &LiveStatus,
    tenant: &str,
    model: &str,
) -> Result<policy::RouteDecision, RouteError> {
    catalog.route(
        live,
        &RouteRequest {
            tenant,
            model,
            client: LONDON,
            narrowing: None,
            units: 1.0,
            now_ms: NOW_MS,
        },
    )
}

#[test]
fn requests_that_cannot_be_routed_say_why_with_the_right_status() {
    let catalog = world();
    let live = status(&catalog, &[]);
    let err = route_one(&catalog, &live, "nobody", "meridian/esrgan-x4").unwrap_err();
    assert_eq!(err.http_status(), 401);
    let err = route_one(&catalog, &live, "acme", "meridian/nope").unwrap_err();
    assert_eq!(
        (
            err.http_status(),
            err.to_string().contains("GET /v1/models")
        ),
        (404, true)
    );
    let err = route_one(&catalog, &live, "audio-only", "meridian/esrgan-x4").unwrap_err();
    assert_eq!(err.http_status(), 403);
    let err = catalog
        .route(
            &live,
            &RouteRequest {
                tenant: "acme",
                model: "meridian/esrgan-x4",
                client: LONDON,
                narrowing: None,
                units: f64::NAN,
                now_ms: NOW_MS,
            },
        )
        .unwrap_err();
    assert_eq!(err.http_status(), 422);
    // A reused decision is emptied by a failed route, never left with the last answer.
    let mut reused = route_one(&catalog, &live, "acme", "meridian/esrgan-x4").unwrap();
    assert!(!reused.candidates.is_empty());
    let bad = RouteRequest {
        tenant: "nobody",
        model: "meridian/esrgan-x4",
        client: LONDON,
        narrowing: None,
        units: 1.0,
        now_ms: NOW_MS,
    };
    assert!(catalog.route_into(&live, &bad, &mut reused).is_err());
    assert!(reused.candidates.is_empty() && reused.excluded.is_empty());
    // Indices out of the catalog are the same errors, never a panic.
    let mut resolved = catalog
        .resolve(&RouteRequest {
            tenant: "acme",
            ..bad
        })
        .unwrap();
    resolved.model = catalog.models().len();
    let err = catalog
        .route_resolved_into(&live, &resolved, &mut reused)
        .unwrap_err();
    assert_eq!(err.http_status(), 404);
    resolved.model = 0;
    resolved.tenant = usize::MAX;
    let err = catalog
        .route_resolved_into(&live, &resolved, &mut reused)
        .unwrap_err();
    assert_eq!(err.http_status(), 401);
    let err = catalog.narrowing(&["mars"], &[]).unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(err.to_string().contains("mars"));
}

#[test]
fn queue_on_reserved_capacity_beats_buying_on_demand_while_it_meets_the_goal() {
    let catalog = world();
    let eu_west = catalog.region_index("eu-west").unwrap();
    for (wait_ms, expected) in [(200.0, SlotPath::Queued), (800.0, SlotPath::OnDemandWarm)] {
        let mut live = status(
            &catalog,
            &[
                ("eu-central", Change::Draining),
                ("eu-west", Change::Queue { wait_ms, room: 10 }),
            ],
        );
        live.region_mut(eu_west).unwrap().free_on_demand = 1;
        let decision = route_one(&catalog, &live, "acme", "meridian/esrgan-x4").unwrap();
        let target = decision.target().unwrap();
        assert_eq!(
            (target.region, target.path),
            (eu_west, expected),
            "queue wait {wait_ms} ms"
        );
        assert!(target.meets_goal);
    }
}

#[test]
fn this_edges_in_flight_requests_use_up_reported_free_slots() {
    let catalog = world();
    // eu-west has 2 idle reserved slots; this edge already sent 2 there.
    let live = status(&catalog, &[("eu-west", Change::InFlight(2))]);
    let decision = route_one(&catalog, &live, "acme", "meridian/esrgan-x4").unwrap();
    let eu_west = decision.candidates.iter().find(|c| c.region == 0).unwrap();
    assert_ne!(eu_west.path, SlotPath::ReservedIdle);
    // eu-central still has idle reserved slots, so it now ranks first.
    assert_eq!(
        catalog.regions()[decision.target().unwrap().region]
            .id
            .as_str(),
        "eu-central"
    );
}

#[test]
fn latency_estimate_adds_up_network_wait_and_service() {
    let catalog = world();
    let live = status(
        &catalog,
        &[(
            "eu-west",
            Change::Queue {
                wait_ms: 250.0,
                room: 5,
            },
        )],
    );
    let decision = catalog
        .route(
            &live,
            &RouteRequest {
                tenant: "initech",
                model: "meridian/esrgan-x4",
                client: Location::new(53.35, -6.26),
                narrowing: None,
                units: 2.0,
                now_ms: NOW_MS,
            },
        )
        .unwrap();
    let c = decision.candidates.iter().find(|c| c.region == 0).unwrap();
    // Client in Dublin itself: no network time; 2 megapixels × 0.5 GPU-s = 1000 ms.
    assert!(c.latency.network_ms.abs() < 1e-9);
    assert_eq!((c.latency.wait_ms, c.latency.service_ms), (250.0, 1000.0));
    // Queued on reserved capacity: 1 GPU-second at the default 0.05 per GPU-hour.
    assert!((c.marginal_cost - 1.0 * 0.05 / 3600.0).abs() < 1e-12);
}

#[test]
fn refusals_explain_themselves() {
    let catalog = world();
    let live = status(
        &catalog,
        &[("eu-west", Change::Draining), ("eu-central", Change::Stale)],
    );
    let decision = route_one(&catalog, &live, "acme", "meridian/esrgan-x4").unwrap();
    let text = decision.explain(&catalog);
    assert!(text.contains("eu-west (eu) is draining"), "{text}");
    assert!(
        text.contains("eu-central (eu) last heartbeat 10.0 s ago (limit 3.0 s)"),
        "{text}"
    );
    let decision = route_one(&catalog, &live, "acme", "meridian/tiny-sd").unwrap();
    let text = decision.explain(&catalog);
    assert!(
        text.starts_with(
            "no region allowed by the residency of tenant acme serves meridian/tiny-sd"
        ),
        "{text}"
    );
    assert!(
        text.contains("us-east (us) is outside the tenant's residency"),
        "{text}"
    );
}

#[test]
fn a_reused_decision_remembers_round_trips_without_ever_mixing_clients_or_catalogs() {
    let catalog = world();
    let live = status(&catalog, &[]);
    let request = |client: Location| RouteRequest {
        tenant: "acme",
        model: "meridian/esrgan-x4",
        client,
        narrowing: None,
        units: 1.0,
        now_ms: NOW_MS,
    };
    // More client locations than the decision remembers, each seen twice: every answer is
    // the one a fresh decision gives.
    let clients: Vec<Location> = (0..300)
        .map(|i| Location::new(f64::from(i % 150) - 75.0, f64::from(i * 7 % 360) - 180.0))
        .collect();
    let mut reused = policy::RouteDecision::default();
    for client in clients.iter().chain(&clients) {
        catalog
            .route_into(&live, &request(*client), &mut reused)
            .unwrap();
        assert_eq!(reused, catalog.route(&live, &request(*client)).unwrap());
    }
    // The same decision with a catalog whose regions moved: round trips of the new catalog.
    let mut spec = CatalogSpec::from_toml(include_str!("data/world.toml")).unwrap();
    for region in &mut spec.regions {
        region.location = Location::new(-region.location.lat, region.location.lon);
    }
    let moved = spec.validate().unwrap();
    let moved_live = status(&moved, &[]);
    catalog
        .route_into(&live, &request(LONDON), &mut reused)
        .unwrap();
    let before = reused.candidates[0].latency.network_ms;
    moved
        .route_into(&moved_live, &request(LONDON), &mut reused)
        .unwrap();
    assert_eq!(reused, moved.route(&moved_live, &request(LONDON)).unwrap());
    assert_ne!(reused.candidates[0].latency.network_ms, before);
}
