//! The topology loader returns a model or a located error for any text, never panics.
//! Run: cargo +nightly fuzz run topology
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = netsim::topology::parse("fuzz.toml", text);
    }
});
