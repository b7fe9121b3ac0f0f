//! The Pi loads its key file only if no one but its owner may read it.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use ledtemp_core::{Algorithm, DeviceId, KeyId};
use ledtemp_rpi::{Error, KeyEntry, load_key_file};

#[test]
fn the_pi_refuses_a_key_file_others_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kitchen-pi.key");
    let device = DeviceId::new("kitchen-pi").unwrap();
    let entry = KeyEntry::generate(device, KeyId(1), Algorithm::ChaCha20Poly1305).unwrap();
    ledtemp_keys::write_key_file(&path, &entry, false).unwrap();
    assert_eq!(load_key_file(&path).unwrap().key_bytes(), entry.key_bytes());

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_key_file(&path).unwrap_err();
    assert!(
        matches!(err, Error::Keys(ledtemp_keys::Error::Permissions { mode: 0o644, .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}
