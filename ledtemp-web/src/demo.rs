//! `ledtemp-web demo`: everything in one process, nothing to install. The server with its embedded
//! MQTT broker (as `serve --embedded-broker`, on a free local port) and dashboard, a SQLite file
//! and a keyring in a temporary directory, three simulated nodes running the real node, codec and
//! minimq publisher, and one forger publishing forged, moved, replayed and junk frames.
//!
//! `ledtemp-web demo --insecure-plaintext` is the "before" of the lesson in `docs/attacks.md`:
//! nodes publish in the clear and the server accepts anything, so the forger's readings show.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use ledtemp_core::{
    Algorithm, AnyCodec, Clock, Codec, DeviceId, InsecurePlaintextCodec, KeyId, LedName,
    MAX_FRAME_LEN, MemorySequenceStore, MilliCelsius, Node, NodeConfig, ScriptedButton,
    SealedOrPlaintext, SensorName, SequenceNumber, SimulatedTemperature, TemperatureReading,
    Uptime,
};
use ledtemp_keys::{KeyEntry, Keyring};
use ledtemp_tokio::{BlockingSensor, BrokerAddress, LoggedLed, NodeWorld, StdClock, run_node};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::Error;
use crate::config::ServeArgs;
use crate::keys::load_keys;
use crate::server::{Server, shutdown_signal};

/// Options of `ledtemp-web demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address the dashboard listens on.
    #[arg(
        long,
        env = "LEDTEMP_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR:PORT"
    )]
    pub listen: SocketAddr,
    /// Run without the forger (no rejected frames).
    #[arg(long)]
    pub no_forger: bool,
    /// INSECURE, FOR TEACHING ONLY: the nodes publish unencrypted, unauthenticated frames and
    /// the server accepts them from anyone, without replay protection (docs/attacks.md).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// What the simulated nodes seal with.
type DemoCodec = SealedOrPlaintext<AnyCodec>;

/// A simulated device: name, algorithm, LEDs, sensors, button period.
struct SimDevice {
    name: &'static str,
    algorithm: Algorithm,
    led: &'static str,
    sensor: &'static str,
    base: i32,
    press_every: Duration,
}

const DEVICES: [SimDevice; 3] = [
    SimDevice {
        name: "kitchen-pi",
        algorithm: Algorithm::ChaCha20Poly1305,
        led: "red",
        sensor: "cpu",
        base: 45_000,
        press_every: Duration::from_secs(7),
    },
    SimDevice {
        name: "garage",
        algorithm: Algorithm::Aes128Gcm,
        led: "door",
        sensor: "air",
        base: 12_000,
        press_every: Duration::from_secs(11),
    },
    SimDevice {
        name: "greenhouse",
        algorithm: Algorithm::Aes128Gcm,
        led: "fan",
        sensor: "soil",
        base: 24_000,
        press_every: Duration::from_secs(13),
    },
];

fn name_error(e: ledtemp_core::Error) -> Error {
    Error::Config(format!("demo device: {e}"))
}

/// Runs one simulated node until the task is aborted.
async fn run_sim_node(device: &'static SimDevice, codec: DemoCodec, port: u16, seed: u32) {
    let result: Result<(), Error> = async {
        let mut clock = StdClock::new();
        let mut node: Node<DemoCodec, MemorySequenceStore> = Node::new(
            DeviceId::new(device.name).map_err(name_error)?,
            &[LedName::new(device.led).map_err(name_error)?],
            &[SensorName::new(device.sensor).map_err(name_error)?],
            codec,
            MemorySequenceStore::new(),
            NodeConfig::default(),
            clock.now(),
        )
        .map_err(name_error)?;
        let mut buttons =
            [ScriptedButton::new(clock, device.press_every, Duration::from_millis(150))];
        let mut leds = [LoggedLed::new(device.led)];
        let mut sensors = [BlockingSensor::new(
            SimulatedTemperature::new(clock, seed).with_base(MilliCelsius(device.base)),
        )];
        let broker = BrokerAddress::new("127.0.0.1", port, device.name);
        let mut on_event = |event: ledtemp_core::RunEvent<'_>| {
            tracing::debug!(device = device.name, "{event:?}");
        };
        let world = NodeWorld::new(broker, clock)
            .buttons(&mut buttons)
            .leds(&mut leds)
            .sensors(&mut sensors);
        run_node(&mut node, world, &mut on_event)
            .await
            .map_err(|e| Error::TaskFailed(format!("node {}: {e}", device.name)))?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        tracing::error!("simulated node stopped: {error}");
    }
}

/// Runs the simulated nodes on a thread of their own: the minimq publisher's mailbox is not
/// `Sync`, so the nodes run on a current-thread runtime. They stop when `stop` is sent or dropped.
fn spawn_nodes(
    nodes: Vec<(&'static SimDevice, DemoCodec, u32)>,
    port: u16,
) -> Result<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>), Error> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ledtemp-demo-nodes".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!("cannot start the simulated nodes: {error}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                for (device, codec, seed) in nodes {
                    tokio::task::spawn_local(run_sim_node(device, codec, port, seed));
                }
                let _ = stopped.await;
            });
        })
        .map_err(|e| Error::io("starting the simulated nodes", e))?;
    Ok((stop, thread))
}

/// Publishes something the server must refuse every two seconds, in turn: a frame sealed with a
/// key the server does not know, a genuine frame moved to another topic, a genuine frame replayed,
/// a frame of a device not in the keyring, an oversized payload and garbage. With `plaintext`, the
/// forged readings are plaintext frames, which an insecure server shows.
async fn run_forger(port: u16, plaintext: bool) {
    let mut options = MqttOptions::new("ledtemp-demo-forger", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(options, 32);
    let (captured_tx, mut captured) =
        tokio::sync::watch::channel::<Option<(String, Vec<u8>)>>(None);
    let listen = async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("ledtemp/+/temp/+", QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let _ = captured_tx.send(Some((topic, p.payload.to_vec())));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    };
    let mut options = MqttOptions::new("ledtemp-demo-forger-pub", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(15));
    let (publisher, mut publisher_events) = AsyncClient::new(options, 32);
    let drive = async move {
        loop {
            if publisher_events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let attack = async move {
        let mut sequence = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        for round in 0u64.. {
            tick.tick().await;
            sequence += 1;
            let genuine = captured.borrow_and_update().clone();
            let attack = match (round % 6, genuine) {
                (0, _) => forged("kitchen-pi", sequence, plaintext),
                (1, Some((topic, frame))) => Some((moved(&topic), frame)),
                (2, Some((topic, frame))) => Some((topic, frame)),
                (3, _) => forged("intruder", sequence, plaintext),
                (4, _) => Some(("ledtemp/garage/temp/air".to_owned(), vec![0x01; 1_000])),
                _ => Some((
                    "ledtemp/garage/status".to_owned(),
                    b"<script>alert(1)</script>".to_vec(),
                )),
            };
            let Some((topic, payload)) = attack else { continue };
            let _ = publisher.publish(topic, QoS::AtMostOnce, false, payload).await;
        }
    };
    tokio::join!(listen, drive, attack);
}

/// A temperature frame for `device` sealed with a key the server does not have (or, with
/// `plaintext`, not sealed at all).
fn forged(device: &str, sequence: u64, plaintext: bool) -> Option<(String, Vec<u8>)> {
    let message = ledtemp_core::Message::Temperature(TemperatureReading {
        sensor: SensorName::new("cpu").ok()?,
        temperature: MilliCelsius(99_000),
        uptime: Uptime(0),
    });
    let device = DeviceId::new(device).ok()?;
    let codec = if plaintext {
        SealedOrPlaintext::InsecurePlaintext(InsecurePlaintextCodec::new(KeyId(1)))
    } else {
        SealedOrPlaintext::Sealed(AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0xee; 16]).ok()?)
    };
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = codec.seal(&device, SequenceNumber::new(sequence).ok()?, &message, &mut buf).ok()?;
    let topic = message.topic(&device).to_topic_string();
    Some((topic.as_str().to_owned(), buf.get(..len)?.to_vec()))
}

/// The same frame on another sensor's topic of the same device.
fn moved(topic: &str) -> String {
    match topic.rsplit_once('/') {
        Some((head, _)) => format!("{head}/moved"),
        None => topic.to_owned(),
    }
}

/// The running demo: broker, nodes, forger and server.
pub struct Demo {
    server: Server,
    broker_port: u16,
    stop_nodes: tokio::sync::oneshot::Sender<()>,
    nodes_thread: std::thread::JoinHandle<()>,
    forger: Option<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Demo {
    /// Starts everything; returns once the dashboard's port is bound. The nodes connect in the
    /// background (they, and the server's subscriber, retry until the broker is up).
    pub async fn start(args: DemoArgs) -> Result<Demo, Error> {
        let dir =
            tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;

        let mut keyring = Keyring::new();
        let mut codecs = Vec::new();
        for device in &DEVICES {
            let entry = DeviceId::new(device.name).map_err(name_error).and_then(|id| {
                KeyEntry::generate(id, KeyId(1), device.algorithm)
                    .map_err(|e| Error::Keyring(e.to_string()))
            })?;
            codecs.push(if args.insecure_plaintext {
                SealedOrPlaintext::InsecurePlaintext(InsecurePlaintextCodec::new(KeyId(1)))
            } else {
                SealedOrPlaintext::Sealed(entry.codec())
            });
            keyring.add(entry, false).map_err(|e| Error::Keyring(e.to_string()))?;
        }
        let keyring_path = dir.path().join("keyring.toml");
        keyring.save(&keyring_path).map_err(|e| Error::Keyring(e.to_string()))?;

        let config = ServeArgs {
            embedded_broker: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            client_id: Some("ledtemp-web-demo".into()),
            listen: Some(args.listen),
            database: Some(dir.path().join("ledtemp.db").into()),
            keyring: Some(keyring_path.clone()),
            insecure_plaintext: args.insecure_plaintext,
            ..ServeArgs::default()
        }
        .resolve()?;
        let server = Server::start(config, load_keys(&keyring_path)?).await?;
        let port = server
            .embedded_broker_addr()
            .ok_or_else(|| Error::TaskFailed("the demo's embedded broker did not start".into()))?
            .port();
        let nodes: Vec<_> =
            DEVICES.iter().zip(codecs).zip(1u32..).map(|((d, c), s)| (d, c, s)).collect();
        let (stop_nodes, nodes_thread) = spawn_nodes(nodes, port)?;
        let forger =
            (!args.no_forger).then(|| tokio::spawn(run_forger(port, args.insecure_plaintext)));
        Ok(Demo { server, broker_port: port, stop_nodes, nodes_thread, forger, dir })
    }

    /// The dashboard's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// The embedded broker's port on 127.0.0.1.
    pub fn broker_port(&self) -> u16 {
        self.broker_port
    }

    /// Where the database and keyring live (deleted on shutdown).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the forger and the nodes, then the server. The embedded broker has no way to stop:
    /// it ends with the process.
    pub async fn shutdown(self) -> Result<(), Error> {
        if let Some(forger) = &self.forger {
            forger.abort();
        }
        let _ = self.stop_nodes.send(());
        let nodes_thread = self.nodes_thread;
        let _ = tokio::task::spawn_blocking(move || nodes_thread.join()).await;
        let result = self.server.shutdown().await;
        drop(self.dir);
        result
    }
}

/// `ledtemp-web demo`: runs until Ctrl-C or SIGTERM (or until the embedded broker stops, which
/// is an error).
pub async fn demo(args: DemoArgs) -> Result<(), Error> {
    if args.insecure_plaintext {
        eprintln!("{}", crate::server::INSECURE_PLAINTEXT_WARNING);
    }
    let forger = !args.no_forger;
    let mut demo = Demo::start(args).await?;
    println!(
        "ledtemp demo: broker on 127.0.0.1:{}, data in {}",
        demo.broker_port(),
        demo.data_dir().display()
    );
    println!("ledtemp demo: open http://{}/  (Ctrl-C to stop)", demo.http_addr());
    if forger {
        println!(
            "ledtemp demo: a forger publishes a forged, moved, replayed, oversized or junk frame \
             every 2 s; the server refuses each one (a WARN line the first time per kind, then \
             a summary a minute, and the Frames panel counts them): those warnings are expected"
        );
    }
    let outcome = tokio::select! {
        () = shutdown_signal() => Ok(()),
        error = demo.server.embedded_broker_stopped() => Err(error),
    };
    let shut_down = demo.shutdown().await;
    outcome.and(shut_down)
}
