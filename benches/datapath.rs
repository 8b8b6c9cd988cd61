//! Criterion benches: parsing, Geneve encap+decap, each engine structure alone, and
//! one cross-node pod-to-pod packet through the whole path (flow-cache hit and miss).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netsim::bench::{default_topology, Forwarder};
use netsim::datapath::antrea::{decapsulate, encapsulate, EncapHeader};
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
    };
    let mut packet = Packet::from_frame(&frame, 0).unwrap();
    let mut group = c.benchmark_group("geneve");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encap+decap 512", |b| {
        b.iter(|| {
            encapsulate(&mut packet, black_box(&header));
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
    let keys: Vec<FlowKey> = (0..10_000u16)
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
    // More distinct flows than the node's flow cache holds, so every packet misses.
    let mut forwarder = Forwarder::new(&topology, false).unwrap();
    let frames: Vec<Vec<u8>> = (1024..=u16::MAX)
        .map(|port| forwarder.frame(port, 512))
        .collect();
    let mut index = 0;
    group.bench_function("new flow per packet (cache miss)", |b| {
        b.iter(|| {
            index = (index + 1) % frames.len();
            assert!(forwarder.send(black_box(&frames[index]), 0))
        })
    });
    group.finish();
}

criterion_group!(benches, parsing, geneve, engine, whole_path);
criterion_main!(benches);
