//! `ledtemp-keys`: provisions device keys (`docs/keys.md`).
//!
//! `ledtemp-keys add <device>` generates a key, writes the node's key file and adds the entry to
//! the server's keyring, refusing to overwrite either without `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ledtemp_core::{Algorithm, DeviceId, KeyId};
use ledtemp_keys::{Error, KeyEntry, Keyring, write_key_file};

/// Provision ledtemp device keys: a key file for the node, an entry in the server's keyring.
#[derive(Debug, Parser)]
#[command(name = "ledtemp-keys", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a fresh random key for a device, write its key file and add it to the keyring.
    Add {
        /// Device id: 1 to 32 characters from A-Z a-z 0-9 - _
        #[arg(value_parser = parse_device)]
        device: DeviceId,
        /// Key id (0 to 255); add a new one to rotate a device's key.
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
}

fn parse_device(s: &str) -> Result<DeviceId, String> {
    DeviceId::new(s).map_err(|e| e.to_string())
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|e: ledtemp_core::Error| e.to_string())
}

fn main() -> ExitCode {
    let Command::Add { device, key_id, algorithm, key_file, keyring, force } = Cli::parse().command;
    let key_file = key_file.unwrap_or_else(|| PathBuf::from(format!("{device}.key")));
    match add(device, KeyId(key_id), algorithm, &key_file, &keyring, force) {
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
        if keyring.get(&device, key_id).is_some() {
            return Err(Error::EntryExists { device, key_id });
        }
    }
    let replaced = keyring.get(&device, key_id).is_some();
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
