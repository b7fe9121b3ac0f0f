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
//!   says what is missing, duplicated or unexpected.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledtemp_core::{
    Codec, DeviceId, Error, KeyId, Message, OpenedFrame, RunEvent, SequenceNumber, Topic,
};

use crate::WAIT;
use crate::mqtt::Subscriber;

/// What a frame carries, as far as storage goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameKind {
    /// A temperature reading: a row of its own.
    Temperature,
    /// An LED change (or a periodic re-announcement): a row of its own.
    Led,
    /// An online or offline status: it updates the device, no row of its own.
    Status,
}

impl FrameKind {
    /// The kind of `message`.
    pub fn of(message: &Message) -> FrameKind {
        match message {
            Message::Temperature(_) => FrameKind::Temperature,
            Message::Led(_) => FrameKind::Led,
            Message::Status(_) => FrameKind::Status,
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
                FrameKind::Status => 2,
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
/// every number the broker routed.
#[derive(Debug)]
pub struct Observer<C> {
    subscriber: Subscriber,
    codecs: BTreeMap<String, C>,
    routed: SequenceTally,
}

impl<C: Codec> Observer<C> {
    /// Subscribes to the broker on `127.0.0.1:port` as `client_id`, holding the key of each
    /// device in `devices`.
    pub async fn start(port: u16, client_id: &str, devices: Vec<(String, C)>) -> Observer<C> {
        let subscriber = Subscriber::start_persistent(port, client_id).await;
        Observer { subscriber, codecs: devices.into_iter().collect(), routed: SequenceTally::new() }
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
