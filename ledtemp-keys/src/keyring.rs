//! The server's keyring: every device's keys, validated as a whole.

use std::collections::HashMap;
use std::path::Path;

use ledtemp_core::{DeviceId, KeyId};
use toml::Value;
use zeroize::Zeroizing;

use crate::entry::{RawEntry, parse_table, utf8};
use crate::file::{read_private, write_private_file};
use crate::{Error, KeyEntry};

/// The server's keyring: any number of [`KeyEntry`]s, one `[[key]]` table each
/// (`docs/keys.md`).
///
/// A keyring always holds valid entries: every device id, key id, algorithm and key checked, no
/// two entries with the same (device, key id), and no key bytes shared by two devices (they could
/// impersonate each other and would reuse nonces). [`load`](Self::load), [`parse`](Self::parse)
/// and [`add`](Self::add) all refuse anything else.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<KeyEntry>,
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

    /// The entries, in file order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The key `key_id` of `device`, if the keyring has it.
    pub fn get(&self, device: &DeviceId, key_id: KeyId) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.device == *device && e.key_id == key_id)
    }

    /// Whether the keyring has any key for `device` (a device with none is unknown).
    pub fn contains_device(&self, device: &DeviceId) -> bool {
        self.entries.iter().any(|e| e.device == *device)
    }

    /// Adds `entry`. If the keyring already has its (device, key id), replaces that entry in
    /// place when `replace` is set and is [`Error::EntryExists`] otherwise. Refuses key bytes
    /// that another device already uses ([`Error::SharedKey`]); on any error the keyring is
    /// unchanged.
    pub fn add(&mut self, entry: KeyEntry, replace: bool) -> Result<(), Error> {
        let existing =
            self.entries.iter().position(|e| e.device == entry.device && e.key_id == entry.key_id);
        if existing.is_some() && !replace {
            return Err(Error::EntryExists { device: entry.device, key_id: entry.key_id });
        }
        let shared = self.entries.iter().enumerate().find(|(i, other)| {
            Some(*i) != existing
                && other.device != entry.device
                && other.key_bytes() == entry.key_bytes()
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
        match existing {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
        Ok(())
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

/// No two entries with one (device, key id); no key bytes under two devices.
fn check_unique(entries: &[KeyEntry]) -> Result<(), Error> {
    let mut seen: HashMap<(&DeviceId, KeyId), usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if let Some(first) = seen.insert((&entry.device, entry.key_id), index) {
            return Err(Error::DuplicateEntry {
                path: None,
                entry: index + 1,
                first: first + 1,
                device: entry.device.clone(),
                key_id: entry.key_id,
            });
        }
    }
    // Sorting positions by key bytes puts equal keys next to each other without copying any key;
    // a run of equal keys with two devices in it always has two different devices side by side.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].key_bytes().cmp(entries[b].key_bytes()).then(a.cmp(&b)));
    let mut clash: Option<(usize, usize)> = None;
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if entries[a].key_bytes() == entries[b].key_bytes()
            && entries[a].device != entries[b].device
        {
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
            device: entries[later].device.clone(),
            first: first + 1,
            first_device: entries[first].device.clone(),
        }),
        None => Ok(()),
    }
}
