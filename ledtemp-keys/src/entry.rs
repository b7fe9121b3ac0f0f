//! One key entry: its validation from TOML, its text, the node's key file.

use std::fmt::{self, Write as _};
use std::path::Path;

use ledtemp_core::{AesGcmCodec, Algorithm, AnyCodec, ChaChaCodec, DeviceId, KeyId};
use toml::{Table, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;
use crate::file::{read_private, write_private_file};

/// The fields of an entry, in the order they are written.
const FIELDS: [&str; 4] = ["device", "key_id", "algorithm", "key"];

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
/// `Debug`. The public fields are for reading: to change an entry, build a new one. The codec
/// always uses the algorithm the key was checked against at construction.
#[derive(Clone)]
pub struct KeyEntry {
    /// The device the key belongs to.
    pub device: DeviceId,
    /// Which of the device's keys this is (carried in every frame header).
    pub key_id: KeyId,
    /// The AEAD the key is for.
    pub algorithm: Algorithm,
    key: Box<SecretKey>,
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
        Ok(KeyEntry { device, key_id, algorithm, key: secret })
    }

    /// A new entry with a fresh random key from the operating system's random number generator.
    pub fn generate(device: DeviceId, key_id: KeyId, algorithm: Algorithm) -> Result<Self, Error> {
        let mut secret = SecretKey::zeroed(algorithm);
        getrandom::fill(secret.bytes_mut()).map_err(Error::Random)?;
        Ok(KeyEntry { device, key_id, algorithm, key: secret })
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

    /// The node's key file for this entry, as written by [`write_key_file`]. The returned text
    /// holds the key and is wiped when dropped.
    pub fn to_key_file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(256));
        // Writing into a String cannot fail.
        let _ =
            writeln!(text, "# ledtemp key for device {}. Secret: keep it mode 0600.", self.device);
        self.write_fields(&mut text);
        text
    }

    /// Appends `device = ...` to `key = ...`, one per line. Device ids and algorithm names need
    /// no escaping (their characters are restricted) and the hex is written digit by digit, so no
    /// copy of the key is left behind in a serializer's buffers.
    pub(crate) fn write_fields(&self, text: &mut String) {
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
    RawEntry::new(parse_table(text)?).validate(None)
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

    /// Checks every field; `entry` is the 1-based position in a keyring, `None` in a key file.
    pub(crate) fn validate(self, entry: Option<usize>) -> Result<KeyEntry, Error> {
        let bad = |field: &str, problem: String| Error::InvalidField {
            path: None,
            entry,
            field: field.to_owned(),
            problem,
        };
        if let Some(unknown) = self.table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(bad(
                unknown,
                format!("is not part of a key entry (fields: {})", FIELDS.join(", ")),
            ));
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
            .map_err(|_| bad("key", "must hold hex digits (0-9, a-f) only".into()))?;
        Ok(KeyEntry { device, key_id: KeyId(key_id), algorithm, key: secret })
    }
}
