//! `ledtemp-keys`: the node's key file and the server's keyring (`docs/keys.md`).
//!
//! Every ledtemp device has its own AEAD key. It lives in two TOML files: the device's **key
//! file** (one entry at the top level) and the server's **keyring** (one `[[key]]` table per
//! entry). This crate reads, validates, generates and writes both, for `ledtemp-rpi` (the node)
//! and `ledtemp-web` (the server), which must not depend on each other. The `ledtemp-keys`
//! binary provisions a device (`ledtemp-keys add kitchen-pi`), rotates its key with a grace
//! period (`ledtemp-keys rotate kitchen-pi --grace-days 7`) and revokes keys
//! (`ledtemp-keys revoke kitchen-pi`).
//!
//! What it guarantees:
//! - both files are secrets: loading refuses a file that group or others may access (mode must
//!   deny them, e.g. `0600`), and writing creates mode `0600`, atomically (temporary file, fsync,
//!   rename, fsync of the directory);
//! - loading checks every field and names the file, the entry and the field of the first
//!   problem; a keyring never holds two entries for one (device, key id) nor one key under two
//!   devices; a keyring entry may carry a `retire_at` (end of a rotation's grace period) or be
//!   `revoked` (device and key id kept, key bytes gone);
//! - key bytes are wiped from memory when dropped and never appear in `Debug` output or error
//!   messages (a best effort: copies the TOML parser makes internally are not wiped);
//! - nothing read from a file panics.
//!
//! # Example
//!
//! ```
//! use ledtemp_core::{Algorithm, Codec, DeviceId, KeyId};
//! use ledtemp_keys::{KeyEntry, Keyring, load_key_file, write_key_file};
//!
//! let dir = tempfile::tempdir()?;
//! let device = DeviceId::new("kitchen-pi")?;
//!
//! // Provisioning: a fresh key, written to the node's key file and to the server's keyring.
//! let entry = KeyEntry::generate(device.clone(), KeyId(1), Algorithm::ChaCha20Poly1305)?;
//! write_key_file(&dir.path().join("kitchen-pi.key"), &entry, false)?;
//! let mut keyring = Keyring::new();
//! keyring.add(entry, false)?;
//! keyring.save(&dir.path().join("keyring.toml"))?;
//!
//! // Node and server load their files and agree on the key.
//! let node = load_key_file(&dir.path().join("kitchen-pi.key"))?;
//! let keyring = Keyring::load(&dir.path().join("keyring.toml"))?;
//! let server = keyring.get(&device, KeyId(1)).ok_or("no key")?;
//! assert_eq!(node.key_bytes(), server.key_bytes());
//! assert_eq!(node.codec().key_id(), KeyId(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod entry;
mod error;
mod file;
mod keyring;

pub use entry::{
    KeyEntry, KeyringEntry, RevokedKey, load_key_file, parse_key_file, write_key_file,
};
pub use error::Error;
pub use file::{MAX_FILE_LEN, check_private, write_private_file};
pub use keyring::Keyring;
