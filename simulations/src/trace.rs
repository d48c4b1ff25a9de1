//! Usage traces: what a deployment actually ran, for sizing reservations from real use.
//!
//! A trace is a CSV file with a header line and one row per tenant, model, region and day:
//!
//! ```csv
//! tenant,model,region,day,units,gpu_seconds
//! acme,meridian/tiny-sd,us-east,2026-11-02,41230,61845.0
//! ```
//!
//! - `tenant`, `model`, `region`: ids as in the catalog (`region` must be in the scenario);
//! - `day`: the UTC day, any label (rows with the same label are the same day);
//! - `units`: units of work billed that day (images, megapixels, seconds, …);
//! - `gpu_seconds`: GPU-seconds used that day.
//!
//! The control plane's usage records aggregate to exactly this shape. Blank lines and lines
//! starting with `#` are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail};

/// One trace row.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// Tenant id.
    pub tenant: String,
    /// Model id.
    pub model: String,
    /// Region id.
    pub region: String,
    /// Day label.
    pub day: String,
    /// Units of work.
    pub units: f64,
    /// GPU-seconds used.
    pub gpu_seconds: f64,
}

/// A usage trace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageTrace {
    /// Its rows, in file order.
    pub rows: Vec<UsageRow>,
}

/// Reads a trace file.
pub fn load(path: &Path) -> anyhow::Result<UsageTrace> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read usage trace {}", path.display()))?;
    parse(&text).with_context(|| format!("parse usage trace {}", path.display()))
}

/// Parses trace text.
pub fn parse(text: &str) -> anyhow::Result<UsageTrace> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let header = lines.next().map(|(_, l)| l.trim());
    if header != Some("tenant,model,region,day,units,gpu_seconds") {
        bail!("the first line must be the header `tenant,model,region,day,units,gpu_seconds`");
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [tenant, model, region, day, units, gpu] = f[..] else {
            bail!("line {}: expected 6 fields, found {}", i + 1, f.len());
        };
        let number = |v: &str, what: &str| -> anyhow::Result<f64> {
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => bail!("line {}: {what} {v:?} is not a non-negative number", i + 1),
            }
        };
        rows.push(UsageRow {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            region: region.to_owned(),
            day: day.to_owned(),
            units: number(units, "units")?,
            gpu_seconds: number(gpu, "gpu_seconds")?,
        });
    }
    Ok(UsageTrace { rows })
}

impl UsageTrace {
    /// Mean GPU-seconds per day by region id, over the days the trace covers.
    pub fn daily_gpu_seconds(&self) -> BTreeMap<String, f64> {
        let days: BTreeSet<&str> = self.rows.iter().map(|r| r.day.as_str()).collect();
        let mut out = BTreeMap::new();
        for r in &self.rows {
            *out.entry(r.region.clone()).or_insert(0.0) += r.gpu_seconds;
        }
        let n = days.len().max(1) as f64;
        out.values_mut().for_each(|v| *v /= n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_averages_over_days() {
        let t = parse("tenant,model,region,day,units,gpu_seconds\n# comment\na,m/x,us-east,d1,10,100\na,m/x,us-east,d2,10,300\nb,m/x,eu-west,d1,1,50\n").unwrap();
        assert_eq!(t.rows.len(), 3);
        let daily = t.daily_gpu_seconds();
        assert_eq!(daily["us-east"], 200.0);
        assert_eq!(daily["eu-west"], 25.0);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let err = parse("tenant,model,region,day,units,gpu_seconds\na,m/x,us-east,d1,ten,1\n")
            .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse("nope\n").is_err());
    }
}
