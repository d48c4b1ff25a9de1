//! GPU discovery through NVIDIA's management library (NVML), opened at run time: the driver
//! installs `libnvidia-ml.so.1`, so nothing is linked at build time and a host without the
//! driver gets a clear [`NoGpus`] instead of a failed start.

use std::path::Path;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::Gpu;

/// Why no GPU can be listed.
#[derive(Debug, thiserror::Error)]
pub enum NoGpus {
    /// The library could not be opened, or the kernel driver is not loaded: no NVIDIA
    /// driver on this host.
    #[error("no NVIDIA driver: opening {library} failed: {source}")]
    NoDriver {
        /// The library's name or path.
        library: String,
        /// The loader's error.
        source: NvmlError,
    },
    /// The library was opened but did not answer.
    #[error("the NVIDIA driver did not list its GPUs ({0})")]
    Driver(#[from] NvmlError),
}

/// The opened management library.
#[derive(Debug)]
pub struct Library {
    nvml: Nvml,
}

impl Library {
    /// Opens the library at `path` (a name is looked up on the library path) and initialises
    /// it.
    pub fn open(path: &Path) -> Result<Self, NoGpus> {
        let nvml =
            Nvml::builder()
                .lib_path(path.as_os_str())
                .init()
                .map_err(|source| match source {
                    NvmlError::LibloadingError(_)
                    | NvmlError::FailedToLoadSymbol(_)
                    | NvmlError::DriverNotLoaded => NoGpus::NoDriver {
                        library: path.display().to_string(),
                        source,
                    },
                    other => NoGpus::Driver(other),
                })?;
        Ok(Self { nvml })
    }

    /// Every GPU the driver lists and can describe, in its index order; one it cannot
    /// describe is left out with a warning.
    pub fn gpus(&self) -> Result<Vec<Gpu>, NoGpus> {
        let count = self.nvml.device_count()?;
        let described = (0..count).filter_map(|index| match self.gpu(index) {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                tracing::warn!(index, error = %e, "the NVIDIA driver cannot describe this GPU; it is not used");
                None
            }
        });
        Ok(described.collect())
    }

    fn gpu(&self, index: u32) -> Result<Gpu, NvmlError> {
        let device = self.nvml.device_by_index(index)?;
        let capability = device.cuda_compute_capability()?;
        let memory = device.memory_info()?;
        Ok(Gpu {
            index,
            name: device.name()?,
            uuid: device.uuid().unwrap_or_default(),
            compute_capability: (
                u32::try_from(capability.major).unwrap_or(0),
                u32::try_from(capability.minor).unwrap_or(0),
            ),
            memory_total: memory.total,
            memory_free: memory.free,
        })
    }

    /// The memory of GPU `index` not allocated now, in bytes.
    pub fn free_memory(&self, index: u32) -> Result<u64, NvmlError> {
        Ok(self.nvml.device_by_index(index)?.memory_info()?.free)
    }
}
