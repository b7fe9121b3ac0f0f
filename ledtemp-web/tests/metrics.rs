//! `/metrics` as Prometheus reads it: a real server on a real broker (Mosquitto, else rumqttd),
//! sealed frames and forgeries published over MQTT, the exposition scraped over HTTP and read with
//! a strict Prometheus text-format parser (`openmetrics-parser`), never split by hand. The device
//! gauges show exactly the verified data, every family is whole and documented, and the Grafana
//! dashboard in `docs/grafana/` asks only for metrics the server exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use ledtemp_core::{Algorithm, AnyCodec, KeyId};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::Value;
use support::broker::TestBroker;
use support::*;

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

/// The gauges the live device cache adds, with their label names.
const DEVICE_GAUGES: [(&str, &[&str]); 5] = [
    ("ledtemp_temperature_celsius", &["device", "sensor"]),
    ("ledtemp_temperature_timestamp_seconds", &["device", "sensor"]),
    ("ledtemp_led_on", &["device", "led"]),
    ("ledtemp_device_last_seen_timestamp_seconds", &["device"]),
    ("ledtemp_device_online", &["device"]),
];

/// `GET /metrics`, parsed; panics with the exposition when the parser refuses it (a family split
/// in two, a sample before its HELP, a malformed label, a repeated label set...).
async fn scrape(addr: SocketAddr) -> Exposition {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body).unwrap_or_else(|e| panic!("/metrics does not parse: {e:?}\n{body}"))
}

/// Every family has a HELP text and a declared TYPE: `# TYPE .. counter` for `_total` names,
/// `gauge` for the rest.
fn assert_documented(exposition: &Exposition) {
    assert!(!exposition.families.is_empty());
    for (name, family) in &exposition.families {
        assert!(!family.help.trim().is_empty(), "{name} has no HELP");
        let expected =
            if name.ends_with("_total") { PrometheusType::Counter } else { PrometheusType::Gauge };
        assert_eq!(family.family_type, expected, "{name}: TYPE");
    }
}

/// The samples of the gauge family `name`, keyed by their label values in the order of
/// `labels`, which must be exactly the label names of its samples.
fn gauge(exposition: &Exposition, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let family = exposition.families.get(name).unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(family.family_type, PrometheusType::Gauge, "{name}");
    // The parser learns a family's label names from its samples.
    if family.iter_samples().next().is_some() {
        let mut names = family.get_label_names().to_vec();
        names.sort();
        let mut expected: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        expected.sort();
        assert_eq!(names, expected, "{name}: label names");
    }
    family
        .iter_samples()
        .map(|sample| {
            let set = sample.get_labelset().unwrap();
            let key =
                labels.iter().map(|label| set.get_label_value(label).unwrap().to_owned()).collect();
            let PrometheusValue::Gauge(value) = &sample.value else {
                panic!("{name}: {:?} is not a gauge value", sample.value)
            };
            (key, value.as_f64())
        })
        .collect()
}

/// `values` keyed by label values.
fn samples<const N: usize>(values: &[([&str; N], f64)]) -> BTreeMap<Vec<String>, f64> {
    values
        .iter()
        .map(|(labels, v)| (labels.iter().map(|l| (*l).to_owned()).collect(), *v))
        .collect()
}

fn seconds(at: ledtemp_web::UnixMillis) -> f64 {
    at.as_millis() as f64 / 1000.0
}

#[tokio::test]
async fn device_gauges_show_exactly_the_verified_readings_and_leds() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(serve_config(dir.path(), broker.port), keys()).await;
    let addr = server.http_addr();

    // Before any frame: both keyring devices are listed offline, nothing else about them.
    let empty = scrape(addr).await;
    assert_documented(&empty);
    assert_eq!(
        gauge(&empty, "ledtemp_device_online", &["device"]),
        samples(&[([GARAGE], 0.0), ([KITCHEN], 0.0)]),
    );
    for (name, labels) in &DEVICE_GAUGES[..4] {
        assert!(gauge(&empty, name, labels).is_empty(), "{name}");
    }

    let started = now_ms();
    let node = RawPublisher::connect(broker.port, "test-node").await;
    let codec = kitchen_codec();
    for (sequence, message) in [
        (0, online(&[("red", false), ("green", false)])),
        (2, temperature("cpu", 21_375)),
        (3, led("red", true)),
        (4, temperature("room", -1_250)),
    ] {
        let (topic, frame) = seal(&codec, KITCHEN, sequence, &message);
        node.publish(&topic, &frame).await;
    }
    // The attacker has no key: a hotter cpu, a new sensor and a lit LED, sealed with a guess.
    let attacker = RawPublisher::connect(broker.port, "test-attacker").await;
    let forger = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0x66; 16]).unwrap();
    for (sequence, message) in [
        (50, temperature("cpu", 99_000)),
        (51, temperature("gpu", 55_000)),
        (52, led("green", true)),
    ] {
        let (topic, frame) = seal(&forger, KITCHEN, sequence, &message);
        attacker.publish(&topic, &frame).await;
    }
    eventually("4 frames accepted and 3 forgeries refused", || async move {
        let stats = get_json(addr, "/api/stats").await.1;
        (stats["accepted"] == 4 && stats["rejected"]["bad_tag"] == 3).then_some(())
    })
    .await;

    let exposition = scrape(addr).await;
    let scraped = now_ms();
    assert_documented(&exposition);
    // What the server verified and keeps: the times each value arrived.
    let kitchen = server.live().device(&device(KITCHEN)).unwrap();
    let received = |sensor_name: &str| seconds(kitchen.temperatures[&sensor(sensor_name)].at);
    let last_seen = seconds(kitchen.last_seen.unwrap());
    for at in [received("cpu"), received("room"), last_seen] {
        let at_ms = (at * 1000.0).round() as i64;
        assert!((started..=scraped).contains(&at_ms), "{at} not between {started} and {scraped}");
    }

    assert_eq!(
        gauge(&exposition, "ledtemp_temperature_celsius", &["device", "sensor"]),
        samples(&[([KITCHEN, "cpu"], 21.375), ([KITCHEN, "room"], -1.25)]),
    );
    assert_eq!(
        gauge(&exposition, "ledtemp_temperature_timestamp_seconds", &["device", "sensor"]),
        samples(&[([KITCHEN, "cpu"], received("cpu")), ([KITCHEN, "room"], received("room"))]),
    );
    assert_eq!(
        gauge(&exposition, "ledtemp_led_on", &["device", "led"]),
        samples(&[([KITCHEN, "green"], 0.0), ([KITCHEN, "red"], 1.0)]),
    );
    assert_eq!(
        gauge(&exposition, "ledtemp_device_last_seen_timestamp_seconds", &["device"]),
        samples(&[([KITCHEN], last_seen)]),
    );
    assert_eq!(
        gauge(&exposition, "ledtemp_device_online", &["device"]),
        samples(&[([GARAGE], 0.0), ([KITCHEN], 1.0)]),
    );
    // Nothing the forger sent is anywhere in the exposition (the values above are exact).
    let (_, body) = http_get(addr, "/metrics").await;
    assert!(!body.contains("gpu"), "{body}");
    server.shutdown().await.unwrap();
}

/// The metric names a PromQL expression reads: every identifier starting `ledtemp_` (all of
/// ledtemp's metrics do; functions, labels and Grafana's `$variables` do not).
fn metric_names(expr: &str) -> BTreeSet<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("ledtemp_"))
        .collect()
}

/// The PromQL of every panel target and query variable of a Grafana dashboard, with where it is.
fn promql(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: no expr"));
            found.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let name = variable["name"].as_str().unwrap();
            let query = variable["query"]["query"].as_str().unwrap();
            assert_eq!(variable["definition"], query, "${name}");
            found.push((format!("variable ${name}"), query.to_owned()));
        }
    }
    found
}

#[tokio::test]
async fn the_grafana_dashboard_reads_only_metrics_the_server_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/ledtemp.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // As Grafana exports a dashboard for sharing: the data source is an input chosen on import,
    // and every panel, target and query variable uses it.
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let data_source = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        assert_eq!(panel["datasource"], data_source, "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"], data_source, "{}", panel["title"]);
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let device = variables.iter().find(|v| v["name"] == "device").expect("a $device variable");
    assert_eq!(device["datasource"], data_source);
    assert_eq!(device["query"]["query"], "label_values(ledtemp_temperature_celsius, device)");
    let types: BTreeSet<&str> = panels.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["stat", "state-timeline", "timeseries"]));

    // The names a running server exports, read from its /metrics.
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(serve_config(dir.path(), broker.port), keys()).await;
    let exposition = scrape(server.http_addr()).await;
    server.shutdown().await.unwrap();
    let exported: BTreeSet<&str> = exposition.families.keys().map(String::as_str).collect();

    let mut used = BTreeSet::new();
    for (place, expr) in promql(&dashboard) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place} reads no ledtemp metric: {expr}");
        for name in names {
            assert!(exported.contains(name), "{place} reads {name}, which /metrics lacks: {expr}");
            used.insert(name.to_owned());
        }
    }
    for name in DEVICE_GAUGES.iter().map(|(name, _)| *name).chain([
        "ledtemp_frames_accepted_total",
        "ledtemp_frames_rejected_total",
        "ledtemp_commands_total",
    ]) {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}
