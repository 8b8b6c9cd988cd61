//! An L2 segment (an NSX segment, a VDS port group, a VPC subnet): forwards a frame
//! to the port that owns its destination MAC. The MAC table is known from the
//! topology (every member's MAC), so there is no flooding or learning to model; a
//! frame for an unknown MAC is dropped (`no-neighbor`).

use super::{Ctx, DropReason, Outputs, PortId};
use crate::packet::Packet;
use crate::wire::Mac;
use rustc_hash::FxHashMap;

#[derive(Debug, Clone)]
pub struct Switch {
    pub name: String,
    mac_table: FxHashMap<Mac, PortId>,
    port_count: PortId,
}

impl Switch {
    pub fn new(name: String) -> Self {
        Switch {
            name,
            mac_table: FxHashMap::default(),
            port_count: 0,
        }
    }

    /// Adds a port for a member with `mac`; returns the port.
    pub fn add_port(&mut self, mac: Mac) -> PortId {
        let port = self.port_count;
        self.port_count += 1;
        self.mac_table.insert(mac, port);
        port
    }

    pub fn process(&mut self, ctx: &mut Ctx, in_port: PortId, packet: Packet, out: &mut Outputs) {
        let destination = packet.meta.destination_mac;
        if destination == Mac::BROADCAST {
            for port in (0..self.port_count).filter(|port| *port != in_port) {
                out.send(port, packet.clone());
            }
            return;
        }
        match self.mac_table.get(&destination) {
            Some(&port) if port != in_port => out.send(port, packet),
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
