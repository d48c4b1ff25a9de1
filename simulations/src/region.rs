//! How a region's GPUs are laid out on its hosts (the machines its agent instances run on).
//!
//! A region's hosts are the sizes listed for it in `simulation.host_gpus` (GPUs per host, in
//! order), followed by as many hosts of `simulation.gpus_per_host` as it takes to hold the
//! rest. The region's GPUs fill them in that order, reserved GPUs first and then on-demand
//! ones, each host full before the next; the last host holds what is left, and a listed
//! host left with no GPU is not run. So 20 reserved GPUs on hosts of 8 are hosts of 8, 8 and
//! 4 reserved; with 10 on-demand GPUs too, the third host is 4 reserved and 4 on-demand and
//! a fourth holds the last 6 on-demand. A region with no GPU at all still has one (empty)
//! host, so it reports like any other.

/// One host's share of its region's slots (its agent's `[pools]` share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostShape {
    /// Reserved slots.
    pub reserved: u32,
    /// On-demand slots it may start.
    pub on_demand: u32,
}

impl HostShape {
    /// GPUs on the host.
    pub fn gpus(self) -> u32 {
        self.reserved + self.on_demand
    }
}

/// The hosts of a region with `reserved` and `on_demand` GPUs: hosts of the `listed` sizes
/// first, then of `gpus_per_host` (≥ 1), filled reserved first (see the module doc).
pub fn layout(reserved: u32, on_demand: u32, listed: &[u32], gpus_per_host: u32) -> Vec<HostShape> {
    let mut sizes = listed
        .iter()
        .copied()
        .chain(std::iter::repeat(gpus_per_host.max(1)));
    let (mut reserved_left, mut on_demand_left) = (reserved, on_demand);
    let mut hosts = Vec::new();
    while reserved_left + on_demand_left > 0 {
        let Some(size) = sizes.next() else { break };
        let r = reserved_left.min(size);
        let d = on_demand_left.min(size - r);
        reserved_left -= r;
        on_demand_left -= d;
        if r + d > 0 {
            hosts.push(HostShape {
                reserved: r,
                on_demand: d,
            });
        }
    }
    if hosts.is_empty() {
        hosts.push(HostShape::default());
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(list: &[(u32, u32)]) -> Vec<HostShape> {
        list.iter()
            .map(|&(reserved, on_demand)| HostShape {
                reserved,
                on_demand,
            })
            .collect()
    }

    #[test]
    fn twenty_reserved_gpus_are_hosts_of_eight_eight_and_four() {
        assert_eq!(layout(20, 0, &[], 8), shapes(&[(8, 0), (8, 0), (4, 0)]));
    }

    #[test]
    fn on_demand_gpus_fill_the_last_reserved_host_then_new_ones() {
        assert_eq!(
            layout(20, 10, &[], 8),
            shapes(&[(8, 0), (8, 0), (4, 4), (0, 6)])
        );
        assert_eq!(layout(0, 3, &[], 8), shapes(&[(0, 3)]));
    }

    #[test]
    fn listed_hosts_come_first_and_default_hosts_hold_the_rest() {
        assert_eq!(layout(6, 6, &[4, 2], 8), shapes(&[(4, 0), (2, 0), (0, 6)]));
        // A listed host with nothing left for it is not run.
        assert_eq!(layout(3, 0, &[2, 2, 4], 8), shapes(&[(2, 0), (1, 0)]));
    }

    #[test]
    fn every_gpu_is_on_exactly_one_host_and_none_is_over_its_size() {
        for reserved in 0..30 {
            for on_demand in 0..30 {
                for size in 1..10 {
                    let hosts = layout(reserved, on_demand, &[], size);
                    let sum = |f: fn(&HostShape) -> u32| hosts.iter().map(f).sum::<u32>();
                    assert_eq!(sum(|h| h.reserved), reserved);
                    assert_eq!(sum(|h| h.on_demand), on_demand);
                    assert!(hosts.iter().all(|h| h.gpus() <= size));
                    let full = hosts.len().saturating_sub(1);
                    assert!(hosts[..full].iter().all(|h| h.gpus() == size));
                }
            }
        }
    }

    #[test]
    fn a_region_without_gpus_has_one_empty_host() {
        assert_eq!(layout(0, 0, &[], 8), shapes(&[(0, 0)]));
    }
}
