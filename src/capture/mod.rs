//! pcapng output: one interface per capture point, named `DEVICE:INTERFACE` so
//! Wireshark's interface column shows where each packet was seen; every packet with
//! a comment saying what that hop did. Timestamps are the simulated clock from a
//! fixed epoch, in nanoseconds (if_tsresol = 9), so files are byte-identical run to
//! run. Written little-endian whatever the machine.

use crate::datapath::Hop;
use crate::sim::network::{CapturePoint, PointKind};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

/// The simulated clock's epoch: 2026-01-01T00:00:00Z.
pub const EPOCH_SECONDS: u64 = 1_767_225_600;

/// Which capture points are written (`--capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Every capture point, node internals (antrea-gw0, antrea-tun0) included.
    #[default]
    All,
    /// One view of each wire where traffic crosses between pods, nodes, the fabric
    /// and the outside: a pod's eth0, a node's eth0 (the underlay, Geneve as on the
    /// wire), router and host interfaces. Leaves out what a node does inside
    /// (antrea-gw0, antrea-tun0) and the node's end of each pod's veth (the same
    /// frames as the pod's eth0): about half the packets of `all`.
    Edges,
    /// No pcapng files.
    None,
}

impl CaptureMode {
    pub fn includes(self, kind: PointKind) -> bool {
        match self {
            CaptureMode::All => true,
            CaptureMode::Edges => kind == PointKind::Edge,
            CaptureMode::None => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("writing pcapng: {0}")]
    Pcap(#[from] pcap_file::PcapError),
}

/// Writes `hops` (already in time order) seen at the included `points` as pcapng. Only
/// the points some hop was seen at become interfaces, in network order, so a flow's
/// file holds just the interfaces that flow crossed.
pub fn write_pcapng<W: Write>(
    writer: W,
    points: &[CapturePoint],
    hops: &[&Hop],
    mode: CaptureMode,
) -> Result<W, CaptureError> {
    let section = SectionHeaderBlock {
        endianness: Endianness::Little,
        major_version: 1,
        minor_version: 0,
        section_length: -1,
        options: vec![SectionHeaderOption::UserApplication(Cow::Borrowed(
            concat!("netsim ", env!("CARGO_PKG_VERSION")),
        ))],
    };
    let mut pcap = PcapNgWriter::with_section_header(writer, section)?;
    // Interface ids in the file: the included points the hops were seen at, in
    // network order.
    let mut crossed = vec![false; points.len()];
    for hop in hops {
        if let Some(seen) = crossed.get_mut(hop.point as usize) {
            *seen = true;
        }
    }
    let mut interface_of = vec![None; points.len()];
    let mut next_interface = 0u32;
    for (index, point) in points.iter().enumerate() {
        if !mode.includes(point.kind) || !crossed[index] {
            continue;
        }
        interface_of[index] = Some(next_interface);
        next_interface += 1;
        let block = InterfaceDescriptionBlock {
            linktype: if point.raw_ip {
                DataLink::RAW
            } else {
                DataLink::ETHERNET
            },
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(&point.name)),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        pcap.write_pcapng_block(block)?;
    }
    for hop in hops {
        let Some(interface_id) = interface_of.get(hop.point as usize).copied().flatten() else {
            continue;
        };
        let comment = format!("{}: {}", hop.action.name(), hop.detail);
        let data = if points[hop.point as usize].raw_ip {
            hop.frame
                .get(crate::wire::ETHERNET_HEADER_LEN..)
                .unwrap_or_default()
        } else {
            &hop.frame[..]
        };
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_secs(EPOCH_SECONDS) + Duration::from_nanos(hop.time_ns),
            original_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        pcap.write_pcapng_block(block)?;
    }
    Ok(pcap.into_inner())
}
