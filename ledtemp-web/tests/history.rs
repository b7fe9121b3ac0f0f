//! History over ranges (issue 16), on SQLite and on PostgreSQL: the chart API downsamples with
//! min/mean/max buckets that keep spikes and returns raw readings below the threshold, per
//! sensor; the long-term aggregates equal a recomputation from the raw rows, count each reading
//! once (a failed and retried batch, a replayed frame), survive the pruning of the raw rows and a
//! restart, and are backfilled by the migration; the LED timeline; the CSV export, exact and
//! streamed; bad parameters and unknown devices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ledtemp_core::{Message, MilliCelsius};
use ledtemp_web::{
    Aggregate, AppState, HOUR_MS, HistoryQuery, IncomingFrame, Ingest, MINUTE_MS, RangeQuery,
    TemperaturePoint, UnixMillis, app,
};
use serde_json::Value;
use support::*;
use tower::ServiceExt;

/// A start two days back, on an hour: the readings of the tests are received from here on.
fn base() -> i64 {
    let two_days_ago = now_ms() - 48 * HOUR_MS;
    two_days_ago - two_days_ago % HOUR_MS
}

fn rfc3339(ms: i64) -> String {
    UnixMillis(ms).to_rfc3339()
}

/// kitchen-pi's `message` with `sequence`, received at `at`.
fn frame(sequence: u64, message: &Message, at: i64) -> IncomingFrame {
    let (topic, payload) = seal(&kitchen_codec(), KITCHEN, sequence, message);
    IncomingFrame { received: UnixMillis(at), ..incoming(&topic, &payload) }
}

/// Feeds `frames` in batches of 500 (as the worker commits them); all must be accepted.
fn feed(ingest: &mut Ingest, frames: Vec<IncomingFrame>) {
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() {
        let batch: Vec<IncomingFrame> = frames.by_ref().take(500).collect();
        for result in ingest.handle_batch(batch) {
            result.unwrap();
        }
    }
}

async fn get(state: &AppState, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app(state.clone())
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_json(state: &AppState, uri: &str) -> Value {
    let (status, _, body) = get(state, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The points of one sensor in a chart answer.
fn points_of<'a>(body: &'a Value, sensor: &str) -> Vec<&'a Value> {
    body["points"].as_array().unwrap().iter().filter(|p| p["sensor"] == sensor).collect()
}

/// Every raw reading of kitchen-pi, oldest first.
fn raw(state: &AppState) -> Vec<TemperaturePoint> {
    let query = HistoryQuery {
        device: device(KITCHEN),
        sensor: None,
        since: UnixMillis(0),
        until: UnixMillis(i64::MAX),
        limit: usize::MAX,
    };
    state.history.temperatures(&query).unwrap()
}

/// The buckets of `width` of `points` of `sensor`, computed directly.
fn recompute(points: &[TemperaturePoint], sensor: &str, width: i64) -> BTreeMap<i64, Aggregate> {
    let mut buckets: BTreeMap<i64, Aggregate> = BTreeMap::new();
    for point in points.iter().filter(|p| p.sensor.as_str() == sensor) {
        let one = Aggregate::of(point.temperature);
        let bucket = point.at.0 - point.at.0.rem_euclid(width);
        buckets.entry(bucket).and_modify(|a| a.merge(&one)).or_insert(one);
    }
    buckets
}

/// The chart of kitchen-pi's `sensor` over `[since, until]` in at most `points` points, through
/// the history store, as buckets.
fn chart(
    state: &AppState,
    sensor_name: &str,
    since: i64,
    until: i64,
    points: usize,
) -> (i64, BTreeMap<i64, Aggregate>) {
    let query = RangeQuery {
        device: device(KITCHEN),
        sensor: Some(sensor(sensor_name)),
        since: UnixMillis(since),
        until: UnixMillis(until),
        points,
    };
    let history = state.history.temperature_history(&query).unwrap();
    (history.bucket_ms, history.points.iter().map(|p| (p.at.0, p.aggregate)).collect())
}

async fn a_spike_survives_downsampling_and_few_readings_stay_raw(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let start = base();
    // cpu: every 5 s for 3 hours at 20 °C, one reading of 99 °C; room: 10 readings.
    let mut frames = Vec::new();
    let mut sequence = 1;
    let spike_at = start + 100 * MINUTE_MS + 35_000;
    for i in 0..(3 * 720) {
        let at = start + i * 5_000;
        let value = if at == spike_at { 99_000 } else { 20_000 };
        frames.push(frame(sequence, &temperature("cpu", value), at));
        sequence += 1;
        if i % 216 == 0 {
            frames.push(frame(sequence, &temperature("room", 18_000 + i as i32), at + 1));
            sequence += 1;
        }
    }
    feed(&mut ingest, frames);

    let (since, until) = (rfc3339(start), rfc3339(start + 3 * HOUR_MS - 1));
    let body = get_json(
        &state,
        &format!("/api/devices/kitchen-pi/temperature?since={since}&until={until}&points=100"),
    )
    .await;
    // 3 h over 100 points is 108 s: two-minute buckets.
    assert_eq!(body["bucket_ms"], 2 * MINUTE_MS);
    assert_eq!((body["device"].as_str(), body["since"].as_str()), (Some(KITCHEN), Some(&*since)));
    let cpu = points_of(&body, "cpu");
    assert_eq!(cpu.len(), 90);
    let spiked: Vec<&&Value> = cpu.iter().filter(|p| p["max"] == 99.0).collect();
    assert_eq!(spiked.len(), 1, "the spike is in exactly one bucket");
    assert_eq!(spiked[0]["at"], rfc3339(start + 100 * MINUTE_MS));
    assert_eq!(spiked[0]["min"], 20.0);
    assert_eq!(spiked[0]["count"], 24);
    // The mean of 23 readings of 20 and one of 99, to a milli-degree.
    assert_eq!(spiked[0]["celsius"], 23.292);
    assert_eq!(cpu.iter().map(|p| p["count"].as_i64().unwrap()).sum::<i64>(), 2160);
    // room has 10 readings: raw, each its own point.
    let room = points_of(&body, "room");
    assert_eq!(room.len(), 10);
    assert!(
        room.iter().all(|p| p["count"] == 1 && p["min"] == p["max"] && p["min"] == p["celsius"])
    );
    assert_eq!(room[1]["celsius"], 18.216);
    // The points are oldest first.
    let times: Vec<i64> = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| UnixMillis::parse_rfc3339(p["at"].as_str().unwrap()).unwrap().0)
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));

    // One hour holds 720 cpu readings: below the default 1,000, raw.
    let until = rfc3339(start + HOUR_MS - 1);
    let body = get_json(
        &state,
        &format!("/api/devices/kitchen-pi/temperature?since={since}&until={until}&sensor=cpu"),
    )
    .await;
    assert_eq!(body["bucket_ms"], 0);
    let cpu = points_of(&body, "cpu");
    assert_eq!(cpu.len(), 720);
    assert!(cpu.iter().all(|p| p["count"] == 1));
    assert!(points_of(&body, "room").is_empty(), "sensor= keeps to one sensor");
    // 720 with points=720 is still raw; 719 is not.
    let (width, _) = chart(&state, "cpu", start, start + HOUR_MS - 1, 720);
    assert_eq!(width, 0);
    let (width, buckets) = chart(&state, "cpu", start, start + HOUR_MS - 1, 719);
    assert_eq!(width, MINUTE_MS);
    assert_eq!(buckets.len(), 60);
}
on_both_backends!(
    #[tokio::test]
    async fn a_spike_survives_downsampling_and_few_readings_stay_raw
);

fn aggregates_equal_the_raw_rows_and_count_each_reading_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let start = base();
    // Two sensors, irregular times and values over five hours, fed in batches that cross
    // minute and hour boundaries.
    let mut frames = Vec::new();
    for i in 0..3_000u64 {
        let at = start + (i as i64) * 6_007 % (5 * HOUR_MS);
        let value = ((i * 7_919) % 50_000) as i32 - 10_000;
        let name = if i % 3 == 0 { "room" } else { "cpu" };
        frames.push(frame(i + 1, &temperature(name, value), at));
    }
    let replayed = frames[10].clone();
    {
        let (mut ingest, state) = pipeline_on(database.database());
        // A batch whose commit fails writes nothing, aggregates included; its retry counts once.
        let failing: Vec<IncomingFrame> = frames[..200].to_vec();
        database.execute("ALTER TABLE temperature_hours RENAME TO temperature_hours_away");
        let results = ingest.handle_batch(failing.clone());
        assert!(results.iter().all(Result::is_err), "the commit must fail");
        database.execute("ALTER TABLE temperature_hours_away RENAME TO temperature_hours");
        assert!(raw(&state).is_empty());
        feed(&mut ingest, frames);
        // A replayed frame is refused and counts nothing.
        assert!(ingest.handle(replayed.clone()).is_err());
        let rows = raw(&state);
        assert_eq!(rows.len(), 3_000);
        for sensor_name in ["cpu", "room"] {
            for (width, points) in [(MINUTE_MS, 300), (HOUR_MS, 5)] {
                let (bucket_ms, got) =
                    chart(&state, sensor_name, start, start + 5 * HOUR_MS - 1, points);
                assert_eq!(bucket_ms, width);
                assert_eq!(got, recompute(&rows, sensor_name, width), "{sensor_name} by {width}");
            }
        }
        // The retention prunes every raw row: the chart comes from the aggregates, unchanged.
        let before = chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 300);
        let hourly = chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 5);
        assert_eq!(ingest.prune(UnixMillis(start + 6 * HOUR_MS)).unwrap(), 3_000);
        assert!(raw(&state).is_empty());
        assert_eq!(chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 300), before);
        // Few enough for raw, but the raw rows are gone: still the aggregates.
        let (width, minutes) = chart(&state, "cpu", start, start + 10 * MINUTE_MS - 1, 1_000);
        assert_eq!((width, minutes.len()), (MINUTE_MS, 10));
        drop(ingest);
        // After a restart, as before; new readings add to them once.
        let (mut ingest, state) = pipeline_on(database.database());
        assert_eq!(chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 300), before);
        assert_eq!(chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 5), hourly);
        assert!(ingest.handle(replayed).is_err());
        let late = frame(5_000, &temperature("cpu", 90_000), start + 30 * MINUTE_MS + 1);
        ingest.handle(late).unwrap();
        let (_, after) = chart(&state, "cpu", start, start + 5 * HOUR_MS - 1, 5);
        let mut expected = hourly.1.clone();
        expected.get_mut(&start).unwrap().merge(&Aggregate::of(MilliCelsius(90_000)));
        assert_eq!(after, expected);
    }
}
on_both_backends!(fn aggregates_equal_the_raw_rows_and_count_each_reading_once);

fn the_migration_backfills_the_aggregates_of_an_older_database(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let start = base();
    let frames: Vec<IncomingFrame> = (0..500u64)
        .map(|i| frame(i + 1, &temperature("cpu", (i as i32) * 13), start + (i as i64) * 29_000))
        .collect();
    let (expected, rows) = {
        let (mut ingest, state) = pipeline_on(database.database());
        feed(&mut ingest, frames);
        let rows = raw(&state);
        (chart(&state, "cpu", start, start + 5 * HOUR_MS, 100), rows)
    };
    // What an older build left: the readings, no aggregates and none of the new tables.
    let undo = "DROP TABLE temperature_minutes; DROP TABLE temperature_hours;
                DROP TABLE history_bounds; DROP INDEX temperatures_by_sensor_time;
                DROP INDEX led_changes_by_device_time;";
    match database.postgres() {
        Some(_) => database.execute(&format!("{undo} UPDATE schema_version SET version = 2;")),
        None => database.execute(&format!("{undo} PRAGMA user_version = 3;")),
    }
    let (_ingest, state) = pipeline_on(database.database());
    let got = chart(&state, "cpu", start, start + 5 * HOUR_MS, 100);
    assert_eq!(got, expected);
    assert_eq!(got.1, recompute(&rows, "cpu", got.0));
    assert_eq!(
        chart(&state, "cpu", start, start + 5 * HOUR_MS, 6).1,
        recompute(&rows, "cpu", HOUR_MS)
    );
}
on_both_backends!(fn the_migration_backfills_the_aggregates_of_an_older_database);

async fn the_led_timeline_has_the_state_before_and_the_changes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let start = base();
    feed(
        &mut ingest,
        vec![
            frame(1, &online(&[("red", false), ("green", false)]), start),
            frame(2, &led("red", true), start + 10 * MINUTE_MS),
            frame(3, &led("green", true), start + 20 * MINUTE_MS),
            frame(4, &led("red", false), start + 40 * MINUTE_MS),
        ],
    );
    let uri = |since: i64, until: i64| {
        format!("/api/devices/kitchen-pi/leds?since={}&until={}", rfc3339(since), rfc3339(until))
    };
    let body = get_json(&state, &uri(start + 30 * MINUTE_MS, start + HOUR_MS)).await;
    assert_eq!(body["device"], KITCHEN);
    assert_eq!(
        body["initial"],
        serde_json::json!([
            {"led": "green", "on": true, "at": rfc3339(start + 20 * MINUTE_MS)},
            {"led": "red", "on": true, "at": rfc3339(start + 10 * MINUTE_MS)},
        ])
    );
    assert_eq!(
        body["changes"],
        serde_json::json!([{"led": "red", "on": false, "at": rfc3339(start + 40 * MINUTE_MS)}])
    );
    assert_eq!(body["truncated"], false);
    // Before any stored change, nothing is known (the online status's states were replaced).
    let body = get_json(&state, &uri(start + MINUTE_MS, start + HOUR_MS)).await;
    assert_eq!(body["initial"], serde_json::json!([]));
    assert_eq!(body["changes"].as_array().unwrap().len(), 3);
    // After the last change: the stored current state.
    let body = get_json(&state, &uri(start + 2 * HOUR_MS, start + 3 * HOUR_MS)).await;
    assert_eq!(body["initial"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["initial"][1],
        serde_json::json!({"led": "red", "on": false, "at": rfc3339(start + 40 * MINUTE_MS)})
    );
    assert_eq!(body["changes"], serde_json::json!([]));

    // More changes than an answer holds: the oldest, and `truncated`.
    let many: Vec<IncomingFrame> = (0..10_001u64)
        .map(|i| frame(100 + i, &led("blue", i % 2 == 0), start + 2 * HOUR_MS + i as i64 * 100))
        .collect();
    feed(&mut ingest, many);
    let body = get_json(&state, &uri(start + 2 * HOUR_MS, start + 3 * HOUR_MS)).await;
    let changes = body["changes"].as_array().unwrap();
    assert_eq!((changes.len(), &body["truncated"]), (10_000, &Value::Bool(true)));
    assert_eq!(changes[0]["at"], rfc3339(start + 2 * HOUR_MS));
}
on_both_backends!(
    #[tokio::test]
    async fn the_led_timeline_has_the_state_before_and_the_changes
);

async fn the_csv_export_is_exact_and_streamed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let start = base();
    let values = [21_375, -1_250, 20_000, 5, 99_999];
    let mut frames: Vec<IncomingFrame> = (0..10_000u64)
        .map(|i| {
            let name = if i % 2 == 0 { "cpu" } else { "room" };
            frame(i + 1, &temperature(name, values[i as usize % 5]), start + i as i64 * 250)
        })
        .collect();
    frames.push(frame(20_000, &led("red", true), start + 1_000));
    frames.push(frame(20_001, &led("red", false), start + 61_500));
    feed(&mut ingest, frames);
    let (since, until) = (start, start + 10_000 * 250);

    let uri = format!(
        "/api/devices/kitchen-pi/temperature.csv?since={}&until={}",
        rfc3339(since),
        rfc3339(until)
    );
    let response = app(state.clone())
        .oneshot(Request::builder().uri(&uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let stamp = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).unwrap().strftime("%Y%m%dT%H%M%SZ").to_string()
    };
    assert_eq!(
        headers["content-disposition"],
        format!(
            "attachment; filename=\"kitchen-pi-temperature-{}-{}.csv\"",
            stamp(since),
            stamp(until)
        )
        .as_str()
    );
    assert!(headers.get("content-length").is_none(), "a stream has no length");
    // Chunk by chunk: the header, then a page at a time.
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        chunks.push(frame.unwrap().into_data().unwrap());
    }
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|chunk| chunk.len() < 300 * 1024), "a chunk is a page");
    let text: String = chunks.iter().map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
    let mut expected = String::from("at,sensor,celsius\n");
    for point in raw(&state) {
        let celsius = match point.temperature.0 {
            21_375 => "21.375",
            -1_250 => "-1.25",
            20_000 => "20",
            5 => "0.005",
            _ => "99.999",
        };
        expected.push_str(&format!(
            "{},{},{celsius}\n",
            point.at.to_rfc3339(),
            point.sensor.as_str()
        ));
    }
    assert_eq!(text.lines().count(), 10_001);
    assert_eq!(text, expected);
    assert!(text.starts_with(&format!("at,sensor,celsius\n{},cpu,21.375\n", rfc3339(start))));

    // One sensor, and a part of the range.
    let (_, _, text) = get(
        &state,
        &format!(
            "/api/devices/kitchen-pi/temperature.csv?since={}&until={}&sensor=room",
            rfc3339(start + 500),
            rfc3339(start + 1_000)
        ),
    )
    .await;
    assert_eq!(text, format!("at,sensor,celsius\n{},room,0.005\n", rfc3339(start + 750)));
    // LED changes.
    let (status, headers, text) = get(
        &state,
        &format!(
            "/api/devices/kitchen-pi/leds.csv?since={}&until={}",
            rfc3339(since),
            rfc3339(until)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-disposition"].to_str().unwrap().contains("kitchen-pi-leds-"));
    assert_eq!(
        text,
        format!(
            "at,led,on\n{},red,true\n{},red,false\n",
            rfc3339(start + 1_000),
            rfc3339(start + 61_500)
        )
    );
}
on_both_backends!(
    #[tokio::test]
    async fn the_csv_export_is_exact_and_streamed
);

/// Over a real HTTP connection the export arrives chunked (no length known up front).
#[tokio::test]
async fn the_export_arrives_chunked_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ingest, state) = pipeline(dir.path());
    let start = base();
    feed(
        &mut ingest,
        (0..9_000u64)
            .map(|i| frame(i + 1, &temperature("cpu", 20_000), start + i as i64 * 1_000))
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let path = format!(
        "/api/devices/kitchen-pi/temperature.csv?since={}&until={}",
        rfc3339(start),
        rfc3339(start + 9_000_000)
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    let head = response.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The chunks hold every line (a chunk's size line, then its data).
    let lines = response.matches(",cpu,20\n").count() + response.matches(",cpu,20\r\n").count();
    assert_eq!(lines, 9_000);
    server.abort();
}

#[tokio::test]
async fn bad_parameters_are_refused_and_unknown_devices_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, state) = pipeline(dir.path());
    for route in ["temperature", "temperature.csv", "leds", "leds.csv"] {
        for (query, expected) in [
            ("", StatusCode::OK),
            ("?since=yesterday", StatusCode::BAD_REQUEST),
            ("?until=2020-13-01T00:00:00Z", StatusCode::BAD_REQUEST),
            ("?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", StatusCode::BAD_REQUEST),
            ("?sensor=a/b", StatusCode::BAD_REQUEST),
            ("?points=0", StatusCode::BAD_REQUEST),
            ("?points=5001", StatusCode::BAD_REQUEST),
            ("?points=-1", StatusCode::BAD_REQUEST),
            ("?points=many", StatusCode::BAD_REQUEST),
            ("?points=5000", StatusCode::OK),
        ] {
            let uri = format!("/api/devices/garage/{route}{query}");
            let (status, _, body) = get(&state, &uri).await;
            assert_eq!(status, expected, "{uri}: {body}");
            if expected != StatusCode::OK {
                assert_eq!(body, r#"{"error":"bad request"}"#);
            }
        }
        for device_name in ["stranger", "%3Cscript%3E"] {
            let uri = format!("/api/devices/{device_name}/{route}");
            let (status, _, _) = get(&state, &uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        }
    }
    let body = get_json(&state, "/api/devices/garage/temperature").await;
    assert_eq!((&body["bucket_ms"], &body["points"]), (&Value::from(0), &Value::Array(vec![])));
}
