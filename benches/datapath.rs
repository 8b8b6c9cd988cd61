//! Criterion benches: parsing, Geneve encap+decap, each engine structure alone (LPM,
//! conntrack lookup and insert, policy classification over 1,000 rules), one
//! cross-node pod-to-pod packet through the whole path (flow-cache hit and miss), a
//! router forwarding with a small and a 10,000-route FIB (the cost must not grow with
//! the table), and BGP convergence of a 150-router iBGP full mesh.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netsim::bench::{default_topology, Forwarder};
use netsim::datapath::encap::{decapsulate, encapsulate, EncapHeader, Encapsulation};
use netsim::engine::conntrack::Conntrack;
use netsim::engine::lpm::LpmTable;
use netsim::packet::{parse_meta, FlowKey, Packet};
use netsim::wire::Mac;
use std::hint::black_box;
use std::net::Ipv4Addr;

fn frame() -> Vec<u8> {
    let forwarder = Forwarder::new(&default_topology(), false).unwrap();
    forwarder.frame(40_000, 512)
}

fn parsing(c: &mut Criterion) {
    let frame = frame();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_meta udp 512", |b| {
        b.iter(|| parse_meta(black_box(&frame)).unwrap())
    });
    group.finish();
}

fn geneve(c: &mut Criterion) {
    let frame = frame();
    let header = EncapHeader {
        source: Ipv4Addr::new(10, 0, 0, 11),
        destination: Ipv4Addr::new(10, 0, 0, 12),
        source_mac: Mac::local(1, 0),
        destination_mac: Mac::local(1, 1),
        source_port: 49_152,
        identification: 1,
        dont_fragment: true,
    };
    let mut packet = Packet::from_frame(&frame, 0).unwrap();
    let mut group = c.benchmark_group("geneve");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encap+decap 512", |b| {
        b.iter(|| {
            encapsulate(&mut packet, Encapsulation::Geneve, black_box(&header));
            decapsulate(&mut packet).unwrap()
        })
    });
    group.finish();
}

fn engine(c: &mut Criterion) {
    let mut table = LpmTable::new();
    for node in 0..256u32 {
        table.insert(
            format!("10.{}.{}.0/24", node / 256, node % 256)
                .parse()
                .unwrap(),
            node,
        );
    }
    table.insert("0.0.0.0/0".parse().unwrap(), u32::MAX);
    let mut conntrack = Conntrack::new(1 << 20, 1);
    let keys: Vec<FlowKey> = (1024..11_024u16)
        .map(|port| FlowKey {
            protocol: 6,
            source: Ipv4Addr::new(172, 20, 1, 10),
            destination: Ipv4Addr::new(192, 168, 50, 10),
            source_port: port,
            destination_port: 443,
        })
        .collect();
    for key in &keys {
        conntrack
            .insert_snat(*key, Ipv4Addr::new(10, 20, 0, 11), 0)
            .unwrap();
    }
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lpm lookup (257 prefixes)", |b| {
        b.iter(|| table.lookup(black_box(Ipv4Addr::new(10, 0, 77, 9))))
    });
    let mut index = 0;
    group.bench_function("conntrack lookup (10k entries)", |b| {
        b.iter(|| {
            index = (index + 1) % keys.len();
            conntrack.lookup(black_box(&keys[index]), 1)
        })
    });
    // A new MASQUERADEd connection per iteration into one table (the port choice,
    // both tuples indexed, the table growing): 50,000 clients' ports per server.
    group.bench_function("conntrack insert SNAT (new connection)", |b| {
        b.iter_custom(|iterations| {
            let mut table = Conntrack::new(usize::MAX, 1);
            let started = std::time::Instant::now();
            for connection in 0..u32::try_from(iterations).unwrap_or(u32::MAX) {
                let key = FlowKey {
                    protocol: 6,
                    source: Ipv4Addr::from(0xac10_0000 + connection % 100),
                    destination: Ipv4Addr::from(0xc0a8_0000 + connection / 50_000),
                    source_port: 10_000 + u16::try_from(connection % 50_000).unwrap(),
                    destination_port: 5432,
                };
                let _ = black_box(table.insert_snat(key, Ipv4Addr::new(10, 20, 0, 11), 0));
            }
            started.elapsed()
        })
    });
    group.finish();
}

/// One policy decision over a layer of 1,000 rules (each a source /16 and one
/// port, as compiled NetworkPolicy allows are; the packet matches the last), through
/// the address index a layer of 32 rules or more classifies with.
fn policy_classification(c: &mut Criterion) {
    use netsim::engine::rules::{AddressSet, Layer, Metadata, Predicate, Rule};
    let mut layer = Layer::new("ingress", "default-deny");
    for index in 0..1_000u32 {
        let source = Ipv4Addr::from(0x6400_0000 + (index << 16));
        layer.push(Rule::new(
            format!("np-{index}"),
            vec![
                Predicate::SourceIn(AddressSet::new([ipnet::Ipv4Net::new(source, 16).unwrap()])),
                Predicate::Protocol(17),
                Predicate::DestinationPort {
                    low: 7000 + u16::try_from(index).unwrap(),
                    high: 7000 + u16::try_from(index).unwrap(),
                },
            ],
            "allow",
        ));
    }
    let packet = Metadata {
        key: FlowKey {
            protocol: 17,
            source: Ipv4Addr::from(0x6400_0000 + (999 << 16) + 7),
            destination: Ipv4Addr::new(172, 20, 2, 10),
            source_port: 40_000,
            destination_port: 7999,
        },
        in_interface: None,
        out_interface: None,
        mark: 0,
    };
    assert_eq!(layer.classify(&packet).action, &"allow");
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify, 1,000 rules (match at the last)", |b| {
        b.iter(|| layer.classify(black_box(&packet)).action)
    });
    group.finish();
}

fn whole_path(c: &mut Criterion) {
    let topology = default_topology();
    let mut group = c.benchmark_group("cross-node pod-to-pod");
    group.throughput(Throughput::Elements(1));
    let mut forwarder = Forwarder::new(&topology, false).unwrap();
    let established = forwarder.frame(40_000, 512);
    group.bench_function("established flow (cache hit)", |b| {
        b.iter(|| assert!(forwarder.send(black_box(&established), 0)))
    });
    // A new 5-tuple every packet, from far more distinct flows (64 million) than a
    // node's flow cache holds (65,536), so every packet misses — a fixed set of
    // frames cycled through would hit the cache after its first pass.
    let mut forwarder = Forwarder::new(&topology, false).unwrap();
    let mut fresh = forwarder.frame(1024, 512);
    let mut index = 0;
    group.bench_function("new flow per packet (cache miss)", |b| {
        b.iter(|| {
            index += 1;
            Forwarder::make_new_flow(&mut fresh, index);
            assert!(forwarder.send(black_box(&fresh), 0))
        })
    });
    group.finish();
}

/// Pod to a host outside the cluster through the node's host stack, established:
/// MASQUERADEd by the node against the same path with `no_snat` (the translation's
/// cost is the difference).
fn masquerade(c: &mut Criterion) {
    let topology = default_topology();
    let mut unsnatted = topology.clone();
    for cluster in &mut unsnatted.clusters {
        cluster.antrea.no_snat = true;
    }
    let mut group = c.benchmark_group("pod to host");
    group.throughput(Throughput::Elements(1));
    for (name, topology) in [("masquerade", &topology), ("no snat", &unsnatted)] {
        let mut forwarder = Forwarder::to_host(topology, false).unwrap();
        let established = forwarder.frame(40_000, 512);
        group.bench_function(format!("established, {name}"), |b| {
            b.iter(|| assert!(forwarder.send(black_box(&established), 0)))
        });
    }
    group.finish();
}

/// A router between two segments with `routes` static routes (plus connected).
fn router_topology(routes: usize) -> String {
    let mut text = String::from(
        "[topology]\nname = \"fib\"\n\n[[segment]]\nname = \"in\"\ncidr = \"10.0.0.0/24\"\n\n\
         [[segment]]\nname = \"out\"\ncidr = \"10.1.0.0/24\"\n\n[[router]]\nname = \"r\"\n\
         interfaces = [ { segment = \"in\", ip = \"10.0.0.1/24\" }, { segment = \"out\", ip = \"10.1.0.1/24\" } ]\n\
         static_routes = [\n",
    );
    for index in 0..routes {
        text.push_str(&format!(
            "  {{ prefix = \"100.{}.{}.0/24\", next_hop = \"10.1.0.2\" }},\n",
            index / 256,
            index % 256
        ));
    }
    text.push_str("]\n\n[[host]]\nname = \"gw\"\nip = \"10.1.0.2\"\nsegment = \"out\"\n");
    text
}

fn routing(c: &mut Criterion) {
    use netsim::datapath::{Ctx, Journal, Outputs};
    use netsim::wire::{transport_frame, FrameAddresses, PROTOCOL_UDP};
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for routes in [10usize, 10_000] {
        let topology = netsim::topology::parse("fib.toml", &router_topology(routes)).unwrap();
        let mut network = netsim::sim::network::build(&topology);
        let device = network
            .device_names
            .iter()
            .position(|name| name == "r")
            .unwrap();
        let router_mac = network.router("r").unwrap().ports[0].mac;
        let frame = transport_frame(
            PROTOCOL_UDP,
            &FrameAddresses {
                source_mac: Mac::local(9, 9),
                destination_mac: router_mac,
                source: Ipv4Addr::new(10, 0, 0, 9),
                destination: Ipv4Addr::new(100, 0, 7, 1),
                source_port: 40_000,
                destination_port: 53,
            },
            &[0u8; 64],
        );
        let packet = Packet::from_frame(&frame, 0).unwrap();
        let mut journal = Journal::default();
        let mut out = Outputs::default();
        group.bench_function(format!("forward, {routes}-route fib"), |b| {
            b.iter(|| {
                let mut ctx = Ctx {
                    now_ns: 0,
                    journal: &mut journal,
                };
                network.process(&mut ctx, device, 0, black_box(packet.clone()), &mut out);
                out.packets.clear();
            })
        });
    }
    group.finish();

    let mut mesh = String::from(
        "[topology]\nname = \"mesh\"\n\n[[segment]]\nname = \"core\"\ncidr = \"10.0.0.0/24\"\n",
    );
    for index in 0..150 {
        mesh.push_str(&format!(
            "\n[[segment]]\nname = \"lan{index}\"\ncidr = \"10.{}.{}.0/26\"\ngateway = \"r{index}\"\n",
            100 + index / 200,
            index % 200
        ));
    }
    for index in 0..150 {
        let neighbors: Vec<String> = (0..150)
            .filter(|other| *other != index)
            .map(|other| format!("{{ ip = \"10.0.0.{}\", asn = 64512 }}", other + 1))
            .collect();
        mesh.push_str(&format!(
            "\n[[router]]\nname = \"r{index}\"\ninterfaces = [ {{ segment = \"core\", ip = \"10.0.0.{}/24\" }} ]\nbgp = {{ asn = 64512, neighbors = [ {} ] }}\n",
            index + 1,
            neighbors.join(", ")
        ));
    }
    let topology = netsim::topology::parse("mesh.toml", &mesh).unwrap();
    let mut group = c.benchmark_group("bgp");
    group.sample_size(10);
    group.bench_function(
        "converge 150-router iBGP full mesh (22,350 session ends)",
        |b| b.iter(|| netsim::control::compute(black_box(&topology))),
    );
    for (name, reflectors) in [
        (
            "calico 150-node full mesh + eBGP to two ToRs, 16,500 pods",
            false,
        ),
        (
            "calico 150 nodes, two route reflectors + eBGP to two ToRs",
            true,
        ),
    ] {
        let topology = netsim::topology::parse("calico.toml", &calico_150(reflectors)).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| netsim::control::compute(black_box(&topology)))
        });
    }
    group.finish();
}

/// 150 Calico nodes on one /22 with 110 pods each (two /26 blocks per node), BIRD on
/// every node: a full iBGP mesh (11,175 sessions) or two route reflectors, and every
/// node peering eBGP with two ToRs.
fn calico_150(reflectors: bool) -> String {
    let node_ip = |index: usize| format!("10.40.{}.{}", (11 + index) / 256, (11 + index) % 256);
    let neighbors: Vec<String> = (0..150)
        .map(|index| format!("{{ ip = \"{}\", asn = 64512 }}", node_ip(index)))
        .collect();
    let mut text = String::from(
        "[topology]\nname = \"calico-150\"\n\n[[segment]]\nname = \"rack\"\ncidr = \"10.40.0.0/22\"\ngateway = \"tor-a\"\n",
    );
    text.push_str(&format!(
        "\n[[router]]\nname = \"tor-a\"\nkind = \"tor\"\necmp = true\nbgp = {{ asn = 65001, neighbors = [ {} ] }}\n",
        neighbors.join(", ")
    ));
    text.push_str(&format!(
        "\n[[router]]\nname = \"tor-b\"\nkind = \"tor\"\necmp = true\ninterfaces = [ {{ segment = \"rack\", ip = \"10.40.3.250/22\" }} ]\nbgp = {{ asn = 65001, neighbors = [ {} ] }}\n",
        neighbors.join(", ")
    ));
    text.push_str(&format!(
        "\n[[cluster]]\nname = \"c\"\ncni = \"calico\"\npod_cidr = \"100.64.0.0/14\"\nnode_segment = \"rack\"\n\n[cluster.calico]\nnode_to_node_mesh = {}\nroute_reflectors = [ {} ]\nbgp_peers = [ {{ ip = \"10.40.0.1\", asn = 65001 }}, {{ ip = \"10.40.3.250\", asn = 65001 }} ]\n",
        !reflectors,
        if reflectors { "\"n0\", \"n1\"" } else { "" }
    ));
    for index in 0..150 {
        text.push_str(&format!(
            "\n[[cluster.node]]\nname = \"n{index}\"\nip = \"{}\"\n",
            node_ip(index)
        ));
    }
    text.push_str("\n[[cluster.deployment]]\nname = \"app\"\nreplicas = 16500\n");
    text
}

criterion_group!(
    benches,
    parsing,
    geneve,
    engine,
    policy_classification,
    whole_path,
    masquerade,
    routing
);
criterion_main!(benches);
