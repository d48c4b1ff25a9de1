//! GPU discovery at run time, the choice of candle device, and the check of what was found
//! against the catalog's pools.
//!
//! NVIDIA GPUs are found by running `nvidia-smi --query-gpu=index,name,memory.total
//! --format=csv,noheader,nounits` (it ships with the driver, so nothing is linked at build
//! time). Without it, or without GPUs, the agent says so and runs its models on the CPU.
//! With the `cuda` feature and a GPU present, models run on CUDA device 0. Each catalog copy
//! is checked against the GPUs found ([`check_pools`]): a count or type that does not match
//! is logged, and the slots stay the catalog's.

use std::process::Command;

use candle_core::Device;

use crate::catalog::PoolPlan;

/// The GPUs found and the device models run on.
#[derive(Debug, Clone)]
pub struct Hardware {
    /// The device models run on.
    pub device: Device,
    /// The GPUs found.
    pub gpus: Vec<Gpu>,
}

impl Hardware {
    /// Discovers the GPUs and picks the device.
    pub fn discover() -> Self {
        let gpus = discover();
        Self {
            device: select_device(&gpus),
            gpus,
        }
    }

    /// The CPU and no GPU.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            gpus: Vec::new(),
        }
    }
}

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

/// Logs what was found and picks the device the models run on.
pub fn select_device(gpus: &[Gpu]) -> Device {
    if gpus.is_empty() {
        tracing::info!(
            "no NVIDIA GPU found (nvidia-smi absent or lists none); models run on the CPU"
        );
    }
    for gpu in gpus {
        tracing::info!(index = gpu.index, name = %gpu.name, memory_mib = gpu.memory_mib, "GPU found");
    }
    device_for(gpus)
}

/// What does not match between the GPUs found and the catalog's GPU pools (CPU pools are not
/// checked): each problem as a sentence, also logged as a warning.
pub fn check_pools(gpus: &[Gpu], pools: &[PoolPlan]) -> Vec<String> {
    let gpu_pools: Vec<&PoolPlan> = pools
        .iter()
        .filter(|p| !p.gpu.eq_ignore_ascii_case("cpu"))
        .collect();
    let mut problems = Vec::new();
    let slots: u64 = gpu_pools
        .iter()
        .map(|p| u64::from(p.reserved) + u64::from(p.on_demand_max))
        .sum();
    if slots > gpus.len() as u64 {
        problems.push(format!(
            "the catalog's pools have {slots} GPU slot(s) and this machine {} GPU(s); slots \
             beyond the GPUs share them",
            gpus.len()
        ));
    }
    for pool in gpu_pools {
        if !gpus.is_empty() && !gpus.iter().any(|g| same_type(&pool.gpu, &g.name)) {
            problems.push(format!(
                "pool {} is of GPU type {}, which none of the GPUs found is",
                pool.id, pool.gpu
            ));
        }
    }
    for problem in &problems {
        tracing::warn!("{problem}");
    }
    problems
}

/// Whether a GPU named `name` by the driver (`NVIDIA H100 80GB HBM3`) is of the catalog's
/// type `gpu` (`H100-80GB`): every part of the type appears in the name.
fn same_type(gpu: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    gpu.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .all(|part| name.contains(&part.to_ascii_lowercase()))
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

    fn pool(gpu: &str, reserved: u32) -> PoolPlan {
        PoolPlan {
            id: "p".into(),
            gpu: gpu.into(),
            reserved,
            reserved_price_per_hour: 1.0,
            on_demand_max: 0,
            on_demand_price_per_hour: 0.0,
        }
    }

    #[test]
    fn pools_are_checked_against_the_gpus_found() {
        let gpus = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559\n");
        assert!(check_pools(&gpus, &[pool("H100-80GB", 1)]).is_empty());
        assert!(check_pools(&[], &[pool("cpu", 4)]).is_empty());
        let problems = check_pools(&gpus, &[pool("H100-80GB", 2), pool("L40S", 0)]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("2 GPU slot(s)"), "{problems:?}");
        assert!(problems[1].contains("L40S"), "{problems:?}");
    }
}
