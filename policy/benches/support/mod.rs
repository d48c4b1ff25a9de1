//! A large synthetic world shared by the benchmarks: 50 regions in 6 jurisdictions around
//! the globe, 200 models served by varying subsets of them, and tenants with and without
//! residency, with every region healthy and reporting per-model queues.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use policy::spec::JurisdictionSpec;
use policy::{
    Catalog, CatalogSpec, LiveStatus, Location, ModelLoad, ModelSpec, PoolSpec, RegionSpec,
    RegionStatus, ResidencySpec, TenantSpec,
};

pub const NOW_MS: u64 = 1_800_000_000_000;
pub const JURISDICTIONS: [&str; 6] = ["us", "eu", "uk", "in", "jp", "br"];

/// A deterministic pseudo-random sequence (SplitMix64), so every run benches the same world.
pub struct Mix(u64);

impl Mix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn world(regions: usize, models: usize) -> (Catalog, LiveStatus) {
    let mut rng = Mix::new(42);
    let spec = CatalogSpec {
        jurisdictions: JURISDICTIONS
            .iter()
            .map(|j| JurisdictionSpec {
                id: (*j).into(),
                name: None,
            })
            .collect(),
        regions: (0..regions)
            .map(|i| RegionSpec {
                id: format!("region-{i}"),
                jurisdiction: JURISDICTIONS[i % JURISDICTIONS.len()].into(),
                location: Location::new(rng.unit() * 120.0 - 60.0, rng.unit() * 360.0 - 180.0),
                endpoint: format!("https://region-{i}.example"),
                pools: vec![PoolSpec {
                    id: "h100".into(),
                    gpu: "H100".into(),
                    reserved: 1 + rng.below(8) as i64,
                    reserved_price_per_hour: Some(1.5 + rng.unit()),
                    on_demand_max: rng.below(16) as i64,
                    on_demand_price_per_hour: Some(3.0 + rng.unit() * 2.0),
                }],
            })
            .collect(),
        models: (0..models)
            .map(|m| ModelSpec {
                id: format!("bench/model-{m}"),
                kind: "image-to-image".into(),
                unit: "megapixel".into(),
                price_per_unit: 0.002,
                gpu_seconds_per_unit: 0.05 + rng.unit(),
                // Most models everywhere; some in a subset of regions.
                regions: (m % 4 == 0).then(|| {
                    (0..regions)
                        .filter(|r| (r + m) % 3 != 0)
                        .map(|r| format!("region-{r}"))
                        .collect()
                }),
                weights: None,
            })
            .collect(),
        tenants: vec![
            TenantSpec {
                id: "global".into(),
                name: None,
                residency: ResidencySpec::Any,
                quotas: Default::default(),
                allowed_models: None,
                latency_goal_ms: Some(1500.0),
                latency_value_per_second: 0.01,
            },
            TenantSpec {
                id: "eu-only".into(),
                name: None,
                residency: ResidencySpec::Only {
                    jurisdictions: vec!["eu".into()],
                    regions: vec![],
                },
                quotas: Default::default(),
                allowed_models: None,
                latency_goal_ms: Some(1500.0),
                latency_value_per_second: 0.01,
            },
        ],
        ..CatalogSpec::default()
    };
    let catalog = spec.validate().expect("the benchmark world is valid");
    let mut live = LiveStatus::new(&catalog);
    for (r, region) in catalog.regions().iter().enumerate() {
        let mut st = RegionStatus {
            last_heartbeat_ms: Some(NOW_MS - 400),
            healthy: true,
            free_reserved: rng.below(u64::from(region.reserved_slots()) + 1) as u32,
            free_on_demand: rng.below(2) as u32,
            on_demand_startable: region.on_demand_slots() / 2,
            ..RegionStatus::default()
        };
        for m in 0..catalog.models().len() {
            st.set_model_load(
                m,
                ModelLoad {
                    queue_depth: rng.below(5) as u32,
                    queue_room: 32,
                    expected_wait_ms: rng.unit() * 400.0,
                    service_ms_per_unit: None,
                    loaded: rng.below(4) != 0,
                    cold_start_ms: 2000.0,
                },
            );
        }
        *live.region_mut(r).unwrap() = st;
    }
    (catalog, live)
}
