//! Files a Raspberry Pi node reads: its sequence-number file (a damaged one must be an error,
//! never a restart at 0), the DS18B20's `w1_slave` and a thermal zone's `temp`.
//!
//! Nothing may panic; a high-water mark that parses must survive being written and read back.
#![no_main]

use ledtemp_rpi::{format_sequence_file, parse_sequence_file, parse_thermal_zone, parse_w1_slave};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(high_water) = parse_sequence_file(data) {
        let rewritten = format_sequence_file(high_water);
        assert_eq!(parse_sequence_file(rewritten.as_bytes()).ok(), Some(high_water));
    }
    let Ok(text) = core::str::from_utf8(data) else { return };
    let _ = parse_w1_slave(text);
    let _ = parse_thermal_zone(text);
});
