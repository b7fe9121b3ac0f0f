//! The Home Assistant bridge end to end: sealed frames (or a simulated node) on ledtemp's broker,
//! the server verifying and storing them, and the bridge republishing them to a second broker,
//! Home Assistant's, where a client reads what Home Assistant would: the discovery configs
//! (checked against Home Assistant's documented schema), the states and the availability.
//!
//! Both brokers are real (Mosquitto, else rumqttd: [`TestBroker`]); every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ledtemp_core::{Algorithm, AnyCodec, KeyId, NodeConfig};
use ledtemp_test_support::node::{NodeThread, SimulatedNode};
use ledtemp_web::{HistoryQuery, ServeArgs, Server, UnixMillis};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use support::broker::TestBroker;
use support::*;
use tokio::sync::mpsc;

const SENSOR_CONFIG: &str = "homeassistant/sensor/ledtemp-kitchen-pi/cpu/config";
const LED_CONFIG: &str = "homeassistant/binary_sensor/ledtemp-kitchen-pi/red/config";
const CPU_STATE: &str = "ledtemp-bridge/kitchen-pi/temperature/cpu";
const RED_STATE: &str = "ledtemp-bridge/kitchen-pi/led/red";
const KITCHEN_AVAILABILITY: &str = "ledtemp-bridge/kitchen-pi/availability";
const BRIDGE_STATUS: &str = "ledtemp-bridge/status";

/// One message on Home Assistant's broker.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: String,
    retained: bool,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.topic, self.payload))
    }
}

/// What Home Assistant reads: a client of its broker subscribed to the discovery prefix and the
/// bridge's topics, again after every reconnection.
struct HomeAssistantView {
    messages: mpsc::UnboundedReceiver<Seen>,
    /// Everything received so far, in order.
    seen: Vec<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl HomeAssistantView {
    async fn connect(port: u16, client_id: &str) -> HomeAssistantView {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 16);
        let (tx, messages) = mpsc::unbounded_channel();
        let subscribed = Arc::new(AtomicUsize::new(0));
        let acks = Arc::clone(&subscribed);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in ["homeassistant/#", "ledtemp-bridge/#"] {
                            client.try_subscribe(filter, QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = tx.send(Seen {
                            topic: String::from_utf8(publish.topic.to_vec()).unwrap(),
                            payload: String::from_utf8(publish.payload.to_vec()).unwrap(),
                            retained: publish.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        eventually("the Home Assistant view subscribed", || {
            let done = subscribed.load(Ordering::SeqCst) >= 2;
            async move { done.then_some(()) }
        })
        .await;
        HomeAssistantView { messages, seen: Vec::new(), task }
    }

    /// The first message received so far, or else the next one, that `wanted` accepts.
    async fn find(&mut self, what: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
        if let Some(message) = self.seen.iter().find(|m| wanted(m)) {
            return message.clone();
        }
        self.next_matching(what, wanted).await
    }

    /// The next message from now on (earlier ones are in `seen`) that `wanted` accepts.
    async fn next_matching(&mut self, what: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Some(message)) = tokio::time::timeout(left, self.messages.recv()).await else {
                panic!("no {what} on Home Assistant's broker; seen:\n{:#?}", self.seen);
            };
            self.seen.push(message.clone());
            if wanted(&message) {
                return message;
            }
        }
    }

    /// The next message of `topic` with `payload` (a change from now on).
    async fn next_payload(&mut self, topic: &str, payload: &str) -> Seen {
        let what = format!("{topic} = {payload}");
        self.next_matching(&what, |m| m.topic == topic && m.payload == payload).await
    }

    /// A message of `topic` with `payload`, received so far or next.
    async fn find_payload(&mut self, topic: &str, payload: &str) -> Seen {
        self.find(&format!("{topic} = {payload}"), |m| m.topic == topic && m.payload == payload)
            .await
    }

    /// Takes what arrived without waiting.
    fn take_arrived(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            self.seen.push(message);
        }
    }
}

impl Drop for HomeAssistantView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server on ledtemp's broker with the bridge on, to Home Assistant's broker, from the TOML
/// file as a user writes it.
async fn start_bridged_server(
    dir: &Path,
    ledtemp: &TestBroker,
    home_assistant: &TestBroker,
) -> Server {
    let file = dir.join("ledtemp.toml");
    std::fs::write(
        &file,
        format!(
            "[homeassistant]\nenabled = true\nbroker = \"127.0.0.1:{}\"\n",
            home_assistant.port
        ),
    )
    .unwrap();
    let args = ServeArgs { config: Some(file), ..serve_args(dir, ledtemp.port) };
    let server = start_server(resolve(args), keys()).await;
    let counters = Arc::clone(server.homeassistant().expect("the bridge is on"));
    eventually("the bridge connected to Home Assistant's broker", || {
        let connected = counters.connected();
        async move { connected.then_some(()) }
    })
    .await;
    server
}

/// `value`'s keys.
fn keys_of(value: &Value) -> BTreeSet<&str> {
    value.as_object().unwrap().keys().map(String::as_str).collect()
}

/// A discovery topic as Home Assistant requires it:
/// `<prefix>/<component>/<node_id>/<object_id>/config`, ids from `[a-zA-Z0-9_-]`.
fn assert_discovery_topic(topic: &str, component: &str) {
    let levels: Vec<&str> = topic.split('/').collect();
    assert_eq!(levels.len(), 5, "{topic}");
    assert_eq!((levels[0], levels[1], levels[4]), ("homeassistant", component, "config"));
    for id in &levels[2..4] {
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{topic}: {id:?} is not a valid node or object id"
        );
    }
}

/// The parts every entity's config shares: availability from the bridge and the device, the
/// device block, the origin, QoS 1, and ids of the right type.
fn assert_common(config: &Value, component: &str, slug: &str) {
    assert!(config["name"].is_string());
    assert!(config["unique_id"].as_str().unwrap().starts_with("ledtemp:kitchen-pi:"));
    assert_eq!(config["object_id"], slug);
    assert_eq!(config["default_entity_id"], format!("{component}.{slug}"));
    assert_eq!(config["qos"], 1);
    assert_eq!(
        config["availability"],
        json!([
            {
                "topic": BRIDGE_STATUS,
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            {
                "topic": KITCHEN_AVAILABILITY,
                "payload_available": "online",
                "payload_not_available": "offline",
            },
        ])
    );
    assert_eq!(config["availability_mode"], "all");
    let device = &config["device"];
    assert_eq!(
        keys_of(device),
        BTreeSet::from(["identifiers", "name", "manufacturer", "model", "sw_version"])
    );
    assert_eq!(device["identifiers"], json!(["ledtemp_kitchen-pi"]));
    assert_eq!(device["name"], "kitchen-pi");
    assert_eq!((&device["manufacturer"], &device["model"]), (&json!("ledtemp"), &json!("ledtemp")));
    assert!(device["sw_version"].is_string());
    assert_eq!(config["origin"]["name"], "ledtemp-web");
    assert!(config["origin"]["sw_version"].is_string());
}

/// The server's last verified reading of kitchen-pi's `cpu`, as its JSON.
fn last_cpu(server: &Server) -> Value {
    let state = server.live().device(&device(KITCHEN)).unwrap();
    serde_json::to_value(&state.temperatures[&sensor("cpu")]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_and_states_follow_the_verified_readings_and_forgeries_publish_nothing() {
    let ledtemp = TestBroker::start().await;
    let home_assistant = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_bridged_server(dir.path(), &ledtemp, &home_assistant).await;
    let mut view = HomeAssistantView::connect(home_assistant.port, "home-assistant").await;
    let node = RawPublisher::connect(ledtemp.port, KITCHEN).await;
    let codec = kitchen_codec();
    for (sequence, message) in
        [online(&[("red", true)]), temperature("cpu", 21_375), led("red", false)].iter().enumerate()
    {
        let (topic, frame) = seal(&codec, KITCHEN, sequence as u64, message);
        node.publish_retained(&topic, &frame).await;
    }

    // The sensor: every key Home Assistant's MQTT sensor documents for it, of the right type.
    let seen = view.find("the sensor's config", |m| m.topic == SENSOR_CONFIG).await;
    assert_discovery_topic(&seen.topic, "sensor");
    let sensor_config = seen.json();
    assert_eq!(
        keys_of(&sensor_config),
        BTreeSet::from([
            "name",
            "unique_id",
            "object_id",
            "default_entity_id",
            "state_topic",
            "value_template",
            "device_class",
            "state_class",
            "unit_of_measurement",
            "suggested_display_precision",
            "availability",
            "availability_mode",
            "qos",
            "device",
            "origin",
        ])
    );
    assert_common(&sensor_config, "sensor", "ledtemp_kitchen_pi_cpu");
    assert_eq!(sensor_config["name"], "cpu temperature");
    assert_eq!(sensor_config["unique_id"], "ledtemp:kitchen-pi:temperature:cpu");
    assert_eq!(sensor_config["state_topic"], CPU_STATE);
    assert_eq!(sensor_config["value_template"], "{{ value_json.celsius }}");
    assert_eq!(sensor_config["device_class"], "temperature");
    assert_eq!(sensor_config["state_class"], "measurement");
    assert_eq!(sensor_config["unit_of_measurement"], "°C");
    assert_eq!(sensor_config["suggested_display_precision"], 1);

    // Its state: the verified reading, as the server holds it.
    let state =
        view.find("the cpu state", |m| m.topic == CPU_STATE && m.json()["celsius"] == 21.375).await;
    assert_eq!(state.json(), last_cpu(&server));
    assert_eq!(state.json()["sensor"], "cpu");

    // The LED: a read-only binary sensor; its state ends as the device's last frame said.
    let seen = view.find("the LED's config", |m| m.topic == LED_CONFIG).await;
    assert_discovery_topic(&seen.topic, "binary_sensor");
    let led_config = seen.json();
    assert_eq!(
        keys_of(&led_config),
        BTreeSet::from([
            "name",
            "unique_id",
            "object_id",
            "default_entity_id",
            "state_topic",
            "value_template",
            "payload_on",
            "payload_off",
            "icon",
            "availability",
            "availability_mode",
            "qos",
            "device",
            "origin",
        ])
    );
    assert_common(&led_config, "binary_sensor", "ledtemp_kitchen_pi_red_led");
    assert!(
        led_config.get("command_topic").is_none(),
        "switching from Home Assistant is not bridged"
    );
    assert_eq!(led_config["name"], "red LED");
    assert_eq!(led_config["unique_id"], "ledtemp:kitchen-pi:led:red");
    assert_eq!(led_config["state_topic"], RED_STATE);
    assert_eq!(led_config["value_template"], "{{ 'ON' if value_json.on else 'OFF' }}");
    assert_eq!(
        (&led_config["payload_on"], &led_config["payload_off"]),
        (&json!("ON"), &json!("OFF"))
    );
    assert_eq!(led_config["device"], sensor_config["device"], "one device in Home Assistant");
    view.find("the LED off", |m| m.topic == RED_STATE && m.json()["on"] == false).await;
    view.find_payload(KITCHEN_AVAILABILITY, "online").await;
    view.find_payload(BRIDGE_STATUS, "online").await;

    // Forgeries reach ledtemp's broker: a frame sealed with another key (for a new sensor), a
    // replay of the genuine reading, a device not in the keyring, and plain JSON. The server
    // refuses each; none reaches Home Assistant.
    let stats = || server.live().stats.snapshot().rejected;
    let before = stats();
    let stranger = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0x99; 16]).unwrap();
    let (topic, forged) = seal(&stranger, KITCHEN, 100, &temperature("forged", 99_000));
    node.publish(&topic, &forged).await;
    let (topic, replayed) = seal(&codec, KITCHEN, 1, &temperature("cpu", 21_375));
    node.publish(&topic, &replayed).await;
    let (topic, intruder) = seal(&stranger, "intruder", 0, &temperature("cpu", 99_000));
    node.publish(&topic, &intruder).await;
    node.publish("ledtemp/kitchen-pi/temp/cpu", br#"{"celsius": 99.0}"#).await;
    eventually("the four forgeries refused", || {
        let now = stats();
        let refused = (now.bad_tag - before.bad_tag)
            + (now.replay - before.replay)
            + (now.unknown_device - before.unknown_device)
            + (now.malformed - before.malformed);
        async move { (refused >= 4).then_some(()) }
    })
    .await;
    // The next genuine reading arrives after them on the same path.
    let (topic, frame) = seal(&codec, KITCHEN, 3, &temperature("cpu", 22_500));
    node.publish(&topic, &frame).await;
    let state = view
        .find("the next genuine reading", |m| m.topic == CPU_STATE && m.json()["celsius"] == 22.5)
        .await;
    assert_eq!(state.json(), last_cpu(&server));
    view.take_arrived();
    for message in &view.seen {
        assert!(
            !message.topic.contains("forged") && !message.topic.contains("intruder"),
            "a forgery reached Home Assistant: {message:?}"
        );
    }
    let cpu_states: Vec<Value> = view
        .seen
        .iter()
        .filter(|m| m.topic == CPU_STATE)
        .map(|m| m.json()["celsius"].clone())
        .collect();
    assert_eq!(cpu_states, [json!(21.375), json!(22.5)], "one state per verified reading");

    // Everything is retained: Home Assistant starting now finds the entities and their states.
    let mut late = HomeAssistantView::connect(home_assistant.port, "home-assistant-later").await;
    let topics =
        [SENSOR_CONFIG, LED_CONFIG, CPU_STATE, RED_STATE, KITCHEN_AVAILABILITY, BRIDGE_STATUS];
    let mut retained = Vec::new();
    for topic in topics {
        let message = late.find(&format!("{topic}, retained"), |m| m.topic == topic).await;
        assert!(message.retained, "not retained: {message:?}");
        retained.push(message);
    }
    assert_eq!(retained[0].json(), sensor_config);
    assert_eq!(retained[1].json(), led_config);
    assert_eq!(retained[2].json(), last_cpu(&server));
    assert_eq!(retained[3].json()["on"], false);
    assert_eq!((retained[4].payload.as_str(), retained[5].payload.as_str()), ("online", "online"));

    // A clean stop says so: every entity unavailable.
    let counters = Arc::clone(server.homeassistant().unwrap());
    server.shutdown().await.unwrap();
    view.next_payload(BRIDGE_STATUS, "offline").await;
    assert!(counters.published() >= 8, "published {}", counters.published());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_last_will_makes_its_entities_unavailable() {
    let ledtemp = TestBroker::start().await;
    let home_assistant = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_bridged_server(dir.path(), &ledtemp, &home_assistant).await;
    let mut view = HomeAssistantView::connect(home_assistant.port, "home-assistant").await;

    let address = ledtemp.address(KITCHEN);
    let node = NodeThread::spawn(move || {
        let config =
            NodeConfig { temperature_period: Duration::from_millis(200), ..NodeConfig::default() };
        SimulatedNode { config, ..SimulatedNode::new(KITCHEN, kitchen_codec()) }.run(address)
    });
    view.find_payload(KITCHEN_AVAILABILITY, "online").await;
    // Each state is a reading the server verified and stored, at the same time and value.
    for _ in 0..3 {
        let state = view.next_matching("a cpu reading", |m| m.topic == CPU_STATE).await.json();
        let at = UnixMillis::parse_rfc3339(state["at"].as_str().unwrap()).unwrap();
        let query = HistoryQuery {
            device: device(KITCHEN),
            sensor: Some(sensor("cpu")),
            since: UnixMillis(at.as_millis() - 1),
            until: UnixMillis(at.as_millis() + 1),
            limit: 10,
        };
        let stored = server.state().history.temperatures(&query).unwrap();
        assert!(
            stored.iter().any(|point| serde_json::to_value(point).unwrap() == state),
            "{state} is not a stored reading: {stored:?}"
        );
    }
    view.find("the LED's state", |m| m.topic == RED_STATE).await;

    // The node goes away without a word: the broker publishes its sealed Last Will, the server
    // verifies it, and Home Assistant shows the device's entities unavailable.
    node.stop().await;
    view.next_payload(KITCHEN_AVAILABILITY, "offline").await;
    assert!(!server.live().device(&device(KITCHEN)).unwrap().online);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_publishes_everything_again_after_home_assistants_broker_restarts() {
    let ledtemp = TestBroker::start().await;
    let mut home_assistant = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_bridged_server(dir.path(), &ledtemp, &home_assistant).await;
    let counters = Arc::clone(server.homeassistant().unwrap());
    let mut view = HomeAssistantView::connect(home_assistant.port, "home-assistant").await;
    let node = RawPublisher::connect(ledtemp.port, KITCHEN).await;
    let codec = kitchen_codec();
    let (topic, frame) = seal(&codec, KITCHEN, 0, &online(&[("red", true)]));
    node.publish_retained(&topic, &frame).await;
    let (topic, frame) = seal(&codec, KITCHEN, 1, &temperature("cpu", 21_375));
    node.publish(&topic, &frame).await;
    view.find("the cpu state", |m| m.topic == CPU_STATE).await;
    drop(view);

    // Home Assistant's broker goes away (a killed Mosquitto loses its retained messages);
    // readings go on being verified and stored meanwhile.
    home_assistant.stop();
    eventually("the bridge noticed", || {
        let connected = counters.connected();
        async move { (!connected).then_some(()) }
    })
    .await;
    let (topic, frame) = seal(&codec, KITCHEN, 2, &temperature("cpu", 23_000));
    node.publish(&topic, &frame).await;
    let (topic, frame) = seal(&codec, KITCHEN, 3, &led("red", false));
    node.publish_retained(&topic, &frame).await;
    eventually("the server verified both", || {
        let state = server.live().device(&device(KITCHEN)).unwrap();
        let done = state.temperatures[&sensor("cpu")].temperature.0 == 23_000
            && !state.leds[&led_name("red")].state.is_on();
        async move { done.then_some(()) }
    })
    .await;

    // It comes back: the bridge reconnects and publishes the entities and the current states.
    home_assistant.resume().await;
    eventually("the bridge reconnected", || {
        let again = counters.connections() >= 2 && counters.connected();
        async move { again.then_some(()) }
    })
    .await;
    let mut view = HomeAssistantView::connect(home_assistant.port, "home-assistant-again").await;
    let config = view.find("the sensor's config", |m| m.topic == SENSOR_CONFIG).await;
    assert!(config.retained && config.json()["state_topic"] == CPU_STATE);
    view.find("the LED's config", |m| m.topic == LED_CONFIG).await;
    let cpu = view.find("23 °C", |m| m.topic == CPU_STATE && m.json()["celsius"] == 23.0).await;
    assert_eq!(cpu.json(), last_cpu(&server));
    view.find("the LED off", |m| m.topic == RED_STATE && m.json()["on"] == false).await;
    view.find_payload(KITCHEN_AVAILABILITY, "online").await;
    view.find_payload(BRIDGE_STATUS, "online").await;

    // The bridge itself vanishes (its task is aborted, no DISCONNECT): the broker publishes its
    // Last Will, and every entity goes unavailable.
    drop(server);
    view.next_payload(BRIDGE_STATUS, "offline").await;
}
