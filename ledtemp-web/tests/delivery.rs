//! Nothing lost, nothing twice (issue 13): three nodes stream through a real Mosquitto with
//! persistence to a real `ledtemp-web serve` process, and each test breaks something mid-stream:
//! the server killed (`kill -9`) or stopped (SIGTERM) and started again (on SQLite and on
//! PostgreSQL), the broker stopped for 5 s or 60 s, the SQLite database's disk full, PostgreSQL
//! out of reach. Then every LED change and every reading the broker accepted must be stored
//! exactly once: per device, the sequence numbers in the `temperatures` and `led_changes` rows
//! equal those of the frames routed, with no gap and no duplicate row.
//!
//! The ground truth is twofold ([`ledtemp_test_support::delivery`]): each node's own log of the
//! frames the broker acknowledged, and an observer subscribed before the nodes start, with a
//! persistent session of its own, which opens every frame the broker routes. Every frame a node
//! published must reach the observer (else the broker lost it, and the test set-up is wrong), and
//! the store must hold exactly the observer's frames (they include the rare frame whose publish
//! failed after it reached the broker, which the node sent again with a new number). Status
//! frames are not stored as rows and are left out.
//!
//! The nodes send a temperature every 200 ms at QoS 1 (the default) and toggle their LED every
//! second. Mosquitto runs with the settings of docs/broker.md that keep the server's session:
//! `persistence true`, `autosave_on_changes true` with `autosave_interval 10`, and
//! `max_queued_messages 1000000`. A broker restart here is a clean one (SIGTERM, which saves
//! everything), as a service manager does it. The server runs as a process, with
//! `RUST_LOG=info` and its log in its temporary directory; a failure prints the numbers missing
//! or stored twice per device, and the logs.
//!
//! Every wait is bounded; no wall-clock time is asserted.
//!
//! Environment:
//! - `LEDTEMP_REQUIRE_MOSQUITTO=1`: a missing Mosquitto fails these tests instead of skipping
//!   them.
//! - `LEDTEMP_REQUIRE_POSTGRES=1`: an unreachable PostgreSQL fails the PostgreSQL tests instead
//!   of skipping them (`ledtemp_test_support::postgres`).
//! - `LEDTEMP_REQUIRE_TMPFS=1`: the disk-full test fails, instead of skipping, where a tmpfs
//!   cannot be mounted (it needs root, or CAP_SYS_ADMIN).
//! - `LEDTEMP_DELIVERY_SERVER_BIN=<path>`: run another build of `ledtemp-web` (an older commit's,
//!   to see what these tests measure on it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ledtemp_core::{Algorithm, AnyCodec, Backoff, NodeConfig};
use ledtemp_test_support::WAIT;
use ledtemp_test_support::delivery::{
    Fleet, FrameKind, Observer, ServerProcess, stored_rows, tail, wait_until_stored,
};
use ledtemp_test_support::keys::TempKeyring;
use ledtemp_test_support::mosquitto::{Mosquitto, MosquittoConfig, mosquitto_programs};
use ledtemp_test_support::node::SimulatedNode;
use ledtemp_test_support::on_both_backends;
use ledtemp_test_support::postgres::{Backend, BackendDatabase};
use ledtemp_test_support::proxy::Proxy;
use ledtemp_test_support::server::get_json;
use ledtemp_test_support::skip_unless_required;
use ledtemp_web::Database;
use tempfile::TempDir;
use tokio::task::LocalSet;

/// The nodes: three devices, both ciphers.
const DEVICES: [(&str, Algorithm); 3] = [
    ("hall", Algorithm::Aes128Gcm),
    ("cellar", Algorithm::ChaCha20Poly1305),
    ("attic", Algorithm::Aes128Gcm),
];

/// A temperature every 200 ms per node: 15 readings a second in all.
const TEMPERATURE_PERIOD: Duration = Duration::from_millis(200);

/// A button press, and so an LED change, every second per node.
const PRESS_EVERY: Duration = Duration::from_secs(1);

/// How long the nodes stream before a fault and after the system is whole again.
const STREAM: Duration = Duration::from_secs(4);

/// The server's MQTT client id: the name of its session at the broker, the same on every start.
const SERVER_CLIENT_ID: &str = "ledtemp-web-delivery";

/// The observer's client id.
const OBSERVER_CLIENT_ID: &str = "ledtemp-delivery-observer";

/// How long the server may take, after the nodes stopped, to have stored everything.
const STORED_WAIT: Duration = Duration::from_secs(45);

/// The variable that runs another build of the server.
const SERVER_BIN_ENV: &str = "LEDTEMP_DELIVERY_SERVER_BIN";

/// The variable that makes a tmpfs that cannot be mounted a failure.
const REQUIRE_TMPFS_ENV: &str = "LEDTEMP_REQUIRE_TMPFS";

// ---------------------------------------------------------------------------------------------
// The tests

fn a_server_killed_mid_stream_stores_every_frame_once(backend: Backend) {
    run(server_restart(backend, Restart::Kill));
}
on_both_backends!(fn a_server_killed_mid_stream_stores_every_frame_once);

fn a_server_stopped_with_sigterm_stores_every_frame_once(backend: Backend) {
    run(server_restart(backend, Restart::Terminate));
}
on_both_backends!(fn a_server_stopped_with_sigterm_stores_every_frame_once);

#[test]
fn a_broker_down_for_5_s_loses_no_frame() {
    run(broker_restart(Duration::from_secs(5)));
}

#[test]
fn a_broker_down_for_60_s_loses_no_frame() {
    run(broker_restart(Duration::from_secs(60)));
}

#[test]
fn a_full_disk_keeps_frames_at_the_broker_until_space_returns() {
    run(disk_full());
}

#[test]
fn postgres_unreachable_mid_stream_loses_no_frame() {
    run(database_unreachable());
}

/// How the server goes down mid-stream.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// `kill -9`: no clean shutdown at all.
    Kill,
    /// SIGTERM, as systemd stops it.
    Terminate,
}

/// The server killed or stopped mid-stream, and started again 5 s later on the same database.
async fn server_restart(backend: Backend, restart: Restart) {
    let name = format!("server {restart:?}, {backend:?}");
    let Some(mut rig) = Rig::start(&name, backend, None).await else { return };
    let fleet = rig.start_nodes(Backoff::default());
    tokio::time::sleep(STREAM).await;
    match restart {
        Restart::Kill => rig.server.kill(),
        Restart::Terminate => rig.server.terminate().await,
    }
    rig.note("server down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.server.start().await;
    rig.note("server up again");
    tokio::time::sleep(STREAM).await;
    rig.finish(fleet).await;
}

/// The broker stopped cleanly for `outage` while nodes and server run, then started again. The
/// nodes come back first, and flush their queues into the broker, while the server is still away:
/// its link to the broker stays cut until every node has published again and a second more has
/// passed (left to their backoffs, either could win: the server retries every 2 s at most).
async fn broker_restart(outage: Duration) {
    let name = format!("broker down {} s", outage.as_secs());
    let Some(mut rig) = Rig::start(&name, Backend::Sqlite, None).await else { return };
    let fleet =
        rig.start_nodes(Backoff::new(Duration::from_millis(100), Duration::from_millis(500)));
    tokio::time::sleep(STREAM).await;
    rig.note("stopping the broker");
    rig.mosquitto.terminate().await;
    rig.server_link.close();
    rig.note("broker down");
    tokio::time::sleep(outage).await;
    let before = fleet.published();
    rig.mosquitto.resume().await;
    rig.note("broker up again, the server still cut off");
    let deadline = tokio::time::Instant::now() + WAIT;
    while fleet.published().iter().zip(&before).any(|(now, then)| now <= then) {
        assert!(tokio::time::Instant::now() < deadline, "the nodes did not publish again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.note("the nodes are back and flushed their queues");
    rig.server_link.open().await;
    rig.server.wait_ready().await;
    rig.note("server subscribed again");
    tokio::time::sleep(STREAM).await;
    rig.finish(fleet).await;
}

/// The SQLite database on a small tmpfs, which a filler file fills mid-stream until commits fail;
/// `/healthz` must say 503 naming the store; then the filler goes and every frame must be stored
/// once.
async fn disk_full() {
    let Some(_) = mosquitto_programs("the disk-full delivery test", ["mosquitto"]) else { return };
    let volume = match Tmpfs::mount("8m") {
        Ok(volume) => volume,
        Err(why) => {
            skip_unless_required(REQUIRE_TMPFS_ENV, "the disk-full delivery test", &why);
            return;
        }
    };
    let Some(mut rig) = Rig::start("disk full", Backend::Sqlite, Some(volume.path())).await else {
        return;
    };
    let fleet = rig.start_nodes(Backoff::default());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let filler = volume.path().join("filler");
    let filled = fill(&filler);
    rig.note(&format!("filler: {filled} bytes"));
    rig.wait_for_failing_store(&format!("a full disk ({filled} bytes of filler)")).await;
    // Frames keep coming while the disk is full: the broker must hold them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, health) = get_json(rig.server.http(), "/healthz").await;
    assert_eq!((status, &health["store"]), (503, &"failing".into()), "still full: {health}");

    std::fs::remove_file(&filler).unwrap();
    rig.server.wait_ready().await;
    rig.note("space returned; the store takes commits again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.finish(fleet).await;
}

/// The server's link to PostgreSQL cut mid-stream for 5 s (connections dropped, new ones
/// refused, as when the database's host goes away): `/healthz` must say 503 naming the store, and
/// once the link is back every frame must be stored once.
async fn database_unreachable() {
    let Some(mut rig) = Rig::start("PostgreSQL unreachable", Backend::Postgres, None).await else {
        return;
    };
    let fleet = rig.start_nodes(Backoff::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let link = rig.database_link.as_mut().expect("a PostgreSQL rig has a database link");
    link.close();
    rig.note("database link cut");
    rig.wait_for_failing_store("the database link was cut").await;
    // Frames keep coming while the database is away: the broker must hold them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, health) = get_json(rig.server.http(), "/healthz").await;
    assert_eq!((status, &health["store"]), (503, &"failing".into()), "still away: {health}");
    let link = rig.database_link.as_mut().expect("a PostgreSQL rig has a database link");
    link.open().await;
    rig.server.wait_ready().await;
    rig.note("database link restored; the store takes commits again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.finish(fleet).await;
}

// ---------------------------------------------------------------------------------------------
// The rig: broker, observer, server, database

/// The `--database` argument for `database`: the SQLite file's path, or the PostgreSQL URL.
fn database_argument(database: &BackendDatabase) -> OsString {
    match (database.database(), database.postgres()) {
        (_, Some(postgres)) => postgres.url().into(),
        (Database::Sqlite(path), None) => path.clone().into_os_string(),
        (other, None) => panic!("a database of neither backend: {other}"),
    }
}

/// `url` (a PostgreSQL URL) pointed at a new [`Proxy`] to its server, and the proxy. The server
/// must be on this machine (the proxy forwards to 127.0.0.1).
async fn through_proxy(url: &str) -> (OsString, Proxy) {
    let authority_start = url.find("://").unwrap() + 3;
    let authority_end =
        url[authority_start..].find('/').map_or(url.len(), |at| authority_start + at);
    let authority = &url[authority_start..authority_end];
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host_port)) => (format!("{user}@"), host_port),
        None => (String::new(), authority),
    };
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "the PostgreSQL delivery test needs the server on this machine, not {host}"
    );
    let proxy = Proxy::start(port.parse().unwrap()).await;
    let url = format!(
        "{}{user}127.0.0.1:{}{}",
        &url[..authority_start],
        proxy.port(),
        &url[authority_end..]
    );
    (url.into(), proxy)
}

/// The devices' names.
fn devices() -> [&'static str; 3] {
    DEVICES.map(|(device, _)| device)
}

/// Broker, observer, keys, server and database of one test; a running fleet of nodes is apart
/// ([`Fleet`]).
struct Rig {
    /// The first field, so the first dropped (killed): before the broker, the keyring and the
    /// database it uses.
    server: ServerProcess,
    name: String,
    keys: TempKeyring,
    mosquitto: Mosquitto,
    observer: Observer<AnyCodec>,
    /// The server's way to the broker, which a test can cut while the nodes reach the broker.
    server_link: Proxy,
    /// The server's way to PostgreSQL, which a test can cut; `None` on SQLite.
    database_link: Option<Proxy>,
    database: BackendDatabase,
    /// The SQLite file's directory, when the rig made one.
    _database_dir: TempDir,
    started: tokio::time::Instant,
}

impl Rig {
    /// Starts Mosquitto (persistent), the observer and the server on a fresh database of
    /// `backend` (for SQLite, in `sqlite_dir` or a directory of the rig's own), and waits until
    /// the server is subscribed. `None` (after printing why) when Mosquitto is not installed or
    /// PostgreSQL cannot be reached.
    async fn start(name: &str, backend: Backend, sqlite_dir: Option<&Path>) -> Option<Rig> {
        let [mosquitto] = mosquitto_programs(&format!("delivery test: {name}"), ["mosquitto"])?;
        let database_dir = TempDir::new().unwrap();
        let database = backend.database(sqlite_dir.unwrap_or(database_dir.path()))?;
        let config = MosquittoConfig::persistent();
        let mosquitto = Mosquitto::start(&mosquitto, TempDir::new().unwrap(), &config).await;
        let keys = TempKeyring::generate(&DEVICES);
        let codecs = DEVICES.iter().map(|(d, _)| (d.to_string(), keys.codec(d))).collect();
        let observer = Observer::start(mosquitto.port(), OBSERVER_CLIENT_ID, codecs).await;
        let server_link = Proxy::start(mosquitto.port()).await;
        let (database_url, database_link) = match database.postgres() {
            Some(postgres) => {
                let (url, link) = through_proxy(postgres.url()).await;
                (url, Some(link))
            }
            None => (database_argument(&database), None),
        };
        let server = spawn_server(server_link.port(), &database_url, &keys.path()).await;
        let rig = Rig {
            server,
            name: name.to_owned(),
            keys,
            mosquitto,
            observer,
            server_link,
            database_link,
            database,
            _database_dir: database_dir,
            started: tokio::time::Instant::now(),
        };
        rig.note("broker, observer and server up");
        Some(rig)
    }

    /// Waits until `/healthz` answers 503 naming the store, after `cause`; panics, with the
    /// logs, if it has not within [`WAIT`] or answers 503 for another reason.
    async fn wait_for_failing_store(&self, cause: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, health) = get_json(self.server.http(), "/healthz").await;
            if status == 503 {
                assert_eq!(health["store"], "failing", "503 for another reason: {health}");
                self.note("the store fails; /healthz 503 names it");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the store did not fail within {WAIT:?} of {cause}; /healthz {status} \
                     {health}; rows: {}\n{}",
                    stored_rows(&self.database, &devices()).summary(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A line in the test's output (shown on failure, or with `--nocapture`).
    fn note(&self, what: &str) {
        eprintln!("[{} +{:.1} s] {what}", self.name, self.started.elapsed().as_secs_f64());
    }

    /// Starts the three nodes; they retry a lost broker with `backoff`.
    fn start_nodes(&self, backoff: Backoff) -> Fleet {
        let nodes = DEVICES
            .iter()
            .enumerate()
            .map(|(i, (device, _))| SimulatedNode {
                config: NodeConfig {
                    temperature_period: TEMPERATURE_PERIOD,
                    ..NodeConfig::default()
                },
                press_every: PRESS_EVERY,
                seed: i as u32,
                backoff,
                ..SimulatedNode::new(device, self.keys.codec(device))
            })
            .collect();
        let fleet = Fleet::start(self.mosquitto.port(), nodes);
        self.note("nodes started");
        fleet
    }

    /// Stops the nodes cleanly, waits until the observer has every frame they published and the
    /// server has stored every frame the observer saw, and compares, per device and kind.
    async fn finish(mut self, fleet: Fleet) {
        let (published, nodes) = fleet.stop().await;
        self.note("nodes stopped");
        for (device, stopped, stats) in &nodes {
            self.note(&format!(
                "node {device}: {stopped:?}, sent {}, dropped from its full queue {}",
                stats.frames_sent, stats.frames_dropped
            ));
        }
        self.observer.wait_for(&published).await;
        let expected = self.observer.routed().rows_only();
        let published = published.rows_only();
        self.note(&format!("published: {}", published.summary()));
        self.note(&format!("routed: {}", expected.summary()));

        let stored = wait_until_stored(&self.database, &devices(), &expected, STORED_WAIT).await;
        let (_, stats) = get_json(self.server.http(), "/api/stats").await;
        self.note(&format!(
            "stored: {}; server since its last start: accepted {}, redelivered {}, replay {}",
            stored.summary(),
            stats["accepted"],
            stats["rejected"]["redelivered"],
            stats["rejected"]["replay"],
        ));
        if let Some(report) = expected.mismatches(&stored) {
            let lost = [FrameKind::Led, FrameKind::Temperature].map(|kind| {
                let missing = expected.missing_in(&stored, kind);
                format!("{kind:?}: {missing} of {} not stored", expected.total(kind))
            });
            panic!(
                "{}: the database does not hold every routed frame exactly once ({}):\n{report}\n{}",
                self.name,
                lost.join(", "),
                self.logs()
            );
        }
        self.note("every routed frame stored exactly once");
    }

    /// The server's and the broker's logs, their last lines.
    fn logs(&self) -> String {
        format!(
            "--- server log (last 150 lines) ---\n{}\n--- mosquitto log (last 60 lines) ---\n{}",
            self.server.log_tail(150),
            tail(&self.mosquitto.log(), 60)
        )
    }
}

/// Starts the server against the broker on `broker_port` as [`SERVER_CLIENT_ID`] (the same
/// session on every start), and waits until it is ready; [`SERVER_BIN_ENV`] names another build
/// to run.
async fn spawn_server(broker_port: u16, database: &OsString, keyring: &Path) -> ServerProcess {
    let binary = std::env::var_os(SERVER_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ledtemp-web")));
    let flags = [
        ("--broker", OsString::from(format!("127.0.0.1:{broker_port}"))),
        ("--client-id", SERVER_CLIENT_ID.into()),
        ("--database", database.clone()),
        ("--keyring", keyring.into()),
    ];
    ServerProcess::spawn(binary, flags).await
}

// ---------------------------------------------------------------------------------------------
// A small volume

/// A tmpfs mounted on a directory of its own; unmounted (lazily, so that a process still holding
/// a file on it cannot keep it) when dropped, a panic included.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it); `Err` says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes zeros to `path` until the volume is full; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [64 * 1024, 4096, 512] {
        let zeros = vec![0u8; chunk];
        while file.write_all(&zeros).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = file.sync_all();
    written
}

// ---------------------------------------------------------------------------------------------

/// Runs `test` on a current-thread runtime in a `LocalSet`: the nodes' MQTT mailboxes are not
/// `Send`.
fn run(test: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    LocalSet::new().block_on(&runtime, test);
}
