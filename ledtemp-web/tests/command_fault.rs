//! An LED command when the server is killed (`kill -9`) while it waits for the device: the
//! command was logged before it went out, so the log still shows it (`sent`) after the restart,
//! and the restarted server numbers its next command from a new block, never reusing a number
//! (a nonce) of the killed one. Runs `ledtemp-web serve` as a process against a real broker
//! (Mosquitto when present, `LEDTEMP_REQUIRE_MOSQUITTO=1` makes it mandatory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use ledtemp_core::{Algorithm, AnyCodec};
use ledtemp_test_support::delivery::ServerProcess;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_web::COMMAND_SEQUENCE_BLOCK;
use serde_json::Value;
use support::broker::TestBroker;
use support::*;

const DEVICE: &str = "kitchen-pi";

/// The command log, newest first.
async fn command_log(http: SocketAddr) -> Vec<Value> {
    let (status, log) = get_json(http, "/api/commands").await;
    assert_eq!(status, 200, "{log}");
    log.as_array().unwrap().clone()
}

/// `POST /api/devices/kitchen-pi/leds/red` as a same-origin script: the status and body, or
/// `None` when the connection ended without an answer.
async fn switch_red(http: SocketAddr, on: bool) -> Option<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/api/devices/{DEVICE}/leds/red"))
        .header("origin", format!("http://{http}"))
        .json(&serde_json::json!({ "on": on }))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// A device that goes online and reports one temperature, then never answers a command: its
/// frames, sealed with `codec` from sequence number `first`.
async fn silent_device(publisher: &RawPublisher, codec: &AnyCodec, first: u64) {
    for (sequence, message) in
        [(first, online(&[("red", false)])), (first + 2, temperature("cpu", 21_000))]
    {
        let (topic, frame) = seal(codec, DEVICE, sequence, &message);
        publisher.publish(&topic, &frame).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_logged_before_a_kill_stays_logged_and_numbers_go_on_from_a_new_block() {
    let broker = TestBroker::start().await;
    let keyring = TempKeyring::generate(&[(DEVICE, Algorithm::ChaCha20Poly1305)]);
    let codec = keyring.codec(DEVICE);
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        ("--broker", OsString::from(format!("127.0.0.1:{}", broker.port))),
        ("--client-id", "command-fault".into()),
        ("--database", dir.path().join("ledtemp.db").into_os_string()),
        ("--keyring", keyring.path().into_os_string()),
    ];
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ledtemp-web"));
    let mut server = ServerProcess::spawn(binary, flags).await;
    let http = server.http();
    let publisher = RawPublisher::connect(broker.port, DEVICE).await;
    silent_device(&publisher, &codec, 0).await;
    eventually("the device online with its LED", || async {
        let (_, devices) = get_json(http, "/api/devices").await;
        (devices[0]["online"] == true && devices[0]["leds"][0]["led"] == "red").then_some(())
    })
    .await;

    // The command goes out and waits for a confirmation that never comes; meanwhile the log
    // already has it.
    let waiting = tokio::spawn(switch_red(http, true));
    let entry = eventually("the command logged as sent", || async {
        command_log(http).await.first().filter(|e| e["outcome"] == "sent").cloned()
    })
    .await;
    assert_eq!((entry["led"].as_str(), entry["on"].as_bool()), (Some("red"), Some(true)));
    let first = entry["sequence"].as_u64().unwrap();
    server.kill();
    assert_eq!(waiting.await.unwrap(), None, "a killed server answers nothing");

    server.start().await;
    assert_eq!(
        command_log(http).await,
        std::slice::from_ref(&entry),
        "the entry survived the kill"
    );
    // A restarted server knows the device's clock only from its next frame.
    assert_eq!(switch_red(http, false).await.unwrap().0, 409);
    silent_device(&publisher, &codec, 1024).await;
    eventually("a frame of the new session", || async {
        let (_, stats) = get_json(http, "/api/stats").await;
        (stats["accepted"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let (status, answer) = switch_red(http, false).await.unwrap();
    assert_eq!(status, 504, "nobody confirms: {answer}");
    assert_eq!(answer["outcome"], "timed_out");
    let next = answer["sequence"].as_u64().unwrap();
    assert!(next >= first + COMMAND_SEQUENCE_BLOCK, "{next} is in the killed server's block");
    let log = command_log(http).await;
    let outcomes: Vec<&str> = log.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["timed_out", "not_sent", "sent"]);
    server.terminate().await;
}
