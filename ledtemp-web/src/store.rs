//! The SQLite store: readings, LED changes, device status and the replay windows, written together.
//!
//! One writer (the ingest pipeline) owns a [`Store`]; HTTP handlers read through a separate
//! read-only connection ([`HistoryReader`]). The database runs in WAL mode, so readers never
//! block the writer. `synchronous = NORMAL`: a crash of the process loses nothing that was
//! committed; a power loss may roll back the last commits, but a frame's data and the replay
//! window that admitted it are in one transaction and always roll back together, so a replayed
//! frame can at most restore a reading that was itself lost.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledtemp_core::{DeviceId, KeyId, LedState, Message, NodeStatus, ReplayState, StatusReport};
use rusqlite::{Connection, OpenFlags, Transaction, params};

use crate::Error;

/// Schema migrations, applied in order; the database's `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE devices (
        device TEXT PRIMARY KEY NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        online INTEGER NOT NULL,
        status_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE replay_windows (
        device TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        top INTEGER NOT NULL,
        seen INTEGER NOT NULL,
        expected_will INTEGER NOT NULL,
        PRIMARY KEY (device, key_id)
    ) STRICT;
    CREATE TABLE temperatures (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        uptime_ms INTEGER NOT NULL,
        milli_celsius INTEGER NOT NULL,
        sequence INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX temperatures_by_device_time ON temperatures (device, received_ms);
    CREATE TABLE led_changes (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        uptime_ms INTEGER NOT NULL,
        led_on INTEGER NOT NULL,
        sequence INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX led_changes_by_time ON led_changes (received_ms);
    CREATE TABLE leds (
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        led_on INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (device, led)
    ) STRICT;",
    // 2: alert state: the engine's state as JSON (one row) and each notifier's daily cap.
    "CREATE TABLE alert_engine (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL
    ) STRICT;
    CREATE TABLE alert_caps (
        notifier TEXT PRIMARY KEY NOT NULL,
        day INTEGER NOT NULL,
        count INTEGER NOT NULL
    ) STRICT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A frame that passed every check, with what the store needs to persist it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedFrame {
    /// The sending device (from the authenticated topic).
    pub device: DeviceId,
    /// The key that opened it.
    pub key_id: KeyId,
    /// Its sequence number.
    pub sequence: u64,
    /// Wall-clock time the server received it, milliseconds since the Unix epoch. Readings are
    /// dated by this time (see `docs/protocol.md` on uptime: the node's uptime is stored too).
    pub received_ms: i64,
    /// The replay window of (device, key id) after accepting it: persisted with the data.
    pub window: ReplayState,
    /// What it said.
    pub message: Message,
}

/// Last known values of one device, as restored from the store at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSnapshot {
    /// When any accepted frame last arrived, ms since the epoch; `None` if never.
    pub last_seen_ms: Option<i64>,
    /// The last status: online or offline.
    pub online: bool,
    /// Per LED: on, and when that state was reported (ms).
    pub leds: BTreeMap<String, (bool, i64)>,
    /// Per sensor: the last milli-degrees and when (ms).
    pub temperatures: BTreeMap<String, (i32, i64)>,
}

/// Everything the in-memory caches are rebuilt from at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Replay window state per (device, key id).
    pub windows: HashMap<(String, u8), ReplayState>,
    /// Per device.
    pub devices: BTreeMap<String, DeviceSnapshot>,
}

/// The writer's handle on the database.
pub struct Store {
    conn: Connection,
}

fn to_i64(value: u64) -> i64 {
    // SQLite integers are signed 64-bit: store the bit pattern (the `seen` bitmap uses all 64).
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn to_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

impl Store {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and migrates the
    /// schema. Fails with [`Error::SchemaTooNew`] on a database from a newer build.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store { conn })
    }

    /// Reads everything the caches and replay windows need.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let mut snapshot = Snapshot::default();
        let mut windows = self
            .conn
            .prepare("SELECT device, key_id, top, seen, expected_will FROM replay_windows")?;
        let rows = windows.query_map([], |row| {
            Ok((
                (row.get::<_, String>(0)?, row.get::<_, u8>(1)?),
                ReplayState {
                    top: to_u64(row.get(2)?),
                    seen: to_u64(row.get(3)?),
                    expected_will: to_u64(row.get(4)?),
                },
            ))
        })?;
        for row in rows {
            let (key, state) = row?;
            snapshot.windows.insert(key, state);
        }
        let mut devices = self.conn.prepare("SELECT device, last_seen_ms, online FROM devices")?;
        let rows = devices.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, bool>(2)?))
        })?;
        for row in rows {
            let (device, last_seen, online) = row?;
            let entry = snapshot.devices.entry(device).or_default();
            entry.last_seen_ms = Some(last_seen);
            entry.online = online;
        }
        let mut leds = self.conn.prepare("SELECT device, led, led_on, at_ms FROM leds")?;
        let rows = leds.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?))
        })?;
        for row in rows {
            let (device, led, on, at): (String, String, bool, i64) = row?;
            snapshot.devices.entry(device).or_default().leds.insert(led, (on, at));
        }
        let mut temperatures = self.conn.prepare(
            "SELECT device, sensor, milli_celsius, received_ms FROM temperatures
             WHERE id IN (SELECT MAX(id) FROM temperatures GROUP BY device, sensor)",
        )?;
        let rows = temperatures.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?))
        })?;
        for row in rows {
            let (device, sensor, milli, at): (String, String, i32, i64) = row?;
            snapshot.devices.entry(device).or_default().temperatures.insert(sensor, (milli, at));
        }
        Ok(snapshot)
    }

    /// Writes `frames` in one transaction: each frame's data together with its replay window
    /// state. On error nothing is written.
    pub fn commit(&mut self, frames: &[AcceptedFrame]) -> Result<(), Error> {
        let tx = self.conn.transaction()?;
        for frame in frames {
            write_frame(&tx, frame)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes temperature readings and LED changes received before `cutoff_ms`; the current
    /// LED states, device status and replay windows are kept. Returns the rows deleted.
    pub fn prune(&mut self, cutoff_ms: i64) -> Result<usize, Error> {
        let tx = self.conn.transaction()?;
        let mut deleted =
            tx.execute("DELETE FROM temperatures WHERE received_ms < ?1", params![cutoff_ms])?;
        deleted +=
            tx.execute("DELETE FROM led_changes WHERE received_ms < ?1", params![cutoff_ms])?;
        tx.commit()?;
        Ok(deleted)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew(version));
    }
    let tx = conn.transaction()?;
    for (applied, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", applied as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn write_frame(tx: &Transaction<'_>, frame: &AcceptedFrame) -> Result<(), Error> {
    let device = frame.device.as_str();
    let at = frame.received_ms;
    let sequence = to_i64(frame.sequence);
    tx.prepare_cached(
        "INSERT INTO replay_windows (device, key_id, top, seen, expected_will)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device, key_id) DO UPDATE
         SET top = excluded.top, seen = excluded.seen, expected_will = excluded.expected_will",
    )?
    .execute(params![
        device,
        frame.key_id.0,
        to_i64(frame.window.top),
        to_i64(frame.window.seen),
        to_i64(frame.window.expected_will),
    ])?;
    let online =
        !matches!(frame.message, Message::Status(StatusReport { status: NodeStatus::Offline, .. }));
    tx.prepare_cached(
        "INSERT INTO devices (device, last_seen_ms, online, status_ms) VALUES (?1, ?2, ?3, ?2)
         ON CONFLICT (device) DO UPDATE
         SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
             status_ms = CASE WHEN online = excluded.online THEN status_ms
                              ELSE excluded.status_ms END,
             online = excluded.online",
    )?
    .execute(params![device, at, online])?;
    let set_led = |led: &str, state: LedState| -> Result<(), Error> {
        tx.prepare_cached(
            "INSERT INTO leds (device, led, led_on, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, led) DO UPDATE
             SET led_on = excluded.led_on, at_ms = excluded.at_ms",
        )?
        .execute(params![device, led, state.is_on(), at])?;
        Ok(())
    };
    match &frame.message {
        Message::Temperature(reading) => {
            tx.prepare_cached(
                "INSERT INTO temperatures
                 (device, sensor, received_ms, uptime_ms, milli_celsius, sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                reading.sensor.as_str(),
                at,
                reading.uptime.0,
                reading.temperature.0,
                sequence
            ])?;
        }
        Message::Led(change) => {
            tx.prepare_cached(
                "INSERT INTO led_changes (device, led, received_ms, uptime_ms, led_on, sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                change.led.as_str(),
                at,
                change.uptime.0,
                change.state.is_on(),
                sequence
            ])?;
            set_led(change.led.as_str(), change.state)?;
        }
        Message::Status(StatusReport { status: NodeStatus::Online { leds }, .. }) => {
            for led in leds {
                set_led(led.led.as_str(), led.state)?;
            }
        }
        Message::Status(StatusReport { status: NodeStatus::Offline, .. }) => {}
    }
    Ok(())
}

/// The alert engine's state and the notifiers' daily caps, as stored. Opened on the same file
/// as the [`Store`] (open that first: it migrates), on its own connection, so the alert driver
/// and the ingest worker never wait for each other's locks in the process.
pub(crate) struct AlertStateStore {
    conn: Connection,
}

impl AlertStateStore {
    /// Opens the alert tables of the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<AlertStateStore, Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(AlertStateStore { conn })
    }

    /// The engine's state as stored (JSON), if any.
    pub(crate) fn engine_state(&self) -> Result<Option<String>, Error> {
        let mut statement = self.conn.prepare("SELECT state FROM alert_engine WHERE id = 1")?;
        let mut rows = statement.query([])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }

    /// Replaces the engine's stored state.
    pub(crate) fn save_engine_state(&self, json: &str) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO alert_engine (id, state) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![json])?;
        Ok(())
    }

    /// Each notifier's stored daily cap: `(day, count)` by name.
    pub(crate) fn caps(&self) -> Result<HashMap<String, (i64, u32)>, Error> {
        let mut statement = self.conn.prepare("SELECT notifier, day, count FROM alert_caps")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, (row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)))
        })?;
        let mut caps = HashMap::new();
        for row in rows {
            let (name, (day, count)) = row?;
            // A count that does not fit (a tampered file) counts as a full day.
            caps.insert(name, (day, u32::try_from(count).unwrap_or(u32::MAX)));
        }
        Ok(caps)
    }

    /// Stores one notifier's daily cap.
    pub(crate) fn save_cap(&self, notifier: &str, day: i64, count: u32) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO alert_caps (notifier, day, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (notifier) DO UPDATE SET day = excluded.day, count = excluded.count",
            )?
            .execute(params![notifier, day, i64::from(count)])?;
        Ok(())
    }
}

/// One point of a temperature history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    /// Sensor name.
    pub sensor: String,
    /// When it was received, ms since the epoch.
    pub at_ms: i64,
    /// Milli-degrees Celsius.
    pub milli_celsius: i32,
}

/// A read-only connection for the HTTP handlers' history queries. Cheap to clone.
#[derive(Clone)]
pub struct HistoryReader {
    conn: Arc<Mutex<Connection>>,
}

impl HistoryReader {
    /// Opens `path` read-only. Open the [`Store`] first: it creates and migrates the file.
    pub fn open(path: &Path) -> Result<HistoryReader, Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(HistoryReader { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Up to `limit` readings of `device` received in `[since_ms, until_ms]` (both included),
    /// optionally of one sensor; the most recent ones when there are more, returned oldest first.
    /// Blocking: call it from `spawn_blocking`.
    pub fn temperatures(
        &self,
        device: &str,
        sensor: Option<&str>,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<HistoryPoint>, Error> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| Error::TaskFailed("history reader lock poisoned".into()))?;
        let mut statement = conn.prepare_cached(
            "SELECT sensor, received_ms, milli_celsius FROM temperatures
             WHERE device = ?1 AND received_ms >= ?2 AND received_ms <= ?3
               AND (?4 IS NULL OR sensor = ?4)
             ORDER BY received_ms DESC, id DESC LIMIT ?5",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows =
            statement.query_map(params![device, since_ms, until_ms, sensor, limit], |row| {
                Ok(HistoryPoint {
                    sensor: row.get(0)?,
                    at_ms: row.get(1)?,
                    milli_celsius: row.get(2)?,
                })
            })?;
        let mut points = rows.collect::<Result<Vec<_>, _>>()?;
        points.reverse();
        Ok(points)
    }
}
