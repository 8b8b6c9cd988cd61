//! Frame parsing, ICMP quotes and Geneve decapsulation never panic on any bytes.
//! Run: cargo +nightly fuzz run frame
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsim::packet::{parse_meta, quoted_flow_key, Packet};

fuzz_target!(|bytes: &[u8]| {
    let _ = parse_meta(bytes);
    if let Ok(mut packet) = Packet::from_frame(bytes, 0) {
        let _ = quoted_flow_key(&packet);
        let _ = netsim::datapath::encap::decapsulate(&mut packet);
    }
});
