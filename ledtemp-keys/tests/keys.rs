//! Key files and keyrings against docs/keys.md: round trips, every validation error, permissions,
#![allow(clippy::unwrap_used, clippy::panic)]
//! no overwriting without being asked, and no panic on any text.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ledtemp_core::{
    Algorithm, AnyCodec, Codec, DeviceId, KeyId, LedChange, LedName, LedState, MAX_FRAME_LEN,
    Message, SequenceNumber, Topic, Uptime,
};
use ledtemp_keys::{
    Error, KeyEntry, Keyring, check_private, load_key_file, parse_key_file, write_key_file,
};
use proptest::prelude::*;

const CHACHA_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const AES_KEY: &str = "00112233445566778899aabbccddeeff";

fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn entry(text: &str, algorithm: &str, key: &str) -> String {
    format!(
        "[[key]]\ndevice = \"{text}\"\nkey_id = 1\nalgorithm = \"{algorithm}\"\nkey = \"{key}\"\n"
    )
}

/// A valid keyring of two entries with `second` as the text of the second `[[key]]` table.
fn keyring_with_second(second: &str) -> String {
    format!("{}\n[[key]]\n{second}", entry("kitchen-pi", "ChaCha20-Poly1305", CHACHA_KEY))
}

#[test]
fn key_file_round_trips_for_both_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, len) in [(Algorithm::ChaCha20Poly1305, 32), (Algorithm::Aes128Gcm, 16)] {
        let path = dir.path().join(format!("{algorithm}.key"));
        let written = KeyEntry::generate(device("kitchen-pi"), KeyId(7), algorithm).unwrap();
        write_key_file(&path, &written, false).unwrap();
        assert_eq!(mode(&path), 0o600);
        let read = load_key_file(&path).unwrap();
        assert_eq!(read.device, written.device);
        assert_eq!(read.key_id, KeyId(7));
        assert_eq!(read.algorithm, algorithm);
        assert_eq!(read.key_bytes().len(), len);
        assert_eq!(read.key_bytes(), written.key_bytes());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# ledtemp key for device kitchen-pi. Secret: keep it mode 0600.")
        );
        assert!(text.contains(&format!("algorithm = \"{algorithm}\"")));
    }
}

#[test]
fn the_documented_examples_parse() {
    let node = parse_key_file(&format!(
        "# ledtemp key for device kitchen-pi. Secret: keep it mode 0600.\n\
         device = \"kitchen-pi\"\nkey_id = 1\nalgorithm = \"ChaCha20-Poly1305\"\n\
         key = \"{CHACHA_KEY}\"\n"
    ))
    .unwrap();
    assert_eq!(node.key_bytes(), hex::decode(CHACHA_KEY).unwrap());
    let keyring = Keyring::parse(&format!(
        "{}\n{}",
        entry("kitchen-pi", "ChaCha20-Poly1305", CHACHA_KEY),
        entry("mcu-7", "AES-128-GCM", AES_KEY)
    ))
    .unwrap();
    let mcu = keyring.get(&device("mcu-7"), KeyId(1)).unwrap();
    assert_eq!(mcu.algorithm, Algorithm::Aes128Gcm);
    assert_eq!(mcu.key_bytes(), hex::decode(AES_KEY).unwrap());
    assert!(Keyring::parse("").unwrap().entries().is_empty());
    assert!(Keyring::parse("# no keys yet\n").unwrap().entries().is_empty());
}

#[test]
fn keyring_round_trips_and_answers_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.toml");
    let mut keyring = Keyring::new();
    for (name, key_id, algorithm) in [
        ("kitchen-pi", 1, Algorithm::ChaCha20Poly1305),
        ("kitchen-pi", 2, Algorithm::ChaCha20Poly1305),
        ("mcu-7", 1, Algorithm::Aes128Gcm),
    ] {
        keyring
            .add(KeyEntry::generate(device(name), KeyId(key_id), algorithm).unwrap(), false)
            .unwrap();
    }
    keyring.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let loaded = Keyring::load(&path).unwrap();
    assert_eq!(loaded.entries().len(), 3);
    for (a, b) in keyring.keys().zip(loaded.keys()) {
        assert_eq!((&a.device, a.key_id, a.algorithm), (&b.device, b.key_id, b.algorithm));
        assert_eq!(a.key_bytes(), b.key_bytes());
    }
    assert!(loaded.contains_device(&device("mcu-7")));
    assert!(!loaded.contains_device(&device("stranger")));
    assert!(loaded.get(&device("kitchen-pi"), KeyId(2)).is_some());
    assert!(loaded.get(&device("kitchen-pi"), KeyId(3)).is_none());
    assert!(loaded.get(&device("mcu-7"), KeyId(2)).is_none());
}

#[test]
fn codec_of_an_entry_talks_to_the_codec_of_the_same_key() {
    let node = KeyEntry::generate(device("pi"), KeyId(3), Algorithm::ChaCha20Poly1305).unwrap();
    let server = AnyCodec::new(Algorithm::ChaCha20Poly1305, KeyId(3), node.key_bytes()).unwrap();
    let message = Message::Led(LedChange {
        led: LedName::new("red").unwrap(),
        state: LedState::On,
        uptime: Uptime(5),
    });
    let mut frame = [0u8; MAX_FRAME_LEN];
    let codec = node.codec();
    assert_eq!(codec.algorithm(), Algorithm::ChaCha20Poly1305);
    let len =
        codec.seal(&node.device, SequenceNumber::new(9).unwrap(), &message, &mut frame).unwrap();
    let topic = message.topic(&node.device).to_topic_string();
    let opened = server.open(&Topic::parse(&topic).unwrap(), &frame[..len]).unwrap();
    assert_eq!(opened.message, message);
    let aes = KeyEntry::new(device("m"), KeyId(1), Algorithm::Aes128Gcm, &[1; 16]).unwrap();
    assert_eq!(aes.codec().algorithm(), Algorithm::Aes128Gcm);
}

#[test]
fn new_checks_the_key_length_and_generate_makes_distinct_keys() {
    let err = KeyEntry::new(device("pi"), KeyId(1), Algorithm::Aes128Gcm, &[0; 32]).unwrap_err();
    assert!(matches!(err, Error::InvalidKeyLength { expected: 16, found: 32, .. }), "{err:?}");
    let a = KeyEntry::generate(device("a"), KeyId(1), Algorithm::ChaCha20Poly1305).unwrap();
    let b = KeyEntry::generate(device("a"), KeyId(1), Algorithm::ChaCha20Poly1305).unwrap();
    assert_ne!(a.key_bytes(), b.key_bytes());
}

#[test]
fn debug_and_errors_never_show_the_key() {
    let entry = KeyEntry::new(device("pi"), KeyId(1), Algorithm::Aes128Gcm, &[0xab; 16]).unwrap();
    let debug = format!("{entry:?}");
    assert!(!debug.contains("ab") && !debug.contains("171"), "{debug}");
    let keyring = Keyring::parse(&entry_text_with_key(AES_KEY)).unwrap();
    assert!(!format!("{keyring:?}").contains("aabbcc"));
    // A syntax error on the key's line: the message gives the line, not the text.
    let err = Keyring::parse(&format!("[[key]]\nkey = \"{AES_KEY}\n")).unwrap_err();
    assert!(matches!(err, Error::Syntax { line: Some(2), .. }), "{err:?}");
    assert!(!err.to_string().contains("aabbcc"), "{err}");
    // A key of the wrong length or with a non-hex digit: described, never quoted.
    for key in ["00112233445566778899aabbccddee", "00112233445566778899aabbccddeezz"] {
        let err = Keyring::parse(&entry_text_with_key(key)).unwrap_err();
        assert!(!err.to_string().contains("aabbcc"), "{err}");
    }
}

fn entry_text_with_key(key: &str) -> String {
    entry("mcu-7", "AES-128-GCM", key)
}

/// Every rule of docs/keys.md, broken in the second entry of a keyring: the error names entry 2
/// and the field.
#[test]
fn every_validation_error_names_the_entry_and_the_field() {
    const D: &str = "\"mcu\"";
    const A: &str = "\"AES-128-GCM\"";
    const K: &str = "\"00112233445566778899aabbccddeeff\"";
    let long_device = format!("\"{}\"", "x".repeat(33));
    let chacha_key = format!("\"{CHACHA_KEY}\"");
    // What the case breaks, the field the error must name, then device, key_id, algorithm and
    // key as TOML values (`None`: left out) and any extra line.
    let cases: Vec<(&str, &str, [Option<&str>; 4], &str)> = vec![
        ("empty device", "device", [Some("\"\""), Some("1"), Some(A), Some(K)], ""),
        ("device with a slash", "device", [Some("\"a/b\""), Some("1"), Some(A), Some(K)], ""),
        ("device wildcard", "device", [Some("\"#\""), Some("1"), Some(A), Some(K)], ""),
        ("device too long", "device", [Some(&long_device), Some("1"), Some(A), Some(K)], ""),
        ("device not a string", "device", [Some("7"), Some("1"), Some(A), Some(K)], ""),
        ("key id too big", "key_id", [Some(D), Some("256"), Some(A), Some(K)], ""),
        ("key id negative", "key_id", [Some(D), Some("-1"), Some(A), Some(K)], ""),
        ("key id a string", "key_id", [Some(D), Some("\"1\""), Some(A), Some(K)], ""),
        (
            "unknown algorithm",
            "algorithm",
            [Some(D), Some("1"), Some("\"AES-256-GCM\""), Some(K)],
            "",
        ),
        ("algorithm not a string", "algorithm", [Some(D), Some("1"), Some("1"), Some(K)], ""),
        ("key too short", "key", [Some(D), Some("1"), Some(A), Some("\"0011\"")], ""),
        ("ChaCha key for AES", "key", [Some(D), Some("1"), Some(A), Some(&chacha_key)], ""),
        (
            "AES key for ChaCha",
            "key",
            [Some(D), Some("1"), Some("\"ChaCha20-Poly1305\""), Some(K)],
            "",
        ),
        ("key not hex", "key", [Some(D), Some("1"), Some(A), Some("\"0011223344556677zz\"")], ""),
        ("key not a string", "key", [Some(D), Some("1"), Some(A), Some("[1, 2]")], ""),
        ("unknown field", "iv", [Some(D), Some("1"), Some(A), Some(K)], "iv = \"00\""),
        ("missing device", "device", [None, Some("1"), Some(A), Some(K)], ""),
        ("missing key id", "key_id", [Some(D), None, Some(A), Some(K)], ""),
        ("missing algorithm", "algorithm", [Some(D), Some("1"), None, Some(K)], ""),
        ("missing key", "key", [Some(D), Some("1"), Some(A), None], ""),
    ];
    for (what, field, values, extra) in cases {
        let mut second = String::new();
        for (name, value) in ["device", "key_id", "algorithm", "key"].into_iter().zip(values) {
            if let Some(value) = value {
                second.push_str(&format!("{name} = {value}\n"));
            }
        }
        second.push_str(extra);
        let err = Keyring::parse(&keyring_with_second(&second)).unwrap_err();
        match &err {
            Error::InvalidField { entry: Some(2), field: f, .. } if f == field => {}
            other => panic!("{what}: expected entry 2, field {field}, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("entry 2") && message.contains(&format!("`{field}`")),
            "{what}: {message}"
        );
    }
}

#[test]
fn a_key_file_error_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pi.key");
    fs::write(&path, "device = \"pi\"\nkey_id = 1\nalgorithm = \"ROT13\"\nkey = \"00\"\n").unwrap();
    set_mode(&path, 0o600);
    let err = load_key_file(&path).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidField { path: Some(p), entry: None, field, .. }
            if p == &path && field == "algorithm"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!("{}: field `algorithm`", path.display())),
        "{err}"
    );
}

#[test]
fn a_keyring_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.toml");
    fs::write(&path, keyring_with_second("device = \"x\"\n")).unwrap();
    set_mode(&path, 0o600);
    let message = Keyring::load(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: [[key]] entry 2: field `key_id`", path.display())),
        "{message}"
    );
}

#[test]
fn malformed_structure_is_reported_not_panicked_on() {
    for (text, field) in [
        ("key = 5\n", "key"),
        ("key = [1, 2]\n", "key"),
        ("device = \"kitchen-pi\"\n", "device"),
        ("[keys]\n", "keys"),
    ] {
        match Keyring::parse(text) {
            Err(Error::InvalidField { entry: None, field: f, .. }) => {
                assert_eq!(f, field, "{text}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(Keyring::parse("[[key]\n"), Err(Error::Syntax { line: Some(1), .. })));
    // A keyring given where a key file is expected.
    let err = parse_key_file(&entry("pi", "AES-128-GCM", AES_KEY)).unwrap_err();
    assert!(matches!(err, Error::InvalidField { entry: None, .. }), "{err:?}");
}

#[test]
fn two_entries_with_one_device_and_key_id_are_refused() {
    let text = format!(
        "{}\n{}\n{}",
        entry("kitchen-pi", "ChaCha20-Poly1305", CHACHA_KEY),
        entry("mcu-7", "AES-128-GCM", AES_KEY),
        entry("kitchen-pi", "AES-128-GCM", "ffeeddccbbaa99887766554433221100"),
    );
    let err = Keyring::parse(&text).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateEntry { entry: 3, first: 1, key_id: KeyId(1), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("entry 3") && err.to_string().contains("entry 1"), "{err}");
}

#[test]
fn the_same_key_under_two_devices_is_refused() {
    let text = format!(
        "{}\n{}\n{}",
        entry("mcu-1", "AES-128-GCM", "ffeeddccbbaa99887766554433221100"),
        entry("mcu-7", "AES-128-GCM", AES_KEY),
        entry("mcu-8", "AES-128-GCM", &AES_KEY.to_uppercase()),
    );
    let err = Keyring::parse(&text).unwrap_err();
    assert!(
        matches!(&err, Error::SharedKey { entry: 3, first: 2, device, first_device, .. }
            if device.as_str() == "mcu-8" && first_device.as_str() == "mcu-7"),
        "{err:?}"
    );
    assert!(err.to_string().contains("mcu-7") && !err.to_string().contains("aabbcc"), "{err}");

    // And through `add`.
    let mut keyring = Keyring::parse(&entry("mcu-7", "AES-128-GCM", AES_KEY)).unwrap();
    let copy = KeyEntry::new(
        device("mcu-8"),
        KeyId(1),
        Algorithm::Aes128Gcm,
        &hex::decode(AES_KEY).unwrap(),
    )
    .unwrap();
    assert!(matches!(keyring.add(copy, true), Err(Error::SharedKey { entry: 2, first: 1, .. })));
    assert_eq!(keyring.entries().len(), 1);
}

#[test]
fn group_or_world_readable_files_are_refused_naming_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("pi.key");
    let ring_path = dir.path().join("keyring.toml");
    let entry = KeyEntry::generate(device("pi"), KeyId(1), Algorithm::Aes128Gcm).unwrap();
    write_key_file(&key_path, &entry, false).unwrap();
    let mut keyring = Keyring::new();
    keyring.add(entry, false).unwrap();
    keyring.save(&ring_path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o700 | 0o001] {
        set_mode(&key_path, mode);
        set_mode(&ring_path, mode);
        for err in [
            load_key_file(&key_path).unwrap_err(),
            Keyring::load(&ring_path).unwrap_err(),
            check_private(&key_path).unwrap_err(),
        ] {
            assert!(matches!(err, Error::Permissions { mode: m, .. } if m == mode), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains("chmod 600") && message.contains(&format!("{mode:04o}")),
                "{message}"
            );
        }
    }
    set_mode(&key_path, 0o400);
    assert!(load_key_file(&key_path).is_ok());
    assert!(check_private(&dir.path().join("missing.key")).is_err());
}

#[test]
fn nothing_is_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pi.key");
    let first = KeyEntry::generate(device("pi"), KeyId(1), Algorithm::Aes128Gcm).unwrap();
    let second = KeyEntry::generate(device("pi"), KeyId(1), Algorithm::Aes128Gcm).unwrap();
    write_key_file(&path, &first, false).unwrap();
    let err = write_key_file(&path, &second, false).unwrap_err();
    assert!(matches!(&err, Error::FileExists { path: p } if *p == path), "{err:?}");
    assert_eq!(load_key_file(&path).unwrap().key_bytes(), first.key_bytes());
    write_key_file(&path, &second, true).unwrap();
    assert_eq!(load_key_file(&path).unwrap().key_bytes(), second.key_bytes());

    let mut keyring = Keyring::new();
    keyring.add(first.clone(), false).unwrap();
    let err = keyring.add(second.clone(), false).unwrap_err();
    assert!(matches!(err, Error::EntryExists { key_id: KeyId(1), .. }), "{err:?}");
    assert_eq!(keyring.keys().next().unwrap().key_bytes(), first.key_bytes());
    keyring.add(second.clone(), true).unwrap();
    assert_eq!(keyring.entries().len(), 1);
    assert_eq!(keyring.keys().next().unwrap().key_bytes(), second.key_bytes());
}

#[test]
fn non_utf8_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.toml");
    fs::write(&path, b"[[key]]\ndevice = \"\xff\"\n").unwrap();
    set_mode(&path, 0o600);
    assert!(matches!(
        Keyring::load(&path),
        Err(Error::Syntax { line: Some(2), path: Some(_), .. })
    ));
    let missing = dir.path().join("nope.toml");
    assert!(matches!(Keyring::load(&missing), Err(Error::Io { .. })));
}

proptest! {
    #[test]
    fn keyring_parse_never_panics_on_any_text(text in "\\PC*") {
        let _ = Keyring::parse(&text);
        let _ = parse_key_file(&text);
    }

    #[test]
    fn keyring_parse_never_panics_on_near_valid_text(
        device in "[A-Za-z0-9_#/ -]{0,40}",
        key_id in any::<i64>(),
        algorithm in prop::sample::select(vec!["AES-128-GCM", "ChaCha20-Poly1305", "aes", "", "x"]),
        key in "[0-9a-fA-FxZ ]{0,70}",
        cut in any::<prop::sample::Index>(),
    ) {
        let text = format!(
            "[[key]]\ndevice = \"{device}\"\nkey_id = {key_id}\n\
             algorithm = \"{algorithm}\"\nkey = \"{key}\"\n"
        );
        let _ = Keyring::parse(&text);
        let end = cut.index(text.len() + 1);
        if let Some(prefix) = text.get(..end) {
            let _ = Keyring::parse(prefix);
        }
    }
}
