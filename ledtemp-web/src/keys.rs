//! The server's keys: the [`KeyTable`] built from the keyring file, its reload on SIGHUP, and the
//! check of a key's status before any cryptography (`docs/keys.md`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ledtemp_core::{AnyCodec, Codec, DeviceId, KeyId, Topic};

use crate::live::LiveState;
use crate::model::UnixMillis;
use crate::{Error, RejectReason};

/// The server's keys: per (device, key id) an opened codec with the end of its rotation grace
/// period, or the mark of a revoked key (`docs/keys.md`).
///
/// Built from the keyring ([`KeyTable::from_keyring`]) and shared as an `Arc<KeyTable>` by the
/// ingest worker and the server. [`replace`](KeyTable::replace) swaps a reloaded keyring in as a
/// whole, under a lock that [`open`](KeyTable::open) holds for one frame, so every frame is
/// checked entirely against the old keys or entirely against the new ones.
#[derive(Debug, Default)]
pub struct KeyTable {
    slots: std::sync::RwLock<HashMap<(DeviceId, KeyId), KeySlot>>,
}

/// One key of the table.
#[derive(Debug)]
enum KeySlot {
    /// Opens frames received before `retire_at_ms` (ms since the Unix epoch), if set.
    Usable { codec: Box<AnyCodec>, retire_at_ms: Option<i64> },
    /// Refuses every frame: no key bytes.
    Revoked,
}

impl KeySlot {
    fn status(&self) -> KeyStatus {
        match self {
            KeySlot::Usable { retire_at_ms, .. } => {
                KeyStatus::Usable { retire_at_ms: *retire_at_ms }
            }
            KeySlot::Revoked => KeyStatus::Revoked,
        }
    }
}

/// What the table says about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Frames sealed with the key are opened; those received at or after `retire_at_ms` (ms
    /// since the Unix epoch), if set, are refused as [`RejectReason::Revoked`].
    Usable {
        /// The end of the rotation grace period.
        retire_at_ms: Option<i64>,
    },
    /// Frames sealed with the key are refused as [`RejectReason::Revoked`].
    Revoked,
}

impl KeyTable {
    /// An empty table: every frame is from an unknown device.
    pub fn new() -> KeyTable {
        KeyTable::default()
    }

    /// One slot per keyring entry: a codec, with the entry's `retire_at`, for each key; a
    /// revoked mark for each revoked entry.
    pub fn from_keyring(keyring: &ledtemp_keys::Keyring) -> KeyTable {
        let mut keys = KeyTable::new();
        for entry in keyring.entries() {
            match entry {
                ledtemp_keys::KeyringEntry::Key(key) => keys.insert_retiring(
                    key.device.clone(),
                    key.codec(),
                    key.retire_at.map(jiff::Timestamp::as_millisecond),
                ),
                ledtemp_keys::KeyringEntry::Revoked(revoked) => {
                    keys.revoke(revoked.device.clone(), revoked.key_id);
                }
            }
        }
        keys
    }

    /// Adds (or replaces) the key `codec.key_id()` of `device`, with no end of grace period.
    pub fn insert(&mut self, device: DeviceId, codec: AnyCodec) {
        self.insert_retiring(device, codec, None);
    }

    /// Adds (or replaces) the key `codec.key_id()` of `device`; frames received at or after
    /// `retire_at_ms` (ms since the Unix epoch), if set, are refused as revoked.
    pub fn insert_retiring(
        &mut self,
        device: DeviceId,
        codec: AnyCodec,
        retire_at_ms: Option<i64>,
    ) {
        let slots = self.slots.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (device, codec.key_id());
        slots.insert(key, KeySlot::Usable { codec: Box::new(codec), retire_at_ms });
    }

    /// Marks the key `key_id` of `device` revoked (replacing its codec, if any).
    pub fn revoke(&mut self, device: DeviceId, key_id: KeyId) {
        let slots = self.slots.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.insert((device, key_id), KeySlot::Revoked);
    }

    /// The status of (device, key id), if the table has it.
    pub fn status(&self, device: &DeviceId, key_id: KeyId) -> Option<KeyStatus> {
        self.read().get(&(device.clone(), key_id)).map(KeySlot::status)
    }

    /// Opens `frame` (whose header carries `key_id`) received on `topic` at `received_ms` (ms
    /// since the Unix epoch) with the key of (topic's device, `key_id`). Refuses, before any
    /// cryptography: a key the table does not have ([`RejectReason::UnknownDevice`]); a revoked
    /// key, or one whose grace period ended at or before `received_ms`
    /// ([`RejectReason::Revoked`]). Then whatever [`Codec::open`] refuses. Changes nothing.
    pub fn open(
        &self,
        topic: &Topic,
        key_id: KeyId,
        frame: &[u8],
        received_ms: i64,
    ) -> Result<ledtemp_core::OpenedFrame, Error> {
        let revoked = || Error::Rejected {
            reason: RejectReason::Revoked,
            cause: ledtemp_core::Error::UnknownKey(key_id.0),
        };
        match self.read().get(&(topic.device().clone(), key_id)) {
            None => Err(Error::rejected(ledtemp_core::Error::UnknownKey(key_id.0))),
            Some(KeySlot::Revoked) => Err(revoked()),
            Some(KeySlot::Usable { retire_at_ms: Some(at), .. }) if received_ms >= *at => {
                Err(revoked())
            }
            Some(KeySlot::Usable { codec, .. }) => {
                codec.open(topic, frame).map_err(Error::rejected)
            }
        }
    }

    /// Seals `message` for `device` as number `sequence` with the key `key_id`, if that key is
    /// usable at `now_ms` (not revoked, not past its `retire_at`); `None` otherwise. The server
    /// seals only commands, with its own sequence numbers
    /// ([`Store::reserve_command_sequences`](crate::Store::reserve_command_sequences)).
    pub(crate) fn seal(
        &self,
        device: &DeviceId,
        key_id: KeyId,
        sequence: ledtemp_core::SequenceNumber,
        message: &ledtemp_core::Message,
        now_ms: i64,
    ) -> Option<Vec<u8>> {
        match self.read().get(&(device.clone(), key_id)) {
            Some(KeySlot::Usable { codec, retire_at_ms })
                if retire_at_ms.is_none_or(|at| now_ms < at) =>
            {
                let mut out = [0u8; ledtemp_core::MAX_FRAME_LEN];
                let len = codec.seal(device, sequence, message, &mut out).ok()?;
                out.get(..len).map(<[u8]>::to_vec)
            }
            _ => None,
        }
    }

    /// Swaps in `keys` as a whole (a reloaded keyring) and returns what changed. Frames being
    /// opened meanwhile finish with the old keys; every later one uses the new. Replay windows
    /// are not part of the table and are kept.
    pub fn replace(&self, keys: KeyTable) -> KeyChanges {
        let new = keys.slots.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut slots = self.slots.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = KeyChanges::between(&slots, &new);
        let old = std::mem::replace(&mut *slots, new);
        drop(slots);
        // The old codecs are dropped outside the lock.
        drop(old);
        changes
    }

    /// Whether the device has any key, revoked or not.
    pub fn contains_device(&self, device: &DeviceId) -> bool {
        self.read().keys().any(|(d, _)| d == device)
    }

    /// Every device id with at least one key (revoked or not), sorted, once each.
    pub fn devices(&self) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = self.read().keys().map(|(d, _)| d.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// How many keys, revoked ones included.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no keys at all.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(DeviceId, KeyId), KeySlot>> {
        // A panic while holding the lock cannot leave the map half changed: `replace` swaps it
        // in one move.
        self.slots.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a keyring reload changed ([`KeyTable::replace`]), for the log. Keys are
/// `(device, key id)`; every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Devices that had no entry before.
    pub devices_added: Vec<String>,
    /// Devices that have no entry any more: their frames are now from an unknown device.
    pub devices_removed: Vec<String>,
    /// Usable keys that were not usable before (new, or revoked before).
    pub keys_added: Vec<(String, u8)>,
    /// Usable keys whose end of grace period was set or changed, with the new one (ms since the
    /// Unix epoch; `None`: no end any more).
    pub keys_retiring: Vec<(String, u8, Option<i64>)>,
    /// Keys revoked now.
    pub keys_revoked: Vec<(String, u8)>,
    /// Keys gone from the keyring without being revoked: their frames are now from an unknown key.
    pub keys_removed: Vec<(String, u8)>,
}

impl KeyChanges {
    fn between(
        old: &HashMap<(DeviceId, KeyId), KeySlot>,
        new: &HashMap<(DeviceId, KeyId), KeySlot>,
    ) -> KeyChanges {
        let name = |(device, key_id): &(DeviceId, KeyId)| (device.as_str().to_owned(), key_id.0);
        let devices = |slots: &HashMap<(DeviceId, KeyId), KeySlot>| -> HashSet<String> {
            slots.keys().map(|(d, _)| d.as_str().to_owned()).collect()
        };
        let (old_devices, new_devices) = (devices(old), devices(new));
        let mut changes = KeyChanges {
            devices_added: new_devices.difference(&old_devices).cloned().collect(),
            devices_removed: old_devices.difference(&new_devices).cloned().collect(),
            ..KeyChanges::default()
        };
        for (key, slot) in new {
            match (old.get(key).map(KeySlot::status), slot.status()) {
                (
                    Some(KeyStatus::Usable { retire_at_ms: before }),
                    KeyStatus::Usable { retire_at_ms },
                ) if before != retire_at_ms => {
                    let (device, id) = name(key);
                    changes.keys_retiring.push((device, id, retire_at_ms));
                }
                (Some(KeyStatus::Usable { .. }), KeyStatus::Usable { .. }) => {}
                (None | Some(KeyStatus::Revoked), KeyStatus::Usable { retire_at_ms }) => {
                    changes.keys_added.push(name(key));
                    if retire_at_ms.is_some() {
                        let (device, id) = name(key);
                        changes.keys_retiring.push((device, id, retire_at_ms));
                    }
                }
                (Some(KeyStatus::Revoked), KeyStatus::Revoked) => {}
                (None | Some(KeyStatus::Usable { .. }), KeyStatus::Revoked) => {
                    changes.keys_revoked.push(name(key));
                }
            }
        }
        changes.keys_removed = old.keys().filter(|key| !new.contains_key(*key)).map(name).collect();
        changes.devices_added.sort();
        changes.devices_removed.sort();
        changes.keys_added.sort();
        changes.keys_retiring.sort();
        changes.keys_revoked.sort();
        changes.keys_removed.sort();
        changes
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == KeyChanges::default()
    }
}

impl std::fmt::Display for KeyChanges {
    /// One line, e.g. `devices added: garage; keys added: garage/1; keys revoked: kitchen-pi/1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let keys = |keys: &[(String, u8)]| -> String {
            keys.iter().map(|(d, id)| format!("{d}/{id}")).collect::<Vec<_>>().join(", ")
        };
        let retiring: Vec<String> = self
            .keys_retiring
            .iter()
            .map(|(d, id, at)| match at {
                Some(at) => format!("{d}/{id} at {}", UnixMillis(*at)),
                None => format!("{d}/{id} no longer"),
            })
            .collect();
        let parts = [
            ("devices added", self.devices_added.join(", ")),
            ("devices removed", self.devices_removed.join(", ")),
            ("keys added", keys(&self.keys_added)),
            ("keys retiring", retiring.join(", ")),
            ("keys revoked", keys(&self.keys_revoked)),
            ("keys removed", keys(&self.keys_removed)),
        ];
        let parts: Vec<String> = parts
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(what, list)| format!("{what}: {list}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// The keys of every entry of the keyring file at `path` (see `docs/keys.md`; the file must be
/// readable by its owner only).
///
/// A keyring that does not exist is an error that says how to make one; every other error names
/// the file once (`ledtemp_keys` errors carry it).
pub fn load_keys(path: &Path) -> Result<KeyTable, Error> {
    if !path.exists() {
        return Err(Error::Keyring(format!(
            "{0} does not exist: provision a device into it with `cargo run -p ledtemp-keys -- \
             add <device> --keyring {0}` (docs/keys.md), or point --keyring at your keyring",
            path.display()
        )));
    }
    let keyring = ledtemp_keys::Keyring::load(path).map_err(|e| Error::Keyring(e.to_string()))?;
    Ok(KeyTable::from_keyring(&keyring))
}

/// Loads the keyring file at `path` again and swaps it into `keys` as a whole
/// ([`KeyTable::replace`]): what `ledtemp-web serve` does on SIGHUP. The ingest worker, which
/// shares `keys`, opens every later frame with the new keys; replay windows are kept (they belong
/// to the pipeline, per device and key id), so a frame accepted before the reload is still a
/// replay after it. New devices are listed on the dashboard at once. Logs what changed. A
/// keyring that fails to load, or has more than `max_devices` devices, leaves `keys` as they
/// were; the error is logged and counted (`ledtemp_keyring_reload_failures_total` in
/// `/metrics`).
pub fn reload_keys(
    keys: &KeyTable,
    path: &Path,
    live: &LiveState,
    max_devices: usize,
) -> Result<KeyChanges, Error> {
    let loaded = load_keys(path).and_then(|new| {
        check_device_cap(new.devices().len(), max_devices)?;
        Ok(new)
    });
    match loaded {
        Ok(new) => {
            let devices = new.devices();
            let changes = keys.replace(new);
            live.add_known(devices);
            tracing::info!(
                keyring = %path.display(),
                keys = keys.len(),
                "keyring reloaded: {changes}"
            );
            Ok(changes)
        }
        Err(error) => {
            live.stats.add_keyring_reload_failure();
            tracing::error!("keyring reload failed, the keys loaded before stay in use: {error}");
            Err(error)
        }
    }
}

/// A keyring with more devices than the server may track is refused, at start and on reload.
pub(crate) fn check_device_cap(devices: usize, max_devices: usize) -> Result<(), Error> {
    if devices > max_devices {
        return Err(Error::Config(format!(
            "the keyring has {devices} devices, more than max-devices {max_devices}: raise it"
        )));
    }
    Ok(())
}
