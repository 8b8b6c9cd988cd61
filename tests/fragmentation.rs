//! `dont_fragment = false` means it (RFC 791 §3.2): the sender leaves DF clear, a
//! router cuts an oversize packet into fragments, each captured; the node reassembles
//! in front of conntrack and cuts again on output; the receiver reassembles.

mod common;

use common::*;
use netsim::datapath::HopAction;

const TOPOLOGY: &str = r#"
[topology]
name = "fragments"
seed = 4

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[segment]]
name = "wan"                  # a small-MTU link (a VPN, an old WAN)
cidr = "192.168.60.0/24"
gateway = "r1"
mtu = 1000

[[router]]
name = "r1"

[[host]]
name = "laptop"
ip = "192.168.50.10"
segment = "corp"

[[host]]
name = "server"
ip = "192.168.60.10"
segment = "wan"
listen = [ { protocol = "udp", port = 7000 } ]

[[cluster]]
name = "c1"
pod_cidr = "172.20.0.0/16"
node_segment = "nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"

[[cluster.pod]]
name = "app"
node = "worker-1"

[[flow]]
name = "host-fragments"
from = "host:laptop"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
dont_fragment = false

[[flow]]
name = "pod-fragments"
from = "pod:default/app"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
dont_fragment = false

[[flow]]
name = "pod-with-df"
from = "pod:default/app"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
start = "10ms"
"#;

#[test]
fn a_non_df_datagram_crosses_a_small_mtu_link_in_fragments_and_is_delivered() {
    let (topology, result, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "host-fragments");
    assert_eq!(udp.verdict, "delivered");
    assert_balanced(&report, "host-fragments");
    let sent = frames_at(
        &topology,
        &result,
        "host-fragments",
        "laptop:eth0",
        HopAction::Send,
    );
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].meta.dont_fragment, "DF clear");
    let fragments = frames_at(
        &topology,
        &result,
        "host-fragments",
        "r1:wan",
        HopAction::Transmit,
    );
    assert_eq!(fragments.len(), 2, "1428 bytes cut to fit 1000");
    assert!(fragments.iter().all(|f| f.ip_len() <= 1000));
    assert!(fragments[1].meta.is_later_fragment);
    let delivered = frames_at(
        &topology,
        &result,
        "host-fragments",
        "server:eth0",
        HopAction::Deliver,
    );
    assert_eq!(
        delivered.len(),
        2,
        "both fragments reach the server, which reassembles"
    );
    // The answer is cut by the server itself (its link has MTU 1000).
    let answers = frames_at(
        &topology,
        &result,
        "host-fragments",
        "laptop:eth0",
        HopAction::Deliver,
    );
    assert_eq!(answers.len(), 2);
}

#[test]
fn the_node_reassembles_in_front_of_conntrack_and_cuts_again_on_output() {
    let (topology, result, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "pod-fragments");
    assert_eq!(udp.verdict, "delivered");
    assert_balanced(&report, "pod-fragments");
    assert_eq!(
        udp.seen_source.as_deref(),
        Some("10.20.0.11"),
        "masqueraded"
    );
    // The fragmented answer reaches the pod un-NATed, in fragments again.
    let answers = frames_at(
        &topology,
        &result,
        "pod-fragments",
        "default/app:eth0",
        HopAction::Deliver,
    );
    assert_eq!(answers.len(), 2);
    assert!(answers
        .iter()
        .all(|a| a.meta.key.destination == "172.20.0.2".parse::<std::net::Ipv4Addr>().unwrap()));
}

#[test]
fn with_df_the_router_answers_fragmentation_needed_instead() {
    let (_, _, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "pod-with-df");
    assert_eq!(udp.verdict, "dropped");
    let drop = udp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("r1", "mtu-exceeded")
    );
    assert_eq!(
        udp.path_mtu
            .as_ref()
            .map(|p| (p.mtu, p.reported_by.as_str())),
        Some((1000, "r1:nodes"))
    );
}

#[test]
fn fragment_captures_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_into_dir(dir.path(), "fragments", TOPOLOGY);
    lint(&[], &[&out.join("capture.pcapng")]);
}

/// calico-bgp-tor with the pod MTU set to the underlay's 1500 (too big by the tunnel
/// header) and web-b also serving UDP 7000, plus `extra` flows.
fn calico_mtu_too_big(encapsulation: &str, extra: &str) -> String {
    std::fs::read_to_string(topology_path("calico-bgp-tor"))
        .unwrap()
        .replace("nat_outgoing = true", "nat_outgoing = true\nmtu = 1500")
        .replace("ipip_mode = \"CrossSubnet\"", encapsulation)
        .replace(
            "name = \"web-b\"\nnode = \"worker-b1\"\nports = [ { name = \"http\", port = 8080 } ]",
            "name = \"web-b\"\nnode = \"worker-b1\"\nports = [ { name = \"http\", port = 8080 }, { port = 7000, protocol = \"UDP\" } ]",
        )
        + extra
}

/// The offsets (in bytes), MF and DF of the outer packets worker-a1 sends for `flow`.
fn outer_fragments(
    text: &str,
    flow_name: &str,
) -> (Vec<(usize, bool, bool)>, netsim::report::Report) {
    let (topology, result, report) = run_text(text);
    let outer = frames_at(
        &topology,
        &result,
        flow_name,
        "worker-a1:eth0",
        HopAction::Encapsulate,
    )
    .iter()
    .map(|packet| {
        let frame = packet.frame();
        let flags = u16::from_be_bytes([frame[20], frame[21]]);
        (
            usize::from(flags & 0x1fff) * 8,
            flags & 0x2000 != 0,
            flags & 0x4000 != 0,
        )
    })
    .collect();
    (outer, report)
}

const BIG_UDP: &str = "\n[[flow]]\nname = \"big-udp\"\nfrom = \"pod:default/client\"\n\
                       to = \"pod:default/web-b:7000\"\nprotocol = \"udp\"\nbytes = 1460\n";

const BIG_TCP: &str = "\n[[flow]]\nname = \"big-tcp\"\nfrom = \"pod:default/client\"\n\
                       to = \"pod:default/web-b\"\nprotocol = \"tcp\"\nbytes = 8000\n";

/// `big-tcp` is delivered after its client learned `mtu` from worker-a1
/// (10.30.1.11), and every packet of it that was dropped was a full 1500-byte
/// segment refused at `device` for that MTU.
fn assert_tcp_learned_the_path_mtu(text: &str, mtu: u16, device: &str) {
    let (topology, result, report) = run_text(text);
    let tcp = flow(&report, "big-tcp");
    assert_eq!(tcp.verdict, "delivered", "{tcp:?}");
    assert_balanced(&report, "big-tcp");
    let learned = tcp
        .path_mtu
        .as_ref()
        .expect("the client learns the path MTU");
    assert_eq!((learned.mtu, learned.from.as_str()), (mtu, "10.30.1.11"));
    let tag = flow_index(&topology, "big-tcp");
    let refusals: Vec<&str> = result
        .journal
        .drops
        .iter()
        .filter(|drop| drop.flow == tag)
        .map(|drop| drop.detail.as_str())
        .collect();
    assert!(!refusals.is_empty());
    let expected = format!("1500 bytes exceed the mtu {mtu} of {device}");
    assert!(
        refusals.iter().all(|detail| *detail == expected),
        "{refusals:?}"
    );
}

/// vxlan.calico sends without DF: a datagram the pod MTU allows but the underlay does
/// not is cut after encapsulation (1538 bytes: 1500 and 58), and worker-b1
/// reassembles it before decapsulating.
#[test]
fn calico_vxlan_fragments_an_outer_packet_too_big_and_the_peer_reassembles_it() {
    let text = calico_mtu_too_big("ipip_mode = \"Never\"\nvxlan_mode = \"Always\"", BIG_UDP);
    let (outer, report) = outer_fragments(&text, "big-udp");
    assert_eq!(outer.len() % 2, 0, "{outer:?}");
    for pair in outer.chunks(2) {
        assert_eq!(pair, [(0, true, false), (1480, false, false)]);
    }
    let udp = flow(&report, "big-udp");
    assert_eq!(udp.verdict, "delivered", "{udp:?}");
    assert_balanced(&report, "big-udp");
    // Each datagram is decapsulated once, whole, at worker-b1, when its last
    // fragment arrives (the hop shows that fragment; the first was held).
    let (topology, result, _) = run_text(&text);
    let decapsulated = frames_at(
        &topology,
        &result,
        "big-udp",
        "worker-b1:eth0",
        HopAction::Decapsulate,
    );
    assert_eq!(decapsulated.len() * 2, outer.len());
    assert!(decapsulated.iter().all(|packet| {
        let frame = packet.frame();
        u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff == 1480 / 8
    }));
}

/// tunl0 copies the inner DF: a DF packet too big for the uplink with the outer
/// header is refused with fragmentation-needed (mtu 1480) and TCP sends smaller
/// segments; without DF the outer packet is cut like VXLAN's.
#[test]
fn calico_ipip_refuses_a_df_packet_too_big_and_fragments_one_without_df() {
    let extra = BIG_UDP.replace("bytes = 1460", "bytes = 1460\ndont_fragment = false") + BIG_TCP;
    let text = calico_mtu_too_big("ipip_mode = \"CrossSubnet\"", &extra);
    let (outer, report) = outer_fragments(&text, "big-udp");
    assert!(!outer.is_empty());
    for pair in outer.chunks(2) {
        assert_eq!(pair, [(0, true, false), (1480, false, false)]);
    }
    assert_eq!(flow(&report, "big-udp").verdict, "delivered");
    assert_tcp_learned_the_path_mtu(&text, 1480, "tunl0");
    let (outer, _) = outer_fragments(&text, "big-tcp");
    assert!(outer
        .iter()
        .all(|&(offset, more, df)| offset == 0 && !more && df));
}

#[test]
fn calico_tunnel_fragment_captures_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    for (name, encapsulation) in [
        ("vxlan", "ipip_mode = \"Never\"\nvxlan_mode = \"Always\""),
        ("ipip", "ipip_mode = \"CrossSubnet\""),
    ] {
        let extra = BIG_UDP.replace("bytes = 1460", "bytes = 1460\ndont_fragment = false");
        let out = run_into_dir(dir.path(), name, &calico_mtu_too_big(encapsulation, &extra));
        lint(&[], &[&out.join("flows/big-udp.pcapng")]);
    }
}

/// The first oversize packet through vxlan.calico lowers the path MTU to the
/// destination to 1450 (what the uplink leaves): it goes out in fragments, and the
/// segments after it are refused with fragmentation-needed, mtu 1450, from the node;
/// TCP sends smaller segments and the exchange completes.
#[test]
fn calico_vxlan_learns_the_path_mtu_from_its_first_oversize_packet() {
    let text = calico_mtu_too_big("ipip_mode = \"Never\"\nvxlan_mode = \"Always\"", BIG_TCP);
    let (outer, _) = outer_fragments(&text, "big-tcp");
    assert_eq!(
        outer.iter().filter(|&&(_, more, _)| more).count(),
        1,
        "only the first oversize segment is cut: {outer:?}"
    );
    assert_tcp_learned_the_path_mtu(&text, 1450, "vxlan.calico");
}
