//! The pool check and the slot→device plan on synthetic GPU lists.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::config::{Capacity, GpuConfig};
use crate::gpu::Hardware;

fn gpu(index: u32, name: &str) -> Gpu {
    Gpu {
        index,
        name: name.into(),
        uuid: format!("GPU-{index}"),
        compute_capability: (9, 0),
        memory_total: 80 << 30,
        memory_free: 79 << 30,
    }
}

fn h100s(n: u32) -> Vec<Gpu> {
    (0..n).map(|i| gpu(i, "NVIDIA H100 80GB HBM3")).collect()
}

fn pool(id: &str, gpu: &str, reserved: u32, on_demand_max: u32) -> PoolPlan {
    PoolPlan {
        id: id.into(),
        gpu: gpu.into(),
        reserved,
        reserved_price_per_hour: 1.0,
        on_demand_max,
        on_demand_price_per_hour: 2.0,
    }
}

/// The slots as the catalog lists them: every reserved one, then every on-demand one, in
/// pool order.
fn slots(pools: &[PoolPlan]) -> Vec<SlotConfig> {
    let slot = |pool: &PoolPlan, capacity| SlotConfig {
        pool: pool.id.clone(),
        capacity,
        price_per_hour: 1.0,
        start_delay: Duration::ZERO,
        idle_stop: Duration::from_secs(60),
        device: Placement::Cpu,
    };
    let reserved = pools
        .iter()
        .flat_map(|p| (0..p.reserved).map(move |_| slot(p, Capacity::Reserved)));
    let on_demand = pools
        .iter()
        .flat_map(|p| (0..p.on_demand_max).map(move |_| slot(p, Capacity::OnDemand)));
    reserved.chain(on_demand).collect()
}

fn planned(gpus: &[Gpu], pools: &[PoolPlan], per_device: u32) -> SlotPlan {
    place(gpus, pools, &slots(pools), per_device)
}

fn on(indices: &[u32]) -> Vec<Placement> {
    indices.iter().map(|&i| Placement::Gpu(i)).collect()
}

#[test]
fn matching_gpus_give_each_slot_its_own_device() {
    let pools = [pool("h100", "H100-80GB", 2, 2)];
    let plan = planned(&h100s(4), &pools, 1);
    assert!(plan.short.is_empty(), "{:?}", plan.short);
    assert_eq!(plan.placements, on(&[0, 1, 2, 3]));
    assert_eq!(Mismatch::of(&plan, &h100s(4), None), None);
    // More GPUs than slots: the rest stay idle, which is no mismatch.
    let plan = planned(&h100s(8), &pools, 1);
    assert!(plan.short.is_empty());
}

#[test]
fn too_few_gpus_is_a_mismatch_naming_the_pool_counts_and_fix() {
    let pools = [pool("h100", "H100-80GB", 4, 0)];
    let gpus = h100s(2);
    let plan = planned(&gpus, &pools, 1);
    assert_eq!(
        plan.short,
        [Shortfall {
            pool: "h100".into(),
            gpu: "H100-80GB".into(),
            slots: 4,
            needs: 4,
            got: 2
        }]
    );
    let message = Mismatch::of(&plan, &gpus, None).unwrap().to_string();
    for part in [
        "pool h100 has 4 slot(s) of H100-80GB",
        "need 4 H100-80GB GPU(s), and 2 of them were found",
        "this host has 2 × NVIDIA H100 80GB HBM3",
        "[gpus] accept_mismatch = true",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn gpus_of_another_type_do_not_count() {
    let pools = [pool("h100", "H100-80GB", 2, 0)];
    let l4s = vec![gpu(0, "NVIDIA L4"), gpu(1, "NVIDIA L4")];
    let plan = planned(&l4s, &pools, 1);
    assert_eq!(plan.short[0].got, 0);
    let message = Mismatch::of(&plan, &l4s, None).unwrap().to_string();
    assert!(
        message.contains("0 of them were found") && message.contains("2 × NVIDIA L4"),
        "{message}"
    );
    // Types match word for word: an L4 pool does not take an L40S.
    assert!(same_type("L4", "NVIDIA L4"));
    assert!(!same_type("L4", "NVIDIA L40S"));
    assert!(same_type("A100-80GB", "NVIDIA A100-SXM4-80GB"));
    assert!(!same_type("A100-80GB", "NVIDIA A100-SXM4-40GB"));
}

#[test]
fn a_host_without_gpus_says_why() {
    let pools = [pool("h100", "H100-80GB", 1, 0)];
    let plan = planned(&[], &pools, 1);
    let absent = "no NVIDIA driver: opening libnvidia-ml.so.1 failed: not found";
    let message = Mismatch::of(&plan, &[], Some(absent)).unwrap().to_string();
    assert!(
        message.contains(&format!("this host has no usable GPU ({absent})")),
        "{message}"
    );
}

#[test]
fn cpu_pools_are_not_checked_and_run_on_the_cpu() {
    let pools = [pool("cpu", "cpu", 2, 1)];
    let plan = planned(&[], &pools, 1);
    assert!(plan.short.is_empty());
    assert_eq!(plan.placements, [Placement::Cpu; 3]);
    // Beside a GPU pool, on a host with GPUs.
    let pools = [pool("cpu", "CPU", 1, 0), pool("h100", "H100-80GB", 1, 0)];
    let plan = planned(&h100s(1), &pools, 1);
    assert!(plan.short.is_empty());
    assert_eq!(plan.placements, [Placement::Cpu, Placement::Gpu(0)]);
}

#[test]
fn shares_put_several_slots_on_one_device_reserved_first() {
    let pools = [pool("h100", "H100-80GB", 3, 1)];
    let plan = planned(&h100s(2), &pools, 2);
    assert!(plan.short.is_empty());
    // Reserved slots fill GPU 0 first; the on-demand slot shares GPU 1 with a reserved one.
    assert_eq!(plan.placements, on(&[0, 0, 1, 1]));
    // Five slots at two a GPU need three GPUs.
    let pools = [pool("h100", "H100-80GB", 5, 0)];
    let plan = planned(&h100s(2), &pools, 2);
    assert_eq!((plan.short[0].needs, plan.short[0].got), (3, 2));
}

#[test]
fn pools_of_different_types_take_their_own_gpus() {
    let gpus = vec![
        gpu(0, "NVIDIA L40S"),
        gpu(1, "NVIDIA H100 80GB HBM3"),
        gpu(2, "NVIDIA L40S"),
    ];
    let pools = [pool("h100", "H100-80GB", 1, 0), pool("l40s", "L40S", 1, 1)];
    let plan = planned(&gpus, &pools, 1);
    assert!(plan.short.is_empty(), "{:?}", plan.short);
    // Slots: h100 reserved, l40s reserved, l40s on-demand.
    assert_eq!(plan.placements, on(&[1, 0, 2]));
    // Two pools of one type split the GPUs; the second is left one short.
    let pools = [pool("a", "L40S", 1, 0), pool("b", "L40S", 2, 0)];
    let plan = planned(&gpus, &pools, 1);
    assert_eq!(plan.short.len(), 1);
    assert_eq!((plan.short[0].pool.as_str(), plan.short[0].got), ("b", 1));
}

#[test]
fn an_accepted_mismatch_shares_the_gpus_there_are_or_runs_on_the_cpu() {
    let pools = [pool("h100", "H100-80GB", 2, 2)];
    // Too few: the four slots take turns on the two GPUs.
    assert_eq!(planned(&h100s(2), &pools, 1).placements, on(&[0, 1, 0, 1]));
    // Another type: the slots run on the GPUs there are.
    let l4 = vec![gpu(3, "NVIDIA L4")];
    assert_eq!(planned(&l4, &pools, 1).placements, on(&[3, 3, 3, 3]));
    // No GPU: the CPU.
    assert_eq!(planned(&[], &pools, 1).placements, [Placement::Cpu; 4]);
}

fn hardware(gpus: Vec<Gpu>, accept_mismatch: bool) -> Hardware {
    Hardware {
        gpus,
        devices: Vec::new(),
        absent: None,
        nvml: None,
        settings: GpuConfig {
            accept_mismatch,
            ..GpuConfig::default()
        },
    }
}

#[test]
fn the_agent_refuses_a_mismatch_unless_the_configuration_accepts_it() {
    let pools = [pool("h100", "H100-80GB", 4, 0)];
    let slots = slots(&pools);
    let refused = hardware(h100s(2), false).place(&pools, &slots).unwrap_err();
    assert!(refused.to_string().contains("pool h100"), "{refused}");
    let placed = hardware(h100s(2), true).place(&pools, &slots).unwrap();
    assert_eq!(placed, on(&[0, 1, 0, 1]));
    assert_eq!(
        hardware(h100s(4), false).place(&pools, &slots).unwrap(),
        on(&[0, 1, 2, 3])
    );
}

#[test]
fn a_gpu_below_the_build_s_compute_capability_is_named() {
    let mut l4 = gpu(0, "NVIDIA L4");
    l4.compute_capability = (8, 9);
    let problem = crate::gpu::below_build(&l4, Some((9, 0))).unwrap();
    assert!(
        problem.contains("8.9")
            && problem.contains("9.0")
            && problem.contains("CUDA_COMPUTE_CAP=89"),
        "{problem}"
    );
    assert_eq!(crate::gpu::below_build(&h100s(1)[0], Some((9, 0))), None);
    assert_eq!(crate::gpu::below_build(&l4, Some((8, 0))), None);
    assert_eq!(crate::gpu::below_build(&l4, None), None);
}
