//! The fast path allocates nothing: once a flow is established (every device's flow
//! cache and conntrack hold it), forwarding another packet of it end to end makes no
//! heap allocation. dhat's counting global allocator (this test binary's only)
//! proves it; a count, not a time, so it is exact on any machine.
//!
//! The binary has its own `main` (`harness = false` in Cargo.toml): dhat counts
//! every thread's allocations, and libtest's threads would allocate beside ours.

use netsim::bench::{default_topology, Forwarder};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Heap allocations made while forwarding 64,000 packets of 64 established flows
/// through `forwarder`.
fn allocations(mut forwarder: Forwarder) -> u64 {
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|flow| forwarder.frame(20_000 + flow, 64))
        .collect();
    // Warm up: the first packet of each flow takes the slow path (cache and conntrack
    // entries); the rounds after it make sure every queue has grown.
    for round in 0..3u64 {
        for frame in &frames {
            assert!(forwarder.send(frame, round * 1_000));
        }
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().total_blocks;
    for round in 3..1_003u64 {
        for frame in &frames {
            assert!(forwarder.send(frame, round * 1_000));
        }
    }
    dhat::HeapStats::get().total_blocks - before
}

fn main() {
    let topology = default_topology();
    let paths = [
        (
            "cross-node pod to pod (OVS, Geneve, segment, OVS)",
            Forwarder::new(&topology, false),
        ),
        (
            "pod to a ClusterIP (AntreaProxy DNAT in OVS conntrack)",
            Forwarder::via_service(&topology, false),
        ),
        (
            "cross-node with 1,000 NetworkPolicies on the server (decided per connection)",
            Forwarder::new(&netsim::bench::with_policies(&topology, 1_000), false),
        ),
        (
            "pod to a host outside (node host stack, MASQUERADE)",
            Forwarder::to_host(&topology, false),
        ),
    ];
    // The counter counts: the same path with every hop recorded allocates.
    assert!(allocations(Forwarder::new(&topology, true).unwrap()) > 0);
    let mut failed = false;
    for (name, forwarder) in paths {
        let count = allocations(forwarder.expect(name));
        println!("{name}: {count} allocations in 64,000 established packets");
        failed |= count != 0;
    }
    assert!(!failed, "the established fast path allocated");
}
