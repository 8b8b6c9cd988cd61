//! Seeded, stable flow hashing: the same 5-tuple and seed give the same value on every
//! run and every machine (no `RandomState`), which is what keeps outputs deterministic.

use crate::packet::FlowKey;

/// murmur3's 64-bit finalizer: full avalanche of every input bit.
fn mix64(mut value: u64) -> u64 {
    value ^= value >> 33;
    value = value.wrapping_mul(0xff51_afd7_ed55_8ccd);
    value ^= value >> 33;
    value = value.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    value ^ (value >> 33)
}

/// A stable 64-bit mix of `value` (murmur3's finalizer), for seeded choices such as
/// MAC addresses.
pub fn mix(value: u64) -> u64 {
    mix64(value)
}

/// A 32-bit hash of a flow's 5-tuple, salted with `seed`.
pub fn flow_hash(key: &FlowKey, seed: u64) -> u32 {
    let addresses =
        (u64::from(u32::from(key.source)) << 32) | u64::from(u32::from(key.destination));
    let ports = (u64::from(key.source_port) << 32)
        | (u64::from(key.destination_port) << 16)
        | u64::from(key.protocol);
    let value = mix64(mix64(addresses ^ seed) ^ ports.rotate_left(17));
    u32::try_from(value >> 32).unwrap_or(u32::MAX)
}

/// A hash of a flow's 5-tuple that is the same for both directions (the endpoints
/// ordered before hashing, as a symmetric RSS key does): a connection's packets and
/// its replies land on the same shard.
pub fn symmetric_flow_hash(key: &FlowKey, seed: u64) -> u32 {
    let forward = (key.source, key.source_port);
    let backward = (key.destination, key.destination_port);
    let ((low, low_port), (high, high_port)) = if forward <= backward {
        (forward, backward)
    } else {
        (backward, forward)
    };
    flow_hash(
        &FlowKey {
            protocol: key.protocol,
            source: low,
            source_port: low_port,
            destination: high,
            destination_port: high_port,
        },
        seed,
    )
}

/// The shard (of `shards`) that owns a flow: its symmetric hash scaled into
/// `0..shards`, receive-side scaling by flow.
pub fn shard_of(key: &FlowKey, seed: u64, shards: usize) -> usize {
    let shards = u64::try_from(shards.max(1)).unwrap_or(1);
    let scaled = (u64::from(symmetric_flow_hash(key, seed)) * shards) >> 32;
    usize::try_from(scaled).unwrap_or(0)
}

/// Scales a 32-bit hash into `[low, high)` the way Linux `udp_flow_src_port` and
/// `reciprocal_scale` do: `((hash * (high - low)) >> 32) + low`.
pub fn scale(hash: u32, low: u16, high: u16) -> u16 {
    let span = u64::from(high - low);
    let scaled = (u64::from(hash) * span) >> 32;
    low + u16::try_from(scaled).unwrap_or(0)
}

/// Outer UDP source port for a tunnelled flow: a stable hash of the inner 5-tuple
/// scaled into the tunnel's `[low, high)` as Linux `udp_flow_src_port` scales the
/// skb hash (`Encapsulation::source_ports` gives each tunnel's range).
pub fn tunnel_source_port(inner: &FlowKey, seed: u64, (low, high): (u16, u16)) -> u16 {
    scale(flow_hash(inner, seed), low, high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(source_port: u16) -> FlowKey {
        FlowKey {
            protocol: 6,
            source: Ipv4Addr::new(172, 20, 1, 10),
            destination: Ipv4Addr::new(172, 20, 2, 10),
            source_port,
            destination_port: 8080,
        }
    }

    #[test]
    fn tunnel_port_is_stable_in_range_and_differs_by_direction() {
        let range = (1, u16::MAX);
        let forward = tunnel_source_port(&key(40000), 7, range);
        assert_eq!(forward, tunnel_source_port(&key(40000), 7, range));
        assert!((1..=65534).contains(&forward));
        assert_ne!(
            forward,
            tunnel_source_port(&key(40000).reversed(), 7, range)
        );
        assert_ne!(forward, tunnel_source_port(&key(40001), 7, range));
    }

    #[test]
    fn scale_covers_the_range_ends() {
        assert_eq!(scale(0, 1, 65535), 1);
        assert_eq!(scale(u32::MAX, 1, 65535), 65534);
    }

    #[test]
    fn a_connection_and_its_replies_land_on_one_shard_and_shards_share_the_flows() {
        let mut counts = [0usize; 4];
        for port in 1024..9216 {
            let forward = key(port);
            assert_eq!(
                symmetric_flow_hash(&forward, 7),
                symmetric_flow_hash(&forward.reversed(), 7)
            );
            let shard = shard_of(&forward, 7, 4);
            assert_eq!(shard, shard_of(&forward.reversed(), 7, 4));
            counts[shard] += 1;
        }
        // 8,192 flows over 4 shards: each within 10% of 2,048.
        assert!(
            counts.iter().all(|&n| (1843..=2253).contains(&n)),
            "{counts:?}"
        );
    }
}
