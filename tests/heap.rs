//! What the heap says, counted by dhat's global allocator (this test binary's only):
//! counts, not times, so exact on any machine.
//!
//! * The fast path allocates nothing: once a flow is established (every device's
//!   flow cache and conntrack hold it), forwarding another packet of it end to end
//!   makes no heap allocation — one by one or in bursts, and with every hop
//!   streamed to a pcapng file.
//! * A million concurrent connections in one conntrack table, each SNATed (both
//!   tuples indexed), take well under a GiB.
//!
//! The binary has its own `main` (`harness = false` in Cargo.toml): dhat counts
//! every thread's allocations, and libtest's threads would allocate beside ours.

use netsim::bench::{default_topology, Forwarder};
use netsim::capture::CaptureMode;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// How the packets are handed to the forwarder.
#[derive(Clone, Copy)]
enum Sending {
    OneByOne,
    /// In bursts of 32 (`Forwarder::send_burst`: every path looked up first).
    Bursts,
}

/// Heap allocations made while forwarding 64,000 packets of 64 established flows
/// through `forwarder`.
fn allocations(mut forwarder: Forwarder, sending: Sending) -> u64 {
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|flow| forwarder.frame(20_000 + flow, 64))
        .collect();
    let round_of = |forwarder: &mut Forwarder, round: u64| match sending {
        Sending::OneByOne => {
            for frame in &frames {
                assert!(forwarder.send(frame, round * 1_000));
            }
        }
        Sending::Bursts => {
            for burst in frames.chunks(netsim::bench::BURST) {
                let burst: [&[u8]; 32] = std::array::from_fn(|index| burst[index].as_slice());
                let delivered = forwarder.send_burst(&burst, |index| round * 1_000 + index as u64);
                assert_eq!(delivered, 32);
            }
        }
    };
    // Warm up: the first packet of each flow takes the slow path (cache and conntrack
    // entries); the rounds after it make sure every queue has grown.
    for round in 0..3u64 {
        round_of(&mut forwarder, round);
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().total_blocks;
    for round in 3..1_003u64 {
        round_of(&mut forwarder, round);
    }
    dhat::HeapStats::get().total_blocks - before
}

/// Heap bytes one conntrack zone holds with `count` MASQUERADEd connections: 50,000
/// per server (one node address has 64,512 ports toward each), from pods' ports.
fn conntrack_bytes(count: u32) -> u64 {
    use netsim::engine::conntrack::Conntrack;
    use netsim::packet::FlowKey;
    use std::net::Ipv4Addr;
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().curr_bytes;
    let mut table = Conntrack::new(2_000_000, 1);
    for connection in 0..count {
        let client = FlowKey {
            protocol: 6,
            source: Ipv4Addr::from(0xac10_0000 + connection % 100),
            destination: Ipv4Addr::from(0xc0a8_3200 + connection / 50_000),
            source_port: 10_000 + u16::try_from(connection % 50_000).unwrap(),
            destination_port: 5432,
        };
        table
            .insert_snat(client, Ipv4Addr::new(10, 16, 0, 11), 0)
            .expect("a port is free");
    }
    assert_eq!(table.len(), count as usize);
    let bytes = dhat::HeapStats::get().curr_bytes - before;
    drop(table);
    bytes as u64
}

fn main() {
    let million = conntrack_bytes(1_000_000);
    println!(
        "one conntrack zone with 1,000,000 SNATed connections: {} MiB ({} bytes per connection)",
        million >> 20,
        million / 1_000_000
    );
    assert!(million < 1 << 30, "{million} bytes");
    let topology = default_topology();
    let policies = netsim::bench::with_policies(&topology, 1_000);
    let paths: [(&str, &dyn Fn() -> Forwarder); 4] = [
        ("cross-node pod to pod (OVS, Geneve, segment, OVS)", &|| {
            Forwarder::new(&topology, false).unwrap()
        }),
        (
            "pod to a ClusterIP (AntreaProxy DNAT in OVS conntrack)",
            &|| Forwarder::via_service(&topology, false).unwrap(),
        ),
        (
            "cross-node with 1,000 NetworkPolicies on the server (decided per connection)",
            &|| Forwarder::new(&policies, false).unwrap(),
        ),
        (
            "pod to a host outside (node host stack, MASQUERADE)",
            &|| Forwarder::to_host(&topology, false).unwrap(),
        ),
    ];
    // The counter counts: the same path with every hop recorded allocates.
    assert!(allocations(Forwarder::new(&topology, true).unwrap(), Sending::OneByOne) > 0);
    let mut failed = false;
    for (name, build) in paths {
        for (sending, how) in [
            (Sending::OneByOne, "one by one"),
            (Sending::Bursts, "in bursts"),
        ] {
            let count = allocations(build(), sending);
            println!("{name}, {how}: {count} allocations in 64,000 established packets");
            failed |= count != 0;
        }
    }
    // With every hop streamed to a capture file, each replayed packet's six hops
    // are laid out in the stream's buffer: still nothing allocated.
    let file = std::env::temp_dir().join(format!("netsim-heap-{}.pcapng", std::process::id()));
    let mut capturing = Forwarder::new(&topology, false).unwrap();
    capturing.capture_into(std::fs::File::create(&file).unwrap(), CaptureMode::All);
    let count = allocations(capturing, Sending::Bursts);
    println!("cross-node, every hop streamed to pcapng, in bursts: {count} allocations in 64,000 established packets");
    failed |= count != 0;
    let _ = std::fs::remove_file(&file);
    assert!(!failed, "the established fast path allocated");
}
