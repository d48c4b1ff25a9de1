//! Configuration validation: one precise error per problem, each naming its path and fix,
//! and every problem reported at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use policy::{CatalogSpec, ConfigProblems};

fn errors(toml_text: &str) -> ConfigProblems {
    CatalogSpec::from_toml(toml_text)
        .expect("the TOML itself parses")
        .validate()
        .expect_err("the configuration is invalid")
}

const GOOD: &str = include_str!("data/world.toml");

#[test]
fn the_world_and_the_shipped_example_are_valid() {
    let world = CatalogSpec::from_toml(GOOD).unwrap().validate().unwrap();
    assert_eq!(world.regions().len(), 6);
    // Intended: the EU-only tenants cannot reach tiny-sd, which the 451 cases rely on.
    let warned: Vec<&str> = world.warnings().iter().map(|w| w.place.as_str()).collect();
    assert_eq!(
        warned,
        ["tenants[0].residency", "tenants[4].residency"],
        "{:?}",
        world.warnings()
    );
    let example = include_str!("../../examples/catalog.toml");
    let catalog = CatalogSpec::from_toml(example).unwrap().validate().unwrap();
    assert!(catalog.warnings().is_empty(), "{:?}", catalog.warnings());
}

/// Each case: a change to a valid configuration, and the one error path it must produce.
#[test]
fn each_problem_is_reported_at_its_path() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (what, replace this, with this, expected path)
        (
            "negative reserved count",
            "reserved = 2, reserved_price_per_hour = 2.0, on_demand_max = 4, on_demand_price_per_hour = 4.0",
            "reserved = -2, reserved_price_per_hour = 2.0, on_demand_max = 4, on_demand_price_per_hour = 4.0",
            "regions[0].pools[0].reserved",
        ),
        (
            "negative price",
            "on_demand_price_per_hour = 3.0",
            "on_demand_price_per_hour = -3.0",
            "regions[1].pools[0].on_demand_price_per_hour",
        ),
        (
            "price missing for slots",
            ", on_demand_price_per_hour = 2.5",
            "",
            "regions[4].pools[0].on_demand_price_per_hour",
        ),
        (
            "unknown jurisdiction of a region",
            "jurisdiction = \"in\"",
            "jurisdiction = \"india\"",
            "regions[5].jurisdiction",
        ),
        (
            "duplicate region id",
            "id = \"eu-central\"",
            "id = \"eu-west\"",
            "regions[1].id",
        ),
        (
            "bad region id",
            "id = \"uk-south\"",
            "id = \"UK South\"",
            "regions[2].id",
        ),
        (
            "location off the Earth",
            "lat = 19.08, lon = 72.88",
            "lat = 119.08, lon = 72.88",
            "regions[5].location",
        ),
        (
            "endpoint not a URL",
            "endpoint = \"http://us-west.test\"",
            "endpoint = \"us-west.test\"",
            "regions[4].endpoint",
        ),
        (
            "unknown region in a model",
            "regions = [\"eu-west\", \"us-east\"]",
            "regions = [\"eu-west\", \"us-easy\"]",
            "models[1].regions[1]",
        ),
        (
            "unknown model kind",
            "kind = \"audio-analysis\"",
            "kind = \"audio-analytics\"",
            "models[1].kind",
        ),
        (
            "zero GPU-seconds",
            "gpu_seconds_per_unit = 2.0",
            "gpu_seconds_per_unit = 0.0",
            "models[2].gpu_seconds_per_unit",
        ),
        (
            "empty residency",
            "residency = { jurisdictions = [\"eu\"] }",
            "residency = { jurisdictions = [] }",
            "tenants[0].residency",
        ),
        (
            "unknown jurisdiction in residency",
            "residency = { jurisdictions = [\"uk\"], regions = [\"eu-west\"] }",
            "residency = { jurisdictions = [\"gb\"], regions = [\"eu-west\"] }",
            "tenants[4].residency.jurisdictions[0]",
        ),
        (
            "unknown region in residency",
            "regions = [\"eu-west\"] }",
            "regions = [\"eu-wset\"] }",
            "tenants[4].residency.regions[0]",
        ),
        (
            "unknown allowed model",
            "allowed_models = [\"meridian/silero-vad\"]",
            "allowed_models = [\"meridian/silero\"]",
            "tenants[5].allowed_models[0]",
        ),
        (
            "negative latency goal",
            "latency_goal_ms = 540",
            "latency_goal_ms = -540",
            "tenants[1].latency_goal_ms",
        ),
        (
            "duplicate tenant",
            "id = \"thrifty\"",
            "id = \"initech\"",
            "tenants[3].id",
        ),
    ];
    for (what, from, to, path) in cases {
        assert!(
            GOOD.contains(from),
            "{what}: the fixture changed, {from:?} not found"
        );
        let errs = errors(&GOOD.replacen(from, to, 1));
        let paths: Vec<&str> = errs.iter().map(|e| e.place.as_str()).collect();
        assert_eq!(paths, vec![*path], "{what}: {errs}");
        let e = errs.iter().next().unwrap();
        assert!(!e.problem.is_empty() && !e.fix.is_empty(), "{what}: {e}");
    }
}

#[test]
fn all_problems_are_reported_together_with_their_fixes() {
    let text = r#"
        currency = "usd"
        routing = { route_inflation = 0.5, heartbeat_timeout_ms = 0 }
        [[jurisdictions]]
        id = "eu"
        [[jurisdictions]]
        id = "eu"
        [[regions]]
        id = "eu-west"
        jurisdiction = "eu"
        location = { lat = 53.35, lon = -6.26 }
        endpoint = "http://eu-west.test"
        pools = [{ id = "h100", gpu = "", reserved = 0, on_demand_max = 0 }]
        [[tenants]]
        id = "acme"
        residency = { jurisdictions = ["eu"] }
        quotas = { burst = 5, max_concurrent = 0, monthly_budget = -1.0 }
    "#;
    let errs = errors(text);
    let report = errs.to_string();
    for path in [
        "currency",
        "routing.route_inflation",
        "routing.heartbeat_timeout_ms",
        "jurisdictions[1].id",
        "regions[0].pools[0].gpu",
        "regions[0].pools[0]",
        "tenants[0].quotas.burst",
        "tenants[0].quotas.max_concurrent",
        "tenants[0].quotas.monthly_budget",
    ] {
        assert!(errs.has_place(path), "missing {path} in:\n{report}");
    }
    assert_eq!(errs.len(), 9, "{report}");
    assert!(
        report.starts_with("9 problems in the configuration:"),
        "{report}"
    );
    assert!(
        report.contains("regions[0].pools[0]: the pool has no slots"),
        "{report}"
    );
    assert!(
        report.contains("fix: set route_inflation to 1 or more"),
        "{report}"
    );
}

#[test]
fn a_bad_region_does_not_also_make_its_references_errors() {
    // The region is invalid (bad location); the model naming it must not add "not defined".
    let text = GOOD.replacen("lat = 53.35, lon = -6.26", "lat = 153.35, lon = -6.26", 1);
    let errs = errors(&text);
    assert_eq!(
        errs.iter().map(|e| e.place.as_str()).collect::<Vec<_>>(),
        vec!["regions[0].location"],
        "{errs}"
    );
}

#[test]
fn legal_but_surprising_settings_are_warnings() {
    let text = GOOD.replace(
        "residency = { jurisdictions = [\"eu\"] }",
        "residency = { jurisdictions = [\"in\"] }",
    );
    let catalog = CatalogSpec::from_toml(&text).unwrap().validate().unwrap();
    let warnings: Vec<String> = catalog.warnings().iter().map(ToString::to_string).collect();
    // ap-south (in) does not serve silero-vad; banker still cannot reach tiny-sd.
    assert_eq!(
        warnings,
        vec![
            "tenants[0].residency: no region inside tenant acme's residency serves meridian/silero-vad, so those requests will be refused with 451",
            "tenants[4].residency: no region inside tenant banker's residency serves meridian/tiny-sd, so those requests will be refused with 451",
        ]
    );
}

#[test]
fn quota_defaults() {
    let text = GOOD.replacen(
        "latency_goal_ms = 1000",
        "latency_goal_ms = 1000\nquotas = { requests_per_second = 2.5 }",
        1,
    );
    let catalog = CatalogSpec::from_toml(&text).unwrap().validate().unwrap();
    let quotas = &catalog.tenant("acme").unwrap().quotas;
    let rate = quotas.rate.unwrap();
    assert_eq!((rate.per_second, rate.burst), (2.5, 3));
    assert_eq!((quotas.max_concurrent, quotas.budget.money), (None, None));
}

#[test]
fn a_rate_the_limiter_cannot_hold_is_refused_at_its_path() {
    let text = GOOD.replacen(
        "latency_goal_ms = 1000",
        "latency_goal_ms = 1000\nquotas = { requests_per_second = 2e9 }",
        1,
    );
    let errs = errors(&text);
    let e = errs.iter().next().unwrap();
    assert_eq!(e.place, "tenants[0].quotas.requests_per_second");
    assert!(e.problem.contains("1e9"), "{e}");
}
