//! Counting frames end to end: which sequence numbers the nodes published, which ones the
//! broker routed, and whether a store holds each of them exactly once.
//!
//! - [`RecordingCodec`] wraps a node's codec and, with the [`PublishLog`] it shares, records the
//!   number and kind of every frame the broker acknowledged: the node's own account.
//! - [`Observer`] is a subscriber with a persistent session of its own that opens every frame:
//!   what the broker accepted and routed. A frame whose publish failed after it reached the
//!   broker is routed but not in the node's log (the node seals the message again with a new
//!   number), so the observer's account is the one a store must match.
//! - [`SequenceTally`] holds either account, or the rows of a store, per device and kind, and
//!   says what is missing, duplicated or unexpected; [`stored_rows`] reads a store's, and
//!   [`wait_until_stored`] waits for it to hold an account.
//!
//! And the parts of an end-to-end test around them: [`Fleet`], simulated nodes that log what
//! they publish and stop cleanly, and [`ServerProcess`], `ledtemp-web serve` as a process that a
//! test can kill, stop and start again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledtemp_core::{
    Codec, DeviceId, Error, KeyId, Message, NodeStats, OpenedFrame, RunEvent, SequenceNumber,
    Stopped, Topic,
};
use ledtemp_tokio::BrokerAddress;
use ledtemp_web::Database;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::WAIT;
use crate::mqtt::{Received, Subscriber};
use crate::net::{accepts, free_port};
use crate::node::SimulatedNode;
use crate::postgres::BackendDatabase;
use crate::server::get_json;

/// What a frame carries, as far as storage goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameKind {
    /// A temperature reading: a row of its own.
    Temperature,
    /// An LED change (or a periodic re-announcement): a row of its own.
    Led,
    /// An online or offline status: it updates the device, no row of its own.
    Status,
    /// A command to the device (sealed by the server, never by a node).
    Command,
}

impl FrameKind {
    /// The kind of `message`.
    pub fn of(message: &Message) -> FrameKind {
        match message {
            Message::Temperature(_) => FrameKind::Temperature,
            Message::Led(_) => FrameKind::Led,
            Message::Status(_) => FrameKind::Status,
            Message::Command(_) => FrameKind::Command,
        }
    }
}

/// Sequence numbers, with how often each occurs, per device and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceTally {
    counts: BTreeMap<(String, FrameKind), BTreeMap<u64, u32>>,
}

impl SequenceTally {
    /// An empty tally.
    pub fn new() -> Self {
        SequenceTally::default()
    }

    /// Counts `sequence` once more for `device`'s frames of `kind`.
    pub fn add(&mut self, device: &str, kind: FrameKind, sequence: u64) {
        let numbers = self.counts.entry((device.to_owned(), kind)).or_default();
        *numbers.entry(sequence).or_default() += 1;
    }

    /// Whether `sequence` is counted for `device`'s frames of `kind`.
    pub fn contains(&self, device: &str, kind: FrameKind, sequence: u64) -> bool {
        self.counts
            .get(&(device.to_owned(), kind))
            .is_some_and(|numbers| numbers.contains_key(&sequence))
    }

    /// Adds everything `other` counts.
    pub fn extend(&mut self, other: &SequenceTally) {
        for ((device, kind), numbers) in &other.counts {
            for (&sequence, &count) in numbers {
                for _ in 0..count {
                    self.add(device, *kind, sequence);
                }
            }
        }
    }

    /// The same tally without status frames: what a store keeps as rows.
    pub fn rows_only(&self) -> SequenceTally {
        let counts = self
            .counts
            .iter()
            .filter(|((_, kind), _)| *kind != FrameKind::Status)
            .map(|(key, numbers)| (key.clone(), numbers.clone()))
            .collect();
        SequenceTally { counts }
    }

    /// How many frames of `kind`, counting repeats, over all devices.
    pub fn total(&self, kind: FrameKind) -> usize {
        self.counts
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, numbers)| numbers.values().map(|&n| n as usize).sum::<usize>())
            .sum()
    }

    /// How many distinct numbers of `kind` this tally counts that `actual` does not.
    pub fn missing_in(&self, actual: &SequenceTally, kind: FrameKind) -> usize {
        self.counts
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(key, numbers)| {
                let theirs = actual.counts.get(key);
                numbers.keys().filter(|n| !theirs.is_some_and(|t| t.contains_key(n))).count()
            })
            .sum()
    }

    /// Whether every number counted here is also counted in `other` (at least once).
    pub fn is_covered_by(&self, other: &SequenceTally) -> bool {
        self.counts.iter().all(|(key, numbers)| {
            other
                .counts
                .get(key)
                .is_some_and(|theirs| numbers.keys().all(|n| theirs.contains_key(n)))
        })
    }

    /// `None` when `actual` holds exactly the numbers of this tally, each once; otherwise a
    /// report per device and kind of the numbers missing from `actual`, those it holds more than
    /// once, and those it holds that this tally does not.
    pub fn mismatches(&self, actual: &SequenceTally) -> Option<String> {
        let mut report = String::new();
        let keys: std::collections::BTreeSet<_> =
            self.counts.keys().chain(actual.counts.keys()).collect();
        let empty = BTreeMap::new();
        for key in keys {
            let expected = self.counts.get(key).unwrap_or(&empty);
            let got = actual.counts.get(key).unwrap_or(&empty);
            let missing: Vec<u64> =
                expected.keys().filter(|n| !got.contains_key(n)).copied().collect();
            let unexpected: Vec<u64> =
                got.keys().filter(|n| !expected.contains_key(n)).copied().collect();
            let repeated: Vec<String> = got
                .iter()
                .filter(|(_, count)| **count > 1)
                .map(|(n, count)| format!("{n} x{count}"))
                .collect();
            if missing.is_empty() && unexpected.is_empty() && repeated.is_empty() {
                continue;
            }
            let (device, kind) = key;
            let _ = writeln!(
                report,
                "{device} {kind:?}: expected {}, got {} rows ({} distinct)",
                expected.len(),
                got.values().map(|&n| n as usize).sum::<usize>(),
                got.len(),
            );
            if !missing.is_empty() {
                let _ = writeln!(report, "  missing {}: {}", missing.len(), ranges(&missing));
            }
            if !repeated.is_empty() {
                let _ = writeln!(report, "  stored more than once: {}", repeated.join(", "));
            }
            if !unexpected.is_empty() {
                let _ = writeln!(report, "  not expected: {}", ranges(&unexpected));
            }
        }
        (!report.is_empty()).then_some(report)
    }

    /// One line per device: how many temperatures and LED changes (and status frames, if any).
    pub fn summary(&self) -> String {
        let mut per_device: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
        for ((device, kind), numbers) in &self.counts {
            let slot = match kind {
                FrameKind::Temperature => 0,
                FrameKind::Led => 1,
                FrameKind::Status | FrameKind::Command => 2,
            };
            per_device.entry(device).or_default()[slot] +=
                numbers.values().map(|&n| n as usize).sum::<usize>();
        }
        per_device
            .iter()
            .map(|(device, [t, l, s])| match s {
                0 => format!("{device}: {t} temperatures, {l} LED changes"),
                s => format!("{device}: {t} temperatures, {l} LED changes, {s} status"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `[1, 2, 3, 7, 9, 10]` as `1-3, 7, 9-10`.
fn ranges(sorted: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut iter = sorted.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(", ")
}

#[derive(Debug, Default)]
struct LogState {
    /// The frame sealed last: the one a `Published` event that follows is about.
    last_sealed: Option<(u64, FrameKind)>,
    published: Vec<(u64, FrameKind)>,
}

/// The frames one node published, by its own account: every frame whose publish succeeded (for
/// QoS 1, the broker acknowledged it). Fed by the node's [`RecordingCodec`] and by
/// [`on_event`](Self::on_event) with the node's run events; clones share the log.
#[derive(Debug, Clone, Default)]
pub struct PublishLog {
    device: String,
    state: Arc<Mutex<LogState>>,
}

impl PublishLog {
    /// Records a `Published` event: the frame sealed last went out (the driver seals a frame,
    /// publishes it and reports it before it seals the next). Other events change nothing.
    pub fn on_event(&self, event: &RunEvent<'_>) {
        if let RunEvent::Published { .. } = event {
            let mut state = self.state.lock().unwrap();
            if let Some(frame) = state.last_sealed.take() {
                state.published.push(frame);
            }
        }
    }

    /// How many frames were published so far.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().published.len()
    }

    /// The published frames' numbers, status frames included.
    pub fn tally(&self) -> SequenceTally {
        let mut tally = SequenceTally::new();
        for &(sequence, kind) in &self.state.lock().unwrap().published {
            tally.add(&self.device, kind, sequence);
        }
        tally
    }
}

/// A node's codec that notes the number and kind of every frame it seals in a [`PublishLog`].
#[derive(Debug, Clone)]
pub struct RecordingCodec<C> {
    codec: C,
    log: PublishLog,
}

impl<C: Codec> RecordingCodec<C> {
    /// Wraps `device`'s `codec`; the log to feed with the node's events is the second value.
    pub fn new(device: &str, codec: C) -> (RecordingCodec<C>, PublishLog) {
        let log = PublishLog { device: device.to_owned(), state: Arc::default() };
        (RecordingCodec { codec, log: log.clone() }, log)
    }
}

impl<C: Codec> Codec for RecordingCodec<C> {
    fn key_id(&self) -> KeyId {
        self.codec.key_id()
    }

    fn seal(
        &self,
        device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let len = self.codec.seal(device, sequence, message, out)?;
        self.log.state.lock().unwrap().last_sealed = Some((sequence.get(), FrameKind::of(message)));
        Ok(len)
    }

    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error> {
        self.codec.open(topic, frame)
    }
}

/// What the broker routed: a [`Subscriber`] with a persistent session of its own, opening every
/// frame with its device's key. Start it before the nodes, so that it sees every frame; with a
/// persistent session it also gets those published while it is disconnected (a broker restart).
/// A frame delivered again (a retained one at resubscription, a redelivery) counts once. It keeps
/// no replay window: a window refuses a number far below the newest (a stopping node's offline
/// status has the number next to its connection's online status), and the observer must count
/// every number the broker routed. It also keeps each frame it counts, as it came
/// ([`frames`](Self::frames)): what an attacker on the broker could capture and replay.
#[derive(Debug)]
pub struct Observer<C> {
    subscriber: Subscriber,
    codecs: BTreeMap<String, C>,
    routed: SequenceTally,
    frames: Vec<Received>,
}

impl<C: Codec> Observer<C> {
    /// Subscribes to the broker on `127.0.0.1:port` as `client_id`, holding the key of each
    /// device in `devices`.
    pub async fn start(port: u16, client_id: &str, devices: Vec<(String, C)>) -> Observer<C> {
        let subscriber = Subscriber::start_persistent(port, client_id).await;
        Observer {
            subscriber,
            codecs: devices.into_iter().collect(),
            routed: SequenceTally::new(),
            frames: Vec::new(),
        }
    }

    /// Every distinct frame routed so far (status frames included), once each, in the order
    /// they first arrived: topic and sealed payload as the broker delivered them. Panics as
    /// [`routed`](Self::routed) does.
    pub fn frames(&mut self) -> &[Received] {
        self.routed();
        &self.frames
    }

    /// Every frame routed so far (status frames included), each once. Panics on a frame of
    /// another device or one that does not open.
    pub fn routed(&mut self) -> &SequenceTally {
        while let Ok(received) = self.subscriber.frames.try_recv() {
            let topic = Topic::parse(&received.topic).unwrap();
            let device = topic.device().as_str();
            let codec = self
                .codecs
                .get(device)
                .unwrap_or_else(|| panic!("a frame of an unknown device on {}", received.topic));
            let opened = codec
                .open(&topic, &received.payload)
                .unwrap_or_else(|e| panic!("frame on {} does not open: {e}", received.topic));
            let (kind, sequence) = (FrameKind::of(&opened.message), opened.header.sequence.get());
            if !self.routed.contains(device, kind, sequence) {
                self.routed.add(device, kind, sequence);
                self.frames.push(received);
            }
        }
        &self.routed
    }

    /// Waits until the observer has seen every frame of `published` (what the nodes published);
    /// panics after [`WAIT`] with what it has not seen: frames the broker acknowledged and lost.
    pub async fn wait_for(&mut self, published: &SequenceTally) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !published.is_covered_by(self.routed()) {
            if tokio::time::Instant::now() >= deadline {
                let missing = published.mismatches(self.routed()).unwrap_or_default();
                panic!(
                    "the broker acknowledged frames that never reached its subscribers \
                     (unexpected ones are retries the nodes sent again):\n{missing}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The tables with a row per frame, and the kind of frame each holds.
const TABLES: [(&str, FrameKind); 2] =
    [("temperatures", FrameKind::Temperature), ("led_changes", FrameKind::Led)];

/// The sequence numbers of `devices`' rows in `database`, as its server committed them so far
/// (none while a SQLite file does not exist yet). A SQLite file is read through a read-only
/// connection (the server may be writing: WAL readers see the last commit). Panics if the
/// database cannot be read.
pub fn stored_rows(database: &BackendDatabase, devices: &[&str]) -> SequenceTally {
    match (database.database(), database.postgres()) {
        (_, Some(postgres)) => {
            let mut tally = SequenceTally::new();
            for (table, kind) in TABLES {
                for device in devices {
                    let sql = format!("SELECT sequence FROM {table} WHERE device = '{device}'");
                    for sequence in postgres.query_i64(&sql) {
                        tally.add(device, kind, sequence as u64);
                    }
                }
            }
            tally
        }
        (Database::Sqlite(path), None) => sqlite_rows(path, devices)
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display())),
        (other, None) => panic!("a database of neither backend: {other}"),
    }
}

fn sqlite_rows(path: &Path, devices: &[&str]) -> Result<SequenceTally, rusqlite::Error> {
    use rusqlite::{Connection, OpenFlags};
    if !path.exists() {
        return Ok(SequenceTally::new());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut tally = SequenceTally::new();
    for (table, kind) in TABLES {
        let mut statement = conn.prepare(&format!("SELECT device, sequence FROM {table}"))?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?;
        for row in rows {
            let (device, sequence): (String, i64) = row?;
            if devices.contains(&device.as_str()) {
                tally.add(&device, kind, sequence as u64);
            }
        }
    }
    Ok(tally)
}

/// Waits until `database` holds a row for every frame of `expected` (at least once), for at
/// most `within`, then a second more, for anything still on its way (a redelivery stored
/// twice) to land; returns [`stored_rows`] then. Returns what is stored when `within` has
/// passed: compare it with `expected` ([`SequenceTally::mismatches`]) to say what is missing.
pub async fn wait_until_stored(
    database: &BackendDatabase,
    devices: &[&str],
    expected: &SequenceTally,
    within: Duration,
) -> SequenceTally {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stored = stored_rows(database, devices);
        if expected.is_covered_by(&stored) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return stored_rows(database, devices);
        }
        if tokio::time::Instant::now() >= deadline {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Simulated nodes running on the current [`LocalSet`](tokio::task::LocalSet) (their MQTT
/// mailboxes are not `Send`), each with the log of the frames it published; stop them with
/// [`stop`](Self::stop). Dropped, they stop at once, without DISCONNECT.
#[derive(Debug)]
pub struct Fleet {
    stop: watch::Sender<bool>,
    nodes: Vec<RunningNode>,
}

/// A node's device, its log of published frames and its task, which ends with how it stopped.
type RunningNode = (String, PublishLog, JoinHandle<(Stopped, NodeStats)>);

impl Fleet {
    /// Starts `nodes` against the broker on `127.0.0.1:port`, each sealing through a
    /// [`RecordingCodec`] around its codec. Must be called inside a `LocalSet`.
    pub fn start<C: Codec + 'static>(port: u16, nodes: Vec<SimulatedNode<C>>) -> Fleet {
        let (stop, stopped) = watch::channel(false);
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let (node, log) = recording(node);
                let device = node.device.clone();
                let broker = BrokerAddress::new("127.0.0.1", port, &device);
                let mut stopped = stopped.clone();
                let events = log.clone();
                let task = tokio::task::spawn_local(async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    node.run_until(broker, stop, &mut |event| events.on_event(&event)).await
                });
                (device, log, task)
            })
            .collect();
        Fleet { stop, nodes }
    }

    /// How many frames each node has published so far.
    pub fn published(&self) -> Vec<usize> {
        self.nodes.iter().map(|(_, log, _)| log.count()).collect()
    }

    /// Stops every node cleanly (each publishes its queue and its offline status, then
    /// disconnects) and returns what they published, and how each ended. Panics if a node has
    /// not stopped within [`WAIT`].
    pub async fn stop(self) -> (SequenceTally, Vec<(String, Stopped, NodeStats)>) {
        self.stop.send(true).unwrap();
        let mut published = SequenceTally::new();
        let mut ended = Vec::new();
        for (device, log, task) in self.nodes {
            let (stopped, stats) = tokio::time::timeout(WAIT, task)
                .await
                .unwrap_or_else(|_| panic!("node {device} did not stop within {WAIT:?}"))
                .unwrap();
            published.extend(&log.tally());
            ended.push((device, stopped, stats));
        }
        (published, ended)
    }
}

/// `node` sealing through a [`RecordingCodec`], and the log that codec feeds.
fn recording<C: Codec>(node: SimulatedNode<C>) -> (SimulatedNode<RecordingCodec<C>>, PublishLog) {
    let SimulatedNode {
        device,
        codec,
        led,
        sensor,
        config,
        press_every,
        press_for,
        base,
        seed,
        backoff,
    } = node;
    let (codec, log) = RecordingCodec::new(&device, codec);
    let node = SimulatedNode {
        device,
        codec,
        led,
        sensor,
        config,
        press_every,
        press_for,
        base,
        seed,
        backoff,
    };
    (node, log)
}

/// `ledtemp-web serve` as a process, with `RUST_LOG=info` and its output appended to
/// `server.log` in a directory of its own; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    binary: PathBuf,
    args: Vec<OsString>,
    http: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl ServerProcess {
    /// Starts `binary serve` with `flags` (pairs of flag and value, such as `("--broker",
    /// "127.0.0.1:1883")`) and `--listen` on a free port of 127.0.0.1, and waits until it is
    /// ready ([`wait_ready`](Self::wait_ready)).
    pub async fn spawn<'a>(
        binary: PathBuf,
        flags: impl IntoIterator<Item = (&'a str, OsString)>,
    ) -> ServerProcess {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args: Vec<OsString> = vec!["serve".into()];
        for (flag, value) in flags.into_iter().chain([("--listen", http.to_string().into())]) {
            args.push(flag.into());
            args.push(value);
        }
        let mut server = ServerProcess {
            binary,
            args,
            http,
            dir: TempDir::new().unwrap(),
            child: None,
            starts: 0,
        };
        server.start().await;
        server
    }

    /// Its HTTP address: the same on every start.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// What it logged so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The last `lines` lines of its [`log`](Self::log).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Whether it was started and has not been killed or stopped since (it may have exited on
    /// its own: [`wait_ready`](Self::wait_ready) says so).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it (again: with the same arguments, so on the same database, broker session and
    /// port) and waits until it is ready. Panics if it is running.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.starts += 1;
        let mut log: File =
            OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        writeln!(log, "=== test: start {} of {} ===", self.starts, self.binary.display()).unwrap();
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until `/healthz` says 200: subscribed to the broker, the store taking commits.
    /// Panics, with its log, if it exits or is not ready within [`WAIT`].
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the server exited ({status}):\n{}", self.log_tail(100));
            }
            if accepts(self.http.port()).await && get_json(self.http, "/healthz").await.0 == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server was not ready within {WAIT:?}:\n{}",
                self.log_tail(100)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: it ends at once, whatever it was doing. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits until it exits; panics if it does not exit within [`WAIT`] or exits
    /// with an error.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("the server did not stop within {WAIT:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "the server exited with {status} on SIGTERM:\n{}", self.log());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
