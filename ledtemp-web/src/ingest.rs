//! The ingest pipeline: every received MQTT message goes through [`Ingest`], in the order of
//! `docs/protocol.md` ("Receiving, in this order"):
//!
//! 1. topic parse (UTF-8, then [`Topic::parse`]);
//! 2. frame length and version ([`FrameHeader::parse`]), which reads the key id;
//! 3. key lookup by (device, key id) in the [`KeyTable`]: unknown device or key id, rejected;
//! 4. [`Codec::open`] with the topic in the associated data, which also decodes exactly;
//! 5. the replay window of (device, key id), including the Last Will rule
//!    ([`ReplayWindow::state_after_frame`]);
//! 6. store the data and the window's new state in one SQLite transaction;
//! 7. only then update the in-memory caches and the windows, and broadcast to SSE clients.
//!
//! A rejected frame changes nothing but a counter (and maybe a rate-limited log line). Frames that
//! arrive together are committed in one transaction ([`Ingest::handle_batch`]); each frame's data
//! and window state are always in the same one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledtemp_core::{
    AnyCodec, Codec, DeviceId, FrameHeader, KeyId, LedState, Message, NodeStatus, ReplayWindow,
    StatusReport, Topic,
};
use tokio::sync::mpsc;

use crate::alert_driver::AlertDriver;
use crate::state::{LedEvent, LiveEvent, LiveState, StatusEvent, TemperatureEvent, rfc3339};
use crate::store::{AcceptedFrame, Store};
use crate::{Error, RejectReason};

/// Most frames committed in one transaction. Larger batches make a backlog drain faster (each
/// commit writes every page it touched to the WAL again, so fewer, bigger commits write less per
/// frame: see `docs/performance.md`); no larger than the event channel, so that the events of one
/// batch never make a live SSE client that keeps up skip any.
pub const MAX_BATCH: usize = 1024;
const _: () = assert!(MAX_BATCH <= crate::state::EVENT_CHANNEL_CAPACITY);

/// The server's keys: one opened codec per (device, key id), built once at start.
#[derive(Debug, Default)]
pub struct KeyTable {
    codecs: HashMap<(DeviceId, KeyId), AnyCodec>,
}

impl KeyTable {
    /// An empty table: every frame is from an unknown device.
    pub fn new() -> KeyTable {
        KeyTable::default()
    }

    /// Adds (or replaces) the key `codec.key_id()` of `device`.
    pub fn insert(&mut self, device: DeviceId, codec: AnyCodec) {
        self.codecs.insert((device, codec.key_id()), codec);
    }

    /// The codec for (device, key id), if the keyring has it.
    pub fn get(&self, device: &DeviceId, key_id: KeyId) -> Option<&AnyCodec> {
        self.codecs.get(&(device.clone(), key_id))
    }

    /// Whether the device has any key.
    pub fn contains_device(&self, device: &DeviceId) -> bool {
        self.codecs.keys().any(|(d, _)| d == device)
    }

    /// Every device id with at least one key, sorted, once each.
    pub fn devices(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.codecs.keys().map(|(d, _)| d.as_str().to_owned()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.codecs.len()
    }

    /// Whether there are no keys at all.
    pub fn is_empty(&self) -> bool {
        self.codecs.is_empty()
    }
}

/// One MQTT PUBLISH as received, before any check.
#[derive(Debug, Clone)]
pub struct IncomingFrame {
    /// The raw topic bytes.
    pub topic: Vec<u8>,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// Receive time, ms since the Unix epoch.
    pub received_ms: i64,
}

/// Logs the first rejection per (device, reason) and then one summary per minute, so that a flood
/// of bad frames cannot flood the log. Device names from unparsable topics count as `-`.
#[derive(Debug)]
struct RejectLog {
    logged: HashSet<(String, RejectReason)>,
    suppressed: BTreeMap<RejectReason, u64>,
    last_summary: Instant,
}

impl RejectLog {
    /// Most (device, reason) pairs remembered; past it every rejection goes into the summary (an
    /// attacker can invent any number of device names).
    const MAX_REMEMBERED: usize = 1024;
    const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

    fn new() -> RejectLog {
        RejectLog {
            logged: HashSet::new(),
            suppressed: BTreeMap::new(),
            last_summary: Instant::now(),
        }
    }

    fn record(&mut self, device: Option<&str>, error: &Error) {
        let Some(reason) = error.reject_reason() else { return };
        let key = (device.unwrap_or("-").to_owned(), reason);
        if self.logged.len() < Self::MAX_REMEMBERED && !self.logged.contains(&key) {
            tracing::warn!(
                device = %key.0,
                %reason,
                "{error}; further rejections of this kind are summarised"
            );
            self.logged.insert(key);
        } else {
            *self.suppressed.entry(reason).or_default() += 1;
        }
        self.maybe_summarise();
    }

    fn maybe_summarise(&mut self) {
        if self.last_summary.elapsed() < Self::SUMMARY_PERIOD {
            return;
        }
        self.last_summary = Instant::now();
        if self.suppressed.is_empty() {
            return;
        }
        let summary: Vec<String> =
            self.suppressed.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::warn!(
            "rejected frames in the last minute (not logged one by one): {}",
            summary.join(" ")
        );
        self.suppressed.clear();
    }
}

/// The pipeline. Owns the store's writer and the replay windows; publishes to a [`LiveState`].
pub struct Ingest {
    keys: Arc<KeyTable>,
    store: Store,
    windows: HashMap<(DeviceId, KeyId), ReplayWindow>,
    live: Arc<LiveState>,
    log: RejectLog,
    alerts: Option<Arc<AlertDriver>>,
}

impl Ingest {
    /// A pipeline over `store`, with the replay windows restored from it. Window rows whose
    /// device name is invalid (a tampered file) are ignored.
    pub fn new(keys: Arc<KeyTable>, store: Store, live: Arc<LiveState>) -> Result<Ingest, Error> {
        let snapshot = store.snapshot()?;
        let windows = snapshot
            .windows
            .into_iter()
            .filter_map(|((device, key_id), state)| {
                let device = DeviceId::new(&device).ok()?;
                Some(((device, KeyId(key_id)), ReplayWindow::restore(state)))
            })
            .collect();
        Ok(Ingest { keys, store, windows, live, log: RejectLog::new(), alerts: None })
    }

    /// The same pipeline, feeding every committed frame to `alerts` after the commit.
    pub fn with_alerts(mut self, alerts: Arc<AlertDriver>) -> Ingest {
        self.alerts = Some(alerts);
        self
    }

    /// The shared state this pipeline publishes to.
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
    }

    /// Checks one frame against the keys and the windows (`pending` overrides the committed
    /// windows for frames of the current batch). Changes nothing.
    fn verify(
        &self,
        pending: &HashMap<(DeviceId, KeyId), ReplayWindow>,
        frame: &IncomingFrame,
    ) -> Result<AcceptedFrame, (Option<DeviceId>, Error)> {
        let topic = std::str::from_utf8(&frame.topic)
            .map_err(|_| ledtemp_core::Error::InvalidTopic)
            .and_then(Topic::parse)
            .map_err(|e| (None, Error::rejected(e)))?;
        let device = topic.device().clone();
        let fail = |e: ledtemp_core::Error| (Some(device.clone()), Error::rejected(e));
        let header = FrameHeader::parse(&frame.payload).map_err(fail)?;
        let key = (device.clone(), header.key_id);
        let codec = self
            .keys
            .get(&device, header.key_id)
            .ok_or_else(|| fail(ledtemp_core::Error::UnknownKey(header.key_id.0)))?;
        let opened = codec.open(&topic, &frame.payload).map_err(fail)?;
        let window =
            pending.get(&key).or_else(|| self.windows.get(&key)).copied().unwrap_or_default();
        let state = window.state_after_frame(&opened).map_err(fail)?;
        Ok(AcceptedFrame {
            device,
            key_id: header.key_id,
            sequence: opened.header.sequence.get(),
            received_ms: frame.received_ms,
            window: state,
            message: opened.message,
        })
    }

    /// Runs one frame through the whole pipeline. `Err` is either a rejection
    /// ([`Error::Rejected`], counted and logged) or a database failure (counted; the frame is
    /// dropped and nothing changed). Never panics, whatever the bytes.
    pub fn handle(&mut self, frame: IncomingFrame) -> Result<AcceptedFrame, Error> {
        let mut results = self.handle_batch(vec![frame]);
        results.pop().unwrap_or_else(|| Err(Error::Dropped("empty batch".into())))
    }

    /// Runs `frames` through the pipeline and commits every accepted one in one transaction;
    /// returns one result per frame, in order. If the commit fails, every frame that had passed
    /// the checks is reported as [`Error::Store`] and nothing changed.
    pub fn handle_batch(
        &mut self,
        frames: Vec<IncomingFrame>,
    ) -> Vec<Result<AcceptedFrame, Error>> {
        let mut pending: HashMap<(DeviceId, KeyId), ReplayWindow> = HashMap::new();
        let mut accepted = Vec::new();
        // `None`: accepted (the next of `accepted`); `Some`: rejected.
        let mut rejections: Vec<Option<Error>> = Vec::with_capacity(frames.len());
        for frame in &frames {
            match self.verify(&pending, frame) {
                Ok(ok) => {
                    pending
                        .insert((ok.device.clone(), ok.key_id), ReplayWindow::restore(ok.window));
                    rejections.push(None);
                    accepted.push(ok);
                }
                Err((device, error)) => {
                    if let Some(reason) = error.reject_reason() {
                        self.live.stats.add_rejected(reason);
                    }
                    self.log.record(device.as_ref().map(|d| d.as_str()), &error);
                    rejections.push(Some(error));
                }
            }
        }
        self.log.maybe_summarise();
        let stored = if accepted.is_empty() { Ok(()) } else { self.store.commit(&accepted) };
        let stored = stored.map_err(|error| error.to_string());
        if let Err(error) = &stored {
            self.live.stats.add_store_error();
            tracing::error!(frames = accepted.len(), "dropping frames: {error}");
        } else {
            self.windows.extend(pending);
            self.live.stats.add_accepted(accepted.len() as u64);
            for frame in &accepted {
                self.publish(frame);
            }
            if let Some(alerts) = &self.alerts
                && !accepted.is_empty()
            {
                alerts.handle_frames(&accepted);
            }
        }
        let mut accepted = accepted.into_iter();
        rejections
            .into_iter()
            .map(|rejection| match (rejection, &stored) {
                (Some(error), _) => Err(error),
                (None, Err(error)) => Err(Error::Dropped(error.clone())),
                (None, Ok(())) => {
                    accepted.next().ok_or_else(|| Error::Dropped("batch bookkeeping".into()))
                }
            })
            .collect()
    }

    /// Deletes readings and LED changes received before `cutoff_ms`.
    pub fn prune(&mut self, cutoff_ms: i64) -> Result<usize, Error> {
        self.store.prune(cutoff_ms)
    }

    /// Updates the caches for a committed frame and tells the SSE clients.
    fn publish(&self, frame: &AcceptedFrame) {
        let device = frame.device.as_str();
        let at_ms = frame.received_ms;
        let at = rfc3339(at_ms);
        let online = !matches!(
            frame.message,
            Message::Status(StatusReport { status: NodeStatus::Offline, .. })
        );
        let mut events = Vec::new();
        let was_online = self.live.update_device(device, |d| {
            let was = d.online && d.last_seen_ms.is_some();
            d.last_seen_ms = Some(d.last_seen_ms.map_or(at_ms, |seen| seen.max(at_ms)));
            d.online = online;
            let mut led = |name: &str, state: LedState| {
                d.leds.insert(name.to_owned(), (state.is_on(), at_ms));
                events.push(LiveEvent::Led(LedEvent {
                    device: device.to_owned(),
                    led: name.to_owned(),
                    on: state.is_on(),
                    at: at.clone(),
                }));
            };
            match &frame.message {
                Message::Temperature(reading) => {
                    d.temperatures
                        .insert(reading.sensor.as_str().to_owned(), (reading.temperature.0, at_ms));
                    events.push(LiveEvent::Temperature(TemperatureEvent {
                        device: device.to_owned(),
                        sensor: reading.sensor.as_str().to_owned(),
                        celsius: reading.temperature.to_celsius(),
                        at: at.clone(),
                    }));
                }
                Message::Led(change) => led(change.led.as_str(), change.state),
                Message::Status(StatusReport { status: NodeStatus::Online { leds }, .. }) => {
                    for status in leds {
                        led(status.led.as_str(), status.state);
                    }
                }
                Message::Status(StatusReport { status: NodeStatus::Offline, .. }) => {}
            }
            was
        });
        let is_status = matches!(frame.message, Message::Status(_));
        if is_status || was_online != online {
            self.live.broadcast(LiveEvent::Status(StatusEvent {
                device: device.to_owned(),
                online,
                at: at.clone(),
            }));
        }
        for event in events {
            self.live.broadcast(event);
        }
    }
}

/// How the ingest worker prunes old history.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep readings and LED changes this long; `None` keeps everything.
    pub keep: Option<Duration>,
    /// How often to prune.
    pub every: Duration,
}

/// The ingest worker: takes frames from `frames` until every sender is gone, committing what
/// arrived together in one transaction (up to [`MAX_BATCH`]), and prunes old history. Blocking:
/// run it on its own thread. Returns when the channel is closed and drained.
pub fn run_worker(
    mut ingest: Ingest,
    mut frames: mpsc::Receiver<IncomingFrame>,
    retention: Retention,
) {
    let mut last_prune: Option<Instant> = None;
    while let Some(first) = frames.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match frames.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let _ = ingest.handle_batch(batch);
        if let Some(keep) = retention.keep
            && last_prune.is_none_or(|at| at.elapsed() >= retention.every)
        {
            last_prune = Some(Instant::now());
            let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            match ingest.prune(crate::state::now_ms().saturating_sub(keep_ms)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned history older than the retention"),
                Err(error) => tracing::error!("pruning failed: {error}"),
            }
        }
    }
}
