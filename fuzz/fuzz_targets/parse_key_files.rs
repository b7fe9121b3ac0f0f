//! The server's keyring and a node's key file: TOML from disk, possibly damaged or hostile.
//!
//! Nothing may panic; a keyring that loads must satisfy its own invariant (no two entries with
//! the same device and key id).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else { return };
    let _ = ledtemp_keys::parse_key_file(text);
    if let Ok(keyring) = ledtemp_keys::Keyring::parse(text) {
        let mut seen = std::collections::HashSet::new();
        for entry in keyring.entries() {
            assert!(
                seen.insert((entry.device().clone(), entry.key_id())),
                "duplicate entry loaded"
            );
        }
    }
});
