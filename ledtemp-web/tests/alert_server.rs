//! Alerts in the running server: a device that stops sending through a real broker (mosquitto,
//! else rumqttd) fires an offline alert, a local HTTP server standing in for Twilio receives
//! exactly one SMS, and a restart on the same database sends nothing again; on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ledtemp_test_support::twilio::{ACCOUNT_SID, BASIC_TOKEN, SmsRequest, TwilioStandIn};
use ledtemp_web::{Database, ServeArgs, ServeConfig};
use serde_json::Value;
use support::broker::TestBroker;
use support::*;

const OFFLINE_AFTER_SECS: u64 = 3;

/// The server's configuration on `database`: an offline rule on kitchen-pi that texts through
/// `twilio` (its files in `dir`).
fn config(
    dir: &Path,
    database: &Database,
    broker_port: u16,
    twilio: &TwilioStandIn,
) -> ServeConfig {
    let sms = twilio.notifier_toml("sms", &dir.join("twilio-token"));
    let file = dir.join("ledtemp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
            [[alert.rule]]
            id = "kitchen-offline"
            device = "{KITCHEN}"
            offline_after_secs = {OFFLINE_AFTER_SECS}
            notify = ["sms", "log"]
            {sms}
            [alert.notifier.log]
            kind = "log"
            "#
        ),
    )
    .unwrap();
    let mut config = resolve(ServeArgs { config: Some(file), ..serve_args(dir, broker_port) });
    config.pipeline.database = database.clone();
    config
}

async fn alerts(addr: SocketAddr) -> Value {
    let (status, alerts) = get_json(addr, "/api/alerts").await;
    assert_eq!(status, 200);
    alerts
}

async fn a_silent_device_texts_once_and_a_restart_does_not_text_again(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    let broker = TestBroker::start().await;
    eprintln!("broker: {:?} on port {}", broker.kind, broker.port);
    let twilio = TwilioStandIn::start().await;
    let codec = kitchen_codec();
    let sms_count = || twilio.count();

    let server = start_server(config(dir.path(), database, broker.port, &twilio), keys()).await;
    let addr = server.http_addr();
    let node = RawPublisher::connect(broker.port, "test-node").await;
    let (topic, frame) = seal(&codec, KITCHEN, 0, &temperature("cpu", 21_000));
    node.publish(&topic, &frame).await;
    eventually("the frame accepted", || async move {
        (get_json(addr, "/api/stats").await.1["accepted"] == 1).then_some(())
    })
    .await;

    // The node goes quiet: after OFFLINE_AFTER_SECS the alert fires and one SMS goes out.
    let fired = eventually("the offline alert firing", || async move {
        let alerts = alerts(addr).await;
        (alerts["active"][0]["state"] == "firing").then_some(alerts)
    })
    .await;
    assert_eq!(fired["active"][0]["key"]["rule"], "kitchen-offline");
    assert_eq!(fired["active"][0]["key"]["device"], KITCHEN);
    eventually("one SMS", || async { (sms_count() == 1).then_some(()) }).await;
    let SmsRequest { path, authorization, body } = twilio.requests()[0].clone();
    assert_eq!(path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"));
    assert_eq!(authorization, format!("Basic {BASIC_TOKEN}"));
    assert!(body.contains("To=%2B14155550100"), "{body}");
    assert!(body.contains("From=%2B15005550006"), "{body}");
    assert!(body.contains("offline"), "{body}");

    let sent = r#"ledtemp_alert_deliveries_sent_total{notifier="sms",kind="twilio"} 1"#;
    eventually("the SMS counted in /metrics", || async move {
        http_get(addr, "/metrics").await.1.contains(sent).then_some(())
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("ledtemp_alerts_fired_total 1"), "{metrics}");
    let notifiers = alerts(addr).await["notifiers"].clone();
    let sms = notifiers.as_array().unwrap().iter().find(|n| n["name"] == "sms").unwrap();
    assert_eq!((sms["kind"].as_str(), sms["sent"].as_u64()), (Some("twilio"), Some(1)));
    assert_eq!(sms["last_error"], Value::Null);
    server.shutdown().await.unwrap();

    // The same database after a restart: still firing, and nothing sent again, even after
    // longer than the rule's silence.
    let server = start_server(config(dir.path(), database, broker.port, &twilio), keys()).await;
    let addr = server.http_addr();
    let mut events = EventStream::open(addr).await;
    let restored = alerts(addr).await;
    assert_eq!(restored["active"][0]["state"], "firing", "{restored}");
    assert_eq!(restored["active"][0]["id"], fired["active"][0]["id"]);
    tokio::time::sleep(Duration::from_secs(OFFLINE_AFTER_SECS + 2)).await;
    assert_eq!(sms_count(), 1, "a restart sent the alert again");
    assert_eq!(alerts(addr).await["active"][0]["state"], "firing");

    // The node comes back: resolved, announced on the event stream, and texted once.
    let (topic, frame) = seal(&codec, KITCHEN, 1, &temperature("cpu", 21_500));
    node.publish(&topic, &frame).await;
    events.wait_for("event: alert").await;
    let resolved = eventually("the alert resolved", || async move {
        let alerts = alerts(addr).await;
        alerts["active"].as_array().unwrap().is_empty().then_some(alerts)
    })
    .await;
    assert_eq!(resolved["recent"][0]["state"], "resolved", "{resolved}");
    eventually("the resolution SMS", || async { (sms_count() == 2).then_some(()) }).await;
    let body = twilio.requests()[1].body.clone();
    assert!(body.contains("RESOLVED"), "{body}");
    server.shutdown().await.unwrap();
    assert_eq!(sms_count(), 2);
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_device_texts_once_and_a_restart_does_not_text_again
);

/// Two servers of a shared subscription group on one PostgreSQL database, one alert rule: the
/// device goes silent and one SMS goes out (only the server holding the leader lock alerts);
/// the leader stops without a word while the alert is active, the other takes the alerts over
/// from the database within seconds, sends nothing again, and texts the resolution once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_texts_once_and_the_survivor_of_its_leader_texts_the_resolution_once() {
    let Some(postgres) = TestDatabase::create() else { return };
    let database = postgres.database();
    let broker = TestBroker::start().await;
    let twilio = TwilioStandIn::start().await;
    let sms_count = || twilio.count();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut servers = Vec::new();
    for (dir, id) in dirs.iter().zip(["web-a", "web-b"]) {
        let mut config = config(dir.path(), &database, broker.port, &twilio);
        config.mqtt.shared_group = Some("web".into());
        config.mqtt.client_id = id.into();
        servers.push(Some(start_server(config, keys()).await));
    }
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.http_addr()).collect();
    let node = RawPublisher::connect(broker.port, "test-node").await;
    let codec = kitchen_codec();
    let (topic, frame) = seal(&codec, KITCHEN, 0, &temperature("cpu", 21_000));
    node.publish(&topic, &frame).await;

    // Silent: one server fires, one SMS, and nothing more while both run.
    let leader = eventually("the offline alert firing on one server", || {
        let addrs = addrs.clone();
        async move {
            for (index, addr) in addrs.into_iter().enumerate() {
                if alerts(addr).await["active"][0]["state"] == "firing" {
                    return Some(index);
                }
            }
            None
        }
    })
    .await;
    eventually("one SMS", || async { (sms_count() == 1).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(OFFLINE_AFTER_SECS + 1)).await;
    assert_eq!(sms_count(), 1, "both servers texted");

    // The leader goes away without shutting down; the survivor takes over with the alert firing.
    drop(servers[leader].take());
    let survivor = addrs[1 - leader];
    eventually("the survivor showing the alert it took over", || async move {
        (alerts(survivor).await["active"][0]["state"] == "firing").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(OFFLINE_AFTER_SECS + 1)).await;
    assert_eq!(sms_count(), 1, "the survivor texted the alert again");

    // The node comes back: resolved once, by the survivor.
    let (topic, frame) = seal(&codec, KITCHEN, 1, &temperature("cpu", 21_500));
    node.publish(&topic, &frame).await;
    eventually("the resolution SMS", || async { (sms_count() == 2).then_some(()) }).await;
    assert!(twilio.requests()[1].body.contains("RESOLVED"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sms_count(), 2);
    for server in servers.into_iter().flatten() {
        server.shutdown().await.unwrap();
    }
}
