//! Where catalog copies come from besides the control plane's answer: a Meridian catalog
//! file (an agent without a control plane), and the last copy the control plane gave, kept
//! in `<data_dir>/catalog.json` (written atomically) for a start while it is unreachable.

use std::path::{Path, PathBuf};

use contract::{ConfigProblems, RegionId};
use control_plane_client::wire::AgentCatalog;
use policy::CatalogSpec;

/// Why a catalog file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogFileError {
    /// The file could not be read.
    #[error("read the catalog file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid catalog (syntax, unknown fields, broken rules), or without the region.
    #[error("the catalog file {path}: {problems}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: ConfigProblems,
    },
}

/// Reads a whole Meridian catalog file, validates it with `policy` and takes `region`'s
/// entry and the models placed in it, as revision 0.
pub fn read_file(path: &Path, region: &RegionId) -> Result<AgentCatalog, CatalogFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| CatalogFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_toml(&text, region).map_err(|problems| CatalogFileError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// [`read_file`] on TOML text.
pub fn from_toml(text: &str, region: &RegionId) -> Result<AgentCatalog, ConfigProblems> {
    let spec = CatalogSpec::from_toml(text).map_err(|e| {
        let mut problems = ConfigProblems::new();
        problems.add("catalog", e.to_string(), "fix the catalog file");
        problems
    })?;
    spec.validate()?;
    let Some(entry) = spec.regions.iter().find(|r| r.id == region.as_str()) else {
        let mut problems = ConfigProblems::new();
        problems.add(
            "regions",
            format!("the catalog has no region {region}"),
            "add the region to the catalog, or set this agent's region to one of the catalog's",
        );
        return Err(problems);
    };
    let models = spec
        .models
        .iter()
        .filter(|m| {
            m.regions
                .as_ref()
                .is_none_or(|regions| regions.iter().any(|r| r == region.as_str()))
        })
        .cloned()
        .collect();
    Ok(AgentCatalog {
        schema: contract::schema::AGENT_CATALOG,
        revision: 0,
        currency: spec.currency.clone(),
        region: entry.clone(),
        models,
    })
}

/// The cached copy's path.
pub fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog.json")
}

/// Keeps `catalog` as the last copy, atomically and durably.
pub fn save_cache(data_dir: &Path, catalog: &AgentCatalog) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(catalog)?;
    contract::fs::write_atomic(&cache_path(data_dir), &bytes)?;
    Ok(())
}

/// The last copy kept, when there is a readable one.
pub fn load_cache(data_dir: &Path) -> Option<AgentCatalog> {
    let path = cache_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot read the cached catalog");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(catalog) => Some(catalog),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "the cached catalog is unreadable; ignored");
            None
        }
    }
}
