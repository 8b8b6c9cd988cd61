//! VXLAN header (RFC 7348 §5): 8 bytes after the outer UDP header — flags (the I bit,
//! 0x08: the VNI is valid), 24 reserved bits, the 24-bit VNI, 8 reserved bits — then
//! the inner Ethernet frame. Knows nothing of the UDP port that carries it (4789).

use super::WireError;

/// IANA-assigned UDP destination port for VXLAN (RFC 7348 §5).
pub const UDP_PORT: u16 = 4789;
/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// The VNI of Calico's `vxlan.calico` (Felix `VXLANVNI` default 4096).
pub const CALICO_VNI: u32 = 4096;
/// Bytes one VXLAN encapsulation adds over an IPv4 underlay, counted against the
/// inner IP packet (inner Ethernet 14 + outer IPv4 20 + UDP 8 + VXLAN 8), as Linux's
/// `VXLAN_HEADROOM` and Antrea / Calico count it.
pub const IPV4_OVERHEAD: usize = 50;
/// The I flag: the VNI field is valid.
const FLAG_VNI: u8 = 0x08;

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// Parses a header; refuses one without the I flag (RFC 7348 §5: "MUST be set to
    /// 1 for a valid VXLAN Network ID").
    pub fn parse(bytes: &[u8]) -> Result<Repr, WireError> {
        let header = bytes.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        if header[0] & FLAG_VNI == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            vni: u32::from_be_bytes([0, header[4], header[5], header[6]]),
        })
    }

    /// Writes the header into the first 8 bytes of `bytes` (reserved bits zero).
    pub fn emit(&self, bytes: &mut [u8]) -> Result<(), WireError> {
        let header = bytes.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let vni = (self.vni & 0x00ff_ffff).to_be_bytes();
        header.copy_from_slice(&[FLAG_VNI, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of RFC 7348 §5 for VNI 4096 (Calico's `vxlan.calico`), by hand.
    const CALICO: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];

    #[test]
    fn deconstruct_and_parse() {
        assert_eq!(Repr::parse(&CALICO), Ok(Repr { vni: 4096 }));
        assert_eq!(Repr::parse(&CALICO[..7]), Err(WireError::Truncated));
        let mut no_flag = CALICO;
        no_flag[0] = 0;
        assert_eq!(Repr::parse(&no_flag), Err(WireError::Malformed));
    }

    #[test]
    fn construct_and_emit() {
        let mut bytes = [0xffu8; 8];
        Repr { vni: 4096 }.emit(&mut bytes).unwrap();
        assert_eq!(bytes, CALICO);
        assert_eq!(
            Repr { vni: 7 }.emit(&mut [0u8; 4]),
            Err(WireError::Truncated)
        );
    }
}
