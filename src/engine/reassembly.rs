//! IPv4 fragmentation (RFC 791 §3.2) and reassembly (RFC 815): cutting a datagram
//! into fragments that fit an MTU, and putting fragments back together before a
//! stateful stage needs the whole datagram (Linux `nf_defrag_ipv4` in front of
//! conntrack, `ip_defrag`). Mechanism only: which device fragments or reassembles is
//! the datapath's decision.
//!
//! Works on Ethernet frames holding IPv4 without options beyond what the header
//! length says; options are copied into every fragment (netsim emits none).

use crate::wire::{checksum, ETHERNET_HEADER_LEN};
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

const IP: usize = ETHERNET_HEADER_LEN;
const MORE_FRAGMENTS: u16 = 0x2000;
const DONT_FRAGMENT: u16 = 0x4000;
const OFFSET_MASK: u16 = 0x1fff;
/// How long an incomplete datagram waits for its other fragments (Linux
/// `net.ipv4.ipfrag_time`, 30 s).
pub const REASSEMBLY_TIMEOUT_NS: u64 = 30_000_000_000;
/// Incomplete datagrams kept at once before the oldest is given up.
const MAX_PENDING: usize = 4096;

fn header_len(frame: &[u8]) -> usize {
    usize::from(frame[IP] & 0x0f) * 4
}

fn flags_offset(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[IP + 6], frame[IP + 7]])
}

fn total_len(frame: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]))
}

/// True when the frame holds a fragment (more fragments follow, or it is not the first).
pub fn is_fragment(frame: &[u8]) -> bool {
    frame.len() >= IP + 20 && flags_offset(frame) & (MORE_FRAGMENTS | OFFSET_MASK) != 0
}

/// Writes total length, flags and offset, and recomputes the header checksum.
fn finish_header(frame: &mut [u8], total: usize, flags_offset: u16) {
    let total = u16::try_from(total).unwrap_or(u16::MAX);
    frame[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
    frame[IP + 6..IP + 8].copy_from_slice(&flags_offset.to_be_bytes());
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let header = header_len(frame);
    let sum = checksum::checksum(&frame[IP..IP + header]);
    frame[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Cuts the IPv4 datagram in `frame` into frames whose IP packets fit `mtu` (RFC 791
/// §3.2: every fragment but the last carries a multiple of 8 data bytes and MF; the
/// offset counts 8-byte units from the original's own offset). A datagram that fits
/// comes back whole. The Ethernet header is copied into each.
pub fn fragment(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    if frame.len() < IP + 20 {
        return vec![frame.to_vec()];
    }
    let header = header_len(frame);
    let total = total_len(frame).min(frame.len() - IP);
    if total <= mtu || mtu < header + 8 || total < header {
        return vec![frame.to_vec()];
    }
    let original = flags_offset(frame);
    let base_offset = usize::from(original & OFFSET_MASK) * 8;
    let original_more = original & MORE_FRAGMENTS != 0;
    let data = &frame[IP + header..IP + total];
    let chunk = (mtu - header) / 8 * 8;
    let mut fragments = Vec::with_capacity(data.len().div_ceil(chunk));
    for (index, piece) in data.chunks(chunk).enumerate() {
        let last = (index + 1) * chunk >= data.len();
        let mut out = Vec::with_capacity(IP + header + piece.len());
        out.extend_from_slice(&frame[..IP + header]);
        out.extend_from_slice(piece);
        let offset = u16::try_from((base_offset + index * chunk) / 8).unwrap_or(OFFSET_MASK);
        let more = if last { original_more } else { true };
        let flags = (original & DONT_FRAGMENT) | if more { MORE_FRAGMENTS } else { 0 };
        finish_header(&mut out, header + piece.len(), flags | offset);
        fragments.push(out);
    }
    fragments
}

/// Which datagram a fragment belongs to (RFC 791: source, destination, protocol,
/// identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DatagramKey {
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    identification: u16,
}

impl DatagramKey {
    fn of(frame: &[u8]) -> DatagramKey {
        let ip = &frame[IP..];
        DatagramKey {
            source: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            destination: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            protocol: ip[9],
            identification: u16::from_be_bytes([ip[4], ip[5]]),
        }
    }
}

/// The fragments of one datagram received so far.
#[derive(Debug, Clone)]
struct Pending {
    first_seen_ns: u64,
    /// The Ethernet + IP header of the first fragment (offset 0), once it came.
    head: Option<Vec<u8>>,
    /// The caller's tag of the first fragment (its packet id).
    head_tag: u64,
    /// (offset, data) of every fragment, in arrival order.
    pieces: Vec<(usize, Vec<u8>)>,
    /// The datagram's data length, known once the last fragment (no MF) came.
    length: Option<usize>,
    /// The largest fragment seen (Linux keeps it as `frag_max_size`, so the datagram
    /// is cut to the same size again if it is forwarded).
    largest_fragment: usize,
}

/// What became of a fragment handed to the [`Reassembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassembly {
    /// Not a well-formed IPv4 fragment (lengths that do not add up).
    Invalid,
    /// Held until the rest arrives.
    Held,
    /// The datagram is complete: the whole frame, and the largest fragment's IP size.
    Complete {
        frame: Vec<u8>,
        largest_fragment: usize,
        /// The tag the first fragment (offset 0) was added with: the datagram goes on
        /// as that packet.
        first_tag: u64,
    },
}

/// Reassembles fragmented datagrams (one per device that needs whole datagrams).
#[derive(Debug, Clone, Default)]
pub struct Reassembler {
    pending: FxHashMap<DatagramKey, Pending>,
}

impl Reassembler {
    /// Takes one fragment (an Ethernet frame with IPv4) at simulated time `now_ns`.
    pub fn add(&mut self, frame: &[u8], now_ns: u64) -> Reassembly {
        self.add_tagged(frame, now_ns, 0)
    }

    /// Like [`Reassembler::add`], remembering `tag` (a packet id) for the fragment.
    pub fn add_tagged(&mut self, frame: &[u8], now_ns: u64, tag: u64) -> Reassembly {
        if frame.len() < IP + 20 {
            return Reassembly::Invalid;
        }
        let header = header_len(frame);
        let total = total_len(frame);
        if header < 20 || total < header || IP + total > frame.len() {
            return Reassembly::Invalid;
        }
        self.expire(now_ns);
        let key = DatagramKey::of(frame);
        let flags = flags_offset(frame);
        let offset = usize::from(flags & OFFSET_MASK) * 8;
        let data = frame[IP + header..IP + total].to_vec();
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&key) {
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(k, p)| (p.first_seen_ns, k.identification))
                .map(|(k, _)| *k)
            {
                self.pending.remove(&oldest);
            }
        }
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            first_seen_ns: now_ns,
            head: None,
            head_tag: 0,
            pieces: Vec::new(),
            length: None,
            largest_fragment: 0,
        });
        pending.largest_fragment = pending.largest_fragment.max(total);
        if offset == 0 {
            pending.head = Some(frame[..IP + header].to_vec());
            pending.head_tag = tag;
        }
        if flags & MORE_FRAGMENTS == 0 {
            pending.length = Some(offset + data.len());
        }
        pending.pieces.push((offset, data));
        match Self::assemble(pending) {
            Some(frame) => {
                let (largest_fragment, first_tag) = (pending.largest_fragment, pending.head_tag);
                self.pending.remove(&key);
                Reassembly::Complete {
                    frame,
                    largest_fragment,
                    first_tag,
                }
            }
            None => Reassembly::Held,
        }
    }

    /// The whole datagram, when the pieces cover it from 0 to its length.
    fn assemble(pending: &Pending) -> Option<Vec<u8>> {
        let length = pending.length?;
        let head = pending.head.as_ref()?;
        let mut data = vec![0u8; length];
        let mut covered = vec![false; length];
        for (offset, piece) in &pending.pieces {
            let end = (offset + piece.len()).min(length);
            if *offset >= end {
                continue;
            }
            data[*offset..end].copy_from_slice(&piece[..end - offset]);
            covered[*offset..end].iter_mut().for_each(|c| *c = true);
        }
        if !covered.iter().all(|c| *c) {
            return None;
        }
        let mut frame = head.clone();
        let header = frame.len() - IP;
        frame.extend_from_slice(&data);
        let flags = flags_offset(&frame) & DONT_FRAGMENT;
        finish_header(&mut frame, header + length, flags);
        Some(frame)
    }

    /// Gives up datagrams older than the reassembly timeout.
    fn expire(&mut self, now_ns: u64) {
        self.pending
            .retain(|_, p| now_ns.saturating_sub(p.first_seen_ns) < REASSEMBLY_TIMEOUT_NS);
    }

    /// Incomplete datagrams held now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests_support::udp_frame;

    fn datagram(bytes: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..bytes).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let mut frame = udp_frame(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
            (4000, 5000),
            &payload,
        );
        // DF clear, id 77.
        frame[IP + 4..IP + 6].copy_from_slice(&77u16.to_be_bytes());
        let total = total_len(&frame);
        finish_header(&mut frame, total, 0);
        frame
    }

    #[test]
    fn fragments_fit_the_mtu_carry_multiples_of_eight_and_reassemble_in_any_order() {
        let whole = datagram(2972); // 3000-byte IP datagram
        let fragments = fragment(&whole, 1000);
        assert_eq!(fragments.len(), 4);
        for (index, piece) in fragments.iter().enumerate() {
            assert!(total_len(piece) <= 1000);
            assert_eq!(checksum::checksum(&piece[IP..IP + 20]), 0);
            let flags = flags_offset(piece);
            assert_eq!(flags & OFFSET_MASK, u16::try_from(index * 976 / 8).unwrap());
            assert_eq!(flags & MORE_FRAGMENTS != 0, index < 3);
            assert!(is_fragment(piece));
        }
        let mut reassembler = Reassembler::default();
        for piece in [&fragments[2], &fragments[0], &fragments[3]] {
            assert_eq!(reassembler.add(piece, 0), Reassembly::Held);
        }
        let Reassembly::Complete {
            frame,
            largest_fragment,
            ..
        } = reassembler.add(&fragments[1], 5)
        else {
            panic!("complete");
        };
        assert_eq!(frame, whole);
        assert_eq!(largest_fragment, 996);
        assert!(reassembler.is_empty());
    }

    #[test]
    fn a_fragment_whose_lengths_do_not_add_up_is_invalid() {
        let mut frame = fragment(&datagram(2972), 1000)[0].clone();
        frame[IP + 2..IP + 4].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(Reassembler::default().add(&frame, 0), Reassembly::Invalid);
        assert_eq!(
            Reassembler::default().add(&frame[..20], 0),
            Reassembly::Invalid
        );
    }

    #[test]
    fn a_datagram_that_fits_is_not_cut_and_stale_fragments_expire() {
        let whole = datagram(500);
        assert_eq!(fragment(&whole, 1500), vec![whole.clone()]);
        assert!(!is_fragment(&whole));
        let big = datagram(2972);
        let fragments = fragment(&big, 1000);
        let mut reassembler = Reassembler::default();
        reassembler.add(&fragments[0], 0);
        assert_eq!(reassembler.len(), 1);
        // The rest arrives after the 30 s timeout: the first fragment is gone.
        for piece in &fragments[1..] {
            assert_eq!(
                reassembler.add(piece, REASSEMBLY_TIMEOUT_NS + 1),
                Reassembly::Held
            );
        }
    }
}
