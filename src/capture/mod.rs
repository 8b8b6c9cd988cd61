//! pcapng output: one interface per capture point, named `DEVICE:INTERFACE` so
//! Wireshark's interface column shows where each packet was seen; every packet with
//! a comment saying what that hop did. Timestamps are the simulated clock from a
//! fixed epoch, in nanoseconds (if_tsresol = 9), so files are byte-identical run to
//! run. Written little-endian whatever the machine.

mod file;

pub use file::PreallocatedFile;

use crate::datapath::{Hop, HopAction, HopRecord};
use crate::sim::network::{CapturePoint, PointKind};
use std::io::Write;

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

    /// For each of `points`, true when this mode leaves it out
    /// ([`crate::datapath::Journal::uncaptured`]).
    pub fn left_out(self, points: &[CapturePoint]) -> Vec<bool> {
        points
            .iter()
            .map(|point| !self.includes(point.kind))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("writing pcapng: {0}")]
    Io(#[from] std::io::Error),
}

/// pcapng block types and option codes (draft-ietf-opsawg-pcapng).
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPTION_END: u16 = 0;
const OPTION_COMMENT: u16 = 1;
const OPTION_IF_NAME: u16 = 2;
const OPTION_SHB_USER_APPLICATION: u16 = 4;
const OPTION_IF_TSRESOL: u16 = 9;
const LINKTYPE_ETHERNET: u16 = 1;
const LINKTYPE_RAW: u16 = 101;

/// The buffered bytes are handed to the writer once they pass this.
const FLUSH_AT: usize = 1 << 20;

/// Streams pcapng: the section header and one interface per chosen capture point
/// first, then one Enhanced Packet Block per hop, encoded straight into one reused
/// buffer that goes to the writer a megabyte at a time — no allocation and no
/// syscall per packet, so writing is bound by the sink's bandwidth.
pub struct PcapngStream<W: Write> {
    writer: W,
    /// The file's interface id of each capture point, `None` when not written.
    interface_of: Vec<Option<u32>>,
    /// Whether each point carries bare IP (link type RAW).
    raw_ip: Vec<bool>,
    buffer: Vec<u8>,
    packets: u64,
    bytes: u64,
}

impl<W: Write> PcapngStream<W> {
    /// Starts a file whose interfaces are the `points` for which `include` holds,
    /// in network order.
    pub fn new(
        writer: W,
        points: &[CapturePoint],
        include: impl Fn(usize, &CapturePoint) -> bool,
    ) -> PcapngStream<W> {
        let mut stream = PcapngStream {
            writer,
            interface_of: vec![None; points.len()],
            raw_ip: points.iter().map(|point| point.raw_ip).collect(),
            buffer: Vec::with_capacity(FLUSH_AT + (1 << 16)),
            packets: 0,
            bytes: 0,
        };
        stream.section_header();
        let mut next_interface = 0u32;
        for (index, point) in points.iter().enumerate() {
            if include(index, point) {
                stream.interface_of[index] = Some(next_interface);
                next_interface += 1;
                stream.interface_description(point);
            }
        }
        stream
    }

    fn section_header(&mut self) {
        let start = self.begin_block(SECTION_HEADER);
        self.put_u32(BYTE_ORDER_MAGIC);
        self.put_u16(1);
        self.put_u16(0);
        self.buffer.extend_from_slice(&(-1i64).to_le_bytes());
        self.put_option(
            OPTION_SHB_USER_APPLICATION,
            concat!("netsim ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        self.put_u32(u32::from(OPTION_END));
        self.end_block(start);
    }

    fn interface_description(&mut self, point: &CapturePoint) {
        let start = self.begin_block(INTERFACE_DESCRIPTION);
        self.put_u16(if point.raw_ip {
            LINKTYPE_RAW
        } else {
            LINKTYPE_ETHERNET
        });
        self.put_u16(0);
        self.put_u32(0); // snaplen: no limit
        self.put_option(OPTION_IF_NAME, point.name.as_bytes());
        self.put_option(OPTION_IF_TSRESOL, &[9]); // nanoseconds
        self.put_u32(u32::from(OPTION_END));
        self.end_block(start);
    }

    /// Appends `hop` if its point is one of the file's interfaces. The comment says
    /// what the hop did (`action: detail`).
    pub fn write_hop(&mut self, hop: &Hop) -> Result<(), CaptureError> {
        let record = HopRecord {
            time_ns: hop.time_ns,
            point: hop.point,
            flow: hop.flow,
            packet_id: hop.packet_id,
            action: hop.action,
            detail: &hop.detail,
            rendered_comment: None,
        };
        self.write_record(&record, |buffer| buffer.extend_from_slice(&hop.frame))
    }

    /// Like [`PcapngStream::write_hop`], for a hop not kept as a [`Hop`]: `frame`
    /// appends its Ethernet frame straight into the stream's buffer, and the
    /// Enhanced Packet Block is laid out around it. The block's fixed fields are
    /// written last, over the room left in front of the frame — for a raw-IP point
    /// over the frame's Ethernet header too, so its data starts at the IP header
    /// with nothing moved.
    pub fn write_record(
        &mut self,
        hop: &HopRecord,
        frame: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), CaptureError> {
        const FIXED_LEN: usize = 28;
        static ROOM: [u8; FIXED_LEN] = [0; FIXED_LEN];
        let point = hop.point as usize;
        let Some(interface_id) = self.interface_of.get(point).copied().flatten() else {
            return Ok(());
        };
        let skipped = if self.raw_ip[point] {
            crate::wire::ETHERNET_HEADER_LEN
        } else {
            0
        };
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&ROOM[skipped..]);
        frame(&mut self.buffer);
        if self.buffer.len() < start + FIXED_LEN {
            self.buffer.resize(start + FIXED_LEN, 0);
        }
        let data_length = u32::try_from(self.buffer.len() - start - FIXED_LEN).unwrap_or(u32::MAX);
        self.pad();
        match hop.rendered_comment {
            Some(rendered) => self.buffer.extend_from_slice(rendered),
            None => put_comment(&mut self.buffer, hop.action, hop.detail),
        }
        // The block's length again.
        let block_length = u32::try_from(self.buffer.len() + 4 - start).unwrap_or(u32::MAX);
        self.buffer.extend_from_slice(&block_length.to_le_bytes());
        let timestamp = u128::from(EPOCH_SECONDS) * 1_000_000_000 + u128::from(hop.time_ns);
        let fields = [
            ENHANCED_PACKET,
            block_length,
            interface_id,
            u32::try_from(timestamp >> 32).unwrap_or(u32::MAX),
            u32::try_from(timestamp & 0xFFFF_FFFF).unwrap_or(0),
            data_length,
            data_length,
        ];
        let header = &mut self.buffer[start..start + FIXED_LEN];
        for (slot, field) in header.chunks_exact_mut(4).zip(fields) {
            slot.copy_from_slice(&field.to_le_bytes());
        }
        self.packets += 1;
        if self.buffer.len() >= FLUSH_AT {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes written so far, headers included.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.buffer.len() as u64
    }

    /// Writes what is buffered and hands back the writer.
    pub fn finish(mut self) -> Result<W, CaptureError> {
        self.flush_buffer()?;
        self.writer.flush()?;
        Ok(self.writer)
    }

    fn flush_buffer(&mut self) -> Result<(), CaptureError> {
        self.writer.write_all(&self.buffer)?;
        self.bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes a block's type and a placeholder length; returns where it starts.
    fn begin_block(&mut self, block_type: u32) -> usize {
        let start = self.buffer.len();
        self.put_u32(block_type);
        self.put_u32(0);
        start
    }

    /// Closes the block begun at `start`: its total length, at both ends.
    fn end_block(&mut self, start: usize) {
        let length = u32::try_from(self.buffer.len() - start + 4).unwrap_or(u32::MAX);
        self.put_u32(length);
        self.buffer[start + 4..start + 8].copy_from_slice(&length.to_le_bytes());
    }

    fn put_u16(&mut self, value: u16) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    fn put_u32(&mut self, value: u32) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    fn put_option(&mut self, code: u16, value: &[u8]) {
        self.put_u16(code);
        self.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        self.put_padded(value);
    }

    fn put_padded(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        self.pad();
    }

    /// Zero bytes up to the next 32-bit boundary.
    fn pad(&mut self) {
        let padding = (4 - self.buffer.len() % 4) % 4;
        static PADDING: [u8; 3] = [0; 3];
        self.buffer.extend_from_slice(&PADDING[..padding]);
    }
}

/// A hop's options as [`PcapngStream::write_record`] lays them out after its
/// (padded) data: the comment `action: detail`, padded, and the end of options —
/// rendered once by a recorder that writes the same hop again and again.
pub fn render_comment(action: HopAction, detail: &str) -> Box<[u8]> {
    let mut rendered = Vec::new();
    put_comment(&mut rendered, action, detail);
    rendered.into_boxed_slice()
}

/// Appends the comment option `action: detail` (padded to four bytes) and the end
/// of options.
fn put_comment(buffer: &mut Vec<u8>, action: HopAction, detail: &str) {
    static PADDING: [u8; 3] = [0; 3];
    let (action, detail) = (action.name().as_bytes(), detail.as_bytes());
    let length = action.len() + 2 + detail.len();
    let header = [
        OPTION_COMMENT.to_le_bytes(),
        u16::try_from(length).unwrap_or(u16::MAX).to_le_bytes(),
    ];
    buffer.extend_from_slice(header.as_flattened());
    buffer.extend_from_slice(action);
    buffer.extend_from_slice(b": ");
    buffer.extend_from_slice(detail);
    buffer.extend_from_slice(&PADDING[..(4 - length % 4) % 4]);
    buffer.extend_from_slice(&u32::from(OPTION_END).to_le_bytes());
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
    let mut crossed = vec![false; points.len()];
    for hop in hops {
        if let Some(seen) = crossed.get_mut(hop.point as usize) {
            *seen = true;
        }
    }
    let mut stream = PcapngStream::new(writer, points, |index, point| {
        mode.includes(point.kind) && crossed[index]
    });
    for hop in hops {
        stream.write_hop(hop)?;
    }
    stream.finish()
}
