//! `serve --embedded-broker` end to end: a real node (the core's node, codec and minimq
//! publisher, driven by `ledtemp_tokio::run_node`) publishes through the broker inside the server,
//! and its reading shows up in `/api/devices`. No Mosquitto involved.
//!
//! The embedded broker cannot be stopped (rumqttd has no way to), so it lives until this test
//! process exits; it listens on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ledtemp_core::{
    AnyCodec, Backoff, Clock, LedName, MemorySequenceStore, MilliCelsius, Node, NodeConfig,
    ScriptedButton, SensorName, SimulatedTemperature,
};
use ledtemp_tokio::{BlockingSensor, BrokerAddress, LoggedLed, StdClock, run_node};
use ledtemp_web::{ServeArgs, Server};
use support::*;

/// Runs the kitchen node against the broker on `127.0.0.1:port` until aborted.
async fn run_kitchen_node(port: u16) {
    let mut clock = StdClock::new();
    let mut node: Node<AnyCodec, MemorySequenceStore> = Node::new(
        device(KITCHEN),
        &[LedName::new("red").unwrap()],
        &[SensorName::new("cpu").unwrap()],
        kitchen_codec(),
        MemorySequenceStore::new(),
        NodeConfig::default(),
        clock.now(),
    )
    .unwrap();
    let mut buttons = [ScriptedButton::new(clock, Duration::ZERO, Duration::ZERO)];
    let mut leds = [LoggedLed::new("red")];
    let mut sensors =
        [BlockingSensor::new(SimulatedTemperature::new(clock, 1).with_base(MilliCelsius(21_000)))];
    let broker = BrokerAddress::new("127.0.0.1", port, KITCHEN);
    let world = ledtemp_tokio::NodeWorld::new(broker, clock)
        .buttons(&mut buttons)
        .leds(&mut leds)
        .sensors(&mut sensors)
        .backoff(Backoff::default());
    run_node(&mut node, world, &mut |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nodes_reading_arrives_through_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeArgs {
        embedded_broker: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database: Some(dir.path().join("ledtemp.db").into()),
        keyring: Some("unused".into()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    let server = Server::start(config, keys()).await.unwrap();
    let broker = server.embedded_broker_addr().unwrap();
    assert_eq!(broker.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(broker.port(), 0, "the free port the broker got");
    let addr = server.http_addr();

    // minimq's mailbox is not `Sync`: the node runs on this thread, the server on the workers.
    let node = tokio::task::LocalSet::new();
    node.spawn_local(run_kitchen_node(broker.port()));
    let device = node
        .run_until(eventually("the node's reading in /api/devices", || async move {
            let (_, devices) = get_json(addr, "/api/devices").await;
            devices.as_array()?.iter().find(|d| d["id"] == KITCHEN && d["online"] == true).and_then(
                |d| d["temperatures"].as_array().is_some_and(|t| !t.is_empty()).then(|| d.clone()),
            )
        }))
        .await;
    drop(node);
    assert_eq!(device["temperatures"][0]["sensor"], "cpu");
    let celsius = device["temperatures"][0]["celsius"].as_f64().unwrap();
    assert!((0.0..50.0).contains(&celsius), "a simulated 21 °C: {device}");
    assert_eq!(device["leds"][0]["led"], "red", "{device}");
    assert_eq!(device["leds"][0]["on"], false, "{device}");

    let (_, stats) = get_json(addr, "/api/stats").await;
    assert_eq!(stats["broker_connected"], true);
    assert!(stats["rejected"].as_object().unwrap().values().all(|n| n == 0), "{stats}");
    let (status, health) = get_json(addr, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    server.shutdown().await.unwrap();
}
