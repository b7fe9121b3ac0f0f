//! The `ledtemp-keys` binary, end to end.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use ledtemp_core::{Algorithm, DeviceId, KeyId};
use ledtemp_keys::{Keyring, load_key_file};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ledtemp-keys")).current_dir(dir).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn add_provisions_a_device_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("kitchen-pi.key");
    let ring_path = dir.path().join("keyring.toml");

    // First device, all defaults: <device>.key, keyring.toml, key id 1, ChaCha20-Poly1305.
    let out = run(dir.path(), &["add", "kitchen-pi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let node = load_key_file(&key_path).unwrap();
    assert_eq!((node.key_id, node.algorithm), (KeyId(1), Algorithm::ChaCha20Poly1305));
    assert_eq!((mode(&key_path), mode(&ring_path)), (0o600, 0o600));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("kitchen-pi.key") && stdout.contains("keyring.toml"), "{stdout}");
    assert!(!stdout.contains(&hex::encode(node.key_bytes())), "printed the key: {stdout}");
    let device = DeviceId::new("kitchen-pi").unwrap();
    let keyring = Keyring::load(&ring_path).unwrap();
    assert_eq!(keyring.get(&device, KeyId(1)).unwrap().key_bytes(), node.key_bytes());

    // Again: refused, nothing changed.
    let out = run(dir.path(), &["add", "kitchen-pi"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    assert_eq!(load_key_file(&key_path).unwrap().key_bytes(), node.key_bytes());

    // Key file elsewhere, but the keyring already has (kitchen-pi, 1): refused, no file written.
    let other = dir.path().join("other.key");
    let out = run(dir.path(), &["add", "kitchen-pi", "--key-file", "other.key"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("key_id 1"), "{}", text(&out.stderr));
    assert!(!other.exists());

    // --force replaces both.
    let out = run(dir.path(), &["add", "kitchen-pi", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replaced = load_key_file(&key_path).unwrap();
    assert_ne!(replaced.key_bytes(), node.key_bytes());
    let keyring = Keyring::load(&ring_path).unwrap();
    assert_eq!(keyring.entries().len(), 1);
    assert_eq!(keyring.get(&device, KeyId(1)).unwrap().key_bytes(), replaced.key_bytes());

    // A second device with every option, into a keyring at another path.
    let sub = dir.path().join("server");
    fs::create_dir(&sub).unwrap();
    fs::copy(&ring_path, sub.join("ring.toml")).unwrap();
    fs::set_permissions(sub.join("ring.toml"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(
        dir.path(),
        &[
            "add",
            "mcu-7",
            "--key-id",
            "3",
            "--algorithm",
            "AES-128-GCM",
            "--key-file",
            "mcu.key",
            "--keyring",
            "server/ring.toml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mcu = load_key_file(&dir.path().join("mcu.key")).unwrap();
    assert_eq!(
        (mcu.key_id, mcu.algorithm, mcu.key_bytes().len()),
        (KeyId(3), Algorithm::Aes128Gcm, 16)
    );
    let keyring = Keyring::load(&sub.join("ring.toml")).unwrap();
    assert_eq!(keyring.entries().len(), 2);
    assert!(keyring.contains_device(&device));
}

#[test]
fn add_fails_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["add", "a/b"][..],
        &["add", "pi", "--algorithm", "DES"],
        &["add", "pi", "--key-id", "256"],
    ] {
        let out = run(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!text(&out.stderr).is_empty(), "{args:?}");
    }
    // A keyring others may read: refused with the fix, and no key file left behind.
    let ring = dir.path().join("keyring.toml");
    fs::write(&ring, "").unwrap();
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(dir.path(), &["add", "pi"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("chmod 600"), "{}", text(&out.stderr));
    assert!(!dir.path().join("pi.key").exists());
}

fn keyring_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn rotate_writes_the_next_key_and_retires_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("kitchen-pi.key");
    let ring_path = dir.path().join("keyring.toml");
    let device = DeviceId::new("kitchen-pi").unwrap();
    assert!(run(dir.path(), &["add", "kitchen-pi", "--algorithm", "AES-128-GCM"]).status.success());
    let old = load_key_file(&key_path).unwrap();
    fs::copy(&key_path, dir.path().join("old.key")).unwrap();

    let before = jiff::Timestamp::now();
    let out = run(dir.path(), &["rotate", "kitchen-pi", "--grace-days", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The key file was the device's current key, so it was replaced: key id 2, same algorithm.
    let new = load_key_file(&key_path).unwrap();
    assert_eq!((new.key_id, new.algorithm), (KeyId(2), Algorithm::Aes128Gcm));
    assert_ne!(new.key_bytes(), old.key_bytes());
    assert_eq!((mode(&key_path), mode(&ring_path)), (0o600, 0o600));
    let keyring = Keyring::load(&ring_path).unwrap();
    assert_eq!(keyring.get(&device, KeyId(2)).unwrap().key_bytes(), new.key_bytes());
    assert_eq!(keyring.get(&device, KeyId(2)).unwrap().retire_at, None);
    let retire_at = keyring.get(&device, KeyId(1)).unwrap().retire_at.unwrap();
    let grace = retire_at.duration_since(before).as_secs();
    assert!((3 * 86_400 - 2..=3 * 86_400 + 60).contains(&grace), "{grace}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("SIGHUP") && stdout.contains(&retire_at.to_string()), "{stdout}");
    assert!(!stdout.contains(&hex::encode(new.key_bytes())), "printed the key: {stdout}");

    // The old key file no longer holds the current key: refused, nothing changed.
    let ring_before = keyring_text(&ring_path);
    let out = run(dir.path(), &["rotate", "kitchen-pi", "--key-file", "old.key"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("current key") && stderr.contains("--force"), "{stderr}");
    assert_eq!(keyring_text(&ring_path), ring_before);
    assert_eq!(load_key_file(&dir.path().join("old.key")).unwrap().key_bytes(), old.key_bytes());

    // Another device's key file: refused too; with --force replaced.
    assert!(run(dir.path(), &["add", "garage"]).status.success());
    let ring_before = keyring_text(&ring_path);
    let out = run(dir.path(), &["rotate", "kitchen-pi", "--key-file", "garage.key"]);
    assert!(!out.status.success());
    assert_eq!(keyring_text(&ring_path), ring_before);
    let out = run(
        dir.path(),
        &["rotate", "kitchen-pi", "--key-file", "garage.key", "--force", "--grace-days", "0"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let forced = load_key_file(&dir.path().join("garage.key")).unwrap();
    assert_eq!((forced.device.as_str(), forced.key_id), ("kitchen-pi", KeyId(3)));
    // --grace-days 0 retires the older keys now; an earlier retire_at is kept.
    let keyring = Keyring::load(&ring_path).unwrap();
    let now = jiff::Timestamp::now();
    assert!(keyring.get(&device, KeyId(2)).unwrap().retire_at.unwrap() <= now);
    assert!(keyring.get(&device, KeyId(1)).unwrap().retire_at.unwrap() <= now);
    assert_eq!(keyring.get(&DeviceId::new("garage").unwrap(), KeyId(1)).unwrap().retire_at, None);
}

#[test]
fn rotate_fails_clearly_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ring_path = dir.path().join("keyring.toml");
    // No keyring, then an unknown device.
    let out = run(dir.path(), &["rotate", "pi"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("keyring.toml"), "{}", text(&out.stderr));
    assert!(run(dir.path(), &["add", "pi", "--key-id", "255"]).status.success());
    let out = run(dir.path(), &["rotate", "nobody"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ledtemp-keys add nobody"), "{}", text(&out.stderr));
    assert!(!dir.path().join("nobody.key").exists());
    // Key id 255 taken: no new key id left.
    let ring_before = keyring_text(&ring_path);
    let key_before = fs::read(dir.path().join("pi.key")).unwrap();
    let out = run(dir.path(), &["rotate", "pi"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("key_id 255"), "{}", text(&out.stderr));
    assert_eq!(keyring_text(&ring_path), ring_before);
    assert_eq!(fs::read(dir.path().join("pi.key")).unwrap(), key_before);
    // Grace periods outside 0 to 3650 days.
    for days in ["-1", "3651", "seven"] {
        let out = run(dir.path(), &["rotate", "pi", "--grace-days", days]);
        assert!(!out.status.success(), "{days}");
    }
    assert_eq!(keyring_text(&ring_path), ring_before);
}

#[test]
fn revoke_removes_the_key_bytes_and_keeps_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ring_path = dir.path().join("keyring.toml");
    let device = DeviceId::new("pi").unwrap();
    assert!(run(dir.path(), &["add", "pi"]).status.success());
    assert!(run(dir.path(), &["rotate", "pi"]).status.success());
    assert!(run(dir.path(), &["add", "garage"]).status.success());
    let key1 =
        hex::encode(Keyring::load(&ring_path).unwrap().get(&device, KeyId(1)).unwrap().key_bytes());

    let out = run(dir.path(), &["revoke", "pi", "--key-id", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("SIGHUP"), "{}", text(&out.stdout));
    assert_eq!(mode(&ring_path), 0o600);
    let saved = keyring_text(&ring_path);
    assert!(!saved.contains(&key1), "{saved}");
    let keyring = Keyring::load(&ring_path).unwrap();
    assert!(keyring.get(&device, KeyId(1)).is_none());
    assert!(keyring.entry(&device, KeyId(1)).is_some());
    assert!(keyring.get(&device, KeyId(2)).is_some());

    // Again: nothing to do, success.
    let out = run(dir.path(), &["revoke", "pi", "--key-id", "1"]);
    assert!(out.status.success() && text(&out.stdout).contains("nothing to do"));
    // Unknown key id and device: refused, nothing changed.
    for args in [&["revoke", "pi", "--key-id", "9"][..], &["revoke", "nobody"]] {
        let out = run(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!text(&out.stderr).is_empty());
        assert_eq!(keyring_text(&ring_path), saved);
    }

    // Every key of the device; the other device keeps its key.
    let out = run(dir.path(), &["revoke", "pi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no valid key left"), "{}", text(&out.stdout));
    let keyring = Keyring::load(&ring_path).unwrap();
    assert_eq!(keyring.keys().filter(|e| e.device == device).count(), 0);
    assert_eq!(keyring.entries().len(), 3);
    assert!(keyring.get(&DeviceId::new("garage").unwrap(), KeyId(1)).is_some());
    // A rotation after a full revocation provisions key id 3.
    let out = run(dir.path(), &["rotate", "pi", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(load_key_file(&dir.path().join("pi.key")).unwrap().key_id, KeyId(3));
}
