//! The PostgreSQL store: the SQLite store's tables and guarantees on a database server that
//! several ledtemp servers may share.
//!
//! One writer ([`PostgresStore`], owned by the ingest worker) and a reader for the HTTP
//! handlers' history queries ([`PostgresHistory`]), each on a connection of its own.
//!
//! **Driver and runtime.** `tokio-postgres`, without compile-time-checked queries: the build
//! needs no database. The [`Store`] and [`HistoryStore`] traits are blocking and the ingest
//! worker is a plain thread, so the backend brings its own tokio runtime (one worker thread,
//! shared by the store and its history reader) and blocks on it. Called from inside another
//! runtime (an async test, [`Pipeline::open`](crate::Pipeline::open) in a task, a
//! `spawn_blocking` closure) it blocks on a scoped thread instead, so it works anywhere and
//! never panics; dropping it shuts its runtime down in the background.
//!
//! **One transaction per batch.** [`Store::commit`] writes the frames' readings and LED changes,
//! their replay windows, the devices' states and LEDs and the alert state in one transaction, or
//! nothing. Every table is written with one statement per batch (`UNNEST` of arrays: a
//! multi-row insert or update, not a round trip per frame), the statements are prepared once
//! per connection and sent pipelined.
//!
//! **Replay windows under a row lock.** Inside the transaction the batch's (device, key id)
//! window rows are created if missing and then locked (`SELECT ... FOR UPDATE`, ordered by
//! device and key id, so two servers locking overlapping sets cannot deadlock), and every frame
//! is checked again against the *stored* window, in order
//! ([`ReplayWindow::state_after_rule`](ledtemp_core::ReplayWindow::state_after_rule)). One
//! server alone always finds the window it last wrote and writes the one it computed. When the
//! stored window is ahead of this server's (another server sharing the database accepted frames
//! of the same key meanwhile, or a commit whose answer was lost did go through), the stored
//! window wins: when it has already accepted a frame
//! of the batch, **nothing is written** (the transaction is rolled back) and the commit answers
//! [`CommitOutcome::StaleWindows`] with the stored windows. The pipeline takes them in place of
//! its cache and checks the batch again, so that frame is refused (as a replay, or as
//! `redelivered` when the broker flagged it a copy) and the rest is committed: every frame is
//! accepted by one server at most, whichever server each copy reached, and the window never
//! moves backwards. Frames of one device that reach two servers interleaved are all accepted
//! (each is new to the stored window), in any order the window allows.
//!
//! The devices' current states and LEDs are written as this server computed them (the last
//! writer wins); the next issue (several servers) makes the caches follow the database. A frame
//! accepted without a replay window (the insecure teaching mode: its window does not record its
//! own number) is stored as it is.
//!
//! **Schema.** Versioned migrations as SQLite's, counted in the `schema_version` table and
//! applied in one transaction under an advisory lock (two servers starting together migrate
//! once). A database with a newer version than this build knows is refused
//! ([`Error::SchemaTooNew`], naming both). Times are `BIGINT` milliseconds, sequence numbers and
//! window bitmaps `BIGINT` bit patterns (as in SQLite), flags `BOOLEAN`. History is read through
//! the index on (device, received_ms, id).
//!
//! **Connection loss.** A commit on a lost connection fails and changes nothing (the ingest
//! worker keeps its frames and tries again); the next call reconnects and prepares its
//! statements again. Connecting gives up after [`CONNECT_TIMEOUT`] per host, and every
//! operation after [`OPERATION_TIMEOUT`], so a dead host never hangs the worker. A commit
//! whose answer was lost may have been written: its retry finds its frames in the stored
//! windows and does not store them twice.
//!
//! **TLS** follows the URL's `sslmode`: `disable`; `prefer` (the default) encrypts when the
//! server offers TLS, without checking its certificate unless a CA file is given, as libpq's
//! `prefer` does; `require` insists on TLS and checks the certificate and host name against the
//! CA file given (`--database-ca`) or the system's CA bundle (libpq's `verify-full`).
//!
//! **Secrets.** The URL's password is never logged nor put in an error: both name the database
//! as `host:port/database` or as the URL with the password left out.
//!
//! This module and `sqlite.rs` are the only ones that know SQL.

mod batch;
mod config;
mod connection;
mod notice;

pub use config::PostgresConfig;
pub(crate) use config::is_postgres_url;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ledtemp_core::{DeviceId, KeyId, LedName, LedState, MilliCelsius, ReplayState, SensorName};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::{
    Commit, CommitOutcome, HistoryQuery, HistoryStore, RangeReader, RemoteSink, Snapshot, Store,
    name, to_u64,
};
use crate::Error;
use crate::alerts::{CapState, EngineState};
use crate::command::{CommandRecord, CommandSettlement};
use crate::history::{
    Aggregate, ExportSink, HOUR_MS, LedHistory, MINUTE_MS, RangeQuery, Resolution,
    TemperatureHistory,
};
use crate::model::{DeviceUpdate, LedPoint, TemperaturePoint, UnixMillis};
use batch::{
    AggregateColumns, Columns, DeviceColumns, Recheck, WindowColumns, execute_unless, recheck,
};
use connection::{Connection, Link, connection_lost, db, describe, timed_out};

/// Schema migrations, applied in order; `schema_version` counts those applied. PostgreSQL's
/// versions are its own: they do not follow SQLite's.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema: SQLite's two migrations in PostgreSQL's types.
    "CREATE TABLE devices (
        device TEXT PRIMARY KEY,
        last_seen_ms BIGINT NOT NULL,
        online BOOLEAN NOT NULL,
        status_ms BIGINT NOT NULL
    );
    CREATE TABLE replay_windows (
        device TEXT NOT NULL,
        key_id SMALLINT NOT NULL,
        top BIGINT NOT NULL,
        seen BIGINT NOT NULL,
        expected_will BIGINT NOT NULL,
        PRIMARY KEY (device, key_id)
    );
    CREATE TABLE temperatures (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        uptime_ms BIGINT NOT NULL,
        milli_celsius INTEGER NOT NULL,
        sequence BIGINT NOT NULL
    );
    CREATE INDEX temperatures_by_device_time ON temperatures (device, received_ms, id);
    CREATE TABLE led_changes (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        uptime_ms BIGINT NOT NULL,
        led_on BOOLEAN NOT NULL,
        sequence BIGINT NOT NULL
    );
    CREATE INDEX led_changes_by_time ON led_changes (received_ms);
    CREATE TABLE leds (
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        led_on BOOLEAN NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (device, led)
    );
    CREATE TABLE alert_engine (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL
    );
    CREATE TABLE alert_caps (
        notifier TEXT PRIMARY KEY,
        day BIGINT NOT NULL,
        count BIGINT NOT NULL
    );",
    // 2: LED commands: the servers' own sequence counter per device key (the end of the last
    // reserved block; each server takes disjoint blocks) and the command log.
    "CREATE TABLE command_sequences (
        device TEXT NOT NULL,
        key_id SMALLINT NOT NULL,
        reserved_end BIGINT NOT NULL,
        PRIMARY KEY (device, key_id)
    );
    CREATE TABLE command_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        by TEXT NOT NULL,
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        led_on BOOLEAN NOT NULL,
        outcome TEXT NOT NULL,
        sequence BIGINT,
        confirmed_ms BIGINT
    );
    CREATE INDEX command_log_by_device ON command_log (device, id);",
    // 3: history over ranges, as SQLite's migration 4: per-sensor 1-minute and 1-hour
    // aggregates (kept up to date in each commit, backfilled here from the readings present),
    // the prunes' cut-offs, an index per sensor and one for the LED timeline.
    "CREATE TABLE temperature_minutes (
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        bucket_ms BIGINT NOT NULL,
        min_milli INTEGER NOT NULL,
        max_milli INTEGER NOT NULL,
        sum_milli BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (device, sensor, bucket_ms)
    );
    CREATE TABLE temperature_hours (
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        bucket_ms BIGINT NOT NULL,
        min_milli INTEGER NOT NULL,
        max_milli INTEGER NOT NULL,
        sum_milli BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (device, sensor, bucket_ms)
    );
    CREATE INDEX temperature_hours_by_time ON temperature_hours (device, bucket_ms);
    INSERT INTO temperature_minutes
        SELECT device, sensor, received_ms - ((received_ms % 60000) + 60000) % 60000 AS bucket,
               MIN(milli_celsius), MAX(milli_celsius), SUM(milli_celsius)::int8, COUNT(*)
        FROM temperatures GROUP BY device, sensor, bucket;
    INSERT INTO temperature_hours
        SELECT device, sensor, bucket_ms - ((bucket_ms % 3600000) + 3600000) % 3600000 AS bucket,
               MIN(min_milli), MAX(max_milli), SUM(sum_milli)::int8, SUM(count)::int8
        FROM temperature_minutes GROUP BY device, sensor, bucket;
    CREATE TABLE history_bounds (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        raw_since_ms BIGINT NOT NULL,
        minutes_since_ms BIGINT NOT NULL
    );
    INSERT INTO history_bounds VALUES (1, -9223372036854775808, -9223372036854775808);
    CREATE INDEX temperatures_by_sensor_time ON temperatures (device, sensor, received_ms, id);
    CREATE INDEX led_changes_by_device_time ON led_changes (device, received_ms, id);",
];

/// The PostgreSQL schema version this build writes.
pub const POSTGRES_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long connecting to one host may take (TCP and TLS), unless the URL sets
/// `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one operation (a commit, a load, a history query) may take before the connection
/// is given up as dead and the operation fails.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The advisory lock the leader of a group holds on its writer's session ("ledtemp" and a 2):
/// taken when free, released by PostgreSQL when the session ends (the server stops, crashes, or
/// loses its connection), then free for the next server that asks.
const LEADER_LOCK: i64 = 0x6c65_6474_656d_7002;

/// The advisory lock that serialises migrations: "ledtemp" and a 1.
const MIGRATION_LOCK: i64 = 0x6c65_6474_656d_7001;

/// The writer's statements, prepared once per connection.
struct WriterStatements {
    create_windows: Statement,
    lock_windows: Statement,
    update_windows: Statement,
    insert_temperatures: Statement,
    insert_led_changes: Statement,
    upsert_devices: Statement,
    upsert_leds: Statement,
    upsert_alerts: Statement,
    upsert_cap: Statement,
    notify: Statement,
    upsert_minutes: Statement,
    upsert_hours: Statement,
}

impl WriterStatements {
    async fn prepare(client: &Client) -> Result<WriterStatements, tokio_postgres::Error> {
        // Rows missing for the batch's keys, created in one order so that two servers creating
        // the same rows wait for each other instead of deadlocking.
        let create_windows = client.prepare(
            "INSERT INTO replay_windows (device, key_id, top, seen, expected_will)
             SELECT device, key_id, 0, 0, 0 FROM UNNEST($1::text[], $2::int2[]) AS n(device, key_id)
             ORDER BY device COLLATE \"C\", key_id
             ON CONFLICT (device, key_id) DO NOTHING",
        );
        let lock_windows = client.prepare(
            "SELECT device, key_id, top, seen, expected_will FROM replay_windows
             WHERE (device, key_id) IN (SELECT * FROM UNNEST($1::text[], $2::int2[]))
             ORDER BY device COLLATE \"C\", key_id
             FOR UPDATE",
        );
        let update_windows = client.prepare(
            "UPDATE replay_windows AS w
             SET top = n.top, seen = n.seen, expected_will = n.expected_will
             FROM UNNEST($1::text[], $2::int2[], $3::int8[], $4::int8[], $5::int8[])
                  AS n(device, key_id, top, seen, expected_will)
             WHERE w.device = n.device AND w.key_id = n.key_id",
        );
        // In the batch's order (WITH ORDINALITY): the newest reading of a sensor has the
        // highest id, as `load` expects.
        let insert_temperatures = client.prepare(
            "INSERT INTO temperatures
             (device, sensor, received_ms, uptime_ms, milli_celsius, sequence)
             SELECT device, sensor, received_ms, uptime_ms, milli_celsius, sequence
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int4[], $6::int8[])
                  WITH ORDINALITY
                  AS n(device, sensor, received_ms, uptime_ms, milli_celsius, sequence, i)
             ORDER BY i",
        );
        let insert_led_changes = client.prepare(
            "INSERT INTO led_changes (device, led, received_ms, uptime_ms, led_on, sequence)
             SELECT device, led, received_ms, uptime_ms, led_on, sequence
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int8[])
                  WITH ORDINALITY AS n(device, led, received_ms, uptime_ms, led_on, sequence, i)
             ORDER BY i",
        );
        // `status_ms` moves only when the online flag changes (as in SQLite).
        let upsert_devices = client.prepare(
            "INSERT INTO devices (device, last_seen_ms, online, status_ms)
             SELECT device, last_seen_ms, online, last_seen_ms
             FROM UNNEST($1::text[], $2::int8[], $3::bool[]) AS n(device, last_seen_ms, online)
             ON CONFLICT (device) DO UPDATE
             SET last_seen_ms = excluded.last_seen_ms,
                 status_ms = CASE WHEN devices.online = excluded.online THEN devices.status_ms
                                  ELSE excluded.status_ms END,
                 online = excluded.online",
        );
        let upsert_leds = client.prepare(
            "INSERT INTO leds (device, led, led_on, at_ms)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[])
             ON CONFLICT (device, led) DO UPDATE
             SET led_on = excluded.led_on, at_ms = excluded.at_ms",
        );
        let upsert_alerts = client.prepare(
            "INSERT INTO alert_engine (id, state) VALUES (1, $1::text)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        );
        let upsert_cap = client.prepare(
            "INSERT INTO alert_caps (notifier, day, count) VALUES ($1::text, $2::int8, $3::int8)
             ON CONFLICT (notifier) DO UPDATE SET day = excluded.day, count = excluded.count",
        );
        let notify = client
            .prepare("SELECT pg_notify($1::text, notice) FROM UNNEST($2::text[]) AS n(notice)");
        // In the key order the batch sorted them in, so that two servers upserting the same
        // rows wait for each other instead of deadlocking.
        let upsert_aggregates = |table: &str| {
            format!(
                "INSERT INTO {table}
                 (device, sensor, bucket_ms, min_milli, max_milli, sum_milli, count)
                 SELECT device, sensor, bucket_ms, min_milli, max_milli, sum_milli, count
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int4[], $5::int4[],
                             $6::int8[], $7::int8[]) WITH ORDINALITY
                      AS n(device, sensor, bucket_ms, min_milli, max_milli, sum_milli, count, i)
                 ORDER BY i
                 ON CONFLICT (device, sensor, bucket_ms) DO UPDATE
                 SET min_milli = LEAST({table}.min_milli, excluded.min_milli),
                     max_milli = GREATEST({table}.max_milli, excluded.max_milli),
                     sum_milli = {table}.sum_milli + excluded.sum_milli,
                     count = {table}.count + excluded.count"
            )
        };
        let (minutes_sql, hours_sql) =
            (upsert_aggregates("temperature_minutes"), upsert_aggregates("temperature_hours"));
        let upsert_minutes = client.prepare(&minutes_sql);
        let upsert_hours = client.prepare(&hours_sql);
        // Sent together: one round trip.
        let (
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
            notify,
            upsert_minutes,
            upsert_hours,
        ) = tokio::try_join!(
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
            notify,
            upsert_minutes,
            upsert_hours,
        )?;
        Ok(WriterStatements {
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
            notify,
            upsert_minutes,
            upsert_hours,
        })
    }
}

/// The writer's connection and its statements.
struct WriterSession {
    client: Client,
    statements: WriterStatements,
    task: tokio::task::JoinHandle<()>,
    /// Whether this session holds the leader lock ([`LEADER_LOCK`]); a new session does not.
    leader: bool,
}

impl WriterSession {
    async fn start(link: &Link) -> Result<WriterSession, Error> {
        let Connection { client, task } = link.connect().await?;
        let statements = WriterStatements::prepare(&client).await.map_err(db)?;
        Ok(WriterSession { client, statements, task, leader: false })
    }
}

/// The writer: owned by the ingest worker. Connects when opened, and again after the connection
/// was lost.
pub struct PostgresStore {
    link: Arc<Link>,
    /// `None` after the connection was lost: the next call connects.
    session: Option<WriterSession>,
    /// This store's random id in the notices it sends: it skips its own.
    origin: u64,
    /// Whether each commit notifies the other servers of the group (once
    /// [`Store::follow_others`] was called).
    notify: bool,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.link.config.target())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `config` and migrates its schema (in one transaction, under
    /// an advisory lock).
    ///
    /// # Errors
    /// [`Error::DatabaseUnreachable`] when the server cannot be reached (refused, timed out,
    /// starting up), which may pass; [`Error::Postgres`] when it refuses this configuration
    /// (unknown host, authentication, missing database, TLS); [`Error::Config`] for a CA file
    /// that cannot be used; [`Error::SchemaTooNew`] for a database of a newer build. Each names
    /// the database as `host:port/database` and says what to do.
    pub fn open(config: &PostgresConfig) -> Result<PostgresStore, Error> {
        let link = Arc::new(Link::new(config)?);
        let session = link.runtime.run(async {
            let Connection { mut client, task } = link.connect().await?;
            let migrating = migrate(&mut client, config);
            let migrated = tokio::time::timeout(OPERATION_TIMEOUT, migrating).await;
            migrated.map_err(|_| timed_out())??;
            let statements = WriterStatements::prepare(&client).await.map_err(db)?;
            Ok::<_, Error>(WriterSession { client, statements, task, leader: false })
        })?;
        tracing::debug!(database = %config.target(), "connected to PostgreSQL");
        // Only told apart from the other servers' ids: no secret, a clash is harmless but unlikely.
        let origin = getrandom::u64().map_err(|e| {
            Error::io("drawing the store's random id", std::io::Error::other(e.to_string()))
        })?;
        Ok(PostgresStore { link, session: Some(session), origin, notify: false })
    }

    /// A reader for the HTTP handlers' history queries, on a connection of its own and this
    /// store's runtime.
    ///
    /// # Errors
    /// As [`PostgresStore::open`], for its connection.
    pub fn history(&self) -> Result<PostgresHistory, Error> {
        let history = PostgresHistory { link: Arc::clone(&self.link), session: Mutex::new(None) };
        history.session()?;
        Ok(history)
    }

    /// The writer's connection: the open one, or a new one when it was lost.
    fn session(&mut self) -> Result<&mut WriterSession, Error> {
        if self.session.as_ref().is_none_or(|session| session.client.is_closed()) {
            self.session = None;
            let link = &self.link;
            let session = link.runtime.run(WriterSession::start(link))?;
            tracing::info!(database = %link.config.target(), "connected to PostgreSQL again");
            self.session = Some(session);
        }
        self.session
            .as_mut()
            .ok_or_else(|| Error::TaskFailed("the PostgreSQL connection vanished".into()))
    }

    /// The result of an operation on the writer's connection (`None`: timed out). A failure
    /// that lost the connection drops it, so that the next call reconnects.
    fn settle<T>(&mut self, outcome: Option<Result<T, tokio_postgres::Error>>) -> Result<T, Error> {
        match outcome {
            Some(Ok(value)) => Ok(value),
            Some(Err(error)) => {
                let closed = self.session.as_ref().is_none_or(|s| s.client.is_closed());
                if closed || connection_lost(&error) {
                    self.session = None;
                }
                Err(db(error))
            }
            None => {
                self.session = None;
                Err(timed_out())
            }
        }
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let outcome = link.runtime.run_timed(load(&session.client));
        self.settle(outcome)
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<CommitOutcome, Error> {
        let link = Arc::clone(&self.link);
        let notices = if self.notify {
            let updates: Vec<&DeviceUpdate> = commit.frames.iter().map(|f| &f.update).collect();
            notice::encode(self.origin, &updates)
        } else {
            Vec::new()
        };
        let session = self.session()?;
        let outcome = link.runtime.run_timed(write(session, commit, &notices));
        self.settle(outcome)
    }

    /// Reads the window row (on the writer's connection; no lock: a refusal checked again, the
    /// commit compares and sets under the lock anyway).
    fn stored_window(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
    ) -> Result<Option<ReplayState>, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let (name, key_id) = (device.as_str(), i16::from(key_id.0));
        let params: [&(dyn ToSql + Sync); 2] = [&name, &key_id];
        let reading = session.client.query_opt(
            "SELECT top, seen, expected_will FROM replay_windows WHERE device = $1 AND key_id = $2",
            &params,
        );
        let outcome = link.runtime.run_timed(reading);
        let Some(row) = self.settle(outcome)? else { return Ok(None) };
        let state = (|| {
            Ok::<_, tokio_postgres::Error>(ReplayState {
                top: to_u64(row.try_get(0)?),
                seen: to_u64(row.try_get(1)?),
                expected_will: to_u64(row.try_get(2)?),
            })
        })()
        .map_err(db)?;
        Ok(Some(state))
    }

    /// Holds or takes the leader lock on the writer's session. A session that was lost and
    /// opened again holds nothing until it takes the lock again, which another server may have
    /// taken meanwhile; a commit carrying alert state checks the same ([`CommitOutcome::NotLeader`]).
    fn lead(&mut self) -> Result<bool, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        if session.leader {
            return Ok(true);
        }
        let taking = session.client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]);
        let outcome = link.runtime.run_timed(taking);
        let leads = self.settle(outcome)?.try_get::<_, bool>(0).map_err(db)?;
        if let Some(session) = &mut self.session {
            session.leader = leads;
        }
        Ok(leads)
    }

    /// From now on each commit notifies the other servers (`pg_notify` in its transaction), and
    /// a connection of its own listens for their notices, handing their updates to `sink`
    /// (reconnecting a second after a loss).
    fn follow_others(&mut self, sink: RemoteSink) -> Result<(), Error> {
        self.notify = true;
        let link = Arc::clone(&self.link);
        let origin = self.origin;
        link.runtime.spawn(listen(Arc::clone(&link), origin, sink));
        Ok(())
    }

    /// One statement, committed on its own (PostgreSQL's default `synchronous_commit = on`
    /// makes it durable before the answer): several servers reserving at once each get a
    /// block of their own, under the row's lock.
    fn reserve_command_sequences(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
        count: u64,
    ) -> Result<u64, Error> {
        let count_sql = i64::try_from(count).map_err(|_| Error::Store("block too large".into()))?;
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let key = i16::from(key_id.0);
        let device_name = device.as_str();
        let params: [&(dyn ToSql + Sync); 3] = [&device_name, &key, &count_sql];
        let reserving = session.client.query_one(
            "INSERT INTO command_sequences (device, key_id, reserved_end) VALUES ($1, $2, $3)
             ON CONFLICT (device, key_id)
             DO UPDATE SET reserved_end = command_sequences.reserved_end + EXCLUDED.reserved_end
             RETURNING reserved_end",
            &params,
        );
        let outcome = link.runtime.run_timed(reserving);
        let row = self.settle(outcome)?;
        let end: i64 = row.try_get(0).map_err(db)?;
        let end =
            u64::try_from(end).map_err(|_| Error::Store("negative command counter".into()))?;
        super::command_block_fits(end.saturating_sub(count), count)
    }

    fn log_command(&mut self, record: &CommandRecord) -> Result<i64, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let sequence = record.sequence.and_then(|s| i64::try_from(s).ok());
        let confirmed = record.confirmed_at.map(|at| at.0);
        let (device, led, on, outcome) = (
            record.device.as_str(),
            record.led.as_str(),
            record.state.is_on(),
            record.outcome.label(),
        );
        let params: [&(dyn ToSql + Sync); 8] =
            [&record.at.0, &record.by, &device, &led, &on, &outcome, &sequence, &confirmed];
        let inserting = session.client.query_one(
            "INSERT INTO command_log (at_ms, by, device, led, led_on, outcome, sequence, confirmed_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &params,
        );
        let outcome = link.runtime.run_timed(inserting);
        self.settle(outcome)?.try_get(0).map_err(db)
    }

    fn settle_command(&mut self, settled: &CommandSettlement) -> Result<(), Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let (outcome, confirmed) = (settled.outcome.label(), settled.confirmed_at.map(|at| at.0));
        let params: [&(dyn ToSql + Sync); 3] = [&outcome, &confirmed, &settled.log_id];
        let updating = session.client.execute(
            "UPDATE command_log SET outcome = $1, confirmed_ms = $2 WHERE id = $3",
            &params,
        );
        let outcome = link.runtime.run_timed(updating);
        self.settle(outcome).map(drop)
    }

    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) -> Result<(), Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let count = i64::from(cap.count);
        let statement = &session.statements.upsert_cap;
        let params: [&(dyn ToSql + Sync); 3] = [&notifier, &cap.day, &count];
        let saving = session.client.execute(statement, &params);
        let outcome = link.runtime.run_timed(saving);
        self.settle(outcome).map(drop)
    }

    fn prune(&mut self, cutoff: UnixMillis) -> Result<usize, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let outcome = link.runtime.run_timed(delete_before(&mut session.client, cutoff));
        self.settle(outcome)
    }

    /// Closes the writer's connection, telling the server (waiting at most
    /// [`OPERATION_TIMEOUT`]); nothing is pending, every commit was a transaction.
    fn close(mut self: Box<Self>) -> Result<(), Error> {
        if let Some(WriterSession { client, statements, task, .. }) = self.session.take() {
            drop((statements, client));
            let _ = self.link.runtime.run_timed(task);
        }
        Ok(())
    }
}

/// How long the listener waits before connecting again after its connection was lost.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// The listener of a group's server: `LISTEN`s for the other servers' notices and hands their
/// updates to `sink`, until `sink` is closed. A notice that does not decode is logged and
/// skipped; when `sink` is full (the ingest worker is behind, or waiting for a failing
/// database), the notice is dropped and logged: the live view misses those updates until the
/// devices' next ones, and the database has them all.
async fn listen(link: Arc<Link>, origin: u64, sink: RemoteSink) {
    let target = link.config.target();
    let mut lost_before = false;
    while !sink.is_closed() {
        let (notices, mut received) = tokio::sync::mpsc::unbounded_channel();
        let connected = match link.connect_listening(notices).await {
            Ok(Connection { client, task }) => {
                match client.batch_execute(&format!("LISTEN {}", notice::CHANNEL)).await {
                    Ok(()) => Some((client, task)),
                    Err(error) => {
                        tracing::warn!(database = %target, "cannot LISTEN: {}", describe(&error));
                        None
                    }
                }
            }
            Err(error) => {
                if !lost_before {
                    tracing::warn!("the live view of the other servers stops: {error}");
                }
                None
            }
        };
        if let Some((_client, _task)) = connected {
            if lost_before {
                tracing::info!(
                    database = %target,
                    "listening to the other servers again (updates committed meanwhile show \
                     from the devices' next ones)"
                );
            }
            while let Some(notification) = received.recv().await {
                match notice::decode(origin, notification.payload()) {
                    Ok(None) => {}
                    Ok(Some(notice::Decoded { updates, invalid })) => {
                        if invalid > 0 {
                            tracing::warn!(
                                invalid,
                                "a notice of another server named invalid devices, sensors or \
                                 LEDs: those updates are left out"
                            );
                        }
                        if !updates.is_empty() && sink.try_send(updates).is_err() {
                            tracing::warn!(
                                "the ingest worker is behind: another server's updates are left \
                                 out of this server's live view (they are stored)"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!("ignoring a notice on {}: {error:?}", notice::CHANNEL)
                    }
                }
                if sink.is_closed() {
                    return;
                }
            }
            tracing::warn!(
                database = %target,
                "lost the connection that listens to the other servers; connecting again"
            );
        }
        lost_before = true;
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

/// Deletes readings and LED changes received before `cutoff`, in one transaction.
async fn delete_before(
    client: &mut Client,
    cutoff: UnixMillis,
) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let params: [&(dyn ToSql + Sync); 1] = [&cutoff.0];
    let temperatures = tx.execute("DELETE FROM temperatures WHERE received_ms < $1", &params);
    let leds = tx.execute("DELETE FROM led_changes WHERE received_ms < $1", &params);
    let minutes = super::minute_cutoff(cutoff);
    let minutes_param: [&(dyn ToSql + Sync); 1] = [&minutes];
    let bounds_params: [&(dyn ToSql + Sync); 2] = [&cutoff.0, &minutes];
    let old_minutes =
        tx.execute("DELETE FROM temperature_minutes WHERE bucket_ms < $1", &minutes_param);
    let bounds = tx.execute(
        "UPDATE history_bounds SET raw_since_ms = GREATEST(raw_since_ms, $1),
             minutes_since_ms = GREATEST(minutes_since_ms, $2)",
        &bounds_params,
    );
    let (temperatures, leds, _, _) = tokio::try_join!(temperatures, leds, old_minutes, bounds)?;
    tx.commit().await?;
    Ok(usize::try_from(temperatures + leds).unwrap_or(usize::MAX))
}

/// Creates the bookkeeping table if needed and applies the migrations this database lacks, in
/// one transaction, holding an advisory lock so that two servers starting together migrate once.
async fn migrate(client: &mut Client, config: &PostgresConfig) -> Result<(), Error> {
    let refused = |error: tokio_postgres::Error| schema_error(config, error);
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version BIGINT NOT NULL
        )",
    )
    .await
    .map_err(refused)?;
    let row =
        tx.query_opt("SELECT version FROM schema_version WHERE id = 1", &[]).await.map_err(db)?;
    let version: i64 = match row {
        Some(row) => row.try_get(0).map_err(db)?,
        None => 0,
    };
    if version > POSTGRES_SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { found: version, known: POSTGRES_SCHEMA_VERSION });
    }
    if version == POSTGRES_SCHEMA_VERSION {
        return Ok(());
    }
    for migration in MIGRATIONS.iter().skip(usize::try_from(version.max(0)).unwrap_or(0)) {
        tx.batch_execute(migration).await.map_err(refused)?;
    }
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&POSTGRES_SCHEMA_VERSION],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(from = version, to = POSTGRES_SCHEMA_VERSION, "PostgreSQL schema migrated");
    Ok(())
}

/// Why the schema cannot be created, and what to do: a role without the right to create tables,
/// or a database that holds another program's tables.
fn schema_error(config: &PostgresConfig, error: tokio_postgres::Error) -> Error {
    let Some(code) = error.code() else { return db(error) };
    let problem = if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        format!(
            "the role may not create ledtemp's tables ({}): make it the owner of the database \
             (ALTER DATABASE \"{}\" OWNER TO ...)",
            describe(&error),
            config.dbname()
        )
    } else if *code == SqlState::DUPLICATE_TABLE {
        format!(
            "the database already holds a table of that name that ledtemp did not make ({}): \
             give ledtemp a database of its own",
            describe(&error)
        )
    } else {
        return db(error);
    };
    Error::Postgres { target: config.target(), problem }
}

async fn load(client: &Client) -> Result<Snapshot, tokio_postgres::Error> {
    let mut snapshot = Snapshot::default();
    let (windows, devices, leds, temperatures, alerts, caps) = tokio::try_join!(
        client.query("SELECT device, key_id, top, seen, expected_will FROM replay_windows", &[]),
        client.query("SELECT device, last_seen_ms, online FROM devices", &[]),
        client.query("SELECT device, led, led_on, at_ms FROM leds", &[]),
        // The newest reading of each sensor: its highest id.
        client.query(
            "SELECT DISTINCT ON (device, sensor) device, sensor, milli_celsius, received_ms
             FROM temperatures ORDER BY device, sensor, id DESC",
            &[],
        ),
        client.query_opt("SELECT state FROM alert_engine WHERE id = 1", &[]),
        client.query("SELECT notifier, day, count FROM alert_caps", &[]),
    )?;
    for row in windows {
        let (device, key_id): (String, i16) = (row.try_get(0)?, row.try_get(1)?);
        let state = ReplayState {
            top: to_u64(row.try_get(2)?),
            seen: to_u64(row.try_get(3)?),
            expected_will: to_u64(row.try_get(4)?),
        };
        let Ok(key_id) = u8::try_from(key_id) else {
            tracing::error!("ignoring a stored window with an invalid key id: {key_id}");
            continue;
        };
        snapshot.add_window(&device, KeyId(key_id), state);
    }
    for row in devices {
        snapshot.add_device(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    }
    for row in leds {
        snapshot.add_led(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    }
    for row in temperatures {
        snapshot.add_temperature(
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
    }
    if let Some(row) = alerts {
        let json: String = row.try_get(0)?;
        snapshot.alerts = serde_json::from_str::<EngineState>(&json)
            .inspect_err(|error| {
                tracing::error!("the stored alert state is unreadable, starting afresh: {error}")
            })
            .ok();
    }
    for row in caps {
        let (notifier, day, count): (String, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        // A count that does not fit (a tampered row) counts as a full day.
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        snapshot.notifier_caps.insert(notifier, CapState { day, count });
    }
    Ok(snapshot)
}

/// One commit's transaction. When the stored windows had already accepted a frame of the batch,
/// nothing is written: the transaction is rolled back and the stored windows returned.
async fn write(
    session: &mut WriterSession,
    commit: &Commit<'_>,
    notices: &[String],
) -> Result<CommitOutcome, tokio_postgres::Error> {
    let statements = &session.statements;
    let tx = session.client.transaction().await?;
    // Alert state only from the leader: a session that is not (a new one after a lost
    // connection) takes the lock now, or the commit writes nothing. A session-level lock taken
    // inside a transaction outlives it.
    if commit.alerts.is_some() && !session.leader {
        let leads: bool =
            tx.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]).await?.try_get(0)?;
        if !leads {
            tx.rollback().await?;
            return Ok(CommitOutcome::NotLeader);
        }
        session.leader = true;
    }
    let keys: Vec<(&str, i16)> = commit
        .frames
        .iter()
        .map(|frame| (frame.device().as_str(), i16::from(frame.key_id.0)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut stored = vec![ReplayState::default(); keys.len()];
    if !keys.is_empty() {
        let (devices, key_ids): (Vec<&str>, Vec<i16>) = keys.iter().copied().unzip();
        tx.execute(&statements.create_windows, &[&devices, &key_ids]).await?;
        for row in tx.query(&statements.lock_windows, &[&devices, &key_ids]).await? {
            let key: (String, i16) = (row.try_get(0)?, row.try_get(1)?);
            if let Ok(index) = keys.binary_search(&(key.0.as_str(), key.1)) {
                stored[index] = ReplayState {
                    top: to_u64(row.try_get(2)?),
                    seen: to_u64(row.try_get(3)?),
                    expected_will: to_u64(row.try_get(4)?),
                };
            }
        }
    }
    let mut windows = stored.clone();
    let mut columns = Columns::default();
    let mut stale = false;
    for frame in commit.frames {
        let key = (frame.device().as_str(), i16::from(frame.key_id.0));
        let Ok(index) = keys.binary_search(&key) else { continue };
        match recheck(windows[index], frame) {
            Recheck::New(state) => {
                windows[index] = state;
                columns.push(frame);
            }
            Recheck::Unchecked => columns.push(frame),
            Recheck::Stored => stale = true,
        }
    }
    if stale {
        tx.rollback().await?;
        let stored = commit
            .frames
            .iter()
            .map(|frame| (frame.device(), frame.key_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|(device, key_id)| {
                let index = keys.binary_search(&(device.as_str(), i16::from(key_id.0))).ok()?;
                Some(((device.clone(), key_id), stored[index]))
            })
            .collect();
        return Ok(CommitOutcome::StaleWindows(stored));
    }
    let mut moved = WindowColumns::default();
    for ((key, before), after) in keys.iter().zip(&stored).zip(&windows) {
        if before != after {
            moved.push(*key, *after);
        }
    }
    let device_columns = DeviceColumns::new(commit.devices);
    let alerts = commit.alerts.map(|state| {
        // Serialising plain data into a String cannot fail.
        serde_json::to_string(state).unwrap_or_default()
    });
    let temperatures: [&(dyn ToSql + Sync); 6] = [
        &columns.temperature_devices,
        &columns.sensors,
        &columns.temperature_times,
        &columns.temperature_uptimes,
        &columns.milli_celsius,
        &columns.temperature_sequences,
    ];
    let led_changes: [&(dyn ToSql + Sync); 6] = [
        &columns.led_devices,
        &columns.led_names,
        &columns.led_times,
        &columns.led_uptimes,
        &columns.led_on,
        &columns.led_sequences,
    ];
    let devices: [&(dyn ToSql + Sync); 3] =
        [&device_columns.devices, &device_columns.last_seen, &device_columns.online];
    let leds: [&(dyn ToSql + Sync); 4] = [
        &device_columns.led_devices,
        &device_columns.leds,
        &device_columns.led_on,
        &device_columns.led_at,
    ];
    let minutes = AggregateColumns::new(&columns, MINUTE_MS);
    let hours = AggregateColumns::new(&columns, HOUR_MS);
    let alert_state: [&(dyn ToSql + Sync); 1] = [&alerts];
    // Delivered to the listeners if and only if the transaction commits.
    let notify: [&(dyn ToSql + Sync); 2] = [&notice::CHANNEL, &notices];
    // Sent together (pipelined), all in the one transaction.
    tokio::try_join!(
        moved.write(&tx, &statements.update_windows),
        execute_unless(
            columns.temperature_devices.is_empty(),
            &tx,
            &statements.insert_temperatures,
            &temperatures,
        ),
        execute_unless(
            columns.led_devices.is_empty(),
            &tx,
            &statements.insert_led_changes,
            &led_changes,
        ),
        execute_unless(
            device_columns.devices.is_empty(),
            &tx,
            &statements.upsert_devices,
            &devices,
        ),
        execute_unless(device_columns.led_devices.is_empty(), &tx, &statements.upsert_leds, &leds),
        execute_unless(alerts.is_none(), &tx, &statements.upsert_alerts, &alert_state),
        execute_unless(notices.is_empty(), &tx, &statements.notify, &notify),
        minutes.write(&tx, &statements.upsert_minutes),
        hours.write(&tx, &statements.upsert_hours),
    )?;
    tx.commit().await?;
    Ok(CommitOutcome::Written)
}

/// The reader's connection and its statement.
struct HistorySession {
    client: Client,
    temperatures: Statement,
}

/// The HTTP handlers' reader: history queries on a connection of its own (readers never wait
/// for the writer), sharing the store's runtime. Concurrent queries share the connection
/// (pipelined). Reconnects after the connection was lost. Blocking: call it from
/// `spawn_blocking` (or anywhere: inside a runtime it blocks on a thread of its own).
pub struct PostgresHistory {
    link: Arc<Link>,
    session: Mutex<Option<Arc<HistorySession>>>,
}

impl fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresHistory")
            .field("database", &self.link.config.target())
            .finish_non_exhaustive()
    }
}

impl PostgresHistory {
    /// The open connection, or a new one.
    fn session(&self) -> Result<Arc<HistorySession>, Error> {
        // A panic while holding the lock leaves nothing half done: the slot is still valid.
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(session) = slot.as_ref().filter(|session| !session.client.is_closed()) {
            return Ok(Arc::clone(session));
        }
        let link = &self.link;
        let session = link.runtime.run(async {
            let Connection { client, .. } = link.connect().await?;
            let temperatures = client
                .prepare(
                    "SELECT sensor, received_ms, milli_celsius FROM temperatures
                     WHERE device = $1::text AND received_ms >= $2::int8 AND received_ms <= $3::int8
                       AND ($4::text IS NULL OR sensor = $4::text)
                     ORDER BY received_ms DESC, id DESC LIMIT $5::int8",
                )
                .await
                .map_err(db)?;
            Ok::<_, Error>(HistorySession { client, temperatures })
        })?;
        let session = Arc::new(session);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Forgets `session` after it failed, unless another call replaced it already.
    fn lost(&self, session: &Arc<HistorySession>) {
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, session)) {
            *slot = None;
        }
    }
}

impl PostgresHistory {
    /// Runs `query` on `session` (at most [`OPERATION_TIMEOUT`]); a lost connection or a time-out
    /// drops the session, so the next query connects again.
    fn rows(
        &self,
        session: &Arc<HistorySession>,
        query: impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send,
    ) -> Result<Vec<Row>, Error> {
        match self.link.runtime.run_timed(query) {
            Some(Ok(rows)) => Ok(rows),
            Some(Err(error)) => {
                if connection_lost(&error) || session.client.is_closed() {
                    self.lost(session);
                }
                Err(db(error))
            }
            None => {
                self.lost(session);
                Err(timed_out())
            }
        }
    }
}

impl PostgresHistory {
    /// The rows of `sql` with `params`, on the reader's connection.
    fn select(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let session = self.session()?;
        self.rows(&session, session.client.query(sql, params))
    }
}

fn led_point(led: &str, on: bool, at: i64) -> Option<LedPoint> {
    let led = name("LED name", led, LedName::new)?;
    Some(LedPoint { led, state: LedState::from(on), at: UnixMillis(at) })
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl RangeReader for PostgresHistory {
    fn bounds(&self) -> Result<(i64, i64), Error> {
        let rows = self.select(
            "SELECT raw_since_ms, minutes_since_ms FROM history_bounds WHERE id = 1",
            &[],
        )?;
        match rows.first() {
            Some(row) => Ok((row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?)),
            None => Ok((i64::MIN, i64::MIN)),
        }
    }

    fn sensors(
        &self,
        device: &DeviceId,
        sensor: Option<&SensorName>,
        since: i64,
        until: i64,
    ) -> Result<Vec<(SensorName, i64)>, Error> {
        let device = device.as_str();
        let sensor = sensor.map(SensorName::as_str);
        let from = crate::history::bucket_start(since, HOUR_MS);
        let last_whole = until.saturating_sub(HOUR_MS - 1);
        let rows = self.select(
            "SELECT sensor, SUM(CASE WHEN bucket_ms >= $2::int8 AND bucket_ms <= $5::int8
                                     THEN count ELSE 0 END)::int8
             FROM temperature_hours
             WHERE device = $1::text AND ($6::text IS NULL OR sensor = $6::text)
               AND bucket_ms >= $3::int8 AND bucket_ms <= $4::int8
             GROUP BY sensor ORDER BY sensor",
            &[&device, &since, &from, &until, &last_whole, &sensor],
        )?;
        let mut sensors = Vec::with_capacity(rows.len());
        for row in &rows {
            let (text, at_least): (String, i64) =
                (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
            sensors.extend(name("sensor name", &text, SensorName::new).map(|s| (s, at_least)));
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
        let (device, sensor_name, limit) = (device.as_str(), sensor.as_str(), sql_limit(limit));
        let rows = self.select(
            "SELECT received_ms, milli_celsius FROM temperatures
             WHERE device = $1::text AND sensor = $2::text
               AND received_ms >= $3::int8 AND received_ms <= $4::int8
             ORDER BY received_ms, id LIMIT $5::int8",
            &[&device, &sensor_name, &since, &until, &limit],
        )?;
        rows.iter()
            .map(|row| {
                Ok(TemperaturePoint {
                    sensor: sensor.clone(),
                    at: UnixMillis(row.try_get(0).map_err(db)?),
                    temperature: MilliCelsius(row.try_get(1).map_err(db)?),
                })
            })
            .collect()
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
                 WHERE device = $1::text AND sensor = $2::text
                   AND bucket_ms >= $3::int8 AND bucket_ms <= $4::int8 ORDER BY bucket_ms"
            }
            Resolution::Hours => {
                "SELECT bucket_ms, min_milli, max_milli, sum_milli, count FROM temperature_hours
                 WHERE device = $1::text AND sensor = $2::text
                   AND bucket_ms >= $3::int8 AND bucket_ms <= $4::int8 ORDER BY bucket_ms"
            }
        };
        let (device, sensor) = (device.as_str(), sensor.as_str());
        let rows = self.select(sql, &[&device, &sensor, &from, &until])?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(db)?,
                    Aggregate {
                        min: MilliCelsius(row.try_get(1).map_err(db)?),
                        max: MilliCelsius(row.try_get(2).map_err(db)?),
                        sum: row.try_get(3).map_err(db)?,
                        count: row.try_get(4).map_err(db)?,
                    },
                ))
            })
            .collect()
    }

    fn leds_before(&self, device: &DeviceId, before: i64) -> Result<Vec<LedPoint>, Error> {
        let device = device.as_str();
        let rows = self.select(
            "(SELECT DISTINCT ON (led) led, led_on, received_ms FROM led_changes
              WHERE device = $1::text AND received_ms < $2::int8
              ORDER BY led, received_ms DESC, id DESC)
             UNION ALL
             SELECT led, led_on, at_ms FROM leds WHERE device = $1::text AND at_ms < $2::int8",
            &[&device, &before],
        )?;
        let mut points = Vec::with_capacity(rows.len());
        for row in &rows {
            let (led, on, at): (String, bool, i64) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
            );
            points.extend(led_point(&led, on, at));
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
        let (device, limit) = (device.as_str(), sql_limit(limit));
        let sensor = sensor.map(SensorName::as_str);
        let rows = self.select(
            "SELECT id, sensor, received_ms, milli_celsius FROM temperatures
             WHERE device = $1::text AND ($2::text IS NULL OR sensor = $2::text)
               AND received_ms >= $3::int8 AND received_ms <= $5::int8
               AND (received_ms, id) > ($3::int8, $4::int8)
             ORDER BY received_ms, id LIMIT $6::int8",
            &[&device, &sensor, &after.0, &after.1, &until, &limit],
        )?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, sensor, at, milli): (i64, String, i64, i32) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
                row.try_get(3).map_err(db)?,
            );
            if let Some(sensor) = name("sensor name", &sensor, SensorName::new) {
                let temperature = MilliCelsius(milli);
                page.push((id, TemperaturePoint { sensor, temperature, at: UnixMillis(at) }));
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
        let (device, limit) = (device.as_str(), sql_limit(limit));
        let rows = self.select(
            "SELECT id, led, led_on, received_ms FROM led_changes
             WHERE device = $1::text AND received_ms >= $2::int8 AND received_ms <= $4::int8
               AND (received_ms, id) > ($2::int8, $3::int8)
             ORDER BY received_ms, id LIMIT $5::int8",
            &[&device, &after.0, &after.1, &until, &limit],
        )?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, led, on, at): (i64, String, bool, i64) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
                row.try_get(3).map_err(db)?,
            );
            page.extend(led_point(&led, on, at).map(|point| (id, point)));
        }
        Ok(page)
    }
}

impl HistoryStore for PostgresHistory {
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

    fn temperatures(&self, query: &HistoryQuery) -> Result<Vec<TemperaturePoint>, Error> {
        let session = self.session()?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let sensor = query.sensor.as_ref().map(SensorName::as_str);
        let device = query.device.as_str();
        let rows = self.rows(
            &session,
            session.client.query(
                &session.temperatures,
                &[&device, &query.since.0, &query.until.0, &sensor, &limit],
            ),
        )?;
        let mut points = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let (sensor, at, milli): (String, i64, i32) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
            );
            if let Some(sensor) = name("sensor name", &sensor, SensorName::new) {
                points.push(TemperaturePoint {
                    sensor,
                    temperature: MilliCelsius(milli),
                    at: UnixMillis(at),
                });
            }
        }
        Ok(points)
    }

    fn commands(
        &self,
        device: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, Error> {
        let session = self.session()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let device = device.map(DeviceId::as_str);
        let params: [&(dyn ToSql + Sync); 2] = [&device, &limit];
        let rows = self.rows(
            &session,
            session.client.query(
                "SELECT at_ms, by, device, led, led_on, outcome, sequence, confirmed_ms
                 FROM command_log WHERE ($1::text IS NULL OR device = $1::text)
                 ORDER BY id DESC LIMIT $2::int8",
                &params,
            ),
        )?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let (at, by, device, led, on, outcome, sequence, confirmed): (
                i64,
                String,
                String,
                String,
                bool,
                String,
                Option<i64>,
                Option<i64>,
            ) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
                row.try_get(3).map_err(db)?,
                row.try_get(4).map_err(db)?,
                row.try_get(5).map_err(db)?,
                row.try_get(6).map_err(db)?,
                row.try_get(7).map_err(db)?,
            );
            records.extend(super::command_row(
                at, by, &device, &led, on, &outcome, sequence, confirmed,
            ));
        }
        Ok(records)
    }
}
