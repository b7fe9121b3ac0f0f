//! Ingest benchmark: sealed temperature frames from N simulated devices go through a real
//! mosquitto to the real server (`ledtemp_web::Server` on a SQLite file), and, in the same run, to
//! `mosquitto_sub` on the same topic filter as the baseline receiver.
//!
//! `cargo bench --bench ingest` (about a minute). Two modes:
//!
//! - **steady**: 1,000 devices, each sending one temperature a second, for 20 s (1,000 frames/s);
//! - **flood**: 100 devices sending as fast as the broker takes them, for 10 s.
//!
//! Reported per mode: the server's verified-frames rate (its `accepted` counter, read from
//! `/api/stats`) against mosquitto_sub's receive rate over the same window; publish-to-SSE latency
//! (each frame's temperature value is its frame number, so a `temperature` event on
//! `/api/events` names the frame, whose publish time the publisher recorded); and the server's
//! peak memory. The server runs in a child process (this binary again, with
//! `LEDTEMP_BENCH_ROLE=server`), so its `VmHWM` is its own. Results are recorded in
//! `docs/performance.md`.
//!
//! The publishers speak MQTT 3.1.1 over raw TCP with pre-encoded PUBLISH packets (QoS 0, as a
//! node sends temperatures), so the load generator costs next to nothing per frame. Every wait is
//! bounded; without mosquitto the bench says so and exits successfully (under
//! `LEDTEMP_REQUIRE_MOSQUITTO=1` it fails instead, as the broker tests do).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ledtemp_core::{
    Algorithm, Codec, DeviceId, KeyId, MAX_FRAME_LEN, Message, MilliCelsius, SensorName,
    SequenceNumber, TOPIC_FILTER_ALL, TemperatureReading, Uptime,
};
use ledtemp_keys::{KeyEntry, Keyring};
use ledtemp_test_support::mosquitto::{
    Mosquitto, MosquittoConfig, find_program, mosquitto_programs,
};

/// Set (to `server`) in the child process that runs the server.
const ROLE_ENV: &str = "LEDTEMP_BENCH_ROLE";
const BROKER_PORT_ENV: &str = "LEDTEMP_BENCH_BROKER_PORT";
const DIR_ENV: &str = "LEDTEMP_BENCH_DIR";
/// `1`: mosquitto sets TCP_NODELAY on its sockets (`set_tcp_nodelay true`; its default is off).
const NODELAY_ENV: &str = "LEDTEMP_BENCH_TCP_NODELAY";

const STEADY_DEVICES: usize = 1_000;
const STEADY_SECONDS: usize = 20;
const FLOOD_DEVICES: usize = 100;
const FLOOD_DURATION: Duration = Duration::from_secs(10);
/// Frames pre-sealed per flood device; the flood stops early if the broker takes them all.
const FLOOD_FRAMES_PER_DEVICE: usize = 25_000;
/// Publisher connections per mode.
const PUBLISHERS: usize = 4;
/// Flood frames written to the socket per `write` call.
const FLOOD_CHUNK: usize = 64;
/// Ids of flood frames start here (steady frames are `round * STEADY_DEVICES + device`).
const FLOOD_BASE: usize = STEADY_DEVICES * STEADY_SECONDS;
const TOTAL_FRAMES: usize = FLOOD_BASE + FLOOD_DEVICES * FLOOD_FRAMES_PER_DEVICE;

/// mosquitto drops QoS 0 messages to a subscriber whose outgoing list is longer than
/// `max_queued_messages` (default 1000); raised above every frame of the run so that neither
/// receiver loses any. `max_inflight_messages` 0 is "no limit" (default 20; it governs QoS 1/2).
const MAX_QUEUED_MESSAGES: usize = 2 * TOTAL_FRAMES;
const MAX_INFLIGHT_MESSAGES: usize = 0;

/// Longest wait for any start-up step or request.
const WAIT: Duration = Duration::from_secs(15);
/// Longest wait for the receivers to catch up after a mode's publishing ends.
const STEADY_DRAIN: Duration = Duration::from_secs(10);
const FLOOD_DRAIN: Duration = Duration::from_secs(40);
/// The child server gives up on its own after this, should the parent vanish without closing
/// its stdin.
const SERVER_LIFETIME: Duration = Duration::from_secs(300);
/// Sampling period of the counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        run_server();
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument that is not ours means another bench
    // was asked for.
    if std::env::args().skip(1).any(|arg| !arg.starts_with('-') && !"ingest".contains(&*arg)) {
        return;
    }
    let Some([mosquitto]) = mosquitto_programs("ingest bench", ["mosquitto"]) else {
        return;
    };
    run_bench(&mosquitto);
}

// ---------------------------------------------------------------------------------------------
// The server, in its own process.

fn run_server() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let port: u16 = std::env::var(BROKER_PORT_ENV).unwrap().parse().unwrap();
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let config = ledtemp_web::ServeArgs {
        broker: Some(format!("127.0.0.1:{port}")),
        client_id: Some("ledtemp-bench-server".into()),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database: Some(dir.join("ledtemp.db").into()),
        keyring: Some(dir.join("keyring.toml")),
        // Every device of both modes is in the keyring, above the default cap of 1,000.
        max_devices: Some(STEADY_DEVICES + FLOOD_DEVICES),
        ..ledtemp_web::ServeArgs::default()
    }
    .resolve()
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let keys = ledtemp_web::load_keys(&config.keyring).unwrap();
        let server = ledtemp_web::Server::start(config, keys).await.unwrap();
        println!("http {}", server.http_addr());
        std::io::stdout().flush().unwrap();
        // The parent closes our stdin to stop us (or by exiting).
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        });
        tokio::select! {
            _ = stdin_closed => {}
            () = tokio::time::sleep(SERVER_LIFETIME) => eprintln!("bench server: lifetime over"),
        }
        let _ = tokio::time::timeout(WAIT, server.shutdown()).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process that is killed when this is dropped (also on a panic).
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (the server's stop signal) and waits up to `wait` before killing.
    fn stop(mut self, wait: Duration) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Mosquitto as the bench needs it (see [`MAX_QUEUED_MESSAGES`]), its log in its own directory.
fn start_mosquitto(binary: &Path, nodelay: bool) -> Mosquitto {
    let config = MosquittoConfig {
        global: format!(
            "allow_anonymous true\n\
             max_queued_messages {MAX_QUEUED_MESSAGES}\n\
             max_inflight_messages {MAX_INFLIGHT_MESSAGES}\n\
             set_tcp_nodelay {nodelay}\n\
             log_type error\nlog_type warning\nlog_type notice\n"
        ),
        listener: String::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(Mosquitto::start(binary, tempfile::tempdir().unwrap(), &config))
}

fn start_server(broker_port: u16, dir: &Path) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, "server")
        .env(BROKER_PORT_ENV, broker_port.to_string())
        .env(DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let guard = ChildGuard { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        // Keep reading so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let line = rx.recv_timeout(WAIT).expect("the server did not start");
    let addr = line
        .strip_prefix("http ")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
    (guard, addr)
}

/// mosquitto_sub printing one line (the topic) per message; a thread counts the lines.
fn start_mosquitto_sub(binary: &Path, port: u16) -> (ChildGuard, Arc<AtomicU64>) {
    let mut child = Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5", "-q", "1"])
        .args(["-i", "ledtemp-bench-sub", "-t", TOPIC_FILTER_ALL, "-F", "%t"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            counter.fetch_add(lines, Ordering::Relaxed);
        }
    });
    (ChildGuard { child }, count)
}

/// The baseline without mosquitto_sub: rumqttc's blocking MQTT v5 client, QoS 1 subscription,
/// counting PUBLISH packets. It runs until the process exits.
fn start_rumqttc_sub(port: u16) -> Arc<AtomicU64> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Client, Event, MqttOptions};

    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let mut options = MqttOptions::new("ledtemp-bench-sub", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut connection) = Client::new(options, 64);
    client.subscribe(TOPIC_FILTER_ALL, QoS::AtLeastOnce).unwrap();
    std::thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("rumqttc baseline subscriber: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    count
}

// ---------------------------------------------------------------------------------------------
// HTTP: `/api/stats` and the `/api/events` stream, over plain TCP.

#[derive(Debug, Clone, Copy, Default)]
struct ServerStats {
    accepted: u64,
    rejected: u64,
    broker_connected: bool,
    sse_clients: u64,
}

fn server_stats(addr: SocketAddr) -> ServerStats {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let request = format!("GET /api/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").expect("no HTTP body");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
    let rejected = json["rejected"].as_object().map_or(0, |r| r.values().map(number).sum());
    ServerStats {
        accepted: number(&json["accepted"]),
        rejected,
        broker_connected: json["broker_connected"].as_bool().unwrap_or(false),
        sse_clients: number(&json["sse_clients"]),
    }
}

/// Undoes HTTP/1.1 chunked transfer encoding as bytes arrive.
#[derive(Default)]
struct Dechunker {
    raw: Vec<u8>,
}

impl Dechunker {
    fn feed(&mut self, bytes: &[u8], body: &mut Vec<u8>) {
        self.raw.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(line_len) = self.raw[at..].windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[at..at + line_len])
                .ok()
                .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
                .expect("bad chunk header");
            let start = at + line_len + 2;
            if self.raw.len() < start + size + 2 {
                break;
            }
            body.extend_from_slice(&self.raw[start..start + size]);
            at = start + size + 2;
        }
        self.raw.drain(..at);
    }
}

/// What the SSE reader saw: for each `temperature` event, the frame id and the latency.
#[derive(Default)]
struct SseLog {
    latencies: Vec<(u32, Duration)>,
    /// Events whose device did not match the frame their value names (should be none).
    mismatched: u64,
    /// Events naming no frame this run published (should be none).
    unknown: u64,
}

/// Reads `/api/events` until `stop` is set; matches every `temperature` event to its frame.
fn read_events(
    addr: SocketAddr,
    table: Arc<FrameTable>,
    t0: Instant,
    ready: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> SseLog {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let request =
        format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut log = SseLog::default();
    let mut head = Vec::new();
    let mut dechunker: Option<Dechunker> = None;
    let mut body = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut ready = Some(ready);
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("event stream: {e}"),
        };
        let now = t0.elapsed();
        match &mut dechunker {
            Some(dechunker) => dechunker.feed(&buf[..n], &mut body),
            None => {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let headers = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                    assert!(headers.contains("text/event-stream"), "not an event stream");
                    assert!(headers.contains("transfer-encoding: chunked"), "not chunked");
                    let mut fresh = Dechunker::default();
                    fresh.feed(&head[end + 4..], &mut body);
                    dechunker = Some(fresh);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
            }
        }
        let mut consumed = 0;
        while let Some(len) = body[consumed..].windows(2).position(|w| w == b"\n\n") {
            let event = &body[consumed..consumed + len];
            consumed += len + 2;
            record_event(event, &table, now, &mut log);
        }
        body.drain(..consumed);
    }
    log
}

fn record_event(event: &[u8], table: &FrameTable, now: Duration, log: &mut SseLog) {
    let event = String::from_utf8_lossy(event);
    let mut lines = event.lines();
    if lines.next() != Some("event: temperature") {
        return;
    }
    let Some(data) = lines.find_map(|line| line.strip_prefix("data: ")) else { return };
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    let milli = (json["celsius"].as_f64().unwrap_or(-1.0) * 1000.0).round();
    let device = json["device"].as_str().unwrap_or("");
    let id = milli as usize;
    if milli < 0.0 || id >= table.device_of.len() {
        log.unknown += 1;
        return;
    }
    if table.devices[table.device_of[id] as usize] != device {
        log.mismatched += 1;
        return;
    }
    let published = table.published_ns[id].load(Ordering::Relaxed);
    if published == 0 {
        log.unknown += 1;
        return;
    }
    let latency = now.saturating_sub(Duration::from_nanos(published - 1));
    log.latencies.push((id as u32, latency));
}

// ---------------------------------------------------------------------------------------------
// Frames and publishers.

/// Every frame of the run, by id. A frame's temperature in milli-degrees is its id.
struct FrameTable {
    devices: Vec<String>,
    device_of: Vec<u32>,
    /// When the frame was handed to the socket: nanoseconds since the run's start, plus one (0:
    /// not yet).
    published_ns: Vec<AtomicU64>,
}

/// One publisher connection's frames, pre-encoded as MQTT PUBLISH packets, in sending order.
struct Outbox {
    bytes: Vec<u8>,
    /// Per frame: its end in `bytes`, its id, and (steady mode) when it is due after the start.
    frames: Vec<(usize, u32, Duration)>,
}

fn mqtt_remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn mqtt_string(text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
}

/// Appends an MQTT 3.1.1 PUBLISH, QoS 0, not retained.
fn mqtt_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    mqtt_remaining_length(2 + topic.len() + payload.len(), out);
    mqtt_string(topic.as_bytes(), out);
    out.extend_from_slice(payload);
}

/// An MQTT 3.1.1 connection with keep-alive off (so no PINGREQ is ever due), after its CONNACK.
fn mqtt_connect(port: u16, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut variable = Vec::new();
    mqtt_string(b"MQTT", &mut variable);
    variable.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, keep-alive 0
    mqtt_string(client_id.as_bytes(), &mut variable);
    let mut packet = vec![0x10];
    mqtt_remaining_length(variable.len(), &mut packet);
    packet.extend_from_slice(&variable);
    stream.write_all(&packet).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK refused");
    stream
}

/// Generates a key per device, writes the keyring, and seals every frame of both modes.
fn prepare(dir: &Path) -> (Arc<FrameTable>, Vec<Outbox>, Vec<Outbox>) {
    let steady: Vec<String> = (0..STEADY_DEVICES).map(|i| format!("steady-{i:04}")).collect();
    let flood: Vec<String> = (0..FLOOD_DEVICES).map(|i| format!("flood-{i:03}")).collect();
    let devices: Vec<String> = steady.into_iter().chain(flood).collect();
    let mut keyring = Keyring::new();
    let mut codecs = Vec::with_capacity(devices.len());
    for name in &devices {
        let entry =
            KeyEntry::generate(DeviceId::new(name).unwrap(), KeyId(1), Algorithm::Aes128Gcm)
                .unwrap();
        codecs.push(entry.codec());
        keyring.add(entry, false).unwrap();
    }
    keyring.save(&dir.join("keyring.toml")).unwrap();

    let mut device_of = vec![0u32; TOTAL_FRAMES];
    let sensor = SensorName::new("cpu").unwrap();
    let mut seal = |device: usize, sequence: u64, id: usize, out: &mut Vec<u8>| {
        device_of[id] = device as u32;
        let device_id = DeviceId::new(&devices[device]).unwrap();
        let message = Message::Temperature(TemperatureReading {
            sensor: sensor.clone(),
            temperature: MilliCelsius(id as i32),
            uptime: Uptime((sequence * 1000) as u32),
        });
        let mut frame = [0u8; MAX_FRAME_LEN];
        let len = codecs[device]
            .seal(&device_id, SequenceNumber::new(sequence).unwrap(), &message, &mut frame)
            .unwrap();
        let topic = message.topic(&device_id).to_topic_string();
        mqtt_publish(topic.as_str(), &frame[..len], out);
    };

    // Steady: device i sends its round r frame at r seconds + i ms.
    let mut steady_out: Vec<Outbox> =
        (0..PUBLISHERS).map(|_| Outbox { bytes: Vec::new(), frames: Vec::new() }).collect();
    for round in 0..STEADY_SECONDS {
        for device in 0..STEADY_DEVICES {
            let id = round * STEADY_DEVICES + device;
            let outbox = &mut steady_out[device % PUBLISHERS];
            seal(device, round as u64, id, &mut outbox.bytes);
            let due = Duration::from_millis((round * 1000 + device * 1000 / STEADY_DEVICES) as u64);
            outbox.frames.push((outbox.bytes.len(), id as u32, due));
        }
    }
    // Flood: each connection cycles through its devices, sequence numbers going up.
    let mut flood_out: Vec<Outbox> =
        (0..PUBLISHERS).map(|_| Outbox { bytes: Vec::new(), frames: Vec::new() }).collect();
    for sequence in 0..FLOOD_FRAMES_PER_DEVICE {
        for device in 0..FLOOD_DEVICES {
            let id = FLOOD_BASE + sequence * FLOOD_DEVICES + device;
            let outbox = &mut flood_out[device % PUBLISHERS];
            seal(STEADY_DEVICES + device, sequence as u64, id, &mut outbox.bytes);
            outbox.frames.push((outbox.bytes.len(), id as u32, Duration::ZERO));
        }
    }
    let table = FrameTable {
        devices,
        device_of,
        published_ns: (0..TOTAL_FRAMES).map(|_| AtomicU64::new(0)).collect(),
    };
    (Arc::new(table), steady_out, flood_out)
}

/// When a mode's publishers send: steady frames are due `start` plus their offset; flood frames
/// go as fast as the socket takes them until `deadline`.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    deadline: Option<Instant>,
}

/// Sends `outbox` on its own connection, at `pace`. Counts sent frames in `sent`.
fn publish(
    rig: &Rig,
    client_id: String,
    outbox: Outbox,
    pace: Pace,
    sent: Arc<AtomicU64>,
) -> JoinHandle<()> {
    let (port, table, t0) = (rig.port, Arc::clone(&rig.table), rig.t0);
    let Pace { start, deadline } = pace;
    std::thread::spawn(move || {
        let mut stream = mqtt_connect(port, &client_id);
        let stamp = |id: u32| {
            let ns = t0.elapsed().as_nanos() as u64 + 1;
            table.published_ns[id as usize].store(ns, Ordering::Relaxed);
        };
        let mut begin = 0;
        match deadline {
            None => {
                for &(end, id, due) in &outbox.frames {
                    let at = start + due;
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    stamp(id);
                    stream.write_all(&outbox.bytes[begin..end]).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                    begin = end;
                }
            }
            Some(deadline) => {
                for chunk in outbox.frames.chunks(FLOOD_CHUNK) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    for &(_, id, _) in chunk {
                        stamp(id);
                    }
                    let end = chunk.last().map_or(begin, |&(end, _, _)| end);
                    if let Err(error) = stream.write_all(&outbox.bytes[begin..end]) {
                        eprintln!("{client_id}: write failed ({error}); stopping");
                        break;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    begin = end;
                }
            }
        }
        let _ = stream.write_all(&[0xe0, 0]); // DISCONNECT
    })
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What every mode shares: the broker, the frames, the clock, the receivers' counters.
struct Rig {
    port: u16,
    table: Arc<FrameTable>,
    t0: Instant,
    counters: Counters,
    server_pid: u32,
    broker_pid: u32,
}

struct Counters {
    server: SocketAddr,
    sub: Arc<AtomicU64>,
    /// Counts at the start of the run (warm-up messages), subtracted from what is reported.
    sub_base: u64,
}

impl Counters {
    /// `(server accepted, mosquitto_sub received)`.
    fn read(&self) -> (u64, u64) {
        let server = server_stats(self.server).accepted;
        (server, self.sub.load(Ordering::Relaxed) - self.sub_base)
    }
}

struct ModeResult {
    name: &'static str,
    devices: usize,
    published: u64,
    duration: Duration,
    /// Frames each receiver got while the publishers were sending.
    server_in_window: u64,
    sub_in_window: u64,
    /// Frames each receiver got in all, and how long after the start it had them all.
    server_total: u64,
    sub_total: u64,
    server_done: Option<Duration>,
    sub_done: Option<Duration>,
    server_peak_kib: u64,
    broker_peak_kib: u64,
}

/// Runs one mode: steady when `flood` is `None`, else a flood that long. After publishing,
/// waits up to `drain` for both receivers to have every frame.
fn run_mode(
    rig: &Rig,
    name: &'static str,
    devices: usize,
    outboxes: Vec<Outbox>,
    flood: Option<Duration>,
    drain: Duration,
) -> ModeResult {
    let counters = &rig.counters;
    let (server_before, sub_before) = counters.read();
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let pace = Pace { start, deadline: flood.map(|d| start + d) };
    let publishers: Vec<JoinHandle<()>> = outboxes
        .into_iter()
        .enumerate()
        .map(|(i, outbox)| {
            let client_id = format!("ledtemp-bench-{name}-{i}");
            publish(rig, client_id, outbox, pace, Arc::clone(&sent))
        })
        .collect();
    let hard_stop = start + flood.unwrap_or(Duration::from_secs(STEADY_SECONDS as u64)) + WAIT;
    while publishers.iter().any(|p| !p.is_finished()) {
        assert!(Instant::now() < hard_stop, "{name}: publishers did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    for publisher in publishers {
        publisher.join().expect("a publisher failed");
    }
    let end = Instant::now();
    let duration = end - start;
    let (server_end, sub_end) = counters.read();
    let published = sent.load(Ordering::Relaxed);

    let (mut server_done, mut sub_done) = (None, None);
    let (mut server_total, mut sub_total) = (server_end - server_before, sub_end - sub_before);
    let drain_deadline = end + drain;
    loop {
        if server_done.is_none() && server_total >= published {
            server_done = Some(start.elapsed());
        }
        if sub_done.is_none() && sub_total >= published {
            sub_done = Some(start.elapsed());
        }
        if (server_done.is_some() && sub_done.is_some()) || Instant::now() >= drain_deadline {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY / 5);
        let (server, sub) = counters.read();
        (server_total, sub_total) = (server - server_before, sub - sub_before);
    }
    ModeResult {
        name,
        devices,
        published,
        duration,
        server_in_window: server_end - server_before,
        sub_in_window: sub_end - sub_before,
        server_total,
        sub_total,
        server_done,
        sub_done,
        server_peak_kib: memory_kib(rig.server_pid).0,
        broker_peak_kib: memory_kib(rig.broker_pid).0,
    }
}

fn run_bench(mosquitto: &Path) {
    let run_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let (table, steady_out, flood_out) = prepare(dir.path());
    println!(
        "ingest bench: {} devices keyed (AES-128-GCM), {} frames sealed in {:.1} s",
        table.devices.len(),
        TOTAL_FRAMES,
        t0.elapsed().as_secs_f64()
    );

    let nodelay = std::env::var(NODELAY_ENV).as_deref() == Ok("1");
    let mut broker = start_mosquitto(mosquitto, nodelay);
    let port = broker.port();
    println!(
        "mosquitto on 127.0.0.1:{port}: max_queued_messages {MAX_QUEUED_MESSAGES} (default \
         1000), max_inflight_messages {MAX_INFLIGHT_MESSAGES} (no limit; default 20), \
         set_tcp_nodelay {nodelay} (default false; {NODELAY_ENV}=1 sets it), persistence off"
    );
    let (server, http) = start_server(port, dir.path());
    let (idle_peak_kib, _) = memory_kib(server.pid());
    let (sub, sub_count, baseline) = match find_program("mosquitto_sub") {
        Some(binary) => {
            let (sub, count) = start_mosquitto_sub(&binary, port);
            let name = format!("mosquitto_sub (pid {})", sub.pid());
            (Some(sub), count, name)
        }
        None => {
            println!(
                "mosquitto_sub is not installed (apt-get install mosquitto-clients): the \
                     baseline is a rumqttc subscriber instead, in the \"mosquitto_sub\" columns"
            );
            (None, start_rumqttc_sub(port), "a rumqttc subscriber".to_owned())
        }
    };

    // The event stream, open before any frame.
    let stop_events = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let events = {
        let (table, stop) = (Arc::clone(&table), Arc::clone(&stop_events));
        std::thread::spawn(move || read_events(http, table, t0, ready_tx, stop))
    };
    ready_rx.recv_timeout(WAIT).expect("no event stream");

    // Both receivers subscribed: a warm-up message (from an unknown device, so rejected) reaches
    // both.
    let mut warmup = mqtt_connect(port, "ledtemp-bench-warmup");
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = server_stats(http);
        if stats.broker_connected
            && stats.rejected > 0
            && stats.sse_clients > 0
            && sub_count.load(Ordering::Relaxed) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the receivers did not subscribe: {stats:?}");
        let mut packet = Vec::new();
        mqtt_publish("ledtemp/bench-warmup/temp/cpu", &[0u8; 31], &mut packet);
        warmup.write_all(&packet).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = warmup.write_all(&[0xe0, 0]);
    std::thread::sleep(Duration::from_millis(300));
    let rig = Rig {
        port,
        table,
        t0,
        counters: Counters {
            server: http,
            sub: Arc::clone(&sub_count),
            sub_base: sub_count.load(Ordering::Relaxed),
        },
        server_pid: server.pid(),
        broker_pid: broker.pid().unwrap(),
    };
    println!(
        "server (pid {}) on http://{http}, {baseline} subscribed to {TOPIC_FILTER_ALL}",
        server.pid()
    );

    println!("steady: {STEADY_DEVICES} devices at 1 Hz for {STEADY_SECONDS} s ...");
    let steady = run_mode(&rig, "steady", STEADY_DEVICES, steady_out, None, STEADY_DRAIN);
    println!(
        "flood: {FLOOD_DEVICES} devices, as fast as the broker takes, for {} s ...",
        FLOOD_DURATION.as_secs()
    );
    let flood =
        run_mode(&rig, "flood", FLOOD_DEVICES, flood_out, Some(FLOOD_DURATION), FLOOD_DRAIN);
    // Let the last events reach the stream.
    std::thread::sleep(Duration::from_millis(300));
    stop_events.store(true, Ordering::Relaxed);
    let log = events.join().expect("the event reader failed");
    let final_stats = server_stats(http);
    server.stop(WAIT);
    drop(sub);
    broker.stop();
    let dropped_notices = broker.log().lines().filter(|line| line.contains("dropped")).count();

    report(&[steady, flood], &log, idle_peak_kib, final_stats, dropped_notices);
    println!("total run time {:.0} s", run_start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Results.

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rate(frames: u64, d: Duration) -> f64 {
    frames as f64 / d.as_secs_f64()
}

fn report(
    modes: &[ModeResult],
    log: &SseLog,
    idle_peak_kib: u64,
    stats: ServerStats,
    dropped_notices: usize,
) {
    println!();
    println!(
        "| mode | published | mosquitto_sub rate | server rate | server / mosquitto_sub | \
         received in all (sub / server) | SSE events matched | latency p50 | p90 | p99 | p99.9 | \
         max | server peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for mode in modes {
        let range = if mode.name == "steady" { 0..FLOOD_BASE } else { FLOOD_BASE..TOTAL_FRAMES };
        let mut latencies: Vec<Duration> = log
            .latencies
            .iter()
            .filter(|(id, _)| range.contains(&(*id as usize)))
            .map(|&(_, latency)| latency)
            .collect();
        latencies.sort_unstable();
        let sub_rate = rate(mode.sub_in_window, mode.duration);
        let server_rate = rate(mode.server_in_window, mode.duration);
        println!(
            "| {} ({} devices, {:.1} s) | {} ({:.0}/s) | {:.0}/s | {:.0}/s | **{:.2}x** | {} / {} \
             | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
            mode.name,
            mode.devices,
            mode.duration.as_secs_f64(),
            mode.published,
            rate(mode.published, mode.duration),
            sub_rate,
            server_rate,
            server_rate / sub_rate,
            mode.sub_total,
            mode.server_total,
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.9)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 0.999)),
            ms(latencies.last().copied().unwrap_or_default()),
            mode.server_peak_kib as f64 / 1024.0,
        );
    }
    println!();
    for mode in modes {
        let done = |at: Option<Duration>| match at {
            Some(at) => format!(
                "{:.1} s after the start ({:.0}/s)",
                at.as_secs_f64(),
                rate(mode.published, at)
            ),
            None => "not within the drain wait".to_owned(),
        };
        println!(
            "{}: every frame at mosquitto_sub {}, at the server {}; mosquitto peak RSS {:.1} MiB",
            mode.name,
            done(mode.sub_done),
            done(mode.server_done),
            mode.broker_peak_kib as f64 / 1024.0
        );
    }
    println!(
        "server peak RSS after start (keyring loaded, idle): {:.1} MiB",
        idle_peak_kib as f64 / 1024.0
    );
    println!(
        "server counters at the end: accepted {}, rejected {} (the warm-up messages); SSE events \
         naming an unknown frame {}, with the wrong device {}",
        stats.accepted, stats.rejected, log.unknown, log.mismatched
    );
    println!("mosquitto log lines about dropped messages: {dropped_notices}");
}
