//! Where each slot runs (pure): the catalog's GPU pools are matched against the GPUs found,
//! each pool takes `ceil(slots / slots_per_device)` GPUs of its type, and its slots fill
//! them in order (reserved slots first, as the catalog lists them), `slots_per_device` to
//! a GPU. CPU pools are not checked and their slots run on the CPU.
//!
//! A pool without enough GPUs of its type is a [`Mismatch`]: the agent refuses to start
//! (or to take a live catalog copy) unless `[gpus] accept_mismatch` says to run anyway;
//! then a pool's slots share the GPUs it got, or any GPU when it got none, or run on the
//! CPU on a host without GPUs.

use std::collections::BTreeMap;
use std::fmt;

use super::Gpu;
use crate::catalog::PoolPlan;
use crate::scheduler::slots::SlotConfig;

/// Where a slot runs its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Placement {
    /// On the CPU.
    #[default]
    Cpu,
    /// On the GPU of this index.
    Gpu(u32),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("the CPU"),
            Self::Gpu(index) => write!(f, "GPU {index}"),
        }
    }
}

/// A GPU pool the GPUs found do not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The pool id.
    pub pool: String,
    /// Its GPU type, e.g. `H100-80GB`.
    pub gpu: String,
    /// Its slots (reserved and on-demand).
    pub slots: u64,
    /// GPUs of its type it needs.
    pub needs: u64,
    /// GPUs of its type it got.
    pub got: u64,
}

/// Each slot's placement, and the pools the GPUs do not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// One per slot, in the slots' order.
    pub placements: Vec<Placement>,
    /// The pools short of GPUs (empty when the GPUs match the catalog).
    pub short: Vec<Shortfall>,
    /// Slots per GPU the plan was made with.
    pub slots_per_device: u32,
}

/// Places `slots` (as [`crate::catalog::RegionCatalog::slots`] lists them) of `pools` on
/// `gpus`, `slots_per_device` to a GPU.
pub fn place(
    gpus: &[Gpu],
    pools: &[PoolPlan],
    slots: &[SlotConfig],
    slots_per_device: u32,
) -> SlotPlan {
    let per_device = slots_per_device.max(1);
    let (devices, short) = assign_gpus(gpus, pools, per_device);
    let all: Vec<u32> = gpus.iter().map(|g| g.index).collect();
    let mut placed: BTreeMap<&str, u64> = BTreeMap::new();
    let placements = slots
        .iter()
        .map(|slot| {
            let Some(own) = devices.get(slot.pool.as_str()) else {
                return Placement::Cpu;
            };
            let nth = placed.entry(&slot.pool).or_default();
            let share = *nth / u64::from(per_device);
            *nth += 1;
            let list = if own.is_empty() { &all } else { own };
            match u64::try_from(list.len()) {
                Ok(len) if len > 0 => Placement::Gpu(list[(share % len) as usize]),
                _ => Placement::Cpu,
            }
        })
        .collect();
    SlotPlan {
        placements,
        short,
        slots_per_device: per_device,
    }
}

/// Gives each GPU pool, in the catalog's order, the GPUs of its type it needs from those no
/// earlier pool took; returns each GPU pool's GPUs and the pools left short.
fn assign_gpus<'a>(
    gpus: &[Gpu],
    pools: &'a [PoolPlan],
    per_device: u32,
) -> (BTreeMap<&'a str, Vec<u32>>, Vec<Shortfall>) {
    let mut free: Vec<&Gpu> = gpus.iter().collect();
    let mut devices = BTreeMap::new();
    let mut short = Vec::new();
    for pool in pools.iter().filter(|p| !is_cpu(&p.gpu)) {
        let slots = u64::from(pool.reserved) + u64::from(pool.on_demand_max);
        let needs = slots.div_ceil(u64::from(per_device));
        let taken: Vec<u32> = free
            .iter()
            .filter(|g| same_type(&pool.gpu, &g.name))
            .map(|g| g.index)
            .take(usize::try_from(needs).unwrap_or(usize::MAX))
            .collect();
        free.retain(|g| !taken.contains(&g.index));
        let got = taken.len() as u64;
        if got < needs {
            short.push(Shortfall {
                pool: pool.id.clone(),
                gpu: pool.gpu.clone(),
                slots,
                needs,
                got,
            });
        }
        devices.insert(pool.id.as_str(), taken);
    }
    (devices, short)
}

/// Where `slots` run, for a log line: e.g. `h100 reserved on GPU 0, h100 on-demand on GPU 1`.
pub fn describe(slots: &[SlotConfig]) -> String {
    let parts: Vec<String> = slots
        .iter()
        .map(|s| format!("{} {} on {}", s.pool, capacity(s), s.device))
        .collect();
    parts.join(", ")
}

fn capacity(slot: &SlotConfig) -> &'static str {
    match slot.capacity {
        crate::config::Capacity::Reserved => "reserved",
        crate::config::Capacity::OnDemand => "on-demand",
    }
}

/// Whether a pool's GPU type is the CPU.
pub fn is_cpu(gpu: &str) -> bool {
    gpu.eq_ignore_ascii_case("cpu")
}

/// Whether a GPU the driver names `name` (`NVIDIA H100 80GB HBM3`) is of the catalog's type
/// `gpu` (`H100-80GB`): every word of the type is a word of the name, so an `L4` pool does
/// not take an `NVIDIA L40S`.
pub fn same_type(gpu: &str, name: &str) -> bool {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let name = words(name);
    let wanted = words(gpu);
    !wanted.is_empty() && wanted.iter().all(|w| name.contains(w))
}

/// The GPUs found do not match the catalog's GPU pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the GPUs of this host do not match the catalog's GPU pools: {pools}; this host has \
     {host} (fix: run this region's agent on a host with the GPUs the catalog lists, correct \
     the pool in the catalog, or set [gpus] accept_mismatch = true to run anyway with the \
     slots sharing the GPUs there are, or on the CPU without any)"
)]
pub struct Mismatch {
    /// Each pool short of GPUs, as a sentence.
    pub pools: String,
    /// What the host has.
    pub host: String,
}

impl Mismatch {
    /// The mismatch `plan` found on a host with `gpus` (and, without any, `absent` saying
    /// why); `None` when every GPU pool is covered.
    pub fn of(plan: &SlotPlan, gpus: &[Gpu], absent: Option<&str>) -> Option<Self> {
        if plan.short.is_empty() {
            return None;
        }
        let per = plan.slots_per_device;
        let pools: Vec<String> = plan
            .short
            .iter()
            .map(|s| {
                format!(
                    "pool {} has {} slot(s) of {}, which at {per} slot(s) per GPU need {} \
                     {} GPU(s), and {} of them were found for it",
                    s.pool, s.slots, s.gpu, s.needs, s.gpu, s.got
                )
            })
            .collect();
        Some(Self {
            pools: pools.join("; "),
            host: host(gpus, absent),
        })
    }
}

/// What a host has, e.g. `2 × NVIDIA L4` or `no usable GPU (no NVIDIA driver …)`.
fn host(gpus: &[Gpu], absent: Option<&str>) -> String {
    if gpus.is_empty() {
        return format!("no usable GPU ({})", absent.unwrap_or("none found"));
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for gpu in gpus {
        *names.entry(gpu.name.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = names.iter().map(|(n, c)| format!("{c} × {n}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests;
