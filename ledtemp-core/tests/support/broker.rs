//! A real broker per test, a subscriber that collects every frame, and the std pieces a node
//! needs under tokio (clock, delay, TCP connector, LEDs, an async sensor).
//!
//! Broker selection: mosquitto (on `PATH`, or `/usr/sbin/mosquitto`) started by each test on a
//! free port of 127.0.0.1 with a config file of its own; without mosquitto, rumqttd in-process.
//! `LEDTEMP_REQUIRE_MOSQUITTO=1` turns a missing mosquitto into a failure (CI sets it).
//! `LEDTEMP_TEST_BROKER=rumqttd` forces the fallback, to try it where mosquitto is installed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use ledtemp_core::{
    AsyncTempSensor, Clock, Codec, Connector, Instant, Led, LedState, Message, MilliCelsius,
    OpenedFrame, ReplayWindow, TempSensor, Topic,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Every wait in these tests ends after this at the latest.
pub const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn mosquitto_binary() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("mosquitto")).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].map(PathBuf::from))
        .find(|path| path.is_file())
}

/// Which broker a test got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A mosquitto process of this test's own.
    Mosquitto,
    /// rumqttd in this process, behind a TCP proxy that can be cut.
    Rumqttd,
}

/// A broker on `127.0.0.1:port` that a test can stop and start again on the same port.
pub struct TestBroker {
    pub kind: BrokerKind,
    pub port: u16,
    mosquitto: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
    proxy: Option<Proxy>,
}

impl TestBroker {
    /// Starts mosquitto, or rumqttd when mosquitto is missing (see the module docs).
    pub async fn start() -> TestBroker {
        let forced_fallback = std::env::var("LEDTEMP_TEST_BROKER").as_deref() == Ok("rumqttd");
        let required = std::env::var("LEDTEMP_REQUIRE_MOSQUITTO").as_deref() == Ok("1");
        let binary = mosquitto_binary();
        match binary {
            Some(binary) if !forced_fallback => TestBroker::start_mosquitto(binary).await,
            _ => {
                assert!(
                    !required,
                    "LEDTEMP_REQUIRE_MOSQUITTO=1 but mosquitto is not installed \
                     (apt-get install mosquitto)"
                );
                TestBroker::start_rumqttd().await
            }
        }
    }

    async fn start_mosquitto(binary: PathBuf) -> TestBroker {
        let port = free_port();
        let config = std::env::temp_dir()
            .join(format!("ledtemp-mosquitto-{}-{port}.conf", std::process::id()));
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut broker = TestBroker {
            kind: BrokerKind::Mosquitto,
            port,
            mosquitto: Some((binary, config)),
            child: None,
            proxy: None,
        };
        broker.resume().await;
        broker
    }

    async fn start_rumqttd() -> TestBroker {
        let inner = free_port();
        let listen: SocketAddr = ([127, 0, 0, 1], inner).into();
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 4_096,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = rumqttd::ServerSettings {
            name: "v5".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 1 << 20,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v5: Some(HashMap::from([("v5".to_owned(), server)])),
            ..Default::default()
        };
        // rumqttd has no way to stop a running broker: it runs on its own thread until the test
        // process exits, and `stop` cuts the proxy in front of it instead.
        std::thread::spawn(move || {
            if let Err(error) = rumqttd::Broker::new(config).start() {
                eprintln!("rumqttd stopped: {error:?}");
            }
        });
        wait_for_port(inner).await;
        let mut proxy = Proxy { port: free_port(), target: inner, tasks: Default::default() };
        proxy.start();
        let port = proxy.port;
        let broker = TestBroker {
            kind: BrokerKind::Rumqttd,
            port,
            mosquitto: None,
            child: None,
            proxy: Some(proxy),
        };
        wait_for_port(port).await;
        broker
    }

    /// Stops the broker abruptly: mosquitto is killed; rumqttd's proxy closes its port and cuts
    /// every connection.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.stop();
        }
    }

    /// Starts the broker again on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        if let Some((binary, config)) = &self.mosquitto {
            let child = Command::new(binary)
                .arg("-c")
                .arg(config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.start();
        }
        wait_for_port(self.port).await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
        if let Some((_, config)) = &self.mosquitto {
            let _ = std::fs::remove_file(config);
        }
    }
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "broker did not open port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy from `port` to `target` that can be cut and restored.
struct Proxy {
    port: u16,
    target: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn start(&mut self) {
        let listener = StdTcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let (target, tasks) = (self.target, Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(link);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn stop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// One message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Delivered from the broker's retained store (on subscribing), not as it was published.
    pub retained: bool,
}

/// A rumqttc subscriber on `ledtemp/+/#` that reconnects and subscribes again after a broker
/// restart, forwarding every PUBLISH.
pub struct Subscriber {
    pub frames: mpsc::UnboundedReceiver<Received>,
    /// SUBACKs received so far (one per (re)subscription).
    pub subscriptions: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and waits for the first SUBACK.
    pub async fn start(port: u16) -> Subscriber {
        let mut options = MqttOptions::new("ledtemp-test-subscriber", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 64);
        let (tx, frames) = mpsc::unbounded_channel();
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&subscriptions);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.try_subscribe("ledtemp/+/#", QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
                        let payload = publish.payload.to_vec();
                        let _ = tx.send(Received { topic, payload, retained: publish.retain });
                    }
                    Ok(_) => {}
                    // The broker is down: try again shortly (rumqttc reconnects on the next poll).
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let subscriber = Subscriber { frames, subscriptions, task };
        subscriber.wait_subscribed(1).await;
        subscriber
    }

    /// Waits until `count` SUBACKs have arrived in total.
    pub async fn wait_subscribed(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.subscriptions.load(Ordering::SeqCst) < count {
            assert!(tokio::time::Instant::now() < deadline, "subscriber did not (re)subscribe");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.frames.recv()).await.ok().flatten()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A frame as the server sees it: opened with the device's key and checked for replay.
#[derive(Debug, Clone)]
pub struct Checked {
    pub topic: String,
    pub retained: bool,
    pub sequence: u64,
    pub message: Message,
}

/// Opens frames like the server: parse the topic, open with the key, then the replay window.
pub struct FrameChecker<C> {
    pub codec: C,
    pub window: ReplayWindow,
    /// Frames the window refused (a retained frame delivered again on resubscription).
    pub duplicates: usize,
}

impl<C: Codec> FrameChecker<C> {
    pub fn new(codec: C) -> Self {
        FrameChecker { codec, window: ReplayWindow::new(), duplicates: 0 }
    }

    /// The opened frame, or `None` for a replay. Panics on anything that does not open.
    pub fn check(&mut self, received: &Received) -> Option<Checked> {
        let topic = Topic::parse(&received.topic).unwrap();
        let opened: OpenedFrame = self
            .codec
            .open(&topic, &received.payload)
            .unwrap_or_else(|e| panic!("frame on {} does not open: {e}", received.topic));
        if self.window.accept(opened.header.sequence).is_err() {
            self.duplicates += 1;
            return None;
        }
        Some(Checked {
            topic: received.topic.clone(),
            retained: received.retained,
            sequence: opened.header.sequence.get(),
            message: opened.message,
        })
    }
}

/// Milliseconds since a start shared by the node, its simulated hardware and the test.
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    pub start: std::time::Instant,
}

impl StdClock {
    pub fn new() -> Self {
        StdClock { start: std::time::Instant::now() }
    }

    /// The tokio instant `millis` after the start.
    pub fn at(&self, millis: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_millis(millis))
    }
}

impl Clock for StdClock {
    fn now(&mut self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }
}

/// `embedded_hal_async` delay on tokio's timer.
pub struct TokioDelay;

impl embedded_hal_async::delay::DelayNs for TokioDelay {
    async fn delay_ns(&mut self, ns: u32) {
        tokio::time::sleep(Duration::from_nanos(ns.into())).await;
    }
}

/// TCP to the broker, through a gate the test can close (the node's network is "down").
pub struct TcpConnector {
    pub port: u16,
    pub open: Arc<AtomicBool>,
}

impl TcpConnector {
    pub fn new(port: u16) -> Self {
        TcpConnector { port, open: Arc::new(AtomicBool::new(true)) }
    }
}

impl Connector for TcpConnector {
    type Io = FromTokio<TcpStream>;
    type Error = io::Error;

    async fn connect(&mut self) -> Result<Self::Io, io::Error> {
        if !self.open.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "network held down"));
        }
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// An LED that remembers every state it was driven to.
#[derive(Debug, Default)]
pub struct RecordingLed {
    pub states: Vec<LedState>,
}

impl Led for RecordingLed {
    type Error = core::convert::Infallible;
    fn set(&mut self, state: LedState) -> Result<(), Self::Error> {
        self.states.push(state);
        Ok(())
    }
}

/// Any blocking sensor as an async one (the simulated sensor answers at once).
pub struct AsyncSensor<T>(pub T);

impl<T: TempSensor> AsyncTempSensor for AsyncSensor<T> {
    type Error = T::Error;
    async fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        self.0.read()
    }
}
