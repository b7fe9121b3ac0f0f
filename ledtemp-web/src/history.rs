//! History over a range: what the chart, the LED timeline and the CSV export ask the store, and
//! the arithmetic both databases share.
//!
//! - **Downsampling.** A chart asks for a range and at most `points` points per sensor
//!   ([`RangeQuery`]). A sensor with at most that many raw readings in the range gets them raw;
//!   otherwise the range is cut into equal buckets ([`BucketPlan`]) and each bucket gives the
//!   minimum, mean and maximum of its readings and their count ([`HistoryPoint`]), so a spike
//!   stays visible as its bucket's maximum. Empty buckets are left out.
//! - **Long-term aggregates.** Buckets are built from per-sensor 1-minute and 1-hour aggregates
//!   (minimum, maximum, sum, count: [`Aggregate`]) that the store keeps up to date in the ingest
//!   transaction ([`rollup`]), never from the raw rows: answering a 30-day chart reads at most a
//!   few thousand aggregate rows per sensor, and the server's memory while answering is bounded
//!   by the answer. Retention deletes raw rows; 1-minute aggregates are kept
//!   [`MINUTE_AGGREGATE_RETENTION`], 1-hour aggregates for ever.
//! - **Export** writes raw readings and LED changes as CSV lines ([`temperature_csv_line`],
//!   [`led_csv_line`]), page by page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ledtemp_core::{DeviceId, MilliCelsius, SensorName};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::model::{LedPoint, TemperaturePoint, UnixMillis};

/// The points per sensor a chart query returns when it does not say.
pub const DEFAULT_HISTORY_POINTS: usize = 1_000;

/// The most points per sensor a chart query may ask for.
pub const MAX_HISTORY_POINTS: usize = 5_000;

/// The most LED changes one LED history answer holds (the oldest ones; the answer then says
/// `truncated`).
pub const MAX_LED_CHANGES: usize = 10_000;

/// How long 1-minute aggregates are kept (counted back from the time of a prune, and never
/// shorter than the raw readings' retention). 1-hour aggregates are kept for ever.
pub const MINUTE_AGGREGATE_RETENTION: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Rows per page of an export: each page is one short read of the database and one chunk of the
/// HTTP body.
pub const EXPORT_PAGE_ROWS: usize = 4_096;

/// One minute, in milliseconds: the width of the finest aggregates.
pub const MINUTE_MS: i64 = 60_000;

/// One hour, in milliseconds: the width of the long-term aggregates.
pub const HOUR_MS: i64 = 3_600_000;

/// Above this bucket width a chart is built from the 1-hour aggregates, its width rounded up to
/// whole hours (so a 30-day chart reads 720 rows per sensor, not 43,200).
const HOURLY_ABOVE_MS: i64 = 30 * MINUTE_MS;

/// A range question: readings (or LED changes) of one device received in `[since, until]`
/// (both included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    /// The device.
    pub device: DeviceId,
    /// Only this sensor, if set (temperatures only).
    pub sensor: Option<SensorName>,
    /// Earliest receive time.
    pub since: UnixMillis,
    /// Latest receive time.
    pub until: UnixMillis,
    /// The most points per sensor (charts only; 1 to [`MAX_HISTORY_POINTS`]).
    pub points: usize,
}

/// Minimum, maximum, sum and count of the readings of one sensor in one time bucket, in
/// milli-degrees: what the aggregate tables hold and what a chart bucket gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    /// The lowest reading.
    pub min: MilliCelsius,
    /// The highest reading.
    pub max: MilliCelsius,
    /// The sum of the readings, in milli-degrees.
    pub sum: i64,
    /// How many readings.
    pub count: i64,
}

impl Aggregate {
    /// One reading.
    pub fn of(value: MilliCelsius) -> Aggregate {
        Aggregate { min: value, max: value, sum: i64::from(value.0), count: 1 }
    }

    /// Both together.
    pub fn merge(&mut self, other: &Aggregate) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = self.sum.saturating_add(other.sum);
        self.count = self.count.saturating_add(other.count);
    }

    /// The mean, rounded to a milli-degree, in degrees.
    pub fn mean_celsius(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        (self.sum as f64 / self.count as f64).round() / 1000.0
    }
}

/// One point of a chart: a raw reading (`count` 1, `min` = `max` = the reading) or a bucket
/// (`at` its start). JSON: `{"sensor", "at", "celsius", "min", "max", "count"}`, `celsius` the
/// reading or the bucket's mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPoint {
    /// The sensor.
    pub sensor: SensorName,
    /// The reading's receive time, or the bucket's start.
    pub at: UnixMillis,
    /// The bucket's readings (one for a raw point).
    pub aggregate: Aggregate,
}

impl Serialize for HistoryPoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("HistoryPoint", 6)?;
        s.serialize_field("sensor", &self.sensor)?;
        s.serialize_field("at", &self.at)?;
        s.serialize_field("celsius", &self.aggregate.mean_celsius())?;
        s.serialize_field("min", &self.aggregate.min.to_celsius())?;
        s.serialize_field("max", &self.aggregate.max.to_celsius())?;
        s.serialize_field("count", &self.aggregate.count)?;
        s.end()
    }
}

/// A chart's answer. JSON: `{"device", "since", "until", "bucket_ms", "points": [..]}`, points
/// oldest first (sensors interleaved by time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperatureHistory {
    /// The device.
    pub device: DeviceId,
    /// The range asked for.
    pub since: UnixMillis,
    /// The range asked for.
    pub until: UnixMillis,
    /// 0 when every sensor's points are raw readings; otherwise the width of the buckets of the
    /// sensors that were downsampled (a sensor with few readings may still be raw: count 1).
    pub bucket_ms: i64,
    /// The points.
    pub points: Vec<HistoryPoint>,
}

impl Serialize for TemperatureHistory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TemperatureHistory", 5)?;
        s.serialize_field("device", &self.device)?;
        s.serialize_field("since", &self.since)?;
        s.serialize_field("until", &self.until)?;
        s.serialize_field("bucket_ms", &self.bucket_ms)?;
        s.serialize_field("points", &self.points)?;
        s.end()
    }
}

/// An LED timeline. JSON: `{"device", "since", "until", "initial": [{"led", "on", "at"}],
/// "changes": [..], "truncated"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedHistory {
    /// The device.
    pub device: DeviceId,
    /// The range asked for.
    pub since: UnixMillis,
    /// The range asked for.
    pub until: UnixMillis,
    /// Each LED's last known state before `since` (from its last stored change, or the stored
    /// current state when that is older than `since`), by LED name.
    pub initial: Vec<LedPoint>,
    /// The changes in the range, oldest first, at most [`MAX_LED_CHANGES`].
    pub changes: Vec<LedPoint>,
    /// Whether there were more changes than [`MAX_LED_CHANGES`] (the newest left out).
    pub truncated: bool,
}

impl Serialize for LedHistory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("LedHistory", 6)?;
        s.serialize_field("device", &self.device)?;
        s.serialize_field("since", &self.since)?;
        s.serialize_field("until", &self.until)?;
        s.serialize_field("initial", &self.initial)?;
        s.serialize_field("changes", &self.changes)?;
        s.serialize_field("truncated", &self.truncated)?;
        s.end()
    }
}

/// Which aggregates a chart's buckets are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The 1-minute aggregates.
    Minutes,
    /// The 1-hour aggregates.
    Hours,
}

impl Resolution {
    /// The aggregates' width in milliseconds.
    pub const fn width_ms(self) -> i64 {
        match self {
            Resolution::Minutes => MINUTE_MS,
            Resolution::Hours => HOUR_MS,
        }
    }
}

/// The start of the `width`-wide bucket (aligned to the epoch) that holds `at`.
pub fn bucket_start(at: i64, width: i64) -> i64 {
    at - at.rem_euclid(width)
}

/// `value / by` rounded up, for a positive `by` and a non-negative `value`.
fn ceil_div(value: i64, by: i64) -> i64 {
    value / by + i64::from(value % by != 0)
}

/// How a downsampled range is cut: buckets `start + k * width` for k = 0, 1, ... up to `until`,
/// each made of whole aggregates of `resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPlan {
    /// The first bucket's start: `since` rounded down to the resolution.
    pub start: i64,
    /// The buckets' width: the range over `points`, rounded up to a whole minute (to a whole
    /// hour above 30 minutes).
    pub width: i64,
    /// The aggregates read.
    pub resolution: Resolution,
}

impl BucketPlan {
    /// The plan for `[since, until]` in at most `points` buckets (`points` at least 1). When the
    /// 1-minute aggregates before `minutes_since` were deleted (retention), a range that starts
    /// earlier is made of 1-hour aggregates.
    pub fn new(since: i64, until: i64, points: usize, minutes_since: i64) -> BucketPlan {
        let plan = |resolution: Resolution| {
            let unit = resolution.width_ms();
            let start = bucket_start(since, unit);
            let span = until.saturating_sub(start).saturating_add(1).max(1);
            let points = i64::try_from(points.max(1)).unwrap_or(i64::MAX);
            let per_point = ceil_div(span, points);
            let width = ceil_div(per_point, unit).saturating_mul(unit).max(unit);
            BucketPlan { start, width, resolution }
        };
        let minutes = plan(Resolution::Minutes);
        if minutes.width > HOURLY_ABOVE_MS || bucket_start(since, MINUTE_MS) < minutes_since {
            plan(Resolution::Hours)
        } else {
            minutes
        }
    }

    /// The start of the bucket that holds an aggregate starting at `at` (`None` before the
    /// first).
    fn bucket_of(&self, at: i64) -> Option<i64> {
        (at >= self.start).then(|| self.start + (at - self.start) / self.width * self.width)
    }
}

/// Folds aggregates of one sensor, oldest first, into the plan's buckets: one point per bucket
/// that holds any, oldest first.
pub fn downsample(
    plan: &BucketPlan,
    sensor: &SensorName,
    rows: impl IntoIterator<Item = (i64, Aggregate)>,
    out: &mut Vec<HistoryPoint>,
) {
    let mut current: Option<(i64, Aggregate)> = None;
    for (at, aggregate) in rows {
        let Some(bucket) = plan.bucket_of(at) else { continue };
        match &mut current {
            Some((start, sum)) if *start == bucket => sum.merge(&aggregate),
            _ => {
                if let Some((start, sum)) = current.replace((bucket, aggregate)) {
                    out.push(HistoryPoint {
                        sensor: sensor.clone(),
                        at: UnixMillis(start),
                        aggregate: sum,
                    });
                }
            }
        }
    }
    if let Some((start, sum)) = current {
        out.push(HistoryPoint { sensor: sensor.clone(), at: UnixMillis(start), aggregate: sum });
    }
}

/// Raw readings as chart points.
pub fn raw_points(points: impl IntoIterator<Item = TemperaturePoint>, out: &mut Vec<HistoryPoint>) {
    out.extend(points.into_iter().map(|point| HistoryPoint {
        sensor: point.sensor,
        at: point.at,
        aggregate: Aggregate::of(point.temperature),
    }));
}

/// One aggregate row to add into a table: (device, sensor, bucket start).
pub type RollupKey<'a> = (&'a str, &'a str, i64);

/// The aggregates a batch of readings adds to the `width`-wide table: one per (device, sensor,
/// bucket), sorted by that key (byte order), so that every server upserts rows in the same
/// order and two sharing a database cannot deadlock.
pub fn rollup<'a>(
    readings: impl IntoIterator<Item = (&'a str, &'a str, i64, MilliCelsius)>,
    width: i64,
) -> Vec<(RollupKey<'a>, Aggregate)> {
    let mut buckets: BTreeMap<RollupKey<'a>, Aggregate> = BTreeMap::new();
    for (device, sensor, at, value) in readings {
        let key = (device, sensor, bucket_start(at, width));
        let reading = Aggregate::of(value);
        buckets.entry(key).and_modify(|sum| sum.merge(&reading)).or_insert(reading);
    }
    buckets.into_iter().collect()
}

/// Merges each sensor's points into one list, oldest first (ties by sensor name).
pub fn sort_points(points: &mut [HistoryPoint]) {
    points.sort_by(|a, b| (a.at, &a.sensor).cmp(&(b.at, &b.sensor)));
}

/// Milli-degrees as an exact decimal in degrees, without trailing zeros: `21375` is `21.375`,
/// `-1250` is `-1.25`, `20000` is `20`.
pub fn celsius_text(value: MilliCelsius, out: &mut String) {
    let milli = i64::from(value.0);
    let (whole, fraction) = (milli.abs() / 1000, milli.abs() % 1000);
    let sign = if milli < 0 { "-" } else { "" };
    // Writing to a String cannot fail.
    let _ = write!(out, "{sign}{whole}");
    if fraction != 0 {
        let digits = format!("{fraction:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// The header of the temperature export.
pub const TEMPERATURE_CSV_HEADER: &str = "at,sensor,celsius\n";

/// The header of the LED export.
pub const LED_CSV_HEADER: &str = "at,led,on\n";

/// One line of the temperature export: `at,sensor,celsius` (RFC 3339 UTC, the name, the exact
/// value in degrees). Names are letters, digits, `-` and `_` (the topic scheme's), so nothing
/// needs quoting.
pub fn temperature_csv_line(point: &TemperaturePoint, out: &mut String) {
    out.push_str(&point.at.to_rfc3339());
    out.push(',');
    out.push_str(point.sensor.as_str());
    out.push(',');
    celsius_text(point.temperature, out);
    out.push('\n');
}

/// One line of the LED export: `at,led,on` (`on` is `true` or `false`).
pub fn led_csv_line(point: &LedPoint, out: &mut String) {
    out.push_str(&point.at.to_rfc3339());
    out.push(',');
    out.push_str(point.led.as_str());
    out.push_str(if point.state.is_on() { ",true\n" } else { ",false\n" });
}

/// Where an export hands each page (oldest first); an error (the client went away) stops the
/// export.
pub type ExportSink<'a, T> = dyn FnMut(Vec<T>) -> Result<(), crate::Error> + 'a;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sensor() -> SensorName {
        SensorName::new("cpu").unwrap()
    }

    #[test]
    fn celsius_is_written_exactly() {
        for (milli, text) in [
            (21_375, "21.375"),
            (-1_250, "-1.25"),
            (20_000, "20"),
            (5, "0.005"),
            (-5, "-0.005"),
            (0, "0"),
            (i32::MIN, "-2147483.648"),
        ] {
            let mut out = String::new();
            celsius_text(MilliCelsius(milli), &mut out);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_day_in_a_thousand_points_is_two_minute_buckets_and_a_month_is_hours() {
        let day = 24 * HOUR_MS;
        let since = 1_700_000_000_000;
        let plan = BucketPlan::new(since, since + day, 1_000, i64::MIN);
        assert_eq!((plan.width, plan.resolution), (2 * MINUTE_MS, Resolution::Minutes));
        assert_eq!(plan.start, bucket_start(since, MINUTE_MS));
        let plan = BucketPlan::new(since, since + 30 * day, 1_000, i64::MIN);
        assert_eq!((plan.width, plan.resolution), (HOUR_MS, Resolution::Hours));
        // Minutes deleted before the range's start: hours.
        let plan = BucketPlan::new(since, since + day, 1_000, since + HOUR_MS);
        assert_eq!(plan.resolution, Resolution::Hours);
    }

    #[test]
    fn a_spike_is_its_buckets_maximum() {
        let plan = BucketPlan { start: 0, width: 2 * MINUTE_MS, resolution: Resolution::Minutes };
        let rows = [
            (0, Aggregate::of(MilliCelsius(20_000))),
            (MINUTE_MS, Aggregate::of(MilliCelsius(99_000))),
            (5 * MINUTE_MS, Aggregate::of(MilliCelsius(20_000))),
        ];
        let mut out = Vec::new();
        downsample(&plan, &sensor(), rows, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].aggregate.max, MilliCelsius(99_000));
        assert_eq!(out[0].aggregate.count, 2);
        assert_eq!(out[1].at, UnixMillis(4 * MINUTE_MS));
    }

    proptest! {
        /// The exact decimal reads back as the same milli-degrees.
        #[test]
        fn celsius_text_reads_back(milli in any::<i32>()) {
            let mut out = String::new();
            celsius_text(MilliCelsius(milli), &mut out);
            let parsed: f64 = out.parse().unwrap();
            prop_assert_eq!((parsed * 1000.0).round() as i64, i64::from(milli));
            let trailing_zero = out.contains('.') && out.ends_with('0');
            prop_assert!(!out.ends_with('.') && !trailing_zero);
        }

        /// A plan never has more than `points` buckets between its start and `until`, starts at
        /// or before `since`, and tiles whole aggregates.
        #[test]
        fn a_plan_keeps_to_its_points(
            since in 0i64..4_000_000_000_000,
            length in 0i64..400 * 24 * HOUR_MS,
            points in 1usize..=MAX_HISTORY_POINTS,
        ) {
            let until = since + length;
            let plan = BucketPlan::new(since, until, points, i64::MIN);
            prop_assert!(plan.start <= since);
            prop_assert_eq!(plan.width % plan.resolution.width_ms(), 0);
            prop_assert_eq!(plan.start % plan.resolution.width_ms(), 0);
            let buckets = (until - plan.start) / plan.width + 1;
            prop_assert!(buckets <= points as i64, "{} buckets for {} points", buckets, points);
        }

        /// Downsampling equals summing each bucket's readings directly.
        #[test]
        fn downsampling_equals_a_direct_sum(
            readings in proptest::collection::vec((0i64..10 * HOUR_MS, -40_000i32..120_000), 0..300),
            points in 1usize..50,
        ) {
            let mut readings = readings;
            readings.sort();
            let until = 10 * HOUR_MS;
            let plan = BucketPlan::new(0, until, points, i64::MIN);
            let rows = rollup(
                readings.iter().map(|&(at, v)| ("d", "cpu", at, MilliCelsius(v))),
                plan.resolution.width_ms(),
            );
            let mut out = Vec::new();
            downsample(&plan, &sensor(), rows.into_iter().map(|((_, _, at), a)| (at, a)), &mut out);
            let mut direct: BTreeMap<i64, Aggregate> = BTreeMap::new();
            for &(at, v) in &readings {
                let bucket = at / plan.width * plan.width;
                let one = Aggregate::of(MilliCelsius(v));
                direct.entry(bucket).and_modify(|a| a.merge(&one)).or_insert(one);
            }
            let got: Vec<(i64, Aggregate)> = out.iter().map(|p| (p.at.0, p.aggregate)).collect();
            let expected: Vec<(i64, Aggregate)> = direct.into_iter().collect();
            prop_assert_eq!(got, expected);
        }
    }
}
