//! Internet checksum (RFC 1071), full and incremental (RFC 1624).
//!
//! Owns only arithmetic on byte slices and 16-bit words; it knows nothing of which
//! header a checksum belongs to. Incremental updates are what the datapath uses when it
//! rewrites a TTL, an address or a port, so a rewrite never re-reads the payload.

use std::net::Ipv4Addr;

/// One's-complement sum of `data` (as big-endian 16-bit words, an odd last byte padded
/// with zero) added to `initial`, not yet folded. RFC 1071 §4.1.
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    let mut accumulator = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        accumulator += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        accumulator += u64::from(u16::from_be_bytes([*last, 0]));
    }
    fold64(accumulator)
}

fn fold64(mut accumulator: u64) -> u32 {
    while accumulator > 0xffff_ffff {
        accumulator = (accumulator & 0xffff_ffff) + (accumulator >> 32);
    }
    // Safe: the loop leaves at most 32 bits.
    u32::try_from(accumulator).unwrap_or(u32::MAX)
}

/// Folds a 32-bit one's-complement sum into 16 bits.
pub fn fold(mut accumulator: u32) -> u16 {
    while accumulator > 0xffff {
        accumulator = (accumulator & 0xffff) + (accumulator >> 16);
    }
    u16::try_from(accumulator).unwrap_or(u16::MAX)
}

/// The checksum field value for `data` (the complement of the folded sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793 §3.1, RFC 768).
pub fn pseudo_header_sum(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    length: u16,
) -> u32 {
    let mut accumulator = sum(0, &source.octets());
    accumulator = sum(accumulator, &destination.octets());
    accumulator + u32::from(protocol) + u32::from(length)
}

/// Full TCP/UDP checksum over pseudo-header and segment (whose checksum field must
/// already be zero).
pub fn transport_checksum(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    segment: &[u8],
) -> u16 {
    let length = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    !fold(sum(
        pseudo_header_sum(source, destination, protocol, length),
        segment,
    ))
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word changing from `old`
/// to `new`. Never produces 0xFFFF from a non-0xFFFF input the way eqn. 2 can.
pub fn update_word(checksum: u16, old: u16, new: u16) -> u16 {
    let accumulator = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    !fold(accumulator)
}

/// RFC 1624 for a 32-bit field (an IPv4 address), as two 16-bit words.
pub fn update_address(checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    let old = old.octets();
    let new = new.octets();
    let high = update_word(
        checksum,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update_word(
        high,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 numerical example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_matches_full_on_ipv4_ttl_change() {
        // A real IPv4 header (checksum 0xb861) from RFC 1071-style worked examples.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let original = checksum(&header);
        assert_eq!(original, 0xb861);
        header[10..12].copy_from_slice(&original.to_be_bytes());
        let old_word = u16::from_be_bytes([header[8], header[9]]);
        header[8] -= 1;
        let new_word = u16::from_be_bytes([header[8], header[9]]);
        let incremental = update_word(original, old_word, new_word);
        header[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(incremental, checksum(&header));
    }
}
