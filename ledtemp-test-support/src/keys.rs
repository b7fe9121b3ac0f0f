//! Temporary keyrings: fresh keys, made and written with `ledtemp-keys` as the CLI does.

use std::path::{Path, PathBuf};

use ledtemp_core::{Algorithm, AnyCodec, DeviceId, KeyId};
use ledtemp_keys::{KeyEntry, Keyring};
use tempfile::TempDir;

/// A keyring of fresh keys (key id 1, one per device), saved as `keyring.toml` (mode 0600) in a
/// directory of its own, which is removed with it.
#[derive(Debug)]
pub struct TempKeyring {
    dir: TempDir,
    keyring: Keyring,
}

impl TempKeyring {
    /// Generates a key for each `(device, algorithm)` and saves the keyring.
    pub fn generate(devices: &[(&str, Algorithm)]) -> TempKeyring {
        let mut keyring = Keyring::new();
        for (device, algorithm) in devices {
            let entry =
                KeyEntry::generate(DeviceId::new(device).unwrap(), KeyId(1), *algorithm).unwrap();
            keyring.add(entry, false).unwrap();
        }
        let keys = TempKeyring { dir: TempDir::new().unwrap(), keyring };
        keys.keyring.save(&keys.path()).unwrap();
        keys
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Where it is saved.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("keyring.toml")
    }

    /// The key of `device`; panics for a device not in the keyring.
    pub fn entry(&self, device: &str) -> &KeyEntry {
        self.keyring
            .current(&DeviceId::new(device).unwrap())
            .unwrap_or_else(|| panic!("no key for {device} in the test keyring"))
    }

    /// A codec holding the key of `device`.
    pub fn codec(&self, device: &str) -> AnyCodec {
        self.entry(device).codec()
    }

    /// Writes the key of `device` as its node's key file at `path` (mode 0600, as
    /// `ledtemp-keys` writes it).
    pub fn write_key_file(&self, device: &str, path: &Path) {
        ledtemp_keys::write_key_file(path, self.entry(device), false).unwrap();
    }
}
