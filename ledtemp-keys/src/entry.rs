//! One key entry: its validation from TOML, its text, the node's key file; a revoked key's
//! record.

use std::fmt::{self, Write as _};
use std::path::Path;

use jiff::Timestamp;
use ledtemp_core::{AesGcmCodec, Algorithm, AnyCodec, ChaChaCodec, DeviceId, KeyId};
use toml::{Table, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;
use crate::file::{read_private, write_private_file};

/// The fields of a node's key file, in the order they are written.
const FIELDS: [&str; 4] = ["device", "key_id", "algorithm", "key"];

/// The fields of a keyring entry: a key file's, then the two that only the server uses.
const KEYRING_FIELDS: [&str; 6] = ["device", "key_id", "algorithm", "key", "retire_at", "revoked"];

/// The key bytes, sized by their algorithm. Boxed so that moving a [`KeyEntry`] never copies the
/// secret; wiped on drop.
#[derive(Clone)]
enum SecretKey {
    Aes128Gcm([u8; 16]),
    ChaCha20Poly1305([u8; 32]),
}

impl SecretKey {
    /// An all-zero key of `algorithm`'s size, to be filled in place.
    fn zeroed(algorithm: Algorithm) -> Box<Self> {
        Box::new(match algorithm {
            Algorithm::Aes128Gcm => SecretKey::Aes128Gcm([0; 16]),
            Algorithm::ChaCha20Poly1305 => SecretKey::ChaCha20Poly1305([0; 32]),
        })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            SecretKey::Aes128Gcm(k) => k,
            SecretKey::ChaCha20Poly1305(k) => k,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            SecretKey::Aes128Gcm(k) => k,
            SecretKey::ChaCha20Poly1305(k) => k,
        }
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes_mut().zeroize();
    }
}

/// One key of one device: what a node's key file holds, and one `[[key]]` of the server's
/// keyring (`docs/keys.md`).
///
/// The key bytes are private, wiped from memory when the entry is dropped, and never shown by
/// `Debug`. The public fields are for reading: to change an entry, build a new one
/// ([`with_retire_at`](Self::with_retire_at) sets the end of a rotation's grace period). The
/// codec always uses the algorithm the key was checked against at construction.
#[derive(Clone)]
pub struct KeyEntry {
    /// The device the key belongs to.
    pub device: DeviceId,
    /// Which of the device's keys this is (carried in every frame header).
    pub key_id: KeyId,
    /// The AEAD the key is for.
    pub algorithm: Algorithm,
    /// Keyring only: the end of the rotation grace period. The server refuses frames sealed
    /// with this key that it receives at or after this moment. `None`: no end.
    pub retire_at: Option<Timestamp>,
    key: Box<SecretKey>,
}

/// A keyring entry whose key was revoked: its device and key id are kept, so that the server
/// counts frames sealed with it as revoked rather than from an unknown key, and so that
/// `ledtemp-keys rotate` never gives the key id out again. The key bytes are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedKey {
    /// The device the key belonged to.
    pub device: DeviceId,
    /// Its key id.
    pub key_id: KeyId,
}

/// One `[[key]]` table of a keyring: a key, or the record of a revoked one.
#[derive(Debug, Clone)]
pub enum KeyringEntry {
    /// A key the server opens frames with (until its `retire_at`, if any).
    Key(KeyEntry),
    /// A revoked key: frames sealed with it are refused.
    Revoked(RevokedKey),
}

impl KeyringEntry {
    /// The device of the entry.
    pub fn device(&self) -> &DeviceId {
        match self {
            KeyringEntry::Key(key) => &key.device,
            KeyringEntry::Revoked(revoked) => &revoked.device,
        }
    }

    /// The key id of the entry.
    pub fn key_id(&self) -> KeyId {
        match self {
            KeyringEntry::Key(key) => key.key_id,
            KeyringEntry::Revoked(revoked) => revoked.key_id,
        }
    }

    /// The key, unless it was revoked.
    pub fn key(&self) -> Option<&KeyEntry> {
        match self {
            KeyringEntry::Key(key) => Some(key),
            KeyringEntry::Revoked(_) => None,
        }
    }

    /// Appends the entry's fields, one per line (see [`KeyEntry::write_fields`]).
    pub(crate) fn write_fields(&self, text: &mut String) {
        match self {
            KeyringEntry::Key(key) => key.write_fields(text),
            KeyringEntry::Revoked(revoked) => {
                let _ = writeln!(text, "device = \"{}\"", revoked.device);
                let _ = writeln!(text, "key_id = {}", revoked.key_id.0);
                text.push_str("revoked = true\n");
            }
        }
    }
}

impl KeyEntry {
    /// An entry for `key`; [`Error::InvalidKeyLength`] unless it has `algorithm`'s length (16
    /// bytes for AES-128-GCM, 32 for ChaCha20-Poly1305). The bytes are copied; wiping the
    /// caller's copy is the caller's business.
    pub fn new(
        device: DeviceId,
        key_id: KeyId,
        algorithm: Algorithm,
        key: &[u8],
    ) -> Result<Self, Error> {
        let mut secret = SecretKey::zeroed(algorithm);
        let slot = secret.bytes_mut();
        if slot.len() != key.len() {
            return Err(Error::InvalidKeyLength {
                algorithm,
                expected: slot.len(),
                found: key.len(),
            });
        }
        slot.copy_from_slice(key);
        Ok(KeyEntry { device, key_id, algorithm, retire_at: None, key: secret })
    }

    /// A new entry with a fresh random key from the operating system's random number generator.
    pub fn generate(device: DeviceId, key_id: KeyId, algorithm: Algorithm) -> Result<Self, Error> {
        let mut secret = SecretKey::zeroed(algorithm);
        getrandom::fill(secret.bytes_mut()).map_err(Error::Random)?;
        Ok(KeyEntry { device, key_id, algorithm, retire_at: None, key: secret })
    }

    /// The same entry with `retire_at` as the end of its grace period (`None`: no end).
    pub fn with_retire_at(mut self, retire_at: Option<Timestamp>) -> Self {
        self.retire_at = retire_at;
        self
    }

    /// The secret key bytes. Do not log them.
    pub fn key_bytes(&self) -> &[u8] {
        self.key.bytes()
    }

    /// A codec sealing and opening with this key under this key id.
    pub fn codec(&self) -> AnyCodec {
        match &*self.key {
            SecretKey::Aes128Gcm(k) => AnyCodec::AesGcm(AesGcmCodec::new(self.key_id, k.into())),
            SecretKey::ChaCha20Poly1305(k) => {
                AnyCodec::ChaCha(ChaChaCodec::new(self.key_id, k.into()))
            }
        }
    }

    /// The algorithm the key bytes were checked against.
    fn key_algorithm(&self) -> Algorithm {
        match &*self.key {
            SecretKey::Aes128Gcm(_) => Algorithm::Aes128Gcm,
            SecretKey::ChaCha20Poly1305(_) => Algorithm::ChaCha20Poly1305,
        }
    }

    /// The node's key file for this entry, as written by [`write_key_file`]: the four fields of
    /// a key file (`retire_at` belongs to the keyring only). The returned text holds the key and
    /// is wiped when dropped.
    pub fn to_key_file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(256));
        // Writing into a String cannot fail.
        let _ =
            writeln!(text, "# ledtemp key for device {}. Secret: keep it mode 0600.", self.device);
        self.write_key_file_fields(&mut text);
        text
    }

    /// Appends the keyring fields: those of a key file, then `retire_at` if set.
    pub(crate) fn write_fields(&self, text: &mut String) {
        self.write_key_file_fields(text);
        if let Some(retire_at) = self.retire_at {
            // RFC 3339 in UTC, e.g. 2025-07-01T12:00:00Z.
            let _ = writeln!(text, "retire_at = \"{retire_at}\"");
        }
    }

    /// Appends `device = ...` to `key = ...`, one per line. Device ids and algorithm names need
    /// no escaping (their characters are restricted) and the hex is written digit by digit, so no
    /// copy of the key is left behind in a serializer's buffers.
    fn write_key_file_fields(&self, text: &mut String) {
        let _ = writeln!(text, "device = \"{}\"", self.device);
        let _ = writeln!(text, "key_id = {}", self.key_id.0);
        let _ = writeln!(text, "algorithm = \"{}\"", self.key_algorithm());
        text.push_str("key = \"");
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for &b in self.key_bytes() {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        text.push_str("\"\n");
    }
}

impl fmt::Debug for KeyEntry {
    /// Never shows the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("device", &self.device)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

/// Reads a node's key file: refuses it if group or others may access it ([`check_private`]),
/// then parses and validates its one entry.
///
/// [`check_private`]: crate::check_private
pub fn load_key_file(path: &Path) -> Result<KeyEntry, Error> {
    let bytes = read_private(path)?;
    parse_key_file(utf8(&bytes).map_err(|e| e.in_file(path))?).map_err(|e| e.in_file(path))
}

/// Parses a node's key file (one entry at the top level) without touching the file system.
pub fn parse_key_file(text: &str) -> Result<KeyEntry, Error> {
    match RawEntry::new(parse_table(text)?).validate(None)? {
        KeyringEntry::Key(entry) => Ok(entry),
        // `validate(None)` refuses the `revoked` field, so this is never reached.
        KeyringEntry::Revoked(_) => Err(Error::InvalidField {
            path: None,
            entry: None,
            field: "revoked".into(),
            problem: "belongs in the server's keyring, not in a node's key file".into(),
        }),
    }
}

/// Writes a node's key file for `entry` atomically with mode `0600`; without `overwrite` an
/// existing file is [`Error::FileExists`] and left alone.
pub fn write_key_file(path: &Path, entry: &KeyEntry, overwrite: bool) -> Result<(), Error> {
    write_private_file(path, entry.to_key_file_text().as_bytes(), overwrite)
}

pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(bytes).map_err(|e| Error::Syntax {
        path: None,
        line: Some(bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1),
        message: "not UTF-8 text".into(),
    })
}

/// Parses TOML, reporting the line and the parser's message but never the offending text (it
/// may be a key).
pub(crate) fn parse_table(text: &str) -> Result<Table, Error> {
    text.parse::<Table>().map_err(|e| Error::Syntax {
        path: None,
        line: e
            .span()
            .map(|span| text.get(..span.start).map_or(0, |s| s.matches('\n').count()) + 1),
        message: e.message().trim().to_owned(),
    })
}

/// An entry's table with its `key` already taken out and held in wiped memory, so that no copy
/// of a key survives whichever check fails first.
pub(crate) struct RawEntry {
    table: Table,
    key: Option<Result<Zeroizing<String>, &'static str>>,
}

impl RawEntry {
    pub(crate) fn new(mut table: Table) -> Self {
        let key = table.remove("key").map(|value| match value {
            Value::String(s) => Ok(Zeroizing::new(s)),
            other => Err(other.type_str()),
        });
        RawEntry { table, key }
    }

    /// Checks every field; `entry` is the 1-based position in a keyring, `None` in a key file
    /// (which has no `retire_at` nor `revoked`). A revoked entry needs only `device` and
    /// `key_id`: whatever else it still holds (`algorithm`, `key`, `retire_at`) is not checked,
    /// so that a revocation never fails on the key it is meant to remove, and is dropped.
    pub(crate) fn validate(self, entry: Option<usize>) -> Result<KeyringEntry, Error> {
        let bad = |field: &str, problem: String| Error::InvalidField {
            path: None,
            entry,
            field: field.to_owned(),
            problem,
        };
        let fields: &[&str] = if entry.is_some() { &KEYRING_FIELDS } else { &FIELDS };
        if let Some(unknown) = self.table.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(if KEYRING_FIELDS.contains(&unknown.as_str()) {
                bad(unknown, "belongs in the server's keyring, not in a node's key file".into())
            } else {
                bad(unknown, format!("is not part of a key entry (fields: {})", fields.join(", ")))
            });
        }
        let missing = |field: &str| bad(field, "is missing".into());
        let device = match self.table.get("device") {
            None => return Err(missing("device")),
            Some(Value::String(s)) => DeviceId::new(s).ok(),
            Some(_) => None,
        }
        .ok_or_else(|| {
            bad("device", "must be a string of 1 to 32 characters from A-Z a-z 0-9 - _".into())
        })?;
        let key_id = match self.table.get("key_id") {
            None => return Err(missing("key_id")),
            Some(Value::Integer(i)) => u8::try_from(*i)
                .map_err(|_| bad("key_id", format!("must be an integer from 0 to 255, not {i}"))),
            Some(other) => Err(bad(
                "key_id",
                format!("must be an integer from 0 to 255, not a {}", other.type_str()),
            )),
        }?;
        let key_id = KeyId(key_id);
        let revoked = match self.table.get("revoked") {
            None => false,
            Some(Value::Boolean(revoked)) => *revoked,
            Some(other) => {
                return Err(bad(
                    "revoked",
                    format!("must be true or false, not a {}", other.type_str()),
                ));
            }
        };
        if revoked {
            return Ok(KeyringEntry::Revoked(RevokedKey { device, key_id }));
        }
        let retire_at = match self.table.get("retire_at") {
            None => None,
            // A bare TOML date-time (retire_at = 2025-07-01T12:00:00Z) is accepted too.
            Some(Value::String(s)) => Some(parse_retire_at(s).ok_or_else(|| bad_retire_at(entry))?),
            Some(Value::Datetime(d)) => {
                Some(parse_retire_at(&d.to_string()).ok_or_else(|| bad_retire_at(entry))?)
            }
            Some(other) => {
                return Err(bad(
                    "retire_at",
                    format!(
                        "must be an RFC 3339 UTC timestamp such as \"2025-07-01T12:00:00Z\", \
                         not a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let algorithm = match self.table.get("algorithm") {
            None => return Err(missing("algorithm")),
            Some(Value::String(s)) => s.parse::<Algorithm>().ok(),
            Some(_) => None,
        }
        .ok_or_else(|| {
            bad("algorithm", "must be \"AES-128-GCM\" or \"ChaCha20-Poly1305\"".into())
        })?;
        let hex = match self.key {
            None => return Err(missing("key")),
            Some(Err(kind)) => {
                return Err(bad("key", format!("must be a string of hex digits, not a {kind}")));
            }
            Some(Ok(hex)) => hex,
        };
        let mut secret = SecretKey::zeroed(algorithm);
        let slot = secret.bytes_mut();
        if hex.len() != 2 * slot.len() {
            return Err(bad(
                "key",
                format!(
                    "must be {} hex digits ({} bytes) for {algorithm}, found {} characters",
                    2 * slot.len(),
                    slot.len(),
                    hex.chars().count()
                ),
            ));
        }
        hex::decode_to_slice(hex.as_bytes(), slot)
            .map_err(|_| bad("key", "must hold hex digits only (0-9, a-f or A-F)".into()))?;
        Ok(KeyringEntry::Key(KeyEntry { device, key_id, algorithm, retire_at, key: secret }))
    }
}

/// An RFC 3339 timestamp with an offset (`Z` or e.g. `+02:00`, taken to UTC); `None` otherwise.
fn parse_retire_at(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>().ok()
}

fn bad_retire_at(entry: Option<usize>) -> Error {
    Error::InvalidField {
        path: None,
        entry,
        field: "retire_at".into(),
        problem: "must be an RFC 3339 UTC timestamp such as \"2025-07-01T12:00:00Z\" (date, \
                  time and offset)"
            .into(),
    }
}
