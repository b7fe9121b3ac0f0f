//! `examples/attack.rs` as a student runs it, against a real broker (mosquitto; see
//! `TestBroker`), a real `ledtemp-web` server (on a SQLite file, and the sealed suite on
//! PostgreSQL too) and a genuine node publishing:
//!
//! - sealed (the default): sniff reads nothing, every forgery, replay (also after a server
//!   restart on the same database) and flood frame is refused and counted exactly, and the
//!   dashboard shows nothing the attacker sent;
//! - the `--insecure-plaintext` target: the same attacks succeed (which proves these tests can
//!   fail), and the device cap stops the flood of invented devices;
//! - LED commands, against two nodes that apply them (`CommandNode`): a forged command, a genuine
//!   one replayed within the node's session and after the node rebooted, moved to another LED and
//!   to another device, sealed with another device's key, and the dashboard's switch posted from
//!   another origin or without the session's CSRF token. The sealed nodes refuse each (their
//!   refusals counted by reason) and no LED changes; the plaintext nodes obey each.
//!
//! The binary under test is the example cargo built for this test run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledtemp_core::{
    Algorithm, AnyCodec, Clock, DeviceId, InsecurePlaintextCodec, KeyId, LedName, MilliCelsius,
    Node, NodeConfig, RunEvent, SealedOrPlaintext, SensorName, SimulatedTemperature,
};
use ledtemp_rpi::FileSequenceStore;
use ledtemp_test_support::WAIT;
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::node::{NodeThread, SimulatedNode};
use ledtemp_test_support::on_both_backends;
use ledtemp_test_support::postgres::{Backend, BackendDatabase};
use ledtemp_test_support::server::{resolve, serve_args};
use ledtemp_tokio::{BrokerAddress, LoggedLed, NodeWorld, StdClock, run_node};
use ledtemp_web::{KeyTable, ServeArgs, Server, hash_password, new_api_token};
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
    /// The command rig's nodes: `NODE` and `SPARE`.
    command_nodes: Vec<CommandNode>,
    /// The command rig's login: an API token (the rig's requests and the example's reads) and
    /// the dashboard password (`command-csrf --password`).
    login: Option<Login>,
}

/// The dashboard password and an API token of a rig with login on.
struct Login {
    token: String,
    token_hash: [u8; 32],
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
            command_nodes: Vec::new(),
            login: None,
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
        if let Some(login) = &self.login {
            config.auth.password_hash = Some(hash_password(PASSWORD).unwrap());
            config.auth.token_hashes = vec![login.token_hash];
        }
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
        let mut request = self.http.get(format!("{}{path}", self.url()));
        if let Some(login) = &self.login {
            request = request.bearer_auth(&login.token);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
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
        let mut command = self.attack_command(args);
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

    /// The example with the rig's broker, server and token, and `args`.
    fn attack_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(attack_binary());
        command
            .args(["--broker", &format!("127.0.0.1:{}", self.broker.port)])
            .args(["--server", &self.url(), "--settle", "0.5"])
            // How long a command attack waits for a node's answer: a sealed node never answers
            // one (a wait of no use), a plaintext node answers at once (a longer wait costs
            // nothing and keeps a loaded machine from missing the answer).
            .args(["--watch", if self.insecure { "2" } else { "0.7" }])
            .env_remove("LEDTEMP_TOKEN")
            .env_remove("LEDTEMP_BROKER")
            .env_remove("LEDTEMP_PASSWORD");
        if let Some(login) = &self.login {
            command.args(["--token", &login.token]);
        }
        command.args(args);
        command
    }

    fn record_file(&self) -> String {
        self.dir.path().join("recorded.jsonl").display().to_string()
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
        for node in &mut self.command_nodes {
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

// ---- LED commands ----

/// The dashboard password of the command rigs with login on.
const PASSWORD: &str = "correct horse battery staple";

/// What a command node did with the commands it received, shared with its thread.
#[derive(Debug, Default)]
struct CommandLog {
    applied: AtomicU64,
    /// Each refusal's reason (`Error`'s `Debug`), in order.
    refused: Mutex<Vec<String>>,
}

impl CommandLog {
    fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

/// A node that applies commands: LEDs `red` and `green` (no buttons), a reading every 250 ms,
/// its sequence numbers in a file, so that a restart on the same file is a reboot: a new
/// session, as on a Raspberry Pi. What it does with commands goes to its [`CommandLog`].
struct CommandNode {
    device: &'static str,
    /// Its key, or `None`: the insecure plaintext codec.
    key: Option<ledtemp_keys::KeyEntry>,
    store: PathBuf,
    broker: BrokerAddress,
    log: Arc<CommandLog>,
    thread: Option<NodeThread>,
}

impl CommandNode {
    fn start(
        device: &'static str,
        key: Option<ledtemp_keys::KeyEntry>,
        dir: &std::path::Path,
        broker: BrokerAddress,
    ) -> CommandNode {
        let mut node = CommandNode {
            device,
            key,
            store: dir.join(format!("{device}.sequence")),
            broker,
            log: Arc::default(),
            thread: None,
        };
        node.boot();
        node
    }

    fn boot(&mut self) {
        let codec = match &self.key {
            Some(key) => SealedOrPlaintext::Sealed(key.codec()),
            None => SealedOrPlaintext::InsecurePlaintext(InsecurePlaintextCodec::new(KeyId(1))),
        };
        let (device, store) = (self.device, self.store.clone());
        let (broker, log) = (self.broker.clone(), Arc::clone(&self.log));
        self.thread = Some(NodeThread::spawn(move || async move {
            let mut clock = StdClock::new();
            let config = NodeConfig {
                temperature_period: Duration::from_millis(250),
                // Every LED frame is then the answer to a command.
                announce_period: Duration::from_secs(3_600),
                ..NodeConfig::default()
            };
            let mut node: Node<_, _> = Node::new(
                DeviceId::new(device).unwrap(),
                &[LedName::new("red").unwrap(), LedName::new("green").unwrap()],
                &[SensorName::new("cpu").unwrap()],
                codec,
                FileSequenceStore::new(store),
                config,
                clock.now(),
            )
            .unwrap();
            let mut leds = [LoggedLed::new("red"), LoggedLed::new("green")];
            let mut sensors = [SimulatedTemperature::new(clock, 7).with_base(MilliCelsius(21_000))];
            let world = NodeWorld::new(broker, clock).leds(&mut leds).sensors(&mut sensors);
            let mut on_event = |event: RunEvent<'_>| match event {
                RunEvent::CommandApplied { .. } => {
                    log.applied.fetch_add(1, Ordering::SeqCst);
                }
                RunEvent::CommandRefused { error, .. } => {
                    log.refused.lock().unwrap().push(format!("{error:?}"));
                }
                _ => {}
            };
            run_node(&mut node, world, &mut on_event).await
        }));
    }

    async fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            thread.stop().await;
        }
    }

    /// Power cut and boot: the connection drops without DISCONNECT, the node starts again
    /// on the same sequence file.
    async fn reboot(&mut self) {
        self.stop().await;
        self.boot();
    }
}

impl Rig {
    /// Broker, server (with login when `login`), and two command nodes, `NODE` and `SPARE`, in
    /// the keyring (the plaintext server too: the switch is only offered for keyring devices).
    async fn start_for_commands(insecure: bool, login: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let database = Backend::Sqlite.database(dir.path()).unwrap();
        let broker = TestBroker::start().await;
        let keyring = TempKeyring::generate(&[
            (NODE, Algorithm::ChaCha20Poly1305),
            (SPARE, Algorithm::Aes128Gcm),
        ]);
        keyring.write_key_file(SPARE, &dir.path().join("spare.key"));
        let login = login.then(|| {
            let (token, hash) = new_api_token().unwrap();
            let mut token_hash = [0u8; 32];
            hex::decode_to_slice(hash, &mut token_hash).unwrap();
            Login { token, token_hash }
        });
        let key = |device: &str| (!insecure).then(|| keyring.entry(device).clone());
        let nodes = vec![
            CommandNode::start(NODE, key(NODE), dir.path(), broker.address(NODE)),
            CommandNode::start(SPARE, key(SPARE), dir.path(), broker.address(SPARE)),
        ];
        let mut rig = Rig {
            broker,
            dir,
            database,
            insecure,
            keyring: Some(keyring),
            server: None,
            http: reqwest::Client::new(),
            node: None,
            command_nodes: nodes,
            login,
        };
        rig.start_server().await;
        rig.wait_until("both nodes' LEDs and readings", |_, devices| {
            [NODE, SPARE].iter().all(|id| {
                device(devices, id).is_some_and(|d| {
                    d["online"] == true
                        && names(d, "leds", "led") == ["green", "red"]
                        && !d["temperatures"].as_array().unwrap().is_empty()
                })
            })
        })
        .await;
        rig
    }

    /// Restarts `device`'s node on its sequence file (a reboot: a new session) and waits until
    /// the server has its new frames.
    async fn reboot(&mut self, name: &str) {
        let (_, devices) = self.observe().await;
        let seen = device(&devices, name).unwrap()["last_seen"].clone();
        self.command_node(name).reboot().await;
        self.wait_until("the rebooted node's frames", |_, devices| {
            device(devices, name).is_some_and(|d| d["online"] == true && d["last_seen"] != seen)
        })
        .await;
    }

    fn command_node(&mut self, device: &str) -> &mut CommandNode {
        self.command_nodes.iter_mut().find(|n| n.device == device).unwrap()
    }

    fn command_log(&self, device: &str) -> Arc<CommandLog> {
        Arc::clone(&self.command_nodes.iter().find(|n| n.device == device).unwrap().log)
    }

    /// The dashboard's switch, as a script does it (bearer token when login is on, and the
    /// page's origin, which every POST needs): the status and the answer.
    async fn switch(&self, device: &str, led: &str, on: bool) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/devices/{device}/leds/{led}", self.url()))
            .header("origin", self.url())
            .json(&serde_json::json!({ "on": on }));
        if let Some(login) = &self.login {
            request = request.bearer_auth(&login.token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Switches and expects the device's confirmation.
    async fn switch_confirmed(&self, device: &str, led: &str, on: bool) {
        let (status, answer) = self.switch(device, led, on).await;
        assert_eq!((status, &answer["outcome"]), (200, &Value::from("confirmed")), "{answer}");
    }

    /// `command-record` of one command while the server sends a genuine one (`on`) for `NODE`'s
    /// red LED, as an attacker listening on the broker while somebody clicks the switch.
    async fn record_genuine_command(&self, on: bool) -> String {
        let file = self.dir.path().join("commands.jsonl").display().to_string();
        let mut command = self.attack_command(&["command-record", "--out", &file, "--count", "1"]);
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // Subscribed once it says it listens.
        let stdout = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            while !line.contains("listening on") {
                line.clear();
                assert!(stdout.read_line(&mut line).unwrap() > 0, "command-record ended early");
            }
            stdout
        })
        .await
        .unwrap();
        self.switch_confirmed(NODE, "red", on).await;
        let output = tokio::task::spawn_blocking(move || {
            let mut rest = String::new();
            let mut stdout = stdout;
            std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
            (child.wait().unwrap(), rest)
        })
        .await
        .unwrap();
        assert!(output.0.success(), "{}", output.1);
        let summary = output.1.lines().find_map(|l| l.strip_prefix("summary: ")).unwrap();
        let summary: Value = serde_json::from_str(summary).unwrap();
        assert_eq!(summary["recorded"], 1, "{summary}");
        file
    }

    /// `(device/led, on)` of every LED on the dashboard.
    async fn leds(&self) -> Vec<(String, bool)> {
        let (_, devices) = self.observe().await;
        let mut leds = Vec::new();
        for d in devices.as_array().unwrap() {
            for led in d["leds"].as_array().unwrap() {
                let name =
                    format!("{}/{}", d["id"].as_str().unwrap(), led["led"].as_str().unwrap());
                leds.push((name, led["on"].as_bool().unwrap()));
            }
        }
        leds
    }

    /// Waits until the dashboard shows `expected`.
    async fn wait_for_leds(&self, what: &str, expected: &[(&str, bool)]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leds = self.leds().await;
            let shown =
                expected.iter().all(|(name, on)| leds.iter().any(|(n, o)| n == name && o == on));
            if shown {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {leds:?}, not {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every LED of both nodes off: how each rig starts, and all a sealed rig ever shows.
const ALL_OFF: [(&str, bool); 4] = [
    ("sim-node/green", false),
    ("sim-node/red", false),
    ("spare/green", false),
    ("spare/red", false),
];

/// Waits until `log` holds `n` refusals more than `from`; returns the new ones.
async fn new_refusals(log: &CommandLog, from: usize, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while log.refused().len() < from + n {
        assert!(tokio::time::Instant::now() < deadline, "refusals: {:?}", log.refused());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.refused()[from..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_attacks_are_refused_by_the_sealed_node_and_change_nothing() {
    let started = std::time::Instant::now();
    let mut rig = Rig::start_for_commands(false, true).await;
    let node = rig.command_log(NODE);
    let spare = rig.command_log(SPARE);
    assert_eq!(rig.leds().await, ALL_OFF.map(|(n, o)| (n.to_owned(), o)));

    // The genuine command works (and is recorded by the attacker on the broker), and so does
    // switching back.
    let recorded = rig.record_genuine_command(true).await;
    rig.switch_confirmed(NODE, "red", false).await;
    assert_eq!(node.applied(), 2);
    rig.wait_for_leds("switched back", &ALL_OFF).await;
    let timer = std::time::Instant::now();

    // (b) Replayed within the node's session: the node's replay window (or, later than the
    // command's 5 s lifetime, its expiry).
    let replay = rig.attack(&["command-replay", "--play", &recorded]).await;
    assert_eq!((replay["sent"].as_u64(), replay["answered"].as_u64()), (Some(1), Some(0)));
    let refused = new_refusals(&node, 0, 1).await;
    assert!(refused == ["Replayed"] || refused == ["CommandExpired"], "{refused:?}");
    assert_eq!(replay["led_changes"], serde_json::json!([]), "{replay}");
    eprintln!("replay within the session took {:?}", timer.elapsed());

    // (a) Forged: sealed with a guessed key, and in plaintext.
    let timer = std::time::Instant::now();
    let forge = rig.attack(&["command-forge", "--device", NODE, "--led", "red"]).await;
    assert_eq!((forge["sent"].as_u64(), forge["answered"].as_u64()), (Some(2), Some(0)));
    let refused = new_refusals(&node, 1, 2).await;
    // The plaintext command is too short to be a sealed frame.
    assert_eq!(refused, ["Unauthentic", "Truncated"]);
    assert_eq!(forge["led_changes"], serde_json::json!([]), "{forge}");
    eprintln!("forge took {:?}", timer.elapsed());

    // (d) Moved to another LED of the node (green), and to the same LED of another device.
    let timer = std::time::Instant::now();
    let moved = rig.attack(&["command-move", "--from", &recorded, "--device", SPARE]).await;
    assert_eq!((moved["sent"].as_u64(), moved["answered"].as_u64()), (Some(2), Some(0)));
    assert_eq!(new_refusals(&node, 3, 1).await, ["Unauthentic"]);
    assert_eq!(new_refusals(&spare, 0, 1).await, ["Unauthentic"]);
    assert_eq!(moved["led_changes"], serde_json::json!([]), "{moved}");
    eprintln!("move took {:?}", timer.elapsed());

    // (e) Sealed with the real key of another device (captured): not this device's key.
    let timer = std::time::Instant::now();
    let key_file = rig.dir.path().join("spare.key").display().to_string();
    let foreign = rig
        .attack(&["command-foreign-key", "--key-file", &key_file, "--device", NODE, "--led", "red"])
        .await;
    assert_eq!((foreign["sent"].as_u64(), foreign["answered"].as_u64()), (Some(1), Some(0)));
    assert_eq!(new_refusals(&node, 4, 1).await, ["Unauthentic"]);
    assert_eq!(foreign["led_changes"], serde_json::json!([]), "{foreign}");
    eprintln!("foreign key took {:?}", timer.elapsed());

    // (c) Replayed after the node rebooted: a new session, so the recorded command is stale
    // (its lifetime on the node's new clock has not even passed).
    let timer = std::time::Instant::now();
    rig.reboot(NODE).await;
    let replay = rig.attack(&["command-replay", "--play", &recorded]).await;
    assert_eq!((replay["sent"].as_u64(), replay["answered"].as_u64()), (Some(1), Some(0)));
    assert_eq!(new_refusals(&node, 5, 1).await, ["StaleCommand"]);
    assert_eq!(replay["led_changes"], serde_json::json!([]), "{replay}");
    eprintln!("reboot and replay took {:?}", timer.elapsed());

    // (f) The switch posted from another site with the victim's session cookie, and with the
    // cookie but without the session's CSRF token: 403, nothing published or logged. The same
    // request from the dashboard's origin with the token (the control) is obeyed: these
    // refusals are the CSRF checks, not a switch that never works.
    let timer = std::time::Instant::now();
    let csrf = rig
        .attack(&["command-csrf", "--device", NODE, "--led", "red", "--password", PASSWORD])
        .await;
    let attempts: Vec<(u64, u64, u64)> = csrf["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["status"].as_u64().unwrap(),
                a["published"].as_u64().unwrap(),
                a["logged"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(403, 0, 0), (403, 0, 0), (200, 1, 1)], "{csrf}");
    assert_eq!(csrf["led_changes"], serde_json::json!(["sim-node/red: OFF -> ON"]), "{csrf}");
    eprintln!("csrf took {:?}", timer.elapsed());

    // Nothing the attacker sent was applied: only the three genuine commands.
    assert_eq!((node.applied(), spare.applied()), (3, 0));
    assert_eq!(node.refused().len(), 6, "{:?}", node.refused());
    assert_eq!(spare.refused().len(), 1, "{:?}", spare.refused());
    rig.stop().await;
    eprintln!("sealed command attacks took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_attacks_succeed_against_the_insecure_plaintext_node() {
    let started = std::time::Instant::now();
    let mut rig = Rig::start_for_commands(true, false).await;
    let (stats, _) = rig.observe().await;
    assert_eq!(stats["insecure_plaintext"], true);
    let node = rig.command_log(NODE);
    let spare = rig.command_log(SPARE);
    assert_eq!(rig.leds().await, ALL_OFF.map(|(n, o)| (n.to_owned(), o)));

    // The server's plaintext command, recorded on the broker (readable to anybody).
    let recorded = rig.record_genuine_command(true).await;
    rig.switch_confirmed(NODE, "red", false).await;
    rig.wait_for_leds("switched back", &ALL_OFF).await;
    let mut applied = 2;
    assert_eq!(node.applied(), applied);

    // (b) Replayed: obeyed, the LED is on again.
    let replay = rig.attack(&["command-replay", "--play", &recorded]).await;
    assert_eq!((replay["sent"].as_u64(), replay["answered"].as_u64()), (Some(1), Some(1)));
    assert_eq!(replay["led_changes"], serde_json::json!(["sim-node/red: OFF -> ON"]), "{replay}");
    applied += 1;
    assert_eq!(node.applied(), applied);
    rig.switch_confirmed(NODE, "red", false).await;
    applied += 1;

    // (a) Forged: the plaintext command is obeyed (the one sealed with a guessed key cannot
    // even be read by this node).
    let forge = rig.attack(&["command-forge", "--device", NODE, "--led", "red"]).await;
    assert_eq!((forge["sent"].as_u64(), forge["answered"].as_u64()), (Some(2), Some(1)));
    assert_eq!(forge["led_changes"], serde_json::json!(["sim-node/red: OFF -> ON"]), "{forge}");
    applied += 1;
    assert_eq!(node.applied(), applied);
    assert_eq!(node.refused().len(), 1, "the guessed key's frame: {:?}", node.refused());
    rig.switch_confirmed(NODE, "red", false).await;
    applied += 1;

    // (d) Moved: the "red on" command switches the green LED, and the other device's red one.
    let moved = rig.attack(&["command-move", "--from", &recorded, "--device", SPARE]).await;
    assert_eq!((moved["sent"].as_u64(), moved["answered"].as_u64()), (Some(2), Some(2)));
    assert_eq!(
        moved["led_changes"],
        serde_json::json!(["sim-node/green: OFF -> ON", "spare/red: OFF -> ON"]),
        "{moved}"
    );
    applied += 1;
    assert_eq!((node.applied(), spare.applied()), (applied, 1));

    // (e) In the name of a captured device: no key needed at all.
    let key_file = rig.dir.path().join("spare.key").display().to_string();
    let foreign = rig
        .attack(&["command-foreign-key", "--key-file", &key_file, "--device", NODE, "--led", "red"])
        .await;
    assert_eq!((foreign["sent"].as_u64(), foreign["answered"].as_u64()), (Some(1), Some(1)));
    assert_eq!(foreign["led_changes"], serde_json::json!(["sim-node/red: OFF -> ON"]), "{foreign}");
    applied += 1;
    rig.switch_confirmed(NODE, "red", false).await;
    applied += 1;

    // (c) Replayed after the node rebooted: obeyed as well.
    rig.reboot(NODE).await;
    let replay = rig.attack(&["command-replay", "--play", &recorded]).await;
    assert_eq!((replay["sent"].as_u64(), replay["answered"].as_u64()), (Some(1), Some(1)));
    assert_eq!(replay["led_changes"], serde_json::json!(["sim-node/red: OFF -> ON"]), "{replay}");
    applied += 1;
    assert_eq!(node.applied(), applied);

    // (f) The CSRF checks do not depend on the codec: another origin is refused here too (no
    // login on this server), and the dashboard's own origin is obeyed.
    let csrf = rig.attack(&["command-csrf", "--device", NODE, "--led", "red"]).await;
    let statuses: Vec<u64> = csrf["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [403, 403, 200], "{csrf}");
    assert_eq!(csrf["led_changes"], serde_json::json!(["sim-node/red: ON -> OFF"]), "{csrf}");

    rig.stop().await;
    eprintln!("plaintext command attacks took {:?}", started.elapsed());
}
