//! Rotation and revocation against docs/keys.md: `retire_at` and `revoked` in keyring entries,
//! `Keyring::rotate` and `Keyring::revoke`.
#![allow(clippy::unwrap_used, clippy::panic)]

use jiff::Timestamp;
use ledtemp_core::{Algorithm, DeviceId, KeyId};
use ledtemp_keys::{Error, KeyEntry, Keyring, KeyringEntry, RevokedKey, parse_key_file};

const CHACHA_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const AES_KEY: &str = "00112233445566778899aabbccddeeff";

fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn entry(device: &str, key_id: u8, key: &str, extra: &str) -> String {
    let algorithm = if key.len() == 32 { "AES-128-GCM" } else { "ChaCha20-Poly1305" };
    format!(
        "[[key]]\ndevice = \"{device}\"\nkey_id = {key_id}\nalgorithm = \"{algorithm}\"\n\
         key = \"{key}\"\n{extra}"
    )
}

fn field_error(text: &str) -> (Option<usize>, String, String) {
    match Keyring::parse(text).unwrap_err() {
        Error::InvalidField { entry, field, problem, .. } => (entry, field, problem),
        other => panic!("{other:?}"),
    }
}

#[test]
fn retire_at_and_revoked_parse_and_round_trip() {
    let text = format!(
        "{}\n{}\n{}\n{}",
        entry("kitchen-pi", 1, CHACHA_KEY, "retire_at = \"2030-01-02T03:04:05Z\"\n"),
        entry("kitchen-pi", 2, AES_KEY, ""),
        // A bare TOML date-time, and an offset taken to UTC.
        "[[key]]\ndevice = \"mcu-7\"\nkey_id = 1\nrevoked = true\n",
        entry(
            "garage",
            4,
            "ffeeddccbbaa99887766554433221100",
            "retire_at = 2030-01-02T05:04:05+02:00\nrevoked = false\n"
        ),
    );
    let keyring = Keyring::parse(&text).unwrap();
    assert_eq!(keyring.entries().len(), 4);
    let old = keyring.get(&device("kitchen-pi"), KeyId(1)).unwrap();
    assert_eq!(old.retire_at, Some(at("2030-01-02T03:04:05Z")));
    assert_eq!(keyring.get(&device("kitchen-pi"), KeyId(2)).unwrap().retire_at, None);
    assert_eq!(
        keyring.get(&device("garage"), KeyId(4)).unwrap().retire_at,
        Some(at("2030-01-02T03:04:05Z"))
    );
    // A revoked entry is in the keyring (the device is known) but has no key.
    assert!(keyring.get(&device("mcu-7"), KeyId(1)).is_none());
    assert!(matches!(
        keyring.entry(&device("mcu-7"), KeyId(1)),
        Some(KeyringEntry::Revoked(RevokedKey { key_id: KeyId(1), .. }))
    ));
    assert!(keyring.contains_device(&device("mcu-7")));
    assert_eq!(keyring.keys().count(), 3);
    assert_eq!(keyring.current(&device("kitchen-pi")).unwrap().key_id, KeyId(2));
    assert!(keyring.current(&device("mcu-7")).is_none());

    let saved = keyring.to_text();
    assert!(saved.contains("retire_at = \"2030-01-02T03:04:05Z\"\n"), "{}", *saved);
    assert!(saved.contains("device = \"mcu-7\"\nkey_id = 1\nrevoked = true\n"), "{}", *saved);
    let again = Keyring::parse(&saved).unwrap();
    assert_eq!(again.to_text(), saved);
}

#[test]
fn a_revoked_entry_drops_whatever_key_it_still_holds() {
    // Revocation must not fail on the key it removes, even a malformed one.
    let text = "[[key]]\ndevice = \"pi\"\nkey_id = 3\nalgorithm = \"AES-128-GCM\"\n\
                key = \"not hex\"\nretire_at = \"soon\"\nrevoked = true\n";
    let keyring = Keyring::parse(text).unwrap();
    assert!(matches!(keyring.entries(), [KeyringEntry::Revoked(_)]));
    let saved = keyring.to_text();
    assert!(!saved.contains("key =") && !saved.contains("algorithm"), "{}", *saved);
    // Its key bytes are not checked against other devices' either: they are gone.
    let text =
        format!("{}\n{}revoked = true\n", entry("a", 1, AES_KEY, ""), entry("b", 1, AES_KEY, ""));
    assert!(Keyring::parse(&text).is_ok());
}

#[test]
fn bad_retire_at_and_revoked_name_the_entry_and_the_field() {
    for (extra, problem) in [
        ("retire_at = \"2030-01-02\"\n", "RFC 3339"),
        ("retire_at = \"2030-01-02T03:04:05\"\n", "offset"),
        ("retire_at = 2030-01-02T03:04:05\n", "RFC 3339"),
        ("retire_at = 1893553445\n", "not a integer"),
        ("revoked = \"yes\"\n", "true or false"),
        ("revoked = 1\n", "true or false"),
    ] {
        let text = format!("{}\n{}", entry("a", 1, AES_KEY, ""), entry("b", 1, CHACHA_KEY, extra));
        let (position, field, message) = field_error(&text);
        assert_eq!(position, Some(2), "{extra}");
        assert!(extra.starts_with(&field), "{extra}: {field}");
        assert!(message.contains(problem), "{extra}: {message}");
    }
    // A typo is an unknown field, never a silently ignored revocation.
    let (position, field, message) = field_error(&entry("a", 1, AES_KEY, "revokd = true\n"));
    assert_eq!((position, field.as_str()), (Some(1), "revokd"));
    assert!(message.contains("retire_at") && message.contains("revoked"), "{message}");
    // A revoked entry still needs its device and key id.
    assert_eq!(field_error("[[key]]\ndevice = \"a\"\nrevoked = true\n").1, "key_id");
    assert_eq!(field_error("[[key]]\nkey_id = 1\nrevoked = true\n").1, "device");
    // Two entries for one (device, key id) are refused even if one is revoked.
    let text = format!(
        "{}\n[[key]]\ndevice = \"a\"\nkey_id = 1\nrevoked = true\n",
        entry("a", 1, AES_KEY, "")
    );
    assert!(matches!(Keyring::parse(&text), Err(Error::DuplicateEntry { entry: 2, first: 1, .. })));
}

#[test]
fn a_node_key_file_has_no_retire_at_nor_revoked() {
    for extra in ["retire_at = \"2030-01-02T03:04:05Z\"\n", "revoked = true\n"] {
        let text = format!(
            "device = \"pi\"\nkey_id = 1\nalgorithm = \"AES-128-GCM\"\nkey = \"{AES_KEY}\"\n{extra}"
        );
        match parse_key_file(&text).unwrap_err() {
            Error::InvalidField { entry: None, field, problem, .. } => {
                assert!(extra.starts_with(&field), "{field}");
                assert!(problem.contains("keyring"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }
    // And a retiring keyring entry's key file carries no retire_at.
    let entry = KeyEntry::generate(device("pi"), KeyId(1), Algorithm::Aes128Gcm)
        .unwrap()
        .with_retire_at(Some(at("2030-01-02T03:04:05Z")));
    let text = entry.to_key_file_text();
    assert!(!text.contains("retire_at"));
    assert!(parse_key_file(&text).is_ok());
}

#[test]
fn rotate_adds_the_next_key_id_and_retires_the_older_keys() {
    let mut keyring = Keyring::parse(&format!(
        "{}\n{}\n{}",
        entry("kitchen-pi", 1, AES_KEY, "retire_at = \"2029-01-01T00:00:00Z\"\n"),
        entry("kitchen-pi", 4, "ffeeddccbbaa99887766554433221100", ""),
        entry("garage", 9, CHACHA_KEY, ""),
    ))
    .unwrap();
    let kitchen = device("kitchen-pi");
    let retire_at = at("2030-06-01T00:00:00Z");
    let new = keyring.rotate(&kitchen, None, retire_at).unwrap();
    // Highest id + 1, the current key's algorithm, a fresh key, no end of its own.
    assert_eq!((new.key_id, new.algorithm, new.retire_at), (KeyId(5), Algorithm::Aes128Gcm, None));
    let new_bytes = new.key_bytes().to_vec();
    assert_eq!(keyring.current(&kitchen).unwrap().key_bytes(), new_bytes.as_slice());
    // Older keys retire at `retire_at`, unless they already retire earlier.
    assert_eq!(
        keyring.get(&kitchen, KeyId(1)).unwrap().retire_at,
        Some(at("2029-01-01T00:00:00Z"))
    );
    assert_eq!(keyring.get(&kitchen, KeyId(4)).unwrap().retire_at, Some(retire_at));
    // Other devices are untouched.
    assert_eq!(keyring.get(&device("garage"), KeyId(9)).unwrap().retire_at, None);
    // The result survives a save and a load.
    let again = Keyring::parse(&keyring.to_text()).unwrap();
    assert_eq!(again.get(&kitchen, KeyId(5)).unwrap().key_bytes(), new_bytes.as_slice());
    assert_eq!(again.get(&kitchen, KeyId(4)).unwrap().retire_at, Some(retire_at));

    // Another algorithm on request.
    let newer = keyring.rotate(&kitchen, Some(Algorithm::ChaCha20Poly1305), retire_at).unwrap();
    assert_eq!((newer.key_id, newer.algorithm), (KeyId(6), Algorithm::ChaCha20Poly1305));
    assert_eq!(keyring.get(&kitchen, KeyId(5)).unwrap().retire_at, Some(retire_at));
}

#[test]
fn rotate_counts_revoked_ids_and_refuses_unknown_devices_and_id_255() {
    let mut keyring = Keyring::parse(&format!(
        "{}\n[[key]]\ndevice = \"pi\"\nkey_id = 7\nrevoked = true\n",
        entry("pi", 2, AES_KEY, "")
    ))
    .unwrap();
    let pi = device("pi");
    // A revoked key id is never given out again.
    let new = keyring.rotate(&pi, None, at("2030-01-01T00:00:00Z")).unwrap();
    assert_eq!(new.key_id, KeyId(8));

    let before = keyring.to_text();
    let err = keyring.rotate(&device("nobody"), None, at("2030-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(&err, Error::UnknownDevice { device } if device.as_str() == "nobody"));
    assert!(err.to_string().contains("ledtemp-keys add nobody"), "{err}");

    let mut full = Keyring::parse(&format!(
        "{}\n[[key]]\ndevice = \"pi\"\nkey_id = 255\nrevoked = true\n",
        entry("pi", 254, AES_KEY, "")
    ))
    .unwrap();
    let full_before = full.to_text();
    let err = full.rotate(&pi, None, at("2030-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(err, Error::KeyIdsExhausted { .. }), "{err:?}");
    assert!(err.to_string().contains("255"), "{err}");
    // Refusals change nothing.
    assert_eq!(full.to_text(), full_before);
    assert_eq!(keyring.to_text(), before);

    // A device whose keys were all revoked gets a new one, with the default algorithm.
    let mut revoked =
        Keyring::parse("[[key]]\ndevice = \"pi\"\nkey_id = 1\nrevoked = true\n").unwrap();
    let new = revoked.rotate(&pi, None, at("2030-01-01T00:00:00Z")).unwrap();
    assert_eq!((new.key_id, new.algorithm), (KeyId(2), Algorithm::ChaCha20Poly1305));
}

#[test]
fn revoke_one_key_or_all_of_a_device() {
    let text = format!(
        "{}\n{}\n{}",
        entry("pi", 1, AES_KEY, "retire_at = \"2030-01-01T00:00:00Z\"\n"),
        entry("pi", 2, "ffeeddccbbaa99887766554433221100", ""),
        entry("garage", 1, CHACHA_KEY, ""),
    );
    let pi = device("pi");
    let mut keyring = Keyring::parse(&text).unwrap();
    assert_eq!(keyring.revoke(&pi, Some(KeyId(1))).unwrap(), vec![KeyId(1)]);
    assert!(keyring.get(&pi, KeyId(1)).is_none());
    assert!(keyring.get(&pi, KeyId(2)).is_some());
    // Again: nothing to do.
    assert_eq!(keyring.revoke(&pi, Some(KeyId(1))).unwrap(), vec![]);
    // The key bytes are gone from the file; the position of the entry is kept.
    let saved = keyring.to_text();
    assert!(!saved.contains(AES_KEY), "{}", *saved);
    assert!(saved.find("revoked = true").unwrap() < saved.find("key_id = 2").unwrap());

    // All of the device's keys; other devices untouched.
    let mut keyring = Keyring::parse(&text).unwrap();
    assert_eq!(keyring.revoke(&pi, None).unwrap(), vec![KeyId(1), KeyId(2)]);
    assert!(keyring.current(&pi).is_none() && keyring.contains_device(&pi));
    assert!(keyring.get(&device("garage"), KeyId(1)).is_some());

    let before = keyring.to_text();
    assert!(matches!(keyring.revoke(&device("nobody"), None), Err(Error::UnknownDevice { .. })));
    let err = keyring.revoke(&device("garage"), Some(KeyId(2))).unwrap_err();
    assert!(matches!(err, Error::UnknownKeyId { key_id: KeyId(2), .. }), "{err:?}");
    assert_eq!(keyring.to_text(), before);
}

#[test]
fn a_shared_key_is_refused_by_add_and_never_made_by_rotate() {
    // Per-device keys only (docs/keys.md): the same bytes under two devices are refused.
    let text = format!("{}\n{}", entry("a", 1, AES_KEY, ""), entry("b", 1, AES_KEY, ""));
    assert!(matches!(Keyring::parse(&text), Err(Error::SharedKey { entry: 2, first: 1, .. })));
    let mut keyring = Keyring::parse(&entry("a", 1, AES_KEY, "")).unwrap();
    let copy =
        KeyEntry::new(device("b"), KeyId(1), Algorithm::Aes128Gcm, &hex::decode(AES_KEY).unwrap())
            .unwrap();
    assert!(matches!(keyring.add(copy, false), Err(Error::SharedKey { .. })));
    // The same bytes under two key ids of one device are not a shared key (one holder).
    let text = format!("{}\n{}", entry("a", 1, AES_KEY, ""), entry("a", 2, AES_KEY, ""));
    assert!(Keyring::parse(&text).is_ok());
    // Rotation makes a fresh random key each time.
    let a = device("a");
    let first = keyring.rotate(&a, None, at("2030-01-01T00:00:00Z")).unwrap().key_bytes().to_vec();
    let second = keyring.rotate(&a, None, at("2030-01-01T00:00:00Z")).unwrap().key_bytes().to_vec();
    assert_ne!(first, second);
    assert_ne!(first, hex::decode(AES_KEY).unwrap());
}
