//! History benchmark (issue 16, item 4): the chart queries against the bare SQL `SELECT` of the
//! same raw rows, on a SQLite file of 30 days of 1 Hz readings for 10 sensors of one device
//! (25,920,000 rows).
//!
//! `cargo bench --bench history`. The file is generated once through the store's own commit
//! path (`SqliteStore::commit`, batches of 50,000 frames: the raw rows, the replay window and the
//! 1-minute and 1-hour aggregates, as the ingest worker writes them) and cached under
//! `target/bench-history/` (a few minutes the first time, about 2.5 GB); later runs reuse it.
//!
//! Measured, each in the same run:
//!
//! - **30-day chart**: `HistoryStore::temperature_history` for every sensor of the device over
//!   the last 30 days, 1,000 points per sensor (hour buckets from the 1-hour aggregates);
//!   against `SELECT sensor, received_ms, milli_celsius FROM temperatures WHERE device = ? AND
//!   received_ms BETWEEN ? AND ?`, every row stepped through (the rows a chart without
//!   aggregates would read).
//! - **24-hour chart**: the same over the last 24 hours (two-minute buckets from the 1-minute
//!   aggregates) against the bare `SELECT` of those 864,000 rows.
//! - Memory: the peak resident set (`VmHWM`, reset through `/proc/self/clear_refs` before each
//!   phase) while answering, against the size the raw range would take in memory.
//! - Storage: the bytes the aggregate tables take (copied into a fresh file of the same schema)
//!   per sensor per year.
//!
//! Medians of [`RUNS`] runs after one warm-up run (the bare 30-day `SELECT`: [`SLOW_RUNS`]).
//! Results are recorded in `docs/performance.md`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ledtemp_core::{DeviceId, KeyId, MilliCelsius, ReplayState, SensorName, Uptime};
use ledtemp_web::{
    AcceptedFrame, Commit, DeviceUpdate, HistoryStore, Observation, RangeQuery, Reading,
    SqliteHistory, SqliteStore, Store, TemperaturePoint, UnixMillis,
};

/// The device, its sensors, and the time span generated.
const DEVICE: &str = "bench-pi";
const SENSORS: usize = 10;
const DAYS: i64 = 30;
/// The newest reading's time: fixed, so the cached file stays valid (2026-11-01T00:00:00Z).
const END_MS: i64 = 1_793_491_200_000;
const SECOND_MS: i64 = 1_000;
const DAY_MS: i64 = 86_400_000;
/// Frames per commit while generating.
const BATCH: usize = 50_000;
/// Runs of each measurement (after one warm-up).
const RUNS: usize = 21;
const SLOW_RUNS: usize = 3;

fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    target.join("bench-history")
}

fn sensor_name(index: usize) -> SensorName {
    SensorName::new(&format!("sensor-{index}")).unwrap()
}

/// A reading: a daily swing, a slow drift, a little noise and a rare spike, in milli-degrees.
fn value(sensor: usize, second: i64) -> i32 {
    let day = (second % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
    let noise = ((second * 7_919 + sensor as i64 * 104_729) % 201) as i32 - 100;
    let spike = if (second + sensor as i64 * 13) % 50_000 == 0 { 60_000 } else { 0 };
    20_000 + sensor as i32 * 500 + (day.sin() * 3_000.0) as i32 + noise + spike
}

/// Generates the file (through `SqliteStore::commit`) unless a complete one is cached.
fn database() -> PathBuf {
    let dir = cache_dir();
    let path = dir.join("history-v1.db");
    let done = dir.join("history-v1.complete");
    if done.exists() && path.exists() {
        println!("using the cached database {}", path.display());
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    for stale in ["history-v1.db", "history-v1.db-wal", "history-v1.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    println!("generating {} ({} rows; minutes) ...", path.display(), rows_total());
    let started = Instant::now();
    let mut store = SqliteStore::open(&path).unwrap();
    let device = DeviceId::new(DEVICE).unwrap();
    let sensors: Vec<SensorName> = (0..SENSORS).map(sensor_name).collect();
    let first = END_MS - DAYS * DAY_MS + SECOND_MS;
    let seconds = DAYS * 86_400;
    let mut frames = Vec::with_capacity(BATCH);
    let mut sequence = 0u64;
    for second in 0..seconds {
        let at = UnixMillis(first + second * SECOND_MS);
        for (index, sensor) in sensors.iter().enumerate() {
            sequence += 1;
            let point = TemperaturePoint {
                sensor: sensor.clone(),
                temperature: MilliCelsius(value(index, second)),
                at,
            };
            frames.push(AcceptedFrame {
                update: DeviceUpdate {
                    device: device.clone(),
                    at,
                    observation: Observation::Reading(Reading::Temperature(point)),
                    retained: false,
                },
                key_id: KeyId(1),
                sequence,
                uptime: Uptime(0),
                window: ReplayState::default(),
            });
        }
        if frames.len() >= BATCH || second + 1 == seconds {
            store.commit(&Commit { frames: &frames, devices: &[], alerts: None }).unwrap();
            frames.clear();
        }
        if second % (86_400 * 3) == 0 && second > 0 {
            println!("  day {} of {DAYS} after {:.0?}", second / 86_400, started.elapsed());
        }
    }
    Box::new(store).close().unwrap();
    std::fs::write(&done, b"").unwrap();
    println!("generated in {:.1?}", started.elapsed());
    path
}

fn rows_total() -> i64 {
    DAYS * 86_400 * SENSORS as i64
}

/// `VmHWM` of this process, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current resident set (Linux: `5` into `clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The median and minimum of `runs` timings of `work` (after one warm-up run).
fn time<T>(runs: usize, mut work: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut last = work();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        last = work();
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[0], last)
}

/// The bare SQL: every raw row of the range, stepped through.
fn bare_select(conn: &rusqlite::Connection, since: i64, until: i64) -> (usize, i64) {
    let mut statement = conn
        .prepare_cached(
            "SELECT sensor, received_ms, milli_celsius FROM temperatures
             WHERE device = ?1 AND received_ms >= ?2 AND received_ms <= ?3",
        )
        .unwrap();
    let mut rows = statement.query(rusqlite::params![DEVICE, since, until]).unwrap();
    let (mut count, mut sum) = (0usize, 0i64);
    while let Some(row) = rows.next().unwrap() {
        let sensor: &str = row.get_ref(0).unwrap().as_str().unwrap();
        count += usize::from(!sensor.is_empty());
        sum += row.get::<_, i64>(1).unwrap() + row.get::<_, i64>(2).unwrap();
    }
    (count, sum)
}

/// Bytes the rows of `table` take in a file of the store's schema.
fn table_bytes(source: &Path, table: &str) -> u64 {
    let dir = tempfile::tempdir_in(cache_dir()).unwrap();
    let copy = dir.path().join("copy.db");
    Box::new(SqliteStore::open(&copy).unwrap()).close().unwrap();
    let empty = std::fs::metadata(&copy).unwrap().len();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS source", [source.to_str().unwrap()]).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO main.{table} SELECT * FROM source.{table}; DETACH DATABASE source; VACUUM;"
    ))
    .unwrap();
    drop(conn);
    std::fs::metadata(&copy).unwrap().len() - empty
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let path = database();
    let history = SqliteHistory::open(&path).unwrap();
    let bare = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let device = DeviceId::new(DEVICE).unwrap();
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "database: {:.2} GB, {} rows, {SENSORS} sensors, {DAYS} days at 1 Hz",
        file_bytes as f64 / 1e9,
        rows_total()
    );

    println!();
    println!(
        "| query | rows in range | bare SELECT (median, min) | chart (median, min) | points | bare / chart | peak RSS while charting |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (label, span, bare_runs) in
        [("30 days", DAYS * DAY_MS, SLOW_RUNS), ("24 hours", DAY_MS, RUNS)]
    {
        let (since, until) = (END_MS - span + 1, END_MS);
        let query = RangeQuery {
            device: device.clone(),
            sensor: None,
            since: UnixMillis(since),
            until: UnixMillis(until),
            points: 1_000,
        };
        reset_peak();
        let before = peak_kib();
        let (chart_median, chart_min, answer) =
            time(RUNS, || history.temperature_history(&query).unwrap());
        let chart_peak = peak_kib();
        let (bare_median, bare_min, (rows, _)) =
            time(bare_runs, || bare_select(&bare, since, until));
        println!(
            "| {label} | {rows} | {bare_median:.1?}, {bare_min:.1?} | {chart_median:.2?}, {chart_min:.2?} | {} ({} per sensor, buckets of {} s) | **{:.0}x** | {:.1} MiB (+{:.1} MiB) |",
            answer.points.len(),
            answer.points.len() / SENSORS,
            answer.bucket_ms / 1_000,
            bare_median.as_secs_f64() / chart_median.as_secs_f64(),
            chart_peak as f64 / 1024.0,
            chart_peak.saturating_sub(before) as f64 / 1024.0,
        );
        assert!(answer.points.len() <= 1_000 * SENSORS);
        // The edge buckets start on a whole minute or hour: they may hold readings up to one
        // aggregate's width outside the range (here the one at exactly `since - 1 ms`).
        let counted = answer.points.iter().map(|p| p.aggregate.count).sum::<i64>();
        assert!(counted >= i64::try_from(rows).unwrap(), "{counted} of {rows}");
    }
    println!(
        "(the raw 30-day range as 16-byte (time, value) pairs alone would be {:.0} MiB)",
        (rows_total() * 16) as f64 / 1024.0 / 1024.0
    );

    println!();
    let minutes = table_bytes(&path, "temperature_minutes");
    let hours = table_bytes(&path, "temperature_hours");
    let per_sensor_day = |bytes: u64| bytes as f64 / SENSORS as f64 / DAYS as f64;
    println!(
        "| table | bytes for {DAYS} days x {SENSORS} sensors | per sensor per day | per sensor per year |"
    );
    println!("| --- | --- | --- | --- |");
    for (table, bytes) in [
        ("temperature_minutes", minutes),
        ("temperature_hours", hours),
        ("whole file (raw rows, indexes, aggregates)", file_bytes),
    ] {
        println!(
            "| {table} | {bytes} | {:.0} | {:.2} MB |",
            per_sensor_day(bytes),
            per_sensor_day(bytes) * 365.0 / 1e6
        );
    }
}
