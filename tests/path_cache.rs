//! The path cache changes speed, never results: the same packets through the
//! bench's forwarder with the cache on and off arrive as the same bytes and leave
//! every device's conntrack entries (tuples, states, last-seen times) and IP
//! identification counters the same — across new flows, established ones, entries
//! expiring on the simulated clock, NAT (ClusterIP DNAT, MASQUERADE), 1,000
//! NetworkPolicies, routers and NSX DFW.

mod common;

use common::lint;
use netsim::bench::{with_policies, Forwarder};
use netsim::capture::CaptureMode;
use netsim::topology::Topology;
use std::path::Path;

const SECOND: u64 = 1_000_000_000;

fn load(name: &str) -> Topology {
    netsim::topology::load(std::path::Path::new(&format!("topologies/{name}.toml"))).expect("loads")
}

/// Builds one kind of forwarder.
type Make = fn(&Topology) -> Forwarder;

/// The forwarders of every kind a topology supports.
fn forwarders(topology: &Topology) -> Vec<(&'static str, Make)> {
    let mut kinds: Vec<(&'static str, Make)> = Vec::new();
    if Forwarder::new(topology, false).is_ok() {
        kinds.push(("pod", |t| Forwarder::new(t, false).unwrap()));
    }
    if Forwarder::via_service(topology, false).is_ok() {
        kinds.push(("service", |t| Forwarder::via_service(t, false).unwrap()));
    }
    if Forwarder::to_host(topology, false).is_ok() {
        kinds.push(("host", |t| Forwarder::to_host(t, false).unwrap()));
    }
    kinds
}

/// Sends the same schedule through `forwarder` ([`schedule_frames`], each frame
/// once); returns every arriving frame (empty when a packet did not arrive).
fn schedule(forwarder: &mut Forwarder) -> Vec<Vec<u8>> {
    let mut arrivals = Vec::new();
    for (frame, now) in schedule_frames(forwarder, 1) {
        let arrived = forwarder.send(&frame, now);
        arrivals.push(if arrived {
            forwarder.last_arrival().unwrap_or_default().to_vec()
        } else {
            Vec::new()
        });
    }
    arrivals
}

/// 40 flows, 30 rounds, with gaps long enough for UDP entries to expire (30 s
/// unreplied) twice, each frame `repeats` times in a row (so with 3 a burst holds
/// the packets after a flow's first, which compile its path): the frames and
/// their entry times.
fn schedule_frames(forwarder: &Forwarder, repeats: u64) -> Vec<(Vec<u8>, u64)> {
    let mut frames = Vec::new();
    let mut now = SECOND;
    for round in 0..30u64 {
        now += if round % 12 == 11 {
            45 * SECOND
        } else {
            SECOND / 10
        };
        for flow in 0..40u16 {
            // Most flows every round; some only every third, so they expire alone.
            if flow % 5 == 0 && round % 3 != 0 {
                continue;
            }
            let size = if flow % 7 == 0 { 200 } else { 100 };
            let frame = forwarder.frame(20_000 + flow, size);
            for repeat in 0..repeats {
                frames.push((frame.clone(), now + u64::from(flow) * repeats + repeat));
            }
        }
    }
    frames
}

fn compare(name: &str, topology: &Topology) {
    for (kind, make) in forwarders(topology) {
        let mut cached = make(topology);
        let mut walked = make(topology);
        walked.set_path_cache(false);
        let with = schedule(&mut cached);
        let without = schedule(&mut walked);
        assert_eq!(with, without, "{name}/{kind}: arriving frames differ");
        if with.iter().any(Vec::is_empty) {
            // Denied on the way (a DFW or policy): walked every time, compared above.
            continue;
        }
        assert_eq!(
            cached.state_digest(),
            walked.state_digest(),
            "{name}/{kind}: device state differs"
        );
        let (hits, misses) = cached.path_cache_stats();
        assert!(
            hits > misses,
            "{name}/{kind}: the cache served {hits} of {} packets",
            hits + misses
        );
        assert_eq!(walked.path_cache_stats().0, 0, "{name}/{kind}: no cache");
    }
}

#[test]
fn the_path_cache_changes_nothing_but_speed() {
    for name in [
        "two-node",
        "quickstart",
        "antrea-services",
        "nsx-dfw",
        "nsx-double-nat",
        "nsx-loadbalancer",
        "nsx-t1-t0-bgp",
        "calico-bgp-tor",
        "calico-route-reflectors",
        "antrea-egress",
        "antrea-hybrid",
        "egress-no-snat",
    ] {
        compare(name, &load(name));
    }
}

/// A cache of 3 paths for 10 flows, each sent four times in a row, starts over
/// every third flow (the paths and their shared touch and effect vectors emptied
/// together) and replays the flow just compiled: still what the walk does, packet
/// for packet.
#[test]
fn a_path_cache_that_keeps_starting_over_changes_nothing() {
    let bursts = |forwarder: &mut Forwarder| {
        let mut arrivals = Vec::new();
        let mut now = SECOND;
        for _round in 0..3 {
            for flow in 0..10u16 {
                let frame = forwarder.frame(30_000 + flow, 100);
                for _ in 0..4 {
                    now += SECOND / 100;
                    let arrived = forwarder.send(&frame, now);
                    arrivals.push(
                        arrived.then(|| forwarder.last_arrival().unwrap_or_default().to_vec()),
                    );
                }
            }
        }
        arrivals
    };
    for name in ["two-node", "antrea-services"] {
        let topology = load(name);
        for (kind, make) in forwarders(&topology) {
            let mut small = make(&topology);
            small.set_path_capacity(3);
            let mut walked = make(&topology);
            walked.set_path_cache(false);
            assert_eq!(
                bursts(&mut small),
                bursts(&mut walked),
                "{name}/{kind}: arriving frames differ"
            );
            assert_eq!(small.state_digest(), walked.state_digest(), "{name}/{kind}");
            let (hits, misses) = small.path_cache_stats();
            // The first packet of each burst walks (its path was emptied), the
            // other three replay — but the second too on a flow's very first burst
            // where that first packet commits a conntrack entry (not a steady walk).
            let first_commits = if kind == "pod" { 0 } else { 10 };
            assert_eq!(
                (hits, misses),
                (90 - first_commits, 30 + first_commits),
                "{name}/{kind}"
            );
        }
    }
}

#[test]
fn the_path_cache_changes_nothing_behind_a_thousand_policies() {
    let topology = with_policies(&load("two-node"), 1_000);
    compare("two-node + 1,000 policies", &topology);
}

#[test]
fn a_replayed_packet_is_the_walked_one_byte_for_byte() {
    let topology = load("two-node");
    let mut forwarder = Forwarder::via_service(&topology, false).unwrap();
    let frame = forwarder.frame(31_000, 300);
    let mut arrivals = Vec::new();
    for packet in 0..4u64 {
        assert!(forwarder.send(&frame, SECOND + packet));
        arrivals.push(forwarder.last_arrival().unwrap().to_vec());
    }
    // Walked (new connection), walked (compiles), replayed, replayed.
    assert_eq!(forwarder.path_cache_stats(), (2, 2));
    assert!(arrivals.windows(2).all(|pair| pair[0] == pair[1]));
    // The ClusterIP 10.96.255.254:5000 was DNATed by AntreaProxy to the server pod
    // (default/server, 10.244.1.2:5000 on node-b); TTL 64 -> 62 (L3DecTTL on both
    // nodes); the UDP checksum still verifies.
    assert_eq!(
        (forwarder.destination_ip, forwarder.destination_port),
        ("10.96.255.254".parse().unwrap(), 5000)
    );
    assert_arrival(
        &arrivals[3],
        ("10.244.0.2", 31_000),
        ("10.244.1.2", 5000),
        62,
    );
}

/// Asserts that `frame` is a UDP packet from `source` to `destination` (address,
/// port) with `ttl`, its IPv4 and UDP checksums verifying.
fn assert_arrival(frame: &[u8], source: (&str, u16), destination: (&str, u16), ttl: u8) {
    let arrival = netsim::packet::Packet::from_frame(frame, 0).unwrap();
    let key = arrival.meta.key;
    let endpoint = |(address, port): (&str, u16)| (address.parse().unwrap(), port);
    assert_eq!(
        (
            (key.source, key.source_port),
            (key.destination, key.destination_port)
        ),
        (endpoint(source), endpoint(destination))
    );
    assert_eq!(arrival.meta.ttl, ttl);
    let ip = smoltcp::wire::Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
    let (source, destination) = (ip.src_addr().into(), ip.dst_addr().into());
    assert!(udp.verify_checksum(&source, &destination));
}

/// Sends `schedule` with every hop (or the edges) streamed to `path`.
fn capture(make: Make, topology: &Topology, cached: bool, mode: CaptureMode, path: &Path) {
    let mut forwarder = make(topology);
    forwarder.set_path_cache(cached);
    forwarder.capture_into(std::fs::File::create(path).unwrap(), mode);
    schedule(&mut forwarder);
    let (hops, _) = forwarder.finish_capture().unwrap();
    assert!(hops > 0);
    let (replayed, _) = forwarder.path_cache_stats();
    assert_eq!(replayed > 0, cached, "{}", path.display());
}

#[test]
fn replayed_hops_are_the_walked_hops_byte_for_byte() {
    let directory = std::env::temp_dir().join(format!("netsim-path-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    for name in [
        "two-node",
        "nsx-t1-t0-bgp",
        "calico-bgp-tor",
        "antrea-egress",
    ] {
        let topology = load(name);
        for (kind, make) in forwarders(&topology) {
            for mode in [CaptureMode::All, CaptureMode::Edges] {
                let with = directory.join(format!("{name}-{kind}-{mode:?}-cached.pcapng"));
                let without = directory.join(format!("{name}-{kind}-{mode:?}-walked.pcapng"));
                capture(make, &topology, true, mode, &with);
                capture(make, &topology, false, mode, &without);
                assert!(
                    std::fs::read(&with).unwrap() == std::fs::read(&without).unwrap(),
                    "{name}/{kind}/{mode:?}: captures differ"
                );
            }
        }
    }
    // Every replayed capture is clean under Wireshark's dissectors; Antrea's carry
    // Geneve.
    let cached: Vec<std::path::PathBuf> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with("-cached.pcapng"))
        .collect();
    let files: Vec<&Path> = cached.iter().map(std::path::PathBuf::as_path).collect();
    assert!(files.len() >= 4 * 2 * 2, "{files:?}");
    lint(&[], &files);
    lint(
        &["--expect-geneve"],
        &[&directory.join("two-node-pod-All-cached.pcapng")],
    );
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn a_frame_for_another_mac_does_not_ride_a_compiled_path() {
    // The same 5-tuple addressed to a MAC that is not antrea-gw0's: OVS's
    // L3Forwarding reads the destination MAC, so the path must too.
    let topology = load("two-node");
    let mut cached = Forwarder::new(&topology, false).unwrap();
    let mut walked = Forwarder::new(&topology, false).unwrap();
    walked.set_path_cache(false);
    let to_gateway = cached.frame(32_000, 100);
    let mut elsewhere = to_gateway.clone();
    elsewhere[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let mut outcomes = Vec::new();
    for forwarder in [&mut cached, &mut walked] {
        let mut seen = Vec::new();
        for (index, frame) in [
            &to_gateway,
            &to_gateway,
            &to_gateway,
            &elsewhere,
            &elsewhere,
        ]
        .into_iter()
        .enumerate()
        {
            let arrived = forwarder.send(frame, SECOND + index as u64);
            seen.push(arrived.then(|| forwarder.last_arrival().unwrap().to_vec()));
        }
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert!(outcomes[0][..3].iter().all(Option::is_some));
    assert_eq!(
        outcomes[0][3..],
        [None, None],
        "not delivered: no pod has that MAC"
    );
    assert_eq!(cached.state_digest(), walked.state_digest());
}

/// The bare-frame lane on the masquerade path: the node's MASQUERADE (source
/// 10.244.0.2:31000 -> node-a's 10.0.0.11, port kept as nf_nat keeps a unique tuple),
/// the router's TTL decrement, checksums that verify; and its deferred effects: the
/// digest after three replays holds the conntrack entry last seen at the third
/// replay's time, as the walk leaves it.
#[test]
fn a_replayed_masquerade_packet_and_its_settled_state_are_the_walks() {
    let topology = load("two-node");
    let mut cached = Forwarder::to_host(&topology, false).unwrap();
    let mut walked = Forwarder::to_host(&topology, false).unwrap();
    walked.set_path_cache(false);
    let frame = cached.frame(31_000, 200);
    let times = [SECOND, SECOND + 7, SECOND + 19, SECOND + 31, SECOND + 45];
    let mut arrivals = Vec::new();
    for &now in &times {
        assert!(cached.send(&frame, now));
        arrivals.push(cached.last_arrival().unwrap().to_vec());
        assert!(walked.send(&frame, now));
        assert_eq!(
            walked.last_arrival().unwrap(),
            arrivals.last().unwrap().as_slice()
        );
    }
    // Walked (new connection), walked (compiles), then three replays.
    assert_eq!(cached.path_cache_stats(), (3, 2));
    let digest = cached.state_digest();
    assert_eq!(digest, walked.state_digest());
    assert!(
        digest.contains("last_seen_ns: 1000000045"),
        "the entry was last seen by the last replay: {digest}"
    );
    // node-a: nodes without an `ip` take the node segment's addresses from host
    // offset 11. TTL 64 from the pod; the node's routing (the host stack) and the
    // router gw.
    assert_arrival(
        &arrivals[4],
        ("10.0.0.11", 31_000),
        ("192.168.50.10", 5000),
        62,
    );
}

/// Sends `frames` one by one, or in bursts of [`BURST`]: (packets delivered, state
/// digest, path cache hits and misses).
fn send_all(
    forwarder: &mut Forwarder,
    frames: &[(Vec<u8>, u64)],
    bursts: bool,
) -> (u64, String, (u64, u64)) {
    let mut delivered = 0;
    if bursts {
        for chunk in frames.chunks(netsim::bench::BURST) {
            let burst: Vec<&[u8]> = chunk.iter().map(|(frame, _)| frame.as_slice()).collect();
            delivered += forwarder.send_burst(&burst, |index| chunk[index].1);
        }
    } else {
        for (frame, now) in frames {
            delivered += u64::from(forwarder.send(frame, *now));
        }
    }
    (
        delivered,
        forwarder.state_digest(),
        forwarder.path_cache_stats(),
    )
}

#[test]
fn a_burst_forwards_as_its_frames_one_by_one() {
    // Bursts look every frame's path up first; walks and newly compiled paths
    // inside a burst (its later lookups stale) must not change a thing.
    let directory = std::env::temp_dir().join(format!("netsim-burst-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    for name in [
        "two-node",
        "antrea-services",
        "nsx-t1-t0-bgp",
        "calico-bgp-tor",
    ] {
        let topology = load(name);
        for (kind, make) in forwarders(&topology) {
            let frames = schedule_frames(&make(&topology), 3);
            // A full-size cache, and one of 3 paths that starts over inside bursts
            // (so slots looked up before are reused by other paths).
            for capacity in [netsim::sim::path::CAPACITY, 3] {
                let mut forwarders = [make(&topology), make(&topology)];
                for forwarder in &mut forwarders {
                    forwarder.set_path_capacity(capacity);
                }
                let [mut single, mut bursting] = forwarders;
                let one_by_one = send_all(&mut single, &frames, false);
                let in_bursts = send_all(&mut bursting, &frames, true);
                assert!(one_by_one.0 > 0, "{name}/{kind}: nothing delivered");
                assert!(one_by_one.2 .0 > 0, "{name}/{kind}: nothing replayed");
                assert_eq!(one_by_one, in_bursts, "{name}/{kind}, {capacity} paths");
            }
            // With every hop captured, the same bytes.
            let mut files = Vec::new();
            for bursts in [false, true] {
                let path = directory.join(format!("{name}-{kind}-{bursts}.pcapng"));
                let mut forwarder = make(&topology);
                forwarder.capture_into(std::fs::File::create(&path).unwrap(), CaptureMode::All);
                send_all(&mut forwarder, &frames, bursts);
                forwarder.finish_capture().unwrap();
                files.push(std::fs::read(&path).unwrap());
            }
            assert!(files[0] == files[1], "{name}/{kind}: captures differ");
        }
    }
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn turning_capture_on_keeps_what_earlier_replays_left_pending() {
    // Replays without capture defer their effects to the path cache; turning
    // capture on starts a new cache, and must not lose them: the conntrack entry
    // is last seen by the last packet before, 1,000,000,045 ns.
    let topology = load("two-node");
    let mut cached = Forwarder::to_host(&topology, false).unwrap();
    let mut walked = Forwarder::to_host(&topology, false).unwrap();
    walked.set_path_cache(false);
    let frame = cached.frame(31_000, 100);
    for forwarder in [&mut cached, &mut walked] {
        for packet in 0..5u64 {
            assert!(forwarder.send(&frame, SECOND + packet * 10 + 5));
        }
    }
    let file = std::env::temp_dir().join(format!("netsim-pending-{}.pcapng", std::process::id()));
    cached.capture_into(std::fs::File::create(&file).unwrap(), CaptureMode::All);
    let digest = cached.state_digest();
    assert!(digest.contains("last_seen_ns: 1000000045"), "{digest}");
    assert_eq!(digest, walked.state_digest());
    let _ = std::fs::remove_file(file);
}

/// A path MTU a node learns (vxlan.calico, its pod MTU set to the underlay's 1500)
/// is read outside the path cache's touches: small packets compile paths, the first
/// 1500-byte packet goes out in fragments and lowers the path MTU to the pod to
/// 1450, the later ones are refused with fragmentation-needed — with the cache on
/// exactly as with it off.
#[test]
fn a_learned_path_mtu_changes_nothing_but_speed() {
    let text = std::fs::read_to_string("topologies/calico-bgp-tor.toml")
        .unwrap()
        .replace("nat_outgoing = true", "nat_outgoing = true\nmtu = 1500")
        .replace(
            "ipip_mode = \"CrossSubnet\"",
            "ipip_mode = \"Never\"\nvxlan_mode = \"Always\"",
        );
    let topology = netsim::topology::parse("calico-vxlan-1500.toml", &text).unwrap();
    let mut cached = Forwarder::new(&topology, false).unwrap();
    let mut walked = Forwarder::new(&topology, false).unwrap();
    walked.set_path_cache(false);
    let mut outcomes = Vec::new();
    for forwarder in [&mut cached, &mut walked] {
        let mut arrivals = Vec::new();
        let mut now = SECOND;
        for size in [100, 100, 1500, 100, 1500, 100] {
            for flow in 0..8u16 {
                now += 1_000;
                let frame = forwarder.frame(30_000 + flow, size);
                let arrived = forwarder.send(&frame, now);
                arrivals.push(if arrived {
                    forwarder.last_arrival().unwrap_or_default().to_vec()
                } else {
                    Vec::new()
                });
            }
        }
        outcomes.push((arrivals, forwarder.state_digest()));
    }
    assert!(outcomes[0] == outcomes[1], "the cache changed what arrived");
    let arrivals = &outcomes[0].0;
    // The path MTU is learned per destination, and every flow goes to the same
    // pod: the first 1500-byte packet anywhere arrives (sent in fragments), every
    // later one is refused for 1450; 100-byte packets always arrive.
    let lengths: Vec<usize> = arrivals.iter().map(Vec::len).collect();
    let mut expected = vec![14 + 100; 48];
    expected[16] = 14 + 1500;
    for refused in (17..24).chain(32..40) {
        expected[refused] = 0;
    }
    assert_eq!(lengths, expected);
    let (hits, _) = cached.path_cache_stats();
    assert!(hits >= 16, "small packets replay their paths: {hits}");
}
