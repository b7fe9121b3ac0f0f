//! End to end: sealed frames published on a real broker (mosquitto, else rumqttd), received by
//! the server's MQTT subscriber, stored in a real SQLite file (and, for the tests about what is
//! stored, in PostgreSQL too) and shown over real HTTP.
//!
//! Each test starts its own broker on a free port and bounds every wait.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ledtemp_core::{Algorithm, AnyCodec, KeyId, MAX_FRAME_LEN};
use ledtemp_web::{RejectedCounts, Server};
use serde_json::Value;
use support::broker::{Subscriber, TestBroker};
use support::*;

async fn start_broker_server(dir: &std::path::Path, port: u16) -> Server {
    start_server(serve_config(dir, port), keys()).await
}

async fn start_server_on(database: &ledtemp_web::Database, port: u16) -> Server {
    start_server(serve_config_on(database, port), keys()).await
}

async fn wait_healthy(addr: SocketAddr, expected: u16) {
    eventually(&format!("/healthz {expected}"), || async move {
        (http_get(addr, "/healthz").await.0 == expected).then_some(())
    })
    .await;
}

async fn stats(addr: SocketAddr) -> Value {
    get_json(addr, "/api/stats").await.1
}

async fn wait_stats(addr: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let check = &check;
    eventually(what, || async move {
        let stats = stats(addr).await;
        check(&stats).then_some(stats)
    })
    .await
}

/// `frame` once per byte, with one bit of that byte flipped (a different bit each time).
fn bit_flips(frame: &[u8]) -> Vec<Vec<u8>> {
    (0..frame.len())
        .map(|index| {
            let mut flipped = frame.to_vec();
            flipped[index] ^= 1 << (index % 8);
            flipped
        })
        .collect()
}

/// `len` bytes from a xorshift generator seeded with `seed` (not 0): the same every run.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}

fn kitchen(devices: &Value) -> &Value {
    devices.as_array().unwrap().iter().find(|d| d["id"] == KITCHEN).unwrap()
}

async fn verified_frames_are_shown_and_attacks_are_counted_and_change_nothing(backend: Backend) {
    let broker = TestBroker::start().await;
    eprintln!("broker: {:?} on port {}", broker.kind, broker.port);
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    let server = start_server_on(database, broker.port).await;
    let addr = server.http_addr();
    let mut events = EventStream::open(addr).await;
    let node = RawPublisher::connect(broker.port, "test-node").await;
    let codec = kitchen_codec();

    let frames = [
        seal(&codec, KITCHEN, 0, &online(&[("red", false)])),
        seal(&codec, KITCHEN, 2, &temperature("cpu", 21_375)),
        seal(&codec, KITCHEN, 3, &led("red", true)),
    ];
    for (topic, frame) in &frames {
        node.publish(topic, frame).await;
    }
    wait_stats(addr, "3 accepted frames", |s| s["accepted"] == 3).await;
    let (_, devices) = get_json(addr, "/api/devices").await;
    let device = kitchen(&devices);
    assert_eq!(device["online"], true);
    assert_eq!(device["leds"][0]["led"], "red");
    assert_eq!(device["leds"][0]["on"], true);
    assert_eq!(device["temperatures"][0]["celsius"], 21.375);
    let (_, history) = get_json(addr, "/api/devices/kitchen-pi/temperature").await;
    assert_eq!(history["points"].as_array().unwrap().len(), 1);
    events.wait_for("event: status").await;
    events.wait_for(r#""device":"kitchen-pi","sensor":"cpu","celsius":21.375"#).await;
    events.wait_for(r#"event: led"#).await;
    events.wait_for(r#""device":"kitchen-pi","led":"red","on":true"#).await;
    events.wait_for("event: stats").await;

    // The attacker: publishes on the same broker, without the key. `expected` counts what each
    // case must add, by reason.
    let attacker = RawPublisher::connect(broker.port, "test-attacker").await;
    let mut expected = RejectedCounts::default();
    let forger = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0x66; 16]).unwrap();
    let (forged_topic, forged) = seal(&forger, KITCHEN, 50, &temperature("cpu", 99_000));
    attacker.publish(&forged_topic, &forged).await;
    expected.bad_tag += 1;

    // One bit flipped in each byte of a genuine frame, in turn. Version (byte 0) and key id
    // (byte 1) are read before any cryptography; everything after them is authenticated.
    let (topic, frame) = &frames[1];
    for (index, flipped) in bit_flips(frame).into_iter().enumerate() {
        attacker.publish(topic, &flipped).await;
        match index {
            0 => expected.malformed += 1,      // no such version
            1 => expected.unknown_device += 1, // no such key id
            _ => expected.bad_tag += 1,        // sequence number, ciphertext, tag
        }
    }

    attacker.publish(topic, frame).await;
    let (led_topic, led_frame) = &frames[2];
    attacker.publish(led_topic, led_frame).await;
    expected.replay += 2;

    // Cross-topic: a genuine frame moved to another sensor, to another kind of message and to
    // another device (opened there with the other device's key).
    for moved in
        ["ledtemp/kitchen-pi/temp/gpu", "ledtemp/kitchen-pi/led/red", "ledtemp/garage/temp/cpu"]
    {
        attacker.publish(moved, frame).await;
        expected.bad_tag += 1;
    }

    let (stranger_topic, stranger) = seal(&forger, "stranger", 1, &temperature("cpu", 1));
    attacker.publish(&stranger_topic, &stranger).await;
    expected.unknown_device += 1;
    attacker.publish(topic, &[1u8; 1_000]).await;
    expected.oversize += 1;
    attacker.publish(topic, b"\x00garbage that is long enough to be a frame").await;
    expected.malformed += 1;
    // A topic outside the three device filters never reaches the server; one inside them with a
    // name outside the allowed characters reaches it and is refused unparsed.
    attacker.publish("ledtemp/kitchen-pi/bogus", frame).await;
    attacker.publish("ledtemp/kitchen-pi/led/a.b", frame).await;
    expected.malformed += 1;

    // Random bytes of every interesting length: shorter than a frame can be, frame-sized, the
    // largest frame, one byte longer, and a few KiB.
    for (seed, len) in [0, 1, 22, 23, 31, 150, 301, 302, 2_000].into_iter().enumerate() {
        let junk = random_bytes(seed as u64 + 1, len);
        // With these seeds no payload starts with the version byte, so none gets further.
        assert!(junk.first() != Some(&1), "seed {seed} starts like a frame");
        attacker.publish(topic, &junk).await;
        if len > MAX_FRAME_LEN {
            expected.oversize += 1;
        } else {
            expected.malformed += 1;
        }
    }

    let want = serde_json::to_value(expected).unwrap();
    let total = want.as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>();
    let stats = wait_stats(addr, "every attack counted", |s| {
        s["rejected"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>()
            >= total
    })
    .await;
    assert_eq!(stats["rejected"], want, "rejections by reason");
    assert_eq!(stats["accepted"], 3);
    assert_eq!(stats["broker_connected"], true);
    assert_eq!(stats["sse_clients"], 1);
    let (_, after) = get_json(addr, "/api/devices").await;
    assert_eq!(after, devices, "an attack changed a device's state");
    let (_, history_after) = get_json(addr, "/api/devices/kitchen-pi/temperature").await;
    // The range (since, until) moves with the clock; the readings in it must not.
    assert_eq!(history_after["points"], history["points"]);
    let (_, metrics) = http_get(addr, "/metrics").await;
    let bad_tag =
        format!("ledtemp_frames_rejected_total{{reason=\"bad_tag\"}} {}", expected.bad_tag);
    assert!(metrics.contains(&bad_tag), "{metrics}");

    // Larger than the subscriber's MQTT maximum packet size: the broker drops it (mosquitto) or
    // the subscriber refuses it and reconnects; either way the server goes on.
    attacker.publish(topic, &vec![0u8; 10_000]).await;
    let (topic, frame) = seal(&codec, KITCHEN, 4, &temperature("cpu", 22_000));
    node.publish(&topic, &frame).await;
    wait_stats(addr, "the next genuine frame", |s| s["accepted"] == 4).await;
    wait_healthy(addr, 200).await;
    server.shutdown().await.unwrap();
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verified_frames_are_shown_and_attacks_are_counted_and_change_nothing
);

async fn a_restart_keeps_history_and_replay_windows(backend: Backend) {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    let codec = garage_codec();
    let reading = seal(&codec, GARAGE, 7, &temperature("air", 4_500));
    let press = seal(&codec, GARAGE, 8, &led("door", true));
    {
        let server = start_server_on(database, broker.port).await;
        let node = RawPublisher::connect(broker.port, "test-node").await;
        node.publish(&reading.0, &reading.1).await;
        node.publish(&press.0, &press.1).await;
        wait_stats(server.http_addr(), "2 accepted", |s| s["accepted"] == 2).await;
        server.shutdown().await.unwrap();
    }
    let server = start_server_on(database, broker.port).await;
    let addr = server.http_addr();
    let (_, devices) = get_json(addr, "/api/devices").await;
    let garage = devices.as_array().unwrap().iter().find(|d| d["id"] == GARAGE).unwrap();
    assert_eq!(garage["temperatures"][0]["celsius"], 4.5);
    assert_eq!(garage["leds"][0]["on"], true);
    let (_, history) = get_json(addr, "/api/devices/garage/temperature").await;
    assert_eq!(history["points"].as_array().unwrap().len(), 1);

    // Captured before the restart, replayed after it.
    let attacker = RawPublisher::connect(broker.port, "test-attacker").await;
    attacker.publish(&reading.0, &reading.1).await;
    attacker.publish(&press.0, &press.1).await;
    let stats = wait_stats(addr, "2 replays", |s| s["rejected"]["replay"] == 2).await;
    assert_eq!(stats["accepted"], 0);
    let (_, history) = get_json(addr, "/api/devices/garage/temperature").await;
    assert_eq!(history["points"].as_array().unwrap().len(), 1);
    server.shutdown().await.unwrap();
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_keeps_history_and_replay_windows
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_the_broker_is_down() {
    let mut broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_broker_server(dir.path(), broker.port).await;
    let addr = server.http_addr();
    broker.stop();
    wait_healthy(addr, 503).await;
    let (_, health) = get_json(addr, "/healthz").await;
    assert_eq!(health["broker"], "disconnected");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("ledtemp_broker_connected 0"), "{metrics}");
    broker.resume().await;
    wait_healthy(addr, 200).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_a_shared_group_split_the_stream_and_refuse_each_others_replays() {
    let Some(postgres) = TestDatabase::create() else { return };
    let broker = TestBroker::start().await;
    let mut servers = Vec::new();
    for id in ["web-a", "web-b"] {
        let mut config = serve_config_on(&postgres.database(), broker.port);
        config.mqtt.shared_group = Some("web".into());
        config.mqtt.client_id = id.into();
        assert_eq!(config.mqtt.filters()[0], "$share/web/ledtemp/+/led/+");
        let server = Server::start(config, keys()).await.unwrap();
        wait_healthy(server.http_addr(), 200).await;
        servers.push(server);
    }
    let node = RawPublisher::connect(broker.port, "test-node").await;
    let codec = kitchen_codec();
    const FRAMES: u64 = 20;
    let frames: Vec<_> =
        (0..FRAMES).map(|n| seal(&codec, KITCHEN, n, &temperature("cpu", 20_000))).collect();
    for (topic, frame) in &frames {
        node.publish(topic, frame).await;
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::http_addr).collect();
    let total = |key: &'static str, reason: Option<&'static str>| {
        let addrs = addrs.clone();
        async move {
            let mut counts = Vec::new();
            for addr in addrs {
                let stats = stats(addr).await;
                let value = match reason {
                    Some(reason) => &stats[key][reason],
                    None => &stats[key],
                };
                counts.push(value.as_u64().unwrap());
            }
            counts
        }
    };
    let counts = eventually("every frame accepted by one of the two", || async {
        let counts = total("accepted", None).await;
        (counts.iter().sum::<u64>() == FRAMES).then_some(counts)
    })
    .await;
    assert!(counts.iter().all(|&n| n > 0), "one server got everything: {counts:?}");

    // Every frame replayed into the group, twice: whichever server a copy reaches (most reach
    // the one that did not accept the original), it is refused, and nothing is stored again.
    for _ in 0..2 {
        for (topic, frame) in &frames {
            node.publish(topic, frame).await;
        }
    }
    eventually("every copy refused as a replay", || async {
        let replays = total("rejected", Some("replay")).await;
        (replays.iter().sum::<u64>() == 2 * FRAMES).then_some(())
    })
    .await;
    assert_eq!(total("accepted", None).await, counts, "a replay was accepted");
    assert_eq!(
        postgres.query_i64("SELECT COUNT(*) FROM temperatures UNION ALL SELECT COUNT(DISTINCT sequence) FROM temperatures"),
        [FRAMES as i64, FRAMES as i64]
    );
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

/// Two servers of a group on one database, each on a broker of its own so that every frame
/// reaches server A: server B's event stream, device list and history show what A accepted,
/// within a second, without B receiving or verifying anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_server_of_a_group_accepts_shows_live_on_the_others() {
    let Some(postgres) = TestDatabase::create() else { return };
    let (broker_a, broker_b) = (TestBroker::start().await, TestBroker::start().await);
    let mut servers = Vec::new();
    for (id, port) in [("web-a", broker_a.port), ("web-b", broker_b.port)] {
        let mut config = serve_config_on(&postgres.database(), port);
        config.mqtt.shared_group = Some("web".into());
        config.mqtt.client_id = id.into();
        servers.push(start_server(config, keys()).await);
    }
    let (a, b) = (servers[0].http_addr(), servers[1].http_addr());
    let mut events = EventStream::open(b).await;
    let node = RawPublisher::connect(broker_a.port, "test-node").await;
    let codec = kitchen_codec();
    for (sequence, message) in
        [(1, online(&[("red", false)])), (2, temperature("cpu", 21_375)), (3, led("red", true))]
    {
        let (topic, frame) = seal(&codec, KITCHEN, sequence, &message);
        node.publish(&topic, &frame).await;
    }
    events.wait_for(r#""device":"kitchen-pi","sensor":"cpu","celsius":21.375"#).await;
    events.wait_for(r#""device":"kitchen-pi","led":"red","on":true"#).await;
    let devices = get_json(b, "/api/devices").await.1;
    let kitchen = kitchen(&devices);
    assert_eq!(kitchen["online"], true, "{kitchen}");
    assert_eq!(kitchen["leds"][0]["on"], true, "{kitchen}");
    assert_eq!(stats(a).await["accepted"], 3);
    assert_eq!(stats(b).await["accepted"], 0, "B verified nothing itself");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

/// A node's retained frames (its LED state, and its Last Will, which replaced its online status
/// in the retained store) reach a server that starts later on a fresh database: the LED state is
/// taken, but the device is not shown online and has no last-seen time, and the will, which no
/// accepted online status expects, is counted as a stale will, not as a replay.
async fn retained_frames_set_values_but_not_liveness_and_a_retained_will_is_stale(
    backend: Backend,
) {
    let broker = TestBroker::start().await;
    let node = RawPublisher::connect(broker.port, "retained-node").await;
    let codec = kitchen_codec();
    for (sequence, message) in
        [(1, online(&[("red", true)])), (2, offline()), (3, led("red", false))]
    {
        let (topic, frame) = seal(&codec, KITCHEN, sequence, &message);
        node.publish_retained(&topic, &frame).await;
    }
    // Stored by the broker before the server subscribes: a subscriber of its own sees both.
    let mut retained = Subscriber::start(broker.port).await;
    for _ in 0..2 {
        let message = retained.next(WAIT).await.expect("the retained frames");
        assert!(message.retained, "{message:?}");
    }
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    let server = start_server_on(database, broker.port).await;
    let addr = server.http_addr();
    let stats = wait_stats(addr, "the retained frames handled", |s| {
        s["accepted"] == 1 && s["rejected"]["stale_will"] == 1
    })
    .await;
    assert_eq!(stats["rejected"]["replay"], 0, "{stats}");
    let devices = get_json(addr, "/api/devices").await.1;
    let kitchen = kitchen(&devices);
    assert_eq!(kitchen["leds"][0]["led"], "red");
    assert_eq!(kitchen["leds"][0]["on"], false);
    assert_eq!(kitchen["online"], false, "{kitchen}");
    assert_eq!(kitchen["last_seen"], Value::Null, "{kitchen}");
    server.shutdown().await.unwrap();

    // Restarted on the same database with its session kept by the broker: the subscription
    // exists, so the broker sends no retained frame again (nothing to count, no false alarm).
    // A new frame shows the server is subscribed and what it received.
    let server = start_server_on(database, broker.port).await;
    let node = RawPublisher::connect(broker.port, "retained-node").await;
    let (topic, frame) = seal(&codec, KITCHEN, 4, &led("red", true));
    node.publish(&topic, &frame).await;
    let stats = wait_stats(server.http_addr(), "the new frame", |s| s["accepted"] == 1).await;
    for reason in ["redelivered", "stale_will", "replay"] {
        assert_eq!(stats["rejected"][reason], 0, "{stats}");
    }
    server.shutdown().await.unwrap();

    // A clean session (session expiry 0): the broker delivers the retained frames again. The
    // LED frame was stored: a redelivery, not a replay attack; the will is still stale.
    let mut config = serve_config_on(database, broker.port);
    config.mqtt.session_expiry = Duration::ZERO;
    let server = start_server(config, keys()).await;
    let stats = wait_stats(server.http_addr(), "the retained frames again", |s| {
        s["rejected"]["redelivered"] == 1 && s["rejected"]["stale_will"] == 1
    })
    .await;
    assert_eq!(
        (stats["accepted"].as_u64(), stats["rejected"]["replay"].as_u64()),
        (Some(0), Some(0))
    );
    server.shutdown().await.unwrap();
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retained_frames_set_values_but_not_liveness_and_a_retained_will_is_stale
);
