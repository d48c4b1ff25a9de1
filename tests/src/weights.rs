//! The real ESRGAN-slim weights, fetched once per test process by `scripts/fetch-models`
//! into the target directory's cache (shared with region-agent's tests).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The ESRGAN-slim directory (`x2.safetensors`, …).
pub fn esrgan_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test binary is `<target>/<profile>/deps/e2e-…`; cargo's temporary directory for
        // tests (CARGO_TARGET_TMPDIR, where region-agent's tests cache the weights too) is
        // `<target>/tmp`.
        let exe = std::env::current_exe().expect("the test binary's path");
        let target_dir = exe
            .ancestors()
            .nth(3)
            .expect("a target directory")
            .to_owned();
        let tmp = target_dir.join("tmp");
        let target = std::env::var_os("MERIDIAN_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| tmp.join("models"));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-models");
        let mut command = Command::new("bash");
        command.arg(&script).arg(&target).arg("esrgan-slim");
        // The converter that `cargo test --workspace` has built with region-agent's tests.
        let converter = target_dir.join("debug/convert-tfjs");
        if converter.is_file() {
            command.env("MERIDIAN_CONVERT_TFJS", converter);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "scripts/fetch-models failed; the end-to-end scenarios need the ESRGAN-slim weights \
             from the npm registry.\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join("esrgan-slim")
    })
}
