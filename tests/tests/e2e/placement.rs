//! Where work goes when every region could take it: reserved capacity before on-demand, the
//! cheaper of two equal regions, and a nearer, dearer region when the cheap one is too far
//! for the tenant's latency goal.

use tests::{Backend, RegionDef, Stack};

use crate::{LONDON_IP, NEW_YORK};

const fn region(
    id: &'static str,
    (lat, lon): (f64, f64),
    reserved: u32,
    on_demand_price: f64,
) -> RegionDef {
    RegionDef {
        id,
        jurisdiction: "us",
        lat,
        lon,
        reserved,
        reserved_price: 3.0,
        on_demand: 2,
        on_demand_price,
    }
}

const ASHBURN: (f64, f64) = (39.04, -77.49);
const DUBLIN: (f64, f64) = (53.35, -6.26);
const TOKYO: (f64, f64) = (35.68, 139.69);

/// λ = 0: only cost and the latency goal decide.
const TENANTS: &str = r#"
[[tenants]]
id = "thrifty"
residency = "any"
latency_value_per_second = 0.0
[[tenants]]
id = "hasty"
residency = "any"
latency_value_per_second = 0.0
latency_goal_ms = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserved_first_then_the_cheaper_region_unless_the_goal_needs_a_nearer_one() {
    let stack = Stack::start(
        Backend::Embedded,
        &[
            // Same place: one with idle reserved GPUs (dear per hour), one on-demand only.
            region("us-reserved", ASHBURN, 2, 9.0),
            region("us-on-demand", ASHBURN, 0, 1.0),
        ],
        TENANTS,
        NEW_YORK,
    )
    .await;
    let thrifty = stack.key("thrifty").to_owned();
    for _ in 0..3 {
        let a = stack.submit("run", &thrifty, None).await;
        assert_eq!(
            (a.status, a.region.as_deref()),
            (200, Some("us-reserved")),
            "{}",
            a.body
        );
    }
    drop(stack);

    let stack = Stack::start(
        Backend::Embedded,
        &[
            // On-demand only everywhere: equal places, different prices; and a far, cheapest one.
            region("eu-dear", DUBLIN, 0, 6.0),
            region("eu-cheap", DUBLIN, 0, 4.0),
            region("jp-cheapest", TOKYO, 0, 1.0),
        ],
        TENANTS,
        NEW_YORK,
    )
    .await;
    let thrifty = stack.key("thrifty").to_owned();
    let hasty = stack.key("hasty").to_owned();
    // No goal: the cheapest region, however far.
    let a = stack.submit("run", &thrifty, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("jp-cheapest")),
        "{}",
        a.body
    );
    // A 100 ms goal from London rules Tokyo out; of the two equal near regions, the cheaper.
    let a = stack.submit("run", &hasty, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("eu-cheap")),
        "{}",
        a.body
    );
}
