//! `examples/attack.rs` as a student runs it, against a real broker (mosquitto; see
//! `TestBroker`), a real `ledtemp-web` server (on a SQLite file, and the sealed suite on
//! PostgreSQL too) and a genuine node publishing:
//!
//! - sealed (the default): sniff reads nothing, every forgery, replay (also after a server
//!   restart on the same database) and flood frame is refused and counted exactly, and the
//!   dashboard shows nothing the attacker sent;
//! - the `--insecure-plaintext` target: the same attacks succeed (which proves these tests can
//!   fail), and the device cap stops the flood of invented devices.
//!
//! The binary under test is the example cargo built for this test run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ledtemp_core::{
    Algorithm, AnyCodec, InsecurePlaintextCodec, KeyId, MilliCelsius, NodeConfig, SealedOrPlaintext,
};
use ledtemp_test_support::WAIT;
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::node::{NodeThread, SimulatedNode};
use ledtemp_test_support::on_both_backends;
use ledtemp_test_support::postgres::{Backend, BackendDatabase};
use ledtemp_test_support::server::{resolve, serve_args};
use ledtemp_web::{KeyTable, ServeArgs, Server};
use serde_json::Value;

/// The genuine node.
const NODE: &str = "sim-node";
/// A second keyring device that never publishes (a target for a frame moved to another device).
const SPARE: &str = "spare";
/// The server's device cap in these tests.
const MAX_DEVICES: usize = 10;
/// Flood sizes.
const JUNK: u64 = 100;
const OVERSIZE: u64 = 10;
const INVENTED: u64 = 30;

/// The example binary: target/debug/deps/<this test> -> target/debug/examples/attack.
fn attack_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let binary = deps.parent().unwrap().join("examples").join("attack");
    assert!(binary.exists(), "{} missing: build the example first", binary.display());
    binary
}

/// Broker, server, genuine node and database, in plaintext or sealed mode.
struct Rig {
    broker: TestBroker,
    dir: tempfile::TempDir,
    database: BackendDatabase,
    insecure: bool,
    keyring: Option<TempKeyring>,
    server: Option<Server>,
    http: reqwest::Client,
    node: Option<NodeThread>,
}

impl Rig {
    /// `None`: `backend` is PostgreSQL, which cannot be reached here (the test is skipped).
    async fn start(insecure: bool, backend: Backend) -> Option<Rig> {
        let dir = tempfile::tempdir().unwrap();
        let database = backend.database(dir.path())?;
        let broker = TestBroker::start().await;
        let keyring = TempKeyring::generate(&[
            (NODE, Algorithm::ChaCha20Poly1305),
            (SPARE, Algorithm::ChaCha20Poly1305),
        ]);
        let codec = if insecure {
            SealedOrPlaintext::InsecurePlaintext(InsecurePlaintextCodec::new(KeyId(1)))
        } else {
            SealedOrPlaintext::Sealed(keyring.codec(NODE))
        };
        let mut rig = Rig {
            broker,
            dir,
            database,
            insecure,
            // The plaintext server takes any device and reads no keyring (as `serve` does).
            keyring: (!insecure).then_some(keyring),
            server: None,
            http: reqwest::Client::new(),
            node: None,
        };
        rig.start_server().await;
        rig.start_node(codec);
        rig.wait_until("the genuine node's first readings", |stats, devices| {
            stats["accepted"].as_u64().unwrap() >= 3
                && device(devices, NODE)
                    .is_some_and(|d| !d["temperatures"].as_array().unwrap().is_empty())
        })
        .await;
        Some(rig)
    }

    async fn start_server(&mut self) {
        let mut config = resolve(ServeArgs {
            max_devices: Some(MAX_DEVICES),
            insecure_plaintext: self.insecure,
            ..serve_args(self.dir.path(), self.broker.port)
        });
        config.pipeline.database = self.database.database().clone();
        let keys = self
            .keyring
            .as_ref()
            .map_or_else(KeyTable::new, |keyring| KeyTable::from_keyring(keyring.keyring()));
        self.server = Some(Server::start(config, keys).await.unwrap());
        self.wait_until("the server's subscription", |stats, _| {
            stats["broker_connected"].as_bool() == Some(true)
        })
        .await;
        // Let the broker's retained LED and status frames (counted as replays by a restarted
        // sealed server) arrive before any counter is read.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn restart_server(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        self.start_server().await;
    }

    /// The genuine node: a button pressed every second, a reading every 250 ms.
    fn start_node(&mut self, codec: SealedOrPlaintext<AnyCodec>) {
        let node = SimulatedNode {
            config: NodeConfig {
                temperature_period: Duration::from_millis(250),
                ..NodeConfig::default()
            },
            press_every: Duration::from_secs(1),
            base: MilliCelsius(21_000),
            ..SimulatedNode::new(NODE, codec)
        };
        let broker = self.broker.address(NODE);
        self.node = Some(NodeThread::spawn(move || node.run(broker)));
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().http_addr())
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url())).send().await.unwrap().json().await.unwrap()
    }

    async fn observe(&self) -> (Value, Value) {
        (self.get("/api/stats").await, self.get("/api/devices").await)
    }

    async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&Value, &Value) -> bool,
    ) -> (Value, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (stats, devices) = self.observe().await;
            if done(&stats, &devices) {
                return (stats, devices);
            }
            assert!(tokio::time::Instant::now() < deadline, "waited in vain for {what}: {stats}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the attack example with `args`; returns its summary line, parsed.
    /// `flood` with the test's numbers; the server must stay healthy and keep taking the
    /// genuine node's frames.
    async fn flood(&self) {
        let (junk, oversize, devices) =
            (JUNK.to_string(), OVERSIZE.to_string(), INVENTED.to_string());
        let flood = self
            .attack(&["flood", "--junk", &junk, "--oversize", &oversize, "--devices", &devices])
            .await;
        assert_eq!(flood["healthz"], 200, "{flood}");
        assert_eq!(flood["genuine_accepted_after"], true, "{flood}");
    }

    async fn attack(&self, args: &[&str]) -> Value {
        let mut command = Command::new(attack_binary());
        command
            .args(["--broker", &format!("127.0.0.1:{}", self.broker.port)])
            .args(["--server", &self.url(), "--settle", "0.5"])
            .args(args)
            .env_remove("LEDTEMP_TOKEN")
            .env_remove("LEDTEMP_BROKER");
        let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "attack {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary = stdout
            .lines()
            .find_map(|line| line.strip_prefix("summary: "))
            .unwrap_or_else(|| panic!("no summary in: {stdout}"));
        serde_json::from_str(summary).unwrap()
    }

    fn record_file(&self) -> String {
        self.dir.path().join("recorded.jsonl").display().to_string()
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

fn device<'a>(devices: &'a Value, id: &str) -> Option<&'a Value> {
    devices.as_array().unwrap().iter().find(|d| d["id"] == id)
}

fn ids(devices: &Value) -> Vec<String> {
    devices.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect()
}

fn names(device: &Value, list: &str, field: &str) -> Vec<String> {
    device[list].as_array().unwrap().iter().map(|x| x[field].as_str().unwrap().to_owned()).collect()
}

fn count(stats: &Value, reason: &str) -> u64 {
    if reason == "accepted" {
        return stats["accepted"].as_u64().unwrap();
    }
    stats["rejected"][reason].as_u64().unwrap()
}

/// How much each of `reasons` grew from `before` to `after`.
fn grew(before: &Value, after: &Value, reasons: &[&str]) -> Vec<u64> {
    reasons.iter().map(|r| count(after, r) - count(before, r)).collect()
}

/// Waits until the rejection counters grew by at least `expected`, then a little longer, and
/// returns the final growth of every reason (so that extra rejections show as a mismatch).
async fn rejections_after(
    rig: &Rig,
    before: &Value,
    expected: &[(&str, u64)],
) -> Vec<(String, u64)> {
    rig.wait_until("the attack's rejections", |stats, _| {
        expected.iter().all(|(reason, n)| count(stats, reason) - count(before, reason) >= *n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, _) = rig.observe().await;
    let reasons =
        ["bad_tag", "replay", "unknown_device", "malformed", "oversize", "revoked", "limit"];
    reasons
        .iter()
        .zip(grew(before, &after, &reasons))
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| ((*r).to_owned(), n))
        .collect()
}

fn expect(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut pairs: Vec<(String, u64)> = pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect();
    let order =
        ["bad_tag", "replay", "unknown_device", "malformed", "oversize", "revoked", "limit"];
    pairs.sort_by_key(|(r, _)| order.iter().position(|o| o == r));
    pairs
}

/// Readings, LED and sensor names per device: what the attacker must not change (values of the
/// genuine node move on, so only names and the set of devices are compared, plus the forged
/// temperature, which the genuine node never reports).
fn shape(devices: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                names(d, "leds", "led"),
                names(d, "temperatures", "sensor"),
            )
        })
        .collect()
}

fn shows_forged_value(devices: &Value) -> bool {
    devices.as_array().unwrap().iter().any(|d| {
        d["temperatures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| (t["celsius"].as_f64().unwrap() - 66.6).abs() < 1e-6)
    })
}

async fn every_attack_fails_against_sealed_frames_and_changes_nothing(backend: Backend) {
    let started = std::time::Instant::now();
    let Some(mut rig) = Rig::start(false, backend).await else { return };
    let (_, devices) = rig.observe().await;
    let shape_before = shape(&devices);

    // Eavesdropping: headers only.
    let sniff = rig.attack(&["sniff", "--seconds", "2"]).await;
    assert!(sniff["total"].as_u64().unwrap() >= 4, "{sniff}");
    assert_eq!(sniff["readable"], 0, "{sniff}");
    assert_eq!(sniff["read"], serde_json::json!([]));

    // Forged readings: guessed key, plaintext, flipped byte, moved topic, moved device, unknown
    // device. Each is refused and counted under its reason.
    let (before, _) = rig.observe().await;
    let poison = rig.attack(&["poison", "--device", NODE]).await;
    assert_eq!(poison["sent"], 6);
    let grown =
        rejections_after(&rig, &before, &[("bad_tag", 4), ("malformed", 1), ("unknown_device", 1)])
            .await;
    assert_eq!(grown, expect(&[("bad_tag", 4), ("malformed", 1), ("unknown_device", 1)]));
    assert_eq!(poison["dashboard_changes"], serde_json::json!([]), "{poison}");
    let (_, devices) = rig.observe().await;
    assert_eq!(shape(&devices), shape_before);
    assert!(!shows_forged_value(&devices));

    // Replay, across a server restart on the same database.
    let record = rig.attack(&["replay", "--record", &rig.record_file(), "--seconds", "2"]).await;
    let recorded = record["recorded"].as_u64().unwrap();
    assert!(recorded >= 4, "{record}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.restart_server().await;
    let (before, _) = rig.observe().await;
    let replay = rig.attack(&["replay", "--play", &rig.record_file()]).await;
    assert_eq!(replay["sent"], recorded);
    let grown = rejections_after(&rig, &before, &[("replay", recorded)]).await;
    assert_eq!(grown, expect(&[("replay", recorded)]));
    let (_, devices) = rig.observe().await;
    assert_eq!(shape(&devices), shape_before);

    // Flood: junk, oversize, invented devices; the server stays healthy and takes genuine frames.
    let (before, _) = rig.observe().await;
    rig.flood().await;
    let grown =
        rejections_after(&rig, &before, &[("malformed", JUNK + INVENTED), ("oversize", OVERSIZE)])
            .await;
    // The invented devices' frames are plaintext: too short to be sealed frames.
    assert_eq!(grown, expect(&[("malformed", JUNK + INVENTED), ("oversize", OVERSIZE)]));
    let (_, devices) = rig.observe().await;
    assert_eq!(shape(&devices), shape_before);
    assert_eq!(ids(&devices), [NODE, SPARE]);

    rig.stop().await;
    eprintln!("sealed attack suite ({backend:?}) took {:?}", started.elapsed());
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_attack_fails_against_sealed_frames_and_changes_nothing
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_attacks_succeed_against_the_insecure_plaintext_target() {
    let started = std::time::Instant::now();
    let mut rig = Rig::start(true, Backend::Sqlite).await.unwrap();
    let (stats, _) = rig.observe().await;
    assert_eq!(stats["insecure_plaintext"], true);

    // Eavesdropping: every value read.
    let sniff = rig.attack(&["sniff", "--seconds", "2"]).await;
    assert!(sniff["readable"].as_u64().unwrap() >= 4, "{sniff}");
    assert_eq!(sniff["readable"], sniff["total"]);
    let read = sniff["read"].to_string();
    assert!(read.contains("temperature cpu = ") && read.contains("LEDs: red"), "{read}");

    // Forged readings: all but the one sealed with a guessed key are shown.
    let (before, _) = rig.observe().await;
    let poison = rig.attack(&["poison", "--device", NODE]).await;
    let grown = rejections_after(&rig, &before, &[("malformed", 1)]).await;
    assert_eq!(grown, expect(&[("malformed", 1)]));
    let (_, devices) = rig.observe().await;
    let intruder = device(&devices, "intruder").expect("the forged device is shown");
    assert_eq!(intruder["temperatures"][0]["celsius"], 66.6);
    assert!(
        names(device(&devices, NODE).unwrap(), "temperatures", "sensor")
            .contains(&"moved".to_owned())
    );
    assert!(device(&devices, "neighbour").is_some(), "the frame moved to another device is shown");
    assert!(!poison["dashboard_changes"].as_array().unwrap().is_empty(), "{poison}");

    // Replay, across a restart: every recorded frame accepted again.
    let record = rig.attack(&["replay", "--record", &rig.record_file(), "--seconds", "2"]).await;
    let recorded = record["recorded"].as_u64().unwrap();
    assert!(recorded >= 4, "{record}");
    rig.restart_server().await;
    let (before, _) = rig.observe().await;
    rig.attack(&["replay", "--play", &rig.record_file()]).await;
    let (after, _) = rig
        .wait_until("the replayed frames", |s, _| {
            count(s, "accepted") >= count(&before, "accepted") + recorded
        })
        .await;
    assert_eq!(grew(&before, &after, &["replay"]), [0]);

    // Flood: invented devices are created up to the cap, the rest refused (limit).
    let (before, devices) = rig.observe().await;
    let tracked = ids(&devices).len() as u64;
    let created = INVENTED.min(MAX_DEVICES as u64 - tracked);
    rig.flood().await;
    let expected = [("malformed", JUNK), ("oversize", OVERSIZE), ("limit", INVENTED - created)];
    let grown = rejections_after(&rig, &before, &expected).await;
    assert_eq!(grown, expect(&expected));
    let (_, devices) = rig.observe().await;
    assert_eq!(ids(&devices).len(), MAX_DEVICES, "{devices}");
    assert_eq!(ids(&devices).iter().filter(|id| id.starts_with("flood-")).count() as u64, created);

    rig.stop().await;
    eprintln!("plaintext attack suite took {:?}", started.elapsed());
}
