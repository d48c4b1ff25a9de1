//! Whether a model fits a GPU before it is loaded there. A model's need is estimated as the
//! size of the files in its `weights_dir` times `[gpus] weights_memory_factor` (default 3:
//! weights stored in 16 bits are widened to 32, and a batch needs room for its
//! activations); the pipeline test models, built in code, are not checked. The need is
//! compared with the GPU's free memory just before the load ([`check_fit`]), so models
//! loaded earlier count; a refusal names the model, its need, the GPU and its free memory.

use std::path::Path;

use super::Gpu;
use crate::config::{ModelConfig, ModelWeights};

/// How deep [`weights_bytes`] looks into a weights directory (a diffusers layout is two).
const MAX_DEPTH: usize = 4;

/// A model that does not fit a GPU's free memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model {model} needs about {} MiB of GPU memory, and GPU {index} ({name}) has {} MiB free \
     of {} MiB; it is not loaded there (fix: free memory on that GPU, e.g. fewer models or \
     [gpus] slots_per_device on it, or lower [gpus] weights_memory_factor if the estimate is \
     too high)",
    mib(*need), mib(*free), mib(*total)
)]
pub struct DoesNotFit {
    /// The model id.
    pub model: String,
    /// Its estimated need, in bytes.
    pub need: u64,
    /// The GPU's index.
    pub index: u32,
    /// The GPU's name.
    pub name: String,
    /// The GPU's free memory, in bytes.
    pub free: u64,
    /// The GPU's memory, in bytes.
    pub total: u64,
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Refuses to load `model`, needing `need` bytes, on `gpu` with `free` bytes free.
pub fn check_fit(model: &str, need: u64, gpu: &Gpu, free: u64) -> Result<(), DoesNotFit> {
    if need <= free {
        return Ok(());
    }
    Err(DoesNotFit {
        model: model.to_owned(),
        need,
        index: gpu.index,
        name: gpu.name.clone(),
        free,
        total: gpu.memory_total,
    })
}

/// The estimated GPU memory need of `model`, in bytes: its weight files' size times
/// `factor`. `None` for a pipeline test model, or when the weights cannot be read (the load
/// then says why).
pub fn need(model: &ModelConfig, factor: f64) -> Option<u64> {
    let ModelWeights::Dir(dir) = &model.weights else {
        return None;
    };
    let bytes = weights_bytes(dir).ok()?;
    Some(scaled(bytes, factor))
}

/// `bytes × factor`, rounded up (saturating).
pub fn scaled(bytes: u64, factor: f64) -> u64 {
    // f64 holds every size a disk can: the rounding is below a byte per terabyte.
    let product = (bytes as f64 * factor).ceil();
    if product >= u64::MAX as f64 {
        u64::MAX
    } else {
        product as u64
    }
}

/// The size of the files in `dir` (and its subdirectories, [`MAX_DEPTH`] deep), in bytes.
pub fn weights_bytes(dir: &Path) -> std::io::Result<u64> {
    size_below(dir, MAX_DEPTH)
}

fn size_below(dir: &Path, depth: usize) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Follows links: model caches link their files to blobs.
        let meta = std::fs::metadata(&path)?;
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() && depth > 0 {
            total = total.saturating_add(size_below(&path, depth - 1)?);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::gpu::Placement;

    fn l4() -> Gpu {
        Gpu {
            index: 1,
            name: "NVIDIA L4".into(),
            uuid: String::new(),
            compute_capability: (8, 9),
            memory_total: 23_034 << 20,
            memory_free: 22_000 << 20,
        }
    }

    #[test]
    fn a_model_that_does_not_fit_is_refused_with_the_figures() {
        let gpu = l4();
        assert!(check_fit("meridian/tiny-sd", 6_000 << 20, &gpu, 6_000 << 20).is_ok());
        let refused = check_fit("meridian/tiny-sd", 6_000 << 20, &gpu, 2_048 << 20).unwrap_err();
        let message = refused.to_string();
        for part in [
            "model meridian/tiny-sd",
            "about 6000 MiB",
            "GPU 1 (NVIDIA L4)",
            "2048 MiB free",
            "of 23034 MiB",
            "weights_memory_factor",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }

    #[test]
    fn the_need_is_the_weight_files_size_times_the_factor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("unet")).unwrap();
        std::fs::write(dir.path().join("unet/weights.bin"), vec![0u8; 500]).unwrap();
        let config = crate::config::AgentConfig::from_toml(&format!(
            "region = \"eu-west\"\nedge_token = \"edge-token-0123456789\"\n\
             data_dir = \"/tmp/agent\"\ncatalog_file = \"catalog.toml\"\n\
             [[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{}\"\n",
            dir.path().display()
        ))
        .unwrap();
        let mut model = config.models[0].clone();
        assert_eq!(need(&model, 3.0), Some(4500));
        assert_eq!(need(&model, 1.5), Some(2250));
        model.weights = ModelWeights::PipelineTest;
        assert_eq!(need(&model, 3.0), None);
        model.weights = ModelWeights::Dir(dir.path().join("absent"));
        assert_eq!(need(&model, 3.0), None);
        assert_eq!(scaled(u64::MAX, 3.0), u64::MAX);
    }

    #[test]
    fn the_hardware_checks_the_slot_s_gpu_and_passes_the_cpu() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![0u8; 4 << 20]).unwrap();
        let config = crate::config::AgentConfig::from_toml(&format!(
            "region = \"eu-west\"\nedge_token = \"edge-token-0123456789\"\n\
             data_dir = \"/tmp/agent\"\ncatalog_file = \"catalog.toml\"\n\
             [[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{}\"\n",
            dir.path().display()
        ))
        .unwrap();
        let model = &config.models[0];
        let mut small = l4();
        small.memory_free = 10 << 20;
        let hardware = crate::gpu::Hardware {
            gpus: vec![small],
            devices: Vec::new(),
            absent: None,
            nvml: None,
            settings: crate::config::GpuConfig::default(),
        };
        // 4 MiB of weights × 3 = 12 MiB, and GPU 1 has 10 MiB free.
        let refused = hardware.check_fit(model, Placement::Gpu(1)).unwrap_err();
        assert_eq!((refused.need, refused.free), (12 << 20, 10 << 20));
        assert!(
            refused.to_string().contains("needs about 12 MiB"),
            "{refused}"
        );
        assert!(hardware.check_fit(model, Placement::Cpu).is_ok());
    }
}
