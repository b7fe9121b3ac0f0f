//! The store seam: what the pipeline and the HTTP side need from a database, and nothing else.
//!
//! - [`Store`] is the one writer, owned by the ingest worker: it loads everything the caches are
//!   rebuilt from at start ([`Snapshot`]) and writes each batch as one transaction ([`Commit`]):
//!   the frames' history rows, the replay windows that admitted them, the devices' new states and
//!   the alert engine's state, all or nothing.
//! - [`HistoryStore`] answers the read-only history queries of the HTTP handlers, on its own
//!   connection so that readers never wait for the writer.
//!
//! One module per database implements both: [`SqliteStore`] and [`SqliteHistory`] today. Adding
//! a database is one new module here and one match arm where the server opens its store.

mod sqlite;

pub use sqlite::{SCHEMA_VERSION, SqliteHistory, SqliteStore};

use std::collections::{BTreeMap, HashMap};

use ledtemp_core::{DeviceId, KeyId, ReplayState, SensorName, Uptime};

use crate::Error;
use crate::alerts::{CapState, EngineState};
use crate::model::{DeviceState, DeviceUpdate, TemperaturePoint, UnixMillis};

/// A frame that passed every check, with what the store needs to persist it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedFrame {
    /// What it says, in the server's model (device, receive time, observation).
    pub update: DeviceUpdate,
    /// The key that opened it.
    pub key_id: KeyId,
    /// Its sequence number.
    pub sequence: u64,
    /// The node's uptime when it sealed the frame (stored beside the receive time; see
    /// `docs/protocol.md`).
    pub uptime: Uptime,
    /// The replay window of (device, key id) after accepting it: persisted with the data.
    pub window: ReplayState,
}

impl AcceptedFrame {
    /// The sending device.
    pub fn device(&self) -> &DeviceId {
        &self.update.device
    }
}

/// Everything the in-memory caches are rebuilt from at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Replay window state per (device, key id).
    pub windows: HashMap<(DeviceId, KeyId), ReplayState>,
    /// Every device with stored data, and its state.
    pub devices: BTreeMap<DeviceId, DeviceState>,
    /// The alert engine's state, if any was stored and it could be read.
    pub alerts: Option<EngineState>,
    /// Each notifier's daily cap, by notifier name.
    pub notifier_caps: HashMap<String, CapState>,
}

/// One transaction: everything a batch of frames changed.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The accepted frames, in order: their history rows and replay windows.
    pub frames: &'a [AcceptedFrame],
    /// The new state of each device the frames touched.
    pub devices: &'a [(&'a DeviceId, &'a DeviceState)],
    /// The alert engine's state, when the frames changed it.
    pub alerts: Option<&'a EngineState>,
}

/// The writer's side of a database. One per server, owned by the ingest worker; every method
/// either does all of its work or none.
pub trait Store: Send + 'static {
    /// Reads everything the caches, replay windows and alert engine are rebuilt from. Rows that
    /// do not hold a valid name or value (a tampered file) are skipped and logged.
    fn load(&mut self) -> Result<Snapshot, Error>;

    /// Writes `commit` in one transaction. On error nothing is written.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), Error>;

    /// Stores one notifier's daily cap (after a delivery).
    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) -> Result<(), Error>;

    /// Deletes temperature readings and LED changes received before `cutoff`; current states,
    /// replay windows and alert state are kept. Returns the rows deleted.
    fn prune(&mut self, cutoff: UnixMillis) -> Result<usize, Error>;

    /// Flushes and closes (for SQLite: checkpoints the write-ahead log into the file).
    fn close(self: Box<Self>) -> Result<(), Error>;
}

/// A history question: readings of one device in `[since, until]` (both included), optionally of
/// one sensor, at most `limit` (the most recent ones when there are more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The device.
    pub device: DeviceId,
    /// Only this sensor, if set.
    pub sensor: Option<SensorName>,
    /// Earliest receive time.
    pub since: UnixMillis,
    /// Latest receive time.
    pub until: UnixMillis,
    /// Most points returned.
    pub limit: usize,
}

/// The readers' side of a database: history for the HTTP handlers. Blocking: call it from
/// `spawn_blocking`.
pub trait HistoryStore: Send + Sync + 'static {
    /// The readings `query` asks for, oldest first.
    fn temperatures(&self, query: &HistoryQuery) -> Result<Vec<TemperaturePoint>, Error>;
}
