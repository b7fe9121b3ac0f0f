//! The one error type of `ledtemp-keys`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ledtemp_core::{Algorithm, DeviceId, KeyId};

/// Everything that can go wrong with key files and keyrings.
///
/// Errors about a file's contents carry the file's path (`None` when the text did not come from
/// a file, as with [`Keyring::parse`](crate::Keyring::parse)), the entry's position and the field's
/// name. No variant ever holds or prints key material: a problem with a `key` field is described,
/// never quoted.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be opened, read, written, synced, linked or renamed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, e.g. `"read"`.
        action: &'static str,
        /// What the operating system said.
        source: io::Error,
    },
    /// A key file or keyring lets its group or others read, write or execute it (Unix only).
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits, e.g. `0o644`.
        mode: u32,
    },
    /// A path given as a key file or keyring is a directory (or another thing that is not a
    /// regular file).
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A key file or keyring is larger than [`MAX_FILE_LEN`](crate::MAX_FILE_LEN).
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The text is not UTF-8 or not TOML.
    Syntax {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// What the TOML parser said (never the offending text itself).
        message: String,
    },
    /// A field of an entry (or of the file's top level) is missing, unknown or invalid.
    InvalidField {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based position of the `[[key]]` table in a keyring; `None` in a key file or for the
        /// keyring's top level.
        entry: Option<usize>,
        /// The field's name, e.g. `key_id`.
        field: String,
        /// What is wrong with it and what it must be.
        problem: String,
    },
    /// Two keyring entries have the same device and key id.
    DuplicateEntry {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based position of the later entry.
        entry: usize,
        /// 1-based position of the earlier entry.
        first: usize,
        /// The device both name.
        device: DeviceId,
        /// The key id both name.
        key_id: KeyId,
    },
    /// Two keyring entries of different devices have the same key bytes.
    SharedKey {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based position of the later entry.
        entry: usize,
        /// Its device.
        device: DeviceId,
        /// 1-based position of the earlier entry.
        first: usize,
        /// The earlier entry's device.
        first_device: DeviceId,
    },
    /// A key file already exists and overwriting was not asked for.
    FileExists {
        /// The file.
        path: PathBuf,
    },
    /// The keyring already has an entry for this device and key id and replacing was not asked
    /// for.
    EntryExists {
        /// The device.
        device: DeviceId,
        /// The key id.
        key_id: KeyId,
    },
    /// Key bytes of the wrong length for the algorithm.
    InvalidKeyLength {
        /// The algorithm.
        algorithm: Algorithm,
        /// The length it needs, in bytes.
        expected: usize,
        /// The length given, in bytes.
        found: usize,
    },
    /// The operating system's random number generator failed; no key was made.
    Random(getrandom::Error),
    /// The keyring has no entry for the device (to rotate or revoke).
    UnknownDevice {
        /// The device.
        device: DeviceId,
    },
    /// The keyring has no entry for this device and key id (to revoke).
    UnknownKeyId {
        /// The device.
        device: DeviceId,
        /// The key id.
        key_id: KeyId,
    },
    /// The device already has an entry with key id 255, so a rotation has no new key id left.
    KeyIdsExhausted {
        /// The device.
        device: DeviceId,
    },
    /// A rotation would replace a key file that does not hold the device's current key (another
    /// device's key, an older key, or one the keyring does not have), and `--force` was not
    /// given.
    NotCurrentKeyFile {
        /// The key file.
        path: PathBuf,
        /// The device being rotated.
        device: DeviceId,
    },
}

impl Error {
    /// Sets the path of an error about text that turned out to come from `path`.
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        match &mut self {
            Error::Syntax { path, .. }
            | Error::InvalidField { path, .. }
            | Error::DuplicateEntry { path, .. }
            | Error::SharedKey { path, .. } => *path = Some(file.to_path_buf()),
            _ => {}
        }
        self
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), action, source }
    }
}

/// `"<path>: "` or nothing.
struct In<'a>(&'a Option<PathBuf>);

impl fmt::Display for In<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}: ", path.display()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, action, source } => write!(
                f,
                "cannot {action} {}: {source}; check the path and that this user may access it",
                path.display()
            ),
            Error::Permissions { path, mode } => write!(
                f,
                "{} has mode {mode:04o}, so users other than its owner may access it; a key file \
                 or keyring must be private: run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            Error::NotAFile { path } => write!(
                f,
                "{} is a directory, not a key file or keyring: give the path of the file in it \
                 (for example {})",
                path.display(),
                path.join("keyring.toml").display()
            ),
            Error::TooLarge { path } => write!(
                f,
                "{} is larger than {} bytes: it is not a ledtemp key file or keyring",
                path.display(),
                crate::MAX_FILE_LEN
            ),
            Error::Syntax { path, line, message } => {
                write!(f, "{}", In(path))?;
                if let Some(line) = line {
                    write!(f, "line {line}: ")?;
                }
                write!(f, "not valid TOML: {message}; see docs/keys.md for the format")
            }
            Error::InvalidField { path, entry, field, problem } => {
                write!(f, "{}", In(path))?;
                if let Some(entry) = entry {
                    write!(f, "[[key]] entry {entry}: ")?;
                }
                write!(f, "field `{field}` {problem}")
            }
            Error::DuplicateEntry { path, entry, first, device, key_id } => write!(
                f,
                "{}[[key]] entry {entry} repeats device \"{device}\" key_id {} of entry {first}: \
                 remove one (a device's new key needs a new key_id)",
                In(path),
                key_id.0
            ),
            Error::SharedKey { path, entry, device, first, first_device } => write!(
                f,
                "{}[[key]] entry {entry} (device \"{device}\") has the same key as entry {first} \
                 (device \"{first_device}\"): every device needs its own key, so generate a new \
                 one for one of them",
                In(path)
            ),
            Error::FileExists { path } => write!(
                f,
                "{} already exists: refusing to overwrite a key file (remove it first, or use \
                 --force with ledtemp-keys; the old key then stops working)",
                path.display()
            ),
            Error::EntryExists { device, key_id } => write!(
                f,
                "the keyring already has a key for device \"{device}\" with key_id {}: use \
                 another key id to rotate, or --force to replace it",
                key_id.0
            ),
            Error::InvalidKeyLength { algorithm, expected, found } => {
                write!(f, "{algorithm} needs a {expected}-byte key, got {found} bytes")
            }
            Error::Random(e) => write!(
                f,
                "the operating system's random number generator failed ({e}); no key was made, \
                 try again"
            ),
            Error::UnknownDevice { device } => write!(
                f,
                "the keyring has no key for device \"{device}\": check the name and the \
                 --keyring path, or provision the device with `ledtemp-keys add {device}`"
            ),
            Error::UnknownKeyId { device, key_id } => write!(
                f,
                "the keyring has no key_id {} for device \"{device}\": leave out --key-id to \
                 revoke all of the device's keys",
                key_id.0
            ),
            Error::NotCurrentKeyFile { path, device } => write!(
                f,
                "{} does not hold device \"{device}\"'s current key from the keyring: refusing \
                 to replace it (it may be another device's key, or a key the keyring does not \
                 know); check --key-file, or use --force to replace it anyway",
                path.display()
            ),
            Error::KeyIdsExhausted { device } => write!(
                f,
                "device \"{device}\" already has key_id 255, the last one: key ids are never \
                 given out twice (the server keeps a replay window per key id), so provision the \
                 device again under a new device id with `ledtemp-keys add`"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
