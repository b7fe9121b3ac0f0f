//! Runs the Cortex-M4F firmware image (`firmware/`) under QEMU and opens every frame it printed
//! with the host codec, the command its MQTT peer sent the node (sealed in the image with the
//! demo key for the node's session) and the node's confirmation included.
//!
//! Needs the `thumbv7em-none-eabihf` target, `qemu-system-arm` and the firmware's crates (the
//! build runs offline: a test never downloads); without them the test says so on standard error
//! (`SKIPPED ...`, shown by `cargo test`) and passes, unless `LEDTEMP_REQUIRE_QEMU=1` (set by
//! `.ci/run`) makes it fail instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledtemp_core::{
    AesGcmCodec, Codec, LedCommand, LedState, Message, NodeStatus, ReplayWindow, StatusReport,
    Topic,
};

const KEY: &[u8; 16] = b"ledtemp-firmware";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why the image cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target = targets
        .map(|out| {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "thumbv7em-none-eabihf")
        })
        .unwrap_or(false);
    if !has_target {
        return Some("rustup target thumbv7em-none-eabihf is not installed".into());
    }
    let qemu = Command::new("qemu-system-arm").arg("--version").stdout(Stdio::null()).status();
    if !qemu.map(|s| s.success()).unwrap_or(false) {
        return Some("qemu-system-arm is not installed".into());
    }
    None
}

/// Builds the image offline: a test never downloads. `Err` says why it cannot be built here
/// when its crates are not downloaded yet; any other build failure fails the test.
fn build_image() -> Result<PathBuf, String> {
    let target_dir = root().join("target").join("firmware");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--offline", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root().join("firmware"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo build for the firmware");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("--offline") {
        return Err("the firmware's crates are not downloaded (run `cargo fetch --manifest-path \
                    firmware/Cargo.toml` once online)"
            .into());
    }
    assert!(output.status.success(), "firmware build failed:\n{stderr}");
    Ok(target_dir.join("thumbv7em-none-eabihf/release/ledtemp-firmware"))
}

/// Runs the image under QEMU (bounded: one minute), returning its exit status and console.
fn run_image(elf: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("qemu-system-arm")
        .args(["-machine", "mps2-an386", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu-system-arm");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            let out = child.wait_with_output().expect("qemu output");
            return (status.code(), String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the firmware image did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_firmware_image_runs_the_node_under_qemu_and_its_frames_open_on_the_host() {
    let what = "the firmware image under QEMU";
    if let Some(why) = missing_prerequisite() {
        ledtemp_test_support::skip_unless_required("LEDTEMP_REQUIRE_QEMU", what, &why);
        return;
    }
    let elf = match build_image() {
        Ok(elf) => elf,
        Err(why) => {
            ledtemp_test_support::skip_unless_required("LEDTEMP_REQUIRE_QEMU", what, &why);
            return;
        }
    };
    let (status, console) = run_image(&elf);
    assert_eq!(status, Some(0), "image exited with {status:?}; console:\n{console}");

    let codec = AesGcmCodec::from_key_bytes(ledtemp_core::KeyId(1), KEY).unwrap();
    let mut window = ReplayWindow::new();
    let mut will = None;
    let mut command = None;
    let mut messages = Vec::new();
    let mut sequences = Vec::new();
    for line in console.lines() {
        let mut words = line.split(' ');
        let (Some(tag @ ("FRAME" | "WILL" | "COMMAND")), Some(topic), Some(hex)) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let topic = Topic::parse(topic).unwrap();
        let frame = hex::decode(hex).unwrap();
        let opened = codec.open(&topic, &frame).unwrap_or_else(|e| panic!("{line}: {e}"));
        if tag == "WILL" {
            will = Some(opened);
            continue;
        }
        if tag == "COMMAND" {
            assert_eq!(frame.len(), 36, "a command frame is 36 bytes");
            command = Some((opened, messages.len()));
            continue;
        }
        window.accept_frame(&opened).unwrap();
        sequences.push(opened.header.sequence.get());
        messages.push(opened.message);
    }

    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "sequence numbers rise: {sequences:?}");
    assert!(
        matches!(&messages[0], Message::Status(StatusReport { status: NodeStatus::Online { leds }, .. }) if leds.len() == 1),
        "online status with the LED first: {:?}",
        messages[0]
    );
    let leds: Vec<LedState> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Led(change) => Some(change.state),
            _ => None,
        })
        .collect();
    assert!(leds.len() >= 3, "presses every 700 ms for 3.5 s: {leds:?}");

    // The command, for the session of the online status: LED on. The node applied it (its LED
    // frame after the command confirms "on", before the first press at 700 ms toggled it back)
    // and refused the replay.
    let (command, after) = command.expect("the peer sent a command");
    let Message::Command(LedCommand { state, session, .. }) = &command.message else {
        panic!("not a command: {command:?}");
    };
    assert_eq!((*state, session.get()), (LedState::On, sequences[0]), "for the online session");
    let confirmation = messages[after..].iter().find_map(|m| match m {
        Message::Led(change) => Some(change.state),
        _ => None,
    });
    assert_eq!(confirmation, Some(LedState::On), "the confirmation opens and says on");
    assert_eq!(leds[0], LedState::On, "the command's change comes first");
    let applied = console.find("COMMAND applied").expect("applied");
    assert!(console[applied..].contains("LED red on"), "the LED was driven: {console}");
    assert!(console.contains("COMMAND refused"), "the replay was refused: {console}");
    assert!(console.contains("STAT commands_applied 1"), "{console}");
    assert!(console.contains("STAT commands_refused 1"), "{console}");
    assert!(leds.windows(2).all(|w| w[0] != w[1]), "each press toggles: {leds:?}");
    let temperatures: Vec<i32> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Temperature(t) => Some(t.temperature.0),
            _ => None,
        })
        .collect();
    assert!((3..=5).contains(&temperatures.len()), "one a second: {temperatures:?}");
    assert!(temperatures.iter().all(|t| (19_000..24_000).contains(t)), "{temperatures:?}");

    // The will opens, and is accepted as this connection's will even after the stream.
    let will = will.expect("the image printed its Last Will");
    assert!(matches!(
        will.message,
        Message::Status(StatusReport { status: NodeStatus::Offline, .. })
    ));
    assert_eq!(will.header.sequence.get(), sequences[0] + 1);
    window.accept_frame(&will).unwrap();
    assert!(console.contains("STAT frames_dropped 0"), "{console}");
    for line in console.lines().filter(|l| l.starts_with("RAM ")) {
        eprintln!("{line}");
    }
    // Node RAM (docs/performance.md): node with its cipher, driver, MQTT buffers and mailbox.
    let ram = |part: &str| -> u64 {
        let line = console.lines().find(|l| l.starts_with(&format!("RAM {part} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let node_ram: u64 =
        ["node", "driver", "mqtt_buffers", "mqtt_mailbox"].into_iter().map(ram).sum();
    assert!(node_ram <= 4096, "node RAM {node_ram} B is over 4 KiB");
}
