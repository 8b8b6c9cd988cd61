//! antrea-tun0: Geneve encapsulation and decapsulation as the OVS kernel datapath does
//! it for Antrea, and Linux's PMTU check for a bridged tunnel port.

use super::*;
use crate::wire::Dotted;
use std::fmt::Write as _;

impl AntreaNode {
    /// Encapsulates toward `peer` and sends on eth0; or, when the result would not
    /// fit the uplink, drops with the ICMP Linux's bridged-tunnel PMTU check builds.
    pub(super) fn tunnel_output(
        &mut self,
        ctx: &mut Ctx,
        peer: Ipv4Addr,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        packet.set_macs(self.settings.gateway_mac, Mac::ANTREA_GLOBAL_VIRTUAL);
        let overhead = self.settings.encapsulation.overhead();
        let tunnel_mtu = usize::from(self.settings.uplink_mtu) - overhead;
        ctx.hop_with(
            self.settings.tunnel_point,
            &packet,
            HopAction::Transmit,
            |out| {
                let _ = write!(out, "output to antrea-tun0, tun_dst={}", Dotted(peer));
            },
        );
        if packet.ip_len() > tunnel_mtu {
            self.tunnel_pmtu_exceeded(ctx, tunnel_mtu, packet, out);
            return;
        }
        let next_hop = if self.settings.uplink_subnet.contains(&peer) {
            Some(peer)
        } else {
            self.settings.default_gateway
        };
        let Some(next_mac) = next_hop.and_then(|hop| self.settings.neighbors.get(&hop).copied())
        else {
            ctx.drop_packet(&self.settings.name, &packet, DropReason::NoNeighbor, || {
                format!("no neighbor for tunnel peer {peer}")
            });
            return;
        };
        let inner_key = packet.meta.key;
        let ports = self.settings.encapsulation.source_ports();
        let source_port = tunnel_source_port(&inner_key, self.settings.seed, ports);
        let identification = self.stack.identification.next(ctx);
        encapsulate(
            &mut packet,
            self.settings.encapsulation,
            &EncapHeader {
                source: self.settings.ip,
                destination: peer,
                source_mac: self.settings.mac,
                destination_mac: next_mac,
                source_port,
                identification,
                // OVS's `df_default` (reference §a).
                dont_fragment: true,
            },
        );
        let node_ip = self.settings.ip;
        ctx.hop_with(self.settings.uplink_point, &packet, HopAction::Encapsulate, |out| {
            let (name, port) = tunnel_name_and_port(self.settings.encapsulation);
            let (node_ip, peer) = (Dotted(node_ip), Dotted(peer));
            let _ = write!(out, "{name} encap vni=0 {node_ip} -> {peer} udp {source_port}->{port} (inner {inner_key})");
        });
        out.send(UPLINK_PORT, packet);
    }

    /// Linux `skb_tunnel_check_pmtu` for a bridged (OVS) tunnel port: with DF set on
    /// the inner packet, an ICMP "fragmentation needed" with MTU = uplink MTU - 50 is
    /// built from the inner destination back to the inner source
    /// (`iptunnel_pmtud_build_icmp`: addresses and MACs swapped, TTL copied, TOS 0, DF
    /// set, quoting up to 548 bytes) and injected back as if received from the tunnel,
    /// so OVS delivers it to the sending pod (decrementing its TTL like any packet from
    /// the tunnel). The packet itself is dropped either way.
    ///
    /// An inner packet without DF gets no ICMP (`iptunnel_pmtud_check_icmp` answers
    /// only `frag_off == IP_DF`) and is not fragmented either: OVS sets DF on the outer
    /// header (`df_default=true`), so `ip_fragment` refuses the encapsulated packet and
    /// it is lost — the silent drop users see with an oversized pod MTU.
    pub(super) fn tunnel_pmtu_exceeded(
        &mut self,
        ctx: &mut Ctx,
        tunnel_mtu: usize,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let size = packet.ip_len();
        let sends_icmp = self.settings.tunnel_pmtu_icmp
            && packet.meta.dont_fragment
            && tunnel_mtu >= 576
            && icmp::may_send_error(&packet);
        let uplink_mtu = self.settings.uplink_mtu;
        let answer = if sends_icmp {
            "; the kernel answers with fragmentation-needed"
        } else if !self.settings.tunnel_pmtu_icmp {
            "; dropped silently (kernel < 5.9 sends no ICMP for a bridged tunnel)"
        } else if !packet.meta.dont_fragment {
            "; dropped silently (DF clear: no ICMP, and OVS sets DF on the outer header)"
        } else {
            ""
        };
        ctx.drop_packet(
            &self.settings.name,
            &packet,
            DropReason::MtuExceeded,
            || {
                let (name, _) = tunnel_name_and_port(self.settings.encapsulation);
                let overhead = self.settings.encapsulation.overhead();
                format!("{size} bytes + {overhead} {name} overhead exceed uplink mtu {uplink_mtu}{answer}")
            },
        );
        if sends_icmp {
            // iptunnel_pmtud_build_icmp: TOS 0, id 0, DF set, the inner TTL.
            let header = ErrorHeader {
                source: packet.meta.key.destination,
                source_mac: packet.meta.destination_mac,
                destination_mac: packet.meta.source_mac,
                ttl: packet.meta.ttl,
                identification: 0,
                tos: 0,
                dont_fragment: true,
            };
            let mtu = u16::try_from(tunnel_mtu).unwrap_or(u16::MAX);
            let point = self.settings.tunnel_point;
            let error = icmp::originate(
                ctx,
                point,
                &packet,
                ErrorMessage::fragmentation_needed(mtu),
                header,
            );
            let destination = self.settings.ip;
            self.ovs(ctx, OvsSource::Tunnel { destination }, None, error, out);
        }
    }

    pub(super) fn uplink_input(&mut self, ctx: &mut Ctx, packet: Packet, out: &mut Outputs) {
        let slot = ctx.begin_receive(self.settings.uplink_point, &packet);
        if !self.stack.accepts_frame(ctx, slot, &packet) {
            return;
        }
        let meta = &packet.meta;
        let for_this_node =
            meta.key.destination == self.settings.ip || self.holds_egress_ip(meta.key.destination);
        if for_this_node
            && meta.key.protocol == PROTOCOL_UDP
            && meta.key.destination_port == tunnel_name_and_port(self.settings.encapsulation).1
        {
            self.decapsulate(ctx, slot, packet, out);
        } else {
            self.host_input(ctx, HostIngress::Uplink, slot, packet, out);
        }
    }

    /// Geneve receive (RFC 8926 §3.4/§3.5): version 0 only; a packet whose options
    /// include a critical one this endpoint does not understand (Antrea understands
    /// none) is dropped, as is an OAM packet and any payload but Ethernet.
    pub(super) fn decapsulate(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let outer_source = packet.meta.key.source;
        let outer_destination = packet.meta.key.destination;
        let vni = match decapsulate(&mut packet) {
            // uplink_input hands over only UDP 6081: Geneve.
            Ok((_, vni)) => vni,
            Err(error) => {
                ctx.describe(slot, HopAction::Drop, || {
                    format!("tunnel packet refused: {error}")
                });
                ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                    format!("tunnel packet from {outer_source} refused: {error}")
                });
                return;
            }
        };
        ctx.describe_with(slot, HopAction::Decapsulate, |out| {
            let (name, _) = tunnel_name_and_port(self.settings.encapsulation);
            let _ = write!(out, "{name} decap vni={vni} from {}", Dotted(outer_source));
        });
        let tunnel_slot = ctx.begin_receive(self.settings.tunnel_point, &packet);
        let source = OvsSource::Tunnel {
            destination: outer_destination,
        };
        self.ovs(ctx, source, tunnel_slot, packet, out);
    }
}

/// The name and UDP port of antrea-tun0's encapsulation.
fn tunnel_name_and_port(encapsulation: Encapsulation) -> (&'static str, u16) {
    match encapsulation {
        Encapsulation::Vxlan { .. } => ("vxlan", crate::wire::vxlan::UDP_PORT),
        _ => ("geneve", geneve::UDP_PORT),
    }
}
