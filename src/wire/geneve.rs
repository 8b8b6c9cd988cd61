//! Geneve header (RFC 8926), smoltcp style: a `Packet<T>` view over bytes and a `Repr`
//! that parses and emits it. Neither smoltcp nor etherparse has Geneve.
//!
//! Owns the 8-byte base header and its option TLVs; knows nothing of what carries it
//! (UDP port 6081) or what it carries (an Ethernet frame when the protocol type is
//! 0x6558). RFC 8926 §3.4 figure "Geneve Header" and §3.5 "Tunnel Options" give each
//! field below.

use super::WireError;

/// IANA-assigned UDP destination port for Geneve (RFC 8926 §3.3).
pub const UDP_PORT: u16 = 6081;
/// Protocol type "Transparent Ethernet Bridging": the payload is an Ethernet frame
/// (RFC 8926 §3.4).
pub const PROTOCOL_ETHERNET: u16 = 0x6558;
/// Length of the fixed part of the header.
pub const BASE_LEN: usize = 8;
/// Bytes one Geneve encapsulation adds over an IPv4 underlay, counted against the
/// inner IP packet the way Linux (`GENEVE_IPV4_HLEN`) and Antrea (`node_config.go`)
/// count it: inner Ethernet 14 + outer IPv4 20 + UDP 8 + Geneve 8.
pub const IPV4_OVERHEAD: usize = 50;

mod field {
    use core::ops::Range;
    /// Ver (2 bits) | Opt Len (6 bits, 4-byte words, excluding the base header).
    pub const VERSION_OPTIONS_LENGTH: usize = 0;
    /// O (1 bit) | C (1 bit) | Rsvd (6 bits).
    pub const FLAGS: usize = 1;
    pub const PROTOCOL_TYPE: Range<usize> = 2..4;
    /// VNI (24 bits) | Reserved (8 bits).
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
}

const FLAG_OAM: u8 = 0x80;
const FLAG_CRITICAL: u8 = 0x40;
/// Option type bit 7: the option is critical (RFC 8926 §3.5.1).
pub const OPTION_TYPE_CRITICAL: u8 = 0x80;

/// A read/write view of a Geneve header and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking it holds the base header and the options it declares.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ensures the buffer holds the base header and every option byte.
    pub fn check_len(&self) -> Result<(), WireError> {
        let length = self.buffer.as_ref().len();
        if length < BASE_LEN || length < self.header_len() {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Ver: the protocol version, 0 today (RFC 8926 §3.4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_OPTIONS_LENGTH] >> 6
    }

    /// Opt Len: length of the options in 4-byte words, excluding the base header.
    pub fn options_words(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_OPTIONS_LENGTH] & 0x3f
    }

    /// Length of the options in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.options_words()) * 4
    }

    /// Base header plus options: where the payload starts.
    pub fn header_len(&self) -> usize {
        BASE_LEN + self.options_len()
    }

    /// O: the packet carries a control message, not data (RFC 8926 §3.4).
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }

    /// C: at least one option is critical (RFC 8926 §3.4).
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }

    /// Protocol Type: the EtherType of the payload.
    pub fn protocol_type(&self) -> u16 {
        let bytes = &self.buffer.as_ref()[field::PROTOCOL_TYPE];
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    /// VNI: the 24-bit virtual network identifier.
    pub fn vni(&self) -> u32 {
        let bytes = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])
    }

    /// The reserved byte after the VNI (0 on transmit, ignored on receive).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The raw option TLVs.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[BASE_LEN..self.header_len()]
    }

    /// The encapsulated payload (an Ethernet frame for protocol type 0x6558).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets Ver and Opt Len (`words` 4-byte words of options).
    pub fn set_version_and_options_words(&mut self, version: u8, words: u8) {
        self.buffer.as_mut()[field::VERSION_OPTIONS_LENGTH] = (version << 6) | (words & 0x3f);
    }

    /// Sets O and C and clears the reserved flag bits.
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        let mut flags = 0;
        if oam {
            flags |= FLAG_OAM;
        }
        if critical {
            flags |= FLAG_CRITICAL;
        }
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the Protocol Type.
    pub fn set_protocol_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::PROTOCOL_TYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the 24-bit VNI (higher bits are ignored).
    pub fn set_vni(&mut self, value: u32) {
        let bytes = value.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&bytes[1..4]);
    }

    /// Sets the reserved byte after the VNI.
    pub fn set_reserved(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED] = value;
    }

    /// The option bytes, for writing.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[BASE_LEN..end]
    }
}

/// One option TLV (RFC 8926 §3.5): Class (16) | Type (8) | R R R Length (5, 4-byte words
/// of data, excluding the 4-byte option header) | data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    pub option_type: u8,
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// The critical bit of the type (RFC 8926 §3.5.1).
    pub fn is_critical(&self) -> bool {
        self.option_type & OPTION_TYPE_CRITICAL != 0
    }

    /// Bytes the option takes on the wire.
    pub fn wire_len(&self) -> usize {
        4 + self.data.len()
    }
}

/// Iterates over the option TLVs of a header; yields an error once on a malformed TLV.
#[derive(Debug, Clone)]
pub struct OptionsIterator<'a> {
    remaining: &'a [u8],
}

impl<'a> OptionsIterator<'a> {
    pub fn new(options: &'a [u8]) -> Self {
        OptionsIterator { remaining: options }
    }
}

impl<'a> Iterator for OptionsIterator<'a> {
    type Item = Result<GeneveOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining.is_empty() {
            return None;
        }
        if self.remaining.len() < 4 {
            self.remaining = &[];
            return Some(Err(WireError::Malformed));
        }
        let class = u16::from_be_bytes([self.remaining[0], self.remaining[1]]);
        let option_type = self.remaining[2];
        let data_len = usize::from(self.remaining[3] & 0x1f) * 4;
        if self.remaining.len() < 4 + data_len {
            self.remaining = &[];
            return Some(Err(WireError::Malformed));
        }
        let data = &self.remaining[4..4 + data_len];
        self.remaining = &self.remaining[4 + data_len..];
        Some(Ok(GeneveOption {
            class,
            option_type,
            data,
        }))
    }
}

/// A parsed Geneve header. `options` holds the raw TLVs (a multiple of four bytes,
/// at most 252), walked with [`OptionsIterator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    pub oam: bool,
    pub critical: bool,
    pub protocol_type: u16,
    pub vni: u32,
    pub options: &'a [u8],
}

impl<'a> Repr<'a> {
    /// The header Antrea emits: VNI 0, no options, an Ethernet payload
    /// (reference §a: no SetTunnelID in the pipeline, no Geneve options).
    pub const fn antrea() -> Repr<'static> {
        Repr {
            oam: false,
            critical: false,
            protocol_type: PROTOCOL_ETHERNET,
            vni: 0,
            options: &[],
        }
    }

    /// Parses a header. Rejects a version other than 0 and malformed options
    /// (RFC 8926 §3.4: a receiver MUST drop a packet with an unknown version).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>, WireError> {
        packet.check_len()?;
        if packet.version() != 0 {
            return Err(WireError::Unsupported);
        }
        let options = packet.options();
        for option in OptionsIterator::new(options) {
            option?;
        }
        Ok(Repr {
            oam: packet.oam(),
            critical: packet.critical(),
            protocol_type: packet.protocol_type(),
            vni: packet.vni(),
            options,
        })
    }

    /// The options, one TLV at a time.
    pub fn options(&self) -> OptionsIterator<'a> {
        OptionsIterator::new(self.options)
    }

    /// Bytes the header takes on the wire.
    pub fn buffer_len(&self) -> usize {
        BASE_LEN + self.options.len()
    }

    /// Writes the header (and options) at the start of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
    ) -> Result<(), WireError> {
        if !self.options.len().is_multiple_of(4) || self.options.len() > 63 * 4 {
            return Err(WireError::Malformed);
        }
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        let words = u8::try_from(self.options.len() / 4).map_err(|_| WireError::Malformed)?;
        packet.set_version_and_options_words(0, words);
        packet.set_flags(self.oam, self.critical);
        packet.set_protocol_type(self.protocol_type);
        packet.set_vni(self.vni);
        packet.set_reserved(0);
        packet.options_mut().copy_from_slice(self.options);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written out by hand from the RFC 8926 §3.4/§3.5 layouts:
    // Ver=0, Opt Len=2 (8 bytes), O=0, C=1, Protocol Type 0x6558, VNI 0x123456,
    // one option: Class 0x0104 (VMware), Type 0x80 (critical), Length 1 (4 bytes), data
    // de ad be ef; then a 2-byte payload.
    static PACKET_BYTES: [u8; 18] = [
        0x02, 0x40, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00, // base header
        0x01, 0x04, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef, // option TLV
        0xaa, 0xbb, // payload
    ];
    static OPTIONS: [u8; 8] = [0x01, 0x04, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef];

    fn repr() -> Repr<'static> {
        Repr {
            oam: false,
            critical: true,
            protocol_type: PROTOCOL_ETHERNET,
            vni: 0x12_3456,
            options: &OPTIONS,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.options_words(), 2);
        assert!(!packet.oam());
        assert!(packet.critical());
        assert_eq!(packet.protocol_type(), 0x6558);
        assert_eq!(packet.vni(), 0x12_3456);
        assert_eq!(packet.reserved(), 0);
        assert_eq!(packet.header_len(), 16);
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
        let options: Vec<_> = OptionsIterator::new(packet.options())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            options,
            vec![GeneveOption {
                class: 0x0104,
                option_type: 0x80,
                data: &[0xde, 0xad, 0xbe, 0xef]
            }]
        );
        assert!(options[0].is_critical());
    }

    #[test]
    fn construct() {
        let mut bytes = [0u8; 18];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_version_and_options_words(0, 2);
        packet.set_flags(false, true);
        packet.set_protocol_type(PROTOCOL_ETHERNET);
        packet.set_vni(0x12_3456);
        packet.set_reserved(0);
        packet.options_mut().copy_from_slice(&OPTIONS);
        bytes[16..].copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
    }

    #[test]
    fn emit() {
        let mut bytes = [0u8; 18];
        repr()
            .emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        bytes[16..].copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn antrea_header_is_vni_zero_without_options() {
        let mut bytes = [0xffu8; 8];
        Repr::antrea()
            .emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, [0x00, 0x00, 0x65, 0x58, 0x00, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn truncated_options_are_rejected() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..12]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = PACKET_BYTES;
        bad[11] = 0x03; // option claims 12 data bytes
        let packet = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bad = PACKET_BYTES;
        bad[0] |= 0x40;
        let packet = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap_err(), WireError::Unsupported);
    }
}
