//! What the HTTP side reads: counters, the last known state of each device (a cache the store
//! can rebuild), and the broadcast channel of verified updates. Only the ingest pipeline and the
//! MQTT subscriber write here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::RejectReason;
use crate::store::{DeviceSnapshot, Snapshot};

/// How many events a slow SSE client may fall behind before it skips ahead.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Frame counters and link state, all lock-free.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    store_errors: AtomicU64,
    keyring_reload_failures: AtomicU64,
    broker_connected: AtomicBool,
    sse_clients: AtomicUsize,
    insecure_plaintext: AtomicBool,
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
    /// Open `/api/events` streams.
    pub sse_clients: usize,
    /// **INSECURE teaching mode** (`--insecure-plaintext`): frames are accepted in the clear
    /// from any device, without authentication or replay protection. The dashboard shows a
    /// warning banner while this is true.
    pub insecure_plaintext: bool,
}

impl Stats {
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
            },
            broker_connected: self.broker_connected(),
            sse_clients: self.sse_clients.load(Ordering::Relaxed),
            insecure_plaintext: self.insecure_plaintext(),
        }
    }
}

/// A verified update, as sent on `/api/events`.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// `event: temperature`.
    Temperature(TemperatureEvent),
    /// `event: led`.
    Led(LedEvent),
    /// `event: status`.
    Status(StatusEvent),
    /// `event: stats`.
    Stats(StatsSnapshot),
    /// `event: alert`, data `{}`: the alerts or a notifier's deliveries changed; read
    /// `/api/alerts`.
    Alert,
}

impl LiveEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Temperature(_) => "temperature",
            LiveEvent::Led(_) => "led",
            LiveEvent::Status(_) => "status",
            LiveEvent::Stats(_) => "stats",
            LiveEvent::Alert => "alert",
        }
    }

    /// The SSE data: one line of JSON.
    pub fn to_json(&self) -> String {
        let json = match self {
            LiveEvent::Temperature(e) => serde_json::to_string(e),
            LiveEvent::Led(e) => serde_json::to_string(e),
            LiveEvent::Status(e) => serde_json::to_string(e),
            LiveEvent::Stats(e) => serde_json::to_string(e),
            LiveEvent::Alert => Ok("{}".to_owned()),
        };
        // These types only hold strings and numbers: serialising cannot fail.
        json.unwrap_or_default()
    }
}

/// A temperature reading, for the API and events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemperatureEvent {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f64,
    /// RFC 3339 receive time.
    pub at: String,
}

/// An LED state, for events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedEvent {
    /// Device id.
    pub device: String,
    /// LED name.
    pub led: String,
    /// Lit or not.
    pub on: bool,
    /// RFC 3339 receive time.
    pub at: String,
}

/// A device going online or offline, for events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEvent {
    /// Device id.
    pub device: String,
    /// Online or not.
    pub online: bool,
    /// RFC 3339 time of the change.
    pub at: String,
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The in-memory state shared by the ingest pipeline (writer) and the HTTP handlers (readers).
#[derive(Debug)]
pub struct LiveState {
    /// Counters.
    pub stats: Stats,
    devices: RwLock<BTreeMap<String, DeviceSnapshot>>,
    /// The keyring's devices, shown before their first frame; grows when a reload adds some.
    known: RwLock<BTreeSet<String>>,
    events: broadcast::Sender<LiveEvent>,
    offline_after: Duration,
}

impl LiveState {
    /// State for the keyring's `devices`, restored from a store `snapshot`. A device counts as
    /// offline when nothing arrived from it for `offline_after`, whatever its last status said.
    pub fn new(
        devices: impl IntoIterator<Item = String>,
        snapshot: &Snapshot,
        offline_after: Duration,
    ) -> LiveState {
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        LiveState {
            stats: Stats::default(),
            devices: RwLock::new(snapshot.devices.clone()),
            known: RwLock::new(devices.into_iter().collect()),
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
    pub fn knows(&self, device: &str) -> bool {
        self.known.read().unwrap_or_else(PoisonError::into_inner).contains(device)
            || self.devices.read().unwrap_or_else(PoisonError::into_inner).contains_key(device)
    }

    /// Adds devices of a reloaded keyring, so they are listed before their first frame. A device
    /// the reload removed stays listed while it has data, as after a restart.
    pub(crate) fn add_known(&self, devices: impl IntoIterator<Item = String>) {
        self.known.write().unwrap_or_else(PoisonError::into_inner).extend(devices);
    }

    /// Every device (keyring and stored), sorted by id, with its last values.
    pub fn devices(&self) -> Vec<(String, DeviceSnapshot)> {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let mut ids: BTreeSet<&String> = known.iter().collect();
        ids.extend(devices.keys());
        ids.into_iter()
            .map(|id| (id.clone(), devices.get(id).cloned().unwrap_or_default()))
            .collect()
    }

    /// Whether a device with these last values counts as online at `now_ms`.
    pub fn is_online(&self, device: &DeviceSnapshot, now_ms: i64) -> bool {
        let timeout = i64::try_from(self.offline_after.as_millis()).unwrap_or(i64::MAX);
        device.online
            && device.last_seen_ms.is_some_and(|seen| now_ms.saturating_sub(seen) < timeout)
    }

    /// Applies a committed change to one device's cache (only the ingest pipeline calls this).
    pub(crate) fn update_device<T>(
        &self,
        device: &str,
        change: impl FnOnce(&mut DeviceSnapshot) -> T,
    ) -> T {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        change(devices.entry(device.to_owned()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_device_counts_as_offline_after_the_timeout() {
        let live = LiveState::new(["a".to_owned()], &Snapshot::default(), Duration::from_secs(120));
        let device =
            DeviceSnapshot { last_seen_ms: Some(1_000_000), online: true, ..Default::default() };
        assert!(live.is_online(&device, 1_000_000 + 119_999));
        assert!(!live.is_online(&device, 1_000_000 + 120_000));
        let never = DeviceSnapshot { online: true, ..Default::default() };
        assert!(!live.is_online(&never, 0));
        assert!(live.knows("a") && !live.knows("b"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
