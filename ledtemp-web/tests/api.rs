//! The HTTP API through the router (`tower::ServiceExt::oneshot`), over a pipeline on a real
//! SQLite file, and on PostgreSQL for the tests that store and read back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ledtemp_web::{AppState, Ingest, app};
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

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

async fn get_json(state: &AppState, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = get(state, uri).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}")))
}

fn feed(ingest: &mut Ingest) {
    let kitchen = kitchen_codec();
    for (sequence, message) in [
        (0, online(&[("red", false), ("green", true)])),
        (2, temperature("cpu", 21_375)),
        (3, led("red", true)),
        (4, temperature("cpu", 21_500)),
        (5, temperature("room", -1_250)),
    ] {
        let (topic, frame) = seal(&kitchen, KITCHEN, sequence, &message);
        ingest.handle(incoming(&topic, &frame)).unwrap();
    }
}

fn is_rfc3339(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok())
}

async fn devices_lists_latest_led_and_temperature_per_device(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    feed(&mut ingest);
    let (status, devices) = get_json(&state, "/api/devices").await;
    assert_eq!(status, StatusCode::OK);
    let devices = devices.as_array().unwrap();
    // Both keyring devices, sorted; garage never reported.
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["id"], GARAGE);
    assert_eq!(devices[0]["online"], false);
    assert_eq!(devices[0]["last_seen"], Value::Null);
    let kitchen = &devices[1];
    assert_eq!(kitchen["id"], KITCHEN);
    assert_eq!(kitchen["online"], true);
    assert!(is_rfc3339(&kitchen["last_seen"]));
    let leds: Vec<(String, bool)> = kitchen["leds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert!(is_rfc3339(&l["at"]));
            (l["led"].as_str().unwrap().to_owned(), l["on"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(leds, [("green".to_owned(), true), ("red".to_owned(), true)]);
    let temperatures = kitchen["temperatures"].as_array().unwrap();
    assert_eq!(temperatures.len(), 2);
    assert_eq!(temperatures[0]["sensor"], "cpu");
    assert_eq!(temperatures[0]["celsius"], json!(21.5));
    assert_eq!(temperatures[1]["sensor"], "room");
    assert_eq!(temperatures[1]["celsius"], json!(-1.25));
    assert!(is_rfc3339(&temperatures[0]["at"]));
}
on_both_backends!(#[tokio::test] async fn devices_lists_latest_led_and_temperature_per_device);

async fn temperature_history_defaults_to_the_last_hour_and_filters(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    feed(&mut ingest);
    // A reading from two hours ago: only in an explicit range.
    let (topic, frame) = seal(&kitchen_codec(), KITCHEN, 6, &temperature("cpu", 10_000));
    let mut old = incoming(&topic, &frame);
    old.received = ledtemp_web::UnixMillis(now_ms() - 2 * 3600 * 1000);
    ingest.handle(old).unwrap();

    let (status, body) = get_json(&state, "/api/devices/kitchen-pi/temperature").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["device"], KITCHEN);
    let points = body["points"].as_array().unwrap();
    let values: Vec<f64> = points.iter().map(|p| p["celsius"].as_f64().unwrap()).collect();
    assert_eq!(values, [21.375, 21.5, -1.25]);
    assert!(points.iter().all(|p| is_rfc3339(&p["at"]) && p["sensor"].is_string()));

    let (_, body) = get_json(&state, "/api/devices/kitchen-pi/temperature?sensor=cpu").await;
    assert_eq!(body["points"].as_array().unwrap().len(), 2);
    let since = jiff::Timestamp::from_millisecond(now_ms() - 3 * 3600 * 1000).unwrap();
    let (_, body) =
        get_json(&state, &format!("/api/devices/kitchen-pi/temperature?since={since}&sensor=cpu"))
            .await;
    let values: Vec<f64> =
        body["points"].as_array().unwrap().iter().map(|p| p["celsius"].as_f64().unwrap()).collect();
    assert_eq!(values, [10.0, 21.375, 21.5]);
    // A keyring device without readings: an empty list.
    let (status, body) = get_json(&state, "/api/devices/garage/temperature").await;
    assert_eq!((status, body["points"].as_array().unwrap().len()), (StatusCode::OK, 0));
}
on_both_backends!(
    #[tokio::test]
    async fn temperature_history_defaults_to_the_last_hour_and_filters
);

#[tokio::test]
async fn bad_requests_get_generic_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, state) = pipeline(dir.path());
    for (uri, expected) in [
        ("/api/devices/stranger/temperature", StatusCode::NOT_FOUND),
        ("/api/devices/%3Cscript%3E/temperature", StatusCode::NOT_FOUND),
        ("/api/devices/kitchen-pi/temperature?since=yesterday", StatusCode::BAD_REQUEST),
        ("/api/devices/kitchen-pi/temperature?until=2020-13-01T00:00:00Z", StatusCode::BAD_REQUEST),
        (
            "/api/devices/kitchen-pi/temperature?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/devices/kitchen-pi/temperature?sensor=a/b", StatusCode::BAD_REQUEST),
        ("/no/such/route", StatusCode::NOT_FOUND),
    ] {
        let (status, headers, body) = get(&state, uri).await;
        assert_eq!(status, expected, "{uri}");
        assert!(
            body == r#"{"error":"not found"}"# || body == r#"{"error":"bad request"}"#,
            "{body}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
}

async fn stats_health_and_metrics_report_counters_and_link_state(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    feed(&mut ingest);
    let (topic, frame) = seal(&kitchen_codec(), KITCHEN, 2, &temperature("cpu", 1));
    ingest.handle(incoming(&topic, &frame)).unwrap_err();
    ingest.handle(incoming("ledtemp/nobody/status", &frame)).unwrap_err();

    let (status, stats) = get_json(&state, "/api/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats,
        json!({
            "accepted": 5,
            "rejected": {"unknown_device": 1, "bad_tag": 0, "replay": 1, "malformed": 0, "oversize": 0, "revoked": 0, "limit": 0, "stale_will": 0, "redelivered": 0},
            "broker_connected": false,
            "store_ok": true,
            "sse_clients": 0,
            "insecure_plaintext": false
        })
    );
    let (status, health) = get_json(&state, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["broker"], "disconnected");
    state.live.stats.set_broker_connected(true);
    let (status, health) = get_json(&state, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health, json!({"status": "ok", "broker": "connected", "store": "ok"}));

    let (status, headers, metrics) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    for line in [
        "ledtemp_frames_accepted_total 5",
        "ledtemp_frames_rejected_total{reason=\"replay\"} 1",
        "ledtemp_frames_rejected_total{reason=\"unknown_device\"} 1",
        "ledtemp_frames_rejected_total{reason=\"bad_tag\"} 0",
        "ledtemp_frames_rejected_total{reason=\"malformed\"} 0",
        "ledtemp_frames_rejected_total{reason=\"oversize\"} 0",
        "ledtemp_frames_rejected_total{reason=\"revoked\"} 0",
        "ledtemp_frames_rejected_total{reason=\"limit\"} 0",
        "ledtemp_sse_clients 0",
        "ledtemp_broker_connected 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
}
on_both_backends!(#[tokio::test] async fn stats_health_and_metrics_report_counters_and_link_state);

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, state) = pipeline(dir.path());
    for uri in ["/api/devices", "/api/stats", "/healthz", "/metrics", "/nothing", "/"] {
        let (_, headers, _) = get(&state, uri).await;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{uri}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{uri}");
    }
}

#[tokio::test]
async fn the_event_stream_counts_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, state) = pipeline(dir.path());
    let response = app(state.clone())
        .oneshot(Request::builder().uri("/api/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(state.live.stats.snapshot().sse_clients, 1);
    drop(response);
    assert_eq!(state.live.stats.snapshot().sse_clients, 0);
}

/// A database that refuses commits (a real failure: a table renamed away) is visible, not
/// silent: `/healthz` 503 naming the store, `store_ok` false in `/api/stats`, the gauge and the
/// counter in `/metrics`; a rejected frame is still only a rejection; once the database works
/// again the next frame is stored and everything says so.
async fn a_failing_database_is_reported_and_recovery_is_seen(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    state.live.stats.set_broker_connected(true);
    database.execute("ALTER TABLE temperatures RENAME TO temperatures_away");
    let (topic, frame) = seal(&kitchen_codec(), KITCHEN, 1, &temperature("cpu", 21_000));
    let error = ingest.handle(incoming(&topic, &frame)).unwrap_err();
    assert!(error.reject_reason().is_none(), "a database failure, not a rejection: {error}");

    let (status, health) = get_json(&state, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health, json!({"status": "unavailable", "broker": "connected", "store": "failing"}));
    let (_, stats) = get_json(&state, "/api/stats").await;
    assert_eq!((stats["store_ok"].clone(), stats["accepted"].clone()), (json!(false), json!(0)));
    let (_, _, metrics) = get(&state, "/metrics").await;
    assert!(metrics.contains("ledtemp_store_ok 0\n"), "{metrics}");
    assert!(metrics.contains("ledtemp_store_errors_total 1\n"), "{metrics}");

    database.execute("ALTER TABLE temperatures_away RENAME TO temperatures");
    // The frame that was dropped was never stored, so it is not a replay: it is taken now.
    ingest.handle(incoming(&topic, &frame)).unwrap();
    let (status, health) = get_json(&state, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let (_, stats) = get_json(&state, "/api/stats").await;
    assert_eq!((stats["store_ok"].clone(), stats["accepted"].clone()), (json!(true), json!(1)));
}
on_both_backends!(#[tokio::test] async fn a_failing_database_is_reported_and_recovery_is_seen);
