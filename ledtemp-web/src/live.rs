//! What the HTTP side reads: counters, the last known state of each device (a cache of the
//! store's device states, rebuilt from it at start), and the broadcast channel of verified
//! updates. Only the ingest worker writes the device cache and publishes device events; the MQTT
//! subscriber sets the link state; HTTP handlers read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ledtemp_core::DeviceId;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::RejectReason;
use crate::command::CommandOutcome;
use crate::model::{DeviceState, DeviceSummary, DeviceUpdate, Reading, UnixMillis};

/// How many events a slow SSE client may fall behind before it skips ahead.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Frame counters and link state, all lock-free.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    store_errors: AtomicU64,
    /// Set while the last commit failed (until one succeeds).
    store_failing: AtomicBool,
    keyring_reload_failures: AtomicU64,
    broker_connected: AtomicBool,
    sse_clients: AtomicUsize,
    insecure_plaintext: AtomicBool,
    commands: [AtomicU64; CommandOutcome::ALL.len()],
}

/// The rejected-frame counters by reason, as `/api/stats` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectedCounts {
    /// [`RejectReason::UnknownDevice`].
    pub unknown_device: u64,
    /// [`RejectReason::BadTag`].
    pub bad_tag: u64,
    /// [`RejectReason::Replay`].
    pub replay: u64,
    /// [`RejectReason::Malformed`].
    pub malformed: u64,
    /// [`RejectReason::Oversize`].
    pub oversize: u64,
    /// [`RejectReason::Revoked`].
    pub revoked: u64,
    /// [`RejectReason::Limit`].
    pub limit: u64,
    /// [`RejectReason::StaleWill`].
    pub stale_will: u64,
    /// [`RejectReason::Redelivered`].
    pub redelivered: u64,
}

/// A copy of the counters: the body of `/api/stats` and of the `stats` SSE event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Frames that passed every check and were stored.
    pub accepted: u64,
    /// Frames refused, by reason.
    pub rejected: RejectedCounts,
    /// Whether the MQTT subscriber is connected and subscribed.
    pub broker_connected: bool,
    /// Whether the database takes commits (false from a failed commit until one succeeds).
    pub store_ok: bool,
    /// Open `/api/events` streams.
    pub sse_clients: usize,
    /// **INSECURE teaching mode** (`--insecure-plaintext`): frames are accepted in the clear
    /// from any device, without authentication or replay protection. The dashboard shows a
    /// warning banner while this is true.
    pub insecure_plaintext: bool,
}

impl Stats {
    /// Counts an LED command by how it ended.
    pub fn add_command(&self, outcome: CommandOutcome) {
        if let Some(counter) = self.commands.get(outcome as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// LED commands that ended with `outcome`.
    pub fn commands(&self, outcome: CommandOutcome) -> u64 {
        self.commands.get(outcome as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts accepted frames.
    pub fn add_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one rejected frame.
    pub fn add_rejected(&self, reason: RejectReason) {
        if let Some(counter) = self.rejected.get(reason.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed database commit (its frames were dropped).
    pub fn add_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Rejected frames of one reason so far.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(reason.index()).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Failed commits so far.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Records whether the last commit succeeded; returns whether that changed the state.
    pub(crate) fn set_store_ok(&self, ok: bool) -> bool {
        self.store_failing.swap(!ok, Ordering::Relaxed) == ok
    }

    /// Whether the database takes commits (false from a failed commit until one succeeds).
    pub fn store_ok(&self) -> bool {
        !self.store_failing.load(Ordering::Relaxed)
    }

    /// Counts a keyring reload (SIGHUP) that failed; the keys loaded before stayed in use.
    pub fn add_keyring_reload_failure(&self) {
        self.keyring_reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed keyring reloads so far.
    pub fn keyring_reload_failures(&self) -> u64 {
        self.keyring_reload_failures.load(Ordering::Relaxed)
    }

    /// Records the MQTT link state.
    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the MQTT link is up.
    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// Records that the server runs in the insecure plaintext teaching mode.
    pub fn set_insecure_plaintext(&self, insecure: bool) {
        self.insecure_plaintext.store(insecure, Ordering::Relaxed);
    }

    /// Whether the server runs in the insecure plaintext teaching mode.
    pub fn insecure_plaintext(&self) -> bool {
        self.insecure_plaintext.load(Ordering::Relaxed)
    }

    pub(crate) fn sse_client_opened(&self) {
        self.sse_clients.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sse_client_closed(&self) {
        self.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |reason| self.rejected(reason);
        StatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: RejectedCounts {
                unknown_device: r(RejectReason::UnknownDevice),
                bad_tag: r(RejectReason::BadTag),
                replay: r(RejectReason::Replay),
                malformed: r(RejectReason::Malformed),
                oversize: r(RejectReason::Oversize),
                revoked: r(RejectReason::Revoked),
                limit: r(RejectReason::Limit),
                stale_will: r(RejectReason::StaleWill),
                redelivered: r(RejectReason::Redelivered),
            },
            broker_connected: self.broker_connected(),
            store_ok: self.store_ok(),
            sse_clients: self.sse_clients.load(Ordering::Relaxed),
            insecure_plaintext: self.insecure_plaintext(),
        }
    }
}

/// A verified update, as sent on `/api/events`. The JSON of each is the model's, with the
/// device id added.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A reading, named by its kind: `event: temperature`, `{"device", "sensor", "celsius", "at"}`,
    /// or `event: led`, `{"device", "led", "on", "at"}`.
    Reading(DeviceId, Reading),
    /// `event: status`, `{"device", "online", "at"}`: a device went online or offline (by its
    /// status frames, or by falling silent for the offline timeout).
    Status(DeviceId, StatusChange),
    /// `event: stats`: the counters ([`StatsSnapshot`]).
    Stats(StatsSnapshot),
    /// `event: alert`, data `{}`: the alerts or a notifier's deliveries changed; read
    /// `/api/alerts`.
    Alert,
}

/// A device going online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusChange {
    /// Online or not.
    pub online: bool,
    /// When.
    pub at: UnixMillis,
}

/// `{"device": ..., <the fields of the value>}`.
#[derive(Serialize)]
struct ForDevice<'a, T: Serialize> {
    device: &'a DeviceId,
    #[serde(flatten)]
    value: &'a T,
}

impl LiveEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Reading(_, reading) => reading.kind(),
            LiveEvent::Status(..) => "status",
            LiveEvent::Stats(_) => "stats",
            LiveEvent::Alert => "alert",
        }
    }

    /// The SSE data: one line of JSON.
    pub fn to_json(&self) -> String {
        let json = match self {
            LiveEvent::Reading(device, value) => {
                serde_json::to_string(&ForDevice { device, value })
            }
            LiveEvent::Status(device, value) => serde_json::to_string(&ForDevice { device, value }),
            LiveEvent::Stats(stats) => serde_json::to_string(stats),
            LiveEvent::Alert => Ok("{}".to_owned()),
        };
        // These types only hold strings, numbers and booleans: serialising cannot fail.
        json.unwrap_or_default()
    }
}

/// One device in the cache: its state, and the online flag last announced to event clients.
#[derive(Debug, Clone, Default)]
struct CachedDevice {
    state: DeviceState,
    announced_online: Option<bool>,
}

/// The in-memory state shared by the ingest worker (writer) and the HTTP handlers (readers).
#[derive(Debug)]
pub struct LiveState {
    /// Counters.
    pub stats: Stats,
    devices: RwLock<BTreeMap<DeviceId, CachedDevice>>,
    /// The keyring's devices, shown before their first frame; grows when a reload adds some.
    known: RwLock<BTreeSet<DeviceId>>,
    events: broadcast::Sender<LiveEvent>,
    offline_after: Duration,
}

impl LiveState {
    /// State for the keyring's `known` devices and the stored `devices`. A device counts as
    /// offline when nothing arrived from it for `offline_after`, whatever its last status said.
    pub fn new(
        known: impl IntoIterator<Item = DeviceId>,
        devices: BTreeMap<DeviceId, DeviceState>,
        offline_after: Duration,
    ) -> LiveState {
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let devices = devices
            .into_iter()
            .map(|(id, state)| (id, CachedDevice { state, announced_online: None }))
            .collect();
        LiveState {
            stats: Stats::default(),
            devices: RwLock::new(devices),
            known: RwLock::new(known.into_iter().collect()),
            events,
            offline_after,
        }
    }

    /// A new receiver of every event broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    /// Sends `event` to every SSE client (none listening is fine).
    pub fn broadcast(&self, event: LiveEvent) {
        let _ = self.events.send(event);
    }

    /// Whether `device` is in the keyring or has stored data.
    pub fn knows(&self, device: &DeviceId) -> bool {
        // One lock at a time: each guard is dropped at the end of its statement.
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner).contains(device);
        known || self.devices.read().unwrap_or_else(PoisonError::into_inner).contains_key(device)
    }

    /// How many devices are tracked: keyring devices and devices with stored data.
    pub fn device_count(&self) -> usize {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.len() + devices.keys().filter(|id| !known.contains(*id)).count()
    }

    /// Adds devices of a reloaded keyring, so they are listed before their first frame. A device
    /// the reload removed stays listed while it has data, as after a restart.
    pub(crate) fn add_known(&self, devices: impl IntoIterator<Item = DeviceId>) {
        self.known.write().unwrap_or_else(PoisonError::into_inner).extend(devices);
    }

    /// The state of one device (default for a keyring device never heard from); `None` for a
    /// device the server does not track.
    pub fn device(&self, id: &DeviceId) -> Option<DeviceState> {
        let cached = {
            let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
            devices.get(id).map(|cached| cached.state.clone())
        };
        // The devices lock is released first: taking a read lock twice can deadlock behind a
        // waiting writer.
        cached.or_else(|| self.knows(id).then(DeviceState::default))
    }

    /// When `device` was last heard from.
    pub fn last_seen(&self, device: &DeviceId) -> Option<UnixMillis> {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        devices.get(device).and_then(|cached| cached.state.last_seen)
    }

    /// Every device (keyring and stored), sorted by id, with its state.
    pub fn devices(&self) -> Vec<(DeviceId, DeviceState)> {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let mut ids: BTreeSet<&DeviceId> = known.iter().collect();
        ids.extend(devices.keys());
        ids.into_iter()
            .map(|id| (id.clone(), devices.get(id).map(|c| c.state.clone()).unwrap_or_default()))
            .collect()
    }

    /// Every device as `GET /api/devices` shows it at `now` (JSON).
    pub fn summaries_json(&self, now: UnixMillis) -> String {
        let devices = self.devices();
        let summaries: Vec<DeviceSummary<'_>> = devices
            .iter()
            .map(|(id, state)| DeviceSummary { id, state, online: self.is_online(state, now) })
            .collect();
        // Strings, numbers and booleans only: serialising cannot fail.
        serde_json::to_string(&summaries).unwrap_or_default()
    }

    /// Whether a device in `state` counts as online at `now`.
    pub fn is_online(&self, state: &DeviceState, now: UnixMillis) -> bool {
        state.is_online(now, self.offline_after)
    }

    /// Stores the committed new states of devices and announces `updates` (in order) to event
    /// clients: each reading and LED state, and a status event for each status frame or change
    /// of the online flag. Only the ingest worker calls this, after the commit.
    pub(crate) fn publish(&self, states: Vec<(DeviceId, DeviceState)>, updates: &[&DeviceUpdate]) {
        let mut events = Vec::new();
        {
            let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
            let mut online: BTreeMap<&DeviceId, bool> = BTreeMap::new();
            for update in updates {
                let device = &update.device;
                // A retained frame is no sign of life: it changes values, never the status.
                if !update.retained {
                    let before = *online.entry(device).or_insert_with(|| {
                        devices
                            .get(device)
                            .is_some_and(|c| c.state.online && c.state.last_seen.is_some())
                    });
                    let now_online = update.says_online();
                    online.insert(device, now_online);
                    if update.is_status() || before != now_online {
                        let change = StatusChange { online: now_online, at: update.at };
                        events.push(LiveEvent::Status(device.clone(), change));
                    }
                }
                for reading in update.readings() {
                    events.push(LiveEvent::Reading(device.clone(), reading));
                }
            }
            for (id, state) in states {
                let entry = devices.entry(id).or_default();
                entry.announced_online = Some(state.online);
                entry.state = state;
            }
        }
        for event in events {
            self.broadcast(event);
        }
    }

    /// Announces a status event for each device whose online flag, as shown at `now`, differs
    /// from the one last announced (a device that fell silent for the offline timeout, which no
    /// frame announces). Only the ingest worker calls this, on its ticks.
    pub(crate) fn announce_silences(&self, now: UnixMillis) {
        let mut changed = Vec::new();
        {
            let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
            for (id, cached) in devices.iter_mut() {
                let online = cached.state.is_online(now, self.offline_after);
                if cached.announced_online.replace(online).is_some_and(|before| before != online) {
                    changed.push((id.clone(), StatusChange { online, at: now }));
                }
            }
        }
        for (id, change) in changed {
            self.broadcast(LiveEvent::Status(id, change));
        }
    }
}

impl crate::alerts::LastSeen for LiveState {
    fn last_seen(&self, device: &str) -> Option<i64> {
        let device = DeviceId::new(device).ok()?;
        LiveState::last_seen(self, &device).map(UnixMillis::as_millis)
    }
}
