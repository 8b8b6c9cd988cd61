//! An L2 segment (an NSX segment, a VDS port group, a VPC subnet): forwards a frame
//! to the port that owns its destination MAC. The MAC table is known from the
//! topology (every member's MAC), so there is no flooding or learning to model; a
//! frame for an unknown MAC is dropped (`no-neighbor`). A port whose VM has NSX DFW
//! rules filters what leaves the VM and what is delivered to it (`datapath::dfw`).

use super::dfw::{VnicDirection, VnicFirewall};
use super::path_log::Table;
use super::{Ctx, DropReason, Outputs, PortId};
use crate::engine::conntrack::Conntrack;
use crate::packet::Packet;
use crate::wire::Mac;
use rustc_hash::FxHashMap;

#[derive(Debug, Clone)]
pub struct Switch {
    pub name: String,
    mac_table: FxHashMap<Mac, PortId>,
    port_count: PortId,
    /// The NSX DFW at each port's vNIC (the VM behind it), by port.
    firewalls: Vec<Option<VnicFirewall>>,
}

impl Switch {
    /// Ports on the segment.
    pub fn port_count(&self) -> PortId {
        self.port_count
    }

    /// A port's DFW connection table (`Table::Vnic`), for the path cache.
    pub fn conntrack(&self, table: Table) -> Option<&Conntrack> {
        match table {
            Table::Vnic(port) => Some(
                self.firewalls
                    .get(usize::from(port))?
                    .as_ref()?
                    .connections(),
            ),
            _ => None,
        }
    }

    pub fn conntrack_mut(&mut self, table: Table) -> Option<&mut Conntrack> {
        match table {
            Table::Vnic(port) => Some(
                self.firewalls
                    .get_mut(usize::from(port))?
                    .as_mut()?
                    .connections_mut(),
            ),
            _ => None,
        }
    }

    pub fn new(name: String) -> Self {
        Switch {
            name,
            mac_table: FxHashMap::default(),
            port_count: 0,
            firewalls: Vec::new(),
        }
    }

    /// Adds a port for a member with `mac`; returns the port.
    pub fn add_port(&mut self, mac: Mac) -> PortId {
        let port = self.port_count;
        self.port_count += 1;
        self.mac_table.insert(mac, port);
        self.firewalls.push(None);
        port
    }

    /// Puts a DFW filter on the vNIC of the member with `mac`.
    pub fn set_firewall(&mut self, mac: Mac, firewall: VnicFirewall) {
        if let Some(&port) = self.mac_table.get(&mac) {
            self.firewalls[usize::from(port)] = Some(firewall);
        }
    }

    /// The DFW at `port`'s vNIC admits the frame (or there is none).
    fn admits(
        &mut self,
        ctx: &mut Ctx,
        port: PortId,
        direction: VnicDirection,
        packet: &Packet,
        answer_port: PortId,
        out: &mut Outputs,
    ) -> bool {
        match self.firewalls.get_mut(usize::from(port)) {
            Some(Some(firewall)) => firewall.admit(ctx, port, direction, packet, answer_port, out),
            _ => true,
        }
    }

    pub fn process(&mut self, ctx: &mut Ctx, in_port: PortId, packet: Packet, out: &mut Outputs) {
        let destination = packet.meta.destination_mac;
        if destination == Mac::BROADCAST {
            for port in (0..self.port_count).filter(|port| *port != in_port) {
                out.send(port, packet.clone());
            }
            return;
        }
        if !self.admits(ctx, in_port, VnicDirection::Out, &packet, in_port, out) {
            return;
        }
        match self.mac_table.get(&destination) {
            Some(&port) if port != in_port => {
                if self.admits(ctx, port, VnicDirection::In, &packet, in_port, out) {
                    out.send(port, packet);
                }
            }
            // A frame for the sender's own MAC never leaves its port.
            Some(_) => ctx.drop_packet(&self.name, &packet, DropReason::NoNeighbor, || {
                format!("segment {}: frame sent back to its own port", self.name)
            }),
            None => ctx.drop_packet(&self.name, &packet, DropReason::NoNeighbor, || {
                format!("segment {}: no port has MAC {destination}", self.name)
            }),
        }
    }
}
