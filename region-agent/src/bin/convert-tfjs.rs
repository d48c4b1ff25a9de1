//! `convert-tfjs`: converts the ESRGAN-slim TF.js layers model of a registry package into the
//! safetensors file the region agent loads. `scripts/fetch-models` runs it.
//!
//! ```text
//! convert-tfjs MODEL_JSON OUT_SAFETENSORS --package NAME --version VERSION
//!              [--license LICENSE] [--scale N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use region_agent::models::convert::esrgan::{Source, convert};

const USAGE: &str = "usage: convert-tfjs MODEL_JSON OUT_SAFETENSORS --package NAME --version VERSION [--license LICENSE] [--scale N]";

struct Args {
    model_json: PathBuf,
    out: PathBuf,
    source: Source,
    scale: Option<usize>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let (mut package, mut version, mut license, mut scale) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--package" => package = Some(value("--package")?),
            "--version" => version = Some(value("--version")?),
            "--license" => license = Some(value("--license")?),
            "--scale" => {
                let v = value("--scale")?;
                scale = Some(v.parse().with_context(|| format!("--scale {v:?}"))?);
            }
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with("--") => bail!("unknown option {flag}\n{USAGE}"),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [model_json, out] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("expected MODEL_JSON and OUT_SAFETENSORS\n{USAGE}"))?;
    Ok(Args {
        model_json,
        out,
        source: Source {
            package: package.with_context(|| format!("--package is required\n{USAGE}"))?,
            version: version.with_context(|| format!("--version is required\n{USAGE}"))?,
            license: license.unwrap_or_else(|| "MIT".to_owned()),
        },
        scale,
    })
}

fn run() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let converted = convert(&args.model_json, &args.out, &args.source, args.scale)
        .with_context(|| format!("convert {}", args.model_json.display()))?;
    eprintln!(
        "convert-tfjs: wrote {} (×{}, {} tensors, {} parameters, from {}@{})",
        args.out.display(),
        converted.config.scale,
        converted.tensors,
        converted.parameters,
        args.source.package,
        args.source.version,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convert-tfjs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
