//! `examples/rpi_node.rs` as a user runs it: `--simulate` against a real broker, a sealed command
//! applied and confirmed (and its replay ignored), a stop with
//! SIGTERM as systemd sends it (offline status, DISCONNECT, no Last Will, no sequence number
//! reused after a restart), and the errors a user meets first (a missing config field, a key
//! file others can read, a broker it cannot reach).
//!
//! The binary under test is the example cargo built for this test run. `.ci/run` runs the same
//! test once more with `LEDTEMP_RPI_NODE_BIN` pointing at the aarch64 build and
//! `LEDTEMP_RPI_NODE_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"`, so the binary a user copies
//! to a Pi is known to start and publish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use ledtemp_core::{
    Algorithm, AnyCodec, Codec, DeviceId, LedCommand, LedName, LedState, MAX_FRAME_LEN, Message,
    NodeStatus, SHUTDOWN_TIMEOUT, SequenceNumber, StatusReport, Uptime,
};
use ledtemp_test_support::WAIT;
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::mqtt::{Checked, FrameChecker, Received, Subscriber};
use ledtemp_test_support::net::free_port;
use ledtemp_web::{IncomingFrame, KeyTable, Pipeline, PipelineOptions, UnixMillis};

const DEVICE: &str = "sim-pi";

/// The example binary, and the command to run it with (empty, or an emulator).
fn node_command() -> Command {
    let binary = std::env::var_os("LEDTEMP_RPI_NODE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        // target/debug/deps/<this test> -> target/debug/examples/rpi_node
        let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        deps.parent().unwrap().join("examples").join("rpi_node")
    });
    assert!(binary.exists(), "{} missing: build the example first", binary.display());
    let runner = std::env::var("LEDTEMP_RPI_NODE_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut command = match words.next() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.args(words).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    command.env("RUST_LOG", "info");
    command
}

/// A key file and a config file for the broker on `port`, in `dir`.
fn provision(dir: &Path, port: u16) -> (TempKeyring, PathBuf) {
    let keys = TempKeyring::generate(&[(DEVICE, Algorithm::ChaCha20Poly1305)]);
    keys.write_key_file(DEVICE, &dir.join("node.key"));
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
key_file = "node.key"
state_dir = "state"
period_ms = 500

[broker]
host = "127.0.0.1"
port = {port}

[[led]]
name = "red"
pin = 17
button_pin = 27

[[sensor]]
name = "cpu"
kind = "thermal-zone"
"#
        ),
    )
    .unwrap();
    (keys, config)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_publishes_sealed_frames_that_open_with_the_configured_key() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys, config) = provision(dir.path(), broker.port);
    let mut subscriber = Subscriber::start(broker.port).await;

    let node = node_command()
        .args(["--simulate", "--press-every", "1", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = KillOnDrop(node);

    let mut checker = FrameChecker::new(keys.codec(DEVICE));
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut leds, mut temperatures) = (0, 0);
    while leds < 3 || temperatures < 3 {
        assert!(tokio::time::Instant::now() < deadline, "too few frames: {messages:?}");
        let Some(received) = subscriber.next(Duration::from_secs(20)).await else {
            panic!("no frame within 20 s; so far: {messages:?}");
        };
        for name in [DEVICE.as_bytes(), b"red", b"cpu"] {
            assert!(
                !received.payload.windows(name.len()).any(|w| w == name),
                "plain text in a frame on {}",
                received.topic
            );
        }
        if let Some(checked) = checker.check(&received) {
            match &checked.message {
                Message::Led(_) => leds += 1,
                Message::Temperature(_) => temperatures += 1,
                Message::Status(_) | Message::Command(_) => {}
            }
            messages.push(checked.message);
        }
    }
    assert!(
        matches!(
            &messages[0],
            Message::Status(StatusReport { status: NodeStatus::Online { .. }, .. })
        ),
        "online status first: {messages:?}"
    );
    let states: Vec<LedState> = messages
        .iter()
        .filter_map(|m| if let Message::Led(l) = m { Some(l.state) } else { None })
        .collect();
    assert!(states.windows(2).all(|w| w[0] != w[1]), "each press toggles: {states:?}");
    // The sequence store was written before the first frame left.
    assert!(dir.path().join("state").read_dir().unwrap().next().is_some());
}

fn run_to_exit(args: &[&str], config: &Path) -> Output {
    node_command().args(args).arg("--config").arg(config).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_missing_config_field_is_named_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "state_dir = \"s\"\n[broker]\nhost = \"127.0.0.1\"\n").unwrap();
    let output = run_to_exit(&["--simulate"], &config);
    let stderr = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key_file"), "{stderr}");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = provision(dir.path(), 1);
    std::fs::set_permissions(dir.path().join("node.key"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let output = run_to_exit(&["--simulate"], &config);
    let stderr = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key_file"), "{stderr}");
}

/// The node binary running with `--simulate --press-every 1`, its output (tracing writes to
/// stdout) in `node.log` in `dir`; killed when dropped.
struct RunningNode {
    child: KillOnDrop,
    log: PathBuf,
}

impl RunningNode {
    fn start(dir: &Path, config: &Path) -> RunningNode {
        RunningNode::start_pressing_every(dir, config, 1)
    }

    /// With the scripted button pressed every `seconds`.
    fn start_pressing_every(dir: &Path, config: &Path, seconds: u64) -> RunningNode {
        let log = dir.join("node.log");
        let out = File::options().create(true).append(true).open(&log).unwrap();
        let child = node_command()
            .args(["--simulate", "--press-every", &seconds.to_string(), "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        RunningNode { child: KillOnDrop(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as `systemctl stop` does.
    fn terminate(&self) {
        let status =
            Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_offline(message: &Message) -> bool {
    matches!(message, Message::Status(StatusReport { status: NodeStatus::Offline, .. }))
}

fn is_online(message: &Message) -> bool {
    matches!(message, Message::Status(StatusReport { status: NodeStatus::Online { .. }, .. }))
}

/// Everything the subscriber got, raw and opened, until `done` says so; panics after [`WAIT`].
async fn collect(
    subscriber: &mut Subscriber,
    checker: &mut FrameChecker<AnyCodec>,
    frames: &mut Vec<(Received, Option<Checked>)>,
    mut done: impl FnMut(&[(Received, Option<Checked>)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(frames) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = subscriber.next(left).await else {
            panic!("timed out; frames so far: {frames:#?}");
        };
        let checked = checker.check(&received);
        frames.push((received, checked));
    }
}

/// Publishes `frame` on `topic` at QoS 1 as the server does, and waits for the broker's PUBACK.
async fn publish_as_server(port: u16, topic: &str, frame: &[u8]) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("ledtemp-test-server", "127.0.0.1", port), 10);
    client.publish(topic, QoS::AtLeastOnce, false, frame.to_vec()).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while !matches!(events.poll().await.unwrap(), Event::Incoming(Packet::PubAck(_))) {}
    })
    .await
    .expect("the broker acknowledges the command");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}

/// Waits until the node's log holds `text`; panics after [`WAIT`].
async fn log_shows(node: &RunningNode, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !node.log().contains(text) {
        assert!(tokio::time::Instant::now() < deadline, "no {text:?} in the log:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_applies_a_sealed_command_confirms_it_and_ignores_a_replay() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys, config) = provision(dir.path(), broker.port);
    let mut subscriber = Subscriber::start(broker.port).await;
    // No press during the test: only the command moves the LED.
    let node = RunningNode::start_pressing_every(dir.path(), &config, 3_600);

    // The node's session: the sequence number of its online status.
    let mut checker = FrameChecker::new(keys.codec(DEVICE));
    let mut frames = Vec::new();
    collect(&mut subscriber, &mut checker, &mut frames, |f| {
        f.iter().any(|(_, c)| c.as_ref().is_some_and(|c| is_online(&c.message)))
    })
    .await;
    let (session, uptime) = frames
        .iter()
        .filter_map(|(_, c)| c.as_ref())
        .find_map(|c| match &c.message {
            Message::Status(status) if is_online(&c.message) => Some((c.sequence, status.uptime)),
            _ => None,
        })
        .unwrap();
    log_shows(&node, "LED red off").await;

    // The server's command, sealed with the device's key for that session.
    let device = DeviceId::new(DEVICE).unwrap();
    let command = Message::Command(LedCommand {
        led: LedName::new("red").unwrap(),
        state: LedState::On,
        session: SequenceNumber::new(session).unwrap(),
        // As the server does: the node's clock as last seen, plus a wait well within
        // MAX_COMMAND_LIFETIME (a node refuses an expiry further ahead).
        expires: Uptime(uptime.0 + 30_000),
    });
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = keys
        .codec(DEVICE)
        .seal(&device, SequenceNumber::new(1).unwrap(), &command, &mut buf)
        .unwrap();
    let (topic, frame) = (command.topic(&device).to_string(), buf[..len].to_vec());
    assert_eq!(topic, "ledtemp/sim-pi/cmd/red");
    publish_as_server(broker.port, &topic, &frame).await;

    // The LED turns on, and the confirmation opens with the device's key.
    log_shows(&node, "LED red on").await;
    let confirmed = |f: &[(Received, Option<Checked>)]| {
        f.iter()
            .filter_map(|(_, c)| c.as_ref())
            .filter(|c| c.topic == "ledtemp/sim-pi/led/red")
            .any(|c| matches!(&c.message, Message::Led(l) if l.state == LedState::On))
    };
    let mut device_frames = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !confirmed(&device_frames) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let received = subscriber.next(left).await.expect("the confirmation LED frame");
        if received.topic.contains("/cmd/") {
            continue; // the command itself, which the subscriber sees too
        }
        let checked = checker.check(&received);
        device_frames.push((received, checked));
    }
    assert!(node.log().contains("command on ledtemp/sim-pi/cmd/red applied: LED on (changed)"));

    // The same frame again: refused, nothing driven, nothing confirmed.
    publish_as_server(broker.port, &topic, &frame).await;
    log_shows(&node, "command on \"ledtemp/sim-pi/cmd/red\" refused").await;
    while let Some(received) = subscriber.next(Duration::from_millis(500)).await {
        assert_ne!(received.topic, "ledtemp/sim-pi/led/red", "a replay sent an LED frame");
    }
    assert_eq!(node.log().matches("LED red on").count(), 1, "{}", node.log());
}

/// The server's ingest pipeline, on a database in `dir`, with the keys of `keys`.
fn server_pipeline(dir: &Path, keys: &TempKeyring) -> Pipeline {
    let options =
        PipelineOptions { database: dir.join("ledtemp.db").into(), ..PipelineOptions::default() };
    Pipeline::open(&options, KeyTable::from_keyring(keys.keyring())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_the_queue_and_the_offline_status_then_disconnects_without_a_will() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys, config) = provision(dir.path(), broker.port);
    let mut subscriber = Subscriber::start(broker.port).await;
    let mut checker = FrameChecker::new(keys.codec(DEVICE));
    let mut node = RunningNode::start(dir.path(), &config);

    // Running: the online status and a few presses.
    let mut frames = Vec::new();
    collect(&mut subscriber, &mut checker, &mut frames, |frames| {
        let leds = frames
            .iter()
            .filter(|(_, c)| matches!(c, Some(c) if matches!(c.message, Message::Led(_))));
        leds.count() >= 2
    })
    .await;

    node.terminate();
    collect(&mut subscriber, &mut checker, &mut frames, |frames| {
        frames.iter().any(|(_, c)| matches!(c, Some(c) if is_offline(&c.message)))
    })
    .await;
    let status = node.exit_within(SHUTDOWN_TIMEOUT + Duration::from_secs(5)).await;
    let log = node.log();
    assert!(status.is_some_and(|s| s.success()), "exit {status:?} after SIGTERM:\n{log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("offline status published, disconnected from the MQTT broker"), "{log}");

    // No Last Will afterwards: the broker would publish it at once (no will delay); give it
    // time, then count every status frame that arrived, byte copies included.
    while let Some(received) = subscriber.next(Duration::from_millis(1_500)).await {
        let checked = checker.check(&received);
        frames.push((received, checked));
    }
    let statuses: Vec<&Received> = frames
        .iter()
        .map(|(received, _)| received)
        .filter(|r| r.topic == format!("ledtemp/{DEVICE}/status"))
        .collect();
    assert_eq!(statuses.len(), 2, "the online status and the offline status, once: {frames:#?}");
    assert_eq!(checker.duplicates, 0, "nothing arrived twice");

    let checked: Vec<&Checked> = frames.iter().filter_map(|(_, c)| c.as_ref()).collect();
    let offline = checked.last().unwrap();
    assert!(is_offline(&offline.message), "the offline status comes last: {checked:#?}");
    let online = checked.iter().find(|c| is_online(&c.message)).unwrap();
    assert_eq!(offline.sequence, online.sequence + 1, "the offline status is the will's number");
    // Every LED change the node made (it logs each; the first line drives the LED off at start)
    // arrived, before the offline status.
    let toggles = log.matches("LED red on").count() + log.matches("LED red off").count() - 1;
    let led_frames = checked.iter().filter(|c| matches!(c.message, Message::Led(_))).count();
    assert_eq!(led_frames, toggles, "{log}");

    // The server takes every frame, the offline status as this connection's will (not as a
    // stale will or a replay), and shows the device offline.
    let db = tempfile::tempdir().unwrap();
    let mut pipeline = server_pipeline(db.path(), &keys);
    for (received, _) in &frames {
        let frame = IncomingFrame {
            topic: received.topic.as_bytes().to_vec(),
            payload: received.payload.clone(),
            received: UnixMillis::now(),
            retained: received.retained,
            duplicate: false,
        };
        if let Err(error) = pipeline.ingest.handle(frame) {
            panic!("the server refused a frame on {}: {error}", received.topic);
        }
    }
    let device = pipeline.state.live.device(&keys.entry(DEVICE).device).unwrap();
    assert!(!device.online, "{device:?}");
}

/// The highest sequence number of every frame opened so far.
fn highest(frames: &[(Received, Option<Checked>)]) -> u64 {
    frames.iter().filter_map(|(_, c)| c.as_ref().map(|c| c.sequence)).max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigterm_and_a_restart_sequence_numbers_continue_above_every_one_used() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys, config) = provision(dir.path(), broker.port);
    let mut subscriber = Subscriber::start(broker.port).await;
    let mut checker = FrameChecker::new(keys.codec(DEVICE));

    let mut used = 0;
    for run in 0..2 {
        let mut node = RunningNode::start(dir.path(), &config);
        let mut frames = Vec::new();
        collect(&mut subscriber, &mut checker, &mut frames, |frames| frames.len() >= 3).await;
        let first = frames.iter().filter_map(|(_, c)| c.as_ref()).map(|c| c.sequence).min();
        if run > 0 {
            assert!(first > Some(used), "run {run} starts at {first:?}, at or below {used}");
        }
        node.terminate();
        collect(&mut subscriber, &mut checker, &mut frames, |frames| {
            frames.iter().any(|(_, c)| matches!(c, Some(c) if is_offline(&c.message)))
        })
        .await;
        let status = node.exit_within(SHUTDOWN_TIMEOUT + Duration::from_secs(5)).await;
        assert!(status.is_some_and(|s| s.success()), "run {run}: {status:?}\n{}", node.log());
        used = used.max(highest(&frames));
        // What the store holds after the stop covers every number used (the will's too).
        let file = dir.path().join("state").join(format!("{DEVICE}.key1.seq"));
        let text = std::fs::read_to_string(file).unwrap();
        let mark = ledtemp_rpi::parse_sequence_file(text.as_bytes()).unwrap();
        assert!(mark > used, "run {run}: stored mark {mark}, numbers used up to {used}");
    }
    assert_eq!(checker.duplicates, 0, "no number arrived twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_named_in_plain_words_and_sigterm_still_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let (_keys, config) = provision(dir.path(), port);
    let mut node = RunningNode::start(dir.path(), &config);

    let expected = format!("cannot reach the MQTT broker at 127.0.0.1:{port}: ");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !node.log().contains(&expected) {
        assert!(tokio::time::Instant::now() < deadline, "no {expected:?} in:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = node.log();
    let line = log.lines().find(|line| line.contains(&expected)).unwrap();
    assert!(line.contains("refused"), "the operating system's reason: {line}");
    assert!(line.contains("next attempt in "), "{line}");
    assert!(!log.contains("Os {") && !log.contains("Connect("), "Rust debug output: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a pipe: {log}");

    node.terminate();
    let status = node.exit_within(SHUTDOWN_TIMEOUT + Duration::from_secs(5)).await;
    let log = node.log();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(
        log.contains(&format!("without reaching the MQTT broker at 127.0.0.1:{port}")),
        "{log}"
    );
}
