//! The transport as deployed (docs/broker.md): a real Mosquitto with a TLS listener, a password
//! file and an ACL; a node (`ledtemp_tokio::run_node` with simulated hardware) and the server
//! (`ledtemp_web::Server`) each with their own broker account, over TLS.
//!
//! Each test starts its own Mosquitto on a free port; without Mosquitto they print why and pass
//! (`LEDTEMP_REQUIRE_MOSQUITTO=1` makes that a failure). Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::path::Path;
use std::time::Duration;

use ledtemp_core::{
    Algorithm, AnyCodec, Codec, Connector, DeviceId, KeyId, MAX_FRAME_LEN, Message, MilliCelsius,
    NodeConfig, SensorName, SequenceNumber, TemperatureReading, Uptime,
};
use ledtemp_test_support::WAIT;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::node::SimulatedNode;
use ledtemp_test_support::proxy::{Proxy, contains};
use ledtemp_test_support::secure_broker::{SERVER_USER, SecureBroker, TestCertificates};
use ledtemp_test_support::server::{resolve, serve_args};
use ledtemp_tokio::{BrokerAddress, BrokerTls, TlsConnector};
use ledtemp_web::{KeyTable, ServeArgs, Server};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;

const KITCHEN: &str = "kitchen-pi";
const KITCHEN_PASSWORD: &str = "kitchen-broker-password";
const GARAGE: &str = "garage";
const GARAGE_PASSWORD: &str = "garage-broker-password";
const SERVER_PASSWORD: &str = "server-broker-password";

const ACCOUNTS: [(&str, &str); 3] =
    [(KITCHEN, KITCHEN_PASSWORD), (GARAGE, GARAGE_PASSWORD), (SERVER_USER, SERVER_PASSWORD)];

fn codec(device: &str) -> AnyCodec {
    match device {
        KITCHEN => AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0x11; 16]).unwrap(),
        _ => AnyCodec::new(Algorithm::ChaCha20Poly1305, KeyId(1), &[0x22; 32]).unwrap(),
    }
}

fn keys() -> KeyTable {
    let mut keys = KeyTable::new();
    for device in [KITCHEN, GARAGE] {
        keys.insert(DeviceId::new(device).unwrap(), codec(device));
    }
    keys
}

/// A genuine frame of `device`: `(topic, payload)`.
fn reading(device: &str, sequence: u64) -> (String, Vec<u8>) {
    let id = DeviceId::new(device).unwrap();
    let message = Message::Temperature(TemperatureReading {
        sensor: SensorName::new("room").unwrap(),
        temperature: MilliCelsius(21_500),
        uptime: Uptime(1_000),
    });
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = codec(device)
        .seal(&id, SequenceNumber::new(sequence).unwrap(), &message, &mut buf)
        .unwrap();
    (message.topic(&id).to_topic_string().as_str().to_owned(), buf[..len].to_vec())
}

/// The server over TLS with its own account, its password in a 0600 file.
async fn start_server(broker: &SecureBroker, dir: &Path) -> Server {
    start_server_with(broker, dir, keys()).await
}

async fn start_server_with(broker: &SecureBroker, dir: &Path, keys: KeyTable) -> Server {
    let config = resolve(ServeArgs {
        broker_tls: true,
        broker_ca: Some(broker.ca_file.clone()),
        broker_user: Some(SERVER_USER.into()),
        broker_password_file: Some(broker.password_file("server.password", SERVER_PASSWORD)),
        ..serve_args(dir, broker.port)
    });
    let server = Server::start(config, keys).await.unwrap();
    let live = server.live().clone();
    eventually("the server subscribed over TLS", broker, || live.stats.broker_connected()).await;
    server
}

async fn eventually(what: &str, broker: &SecureBroker, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}\n{}", broker.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects with `options`: the client and its event loop after a successful CONNACK, or the
/// error the first poll ended with (a refusal, a TLS failure, a closed connection).
async fn connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(WAIT, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, events)),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => panic!("neither CONNACK nor error within {WAIT:?}"),
        }
    }
}

/// Polls `events` in a task, forwarding every PUBLISH (topic) and every sign that the connection
/// ended (`"disconnected: ..."`).
fn watch(mut events: EventLoop) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let seen = match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    String::from_utf8_lossy(&publish.topic).into_owned()
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => format!("disconnected: {d:?}"),
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    format!("suback: {:?}", ack.return_codes)
                }
                Ok(_) => continue,
                Err(error) => format!("disconnected: {error}"),
            };
            let ended = seen.starts_with("disconnected");
            if tx.send(seen).is_err() || ended {
                return;
            }
        }
    });
    rx
}

/// kitchen-pi with simulated hardware (a press every 300 ms, a reading every 200 ms).
fn kitchen_node() -> SimulatedNode<AnyCodec> {
    SimulatedNode {
        sensor: "room".into(),
        config: NodeConfig {
            temperature_period: Duration::from_millis(200),
            ..NodeConfig::default()
        },
        press_every: Duration::from_millis(300),
        ..SimulatedNode::new(KITCHEN, codec(KITCHEN))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_tls_with_its_account_reaches_the_server_and_the_link_shows_nothing() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&broker, dir.path()).await;

    // The node, through a proxy that records the link.
    let proxy = Proxy::recording(broker.port).await;
    let mut address = BrokerAddress::new("127.0.0.1", proxy.port(), KITCHEN);
    address.credentials = Some((KITCHEN.into(), KITCHEN_PASSWORD.into()));
    address.tls = Some(broker.tls());
    // minimq's mailbox is not `Sync`: the node runs on this thread, the server on the workers.
    let node = tokio::task::LocalSet::new();
    node.spawn_local(kitchen_node().run(address));
    let live = server.live().clone();
    node.run_until(eventually("the server accepted 5 frames", &broker, || {
        live.stats.snapshot().accepted >= 5
    }))
    .await;
    drop(node);
    let stats = server.live().stats.snapshot();
    assert_eq!(stats.rejected.bad_tag + stats.rejected.unknown_device, 0, "{stats:?}");

    // Eavesdropping on the link: bytes went through, but no topic, name or secret in clear.
    let recorded = proxy.recorded();
    assert!(recorded.len() > 1_000, "the proxy saw the connection: {} bytes", recorded.len());
    for secret in [KITCHEN.as_bytes(), KITCHEN_PASSWORD.as_bytes(), b"ledtemp/", b"room"] {
        assert!(
            !contains(&recorded, secret),
            "{:?} readable on the link",
            String::from_utf8_lossy(secret)
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_account_subscribed_to_everything_receives_nothing() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&broker, dir.path()).await;
    let live = server.live().clone();

    // garage's account (a captured device) sniffing everything it can subscribe to.
    let (sniffer, events) =
        connect(broker.client_options("sniffer", Some((GARAGE, GARAGE_PASSWORD)))).await.unwrap();
    let mut sniffed = watch(events);
    for filter in ["#", "ledtemp/#", "ledtemp/kitchen-pi/#", "$SYS/#"] {
        sniffer.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let answer = tokio::time::timeout(WAIT, sniffed.recv()).await.unwrap().unwrap();
        assert!(answer.starts_with("suback"), "{filter}: {answer}");
    }
    // kitchen-pi publishes; the server, whose account may read, gets every frame.
    let (kitchen, events) =
        connect(broker.client_options(KITCHEN, Some((KITCHEN, KITCHEN_PASSWORD)))).await.unwrap();
    let _kitchen_events = watch(events);
    for sequence in 1..=3 {
        let (topic, frame) = reading(KITCHEN, sequence);
        kitchen.publish(&topic, QoS::AtLeastOnce, false, frame).await.unwrap();
    }
    eventually("the server accepted 3 frames", &broker, || live.stats.snapshot().accepted >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sniffed.try_recv().ok(), None, "a device account read other devices' frames");
    server.shutdown().await.unwrap();
}

/// The ACL's command rules: only the server's account writes command topics, and a device reads
/// its own command topic and no other. A captured device can neither command another device nor
/// itself through the broker (its commands would not open anyway: they need the server's
/// direction in the nonce).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_servers_account_writes_commands_and_a_device_reads_only_its_own() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let account = |id, user, password| broker.client_options(id, Some((user, password)));
    let (kitchen, events) = connect(account(KITCHEN, KITCHEN, KITCHEN_PASSWORD)).await.unwrap();
    let mut received = watch(events);
    for filter in ["ledtemp/kitchen-pi/cmd/+", "ledtemp/garage/cmd/+"] {
        kitchen.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let answer = tokio::time::timeout(WAIT, received.recv()).await.unwrap().unwrap();
        assert!(answer.starts_with("suback"), "{filter}: {answer}");
    }
    let (garage, events) = connect(account(GARAGE, GARAGE, GARAGE_PASSWORD)).await.unwrap();
    let _garage_events = watch(events);
    let (server, events) =
        connect(account(SERVER_USER, SERVER_USER, SERVER_PASSWORD)).await.unwrap();
    let _server_events = watch(events);
    let publish = |client: &AsyncClient, topic: &'static str| {
        let client = client.clone();
        async move { client.publish(topic, QoS::AtLeastOnce, false, vec![1u8; 36]).await.unwrap() }
    };
    publish(&garage, "ledtemp/kitchen-pi/cmd/from-garage").await;
    publish(&kitchen, "ledtemp/kitchen-pi/cmd/from-itself").await;
    publish(&server, "ledtemp/garage/cmd/door").await;
    publish(&server, "ledtemp/kitchen-pi/cmd/red").await;
    let first = tokio::time::timeout(WAIT, received.recv()).await.unwrap().unwrap();
    assert_eq!(first, "ledtemp/kitchen-pi/cmd/red", "only the server's command to kitchen-pi");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.try_recv().ok(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_wrong_passwords_plain_tcp_and_untrusted_brokers_get_nothing() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let refused =
        |result: Result<(AsyncClient, EventLoop), ConnectionError>, what: &str| match result {
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
            )) => {}
            Err(other) => panic!("{what}: refused for another reason: {other:?}"),
            Ok(_) => panic!("{what}: connected"),
        };
    refused(connect(broker.client_options("anonymous", None)).await, "anonymous");
    refused(
        connect(broker.client_options("guess", Some((KITCHEN, "guessed-password")))).await,
        "wrong password",
    );
    refused(
        connect(broker.client_options("stranger", Some(("stranger", KITCHEN_PASSWORD)))).await,
        "unknown user",
    );
    // The control: the right password connects.
    connect(broker.client_options("kitchen", Some((KITCHEN, KITCHEN_PASSWORD)))).await.unwrap();

    // Plain MQTT on the TLS port: no CONNACK, the connection just ends.
    let mut plain = MqttOptions::new("plain", "127.0.0.1", broker.port);
    plain.set_credentials(KITCHEN, KITCHEN_PASSWORD);
    match connect(plain).await {
        Err(ConnectionError::ConnectionRefused(code)) => panic!("plain TCP reached MQTT: {code:?}"),
        Err(_) => {}
        Ok(_) => panic!("plain TCP connected to the TLS listener"),
    }

    // A broker whose certificate another CA signed (a man in the middle) is refused by the node,
    // and so is the right broker under another name.
    let other_ca = TestCertificates::generate("someone else's CA");
    let other_ca = broker.write_file("other-ca.pem", &other_ca.ca_pem);
    let untrusted = BrokerTls::from_ca_file(&other_ca, "127.0.0.1").unwrap();
    let wrong_name = BrokerTls::from_ca_file(&broker.ca_file, "broker.example").unwrap();
    for (tls, what) in [(untrusted, "another CA"), (wrong_name, "another name")] {
        let error: io::Error =
            TlsConnector::new("127.0.0.1", broker.port, tls).connect().await.unwrap_err();
        assert!(format!("{error:?}").contains("InvalidCertificate"), "{what}: {error:?}");
    }
    TlsConnector::new("127.0.0.1", broker.port, broker.tls()).connect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_publish_under_another_devices_id() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&broker, dir.path()).await;
    let live = server.live().clone();

    // The attacker holds garage's account (a captured device) and a genuine kitchen-pi frame
    // (say one kitchen-pi sent while the server was away): sealing cannot tell it was moved.
    let (attacker, events) =
        connect(broker.client_options(GARAGE, Some((GARAGE, GARAGE_PASSWORD)))).await.unwrap();
    let _attacker_events = watch(events);
    // QoS 0: with QoS 1 Mosquitto answers "not authorized" in the PUBACK, which rumqttc takes
    // as a reason to drop the connection; QoS 0 shows the silent drop alone.
    let (kitchen_topic, kitchen_frame) = reading(KITCHEN, 1);
    attacker.publish(&kitchen_topic, QoS::AtMostOnce, false, kitchen_frame).await.unwrap();
    // Then a frame of its own, which does arrive: the control that proves the path works.
    let (garage_topic, garage_frame) = reading(GARAGE, 1);
    attacker.publish(&garage_topic, QoS::AtMostOnce, false, garage_frame).await.unwrap();
    eventually("garage's own frame accepted", &broker, || live.stats.snapshot().accepted >= 1)
        .await;
    // Frames of one client arrive in order: had the other device's frame passed, the server
    // would have accepted it first (it is genuine).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = live.stats.snapshot();
    assert_eq!(stats.accepted, 1, "a frame published under another device's id: {stats:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_take_over_another_clients_session() {
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&broker, dir.path()).await;
    let live = server.live().clone();

    // The victim: kitchen-pi connected with its own account.
    let (victim, events) =
        connect(broker.client_options(KITCHEN, Some((KITCHEN, KITCHEN_PASSWORD)))).await.unwrap();
    let mut victim_events = watch(events);
    // The attacker, with garage's account, asks for kitchen-pi's client id: without
    // use_username_as_clientid the broker would disconnect kitchen-pi (a session takeover);
    // with it, the broker names the attacker "garage".
    let (_attacker, events) =
        connect(broker.client_options(KITCHEN, Some((GARAGE, GARAGE_PASSWORD)))).await.unwrap();
    let _attacker_events = watch(events);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(victim_events.try_recv().ok(), None, "the victim's connection was taken over");

    // The victim's frames still go through.
    let (topic, frame) = reading(KITCHEN, 1);
    victim.publish(&topic, QoS::AtLeastOnce, false, frame).await.unwrap();
    eventually("the victim's frame accepted", &broker, || live.stats.snapshot().accepted >= 1)
        .await;
    assert_eq!(victim_events.try_recv().ok(), None, "the victim's connection was taken over");
    server.shutdown().await.unwrap();
}

/// The Raspberry Pi example as a user runs it (`--simulate`), configured as docs/broker.md says:
/// `tls = true`, `ca_file`, a 0600 `password_file` and no `username` (the device id is the
/// default). The binary is the example cargo built for this test run (`cargo test` builds
/// examples; alone, `cargo build --example rpi_node` first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpi_node_example_publishes_over_tls_with_its_account() {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let binary = deps.parent().unwrap().join("examples").join("rpi_node");
    assert!(binary.exists(), "{} missing: cargo build --example rpi_node", binary.display());
    let Some(broker) = SecureBroker::start(&ACCOUNTS).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node_keys = TempKeyring::generate(&[(KITCHEN, Algorithm::ChaCha20Poly1305)]);
    node_keys.write_key_file(KITCHEN, &dir.path().join("node.key"));
    let mut keys = KeyTable::new();
    keys.insert(DeviceId::new(KITCHEN).unwrap(), node_keys.codec(KITCHEN));
    let server = start_server_with(&broker, dir.path(), keys).await;
    let password_file = broker.password_file("node.password", KITCHEN_PASSWORD);
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = \"node.key\"\nstate_dir = \"state\"\nperiod_ms = 200\n\n\
             [broker]\nhost = \"127.0.0.1\"\nport = {port}\ntls = true\nca_file = {ca:?}\n\
             server_name = \"localhost\"\npassword_file = {password:?}\n\n\
             [[led]]\nname = \"red\"\npin = 17\n\n\
             [[sensor]]\nname = \"cpu\"\nkind = \"thermal-zone\"\n",
            port = broker.port,
            ca = broker.ca_file.display().to_string(),
            password = password_file.display().to_string(),
        ),
    )
    .unwrap();
    let mut node = std::process::Command::new(&binary)
        .args(["--simulate", "--press-every", "1", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let live = server.live().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while live.stats.snapshot().accepted < 3 {
        if tokio::time::Instant::now() > deadline || node.try_wait().unwrap().is_some() {
            let _ = node.kill();
            panic!("the example's frames did not arrive: {:?}\n{}", node.wait(), broker.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill().unwrap();
    node.wait().unwrap();
    server.shutdown().await.unwrap();
}
