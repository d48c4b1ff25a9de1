//! GPU discovery at run time and the choice of candle device.
//!
//! NVIDIA GPUs are found by running `nvidia-smi --query-gpu=index,name,memory.total
//! --format=csv,noheader,nounits` (it ships with the driver, so nothing is linked at build
//! time). Without it, or without GPUs, the agent says so and runs its models on the CPU.
//! With the `cuda` feature and a GPU present, models run on CUDA device 0.

use std::process::Command;

use candle_core::Device;

use crate::config::PoolConfig;

/// One discovered GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Index as the driver numbers it.
    pub index: u32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// Asks `nvidia-smi` for the GPUs; empty when there is no driver or no GPU.
pub fn discover() -> Vec<Gpu> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

/// Parses `nvidia-smi`'s CSV lines (`index, name, memory MiB`); malformed lines are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let index = fields.next()?.parse().ok()?;
            let name = fields.next()?.to_owned();
            let memory_mib = fields.next()?.parse().ok()?;
            Some(Gpu {
                index,
                name,
                memory_mib,
            })
        })
        .collect()
}

/// Logs what was found, checks it against the configured pools, and picks the device the
/// models run on.
pub fn select_device(gpus: &[Gpu], pools: &[PoolConfig]) -> Device {
    if gpus.is_empty() {
        tracing::info!(
            "no NVIDIA GPU found (nvidia-smi absent or lists none); models run on the CPU"
        );
    }
    for gpu in gpus {
        tracing::info!(index = gpu.index, name = %gpu.name, memory_mib = gpu.memory_mib, "GPU found");
    }
    let configured: u64 = pools
        .iter()
        .filter(|p| !p.gpu.eq_ignore_ascii_case("cpu"))
        .map(|p| u64::from(p.reserved) + u64::from(p.on_demand_max))
        .sum();
    if configured > gpus.len() as u64 {
        tracing::warn!(
            configured,
            found = gpus.len(),
            "the pools name more GPU slots than this machine has; slots beyond the GPUs share them"
        );
    }
    device_for(gpus)
}

#[cfg(feature = "cuda")]
fn device_for(gpus: &[Gpu]) -> Device {
    if gpus.is_empty() {
        return Device::Cpu;
    }
    match Device::new_cuda(0) {
        Ok(device) => {
            tracing::info!("models run on CUDA device 0");
            device
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open CUDA device 0; models run on the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn device_for(gpus: &[Gpu]) -> Device {
    if !gpus.is_empty() {
        tracing::warn!("GPUs found, but this build has no `cuda` feature; models run on the CPU");
    }
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_lines() {
        let text = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\ngarbage\n";
        let gpus = parse_nvidia_smi(text);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].memory_mib, 81559);
        assert!(parse_nvidia_smi("").is_empty());
    }
}
