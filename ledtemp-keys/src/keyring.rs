//! The server's keyring: every device's keys, validated as a whole; rotation and revocation.

use std::collections::HashMap;
use std::path::Path;

use jiff::Timestamp;
use ledtemp_core::{Algorithm, DeviceId, KeyId};
use toml::Value;
use zeroize::Zeroizing;

use crate::entry::{RawEntry, parse_table, utf8};
use crate::file::{read_private, write_private_file};
use crate::{Error, KeyEntry, KeyringEntry, RevokedKey};

/// The server's keyring: any number of [`KeyringEntry`]s (a [`KeyEntry`], or the record of a
/// revoked key), one `[[key]]` table each (`docs/keys.md`).
///
/// A keyring always holds valid entries: every device id, key id, algorithm, key and
/// `retire_at` checked, no two entries with the same (device, key id), and no key bytes shared
/// by two devices (any holder of a shared key can seal as every device that has it, and their
/// nonces collide). [`load`](Self::load), [`parse`](Self::parse), [`add`](Self::add) and
/// [`rotate`](Self::rotate) all refuse anything else.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<KeyringEntry>,
}

impl Keyring {
    /// An empty keyring: every device is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a keyring file: refuses it if group or others may access it
    /// ([`check_private`](crate::check_private)), then parses and validates it. Errors name the
    /// file, the entry and the field.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = read_private(path)?;
        Self::parse(utf8(&bytes).map_err(|e| e.in_file(path))?).map_err(|e| e.in_file(path))
    }

    /// Parses and validates keyring text, as [`load`](Self::load) does, without a file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut top = parse_table(text)?;
        let tables = match top.remove("key") {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(top_level_error(
                    "key",
                    format!("must be [[key]] tables, not a {}", other.type_str()),
                ));
            }
        };
        if let Some(unknown) = top.keys().next() {
            return Err(top_level_error(
                unknown,
                "is not part of a keyring: a keyring holds only [[key]] tables (a node's key \
                 file has its fields at the top level)"
                    .into(),
            ));
        }
        // Take every key out of the parsed tree first, so no key outlives a failed check
        // unwiped.
        let raw: Vec<Result<RawEntry, &'static str>> = tables
            .into_iter()
            .map(|item| match item {
                Value::Table(table) => Ok(RawEntry::new(table)),
                other => Err(other.type_str()),
            })
            .collect();
        let mut entries = Vec::with_capacity(raw.len());
        for (index, item) in raw.into_iter().enumerate() {
            let position = index + 1;
            match item {
                Ok(raw) => entries.push(raw.validate(Some(position))?),
                Err(kind) => {
                    return Err(top_level_error(
                        "key",
                        format!("must be [[key]] tables, but item {position} is a {kind}"),
                    ));
                }
            }
        }
        check_unique(&entries)?;
        Ok(Keyring { entries })
    }

    /// Every entry, revoked ones included, in file order.
    pub fn entries(&self) -> &[KeyringEntry] {
        &self.entries
    }

    /// The keys that are not revoked (retiring ones included), in file order.
    pub fn keys(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter().filter_map(KeyringEntry::key)
    }

    /// The entry for (`device`, `key_id`), revoked or not.
    pub fn entry(&self, device: &DeviceId, key_id: KeyId) -> Option<&KeyringEntry> {
        self.entries.iter().find(|e| e.device() == device && e.key_id() == key_id)
    }

    /// The key `key_id` of `device`, if the keyring has it and it is not revoked.
    pub fn get(&self, device: &DeviceId, key_id: KeyId) -> Option<&KeyEntry> {
        self.entry(device, key_id).and_then(KeyringEntry::key)
    }

    /// The device's current key: the one with the highest key id that is not revoked (the key
    /// its node should hold after the last rotation).
    pub fn current(&self, device: &DeviceId) -> Option<&KeyEntry> {
        self.keys().filter(|e| e.device == *device).max_by_key(|e| e.key_id)
    }

    /// Whether the keyring has any entry for `device`, revoked or not (a device with none is
    /// unknown).
    pub fn contains_device(&self, device: &DeviceId) -> bool {
        self.entries.iter().any(|e| e.device() == device)
    }

    /// Adds `entry`. If the keyring already has its (device, key id), revoked or not, replaces
    /// that entry in place when `replace` is set and is [`Error::EntryExists`] otherwise.
    /// Refuses key bytes that another device already uses ([`Error::SharedKey`]); on any error
    /// the keyring is unchanged.
    pub fn add(&mut self, entry: KeyEntry, replace: bool) -> Result<(), Error> {
        let existing = self
            .entries
            .iter()
            .position(|e| *e.device() == entry.device && e.key_id() == entry.key_id);
        if existing.is_some() && !replace {
            return Err(Error::EntryExists { device: entry.device, key_id: entry.key_id });
        }
        let shared = self.entries.iter().enumerate().find_map(|(i, other)| {
            let other = other.key()?;
            (Some(i) != existing
                && other.device != entry.device
                && other.key_bytes() == entry.key_bytes())
            .then_some((i, other))
        });
        if let Some((i, other)) = shared {
            return Err(Error::SharedKey {
                path: None,
                entry: existing.map_or(self.entries.len(), |e| e) + 1,
                device: entry.device,
                first: i + 1,
                first_device: other.device.clone(),
            });
        }
        let entry = KeyringEntry::Key(entry);
        match existing {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
        Ok(())
    }

    /// Rotates `device` to a fresh random key: adds it with key id = the device's highest key
    /// id (revoked ones included, so no key id is ever given out twice) + 1, and sets the
    /// `retire_at` of the device's other keys to `retire_at`, unless they already retire
    /// earlier. The algorithm is `algorithm`, or else that of the device's current key, or else
    /// ChaCha20-Poly1305. Returns the new entry.
    ///
    /// [`Error::UnknownDevice`] if the keyring has no entry for `device` (provision it with
    /// [`add`](Self::add)); [`Error::KeyIdsExhausted`] if it already has key id 255. On any error
    /// the keyring is unchanged.
    pub fn rotate(
        &mut self,
        device: &DeviceId,
        algorithm: Option<Algorithm>,
        retire_at: Timestamp,
    ) -> Result<&KeyEntry, Error> {
        let highest = self
            .entries
            .iter()
            .filter(|e| e.device() == device)
            .map(KeyringEntry::key_id)
            .max()
            .ok_or_else(|| Error::UnknownDevice { device: device.clone() })?;
        let key_id = highest
            .0
            .checked_add(1)
            .ok_or_else(|| Error::KeyIdsExhausted { device: device.clone() })?;
        let algorithm = algorithm
            .or_else(|| self.current(device).map(|e| e.algorithm))
            .unwrap_or(Algorithm::ChaCha20Poly1305);
        let entry = KeyEntry::generate(device.clone(), KeyId(key_id), algorithm)?;
        // Fails only if the operating system's generator repeated another device's key.
        self.add(entry, false)?;
        for old in &mut self.entries {
            if let KeyringEntry::Key(old) = old
                && old.device == *device
                && old.key_id.0 != key_id
            {
                old.retire_at = Some(old.retire_at.map_or(retire_at, |at| at.min(retire_at)));
            }
        }
        self.get(device, KeyId(key_id))
            .ok_or_else(|| Error::UnknownDevice { device: device.clone() })
    }

    /// Revokes the key `key_id` of `device`, or all of its keys when `key_id` is `None`: each
    /// entry keeps its device and key id, loses its key bytes and gets `revoked = true`. Returns
    /// the key ids revoked now (revoking a revoked key again changes nothing).
    ///
    /// [`Error::UnknownDevice`] if the keyring has no entry for `device`, [`Error::UnknownKeyId`]
    /// if it has none for `key_id`; on either the keyring is unchanged.
    pub fn revoke(
        &mut self,
        device: &DeviceId,
        key_id: Option<KeyId>,
    ) -> Result<Vec<KeyId>, Error> {
        if !self.contains_device(device) {
            return Err(Error::UnknownDevice { device: device.clone() });
        }
        if let Some(key_id) = key_id
            && self.entry(device, key_id).is_none()
        {
            return Err(Error::UnknownKeyId { device: device.clone(), key_id });
        }
        let mut revoked = Vec::new();
        for entry in &mut self.entries {
            if let KeyringEntry::Key(key) = entry
                && key.device == *device
                && key_id.is_none_or(|id| id == key.key_id)
            {
                revoked.push(key.key_id);
                // Dropping the old entry wipes its key bytes.
                *entry = KeyringEntry::Revoked(RevokedKey {
                    device: key.device.clone(),
                    key_id: key.key_id,
                });
            }
        }
        Ok(revoked)
    }

    /// The keyring as TOML, as [`save`](Self::save) writes it. Holds keys; wiped when dropped.
    /// Comments of a loaded file are not kept.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(128 + 192 * self.entries.len()));
        text.push_str(
            "# ledtemp keyring: every device's keys (docs/keys.md). Secret: keep it mode 0600.\n",
        );
        for entry in &self.entries {
            text.push_str("\n[[key]]\n");
            entry.write_fields(&mut text);
        }
        text
    }

    /// Writes the keyring to `path` atomically with mode `0600`, replacing the file if it exists.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        write_private_file(path, self.to_text().as_bytes(), true)
    }
}

fn top_level_error(field: &str, problem: String) -> Error {
    Error::InvalidField { path: None, entry: None, field: field.to_owned(), problem }
}

/// No two entries with one (device, key id); no key bytes under two devices (revoked entries
/// have none).
fn check_unique(entries: &[KeyringEntry]) -> Result<(), Error> {
    let mut seen: HashMap<(&DeviceId, KeyId), usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if let Some(first) = seen.insert((entry.device(), entry.key_id()), index) {
            return Err(Error::DuplicateEntry {
                path: None,
                entry: index + 1,
                first: first + 1,
                device: entry.device().clone(),
                key_id: entry.key_id(),
            });
        }
    }
    // Sorting positions by key bytes puts equal keys next to each other without copying any key;
    // a run of equal keys with two devices in it always has two different devices side by side.
    let keys: Vec<(usize, &KeyEntry)> =
        entries.iter().enumerate().filter_map(|(i, e)| Some((i, e.key()?))).collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| {
        keys[a].1.key_bytes().cmp(keys[b].1.key_bytes()).then(keys[a].0.cmp(&keys[b].0))
    });
    let mut clash: Option<(usize, usize)> = None;
    for pair in order.windows(2) {
        let ((a, ka), (b, kb)) = (keys[pair[0]], keys[pair[1]]);
        if ka.key_bytes() == kb.key_bytes() && ka.device != kb.device {
            let (first, later) = (a.min(b), a.max(b));
            // Report the clash that comes first in the file, whatever the key order.
            if clash.is_none_or(|(_, l)| later < l) {
                clash = Some((first, later));
            }
        }
    }
    match clash {
        Some((first, later)) => Err(Error::SharedKey {
            path: None,
            entry: later + 1,
            device: entries[later].device().clone(),
            first: first + 1,
            first_device: entries[first].device().clone(),
        }),
        None => Ok(()),
    }
}
