//! The store seam: what the pipeline and the HTTP side need from a database, and nothing else.
//!
//! - [`Store`] is the one writer, owned by the ingest worker: it loads everything the caches are
//!   rebuilt from at start ([`Snapshot`]) and writes each batch as one transaction ([`Commit`]):
//!   the frames' history rows, the replay windows that admitted them, the devices' new states and
//!   the alert engine's state, all or nothing.
//! - [`HistoryStore`] answers the read-only history queries of the HTTP handlers, on its own
//!   connection so that readers never wait for the writer.
//!
//! One module per database implements both, with the same guarantees: [`SqliteStore`] and
//! [`SqliteHistory`] on a SQLite file (the default), [`PostgresStore`] and [`PostgresHistory`] on
//! a PostgreSQL server (which several servers may share: its replay windows are taken under a
//! row lock). [`Database`] says which one a server uses, and [`Database::open`] is the one place
//! that chooses: adding a database is one new module here and one match arm there.

mod postgres;
mod sqlite;

pub use postgres::{
    CONNECT_TIMEOUT, OPERATION_TIMEOUT, POSTGRES_SCHEMA_VERSION, PostgresConfig, PostgresHistory,
    PostgresStore,
};
pub use sqlite::{SCHEMA_VERSION, SqliteHistory, SqliteStore};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledtemp_core::{
    DeviceId, KeyId, LedName, LedState, MilliCelsius, ReplayState, SensorName, Uptime,
};

use crate::Error;
use crate::alerts::{CapState, EngineState};
use crate::command::{CommandOutcome, CommandRecord, CommandSettlement};
use crate::history::{
    self, Aggregate, BucketPlan, EXPORT_PAGE_ROWS, ExportSink, LedHistory, MAX_LED_CHANGES,
    MINUTE_MS, RangeQuery, Resolution, TemperatureHistory,
};
use crate::model::{DeviceState, DeviceUpdate, LedPoint, TemperaturePoint, UnixMillis};

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

/// Rows as both backends read them back, into the snapshot. A row naming an invalid device,
/// sensor or LED (a tampered database) is skipped and logged.
impl Snapshot {
    pub(crate) fn add_window(&mut self, device: &str, key_id: KeyId, state: ReplayState) {
        if let Some(device) = name("device id", device, DeviceId::new) {
            self.windows.insert((device, key_id), state);
        }
    }

    pub(crate) fn add_device(&mut self, device: &str, last_seen: i64, online: bool) {
        if let Some(device) = name("device id", device, DeviceId::new) {
            let entry = self.devices.entry(device).or_default();
            entry.last_seen = Some(UnixMillis(last_seen));
            entry.online = online;
        }
    }

    pub(crate) fn add_led(&mut self, device: &str, led: &str, on: bool, at: i64) {
        let (Some(device), Some(led)) =
            (name("device id", device, DeviceId::new), name("LED name", led, LedName::new))
        else {
            return;
        };
        let point = LedPoint { led: led.clone(), state: LedState::from(on), at: UnixMillis(at) };
        self.devices.entry(device).or_default().leds.insert(led, point);
    }

    pub(crate) fn add_temperature(&mut self, device: &str, sensor: &str, milli: i32, at: i64) {
        let (Some(device), Some(sensor)) = (
            name("device id", device, DeviceId::new),
            name("sensor name", sensor, SensorName::new),
        ) else {
            return;
        };
        let point = TemperaturePoint {
            sensor: sensor.clone(),
            temperature: MilliCelsius(milli),
            at: UnixMillis(at),
        };
        self.devices.entry(device).or_default().temperatures.insert(sensor, point);
    }
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

/// Where a store hands the updates other servers of a group committed ([`Store::follow_others`]):
/// each message is one notice's worth, in commit order.
pub type RemoteSink = tokio::sync::mpsc::Sender<Vec<DeviceUpdate>>;

/// What a [`Store::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Everything was written.
    Written,
    /// Nothing was written: the stored replay windows had already accepted a frame of the batch
    /// (another server sharing the database accepted it, or an earlier commit of this one went
    /// through although its answer was lost). These are the stored windows of the batch's
    /// (device, key id) pairs: the database's word wins over the pipeline's cache, which takes
    /// them and checks the batch again. Only a database several servers share can answer this.
    StaleWindows(Vec<((DeviceId, KeyId), ReplayState)>),
    /// Nothing was written: the commit carried alert state, but this server no longer leads
    /// ([`Store::lead`]: another server of the group took the lead after this one's connection
    /// was lost). The pipeline stops alerting and commits the batch without it.
    NotLeader,
}

/// The writer's side of a database. One per server, owned by the ingest worker; every method
/// either does all of its work or none.
pub trait Store: Send + 'static {
    /// Reads everything the caches, replay windows and alert engine are rebuilt from. Rows that
    /// do not hold a valid name or value (a tampered file) are skipped and logged.
    fn load(&mut self) -> Result<Snapshot, Error>;

    /// Writes `commit` in one transaction, unless the stored replay windows show that a frame
    /// of it was accepted already ([`CommitOutcome::StaleWindows`]: nothing written). On error
    /// nothing is written.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<CommitOutcome, Error>;

    /// Several servers share this database (a shared subscription group): from now on, tell the
    /// others what each commit wrote, and hand what they commit to `sink`, for this server's
    /// live view. A database only one server can use (SQLite) does nothing; so does the
    /// default.
    fn follow_others(&mut self, sink: RemoteSink) -> Result<(), Error> {
        let _ = sink;
        Ok(())
    }

    /// The stored replay window of (`device`, `key_id`), when several servers share the
    /// database and one may have moved it past this server's cache; `None` when there is none or
    /// the database is one server's (SQLite, and the default: the cache is the truth).
    fn stored_window(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
    ) -> Result<Option<ReplayState>, Error> {
        let _ = (device, key_id);
        Ok(None)
    }

    /// Whether this server leads: evaluates the alert rules, sends notifications and prunes
    /// history, which one server of a group must do, not each. Takes the lead when it is free.
    /// A database one server owns (SQLite), and the default: always.
    fn lead(&mut self) -> Result<bool, Error> {
        Ok(true)
    }

    /// Reserves the next `count` sequence numbers of the server's own counter for commands to
    /// (`device`, `key_id`) and returns the first: the numbers `first..first + count` are this
    /// server's alone. The reservation is written (committed) before it is returned, so a crash
    /// at any point never hands out a number twice; servers sharing the database get disjoint
    /// blocks. Numbers a server reserved but did not use before it stopped are skipped.
    fn reserve_command_sequences(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
        count: u64,
    ) -> Result<u64, Error>;

    /// Appends `record` to the command log; returns the entry's id.
    fn log_command(&mut self, record: &CommandRecord) -> Result<i64, Error>;

    /// Sets the outcome (and confirmation time) of the command log entry `settled.log_id`.
    fn settle_command(&mut self, settled: &CommandSettlement) -> Result<(), Error>;

    /// Stores one notifier's daily cap (after a delivery).
    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) -> Result<(), Error>;

    /// Deletes temperature readings and LED changes received before `cutoff`; current states,
    /// replay windows, alert state and the 1-hour aggregates are kept, and the 1-minute
    /// aggregates back to [`MINUTE_AGGREGATE_RETENTION`](crate::MINUTE_AGGREGATE_RETENTION)
    /// before now (at least back to `cutoff`). Records the cut-offs, so that a chart of an older
    /// range is made of the aggregates. Returns the raw rows deleted.
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

    /// The most recent `limit` entries of the command log (of `device` only, if set), newest
    /// first.
    fn commands(
        &self,
        device: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, Error>;

    /// A chart of `query`'s range: each sensor's raw readings when it has at most
    /// `query.points` in the range (and they were not pruned), otherwise its buckets made of the
    /// long-term aggregates ([`TemperatureHistory`]). Reads at most `query.points` raw rows per
    /// sensor, whatever the range.
    fn temperature_history(&self, query: &RangeQuery) -> Result<TemperatureHistory, Error>;

    /// The LED timeline of `query`'s range (`sensor` and `points` unused).
    fn led_history(&self, query: &RangeQuery) -> Result<LedHistory, Error>;

    /// Every raw reading of `query`'s range (of `query.sensor` only, if set), oldest first,
    /// handed to `sink` a page of [`EXPORT_PAGE_ROWS`](crate::EXPORT_PAGE_ROWS) at a time, each
    /// page one short read: an export never holds the range in memory nor keeps a read
    /// transaction open while the client reads. Stops at the first error of `sink`.
    fn export_temperatures(
        &self,
        query: &RangeQuery,
        sink: &mut ExportSink<'_, TemperaturePoint>,
    ) -> Result<(), Error>;

    /// Every stored LED change of `query`'s range, as [`export_temperatures`](Self::export_temperatures).
    fn export_leds(
        &self,
        query: &RangeQuery,
        sink: &mut ExportSink<'_, LedPoint>,
    ) -> Result<(), Error>;
}

/// What each backend's reader answers, in plain SQL: the history queries above are built on it
/// once, here, for both databases.
pub(crate) trait RangeReader {
    /// (raw readings complete from, 1-minute aggregates complete from): the cut-offs of the
    /// prunes so far.
    fn bounds(&self) -> Result<(i64, i64), Error>;

    /// The sensors of `device` (only `sensor`, if set) with readings in the hours that overlap
    /// `[since, until]`, by name, each with the readings of the hours wholly inside the range: a
    /// lower bound of its readings in the range.
    fn sensors(
        &self,
        device: &DeviceId,
        sensor: Option<&SensorName>,
        since: i64,
        until: i64,
    ) -> Result<Vec<(SensorName, i64)>, Error>;

    /// At most `limit` raw readings of one sensor in `[since, until]`, oldest first.
    fn raw(
        &self,
        device: &DeviceId,
        sensor: &SensorName,
        since: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<TemperaturePoint>, Error>;

    /// The aggregates of one sensor at `resolution` starting in `from..=until`, oldest first.
    fn aggregates(
        &self,
        device: &DeviceId,
        sensor: &SensorName,
        resolution: Resolution,
        from: i64,
        until: i64,
    ) -> Result<Vec<(i64, Aggregate)>, Error>;

    /// Each LED's last change before `before` (`led_changes`) and its stored current state if
    /// that is older (`leds`), in either order.
    fn leds_before(&self, device: &DeviceId, before: i64) -> Result<Vec<LedPoint>, Error>;

    /// The next page of raw readings after the (time, row id) `after`, up to `until`, oldest
    /// first, with their row ids.
    fn temperature_page(
        &self,
        device: &DeviceId,
        sensor: Option<&SensorName>,
        after: (i64, i64),
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TemperaturePoint)>, Error>;

    /// The next page of LED changes after (time, row id) `after`, up to `until`, oldest first.
    fn led_page(
        &self,
        device: &DeviceId,
        after: (i64, i64),
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, LedPoint)>, Error>;
}

/// [`HistoryStore::temperature_history`] on any backend.
pub(crate) fn temperature_history(
    reader: &impl RangeReader,
    query: &RangeQuery,
) -> Result<TemperatureHistory, Error> {
    let (since, until) = (query.since.0, query.until.0);
    let points = query.points.max(1);
    let (raw_since, minutes_since) = reader.bounds()?;
    let sensors = reader.sensors(&query.device, query.sensor.as_ref(), since, until)?;
    let plan = BucketPlan::new(since, until, points, minutes_since);
    let mut out = Vec::new();
    let mut bucketed = false;
    for (sensor, at_least) in &sensors {
        // Raw when the raw rows are all there and few enough; the whole hours inside the range
        // already holding more spare the look.
        let few = usize::try_from(*at_least).is_ok_and(|at_least| at_least <= points);
        if since >= raw_since && few {
            let raw = reader.raw(&query.device, sensor, since, until, points + 1)?;
            if raw.len() <= points {
                history::raw_points(raw, &mut out);
                continue;
            }
        }
        bucketed = true;
        let rows = reader.aggregates(&query.device, sensor, plan.resolution, plan.start, until)?;
        history::downsample(&plan, sensor, rows, &mut out);
    }
    history::sort_points(&mut out);
    Ok(TemperatureHistory {
        device: query.device.clone(),
        since: query.since,
        until: query.until,
        bucket_ms: if bucketed { plan.width } else { 0 },
        points: out,
    })
}

/// [`HistoryStore::led_history`] on any backend.
pub(crate) fn led_history(
    reader: &impl RangeReader,
    query: &RangeQuery,
) -> Result<LedHistory, Error> {
    let mut initial: BTreeMap<LedName, LedPoint> = BTreeMap::new();
    for point in reader.leds_before(&query.device, query.since.0)? {
        match initial.get(&point.led) {
            Some(known) if known.at >= point.at => {}
            _ => {
                initial.insert(point.led.clone(), point);
            }
        }
    }
    let start = (query.since.0, 0);
    let page = reader.led_page(&query.device, start, query.until.0, MAX_LED_CHANGES + 1)?;
    let truncated = page.len() > MAX_LED_CHANGES;
    let changes = page.into_iter().take(MAX_LED_CHANGES).map(|(_, point)| point).collect();
    Ok(LedHistory {
        device: query.device.clone(),
        since: query.since,
        until: query.until,
        initial: initial.into_values().collect(),
        changes,
        truncated,
    })
}

/// Pages through `next` (keyset: each page starts after the last row of the one before) and
/// hands each to `sink`.
fn export_pages<T>(
    since: i64,
    mut next: impl FnMut((i64, i64)) -> Result<Vec<(i64, T)>, Error>,
    at: impl Fn(&T) -> i64,
    sink: &mut ExportSink<'_, T>,
) -> Result<(), Error> {
    let mut after = (since, 0);
    loop {
        let page = next(after)?;
        let full = page.len() >= EXPORT_PAGE_ROWS;
        let Some((id, last)) = page.last() else { return Ok(()) };
        after = (at(last), *id);
        sink(page.into_iter().map(|(_, row)| row).collect())?;
        if !full {
            return Ok(());
        }
    }
}

/// [`HistoryStore::export_temperatures`] on any backend.
pub(crate) fn export_temperatures(
    reader: &impl RangeReader,
    query: &RangeQuery,
    sink: &mut ExportSink<'_, TemperaturePoint>,
) -> Result<(), Error> {
    let (device, sensor, until) = (&query.device, query.sensor.as_ref(), query.until.0);
    export_pages(
        query.since.0,
        |after| reader.temperature_page(device, sensor, after, until, EXPORT_PAGE_ROWS),
        |point| point.at.0,
        sink,
    )
}

/// [`HistoryStore::export_leds`] on any backend.
pub(crate) fn export_leds(
    reader: &impl RangeReader,
    query: &RangeQuery,
    sink: &mut ExportSink<'_, LedPoint>,
) -> Result<(), Error> {
    let (device, until) = (&query.device, query.until.0);
    export_pages(
        query.since.0,
        |after| reader.led_page(device, after, until, EXPORT_PAGE_ROWS),
        |point| point.at.0,
        sink,
    )
}

/// Where a prune leaves the 1-minute aggregates: before the raw readings' cut-off and at least
/// [`MINUTE_AGGREGATE_RETENTION`](crate::MINUTE_AGGREGATE_RETENTION) back from now, on a
/// minute.
fn minute_cutoff(cutoff: UnixMillis) -> i64 {
    let kept = UnixMillis::now().saturating_sub(crate::MINUTE_AGGREGATE_RETENTION);
    history::bucket_start(cutoff.0.min(kept.0), MINUTE_MS)
}

/// Where the server keeps its data: a SQLite file (the default, `ledtemp.db`) or a PostgreSQL
/// database. `Display` names it without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite database file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database (which must exist; its tables are created).
    Postgres(PostgresConfig),
}

impl Database {
    /// `postgres://...` or `postgresql://...` is PostgreSQL ([`PostgresConfig::parse`]);
    /// anything else is the path of a SQLite file.
    ///
    /// # Errors
    /// [`Error::Config`] for a PostgreSQL URL that does not parse (shown without its password).
    pub fn parse(text: &str) -> Result<Database, Error> {
        if postgres::is_postgres_url(text) {
            PostgresConfig::parse(text).map(Database::Postgres)
        } else {
            Ok(Database::Sqlite(PathBuf::from(text)))
        }
    }

    /// Opens the database (creating and migrating its tables): the writer and the history
    /// reader, each on a connection of its own.
    ///
    /// # Errors
    /// SQLite: [`Error::Database`] naming the file and the fix, [`Error::SchemaTooNew`], or
    /// [`Error::Store`]. PostgreSQL: as [`PostgresStore::open`]; only
    /// [`Error::DatabaseUnreachable`] may pass by itself.
    pub fn open(&self) -> Result<OpenDatabase, Error> {
        match self {
            Database::Sqlite(path) => {
                // The writer first: it creates and migrates the file the reader opens.
                let store = SqliteStore::open(path)?;
                let history = SqliteHistory::open(path)?;
                Ok(OpenDatabase { store: Box::new(store), history: Arc::new(history) })
            }
            Database::Postgres(config) => {
                let store = PostgresStore::open(config)?;
                let history = store.history()?;
                Ok(OpenDatabase { store: Box::new(store), history: Arc::new(history) })
            }
        }
    }
}

/// An open database ([`Database::open`]): what
/// [`Pipeline::with_store`](crate::Pipeline::with_store) builds on.
pub struct OpenDatabase {
    /// The writer, for the ingest worker.
    pub store: Box<dyn Store>,
    /// The history reader, for the HTTP handlers.
    pub history: Arc<dyn HistoryStore>,
}

impl fmt::Debug for OpenDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenDatabase").finish_non_exhaustive()
    }
}

impl From<PathBuf> for Database {
    /// A SQLite file.
    fn from(path: PathBuf) -> Database {
        Database::Sqlite(path)
    }
}

impl From<&Path> for Database {
    /// A SQLite file.
    fn from(path: &Path) -> Database {
        Database::Sqlite(path.to_path_buf())
    }
}

impl From<PostgresConfig> for Database {
    fn from(config: PostgresConfig) -> Database {
        Database::Postgres(config)
    }
}

impl std::str::FromStr for Database {
    type Err = Error;

    /// As [`Database::parse`].
    fn from_str(text: &str) -> Result<Database, Error> {
        Database::parse(text)
    }
}

impl fmt::Display for Database {
    /// The SQLite file's path, or the PostgreSQL URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(config) => write!(f, "{config}"),
        }
    }
}

/// A 64-bit unsigned value as a signed database integer: the same bit pattern (the `seen` bitmap
/// uses all 64 bits; SQLite's integers and PostgreSQL's `BIGINT` are signed).
fn to_i64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The inverse of [`to_i64`].
fn to_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// The highest first number a command block may start at so that all of it stays a valid
/// sequence number; a database at or past it has used the key up.
fn command_block_fits(first: u64, count: u64) -> Result<u64, Error> {
    match first.checked_add(count) {
        Some(end) if end <= ledtemp_core::MAX_SEQUENCE + 1 => Ok(first),
        _ => Err(Error::Store(
            "the key's command sequence numbers are used up: rotate the device's key".into(),
        )),
    }
}

/// A command log row read back; `None` (logged) for a row naming an invalid device or LED or
/// an unknown outcome.
#[allow(clippy::too_many_arguments)]
fn command_row(
    at: i64,
    by: String,
    device: &str,
    led: &str,
    on: bool,
    outcome: &str,
    sequence: Option<i64>,
    confirmed_ms: Option<i64>,
) -> Option<CommandRecord> {
    let device = name("device id", device, DeviceId::new)?;
    let led = name("LED name", led, LedName::new)?;
    let Some(outcome) = CommandOutcome::from_label(outcome) else {
        tracing::error!("ignoring a stored command with an unknown outcome: {outcome:?}");
        return None;
    };
    Some(CommandRecord {
        at: UnixMillis(at),
        by,
        device,
        led,
        state: LedState::from(on),
        outcome,
        sequence: sequence.and_then(|s| u64::try_from(s).ok()),
        confirmed_at: confirmed_ms.map(UnixMillis),
    })
}

/// A name read back from the database; an invalid one (a tampered row) is logged and skipped.
fn name<T>(what: &str, text: &str, parse: fn(&str) -> Result<T, ledtemp_core::Error>) -> Option<T> {
    parse(text)
        .inspect_err(|_| tracing::error!("ignoring a stored row with an invalid {what}: {text:?}"))
        .ok()
}
