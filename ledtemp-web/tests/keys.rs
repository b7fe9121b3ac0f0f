//! Key rotation, revocation and keyring reload through the real ingest pipeline on a SQLite file
//! and on PostgreSQL (docs/keys.md): an old key is accepted during its grace period and refused after it, a revoked
//! key is refused, a reload (the function SIGHUP calls, and a real SIGHUP to `ledtemp-web serve`)
//! adds devices and keeps the replay windows. Every refusal is counted exactly and stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;

use jiff::Timestamp;
use ledtemp_core::{Algorithm, AnyCodec, KeyId, Message};
use ledtemp_keys::{KeyEntry, Keyring};
use ledtemp_web::{
    DEFAULT_MAX_DEVICES, Database, IncomingFrame, Ingest, KeyChanges, KeyStatus, KeyTable,
    LiveState, PipelineOptions, RejectReason, Snapshot, UnixMillis, load_keys, reload_keys,
};
use support::{
    Backend, GARAGE, KITCHEN, RawPublisher, device, get_json, http_get, on_both_backends, seal,
    temperature,
};

const KEY_1: [u8; 16] = [0x31; 16];
const KEY_2: [u8; 32] = [0x32; 32];
const GARAGE_KEY: [u8; 32] = [0x47; 32];

/// The end of key 1's grace period in these tests.
const RETIRE_AT: &str = "2030-01-01T00:00:00Z";

fn retire_at_ms() -> i64 {
    RETIRE_AT.parse::<Timestamp>().unwrap().as_millisecond()
}

fn key_entry(name: &str, key_id: u8, key: &[u8]) -> KeyEntry {
    let algorithm =
        if key.len() == 16 { Algorithm::Aes128Gcm } else { Algorithm::ChaCha20Poly1305 };
    KeyEntry::new(device(name), KeyId(key_id), algorithm, key).unwrap()
}

fn codec(key_id: u8, key: &[u8]) -> AnyCodec {
    let algorithm =
        if key.len() == 16 { Algorithm::Aes128Gcm } else { Algorithm::ChaCha20Poly1305 };
    AnyCodec::new(algorithm, KeyId(key_id), key).unwrap()
}

fn save(path: &Path, entries: Vec<KeyEntry>, revoked: &[(&str, u8)]) {
    let mut keyring = Keyring::new();
    for entry in entries {
        keyring.add(entry, false).unwrap();
    }
    for (name, key_id) in revoked {
        keyring.revoke(&device(name), Some(KeyId(*key_id))).unwrap();
    }
    keyring.save(path).unwrap();
}

/// The pipeline on `database` with the keys of the keyring at `keyring`, sharing the table as
/// the server does.
struct Pipeline {
    ingest: Ingest,
    keys: Arc<KeyTable>,
    live: Arc<LiveState>,
    database: Database,
}

impl Pipeline {
    fn new(database: &Database, keyring: &Path) -> Pipeline {
        let options = PipelineOptions { database: database.clone(), ..PipelineOptions::default() };
        let pipeline = ledtemp_web::Pipeline::open(&options, load_keys(keyring).unwrap()).unwrap();
        let (keys, live) = (pipeline.state.keys, pipeline.state.live);
        Pipeline { ingest: pipeline.ingest, keys, live, database: database.clone() }
    }

    /// Seals `message` as `name` with `codec` and runs it through the pipeline, received at
    /// `received_ms`.
    fn send(
        &mut self,
        codec: &AnyCodec,
        name: &str,
        sequence: u64,
        message: &Message,
        received_ms: i64,
    ) -> Result<(), RejectReason> {
        let (topic, payload) = seal(codec, name, sequence, message);
        let received = UnixMillis(received_ms);
        self.receive(IncomingFrame {
            topic: topic.into_bytes(),
            payload,
            received,
            retained: false,
            duplicate: false,
        })
    }

    fn receive(&mut self, frame: IncomingFrame) -> Result<(), RejectReason> {
        self.ingest
            .handle(frame)
            .map(|_| ())
            .map_err(|e| e.reject_reason().unwrap_or_else(|| panic!("not a rejection: {e}")))
    }

    /// What is stored, read through a connection of its own.
    fn stored(&self) -> Snapshot {
        self.database.open().unwrap().store.load().unwrap()
    }

    fn counts(&self) -> (u64, u64, u64, u64) {
        let stats = self.live.stats.snapshot();
        (
            stats.accepted,
            stats.rejected.revoked,
            stats.rejected.unknown_device,
            stats.rejected.replay,
        )
    }
}

fn assert_same(a: &Snapshot, b: &Snapshot) {
    assert_eq!(a.windows, b.windows);
    assert_eq!(a.devices, b.devices);
}

fn an_old_key_is_accepted_during_the_grace_period_and_refused_after_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let keyring = dir.path().join("keyring.toml");
    let retire_at = RETIRE_AT.parse().unwrap();
    save(
        &keyring,
        vec![
            key_entry(KITCHEN, 1, &KEY_1).with_retire_at(Some(retire_at)),
            key_entry(KITCHEN, 2, &KEY_2),
        ],
        &[],
    );
    let mut p = Pipeline::new(database.database(), &keyring);
    assert_eq!(
        p.keys.status(&device(KITCHEN), KeyId(1)),
        Some(KeyStatus::Usable { retire_at_ms: Some(retire_at_ms()) })
    );
    let (old, new) = (codec(1, &KEY_1), codec(2, &KEY_2));
    let before = retire_at_ms() - 1;

    // During the grace period both keys work.
    assert_eq!(p.send(&old, KITCHEN, 0, &temperature("room", 20_000), before), Ok(()));
    assert_eq!(p.send(&new, KITCHEN, 0, &temperature("room", 20_500), before), Ok(()));
    assert_eq!(p.counts(), (2, 0, 0, 0));
    let stored = p.stored();
    assert_eq!(stored.windows.len(), 2);

    // From retire_at on the old key is refused as revoked, before the replay window: a fresh
    // sequence number, and a replay of the frame accepted above, both count as revoked.
    assert_eq!(
        p.send(&old, KITCHEN, 1, &temperature("room", 99_000), retire_at_ms()),
        Err(RejectReason::Revoked)
    );
    assert_eq!(
        p.send(&old, KITCHEN, 0, &temperature("room", 20_000), retire_at_ms() + 60_000),
        Err(RejectReason::Revoked)
    );
    // A forgery under the retired key id is refused the same way, before any cryptography.
    let (topic, mut payload) = seal(&old, KITCHEN, 7, &temperature("room", 1));
    let last = payload.len() - 1;
    payload[last] ^= 1;
    let forged = IncomingFrame {
        topic: topic.into_bytes(),
        payload,
        received: UnixMillis(retire_at_ms() + 1),
        retained: false,
        duplicate: false,
    };
    assert_eq!(p.receive(forged), Err(RejectReason::Revoked));
    assert_eq!(p.counts(), (2, 3, 0, 0));
    // Nothing changed: no reading, no window, no cache.
    assert_same(&p.stored(), &stored);
    let kitchen = p.live.device(&device(KITCHEN)).unwrap();
    let room = ledtemp_core::SensorName::new("room").unwrap();
    assert_eq!(kitchen.temperatures[&room].temperature.0, 20_500);

    // The new key keeps working; an unknown key id stays an unknown device.
    assert_eq!(p.send(&new, KITCHEN, 1, &temperature("room", 21_000), retire_at_ms() + 1), Ok(()));
    assert_eq!(
        p.send(&codec(3, &KEY_2), KITCHEN, 0, &temperature("room", 1), retire_at_ms() + 1),
        Err(RejectReason::UnknownDevice)
    );
    assert_eq!(p.counts(), (3, 3, 1, 0));
}
on_both_backends!(fn an_old_key_is_accepted_during_the_grace_period_and_refused_after_it);

fn a_revoked_key_is_refused_and_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let keyring = dir.path().join("keyring.toml");
    save(
        &keyring,
        vec![
            key_entry(KITCHEN, 1, &KEY_1),
            key_entry(KITCHEN, 2, &KEY_2),
            key_entry(GARAGE, 1, &GARAGE_KEY),
        ],
        &[(KITCHEN, 1), (GARAGE, 1)],
    );
    // The revoked keys' bytes are gone from the file.
    let text = std::fs::read_to_string(&keyring).unwrap();
    assert!(!text.contains(&hex::encode(KEY_1)) && !text.contains(&hex::encode(GARAGE_KEY)));
    let mut p = Pipeline::new(database.database(), &keyring);
    assert_eq!(p.keys.status(&device(KITCHEN), KeyId(1)), Some(KeyStatus::Revoked));
    // A device whose keys are all revoked is still known (listed), not unknown.
    assert!(p.keys.devices().contains(&device(GARAGE)));
    let stored = p.stored();
    let now = support::now_ms();

    // A stolen key still seals valid frames: the server refuses them.
    assert_eq!(
        p.send(&codec(1, &KEY_1), KITCHEN, 0, &temperature("room", 1), now),
        Err(RejectReason::Revoked)
    );
    assert_eq!(
        p.send(&codec(1, &GARAGE_KEY), GARAGE, 0, &support::led("door", true), now),
        Err(RejectReason::Revoked)
    );
    // Another key of the device, a key id never issued, a device never in the keyring.
    assert_eq!(p.send(&codec(2, &KEY_2), KITCHEN, 0, &temperature("room", 2), now), Ok(()));
    assert_eq!(
        p.send(&codec(5, &KEY_2), KITCHEN, 0, &temperature("room", 3), now),
        Err(RejectReason::UnknownDevice)
    );
    assert_eq!(
        p.send(&codec(1, &KEY_1), "attic", 0, &temperature("room", 4), now),
        Err(RejectReason::UnknownDevice)
    );
    assert_eq!(p.counts(), (1, 2, 2, 0));
    let after = p.stored();
    assert_eq!(after.windows.keys().collect::<Vec<_>>(), vec![&(device(KITCHEN), KeyId(2))]);
    assert!(!after.devices.contains_key(&device(GARAGE)) && stored.windows.is_empty());
}
on_both_backends!(fn a_revoked_key_is_refused_and_changes_nothing);

fn a_reload_adds_devices_retires_and_revokes_keys_and_keeps_replay_windows(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let keyring = dir.path().join("keyring.toml");
    save(&keyring, vec![key_entry(KITCHEN, 1, &KEY_1)], &[]);
    let mut p = Pipeline::new(database.database(), &keyring);
    let now = support::now_ms();
    let (old, new, garage) = (codec(1, &KEY_1), codec(2, &KEY_2), codec(1, &GARAGE_KEY));

    let (topic, payload) = seal(&old, KITCHEN, 5, &temperature("room", 20_000));
    let accepted = IncomingFrame {
        topic: topic.into_bytes(),
        payload,
        received: UnixMillis(now),
        retained: false,
        duplicate: false,
    };
    assert_eq!(p.receive(accepted.clone()), Ok(()));
    assert_eq!(
        p.send(&garage, GARAGE, 0, &temperature("bench", 1), now),
        Err(RejectReason::UnknownDevice)
    );

    // Rotation: kitchen-pi gets key 2, key 1 retires at RETIRE_AT; garage is provisioned.
    let retire_at = RETIRE_AT.parse().unwrap();
    save(
        &keyring,
        vec![
            key_entry(KITCHEN, 1, &KEY_1).with_retire_at(Some(retire_at)),
            key_entry(KITCHEN, 2, &KEY_2),
            key_entry(GARAGE, 1, &GARAGE_KEY),
        ],
        &[],
    );
    let changes = reload_keys(&p.keys, &keyring, &p.live, DEFAULT_MAX_DEVICES).unwrap();
    assert_eq!(
        changes,
        KeyChanges {
            devices_added: vec![GARAGE.to_owned()],
            keys_added: vec![(GARAGE.to_owned(), 1), (KITCHEN.to_owned(), 2)],
            keys_retiring: vec![(KITCHEN.to_owned(), 1, Some(retire_at_ms()))],
            ..KeyChanges::default()
        }
    );
    let line = changes.to_string();
    assert!(line.contains("devices added: garage") && line.contains(RETIRE_AT), "{line}");
    // The dashboard lists the new device before its first frame.
    let listed: Vec<String> =
        p.live.devices().into_iter().map(|(id, _)| id.as_str().to_owned()).collect();
    assert_eq!(listed, [GARAGE, KITCHEN]);

    // The window of (kitchen-pi, 1) survived: the frame accepted before is still a replay.
    assert_eq!(p.receive(accepted.clone()), Err(RejectReason::Replay));
    assert_eq!(p.send(&old, KITCHEN, 6, &temperature("room", 20_100), now), Ok(()));
    assert_eq!(p.send(&new, KITCHEN, 0, &temperature("room", 20_200), now), Ok(()));
    assert_eq!(p.send(&garage, GARAGE, 0, &temperature("bench", 1), now), Ok(()));
    assert_eq!(p.counts(), (4, 0, 1, 1));

    // Revocation by reload: key 1 refused at once, whatever its grace period said.
    save(
        &keyring,
        vec![
            key_entry(KITCHEN, 1, &KEY_1),
            key_entry(KITCHEN, 2, &KEY_2),
            key_entry(GARAGE, 1, &GARAGE_KEY),
        ],
        &[(KITCHEN, 1)],
    );
    let changes = reload_keys(&p.keys, &keyring, &p.live, DEFAULT_MAX_DEVICES).unwrap();
    assert_eq!(changes.keys_revoked, vec![(KITCHEN.to_owned(), 1)]);
    assert!(changes.devices_added.is_empty() && changes.keys_added.is_empty());
    let stored = p.stored();
    assert_eq!(
        p.send(&old, KITCHEN, 7, &temperature("room", 99_000), now),
        Err(RejectReason::Revoked)
    );
    assert_eq!(p.receive(accepted), Err(RejectReason::Revoked));
    assert_eq!(p.counts(), (4, 2, 1, 1));
    assert_same(&p.stored(), &stored);

    // A keyring that fails to load keeps the keys in use and is counted.
    for broken in [
        format!("[[key]]\ndevice = \"{KITCHEN}\"\nkey_id = 2\n"),
        // The same key under two devices.
        format!(
            "[[key]]\ndevice = \"{KITCHEN}\"\nkey_id = 2\nalgorithm = \"ChaCha20-Poly1305\"\nkey = \"{k}\"\n\
             [[key]]\ndevice = \"{GARAGE}\"\nkey_id = 1\nalgorithm = \"ChaCha20-Poly1305\"\nkey = \"{k}\"\n",
            k = hex::encode(KEY_2)
        ),
    ] {
        std::fs::write(&keyring, broken).unwrap();
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(reload_keys(&p.keys, &keyring, &p.live, DEFAULT_MAX_DEVICES).is_err());
    }
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = reload_keys(&p.keys, &keyring, &p.live, DEFAULT_MAX_DEVICES).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    // More devices than the server may track: refused like at start.
    save(&keyring, vec![key_entry(KITCHEN, 2, &KEY_2), key_entry(GARAGE, 1, &GARAGE_KEY)], &[]);
    let err = reload_keys(&p.keys, &keyring, &p.live, 1).unwrap_err();
    assert!(err.to_string().contains("max-devices 1"), "{err}");
    assert_eq!(p.live.stats.keyring_reload_failures(), 4);
    assert_eq!(p.keys.status(&device(KITCHEN), KeyId(1)), Some(KeyStatus::Revoked));
    assert_eq!(p.send(&garage, GARAGE, 1, &temperature("bench", 2), now), Ok(()));
    assert_eq!(p.counts(), (5, 2, 1, 1));
}
on_both_backends!(fn a_reload_adds_devices_retires_and_revokes_keys_and_keeps_replay_windows);

#[test]
fn the_server_refuses_a_keyring_with_one_key_under_two_devices() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.toml");
    let k = hex::encode(KEY_1);
    std::fs::write(
        &keyring,
        format!(
            "[[key]]\ndevice = \"{KITCHEN}\"\nkey_id = 1\nalgorithm = \"AES-128-GCM\"\nkey = \"{k}\"\n\
             [[key]]\ndevice = \"{GARAGE}\"\nkey_id = 1\nalgorithm = \"AES-128-GCM\"\nkey = \"{k}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load_keys(&keyring).unwrap_err().to_string();
    assert!(err.contains(KITCHEN) && err.contains(GARAGE) && err.contains("own key"), "{err}");
    assert!(!err.contains(&k), "{err}");
}

/// `ledtemp-web serve` as a child process, with its output lines on a channel.
struct ServeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    broker: SocketAddr,
    http: SocketAddr,
}

impl ServeProcess {
    fn start(dir: &Path, keyring: &Path) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
            .args(["serve", "--listen", "127.0.0.1:0", "--embedded-broker", "127.0.0.1:0"])
            .arg("--keyring")
            .arg(keyring)
            .arg("--database")
            .arg(dir.join("ledtemp.db"))
            .env_remove("LEDTEMP_BROKER")
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut process = ServeProcess {
            child,
            lines,
            broker: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = process.wait_for("embedded MQTT v5 broker on ");
        process.broker = line.rsplit(' ').next().unwrap().parse().unwrap();
        let line = process.wait_for("dashboard at http://");
        process.http =
            line.rsplit("http://").next().unwrap().trim_end_matches('/').parse().unwrap();
        process
    }

    /// The first output line from now on that contains `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + support::WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no {needle:?} from ledtemp-web serve: {e}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn stats(http: SocketAddr) -> serde_json::Value {
    let (status, body) = get_json(http, "/api/stats").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_for_stat(http: SocketAddr, path: &[&str], value: u64) {
    let path = path.to_vec();
    support::eventually(&format!("{path:?} = {value}"), || {
        let path = path.clone();
        async move {
            let mut body = stats(http).await;
            for key in path {
                body = body[key].take();
            }
            (body.as_u64() == Some(value)).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keyring_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.toml");
    save(&keyring, vec![key_entry(KITCHEN, 1, &KEY_1)], &[]);
    let server = ServeProcess::start(dir.path(), &keyring);
    // Frames published before the server's subscription is in place would be lost: wait until
    // /healthz says the server is connected and subscribed.
    support::eventually("the server's subscription", || async {
        (http_get(server.http, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let publisher = RawPublisher::connect(server.broker.port(), "keys-test").await;
    let (kitchen, garage) = (codec(1, &KEY_1), codec(1, &GARAGE_KEY));

    let (topic, frame) = seal(&kitchen, KITCHEN, 1, &temperature("room", 20_000));
    publisher.publish(&topic, &frame).await;
    wait_for_stat(server.http, &["accepted"], 1).await;
    let (garage_topic, garage_frame) = seal(&garage, GARAGE, 1, &temperature("bench", 15_000));
    publisher.publish(&garage_topic, &garage_frame).await;
    wait_for_stat(server.http, &["rejected", "unknown_device"], 1).await;

    // Provision garage and reload with SIGHUP: no restart.
    save(&keyring, vec![key_entry(KITCHEN, 1, &KEY_1), key_entry(GARAGE, 1, &GARAGE_KEY)], &[]);
    server.signal("HUP");
    let line = server.wait_for("keyring reloaded");
    assert!(line.contains("devices added: garage"), "{line}");
    publisher.publish(&garage_topic, &garage_frame).await;
    wait_for_stat(server.http, &["accepted"], 2).await;
    // The replay window of kitchen-pi survived the reload.
    publisher.publish(&topic, &frame).await;
    wait_for_stat(server.http, &["rejected", "replay"], 1).await;

    // A broken keyring: logged, counted, the keys in use stay.
    std::fs::write(&keyring, "[[key]]\nkey_id = 1\n").unwrap();
    server.signal("HUP");
    let line = server.wait_for("keyring reload failed");
    assert!(line.contains("device"), "{line}");
    let (status, metrics) = http_get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("ledtemp_keyring_reload_failures_total 1"), "{metrics}");
    let (topic, frame) = seal(&garage, GARAGE, 2, &temperature("bench", 15_500));
    publisher.publish(&topic, &frame).await;
    wait_for_stat(server.http, &["accepted"], 3).await;
    let body = stats(server.http).await;
    assert_eq!(body["rejected"]["revoked"], 0, "{body}");

    // Still running after both signals; SIGTERM ends it cleanly.
    server.signal("TERM");
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        drop(server);
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}
