#!/usr/bin/env bash
# netsim against the reference points of issue 10, on this machine, in one run, one
# after another (each alone on the CPU), 64-byte packets:
#
#   1. dpdk-testpmd io forwarding between two null devices: the userspace I/O
#      ceiling (Rx-pps of both ports summed).
#   2. OVS-DPDK's userspace datapath (the datapath Antrea runs on, in userspace):
#      conntrack SNAT + Geneve encap over 1,000 UDP flows replayed from a pcap by
#      DPDK's pcap PMD, out to a null device; packets/s from the PMD thread's stats.
#   3. libpcap's pcap_dump of 64-byte records to the same directory netsim's
#      capture goes to.
#   4. netsim bench (release, the median of --repeat runs of each scenario): every
#      scenario, 1 and 2 threads, capture off (established ones over --packets and
#      1,000 flows, as OVS's; new-flow ones over a tenth of the packets); then the
#      cross-node established scenario with --capture all and --capture edges
#      (about pcap_dump's 800 MB each, the sink synced before each run).
#
# and prints the ratios. Needs root (it installs dpdk-dev, openvswitch-switch-dpdk,
# libpcap-dev and gcc with apt when missing, and gives br-phy an address).
#
#   sudo bash benches/compare.sh [--seconds N] [--packets N] [--repeat N] [--sink DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=5
PACKETS=20000000
REPEAT=5
SINK=${TMPDIR:-/tmp}
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --packets) PACKETS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --sink) SINK=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--packets N] [--repeat N] [--sink DIR]" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "compare.sh needs root (apt, DPDK, OVS)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v dpdk-testpmd >/dev/null || missing+=(dpdk-dev)
[[ -x /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk ]] || missing+=(openvswitch-switch-dpdk)
[[ -f /usr/include/pcap/pcap.h ]] || missing+=(libpcap-dev)
command -v gcc >/dev/null || missing+=(gcc)
command -v python3 >/dev/null || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

WORK=$(mktemp -d)
cleanup() {
  [[ -f $WORK/vswitchd.pid ]] && kill "$(cat "$WORK/vswitchd.pid")" 2>/dev/null || true
  [[ -f $WORK/ovsdb.pid ]] && kill "$(cat "$WORK/ovsdb.pid")" 2>/dev/null || true
  ip link del br-phy 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "kernel: $(uname -r); sink: $SINK ($(df -T "$SINK" | awk 'NR==2 {print $2}'))"
echo

# 1. testpmd io forwarding, two null ports.
timeout -s INT $((SECONDS_PER_RUN + 3)) dpdk-testpmd -l 0,1 --no-huge --no-pci -m 1024 \
  --file-prefix "netsim-compare-$$" --vdev=net_null0 --vdev=net_null1 -- \
  --total-num-mbufs=16384 --forward-mode=io --stats-period 1 --auto-start \
  >"$WORK/testpmd.log" 2>&1 || true
# The last stats period: Rx-pps of port 0 and port 1.
TESTPMD=$(grep 'Rx-pps' "$WORK/testpmd.log" | tail -2 | awk '{sum += $2} END {print sum + 0}')
echo "testpmd io forwarding (null0 <-> null1): $TESTPMD packets/s"

# 2. OVS-DPDK: br-int (in0: pcap PMD replaying 1,000 UDP flows; gnv0: Geneve to
# 10.0.0.12) with ct(commit,nat(src=...)) then output to gnv0; br-phy carries the
# underlay out of phy0 (a null device).
python3 - "$WORK/flows.pcap" <<'PY'
import struct, sys
def checksum(data):
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xffff)
    total += total >> 16
    return ~total & 0xffff
with open(sys.argv[1], 'wb') as out:
    out.write(struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
    for flow in range(1000):
        udp = struct.pack('!HHHH', 10000 + flow, 5000, 26, 0) + bytes(18)
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), flow, 0, 64, 17, 0,
                         bytes([172, 20, 1, 10]), bytes([192, 168, 50, 10]))
        ip = ip[:10] + struct.pack('!H', checksum(ip)) + ip[12:]
        frame = bytes.fromhex('aabbccddeeff020000000001') + b'\x08\x00' + ip + udp
        out.write(struct.pack('<IIII', 0, flow, len(frame), len(frame)) + frame)
PY
OVS_RATE=0
export OVS_RUNDIR=$WORK OVS_LOGDIR=$WORK OVS_DBDIR=$WORK
if ovsdb-tool create "$WORK/conf.db" /usr/share/openvswitch/vswitch.ovsschema &&
  ovsdb-server --remote="punix:$WORK/db.sock" --pidfile="$WORK/ovsdb.pid" --detach \
    --log-file="$WORK/ovsdb.log" "$WORK/conf.db" 2>/dev/null; then
  V="ovs-vsctl --db=unix:$WORK/db.sock"
  $V --no-wait init
  $V --no-wait set Open_vSwitch . other_config:dpdk-init=true \
    "other_config:dpdk-extra=--no-huge --legacy-mem --no-pci -m 2048 --file-prefix netsim-ovs-$$" \
    other_config:pmd-cpu-mask=0x2
  /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk "unix:$WORK/db.sock" \
    --pidfile="$WORK/vswitchd.pid" --detach --log-file="$WORK/vswitchd.log" 2>/dev/null
  A="ovs-appctl -t $WORK/ovs-vswitchd-dpdk.$(cat "$WORK/vswitchd.pid").ctl"
  $V add-br br-phy -- set bridge br-phy datapath_type=netdev
  $V add-port br-phy phy0 -- set Interface phy0 type=dpdk "options:dpdk-devargs=net_null0,no-rx=1"
  $V add-br br-int -- set bridge br-int datapath_type=netdev
  $V add-port br-int in0 -- set Interface in0 type=dpdk \
    "options:dpdk-devargs=net_pcap0,rx_pcap=$WORK/flows.pcap,infinite_rx=1"
  $V add-port br-int gnv0 -- set Interface gnv0 type=geneve options:remote_ip=10.0.0.12 options:key=0
  ip addr replace 10.0.0.11/24 dev br-phy
  ip link set br-phy up
  sleep 1
  $A tnl/arp/set br-phy 10.0.0.12 aa:55:aa:55:00:12 >/dev/null
  ovs-ofctl del-flows "unix:$WORK/br-int.mgmt"
  ovs-ofctl add-flow "unix:$WORK/br-int.mgmt" \
    "in_port=in0,ip,actions=ct(commit,zone=1,nat(src=10.0.0.100:1024-65535)),output:gnv0"
  ovs-ofctl del-flows "unix:$WORK/br-phy.mgmt"
  ovs-ofctl add-flow "unix:$WORK/br-phy.mgmt" "actions=output:phy0"
  sleep 2
  $A dpif-netdev/pmd-stats-clear >/dev/null
  sleep "$SECONDS_PER_RUN"
  RECEIVED=$($A dpif-netdev/pmd-stats-show | awk '/core_id 1/ {pmd = 1} pmd && /packets received/ {print $3; exit}')
  OVS_RATE=$((RECEIVED / SECONDS_PER_RUN))
  if ! $A dpctl/dump-flows | grep -q 'ct(commit,zone=1,nat(src=10.0.0.100:1024-65535)),tnl_push'; then
    echo "OVS-DPDK did not install the conntrack SNAT + Geneve datapath flow" >&2
    OVS_RATE=0
  fi
  kill "$(cat "$WORK/vswitchd.pid")" "$(cat "$WORK/ovsdb.pid")"
  rm -f "$WORK/vswitchd.pid" "$WORK/ovsdb.pid"
  ip link del br-phy 2>/dev/null || true
fi
echo "OVS-DPDK conntrack SNAT + Geneve encap, 1,000 flows: $OVS_RATE packets/s"

# 3. pcap_dump of 64-byte records to the sink.
cat >"$WORK/pcap_dump_rate.c" <<'C'
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    long records = atol(argv[2]);
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, 65535);
    pcap_dumper_t *dumper = pcap_dump_open(dead, argv[1]);
    if (!dumper) { fprintf(stderr, "%s\n", pcap_geterr(dead)); return 1; }
    unsigned char frame[64];
    memset(frame, 0xab, sizeof frame);
    struct pcap_pkthdr header = { .caplen = 64, .len = 64 };
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < records; i++) {
        header.ts.tv_sec = i / 1000000; header.ts.tv_usec = i % 1000000;
        pcap_dump((unsigned char *)dumper, &header, frame);
    }
    pcap_dump_close(dumper);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%.0f %.0f\n", records / seconds, records * (16.0 + 64.0) / seconds);
    return 0;
}
C
gcc -O2 -o "$WORK/pcap_dump_rate" "$WORK/pcap_dump_rate.c" -lpcap
sync
read -r PCAP_DUMP PCAP_DUMP_BYTES < <("$WORK/pcap_dump_rate" "$SINK/netsim-compare-$$.pcap" 10000000)
rm -f "$SINK/netsim-compare-$$.pcap"
echo "libpcap pcap_dump, 64 B records: $PCAP_DUMP records/s ($((${PCAP_DUMP_BYTES%.*} / 1000000)) MB/s)"
echo

# 4. netsim.
cargo build --release --quiet
# Established scenarios run long enough to time (a 64 B packet takes tens of ns),
# over the 1,000 flows OVS-DPDK replays; new-flow scenarios walk every packet, so a
# tenth of the packets suffices.
./target/release/netsim bench --threads 1,2 --size 64 --packets "$PACKETS" --repeat "$REPEAT" \
  --flows 1000 --scenario established --format json >"$WORK/netsim.json"
./target/release/netsim bench --threads 1,2 --size 64 --packets "$((PACKETS / 10))" --repeat "$REPEAT" \
  --scenario new-flow --format json >"$WORK/netsim-new.json"
# Each capture run writes about what pcap_dump wrote (10 M records of 80 B, 800 MB):
# a run that writes several times the sink's dirty-page allowance measures the disk
# behind it, not the writer. With capture all a packet is six hops, about 1,230 B;
# with edges two, about 490 B. Dirty pages are synced before each run, as before
# pcap_dump's (bench's own --repeat would start the next run while the last one's
# 800 MB are still being written back), and the median run is reported.
for mode in all edges; do
  case $mode in
    all) packets=650000 ;;
    edges) packets=1600000 ;;
  esac
  for run in $(seq "$REPEAT"); do
    sync
    ./target/release/netsim bench --threads 1 --size 64 --packets "$packets" \
      --scenario cross-node-udp/established --capture "$mode" \
      --capture-dir "$SINK/netsim-compare-$$" --format json >"$WORK/netsim-capture-$mode-$run.json"
    rm -rf "$SINK/netsim-compare-$$"
  done
done

python3 - "$WORK" "$TESTPMD" "$OVS_RATE" "$PCAP_DUMP" "${PCAP_DUMP_BYTES%.*}" "$REPEAT" <<'PY'
import json, sys
work = sys.argv[1]
load = lambda name: json.load(open(f"{work}/{name}.json"))["scenarios"]
runs = load("netsim") + load("netsim-new")
testpmd, ovs, pcap_dump, pcap_bytes = (float(value) for value in sys.argv[2:6])
def ratio(a, b):
    return f"{a / b:.3f}" if b else "n/a"
print(f"{'netsim scenario':<60} {'threads':>7} {'packets/s':>12} {'ns/packet':>10} {'x testpmd':>10} {'x OVS-DPDK':>11}")
for s in runs:
    print(f"{s['name']:<60} {s['threads']:>7} {s['packets_per_second']:>12.0f} {s['ns_per_packet']:>10.1f} "
          f"{ratio(s['packets_per_second'], testpmd):>10} {ratio(s['packets_per_second'], ovs):>11}")
one = {s['name']: s['packets_per_second'] for s in runs if s['threads'] == 1}
two = {s['name']: s['packets_per_second'] for s in runs if s['threads'] == 2}
print()
for name in one:
    if name in two:
        print(f"scaling 1 -> 2 threads, {name}: {two[name] / one[name]:.2f}x")
print()
repeats = int(sys.argv[6])
for mode in ("all", "edges"):
    captured = sorted((load(f"netsim-capture-{mode}-{run}")[0] for run in range(1, repeats + 1)),
                      key=lambda s: s['captured_packets_per_second'])
    established = captured[len(captured) // 2]
    print(f"capture {mode}, cross-node established, 1 thread: {established['packets_per_second']:.0f} packets/s, "
          f"{established['captured_packets_per_second']:.0f} hops/s written, "
          f"{established['capture_bytes_per_second'] / 1e6:.0f} MB/s")
    print(f"  vs pcap_dump: {ratio(established['captured_packets_per_second'], pcap_dump)} x its records/s, "
          f"{ratio(established['capture_bytes_per_second'], pcap_bytes)} x its bytes/s")
PY
