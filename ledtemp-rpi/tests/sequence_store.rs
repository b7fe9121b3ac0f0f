//! The file-backed sequence store across crashes at every point of a write, damaged files and
//! many reboots: a sequence number (a nonce) is never handed out twice.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ledtemp_core::{SequenceCounter, SequenceStore};
use ledtemp_rpi::{Error, FileSequenceStore, format_sequence_file};

fn seq_path(dir: &Path) -> PathBuf {
    dir.join("kitchen-pi.seq")
}

/// What a crash in the middle of `write_private_file` leaves: a temporary file beside the real
/// one, holding `contents` (possibly cut short).
fn leave_temp_file(path: &Path, tag: u64, contents: &[u8]) {
    let name = format!(".{}.tmp-{tag:016x}", path.file_name().unwrap().to_str().unwrap());
    fs::write(path.with_file_name(name), contents).unwrap();
}

#[test]
fn a_missing_file_is_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileSequenceStore::new(seq_path(dir.path()));
    assert_eq!(store.load().unwrap(), None);
    let mut counter = SequenceCounter::resume(&mut store, 16).unwrap();
    assert_eq!(counter.next(&mut store).unwrap().get(), 0);
}

#[test]
fn persist_writes_one_private_checksummed_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    let mut store = FileSequenceStore::new(&path);
    store.persist(1_048_576).unwrap();
    assert_eq!(store.load().unwrap(), Some(1_048_576));
    assert_eq!(fs::read_to_string(&path).unwrap(), format_sequence_file(1_048_576));
    assert!(fs::read_to_string(&path).unwrap().starts_with("ledtemp-sequence-v1 1048576 "));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    store.persist(2_000_000).unwrap();
    assert_eq!(store.load().unwrap(), Some(2_000_000));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left");
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    let mut store = FileSequenceStore::new(&path);
    store.persist(100).unwrap();
    // Crashes while writing the temporary file, after writing it, before the rename.
    let new = format_sequence_file(200);
    leave_temp_file(&path, 1, b"");
    leave_temp_file(&path, 2, &new.as_bytes()[..7]);
    leave_temp_file(&path, 3, new.as_bytes());
    assert_eq!(store.load().unwrap(), Some(100));
    // The node resumes above the old mark and persists past the leftovers.
    let mut counter = SequenceCounter::resume(&mut store, 50).unwrap();
    assert_eq!(counter.next(&mut store).unwrap().get(), 100);
    assert_eq!(store.load().unwrap(), Some(150));
}

#[test]
fn a_crash_before_the_first_rename_is_still_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    leave_temp_file(&path, 9, &format_sequence_file(64).as_bytes()[..12]);
    let mut store = FileSequenceStore::new(&path);
    assert_eq!(store.load().unwrap(), None);
    // Nothing was handed out before the first persist returned, so 0 is still unused.
    let mut counter = SequenceCounter::resume(&mut store, 64).unwrap();
    assert_eq!(counter.next(&mut store).unwrap().get(), 0);
}

#[test]
fn a_damaged_file_is_an_error_never_a_restart_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    let good = format_sequence_file(4096);
    let damaged: [&[u8]; 6] = [
        b"",
        &good.as_bytes()[..good.len() / 2],
        b"4096\n",
        b"\0\0\0\0\0\0\0\0",
        &[0xff; 100],
        b"ledtemp-sequence-v1 4097 00000000\n",
    ];
    for bytes in damaged {
        fs::write(&path, bytes).unwrap();
        let mut store = FileSequenceStore::new(&path);
        let err = store.load().unwrap_err();
        assert!(
            matches!(&err, Error::CorruptSequenceFile { path: Some(p), .. } if *p == path),
            "{bytes:?}: {err:?}"
        );
        assert!(err.to_string().contains("nonces"), "{err}");
        assert!(SequenceCounter::resume(&mut store, 16).is_err());
    }
}

#[test]
fn an_unreadable_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    fs::create_dir(&path).unwrap();
    let mut store = FileSequenceStore::new(&path);
    assert!(matches!(store.load(), Err(Error::Io { .. })));
    assert!(store.persist(5).is_err());
}

#[test]
fn a_missing_directory_hands_out_nothing_until_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut store = FileSequenceStore::new(seq_path(&state));
    assert_eq!(store.load().unwrap(), None);
    let err = store.persist(16).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let mut counter = SequenceCounter::resume(&mut store, 16).unwrap();
    assert!(counter.next(&mut store).is_err());
    assert_eq!(counter.peek(), 0);
    fs::create_dir(&state).unwrap();
    assert_eq!(counter.next(&mut store).unwrap().get(), 0);
    assert_eq!(store.load().unwrap(), Some(16));
}

/// Where a simulated power cut hits a `persist`.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// While or after writing the temporary file, before the rename: the old mark stays.
    BeforeRename { cut: usize },
    /// After the rename, before `persist` returned: the new mark is there, nothing below it
    /// was handed out.
    AfterRename,
}

/// A `FileSequenceStore` whose n-th persist is cut by a crash.
struct CrashingStore {
    inner: FileSequenceStore,
    crash_at: Option<(u32, Crash)>,
    persists: u32,
    tag: u64,
}

impl SequenceStore for CrashingStore {
    type Error = Error;
    fn load(&mut self) -> Result<Option<u64>, Error> {
        self.inner.load()
    }
    fn persist(&mut self, high_water: u64) -> Result<(), Error> {
        self.persists += 1;
        match self.crash_at {
            Some((n, crash)) if n == self.persists => {
                match crash {
                    Crash::BeforeRename { cut } => {
                        let text = format_sequence_file(high_water);
                        let cut = cut.min(text.len());
                        leave_temp_file(self.inner.path(), self.tag, &text.as_bytes()[..cut]);
                    }
                    Crash::AfterRename => self.inner.persist(high_water)?,
                }
                Err(Error::CorruptSequenceFile { path: None, problem: "simulated power cut" })
            }
            _ => self.inner.persist(high_water),
        }
    }
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn no_sequence_number_is_handed_out_twice_across_reboots_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = seq_path(dir.path());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut used = BTreeSet::new();
    let mut crashes = 0;
    for boot in 0..400 {
        let block = 1 + rng.below(16) as u32;
        let crash_at = match rng.below(4) {
            0 => Some((1 + rng.below(3) as u32, Crash::AfterRename)),
            1 => {
                Some((1 + rng.below(3) as u32, Crash::BeforeRename { cut: rng.below(40) as usize }))
            }
            _ => None, // a clean power cut between two frames
        };
        let mut store = CrashingStore {
            inner: FileSequenceStore::new(&path),
            crash_at,
            persists: 0,
            tag: boot,
        };
        let mut counter = SequenceCounter::resume(&mut store, block).unwrap();
        for _ in 0..rng.below(50) {
            match counter.next(&mut store) {
                Ok(n) => assert!(used.insert(n.get()), "boot {boot}: {} handed out twice", n.get()),
                Err(_) => {
                    crashes += 1;
                    break; // the process died in the middle of persist
                }
            }
        }
    }
    assert!(crashes > 50, "only {crashes} crashes simulated");
    assert!(used.len() > 5000, "only {} numbers handed out", used.len());
    // Every number handed out is below the stored mark: a reboot now cannot reuse any.
    let mark = FileSequenceStore::new(&path).load().unwrap().unwrap();
    assert!(used.last().is_some_and(|&last| last < mark));
}
