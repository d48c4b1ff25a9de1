//! An agent running in-process on port 0 with a catalog file ([`config`], [`catalog_toml`]),
//! and HTTP helpers that call it as an edge would; real model weights through the test kit
//! ([`fetch_models`]); spoken test audio ([`speech`]); hand-written media, bombs included
//! ([`media`]). Waiting is the test kit's
//! ([`eventually`], [`within`], [`patience`]).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod media;
pub mod speech;

use std::path::PathBuf;

use region_agent::config::AgentConfig;

/// What edges send agents in `x-meridian-edge-token` (the test kit's).
pub const EDGE_TOKEN: &str = testkit::tokens::AGENT_EDGE;
use testkit::catalog::{self, Catalog, Region};
pub use testkit::{eventually, patience, within};

/// A model as the catalog lists it: id, pricing unit, price per unit.
pub type Priced<'a> = (&'a str, &'a str, f64);

/// A Meridian catalog with region eu-west (one reserved CPU slot at 2.2 an hour) and
/// `models`, each expecting 0.1 GPU-seconds a unit.
pub fn catalog(models: &[Priced<'_>]) -> Catalog {
    let mut catalog = Catalog::new().region(
        Region::new("eu-west", "eu", (53.35, -6.26), "http://127.0.0.1:9102")
            .pool("cpu", "cpu")
            .reserved(1, 2.2),
    );
    for (id, unit, price) in models {
        catalog = catalog.model(catalog::Model::new(id, "image-to-image", unit, *price));
    }
    catalog
}

/// [`catalog`] as TOML, as a `catalog_file` holds it.
pub fn catalog_toml(models: &[Priced<'_>]) -> String {
    catalog(models).toml()
}

/// A configuration serving `models` (TOML `[[models]]` tables), priced by `prices` in a
/// catalog file (written to `<data_dir>/catalog.toml`) with one reserved slot.
pub fn config(
    data_dir: &std::path::Path,
    models: &str,
    extra: &str,
    prices: &[Priced<'_>],
) -> AgentConfig {
    std::fs::create_dir_all(data_dir).unwrap();
    let catalog = data_dir.join("catalog.toml");
    std::fs::write(&catalog, catalog_toml(prices)).unwrap();
    AgentConfig::from_toml(&format!(
        r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "{EDGE_TOKEN}"
data_dir = "{}"
{}
{extra}

{models}
"#,
        data_dir.display(),
        // With a control plane, the catalog comes from it.
        if extra.contains("[control_plane]") {
            String::new()
        } else {
            format!("catalog_file = \"{}\"", catalog.display())
        },
    ))
    .unwrap()
}

/// The weights of `model` (`esrgan-slim` or `silero-vad`), fetched once by the test kit
/// (`testkit::weights`; never skipped).
pub fn fetch_models(model: &str) -> PathBuf {
    testkit::weights::model(model)
}

/// An agent in-process, called as an edge calls it (the test kit's).
pub use testkit::TestAgent as Agent;

/// The ESRGAN-slim weights directory, fetched and converted by `scripts/fetch-models` once
/// per test process (needs npm; never skipped).
pub fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}

/// The `(start_s, end_s)` pairs of a speech-segments output (silero-vad's).
pub fn segments(result: &serde_json::Value) -> Vec<(f64, f64)> {
    result["output"]["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("no segments in {result}"))
        .iter()
        .map(|s| (s["start_s"].as_f64().unwrap(), s["end_s"].as_f64().unwrap()))
        .collect()
}
