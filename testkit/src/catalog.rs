//! Test catalogs, written once: a builder for the catalog a test world runs on (regions with
//! one pool each, models, tenants), rendered as the TOML an operator writes and read back
//! strictly, so every test catalog is also a valid configuration file.

use std::fmt::Write as _;

use policy::CatalogSpec;

/// A region of a test catalog, with one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Jurisdiction id.
    pub jurisdiction: String,
    /// Latitude and longitude.
    pub location: (f64, f64),
    /// The agent's base URL.
    pub endpoint: String,
    /// The pool's id.
    pub pool: String,
    /// The pool's GPU type.
    pub gpu: String,
    /// Reserved GPUs and their price per hour.
    pub reserved: (u32, f64),
    /// On-demand GPUs and their price per hour.
    pub on_demand: (u32, f64),
}

impl Region {
    /// A region with an `h100` pool of two reserved GPUs at 2.2 an hour and no on-demand
    /// ones, whose agent is at `endpoint`.
    pub fn new(id: &str, jurisdiction: &str, location: (f64, f64), endpoint: &str) -> Self {
        Self {
            id: id.to_owned(),
            jurisdiction: jurisdiction.to_owned(),
            location,
            endpoint: endpoint.to_owned(),
            pool: "h100".to_owned(),
            gpu: "H100".to_owned(),
            reserved: (2, 2.2),
            on_demand: (0, 0.0),
        }
    }

    /// The pool's id and GPU type.
    #[must_use]
    pub fn pool(mut self, id: &str, gpu: &str) -> Self {
        self.pool = id.to_owned();
        self.gpu = gpu.to_owned();
        self
    }

    /// `gpus` reserved GPUs at `price` an hour.
    #[must_use]
    pub fn reserved(mut self, gpus: u32, price: f64) -> Self {
        self.reserved = (gpus, price);
        self
    }

    /// At most `gpus` on-demand GPUs at `price` an hour.
    #[must_use]
    pub fn on_demand(mut self, gpus: u32, price: f64) -> Self {
        self.on_demand = (gpus, price);
        self
    }

    fn pool_toml(&self) -> String {
        let mut pool = format!("id = \"{}\", gpu = \"{}\"", self.pool, self.gpu);
        let (reserved, reserved_price) = self.reserved;
        if reserved > 0 {
            let _ = write!(
                pool,
                ", reserved = {reserved}, reserved_price_per_hour = {reserved_price:?}"
            );
        }
        let (on_demand, on_demand_price) = self.on_demand;
        if on_demand > 0 {
            let _ = write!(
                pool,
                ", on_demand_max = {on_demand}, on_demand_price_per_hour = {on_demand_price:?}"
            );
        }
        pool
    }
}

/// A model of a test catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `owner/name`.
    pub id: String,
    /// What it does.
    pub kind: String,
    /// The pricing unit.
    pub unit: String,
    /// Price per unit.
    pub price_per_unit: f64,
    /// Expected GPU-seconds per unit.
    pub gpu_seconds_per_unit: f64,
    /// The regions serving it (`None`: every region).
    pub regions: Option<Vec<String>>,
}

impl Model {
    /// A model of `kind` billed in `unit` at `price_per_unit`, expecting 0.1 GPU-seconds a
    /// unit, served everywhere.
    pub fn new(id: &str, kind: &str, unit: &str, price_per_unit: f64) -> Self {
        Self {
            id: id.to_owned(),
            kind: kind.to_owned(),
            unit: unit.to_owned(),
            price_per_unit,
            gpu_seconds_per_unit: 0.1,
            regions: None,
        }
    }

    /// ESRGAN ×4 as the tests price it: 0.002 a megapixel, 0.4 GPU-seconds a megapixel.
    pub fn esrgan_x4() -> Self {
        Self {
            gpu_seconds_per_unit: 0.4,
            ..Self::new("meridian/esrgan-x4", "image-to-image", "megapixel", 0.002)
        }
    }

    /// Expecting `seconds` GPU-seconds a unit.
    #[must_use]
    pub fn gpu_seconds(mut self, seconds: f64) -> Self {
        self.gpu_seconds_per_unit = seconds;
        self
    }

    /// Served only in `regions`.
    #[must_use]
    pub fn only_in(mut self, regions: &[&str]) -> Self {
        self.regions = Some(regions.iter().map(|r| (*r).to_owned()).collect());
        self
    }
}

/// A test catalog being put together.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    routing: String,
    jurisdictions: Vec<String>,
    regions: Vec<Region>,
    models: Vec<Model>,
    tenants: String,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// `[routing]` settings, as TOML lines (`heartbeat_timeout_ms = 6000`).
    #[must_use]
    pub fn routing(mut self, lines: &str) -> Self {
        self.routing = lines.to_owned();
        self
    }

    /// Declares jurisdictions beyond those of its regions (for tenants restricted to a
    /// jurisdiction without a region).
    #[must_use]
    pub fn jurisdictions(mut self, ids: &[&str]) -> Self {
        for id in ids {
            self.declare(id);
        }
        self
    }

    fn declare(&mut self, jurisdiction: &str) {
        if !self.jurisdictions.iter().any(|j| j == jurisdiction) {
            self.jurisdictions.push(jurisdiction.to_owned());
        }
    }

    /// Adds a region (and declares its jurisdiction).
    #[must_use]
    pub fn region(mut self, region: Region) -> Self {
        self.declare(&region.jurisdiction.clone());
        self.regions.push(region);
        self
    }

    /// Adds a model.
    #[must_use]
    pub fn model(mut self, model: Model) -> Self {
        self.models.push(model);
        self
    }

    /// Adds `[[tenants]]` tables, as TOML.
    #[must_use]
    pub fn tenants(mut self, toml: &str) -> Self {
        self.tenants.push_str(toml);
        self.tenants.push('\n');
        self
    }

    /// The catalog as the TOML an operator would write.
    pub fn toml(&self) -> String {
        let mut text = String::new();
        if !self.routing.is_empty() {
            let _ = writeln!(text, "[routing]\n{}\n", self.routing);
        }
        for j in &self.jurisdictions {
            let _ = writeln!(text, "[[jurisdictions]]\nid = \"{j}\"\n");
        }
        for r in &self.regions {
            let (lat, lon) = r.location;
            let _ = writeln!(
                text,
                "[[regions]]\nid = \"{}\"\njurisdiction = \"{}\"\nlocation = {{ lat = {lat:?}, \
                 lon = {lon:?} }}\nendpoint = \"{}\"\npools = [{{ {} }}]\n",
                r.id,
                r.jurisdiction,
                r.endpoint,
                r.pool_toml()
            );
        }
        for m in &self.models {
            let _ = writeln!(
                text,
                "[[models]]\nid = \"{}\"\nkind = \"{}\"\nunit = \"{}\"\nprice_per_unit = {:?}\n\
                 gpu_seconds_per_unit = {:?}",
                m.id, m.kind, m.unit, m.price_per_unit, m.gpu_seconds_per_unit
            );
            if let Some(regions) = &m.regions {
                let quoted: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
                let _ = writeln!(text, "regions = [{}]", quoted.join(", "));
            }
            text.push('\n');
        }
        text.push_str(&self.tenants);
        text
    }

    /// The catalog, read as the control plane reads a catalog file (strictly).
    pub fn build(&self) -> CatalogSpec {
        let text = self.toml();
        CatalogSpec::from_toml(&text)
            .unwrap_or_else(|e| panic!("the test catalog does not parse: {e}\n{text}"))
    }
}

/// The tenants of a test world: `acme` may run anywhere, `euro` only in the EU, `brit` only
/// in the UK, `nippon` only in Japan, `slow` anywhere but at one request per five seconds.
pub const TENANTS: &str = r#"
[[tenants]]
id = "acme"
residency = "any"
[[tenants]]
id = "euro"
residency = { jurisdictions = ["eu"] }
[[tenants]]
id = "brit"
residency = { jurisdictions = ["uk"] }
[[tenants]]
id = "nippon"
residency = { jurisdictions = ["jp"] }
[[tenants]]
id = "slow"
residency = "any"
quotas = { requests_per_second = 0.2, burst = 1 }
"#;

/// The smallest useful world: region `eu-west` (jurisdiction `eu`, Dublin, two reserved H100s
/// at 2.2 an hour, its agent at `endpoint`), ESRGAN ×4, and tenant `acme` restricted to the
/// EU.
pub fn eu_west(endpoint: &str) -> Catalog {
    Catalog::new()
        .region(Region::new("eu-west", "eu", (53.35, -6.26), endpoint))
        .model(Model::esrgan_x4())
        .tenants("[[tenants]]\nid = \"acme\"\nresidency = { jurisdictions = [\"eu\"] }")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toml_reads_back_as_built() {
        let spec = eu_west("http://127.0.0.1:9102")
            .region(
                Region::new("us-east", "us", (39.04, -77.49), "http://127.0.0.1:9101")
                    .reserved(0, 0.0)
                    .on_demand(4, 3.9),
            )
            .model(Model::new("test/echo", "image-to-image", "image", 0.25).only_in(&["eu-west"]))
            .jurisdictions(&["jp"])
            .routing("heartbeat_timeout_ms = 6000")
            .build();
        assert_eq!(spec.routing.heartbeat_timeout_ms, 6000);
        let ids: Vec<&str> = spec.jurisdictions.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["eu", "us", "jp"]);
        assert_eq!(spec.regions[0].pools[0].reserved, 2);
        assert_eq!(spec.regions[0].pools[0].reserved_price_per_hour, Some(2.2));
        assert_eq!(spec.regions[1].pools[0].on_demand_max, 4);
        assert_eq!(spec.models[1].regions, Some(vec!["eu-west".to_owned()]));
        assert_eq!(spec.tenants[0].id, "acme");
        assert!(spec.validate().is_ok());
    }
}
