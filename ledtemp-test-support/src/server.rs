//! The server's tests: the test keyring (kitchen-pi with AES-128-GCM, garage with
//! ChaCha20-Poly1305), messages and frames sealed as a node seals them, a pipeline on a database of
//! its own, a server's settings and start, a raw MQTT publisher, and a minimal HTTP client with an
//! event-stream reader.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ledtemp_core::{
    Algorithm, AnyCodec, Codec, DeviceId, KeyId, LedChange, LedName, LedState, LedStatus,
    MAX_FRAME_LEN, Message, MilliCelsius, NodeStatus, SensorName, SequenceNumber, StatusReport,
    TemperatureReading, Uptime,
};
use ledtemp_web::{
    AccessControl, AppState, Database, DeviceState, HistoryQuery, IncomingFrame, Ingest, KeyTable,
    Pipeline, PipelineOptions, ServeArgs, ServeConfig, Server, TemperaturePoint, UnixMillis,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// The two devices of the tests' keyring, and their keys.
pub const KITCHEN: &str = "kitchen-pi";
/// kitchen-pi's AES-128-GCM key (key id 1).
pub const KITCHEN_KEY: [u8; 16] = [0x11; 16];
/// The second device of the test keyring.
pub const GARAGE: &str = "garage";
/// garage's ChaCha20-Poly1305 key (key id 1).
pub const GARAGE_KEY: [u8; 32] = [0x22; 32];

/// `name` as a device id.
pub fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

/// kitchen-pi's codec, as its node has it.
pub fn kitchen_codec() -> AnyCodec {
    AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &KITCHEN_KEY).unwrap()
}

/// garage's codec, as its node has it.
pub fn garage_codec() -> AnyCodec {
    AnyCodec::new(Algorithm::ChaCha20Poly1305, KeyId(1), &GARAGE_KEY).unwrap()
}

/// The server's keys: kitchen-pi (AES, key id 1) and garage (ChaCha, key id 1).
pub fn keys() -> KeyTable {
    let mut keys = KeyTable::new();
    keys.insert(device(KITCHEN), kitchen_codec());
    keys.insert(device(GARAGE), garage_codec());
    keys
}

/// A temperature reading of `sensor`, in thousandths of a degree.
pub fn temperature(sensor: &str, milli: i32) -> Message {
    Message::Temperature(TemperatureReading {
        sensor: SensorName::new(sensor).unwrap(),
        temperature: MilliCelsius(milli),
        uptime: Uptime(1_000),
    })
}

/// An LED change.
pub fn led(name: &str, on: bool) -> Message {
    Message::Led(LedChange {
        led: LedName::new(name).unwrap(),
        state: LedState::from(on),
        uptime: Uptime(2_000),
    })
}

/// An online status listing `leds`.
pub fn online(leds: &[(&str, bool)]) -> Message {
    let leds = leds
        .iter()
        .map(|(name, on)| LedStatus {
            led: LedName::new(name).unwrap(),
            state: LedState::from(*on),
        })
        .collect();
    Message::Status(StatusReport { status: NodeStatus::Online { leds }, uptime: Uptime(0) })
}

/// The Last Will: an offline status.
pub fn offline() -> Message {
    Message::Status(StatusReport { status: NodeStatus::Offline, uptime: Uptime(5) })
}

/// Seals like a node: `(topic, frame)`.
pub fn seal(
    codec: &AnyCodec,
    device_name: &str,
    sequence: u64,
    message: &Message,
) -> (String, Vec<u8>) {
    let device = device(device_name);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len =
        codec.seal(&device, SequenceNumber::new(sequence).unwrap(), message, &mut buf).unwrap();
    (message.topic(&device).to_topic_string().as_str().to_owned(), buf[..len].to_vec())
}

/// A frame as the subscriber hands it to the pipeline, received now and not retained.
pub fn incoming(topic: &str, payload: &[u8]) -> IncomingFrame {
    IncomingFrame {
        topic: topic.as_bytes().to_vec(),
        payload: payload.to_vec(),
        received: UnixMillis::now(),
        retained: false,
        duplicate: false,
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    UnixMillis::now().as_millis()
}

/// A pipeline on a database file in `dir`, and the HTTP state reading the same file.
pub fn pipeline(dir: &Path) -> (Ingest, AppState) {
    pipeline_on(&Database::Sqlite(dir.join("ledtemp.db")))
}

/// A pipeline on `database`, and the HTTP state reading the same database.
pub fn pipeline_on(database: &Database) -> (Ingest, AppState) {
    let Pipeline { ingest, state, .. } = open_pipeline_on(database, PipelineOptions::default());
    (ingest, state.app_state(AccessControl::open()))
}

/// A pipeline with the tests' keys and `options`, its database in `dir`.
pub fn open_pipeline(dir: &Path, options: PipelineOptions) -> Pipeline {
    open_pipeline_on(&Database::Sqlite(dir.join("ledtemp.db")), options)
}

/// A pipeline with the tests' keys and `options` on `database`.
pub fn open_pipeline_on(database: &Database, options: PipelineOptions) -> Pipeline {
    let options = PipelineOptions { database: database.clone(), ..options };
    Pipeline::open(&options, keys()).unwrap()
}

/// Every stored reading of `device`.
pub fn history(state: &AppState, device_name: &str) -> Vec<TemperaturePoint> {
    let query = HistoryQuery {
        device: device(device_name),
        sensor: None,
        since: UnixMillis(0),
        until: UnixMillis(i64::MAX),
        limit: 100,
    };
    state.history.temperatures(&query).unwrap()
}

/// The cached state of `device`.
pub fn device_state(state: &AppState, device_name: &str) -> DeviceState {
    state.live.device(&device(device_name)).unwrap()
}

/// A sensor name.
pub fn sensor(name: &str) -> SensorName {
    SensorName::new(name).unwrap()
}

/// An LED name.
pub fn led_name(name: &str) -> LedName {
    LedName::new(name).unwrap()
}

/// The command-line settings of a test server: a broker on `port`, HTTP on a free port, the
/// database in `dir`, no keyring file (the test hands [`Server::start`] its keys). Add to them,
/// then [`resolve`](ServeArgs::resolve) them or use [`serve_config`].
pub fn serve_args(dir: &Path, port: u16) -> ServeArgs {
    ServeArgs {
        broker: Some(format!("127.0.0.1:{port}")),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database: Some(dir.join("ledtemp.db").into()),
        keyring: Some(PathBuf::from("unused")),
        ..ServeArgs::default()
    }
}

/// `args` resolved, with a 5 s MQTT keep-alive (a broker restart is noticed quickly).
pub fn resolve(args: ServeArgs) -> ServeConfig {
    let mut config = args.resolve().unwrap();
    config.mqtt.keep_alive = Duration::from_secs(5);
    config
}

/// A server configuration for a broker on `port`, HTTP on a free port, the database in `dir`.
pub fn serve_config(dir: &Path, port: u16) -> ServeConfig {
    resolve(serve_args(dir, port))
}

/// A server configuration for a broker on `port`, HTTP on a free port, on `database`.
pub fn serve_config_on(database: &Database, port: u16) -> ServeConfig {
    let mut config = resolve(serve_args(Path::new("unused"), port));
    config.pipeline.database = database.clone();
    config
}

/// Starts a server with `config` and `keys`, and waits until it is subscribed to its broker.
pub async fn start_server(config: ServeConfig, keys: KeyTable) -> Server {
    let server = Server::start(config, keys).await.unwrap();
    let live = std::sync::Arc::clone(server.live());
    eventually("the server subscribed to its broker", || {
        let connected = live.stats.broker_connected();
        async move { connected.then_some(()) }
    })
    .await;
    server
}

/// A plain MQTT v5 client that publishes whatever bytes a test (or an attacker) likes.
pub struct RawPublisher {
    /// The MQTT client, to publish with other settings.
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl RawPublisher {
    /// Connects as `id` to the broker on `port` and waits for its CONNACK.
    pub async fn connect(port: u16, id: &str) -> RawPublisher {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 64);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, ready).await.expect("publisher connect timed out").unwrap();
        RawPublisher { client, task }
    }

    /// Publishes with QoS 1 (not retained).
    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.unwrap();
    }

    /// Publishes with QoS 1, retained (as a node sends its LED changes and status).
    pub async fn publish_retained(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.to_vec()).await.unwrap();
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET path` over a fresh connection: `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    };
    tokio::time::timeout(WAIT, exchange).await.expect("HTTP request timed out")
}

/// `GET path` and parse the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

/// An open `/api/events` stream, read as raw text.
pub struct EventStream {
    stream: TcpStream,
    /// What the stream carried so far.
    pub seen: String,
}

impl EventStream {
    /// Sends `GET /api/events` and waits for the stream's headers.
    pub async fn open(addr: SocketAddr) -> EventStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut events = EventStream { stream, seen: String::new() };
        events.wait_for("text/event-stream").await;
        events
    }

    /// Reads until `needle` has appeared (anywhere in what was read so far); panics after
    /// [`WAIT`].
    pub async fn wait_for(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                other => {
                    panic!("no {needle:?} on the event stream ({other:?}); got:\n{}", self.seen)
                }
            }
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
