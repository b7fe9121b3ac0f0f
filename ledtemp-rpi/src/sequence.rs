//! The node's sequence-number reservation, in a small file that survives crashes.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ledtemp_core::{MAX_SEQUENCE, SequenceStore};

use crate::Error;

/// First word of the file: names the format, so no other file is ever taken for one.
const MAGIC: &str = "ledtemp-sequence-v1";

/// Longest valid file: magic, space, 20 digits, space, 8 hex digits, newline.
const MAX_LEN: usize = MAGIC.len() + 1 + 20 + 1 + 8 + 1;

/// A [`SequenceStore`] in a file: the node's reservation high-water mark survives reboots and
/// crashes, so no sequence number (and with it no nonce) is ever used twice.
///
/// The file is one line of text, e.g. `ledtemp-sequence-v1 1048576 5f1d33a2`: the format's name,
/// the high-water mark in decimal and a CRC-32 of what precedes it, in hex.
///
/// - [`persist`](SequenceStore::persist) writes a temporary file in the same directory, fsyncs
///   it, renames it over the file and fsyncs the directory (`ledtemp_keys::write_private_file`,
///   mode 0600). After a crash at any point the file holds the old or the new mark, never a torn
///   or empty one; a temporary file left behind (`.<name>.tmp-<random>`) is ignored.
/// - [`load`](SequenceStore::load) returns `None` when the file does not exist: a new key. Keep
///   the file with the key: deleting it while the key is in use makes the node start again at 0
///   and reuse nonces. A file that exists but is damaged or unreadable is an error
///   ([`Error::CorruptSequenceFile`], [`Error::Io`]), never a silent restart at 0.
/// - The directory must exist; `persist` does not create it.
///
/// ```
/// use ledtemp_core::{SequenceCounter, SequenceStore};
/// use ledtemp_rpi::FileSequenceStore;
///
/// let dir = tempfile::tempdir()?;
/// let mut store = FileSequenceStore::new(dir.path().join("kitchen-pi.seq"));
/// let mut counter = SequenceCounter::resume(&mut store, 1024)?;
/// assert_eq!(counter.next(&mut store)?.get(), 0);
/// assert_eq!(store.load()?, Some(1024)); // reserved before 0 was handed out
///
/// // After a reboot: resume above the reservation.
/// let mut counter = SequenceCounter::resume(&mut store, 1024)?;
/// assert_eq!(counter.next(&mut store)?.get(), 1024);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileSequenceStore {
    path: PathBuf,
}

impl FileSequenceStore {
    /// A store in the file at `path`. Nothing is read or written yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSequenceStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SequenceStore for FileSequenceStore {
    type Error = Error;

    fn load(&mut self) -> Result<Option<u64>, Error> {
        let path = &self.path;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path: path.clone(), action: "open", source: e }),
        };
        let mut bytes = Vec::with_capacity(MAX_LEN + 1);
        file.take(MAX_LEN as u64 + 1).read_to_end(&mut bytes).map_err(|e| Error::Io {
            path: path.clone(),
            action: "read",
            source: e,
        })?;
        parse_sequence_file(&bytes).map(Some).map_err(|e| e.in_file(path))
    }

    fn persist(&mut self, high_water: u64) -> Result<(), Error> {
        let text = format_sequence_file(high_water);
        ledtemp_keys::write_private_file(&self.path, text.as_bytes(), true).map_err(Error::from)
    }
}

/// The file's contents for `high_water`: `ledtemp-sequence-v1 <decimal> <crc32 hex>\n`.
pub fn format_sequence_file(high_water: u64) -> String {
    let body = format!("{MAGIC} {high_water}");
    format!("{body} {:08x}\n", crc32(body.as_bytes()))
}

/// Parses what [`format_sequence_file`] writes, refusing anything else: empty, cut short, a
/// wrong checksum, a mark above what a counter can reserve (`MAX_SEQUENCE + 1`), or stray bytes.
pub fn parse_sequence_file(bytes: &[u8]) -> Result<u64, Error> {
    let corrupt = |problem| Error::CorruptSequenceFile { path: None, problem };
    if bytes.is_empty() {
        return Err(corrupt("empty"));
    }
    if bytes.len() > MAX_LEN {
        return Err(corrupt("longer than a sequence file"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not text"))?;
    let line = text.strip_suffix('\n').ok_or_else(|| corrupt("cut short (no final newline)"))?;
    let (body, check) = line.rsplit_once(' ').ok_or_else(|| corrupt("no checksum"))?;
    let (magic, digits) = body.split_once(' ').ok_or_else(|| corrupt("no high-water mark"))?;
    if magic != MAGIC {
        return Err(corrupt("not a ledtemp sequence file"));
    }
    let valid_check = check.len() == 8 && check.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_check || u32::from_str_radix(check, 16).ok() != Some(crc32(body.as_bytes())) {
        return Err(corrupt("checksum mismatch"));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt("high-water mark is not a number"));
    }
    match digits.parse::<u64>() {
        Ok(value) if value <= MAX_SEQUENCE + 1 => Ok(value),
        _ => Err(corrupt("high-water mark beyond the 40-bit sequence space")),
    }
}

/// CRC-32 (IEEE 802.3, as in zlib and PNG), bit by bit: the input is one short line.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn formats_and_parses_back() {
        for value in [0, 1, 1024, MAX_SEQUENCE, MAX_SEQUENCE + 1] {
            let text = format_sequence_file(value);
            assert!(text.starts_with("ledtemp-sequence-v1 ") && text.ends_with('\n'), "{text}");
            assert_eq!(parse_sequence_file(text.as_bytes()).unwrap(), value);
        }
    }

    #[test]
    fn refuses_every_damage() {
        let good = format_sequence_file(1_048_576);
        let mut flipped = good.clone().into_bytes();
        flipped[22] ^= 0x01; // a digit of the mark
        let beyond = {
            let body = format!("{MAGIC} {}", MAX_SEQUENCE + 2);
            format!("{body} {:08x}\n", crc32(body.as_bytes()))
        };
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            good.as_bytes()[..good.len() - 1].to_vec(),
            good.as_bytes()[..10].to_vec(),
            flipped,
            good.replace("v1", "v2").into_bytes(),
            format!("{good}{good}").into_bytes(),
            vec![0; 8],
            vec![0xff; 40],
            beyond.into_bytes(),
            "ledtemp-sequence-v1  00000000\n".into(),
        ];
        for bytes in cases {
            assert!(
                matches!(parse_sequence_file(&bytes), Err(Error::CorruptSequenceFile { .. })),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
