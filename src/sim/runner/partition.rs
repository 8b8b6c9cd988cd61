//! How `run` splits the fabric for threads: into units — devices that must run
//! together because a link between them takes (almost) no time: a pod and its node
//! (the veth), a node and its own processes, an NSX Tier-1 and its Tier-0 (the
//! transit link) — and the units into shards, one per thread.
//!
//! A device reads and changes only its own state (`sim::network`), and everything
//! that passes between units crosses a link that takes at least the lookahead (the
//! shortest such link). So a shard may run every event earlier than the earliest
//! pending event anywhere plus the lookahead without hearing from another: nothing
//! another shard does in that window can reach it before the window ends. This is
//! the classic conservative scheme of parallel discrete-event simulation
//! (Chandy–Misra–Bryant lookahead, run in synchronous windows).
//!
//! Which device forms which unit, and which unit each event is ordered by, depend
//! only on the topology, never on the thread count: that is what keeps a run's
//! outputs identical for every `--threads`.

use crate::sim::network::{DeviceId, Network};

/// Links shorter than this join their ends into one unit: splitting them would leave
/// windows too short to hold any work. A pod's veth (5 µs) and the T1–T0 transit
/// (1 µs) stay inside a unit; a segment (25 µs each way by default) separates units.
pub const JOIN_BELOW_NS: u64 = 10_000;

/// The units of a fabric and the lookahead between them.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Each device's unit: the smallest device id in it.
    pub unit_of_device: Vec<u32>,
    /// The shortest link between two units (`u64::MAX`: no such link).
    pub lookahead_ns: u64,
}

impl Partition {
    pub fn of(network: &Network) -> Self {
        let device_count = network.device_names.len();
        let mut parent: Vec<u32> = (0..device_count)
            .map(|device| u32::try_from(device).unwrap_or(u32::MAX))
            .collect();
        for (device, ports) in network.links.iter().enumerate() {
            for end in ports.iter().flatten() {
                let back = network
                    .peer(end.device, end.port)
                    .map_or(0, |link| link.latency_ns);
                if end.latency_ns < JOIN_BELOW_NS || back < JOIN_BELOW_NS {
                    join(&mut parent, device, end.device);
                }
            }
        }
        let unit_of_device: Vec<u32> = (0..device_count)
            .map(|device| root(&mut parent, device))
            .collect();
        let lookahead_ns = network
            .links
            .iter()
            .enumerate()
            .flat_map(|(device, ports)| ports.iter().flatten().map(move |end| (device, end)))
            .filter(|(device, end)| unit_of_device[*device] != unit_of_device[end.device])
            .map(|(_, end)| end.latency_ns)
            .min()
            .unwrap_or(u64::MAX);
        Partition {
            unit_of_device,
            lookahead_ns,
        }
    }

    /// How many units the fabric has.
    pub fn unit_count(&self) -> usize {
        let mut units = self.unit_of_device.clone();
        units.sort_unstable();
        units.dedup();
        units.len()
    }

    pub fn unit(&self, device: DeviceId) -> u32 {
        self.unit_of_device[device]
    }

    /// Which of `shards` runs each unit's devices (by unit id, round robin over the
    /// units in order): any assignment gives the same outputs, this one spreads nodes.
    pub fn shard_of_devices(&self, shards: usize) -> Vec<usize> {
        let mut units: Vec<u32> = self.unit_of_device.clone();
        units.sort_unstable();
        units.dedup();
        let mut shard_of_unit = rustc_hash::FxHashMap::default();
        for (index, unit) in units.iter().enumerate() {
            shard_of_unit.insert(*unit, index % shards.max(1));
        }
        self.unit_of_device
            .iter()
            .map(|unit| shard_of_unit[unit])
            .collect()
    }
}

/// The smallest device id of `device`'s set (path halving).
fn root(parent: &mut [u32], device: usize) -> u32 {
    let mut at = device;
    while parent[at] as usize != at {
        let grandparent = parent[parent[at] as usize];
        parent[at] = grandparent;
        at = grandparent as usize;
    }
    parent[at]
}

/// Joins two sets, keeping the smaller id as the root.
fn join(parent: &mut [u32], a: usize, b: usize) {
    let (root_a, root_b) = (root(parent, a), root(parent, b));
    let (low, high) = (root_a.min(root_b), root_a.max(root_b));
    parent[high as usize] = low;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition_of(name: &str) -> (Network, Partition) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("topologies")
            .join(format!("{name}.toml"));
        let topology = crate::topology::load(&path).unwrap();
        let network = crate::sim::network::build(&topology);
        let partition = Partition::of(&network);
        (network, partition)
    }

    fn device(network: &Network, name: &str) -> DeviceId {
        network
            .device_names
            .iter()
            .position(|device| device == name)
            .unwrap_or_else(|| panic!("no device {name}: {:?}", network.device_names))
    }

    #[test]
    fn pods_run_with_their_node_and_a_segment_separates_nodes() {
        let (network, partition) = partition_of("quickstart");
        let unit = |name| partition.unit(device(&network, name));
        assert_eq!(unit("app01/web-1"), unit("worker-1"));
        assert_eq!(unit("app01/client-1"), unit("worker-1"));
        assert_eq!(unit("app01/web-2"), unit("worker-2"));
        assert_ne!(unit("worker-1"), unit("worker-2"));
        assert_ne!(unit("segment:vks-nodes"), unit("worker-1"));
        // Half the segment's 50 µs each way.
        assert_eq!(partition.lookahead_ns, 25_000);
        let shards = partition.shard_of_devices(2);
        assert_ne!(
            shards[device(&network, "worker-1")],
            shards[device(&network, "worker-2")]
        );
    }

    #[test]
    fn an_nsx_tier_one_runs_with_its_tier_zero_over_the_transit_link() {
        let (network, partition) = partition_of("nsx-t1-t0-bgp");
        let unit = |name| partition.unit(device(&network, name));
        assert_eq!(unit("t1-vks"), unit("t0"));
        assert_ne!(unit("t0"), unit("tor"));
        assert_eq!(partition.lookahead_ns, 25_000);
    }
}
