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
//! Blank lines and lines starting with `#` are ignored.
//!
//! The control plane's usage report is read as it is served, too: save the answer of
//! `GET /admin/v1/usage` (grouped by at least `region` and `day`, as the default grouping
//! by all four dimensions is) and pass the JSON file. Each of its rows becomes a trace row
//! whose GPU-seconds are the reserved and on-demand GPU-seconds summed; a dimension the
//! report is not grouped by reads as `*`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

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

/// Reads a trace file: CSV, or the control plane's usage report as JSON (a file whose first
/// non-blank character is `{`).
pub fn load(path: &Path) -> anyhow::Result<UsageTrace> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read usage trace {}", path.display()))?;
    let parsed = if text.trim_start().starts_with('{') {
        parse_usage_report(&text)
    } else {
        parse(&text)
    };
    parsed.with_context(|| format!("parse usage trace {}", path.display()))
}

/// The parts of the control plane's `GET /admin/v1/usage` answer a trace needs (the
/// control plane's `UsageReport`; fields not named here are ignored).
#[derive(Deserialize)]
struct UsageReport {
    group_by: Vec<String>,
    rows: Vec<ReportRow>,
}

#[derive(Deserialize)]
struct ReportRow {
    tenant: Option<String>,
    model: Option<String>,
    region: Option<String>,
    day: Option<String>,
    usage: ReportTotals,
}

#[derive(Deserialize)]
struct ReportTotals {
    units: f64,
    reserved_gpu_seconds: f64,
    on_demand_gpu_seconds: f64,
}

/// Parses the control plane's usage report (JSON) into trace rows.
pub fn parse_usage_report(text: &str) -> anyhow::Result<UsageTrace> {
    let report: UsageReport = serde_json::from_str(text)
        .context("not a usage report of the control plane (GET /admin/v1/usage)")?;
    for needed in ["region", "day"] {
        if !report.group_by.iter().any(|d| d == needed) {
            bail!(
                "the usage report is grouped by {:?}, not by {needed}: fetch it with \
                 group_by=region,day (or without group_by, which groups by all four)",
                report.group_by
            );
        }
    }
    let mut rows = Vec::with_capacity(report.rows.len());
    for (i, row) in report.rows.into_iter().enumerate() {
        let (Some(region), Some(day)) = (row.region, row.day) else {
            bail!("rows[{i}]: no region or day, though the report is grouped by both");
        };
        let usage = row.usage;
        let gpu_seconds = usage.reserved_gpu_seconds + usage.on_demand_gpu_seconds;
        for (what, v) in [("units", usage.units), ("gpu_seconds", gpu_seconds)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("rows[{i}]: {what} {v} is not a non-negative number");
            }
        }
        rows.push(UsageRow {
            tenant: row.tenant.unwrap_or_else(|| "*".to_owned()),
            model: row.model.unwrap_or_else(|| "*".to_owned()),
            region,
            day,
            units: usage.units,
            gpu_seconds,
        });
    }
    Ok(UsageTrace { rows })
}

/// Parses trace text (CSV).
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
    use control_plane_client::wire;

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

    /// A report as the control plane serves it (its own wire type, serialised).
    fn report(group_by: &[&str], rows: Vec<wire::UsageRow>) -> String {
        let report = wire::UsageReport {
            revision: 7,
            from: None,
            to: None,
            group_by: group_by.iter().map(|d| (*d).to_owned()).collect(),
            rows,
            total: wire::UsageTotals::default(),
        };
        serde_json::to_string_pretty(&report).unwrap()
    }

    fn row(
        tenant: Option<&str>,
        region: &str,
        day: &str,
        reserved: f64,
        on_demand: f64,
    ) -> wire::UsageRow {
        wire::UsageRow {
            tenant: tenant.map(str::to_owned),
            model: None,
            region: Some(region.to_owned()),
            day: Some(day.to_owned()),
            usage: wire::UsageTotals {
                jobs: 3,
                units: 12.0,
                reserved_gpu_seconds: reserved,
                on_demand_gpu_seconds: on_demand,
                cost: 1.5,
                ..wire::UsageTotals::default()
            },
        }
    }

    #[test]
    fn reads_the_control_planes_usage_report() {
        let text = report(
            &["tenant", "region", "day"],
            vec![
                row(Some("a"), "us-east", "2026-11-02", 100.0, 50.0),
                row(Some("b"), "us-east", "2026-11-03", 40.0, 10.0),
                row(Some("a"), "eu-west", "2026-11-02", 0.0, 30.0),
            ],
        );
        let dir = std::env::temp_dir().join(format!("meridian-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("usage.json");
        std::fs::write(&file, &text).unwrap();
        let t = load(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].tenant, "a");
        assert_eq!(
            t.rows[0].model, "*",
            "a dimension not grouped by reads as *"
        );
        assert_eq!(
            t.rows[0].gpu_seconds, 150.0,
            "reserved and on-demand summed"
        );
        assert_eq!(t.rows[0].units, 12.0);
        let daily = t.daily_gpu_seconds();
        assert_eq!(daily["us-east"], 100.0, "(150 + 50) over two days");
        assert_eq!(daily["eu-west"], 15.0);
    }

    #[test]
    fn a_report_without_regions_or_days_is_refused_with_the_fix() {
        let err = parse_usage_report(&report(&["tenant", "day"], vec![])).unwrap_err();
        assert!(err.to_string().contains("group_by=region,day"), "{err}");
        let err = parse_usage_report(&report(&["region"], vec![])).unwrap_err();
        assert!(err.to_string().contains("not by day"), "{err}");
        let err = parse_usage_report(r#"{"rows": []}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("GET /admin/v1/usage"),
            "{err:#}"
        );
        let bad = row(None, "us-east", "d", -1.0, 0.0);
        let err = parse_usage_report(&report(&["region", "day"], vec![bad])).unwrap_err();
        assert!(err.to_string().contains("rows[0]: gpu_seconds"), "{err}");
    }
}
