//! The SQLite store: readings, LED changes, device states, replay windows and alert state,
//! written together.
//!
//! One writer ([`SqliteStore`], owned by the ingest worker); HTTP handlers read through a separate
//! read-only connection ([`SqliteHistory`]). The database runs in WAL mode, so readers never
//! block the writer. `synchronous = NORMAL`: a crash of the process loses nothing that was
//! committed; a power loss may roll back the last commits, but a frame's data, the replay window
//! that admitted it and the state changes it caused are in one transaction and always roll back
//! together, so a replayed frame can at most restore a reading that was itself lost.
//!
//! This is the only module that knows SQL or `rusqlite`: values become columns here and come
//! back as the model's types here.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ledtemp_core::{DeviceId, KeyId, LedName, LedState, MilliCelsius, ReplayState, SensorName};

use crate::command::{CommandRecord, CommandSettlement};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    Commit, CommitOutcome, HistoryQuery, HistoryStore, RangeReader, Snapshot, Store, name, to_i64,
    to_u64,
};
use crate::Error;
use crate::alerts::{CapState, EngineState};
use crate::history::{self, Aggregate, ExportSink, HOUR_MS, MINUTE_MS, Resolution};
use crate::history::{LedHistory, RangeQuery, TemperatureHistory};
use crate::model::{DeviceState, LedPoint, Observation, Reading, TemperaturePoint, UnixMillis};

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
    // 3: LED commands: the server's own sequence counter per device key (the end of the last
    // reserved block) and the command log.
    "CREATE TABLE command_sequences (
        device TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        reserved_end INTEGER NOT NULL,
        PRIMARY KEY (device, key_id)
    ) STRICT;
    CREATE TABLE command_log (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        by TEXT NOT NULL,
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        led_on INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        sequence INTEGER,
        confirmed_ms INTEGER
    ) STRICT;
    CREATE INDEX command_log_by_device ON command_log (device, id);",
    // 4: history over ranges. Per-sensor 1-minute and 1-hour aggregates (min, max, sum, count
    // in milli-degrees; `bucket_ms` the bucket's start), kept up to date in each commit and
    // backfilled here from the readings present; the cut-offs of the prunes (raw readings and
    // minutes are complete from them on); an index per sensor for the raw chart and the export,
    // and one per device for the LED timeline.
    "CREATE TABLE temperature_minutes (
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        bucket_ms INTEGER NOT NULL,
        min_milli INTEGER NOT NULL,
        max_milli INTEGER NOT NULL,
        sum_milli INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (device, sensor, bucket_ms)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE temperature_hours (
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        bucket_ms INTEGER NOT NULL,
        min_milli INTEGER NOT NULL,
        max_milli INTEGER NOT NULL,
        sum_milli INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (device, sensor, bucket_ms)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX temperature_hours_by_time ON temperature_hours (device, bucket_ms);
    INSERT INTO temperature_minutes
        SELECT device, sensor, received_ms - ((received_ms % 60000) + 60000) % 60000 AS bucket,
               MIN(milli_celsius), MAX(milli_celsius), SUM(milli_celsius), COUNT(*)
        FROM temperatures GROUP BY device, sensor, bucket;
    INSERT INTO temperature_hours
        SELECT device, sensor, bucket_ms - ((bucket_ms % 3600000) + 3600000) % 3600000 AS bucket,
               MIN(min_milli), MAX(max_milli), SUM(sum_milli), SUM(count)
        FROM temperature_minutes GROUP BY device, sensor, bucket;
    CREATE TABLE history_bounds (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        raw_since_ms INTEGER NOT NULL,
        minutes_since_ms INTEGER NOT NULL
    ) STRICT;
    INSERT INTO history_bounds VALUES (1, -9223372036854775808, -9223372036854775808);
    CREATE INDEX temperatures_by_sensor_time ON temperatures (device, sensor, received_ms);
    CREATE INDEX led_changes_by_device_time ON led_changes (device, received_ms);",
];

/// The aggregate upsert of each table: a batch's rows added to the stored ones.
const UPSERT_MINUTES: &str = "INSERT INTO temperature_minutes
     (device, sensor, bucket_ms, min_milli, max_milli, sum_milli, count)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (device, sensor, bucket_ms) DO UPDATE
     SET min_milli = MIN(min_milli, excluded.min_milli),
         max_milli = MAX(max_milli, excluded.max_milli),
         sum_milli = sum_milli + excluded.sum_milli,
         count = count + excluded.count";

/// As [`UPSERT_MINUTES`], for the hours.
const UPSERT_HOURS: &str = "INSERT INTO temperature_hours
     (device, sensor, bucket_ms, min_milli, max_milli, sum_milli, count)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (device, sensor, bucket_ms) DO UPDATE
     SET min_milli = MIN(min_milli, excluded.min_milli),
         max_milli = MAX(max_milli, excluded.max_milli),
         sum_milli = sum_milli + excluded.sum_milli,
         count = count + excluded.count";

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The write-ahead log is copied into the database file (a checkpoint) once it holds this many
/// pages (4 KiB each): SQLite's default, 4 MiB.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 1000;

/// After a checkpoint, the write-ahead log file is cut back to at most this many bytes, so it
/// stays bounded instead of keeping its largest size for ever (SQLite's default is to keep it).
/// A WAL that a long reader kept from being reset can grow past the checkpoint size; this gives
/// the space back once it is reset.
const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the database at `path` cannot be opened, and what to do: the messages a user meets first.
fn open_error(path: &Path, error: &rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let problem = match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "is not a SQLite database (another program's file?): point --database at another \
             file, or move this one away"
                .to_owned()
        }
        Some(ErrorCode::ReadOnly) => format!(
            "is read-only: the server writes the file and, beside it, {0}-wal and {0}-shm; \
             give its user write access to them and to their directory",
            path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
        Some(ErrorCode::CannotOpen) => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => format!(
                "its directory {} does not exist: create it, or point --database elsewhere",
                dir.display()
            ),
            _ => "cannot be opened: check that the server's user may read and write it and its \
                  directory"
                .to_owned(),
        },
        _ => error.to_string(),
    };
    Error::Database { path: path.to_path_buf(), problem }
}

/// A database failure, for the crate's error type (no `rusqlite` type leaves this module).
fn db(error: rusqlite::Error) -> Error {
    Error::Store(Box::new(error))
}

/// The writer's connection.
pub struct SqliteStore {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and migrates the
    /// schema. Fails with [`Error::SchemaTooNew`] on a database from a newer build.
    ///
    /// A file that is not a SQLite database, a read-only file or directory, or a directory that
    /// does not exist is [`Error::Database`], naming the file and the fix.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        let opened = Connection::open(path).and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
            conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
            Ok(conn)
        });
        let mut conn = opened.map_err(|error| open_error(path, &error))?;
        match migrate(&mut conn) {
            Err(Error::Store(error)) => {
                let problem = match error.downcast_ref::<rusqlite::Error>() {
                    Some(error) => return Err(open_error(path, error)),
                    None => error.to_string(),
                };
                Err(Error::Database { path: path.to_path_buf(), problem })
            }
            Err(other) => Err(other),
            Ok(()) => Ok(SqliteStore { conn }),
        }
    }

    fn load_windows(&self, snapshot: &mut Snapshot) -> rusqlite::Result<()> {
        let mut windows = self
            .conn
            .prepare("SELECT device, key_id, top, seen, expected_will FROM replay_windows")?;
        let rows = windows.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u8>(1)?,
                ReplayState {
                    top: to_u64(row.get(2)?),
                    seen: to_u64(row.get(3)?),
                    expected_will: to_u64(row.get(4)?),
                },
            ))
        })?;
        for row in rows {
            let (device, key_id, state) = row?;
            snapshot.add_window(&device, KeyId(key_id), state);
        }
        Ok(())
    }

    fn load_devices(&self, snapshot: &mut Snapshot) -> rusqlite::Result<()> {
        let mut devices = self.conn.prepare("SELECT device, last_seen_ms, online FROM devices")?;
        let rows = devices.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, bool>(2)?))
        })?;
        for row in rows {
            let (device, last_seen, online) = row?;
            snapshot.add_device(&device, last_seen, online);
        }
        let mut leds = self.conn.prepare("SELECT device, led, led_on, at_ms FROM leds")?;
        let rows = leds.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?))
        })?;
        for row in rows {
            let (device, led, on, at): (String, String, bool, i64) = row?;
            snapshot.add_led(&device, &led, on, at);
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
            snapshot.add_temperature(&device, &sensor, milli, at);
        }
        Ok(())
    }

    fn load_alerts(&self, snapshot: &mut Snapshot) -> rusqlite::Result<()> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT state FROM alert_engine WHERE id = 1", [], |row| row.get(0))
            .optional()?;
        snapshot.alerts = stored.and_then(|json| {
            serde_json::from_str::<EngineState>(&json)
                .inspect_err(|error| {
                    tracing::error!(
                        "the stored alert state is unreadable, starting afresh: {error}"
                    )
                })
                .ok()
        });
        let mut caps = self.conn.prepare("SELECT notifier, day, count FROM alert_caps")?;
        let rows = caps.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })?;
        for row in rows {
            let (notifier, day, count) = row?;
            // A count that does not fit (a tampered file) counts as a full day.
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            snapshot.notifier_caps.insert(notifier, CapState { day, count });
        }
        Ok(())
    }

    fn write(&mut self, commit: &Commit<'_>) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for frame in commit.frames {
            write_frame(&tx, frame)?;
        }
        write_aggregates(&tx, commit.frames)?;
        for (device, state) in commit.devices {
            write_device(&tx, device, state)?;
        }
        if let Some(state) = commit.alerts {
            // Serialising plain data into a String cannot fail.
            let json = serde_json::to_string(state).unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO alert_engine (id, state) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![json])?;
        }
        tx.commit()
    }

    fn delete_before(&mut self, cutoff: UnixMillis) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut deleted =
            tx.execute("DELETE FROM temperatures WHERE received_ms < ?1", params![cutoff.0])?;
        deleted +=
            tx.execute("DELETE FROM led_changes WHERE received_ms < ?1", params![cutoff.0])?;
        let minutes = super::minute_cutoff(cutoff);
        tx.execute("DELETE FROM temperature_minutes WHERE bucket_ms < ?1", params![minutes])?;
        tx.execute(
            "UPDATE history_bounds SET raw_since_ms = MAX(raw_since_ms, ?1),
                 minutes_since_ms = MAX(minutes_since_ms, ?2)",
            params![cutoff.0, minutes],
        )?;
        tx.commit()?;
        Ok(deleted)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, Error> {
        let mut snapshot = Snapshot::default();
        self.load_windows(&mut snapshot).map_err(db)?;
        self.load_devices(&mut snapshot).map_err(db)?;
        self.load_alerts(&mut snapshot).map_err(db)?;
        Ok(snapshot)
    }

    /// One server owns a SQLite file, so its windows are never stale: always
    /// [`CommitOutcome::Written`] (or an error).
    fn commit(&mut self, commit: &Commit<'_>) -> Result<CommitOutcome, Error> {
        self.write(commit).map(|()| CommitOutcome::Written).map_err(db)
    }

    fn reserve_command_sequences(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
        count: u64,
    ) -> Result<u64, Error> {
        let count_sql = i64::try_from(count).map_err(|_| Error::Store("block too large".into()))?;
        // A power loss may roll back NORMAL commits; a reservation rolled back would hand its
        // numbers out again, with other commands: nonces reused. This one is synced (FULL) before
        // any of its numbers is used.
        self.conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        let reserved = self
            .conn
            .prepare_cached(
                "INSERT INTO command_sequences (device, key_id, reserved_end) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device, key_id)
                 DO UPDATE SET reserved_end = reserved_end + excluded.reserved_end
                 RETURNING reserved_end",
            )
            .and_then(|mut statement| {
                statement.query_row(params![device.as_str(), key_id.0, count_sql], |row| {
                    row.get::<_, i64>(0)
                })
            });
        let restored = self.conn.pragma_update(None, "synchronous", "NORMAL");
        let end = reserved.map_err(db)?;
        restored.map_err(db)?;
        let end =
            u64::try_from(end).map_err(|_| Error::Store("negative command counter".into()))?;
        super::command_block_fits(end.saturating_sub(count), count)
    }

    fn log_command(&mut self, record: &CommandRecord) -> Result<i64, Error> {
        let sequence = record.sequence.and_then(|s| i64::try_from(s).ok());
        self.conn
            .prepare_cached(
                "INSERT INTO command_log
                   (at_ms, by, device, led, led_on, outcome, sequence, confirmed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    record.at.0,
                    record.by,
                    record.device.as_str(),
                    record.led.as_str(),
                    record.state.is_on(),
                    record.outcome.label(),
                    sequence,
                    record.confirmed_at.map(|at| at.0),
                ])
            })
            .map_err(db)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn settle_command(&mut self, settled: &CommandSettlement) -> Result<(), Error> {
        self.conn
            .prepare_cached("UPDATE command_log SET outcome = ?1, confirmed_ms = ?2 WHERE id = ?3")
            .and_then(|mut statement| {
                statement.execute(params![
                    settled.outcome.label(),
                    settled.confirmed_at.map(|at| at.0),
                    settled.log_id,
                ])
            })
            .map(drop)
            .map_err(db)
    }

    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO alert_caps (notifier, day, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (notifier) DO UPDATE SET day = excluded.day, count = excluded.count",
            )
            .and_then(|mut statement| {
                statement.execute(params![notifier, cap.day, i64::from(cap.count)])
            })
            .map(drop)
            .map_err(db)
    }

    fn prune(&mut self, cutoff: UnixMillis) -> Result<usize, Error> {
        self.delete_before(cutoff).map_err(db)
    }

    fn close(self: Box<Self>) -> Result<(), Error> {
        self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").map_err(db)?;
        self.conn.close().map_err(|(_, error)| db(error))
    }
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { found: version, known: SCHEMA_VERSION });
    }
    let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for (applied, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", applied as i64 + 1)?;
        }
        tx.commit()
    };
    apply(conn).map_err(db)
}

fn write_frame(tx: &Transaction<'_>, frame: &super::AcceptedFrame) -> rusqlite::Result<()> {
    let device = frame.device().as_str();
    let at = frame.update.at.0;
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
    match &frame.update.observation {
        Observation::Reading(Reading::Temperature(point)) => {
            tx.prepare_cached(
                "INSERT INTO temperatures
                 (device, sensor, received_ms, uptime_ms, milli_celsius, sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                point.sensor.as_str(),
                at,
                frame.uptime.0,
                point.temperature.0,
                sequence
            ])?;
        }
        Observation::Reading(Reading::Led(point)) => {
            tx.prepare_cached(
                "INSERT INTO led_changes (device, led, received_ms, uptime_ms, led_on, sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                point.led.as_str(),
                at,
                frame.uptime.0,
                point.state.is_on(),
                sequence
            ])?;
        }
        Observation::Online { .. } | Observation::Offline => {}
    }
    Ok(())
}

/// Adds the batch's readings to the 1-minute and 1-hour aggregates: one upsert per (device,
/// sensor, bucket), in key order.
fn write_aggregates(tx: &Transaction<'_>, frames: &[super::AcceptedFrame]) -> rusqlite::Result<()> {
    let readings = || {
        frames.iter().filter_map(|frame| match &frame.update.observation {
            Observation::Reading(Reading::Temperature(point)) => Some((
                frame.device().as_str(),
                point.sensor.as_str(),
                frame.update.at.0,
                point.temperature,
            )),
            _ => None,
        })
    };
    for (sql, width) in [(UPSERT_MINUTES, MINUTE_MS), (UPSERT_HOURS, HOUR_MS)] {
        let rows = history::rollup(readings(), width);
        if rows.is_empty() {
            return Ok(());
        }
        let mut statement = tx.prepare_cached(sql)?;
        for ((device, sensor, bucket), sum) in rows {
            statement.execute(params![
                device, sensor, bucket, sum.min.0, sum.max.0, sum.sum, sum.count
            ])?;
        }
    }
    Ok(())
}

/// Writes a device's current state: its row and its LEDs. The last reading of each sensor is the
/// newest history row.
fn write_device(
    tx: &Transaction<'_>,
    device: &DeviceId,
    state: &DeviceState,
) -> rusqlite::Result<()> {
    if let Some(last_seen) = state.last_seen {
        write_device_row(tx, device, last_seen, state.online)?;
    }
    for point in state.leds.values() {
        tx.prepare_cached(
            "INSERT INTO leds (device, led, led_on, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, led) DO UPDATE
             SET led_on = excluded.led_on, at_ms = excluded.at_ms",
        )?
        .execute(params![
            device.as_str(),
            point.led.as_str(),
            point.state.is_on(),
            point.at.0
        ])?;
    }
    Ok(())
}

/// The device's row (last seen, online; `status_ms` moves only when the online flag changes):
/// only for a device heard from, since one known only from retained frames was never seen.
fn write_device_row(
    tx: &Transaction<'_>,
    device: &DeviceId,
    last_seen: UnixMillis,
    online: bool,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO devices (device, last_seen_ms, online, status_ms) VALUES (?1, ?2, ?3, ?2)
         ON CONFLICT (device) DO UPDATE
         SET last_seen_ms = excluded.last_seen_ms,
             status_ms = CASE WHEN online = excluded.online THEN status_ms
                              ELSE excluded.status_ms END,
             online = excluded.online",
    )?
    .execute(params![device.as_str(), last_seen.0, online])?;
    Ok(())
}

/// A read-only connection for the HTTP handlers' history queries.
pub struct SqliteHistory {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHistory").finish_non_exhaustive()
    }
}

impl SqliteHistory {
    /// Opens `path` read-only. Open the [`SqliteStore`] first: it creates and migrates the file.
    pub fn open(path: &Path) -> Result<SqliteHistory, Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| open_error(path, &error))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        Ok(SqliteHistory { conn: Mutex::new(conn) })
    }

    fn query(&self, query: &HistoryQuery) -> rusqlite::Result<Vec<TemperaturePoint>> {
        // A panic while holding the lock leaves a connection that is still usable.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statement = conn.prepare_cached(
            "SELECT sensor, received_ms, milli_celsius FROM temperatures
             WHERE device = ?1 AND received_ms >= ?2 AND received_ms <= ?3
               AND (?4 IS NULL OR sensor = ?4)
             ORDER BY received_ms DESC, id DESC LIMIT ?5",
        )?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let sensor = query.sensor.as_ref().map(SensorName::as_str);
        let rows = statement.query_map(
            params![query.device.as_str(), query.since.0, query.until.0, sensor, limit],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, i32>(2)?)),
        )?;
        let mut points = Vec::new();
        for row in rows {
            let (sensor, at, milli) = row?;
            if let Some(sensor) = name("sensor name", &sensor, SensorName::new) {
                points.push(TemperaturePoint {
                    sensor,
                    temperature: MilliCelsius(milli),
                    at: UnixMillis(at),
                });
            }
        }
        points.reverse();
        Ok(points)
    }
}

impl HistoryStore for SqliteHistory {
    fn temperatures(&self, query: &HistoryQuery) -> Result<Vec<TemperaturePoint>, Error> {
        self.query(query).map_err(db)
    }

    fn temperature_history(&self, query: &RangeQuery) -> Result<TemperatureHistory, Error> {
        super::temperature_history(self, query)
    }

    fn led_history(&self, query: &RangeQuery) -> Result<LedHistory, Error> {
        super::led_history(self, query)
    }

    fn export_temperatures(
        &self,
        query: &RangeQuery,
        sink: &mut ExportSink<'_, TemperaturePoint>,
    ) -> Result<(), Error> {
        super::export_temperatures(self, query, sink)
    }

    fn export_leds(
        &self,
        query: &RangeQuery,
        sink: &mut ExportSink<'_, LedPoint>,
    ) -> Result<(), Error> {
        super::export_leds(self, query, sink)
    }

    fn commands(
        &self,
        device: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, Error> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let device = device.map(DeviceId::as_str);
        let mut statement = conn
            .prepare_cached(
                "SELECT at_ms, by, device, led, led_on, outcome, sequence, confirmed_ms
                 FROM command_log WHERE (?1 IS NULL OR device = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = statement
            .query_map(params![device, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, bool>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(db)?;
        let mut records = Vec::new();
        for row in rows {
            let (at, by, device, led, on, outcome, sequence, confirmed) = row.map_err(db)?;
            records.extend(super::command_row(
                at, by, &device, &led, on, &outcome, sequence, confirmed,
            ));
        }
        Ok(records)
    }
}

/// A row's name column as the model's name; an invalid one (a tampered row) is skipped.
fn sensor_of(text: &str) -> Option<SensorName> {
    name("sensor name", text, SensorName::new)
}

impl SqliteHistory {
    /// The connection (a panic while holding the lock leaves a connection that is still usable).
    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The first hour overlapping `[since, until]`, and the start of the last hour wholly in it.
fn hours_of(since: i64, until: i64) -> (i64, i64) {
    (history::bucket_start(since, HOUR_MS), until.saturating_sub(HOUR_MS - 1))
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl RangeReader for SqliteHistory {
    fn bounds(&self) -> Result<(i64, i64), Error> {
        self.connection()
            .prepare_cached(
                "SELECT raw_since_ms, minutes_since_ms FROM history_bounds WHERE id = 1",
            )
            .and_then(|mut statement| {
                statement.query_row([], |row| Ok((row.get(0)?, row.get(1)?))).optional()
            })
            .map(|bounds| bounds.unwrap_or((i64::MIN, i64::MIN)))
            .map_err(db)
    }

    fn sensors(
        &self,
        device: &DeviceId,
        sensor: Option<&SensorName>,
        since: i64,
        until: i64,
    ) -> Result<Vec<(SensorName, i64)>, Error> {
        let conn = self.connection();
        let mut statement = conn
            .prepare_cached(
                "SELECT sensor,
                        SUM(CASE WHEN bucket_ms >= ?2 AND bucket_ms <= ?5 THEN count ELSE 0 END)
                 FROM temperature_hours
                 WHERE device = ?1 AND (?6 IS NULL OR sensor = ?6)
                   AND bucket_ms >= ?3 AND bucket_ms <= ?4
                 GROUP BY sensor ORDER BY sensor",
            )
            .map_err(db)?;
        let (from, last_whole) = hours_of(since, until);
        let sensor = sensor.map(SensorName::as_str);
        let rows = statement
            .query_map(params![device.as_str(), since, from, until, last_whole, sensor], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(db)?;
        let mut sensors = Vec::new();
        for row in rows {
            let (sensor, at_least) = row.map_err(db)?;
            sensors.extend(sensor_of(&sensor).map(|sensor| (sensor, at_least)));
        }
        Ok(sensors)
    }

    fn raw(
        &self,
        device: &DeviceId,
        sensor: &SensorName,
        since: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<TemperaturePoint>, Error> {
        let conn = self.connection();
        let mut statement = conn
            .prepare_cached(
                "SELECT received_ms, milli_celsius FROM temperatures INDEXED BY \
                 temperatures_by_sensor_time
                 WHERE device = ?1 AND sensor = ?2 AND received_ms >= ?3 AND received_ms <= ?4
                 ORDER BY received_ms, id LIMIT ?5",
            )
            .map_err(db)?;
        let rows = statement
            .query_map(
                params![device.as_str(), sensor.as_str(), since, until, sql_limit(limit)],
                |row| {
                    Ok(TemperaturePoint {
                        sensor: sensor.clone(),
                        at: UnixMillis(row.get(0)?),
                        temperature: MilliCelsius(row.get(1)?),
                    })
                },
            )
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db)
    }

    fn aggregates(
        &self,
        device: &DeviceId,
        sensor: &SensorName,
        resolution: Resolution,
        from: i64,
        until: i64,
    ) -> Result<Vec<(i64, Aggregate)>, Error> {
        let sql = match resolution {
            Resolution::Minutes => {
                "SELECT bucket_ms, min_milli, max_milli, sum_milli, count FROM temperature_minutes
                 WHERE device = ?1 AND sensor = ?2 AND bucket_ms >= ?3 AND bucket_ms <= ?4
                 ORDER BY bucket_ms"
            }
            Resolution::Hours => {
                "SELECT bucket_ms, min_milli, max_milli, sum_milli, count FROM temperature_hours
                 WHERE device = ?1 AND sensor = ?2 AND bucket_ms >= ?3 AND bucket_ms <= ?4
                 ORDER BY bucket_ms"
            }
        };
        let conn = self.connection();
        let mut statement = conn.prepare_cached(sql).map_err(db)?;
        let rows = statement
            .query_map(params![device.as_str(), sensor.as_str(), from, until], |row| {
                Ok((
                    row.get(0)?,
                    Aggregate {
                        min: MilliCelsius(row.get(1)?),
                        max: MilliCelsius(row.get(2)?),
                        sum: row.get(3)?,
                        count: row.get(4)?,
                    },
                ))
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db)
    }

    fn leds_before(&self, device: &DeviceId, before: i64) -> Result<Vec<LedPoint>, Error> {
        let conn = self.connection();
        // SQLite takes the other columns of a MAX() row from that row.
        let mut statement = conn
            .prepare_cached(
                "SELECT led, led_on, MAX(received_ms) FROM led_changes
                 WHERE device = ?1 AND received_ms < ?2 GROUP BY led
                 UNION ALL
                 SELECT led, led_on, at_ms FROM leds WHERE device = ?1 AND at_ms < ?2",
            )
            .map_err(db)?;
        let rows = statement
            .query_map(params![device.as_str(), before], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?, row.get::<_, i64>(2)?))
            })
            .map_err(db)?;
        let mut points = Vec::new();
        for row in rows {
            let (led, on, at) = row.map_err(db)?;
            if let Some(led) = name("LED name", &led, LedName::new) {
                points.push(LedPoint { led, state: LedState::from(on), at: UnixMillis(at) });
            }
        }
        Ok(points)
    }

    fn temperature_page(
        &self,
        device: &DeviceId,
        sensor: Option<&SensorName>,
        after: (i64, i64),
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TemperaturePoint)>, Error> {
        let conn = self.connection();
        let sql = if sensor.is_some() {
            "SELECT id, sensor, received_ms, milli_celsius FROM temperatures
             INDEXED BY temperatures_by_sensor_time
             WHERE device = ?1 AND sensor = ?2 AND received_ms >= ?3 AND received_ms <= ?5
               AND (received_ms, id) > (?3, ?4)
             ORDER BY received_ms, id LIMIT ?6"
        } else {
            "SELECT id, sensor, received_ms, milli_celsius FROM temperatures
             INDEXED BY temperatures_by_device_time
             WHERE device = ?1 AND ?2 IS NULL AND received_ms >= ?3 AND received_ms <= ?5
               AND (received_ms, id) > (?3, ?4)
             ORDER BY received_ms, id LIMIT ?6"
        };
        let mut statement = conn.prepare_cached(sql).map_err(db)?;
        let sensor = sensor.map(SensorName::as_str);
        let rows = statement
            .query_map(
                params![device.as_str(), sensor, after.0, after.1, until, sql_limit(limit)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i32>(3)?,
                    ))
                },
            )
            .map_err(db)?;
        let mut page = Vec::with_capacity(limit.min(history::EXPORT_PAGE_ROWS));
        for row in rows {
            let (id, sensor, at, milli) = row.map_err(db)?;
            if let Some(sensor) = sensor_of(&sensor) {
                let point = TemperaturePoint {
                    sensor,
                    temperature: MilliCelsius(milli),
                    at: UnixMillis(at),
                };
                page.push((id, point));
            }
        }
        Ok(page)
    }

    fn led_page(
        &self,
        device: &DeviceId,
        after: (i64, i64),
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, LedPoint)>, Error> {
        let conn = self.connection();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, led, led_on, received_ms FROM led_changes
                 INDEXED BY led_changes_by_device_time
                 WHERE device = ?1 AND received_ms >= ?2 AND received_ms <= ?4
                   AND (received_ms, id) > (?2, ?3)
                 ORDER BY received_ms, id LIMIT ?5",
            )
            .map_err(db)?;
        let rows = statement
            .query_map(params![device.as_str(), after.0, after.1, until, sql_limit(limit)], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(db)?;
        let mut page = Vec::new();
        for row in rows {
            let (id, led, on, at) = row.map_err(db)?;
            if let Some(led) = name("LED name", &led, LedName::new) {
                page.push((id, LedPoint { led, state: LedState::from(on), at: UnixMillis(at) }));
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    /// Each message names the file and the fix (the read-only case cannot be caused as root,
    /// which CI is: root writes read-only files).
    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let error = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(error, Error::SchemaTooNew { found: 99, known: SCHEMA_VERSION }));
        let message = error.to_string();
        assert!(message.contains("99") && message.contains(&SCHEMA_VERSION.to_string()));
    }

    #[test]
    fn open_errors_name_the_file_and_the_fix() {
        let path = Path::new("/var/lib/ledtemp/ledtemp.db");
        let read_only = open_error(path, &code(rusqlite::ffi::SQLITE_READONLY)).to_string();
        assert_eq!(
            read_only,
            "database /var/lib/ledtemp/ledtemp.db: is read-only: the server writes the file and, \
             beside it, ledtemp.db-wal and ledtemp.db-shm; give its user write access to them and \
             to their directory"
        );
        let not_a_database = open_error(path, &code(rusqlite::ffi::SQLITE_NOTADB)).to_string();
        assert!(not_a_database.contains("is not a SQLite database"), "{not_a_database}");
    }
}
