//! `examples/rpi_node.rs` as a user runs it: `--simulate` against a real broker, and the errors a
//! user meets first (a missing config field, a key file others can read).
//!
//! The binary under test is the example cargo built for this test run. `.ci/run` runs the same
//! test once more with `LEDTEMP_RPI_NODE_BIN` pointing at the aarch64 build and
//! `LEDTEMP_RPI_NODE_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"`, so the binary a user copies
//! to a Pi is known to start and publish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ledtemp_core::{Algorithm, LedState, Message, NodeStatus, StatusReport};
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::mqtt::{FrameChecker, Subscriber};

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
                Message::Status(_) => {}
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
