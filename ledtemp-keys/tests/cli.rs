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
