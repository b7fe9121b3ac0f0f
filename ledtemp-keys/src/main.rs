//! `ledtemp-keys`: provisions, rotates and revokes device keys (`docs/keys.md`).
//!
//! - `ledtemp-keys add <device>` generates a key, writes the node's key file and adds the entry
//!   to the server's keyring, refusing to overwrite either without `--force`.
//! - `ledtemp-keys rotate <device>` adds a new key with the next key id, writes it to the node's
//!   key file and retires the device's older keys after a grace period.
//! - `ledtemp-keys revoke <device>` revokes one or all of a device's keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use ledtemp_core::{Algorithm, DeviceId, KeyId};
use ledtemp_keys::{Error, KeyEntry, Keyring, load_key_file, write_key_file};

/// Provision ledtemp device keys: a key file for the node, an entry in the server's keyring.
#[derive(Debug, Parser)]
#[command(name = "ledtemp-keys", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Longest rotation grace period, in days: ten years.
const MAX_GRACE_DAYS: i64 = 3650;

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a fresh random key for a device, write its key file and add it to the keyring.
    Add {
        /// Device id: 1 to 32 characters from A-Z a-z 0-9 - _
        #[arg(value_parser = parse_device)]
        device: DeviceId,
        /// Key id (0 to 255); to move a device to a new key, use `rotate`.
        #[arg(long, default_value_t = 1)]
        key_id: u8,
        /// AEAD: ChaCha20-Poly1305 (CPUs without AES instructions, e.g. Raspberry Pi 3/4) or
        /// AES-128-GCM (microcontrollers with an AES unit).
        #[arg(long, default_value = "ChaCha20-Poly1305", value_parser = parse_algorithm)]
        algorithm: Algorithm,
        /// The node's key file to write [default: <device>.key]
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The server's keyring to add the entry to; created if missing.
        #[arg(long, default_value = "keyring.toml")]
        keyring: PathBuf,
        /// Replace an existing key file and an existing entry with the same device and key id.
        #[arg(long)]
        force: bool,
    },
    /// Move a device to a new key: add a fresh key with the next key id to the keyring, write it
    /// to the node's key file, and retire the device's older keys after the grace period.
    ///
    /// The server accepts both keys until the grace period ends, then refuses frames sealed with
    /// the old ones. Reload the server (SIGHUP) before the node starts using the new key.
    Rotate {
        /// Device id of a device the keyring has.
        #[arg(value_parser = parse_device)]
        device: DeviceId,
        /// Days the older keys stay valid (0 to 3650; 0 retires them now).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i64).range(0..=MAX_GRACE_DAYS))]
        grace_days: i64,
        /// AEAD of the new key [default: that of the device's current key]
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Option<Algorithm>,
        /// The node's key file to write [default: <device>.key]. An existing file is replaced
        /// only if it holds the device's current key (or with --force).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The server's keyring.
        #[arg(long, default_value = "keyring.toml")]
        keyring: PathBuf,
        /// Replace the key file even if it does not hold the device's current key.
        #[arg(long)]
        force: bool,
    },
    /// Revoke one key of a device, or all of them: the server then refuses frames sealed with
    /// them (counted as `revoked`). The key bytes are removed from the keyring.
    Revoke {
        /// Device id.
        #[arg(value_parser = parse_device)]
        device: DeviceId,
        /// The key id to revoke [default: every key of the device]
        #[arg(long)]
        key_id: Option<u8>,
        /// The server's keyring.
        #[arg(long, default_value = "keyring.toml")]
        keyring: PathBuf,
    },
}

fn parse_device(s: &str) -> Result<DeviceId, String> {
    DeviceId::new(s).map_err(|e| e.to_string())
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|e: ledtemp_core::Error| e.to_string())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Add { device, key_id, algorithm, key_file, keyring, force } => {
            let key_file = key_file.unwrap_or_else(|| PathBuf::from(format!("{device}.key")));
            add(device, KeyId(key_id), algorithm, &key_file, &keyring, force)
        }
        Command::Rotate { device, grace_days, algorithm, key_file, keyring, force } => {
            let key_file = key_file.unwrap_or_else(|| PathBuf::from(format!("{device}.key")));
            // Whole seconds: the keyring shows a readable time. 86 400 s a day, in UTC.
            let now = Timestamp::now();
            match Timestamp::from_second(now.as_second())
                .and_then(|now| now.checked_add(SignedDuration::from_hours(24 * grace_days)))
            {
                Ok(retire_at) => rotate(&device, algorithm, retire_at, &key_file, &keyring, force),
                Err(e) => {
                    eprintln!(
                        "ledtemp-keys: error: cannot compute the end of the grace period: {e}"
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::Revoke { device, key_id, keyring } => revoke(&device, key_id.map(KeyId), &keyring),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledtemp-keys: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn add(
    device: DeviceId,
    key_id: KeyId,
    algorithm: Algorithm,
    key_file: &Path,
    keyring_path: &Path,
    force: bool,
) -> Result<(), Error> {
    let mut keyring = match Keyring::load(keyring_path) {
        Ok(keyring) => keyring,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Keyring::new()
        }
        Err(e) => return Err(e),
    };
    // Check both refusals before writing anything, so a refusal leaves no half-provisioned device.
    if !force {
        if key_file.exists() {
            return Err(Error::FileExists { path: key_file.to_path_buf() });
        }
        if keyring.entry(&device, key_id).is_some() {
            return Err(Error::EntryExists { device, key_id });
        }
    }
    let replaced = keyring.entry(&device, key_id).is_some();
    let entry = KeyEntry::generate(device.clone(), key_id, algorithm)?;
    write_key_file(key_file, &entry, force)?;
    println!(
        "wrote key file {} (device {device}, key id {}, {algorithm}, mode 0600): copy it to the \
         device",
        key_file.display(),
        key_id.0
    );
    keyring.add(entry, force)?;
    keyring.save(keyring_path).inspect_err(|_| {
        eprintln!(
            "ledtemp-keys: the key file was written but the keyring was not updated; fix the \
             problem below and run the same command again with --force"
        );
    })?;
    let count = keyring.entries().len();
    println!(
        "{} device {device} key id {} in keyring {} ({count} {} in total, mode 0600)",
        if replaced { "replaced" } else { "added" },
        key_id.0,
        keyring_path.display(),
        if count == 1 { "key" } else { "keys" }
    );
    Ok(())
}

/// The keyring first, then the key file: the server must know the new key before the node can
/// use it, and a keyring entry nobody holds is harmless, while a node holding a key the server
/// does not know is cut off.
fn rotate(
    device: &DeviceId,
    algorithm: Option<Algorithm>,
    retire_at: Timestamp,
    key_file: &Path,
    keyring_path: &Path,
    force: bool,
) -> Result<(), Error> {
    let mut keyring = Keyring::load(keyring_path)?;
    if !keyring.contains_device(device) {
        return Err(Error::UnknownDevice { device: device.clone() });
    }
    // Check the refusal before writing anything. A key file is replaced only when it holds the
    // device's current key: that is the file the last `add` or `rotate` wrote, now outdated. Any
    // other file (another device's key, a key the keyring does not have) is left alone.
    let exists = std::fs::symlink_metadata(key_file).is_ok();
    if exists && !force {
        let old = load_key_file(key_file)?;
        let current = keyring.current(device).is_some_and(|current| {
            current.device == old.device
                && current.key_id == old.key_id
                && current.key_bytes() == old.key_bytes()
        });
        if !current {
            return Err(Error::NotCurrentKeyFile {
                path: key_file.to_path_buf(),
                device: device.clone(),
            });
        }
    }
    let retiring: Vec<String> =
        keyring.keys().filter(|e| e.device == *device).map(|e| e.key_id.0.to_string()).collect();
    let new = keyring.rotate(device, algorithm, retire_at)?.clone();
    keyring.save(keyring_path)?;
    println!(
        "added device {device} key id {} ({}) to keyring {} (mode 0600)",
        new.key_id.0,
        new.algorithm,
        keyring_path.display()
    );
    if !retiring.is_empty() {
        println!(
            "device {device} key id {} retires at {retire_at}: from then on the server refuses \
             frames sealed with it",
            retiring.join(", ")
        );
    }
    write_key_file(key_file, &new, exists).inspect_err(|_| {
        eprintln!(
            "ledtemp-keys: the keyring has the new key id {id} but its key file was not written; \
             fix the problem below and run `ledtemp-keys rotate {device} --force` again (key id \
             {id} is then unused: revoke it with `ledtemp-keys revoke {device} --key-id {id}`)",
            id = new.key_id.0
        );
    })?;
    println!(
        "wrote key file {} (device {device}, key id {}, mode 0600). Next: reload the server \
         (SIGHUP, e.g. `systemctl reload ledtemp-web`), then copy the key file to the device and \
         restart its node before {retire_at}",
        key_file.display(),
        new.key_id.0
    );
    Ok(())
}

fn revoke(device: &DeviceId, key_id: Option<KeyId>, keyring_path: &Path) -> Result<(), Error> {
    let mut keyring = Keyring::load(keyring_path)?;
    let revoked = keyring.revoke(device, key_id)?;
    if revoked.is_empty() {
        println!("nothing to do: already revoked in keyring {}", keyring_path.display());
        return Ok(());
    }
    keyring.save(keyring_path)?;
    let ids: Vec<String> = revoked.iter().map(|id| id.0.to_string()).collect();
    println!(
        "revoked device {device} key id {} in keyring {}: reload the server (SIGHUP, e.g. \
         `systemctl reload ledtemp-web`) for it to refuse frames sealed with {}",
        ids.join(", "),
        keyring_path.display(),
        if ids.len() == 1 { "it" } else { "them" }
    );
    if keyring.current(device).is_none() {
        println!(
            "device {device} has no valid key left: give it a new one with `ledtemp-keys rotate \
             {device}` once it is secured"
        );
    }
    Ok(())
}
