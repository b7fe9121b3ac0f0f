//! The ingest pipeline: every received MQTT message goes through [`Ingest`], in the order of
//! `docs/protocol.md` ("Receiving, in this order"):
//!
//! 1. topic parse (UTF-8, then [`Topic::parse`]);
//! 2. frame length and version ([`FrameHeader::parse`]), which reads the key id;
//! 3. key lookup by (device, key id) in the [`KeyTable`]: unknown device or key id, rejected;
//!    a revoked key, or one past its rotation's `retire_at`, rejected as
//!    [`RejectReason::Revoked`] before any cryptography;
//! 4. [`Codec::open`] with the topic in the associated data, which also decodes exactly;
//! 5. the replay window of (device, key id), including the Last Will rule
//!    ([`ReplayWindow::state_after_frame`]);
//! 6. store the data and the window's new state in one SQLite transaction;
//! 7. only then update the in-memory caches and the windows, and broadcast to SSE clients.
//!
//! Between 5 and 6, the caps ([`Limits`]): a frame that would make the server track more devices,
//! or one device more LEDs or sensors, than allowed is rejected ([`RejectReason::Limit`]).
//!
//! **For teaching only**, [`Ingest::insecure_plaintext`] replaces steps 2 to 5 with the
//! [`InsecurePlaintextCodec`]: any device, no key, no replay window (the project's "before").
//!
//! A rejected frame changes nothing but a counter (and maybe a rate-limited log line). Frames that
//! arrive together are committed in one transaction ([`Ingest::handle_batch`]); each frame's data
//! and window state are always in the same one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledtemp_core::{
    AnyCodec, Codec, DeviceId, FrameHeader, InsecurePlaintextCodec, KeyId, LedState, Message,
    NodeStatus, ReplayWindow, StatusReport, Topic,
};
use tokio::sync::mpsc;

use crate::alert_driver::AlertDriver;
use crate::state::{LedEvent, LiveEvent, LiveState, StatusEvent, TemperatureEvent, rfc3339};
use crate::store::{AcceptedFrame, Store};
use crate::{Error, RejectReason};

/// Most frames committed in one transaction. Larger batches make a backlog drain faster (each
/// commit writes every page it touched to the WAL again, so fewer, bigger commits write less per
/// frame: see `docs/performance.md`); no larger than the event channel, so that the events of one
/// batch never make a live SSE client that keeps up skip any.
pub const MAX_BATCH: usize = 1024;
const _: () = assert!(MAX_BATCH <= crate::state::EVENT_CHANNEL_CAPACITY);

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
    pub fn devices(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().keys().map(|(d, _)| d.as_str().to_owned()).collect();
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
                Some(at) => format!("{d}/{id} at {}", rfc3339(*at)),
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

/// Devices the server tracks at most, by default (`--max-devices`).
pub const DEFAULT_MAX_DEVICES: usize = 1000;

/// LEDs the server tracks per device at most.
pub const MAX_LEDS_PER_DEVICE: usize = 32;

/// Sensors the server tracks per device at most.
pub const MAX_SENSORS_PER_DEVICE: usize = 32;

/// Caps on what the server tracks, against "device-name explosion": a flood of invented device
/// ids (possible only without authentication, as in the plaintext teaching mode), or a device
/// whose key was stolen inventing LED and sensor names. A frame over a cap is rejected with
/// [`RejectReason::Limit`] and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Devices tracked (keyring devices and devices with stored data).
    pub max_devices: usize,
    /// LEDs per device.
    pub max_leds: usize,
    /// Sensors per device.
    pub max_sensors: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_devices: DEFAULT_MAX_DEVICES,
            max_leds: MAX_LEDS_PER_DEVICE,
            max_sensors: MAX_SENSORS_PER_DEVICE,
        }
    }
}

/// How frames are opened: with the keyring, or (teaching only) in the clear.
#[derive(Debug)]
enum Opener {
    /// Sealed frames, opened with the device's key, then checked against the replay window.
    Sealed(Arc<KeyTable>),
    /// **INSECURE**: plaintext frames from any device, no replay window.
    InsecurePlaintext,
}

/// The LED and sensor names of one tracked device.
#[derive(Debug, Default)]
struct TrackedNames {
    leds: HashSet<String>,
    sensors: HashSet<String>,
}

/// A name the cap check added for a frame of the current batch, undone if the commit fails.
#[derive(Debug)]
enum Added {
    Device(String),
    Led(String, String),
    Sensor(String, String),
}

/// What the server tracks, checked against the [`Limits`].
#[derive(Debug)]
struct Tracked {
    limits: Limits,
    devices: HashMap<String, TrackedNames>,
}

impl Tracked {
    /// The devices of `live` (keyring and stored) with their LED and sensor names.
    fn from_live(live: &LiveState, limits: Limits) -> Tracked {
        let devices = live
            .devices()
            .into_iter()
            .map(|(id, device)| {
                let names = TrackedNames {
                    leds: device.leds.into_keys().collect(),
                    sensors: device.temperatures.into_keys().collect(),
                };
                (id, names)
            })
            .collect();
        Tracked { limits, devices }
    }

    /// Tracks the device, LEDs and sensors of `frame`, recording what was new in `added`; or, if
    /// that would exceed a cap, a [`RejectReason::Limit`] rejection and nothing tracked.
    fn admit(&mut self, frame: &AcceptedFrame, added: &mut Vec<Added>) -> Result<(), Error> {
        let limit = || Error::Rejected {
            reason: RejectReason::Limit,
            cause: ledtemp_core::Error::Capacity,
        };
        let mut leds: Vec<&str> = Vec::new();
        let mut sensors: Vec<&str> = Vec::new();
        match &frame.message {
            Message::Led(change) => leds.push(change.led.as_str()),
            Message::Temperature(reading) => sensors.push(reading.sensor.as_str()),
            Message::Status(StatusReport { status: NodeStatus::Online { leds: all }, .. }) => {
                leds.extend(all.iter().map(|status| status.led.as_str()));
            }
            Message::Status(_) => {}
        }
        let device = frame.device.as_str();
        let known = self.devices.get(device);
        if known.is_none() && self.devices.len() >= self.limits.max_devices {
            return Err(limit());
        }
        let new_leds: HashSet<&str> = leds
            .into_iter()
            .filter(|led| known.is_none_or(|names| !names.leds.contains(*led)))
            .collect();
        let new_sensors: HashSet<&str> = sensors
            .into_iter()
            .filter(|sensor| known.is_none_or(|names| !names.sensors.contains(*sensor)))
            .collect();
        let (led_count, sensor_count) =
            known.map_or((0, 0), |names| (names.leds.len(), names.sensors.len()));
        if led_count + new_leds.len() > self.limits.max_leds
            || sensor_count + new_sensors.len() > self.limits.max_sensors
        {
            return Err(limit());
        }
        if known.is_none() {
            added.push(Added::Device(device.to_owned()));
        }
        let names = self.devices.entry(device.to_owned()).or_default();
        for led in new_leds {
            names.leds.insert(led.to_owned());
            added.push(Added::Led(device.to_owned(), led.to_owned()));
        }
        for sensor in new_sensors {
            names.sensors.insert(sensor.to_owned());
            added.push(Added::Sensor(device.to_owned(), sensor.to_owned()));
        }
        Ok(())
    }

    /// Forgets what `added` recorded (the commit of those frames failed).
    fn undo(&mut self, added: Vec<Added>) {
        for item in added.into_iter().rev() {
            match item {
                Added::Device(device) => {
                    self.devices.remove(&device);
                }
                Added::Led(device, led) => {
                    if let Some(names) = self.devices.get_mut(&device) {
                        names.leds.remove(&led);
                    }
                }
                Added::Sensor(device, sensor) => {
                    if let Some(names) = self.devices.get_mut(&device) {
                        names.sensors.remove(&sensor);
                    }
                }
            }
        }
    }
}

/// One MQTT PUBLISH as received, before any check.
#[derive(Debug, Clone)]
pub struct IncomingFrame {
    /// The raw topic bytes.
    pub topic: Vec<u8>,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// Receive time, ms since the Unix epoch.
    pub received_ms: i64,
}

/// Logs the first rejection per (device, reason) and then one summary per minute, so that a flood
/// of bad frames cannot flood the log. Device names from unparsable topics count as `-`.
#[derive(Debug)]
struct RejectLog {
    logged: HashSet<(String, RejectReason)>,
    suppressed: BTreeMap<RejectReason, u64>,
    last_summary: Instant,
}

impl RejectLog {
    /// Most (device, reason) pairs remembered; past it every rejection goes into the summary (an
    /// attacker can invent any number of device names).
    const MAX_REMEMBERED: usize = 1024;
    const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

    fn new() -> RejectLog {
        RejectLog {
            logged: HashSet::new(),
            suppressed: BTreeMap::new(),
            last_summary: Instant::now(),
        }
    }

    fn record(&mut self, device: Option<&str>, error: &Error) {
        let Some(reason) = error.reject_reason() else { return };
        let key = (device.unwrap_or("-").to_owned(), reason);
        if self.logged.len() < Self::MAX_REMEMBERED && !self.logged.contains(&key) {
            tracing::warn!(
                device = %key.0,
                %reason,
                "{error}; further rejections of this kind are summarised"
            );
            self.logged.insert(key);
        } else {
            *self.suppressed.entry(reason).or_default() += 1;
        }
        self.maybe_summarise();
    }

    fn maybe_summarise(&mut self) {
        if self.last_summary.elapsed() < Self::SUMMARY_PERIOD {
            return;
        }
        self.last_summary = Instant::now();
        if self.suppressed.is_empty() {
            return;
        }
        let summary: Vec<String> =
            self.suppressed.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::warn!(
            "rejected frames in the last minute (not logged one by one): {}",
            summary.join(" ")
        );
        self.suppressed.clear();
    }
}

/// The pipeline. Owns the store's writer and the replay windows; publishes to a [`LiveState`].
pub struct Ingest {
    opener: Opener,
    tracked: Tracked,
    store: Store,
    windows: HashMap<(DeviceId, KeyId), ReplayWindow>,
    live: Arc<LiveState>,
    log: RejectLog,
    alerts: Option<Arc<AlertDriver>>,
}

impl Ingest {
    /// A pipeline over `store`, with the replay windows restored from it. Window rows whose
    /// device name is invalid (a tampered file) are ignored.
    pub fn new(keys: Arc<KeyTable>, store: Store, live: Arc<LiveState>) -> Result<Ingest, Error> {
        let snapshot = store.snapshot()?;
        let windows = snapshot
            .windows
            .into_iter()
            .filter_map(|((device, key_id), state)| {
                let device = DeviceId::new(&device).ok()?;
                Some(((device, KeyId(key_id)), ReplayWindow::restore(state)))
            })
            .collect();
        let tracked = Tracked::from_live(&live, Limits::default());
        Ok(Ingest {
            opener: Opener::Sealed(keys),
            tracked,
            store,
            windows,
            live,
            log: RejectLog::new(),
            alerts: None,
        })
    }

    /// The same pipeline with other caps.
    pub fn with_limits(mut self, limits: Limits) -> Ingest {
        self.tracked.limits = limits;
        self
    }

    /// **INSECURE, for teaching only**: the same pipeline, but accepting plaintext frames
    /// ([`InsecurePlaintextCodec`]) from any device, without a key and without replay
    /// protection, as the teaching project did. The caps still hold. Also sets the flag that
    /// `/api/stats` and the dashboard's warning banner show.
    pub fn insecure_plaintext(mut self) -> Ingest {
        tracing::warn!(
            "INSECURE PLAINTEXT MODE: frames are accepted unencrypted and unauthenticated from \
             any device, with no replay protection; for teaching only"
        );
        self.opener = Opener::InsecurePlaintext;
        self.live.stats.set_insecure_plaintext(true);
        self
    }

    /// The same pipeline, feeding every committed frame to `alerts` after the commit.
    pub fn with_alerts(mut self, alerts: Arc<AlertDriver>) -> Ingest {
        self.alerts = Some(alerts);
        self
    }

    /// The shared state this pipeline publishes to.
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
    }

    /// Checks one frame against the keys and the windows (`pending` overrides the committed
    /// windows for frames of the current batch). Changes nothing.
    fn verify(
        &self,
        pending: &HashMap<(DeviceId, KeyId), ReplayWindow>,
        frame: &IncomingFrame,
    ) -> Result<AcceptedFrame, (Option<DeviceId>, Error)> {
        let topic = std::str::from_utf8(&frame.topic)
            .map_err(|_| ledtemp_core::Error::InvalidTopic)
            .and_then(Topic::parse)
            .map_err(|e| (None, Error::rejected(e)))?;
        let device = topic.device().clone();
        let fail = |e: ledtemp_core::Error| (Some(device.clone()), Error::rejected(e));
        let keys = match &self.opener {
            Opener::Sealed(keys) => keys,
            Opener::InsecurePlaintext => {
                let opened = InsecurePlaintextCodec::new(KeyId(0))
                    .open(&topic, &frame.payload)
                    .map_err(fail)?;
                let key = (device.clone(), opened.header.key_id);
                // No replay window: the stored window state is written back unchanged.
                let window = pending.get(&key).or_else(|| self.windows.get(&key));
                return Ok(AcceptedFrame {
                    device,
                    key_id: opened.header.key_id,
                    sequence: opened.header.sequence.get(),
                    received_ms: frame.received_ms,
                    window: window.copied().unwrap_or_default().state(),
                    message: opened.message,
                });
            }
        };
        let header = FrameHeader::parse(&frame.payload).map_err(fail)?;
        let key = (device.clone(), header.key_id);
        let opened = keys
            .open(&topic, header.key_id, &frame.payload, frame.received_ms)
            .map_err(|e| (Some(device.clone()), e))?;
        let window =
            pending.get(&key).or_else(|| self.windows.get(&key)).copied().unwrap_or_default();
        let state = window.state_after_frame(&opened).map_err(fail)?;
        Ok(AcceptedFrame {
            device,
            key_id: header.key_id,
            sequence: opened.header.sequence.get(),
            received_ms: frame.received_ms,
            window: state,
            message: opened.message,
        })
    }

    /// Runs one frame through the whole pipeline. `Err` is either a rejection
    /// ([`Error::Rejected`], counted and logged) or a database failure (counted; the frame is
    /// dropped and nothing changed). Never panics, whatever the bytes.
    pub fn handle(&mut self, frame: IncomingFrame) -> Result<AcceptedFrame, Error> {
        let mut results = self.handle_batch(vec![frame]);
        results.pop().unwrap_or_else(|| Err(Error::Dropped("empty batch".into())))
    }

    /// Runs `frames` through the pipeline and commits every accepted one in one transaction;
    /// returns one result per frame, in order. If the commit fails, every frame that had passed
    /// the checks is reported as [`Error::Store`] and nothing changed.
    pub fn handle_batch(
        &mut self,
        frames: Vec<IncomingFrame>,
    ) -> Vec<Result<AcceptedFrame, Error>> {
        let mut pending: HashMap<(DeviceId, KeyId), ReplayWindow> = HashMap::new();
        let mut accepted = Vec::new();
        // `None`: accepted (the next of `accepted`); `Some`: rejected.
        let mut rejections: Vec<Option<Error>> = Vec::with_capacity(frames.len());
        let mut added = Vec::new();
        for frame in &frames {
            let checked = self.verify(&pending, frame).and_then(|ok| {
                match self.tracked.admit(&ok, &mut added) {
                    Ok(()) => Ok(ok),
                    Err(error) => Err((Some(ok.device), error)),
                }
            });
            match checked {
                Ok(ok) => {
                    pending
                        .insert((ok.device.clone(), ok.key_id), ReplayWindow::restore(ok.window));
                    rejections.push(None);
                    accepted.push(ok);
                }
                Err((device, error)) => {
                    if let Some(reason) = error.reject_reason() {
                        self.live.stats.add_rejected(reason);
                    }
                    self.log.record(device.as_ref().map(|d| d.as_str()), &error);
                    rejections.push(Some(error));
                }
            }
        }
        self.log.maybe_summarise();
        let stored = if accepted.is_empty() { Ok(()) } else { self.store.commit(&accepted) };
        let stored = stored.map_err(|error| error.to_string());
        if let Err(error) = &stored {
            self.tracked.undo(added);
            self.live.stats.add_store_error();
            tracing::error!(frames = accepted.len(), "dropping frames: {error}");
        } else {
            self.windows.extend(pending);
            for frame in &accepted {
                self.publish(frame);
            }
            // Counted after the caches changed: whoever sees the count sees the data too.
            self.live.stats.add_accepted(accepted.len() as u64);
            if let Some(alerts) = &self.alerts
                && !accepted.is_empty()
            {
                alerts.handle_frames(&accepted);
            }
        }
        let mut accepted = accepted.into_iter();
        rejections
            .into_iter()
            .map(|rejection| match (rejection, &stored) {
                (Some(error), _) => Err(error),
                (None, Err(error)) => Err(Error::Dropped(error.clone())),
                (None, Ok(())) => {
                    accepted.next().ok_or_else(|| Error::Dropped("batch bookkeeping".into()))
                }
            })
            .collect()
    }

    /// Deletes readings and LED changes received before `cutoff_ms`.
    pub fn prune(&mut self, cutoff_ms: i64) -> Result<usize, Error> {
        self.store.prune(cutoff_ms)
    }

    /// Updates the caches for a committed frame and tells the SSE clients.
    fn publish(&self, frame: &AcceptedFrame) {
        let device = frame.device.as_str();
        let at_ms = frame.received_ms;
        let at = rfc3339(at_ms);
        let online = !matches!(
            frame.message,
            Message::Status(StatusReport { status: NodeStatus::Offline, .. })
        );
        let mut events = Vec::new();
        let was_online = self.live.update_device(device, |d| {
            let was = d.online && d.last_seen_ms.is_some();
            d.last_seen_ms = Some(d.last_seen_ms.map_or(at_ms, |seen| seen.max(at_ms)));
            d.online = online;
            let mut led = |name: &str, state: LedState| {
                d.leds.insert(name.to_owned(), (state.is_on(), at_ms));
                events.push(LiveEvent::Led(LedEvent {
                    device: device.to_owned(),
                    led: name.to_owned(),
                    on: state.is_on(),
                    at: at.clone(),
                }));
            };
            match &frame.message {
                Message::Temperature(reading) => {
                    d.temperatures
                        .insert(reading.sensor.as_str().to_owned(), (reading.temperature.0, at_ms));
                    events.push(LiveEvent::Temperature(TemperatureEvent {
                        device: device.to_owned(),
                        sensor: reading.sensor.as_str().to_owned(),
                        celsius: reading.temperature.to_celsius(),
                        at: at.clone(),
                    }));
                }
                Message::Led(change) => led(change.led.as_str(), change.state),
                Message::Status(StatusReport { status: NodeStatus::Online { leds }, .. }) => {
                    for status in leds {
                        led(status.led.as_str(), status.state);
                    }
                }
                Message::Status(StatusReport { status: NodeStatus::Offline, .. }) => {}
            }
            was
        });
        let is_status = matches!(frame.message, Message::Status(_));
        if is_status || was_online != online {
            self.live.broadcast(LiveEvent::Status(StatusEvent {
                device: device.to_owned(),
                online,
                at: at.clone(),
            }));
        }
        for event in events {
            self.live.broadcast(event);
        }
    }
}

/// How the ingest worker prunes old history.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep readings and LED changes this long; `None` keeps everything.
    pub keep: Option<Duration>,
    /// How often to prune.
    pub every: Duration,
}

/// The ingest worker: takes frames from `frames` until every sender is gone, committing what
/// arrived together in one transaction (up to [`MAX_BATCH`]), and prunes old history. Blocking:
/// run it on its own thread. Returns when the channel is closed and drained.
pub fn run_worker(
    mut ingest: Ingest,
    mut frames: mpsc::Receiver<IncomingFrame>,
    retention: Retention,
) {
    let mut last_prune: Option<Instant> = None;
    while let Some(first) = frames.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match frames.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let _ = ingest.handle_batch(batch);
        if let Some(keep) = retention.keep
            && last_prune.is_none_or(|at| at.elapsed() >= retention.every)
        {
            last_prune = Some(Instant::now());
            let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            match ingest.prune(crate::state::now_ms().saturating_sub(keep_ms)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned history older than the retention"),
                Err(error) => tracing::error!("pruning failed: {error}"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use ledtemp_core::{
        Algorithm, MAX_FRAME_LEN, MilliCelsius, SensorName, SequenceNumber, TemperatureReading,
        Uptime,
    };

    use super::*;

    fn reading(sensor: &str) -> Message {
        Message::Temperature(TemperatureReading {
            sensor: SensorName::new(sensor).unwrap(),
            temperature: MilliCelsius(20_000),
            uptime: Uptime(1),
        })
    }

    fn frame(codec: &impl Codec, device: &str, n: u64, message: &Message) -> IncomingFrame {
        let device = DeviceId::new(device).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = codec.seal(&device, SequenceNumber::new(n).unwrap(), message, &mut buf).unwrap();
        IncomingFrame {
            topic: message.topic(&device).to_topic_string().as_str().as_bytes().to_vec(),
            payload: buf[..len].to_vec(),
            received_ms: 1_700_000_000_000 + n as i64,
        }
    }

    fn pipeline(keys: KeyTable, dir: &std::path::Path) -> Ingest {
        let store = Store::open(&dir.join("ledtemp.db")).unwrap();
        let snapshot = store.snapshot().unwrap();
        let live = Arc::new(LiveState::new(keys.devices(), &snapshot, Duration::from_secs(120)));
        Ingest::new(Arc::new(keys), store, live).unwrap()
    }

    fn limit(result: Result<AcceptedFrame, Error>) -> bool {
        matches!(result, Err(e) if e.reject_reason() == Some(RejectReason::Limit))
    }

    #[test]
    fn a_device_with_a_stolen_key_cannot_invent_more_sensors_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let codec = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[7; 16]).unwrap();
        let mut keys = KeyTable::new();
        keys.insert(
            DeviceId::new("pi").unwrap(),
            AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[7; 16]).unwrap(),
        );
        let mut ingest =
            pipeline(keys, dir.path()).with_limits(Limits { max_sensors: 3, ..Limits::default() });
        for (n, sensor) in ["a", "b", "c", "a"].iter().enumerate() {
            assert!(ingest.handle(frame(&codec, "pi", n as u64, &reading(sensor))).is_ok());
        }
        assert!(limit(ingest.handle(frame(&codec, "pi", 10, &reading("d")))));
        assert_eq!(ingest.live().stats.rejected(RejectReason::Limit), 1);
        let devices = ingest.live().devices();
        assert_eq!(devices[0].1.temperatures.len(), 3, "the refused sensor changed nothing");
        // Known sensors still work.
        assert!(ingest.handle(frame(&codec, "pi", 11, &reading("b"))).is_ok());
    }

    #[test]
    fn insecure_plaintext_accepts_anyone_and_replays_but_not_more_devices_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let plain = InsecurePlaintextCodec::new(KeyId(1));
        let mut ingest = pipeline(KeyTable::new(), dir.path())
            .with_limits(Limits { max_devices: 2, ..Limits::default() })
            .insecure_plaintext();
        assert!(ingest.live().stats.snapshot().insecure_plaintext);
        let first = frame(&plain, "anyone", 5, &reading("t"));
        assert!(ingest.handle(first.clone()).is_ok());
        assert!(ingest.handle(first).is_ok(), "no replay protection in plaintext mode");
        assert!(ingest.handle(frame(&plain, "another", 0, &reading("t"))).is_ok());
        assert!(limit(ingest.handle(frame(&plain, "a-third", 0, &reading("t")))));
        assert_eq!(ingest.live().devices().len(), 2);
        // A batch that would cross the cap halfway: the first frame is taken, the second refused.
        let dir = tempfile::tempdir().unwrap();
        let mut ingest = pipeline(KeyTable::new(), dir.path())
            .with_limits(Limits { max_devices: 1, ..Limits::default() })
            .insecure_plaintext();
        let mut results = ingest.handle_batch(vec![
            frame(&plain, "one", 0, &reading("t")),
            frame(&plain, "two", 0, &reading("t")),
        ]);
        assert!(limit(results.pop().unwrap()) && results.pop().unwrap().is_ok());
    }
}
