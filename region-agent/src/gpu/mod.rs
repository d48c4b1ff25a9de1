//! The host's NVIDIA GPUs: found at start, checked against the catalog's GPU pools, one slot
//! per device (or per configured share of one), and the memory check before a model is
//! loaded on a GPU.
//!
//! - [`nvml`] finds the GPUs through NVIDIA's management library, opened at run time
//!   (`libnvidia-ml.so.1` comes with the driver), so a build links nothing and a host without
//!   a driver runs its models on the CPU and says why.
//! - [`plan`] is pure: it checks the GPUs found against the catalog's GPU pools (CPU pools are
//!   not checked) and places each slot on a device ([`Placement`]).
//! - [`memory`] is pure but for reading a weights directory's size: it estimates a model's
//!   need and refuses a load that would not fit the device's free memory.
//!
//! With the `cuda` feature every GPU found is opened once as a candle CUDA device (its
//! ordinal is its index; set `CUDA_DEVICE_ORDER=PCI_BUS_ID` on a host that mixes GPU types,
//! so CUDA numbers the GPUs in the management library's order). Without it the GPUs are
//! listed but unusable, and GPU pools do not match.

pub mod memory;
pub mod nvml;
pub mod plan;

use std::sync::Arc;

use candle_core::Device;

pub use self::plan::{Mismatch, Placement, SlotPlan};
use crate::config::GpuConfig;

/// One GPU found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Index as the driver numbers it (the CUDA ordinal in PCI bus order).
    pub index: u32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The driver's id, e.g. `GPU-5a0e…`; empty when the driver did not say.
    pub uuid: String,
    /// CUDA compute capability (major, minor), e.g. (9, 0).
    pub compute_capability: (u32, u32),
    /// Memory in bytes.
    pub memory_total: u64,
    /// Memory not allocated when it was found, in bytes.
    pub memory_free: u64,
}

/// The GPUs this agent runs models on, the devices opened for them, and the settings that
/// place slots on them.
#[derive(Debug, Clone)]
pub struct Hardware {
    /// The usable GPUs (index order).
    gpus: Vec<Gpu>,
    /// With the `cuda` feature, one candle device per usable GPU (same order).
    devices: Vec<Device>,
    /// Why no GPU is usable, when none is: for log lines and mismatch errors.
    absent: Option<String>,
    /// The management library, for free memory before each load.
    nvml: Option<Arc<nvml::Library>>,
    settings: GpuConfig,
}

impl Hardware {
    /// Finds the GPUs, logs each, and opens the usable ones (with the `cuda` feature).
    pub fn discover(settings: &GpuConfig) -> Self {
        let found = nvml::Library::open(&settings.nvml_library).and_then(|library| {
            let gpus = library.gpus()?;
            Ok((library, gpus))
        });
        let (library, gpus) = match found {
            Ok((library, gpus)) => (Some(Arc::new(library)), gpus),
            Err(e) => {
                let absent = e.to_string();
                tracing::info!("{absent}; models run on the CPU");
                return Self::without_gpus(absent, settings);
            }
        };
        for gpu in &gpus {
            tracing::info!(
                index = gpu.index, name = %gpu.name, uuid = %gpu.uuid,
                compute_capability = %format!("{}.{}", gpu.compute_capability.0, gpu.compute_capability.1),
                memory_total_mib = gpu.memory_total >> 20, memory_free_mib = gpu.memory_free >> 20,
                "GPU found"
            );
        }
        let (gpus, devices, absent) = open_devices(gpus);
        if let Some(absent) = &absent {
            tracing::warn!("{absent}; models run on the CPU");
        }
        Self {
            gpus,
            devices,
            absent,
            nvml: library,
            settings: settings.clone(),
        }
    }

    /// The CPU and no GPU, with default settings.
    pub fn cpu() -> Self {
        Self::without_gpus("no GPU is used".into(), &GpuConfig::default())
    }

    fn without_gpus(absent: String, settings: &GpuConfig) -> Self {
        Self {
            gpus: Vec::new(),
            devices: Vec::new(),
            absent: Some(absent),
            nvml: None,
            settings: settings.clone(),
        }
    }

    /// The usable GPUs.
    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// Why no GPU is usable, when none is.
    pub fn absent(&self) -> Option<&str> {
        self.absent.as_deref()
    }

    /// The `[gpus]` settings.
    pub fn settings(&self) -> &GpuConfig {
        &self.settings
    }

    /// The candle device a slot placed at `placement` runs its models on.
    pub fn device(&self, placement: Placement) -> Device {
        match placement {
            Placement::Cpu => Device::Cpu,
            Placement::Gpu(index) => self
                .gpus
                .iter()
                .position(|g| g.index == index)
                .and_then(|i| self.devices.get(i))
                .cloned()
                .unwrap_or(Device::Cpu),
        }
    }

    /// The usable GPU of `index`.
    pub fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// The free memory of GPU `index` now (bytes), asked of the driver; the figure found at
    /// start when the driver does not answer.
    pub fn free_memory(&self, index: u32) -> Option<u64> {
        let now = self.nvml.as_ref().and_then(|l| l.free_memory(index).ok());
        now.or_else(|| self.gpu(index).map(|g| g.memory_free))
    }

    /// Refuses to load `model` on `device` when its estimated need is above the GPU's free
    /// memory now ([`memory`]); the CPU, and models whose need is not known, always pass.
    pub fn check_fit(
        &self,
        model: &crate::config::ModelConfig,
        device: Placement,
    ) -> Result<(), memory::DoesNotFit> {
        let Placement::Gpu(index) = device else {
            return Ok(());
        };
        let (Some(gpu), Some(free)) = (self.gpu(index), self.free_memory(index)) else {
            return Ok(());
        };
        match memory::need(model, self.settings.weights_memory_factor) {
            Some(need) => memory::check_fit(model.id.as_str(), need, gpu, free),
            None => Ok(()),
        }
    }

    /// Places `slots` of the catalog's `pools` on the usable GPUs; an error names every
    /// pool the GPUs do not match, unless the settings accept a mismatch (then each problem
    /// is logged as a warning and the slots share what there is).
    pub fn place(
        &self,
        pools: &[crate::catalog::PoolPlan],
        slots: &[crate::scheduler::slots::SlotConfig],
    ) -> Result<Vec<Placement>, Mismatch> {
        let plan = plan::place(&self.gpus, pools, slots, self.settings.slots_per_device);
        match Mismatch::of(&plan, &self.gpus, self.absent.as_deref()) {
            Some(mismatch) if !self.settings.accept_mismatch => Err(mismatch),
            Some(mismatch) => {
                tracing::warn!("{mismatch} (accepted: [gpus] accept_mismatch = true)");
                Ok(plan.placements)
            }
            None => Ok(plan.placements),
        }
    }
}

/// Why `gpu` cannot run kernels built for compute capability `built_for` (PTX runs on its
/// own capability and newer ones); `None` when it can, or the build did not say.
pub fn below_build(gpu: &Gpu, built_for: Option<(u32, u32)>) -> Option<String> {
    let built = built_for?;
    (gpu.compute_capability < built).then(|| {
        format!(
            "{} has compute capability {}.{}, and this build's kernels need {}.{} or newer \
             (build with CUDA_COMPUTE_CAP={}{})",
            gpu.name,
            gpu.compute_capability.0,
            gpu.compute_capability.1,
            built.0,
            built.1,
            gpu.compute_capability.0,
            gpu.compute_capability.1
        )
    })
}

/// Why there is no GPU on a host whose driver lists none.
const NO_GPU_LISTED: &str = "the NVIDIA driver lists no GPU";

/// Opens a candle CUDA device per GPU found; a GPU that cannot be opened, or whose compute
/// capability is below the one the kernels were built for, is left out with a warning.
#[cfg(feature = "cuda")]
fn open_devices(gpus: Vec<Gpu>) -> (Vec<Gpu>, Vec<Device>, Option<String>) {
    if gpus.is_empty() {
        return (Vec::new(), Vec::new(), Some(NO_GPU_LISTED.to_owned()));
    }
    let built_for = built_compute_capability();
    let (mut usable, mut devices) = (Vec::new(), Vec::new());
    for gpu in gpus {
        if let Some(problem) = below_build(&gpu, built_for) {
            tracing::warn!(index = gpu.index, "{problem}; this GPU is not used");
            continue;
        }
        match Device::new_cuda(gpu.index as usize) {
            Ok(device) => {
                tracing::info!(index = gpu.index, "CUDA device opened");
                usable.push(gpu);
                devices.push(device);
            }
            Err(e) => {
                tracing::warn!(index = gpu.index, error = %e, "cannot open the GPU as a CUDA device; it is not used")
            }
        }
    }
    let absent = usable
        .is_empty()
        .then(|| "no GPU found could be opened as a CUDA device".to_owned());
    (usable, devices, absent)
}

/// The compute capability candle's kernels were compiled for (`CUDA_COMPUTE_CAP` at build
/// time, e.g. `90`), when the build said.
#[cfg(feature = "cuda")]
fn built_compute_capability() -> Option<(u32, u32)> {
    let cap: u32 = option_env!("CUDA_COMPUTE_CAP")?.parse().ok()?;
    Some((cap / 10, cap % 10))
}

#[cfg(not(feature = "cuda"))]
fn open_devices(gpus: Vec<Gpu>) -> (Vec<Gpu>, Vec<Device>, Option<String>) {
    let absent = if gpus.is_empty() {
        NO_GPU_LISTED.to_owned()
    } else {
        format!(
            "{} GPU(s) found, but this build has no `cuda` feature (build it with \
             scripts/build-cuda)",
            gpus.len()
        )
    };
    (Vec::new(), Vec::new(), Some(absent))
}
