//! The ingest pipeline: every received MQTT message goes through [`Ingest`], in the order of
//! `docs/protocol.md` ("Receiving, in this order"):
//!
//! 1. topic parse (UTF-8, then [`Topic::parse`]);
//! 2. frame length and version ([`FrameHeader::parse`]), which reads the key id;
//! 3. key lookup by (device, key id) in the [`KeyTable`](crate::KeyTable): unknown device or key
//!    id, rejected; a revoked key, or one past its rotation's `retire_at`, rejected as
//!    [`RejectReason::Revoked`](crate::RejectReason::Revoked) before any cryptography;
//! 4. [`Codec::open`] with the topic in the associated data, which also decodes exactly;
//! 5. the replay window of (device, key id), including the Last Will rule
//!    ([`ReplayWindow::state_after_frame`]);
//! 6. the caps ([`Limits`]): a frame that would make the server track more devices, or one
//!    device more LEDs or sensors, than allowed is rejected ([`RejectReason::Limit`](crate::RejectReason::Limit));
//! 7. the frame becomes the model's [`DeviceUpdate`], applied to its device's state
//!    ([`DeviceState::apply`]) and fed to the alert engine;
//! 8. one transaction ([`Store::commit`]): the history rows, the replay windows, the devices' new
//!    states and the alert state;
//! 9. only then the live cache, the event stream and the alert notifications.
//!
//! **For teaching only**, [`Ingest::insecure_plaintext`] replaces steps 2 to 5 with the
//! [`InsecurePlaintextCodec`]: any device, no key, no replay window (the project's "before").
//!
//! A rejected frame changes nothing but a counter (and maybe a rate-limited log line). Frames that
//! arrive together are committed in one transaction ([`Ingest::handle_batch`]).

mod commands;
mod limits;
mod reject_log;

pub use limits::{DEFAULT_MAX_DEVICES, Limits, MAX_LEDS_PER_DEVICE, MAX_SENSORS_PER_DEVICE};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledtemp_core::{
    Codec, DeviceId, Direction, FrameHeader, InsecurePlaintextCodec, KeyId, ReplayState,
    ReplayWindow, Topic,
};
use tokio::sync::mpsc;

use crate::alerts::{AlertRunner, CapState};
use crate::keys::KeyTable;
use crate::live::{LiveEvent, LiveState, StatsSnapshot};
use crate::model::{DeviceState, DeviceUpdate, UnixMillis};
use crate::mqtt::DeliveryAck;
use crate::store::{AcceptedFrame, Commit, CommitOutcome, Store};
use crate::{Error, RejectReason};
use reject_log::RejectLog;

/// Most frames committed in one transaction. Larger batches make a backlog drain faster (each
/// commit writes every page it touched to the WAL again, so fewer, bigger commits write less per
/// frame: see `docs/performance.md`); no larger than the event channel, so that the events of one
/// batch never make a live SSE client that keeps up skip any.
pub const MAX_BATCH: usize = 1024;
const _: () = assert!(MAX_BATCH <= crate::live::EVENT_CHANNEL_CAPACITY);

/// How often one batch is checked again against windows the database knew better
/// ([`CommitOutcome::StaleWindows`]) before it counts as a failed commit (and is tried again
/// later). Each round teaches the cache the stored windows, so a second round normally commits.
const MAX_STALE_RETRIES: usize = 8;

/// How often a store that keeps failing is logged at most.
const STORE_LOG_PERIOD: Duration = Duration::from_secs(60);

/// One MQTT PUBLISH as received, before any check.
#[derive(Debug, Clone)]
pub struct IncomingFrame {
    /// The raw topic bytes.
    pub topic: Vec<u8>,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// When it was received.
    pub received: UnixMillis,
    /// Whether the broker delivered it from its retained store (MQTT v5's RETAIN flag on a
    /// delivery): see [`DeviceUpdate::retained`].
    pub retained: bool,
    /// Whether the broker sent it again (MQTT's DUP flag: a QoS 1 frame it had sent before
    /// without receiving the acknowledgement, typically to a server that restarted before
    /// committing or acknowledging it). Only the broker sets it on a delivery, so a copy it
    /// flags that the replay window refuses is counted as
    /// [`Redelivered`](crate::RejectReason::Redelivered), not as a replay attack.
    pub duplicate: bool,
}

/// What the ingest worker is given: the one queue through which every change of the server's
/// state passes.
#[derive(Debug)]
pub enum WorkerInput {
    /// A received frame and, for a QoS 1 frame, its acknowledgement to send once the frame is
    /// committed or rejected.
    Frame(IncomingFrame, Option<DeliveryAck>),
    /// Time passed: offline rules, silent devices, the counters' event.
    Tick(UnixMillis),
    /// A notifier's daily cap after a delivery, to store.
    NotifierCap(String, CapState),
    /// A notification the delivery task sent to every notifier of its rule (or gave up on): it
    /// leaves the stored outbox.
    NotificationSent(crate::alerts::Notification),
    /// Updates another server of a shared subscription group committed to the shared database
    /// ([`Store::follow_others`]): for this server's live view.
    Remote(Vec<DeviceUpdate>),
    /// An LED command to seal and log ([`Commander`](crate::Commander)); the answer (the sealed
    /// command and its log entry, or why not) goes to the sender.
    Command(
        crate::command::CommandRecord,
        tokio::sync::oneshot::Sender<
            Result<(crate::command::SealedCommand, i64), crate::command::CommandRefusal>,
        >,
    ),
    /// A command refused before the worker saw it, for the stored command log.
    CommandLog(crate::command::CommandRecord),
    /// A sent command's outcome, for its entry in the stored command log.
    CommandSettled(crate::command::CommandSettlement),
}

/// How the ingest worker prunes old history.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep readings and LED changes this long; `None` keeps everything.
    pub keep: Option<Duration>,
    /// How often to prune.
    pub every: Duration,
}

/// First and longest wait before a batch whose commit failed is tried again.
pub const COMMIT_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The ingest worker: takes inputs until every sender is gone, committing frames that arrived
/// together in one transaction (up to [`MAX_BATCH`]), ticking, storing notifier caps, and pruning
/// old history. Blocking: run it on its own thread. Closes the store and returns when the channel
/// is closed and drained.
///
/// **Acknowledge after commit.** A batch's QoS 1 frames are acknowledged to the broker, in the
/// order they arrived, only once the batch is decided: its accepted frames committed, the others
/// rejected. When the commit fails (disk full, database down) the worker keeps the frames and
/// tries again, waiting [`COMMIT_RETRY`] (doubling) in between, taking nothing else meanwhile:
/// the broker, owed the acknowledgements, holds back what follows ([`RECEIVE_MAXIMUM`]) and keeps
/// it. When the server stops while the store fails, the batch is given up unacknowledged, and
/// the broker delivers it again to the next start.
///
/// [`RECEIVE_MAXIMUM`]: crate::RECEIVE_MAXIMUM
pub fn run_worker(
    mut ingest: Ingest,
    mut inputs: mpsc::Receiver<WorkerInput>,
    retention: Retention,
) {
    let mut last_prune: Option<Instant> = None;
    let mut others = Vec::new();
    while let Some(first) = inputs.blocking_recv() {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(input) = next.take() {
            match input {
                WorkerInput::Frame(frame, ack) => {
                    batch.push(frame);
                    acks.extend(ack);
                }
                other => others.push(other),
            }
            if batch.len() < MAX_BATCH {
                next = inputs.try_recv().ok();
            }
        }
        if !batch.is_empty() && ingest.settle(batch, &inputs) {
            acks.into_iter().for_each(DeliveryAck::send);
        }
        for input in others.drain(..) {
            match input {
                WorkerInput::Frame(..) => {}
                WorkerInput::Tick(now) => ingest.tick(now),
                WorkerInput::NotifierCap(notifier, cap) => ingest.save_notifier_cap(&notifier, cap),
                WorkerInput::Remote(updates) => ingest.apply_remote(&updates),
                WorkerInput::NotificationSent(notification) => ingest.confirm_sent(&notification),
                WorkerInput::Command(record, reply) => {
                    let _ = reply.send(ingest.seal_and_log_command(record));
                }
                WorkerInput::CommandLog(record) => {
                    ingest.log_command(&record);
                }
                WorkerInput::CommandSettled(settled) => ingest.settle_command(&settled),
            }
        }
        if let Some(keep) = retention.keep
            && last_prune.is_none_or(|at| at.elapsed() >= retention.every)
        {
            last_prune = Some(Instant::now());
            match ingest.prune(UnixMillis::now().saturating_sub(keep)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned history older than the retention"),
                Err(error) => tracing::error!("pruning failed: {error}"),
            }
        }
    }
    if let Err(error) = ingest.close() {
        tracing::error!("closing the database: {error}");
    }
}

/// How frames are opened: with the keyring, or (teaching only) in the clear.
#[derive(Debug)]
enum Opener {
    /// Sealed frames, opened with the device's key, then checked against the replay window.
    Sealed(Arc<KeyTable>),
    /// **INSECURE**: plaintext frames from any device, no replay window.
    InsecurePlaintext,
}

/// A frame that passed the checks of steps 1 to 5, before the caps.
struct Verified {
    update: DeviceUpdate,
    key_id: KeyId,
    sequence: u64,
    uptime: ledtemp_core::Uptime,
    window: ReplayWindow,
}

/// What a batch changed so far, before its commit.
#[derive(Default)]
struct Batch {
    windows: HashMap<(DeviceId, KeyId), ReplayWindow>,
    /// Devices the batch touched, with every accepted frame so far applied.
    devices: BTreeMap<DeviceId, DeviceState>,
    /// How many of them the server did not track before.
    new_devices: usize,
    accepted: Vec<AcceptedFrame>,
}

/// The pipeline. Owns the store's writer, the replay windows and the alert engine; publishes to
/// a [`LiveState`]. Build it with [`Pipeline::open`](crate::Pipeline::open).
pub struct Ingest {
    opener: Opener,
    limits: Limits,
    store: Box<dyn Store>,
    windows: HashMap<(DeviceId, KeyId), ReplayWindow>,
    live: Arc<LiveState>,
    log: RejectLog,
    alerts: Option<AlertRunner>,
    /// Whether this server runs the alert engine and the retention prune: always alone on its
    /// database; in a group, the one server holding the database's leader lock
    /// ([`Store::lead`]).
    leading: bool,
    last_stats: Option<StatsSnapshot>,
    /// When a failing store was last logged.
    store_log: Option<Instant>,
    /// Sequence blocks and node clocks for LED commands.
    commands: commands::CommandState,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("opener", &self.opener).finish_non_exhaustive()
    }
}

impl Ingest {
    /// A pipeline over `store` (whose replay windows are `windows`), publishing to `live`.
    pub(crate) fn new(
        keys: Arc<KeyTable>,
        mut store: Box<dyn Store>,
        windows: HashMap<(DeviceId, KeyId), ReplayState>,
        live: Arc<LiveState>,
        limits: Limits,
        alerts: Option<AlertRunner>,
    ) -> Ingest {
        let windows =
            windows.into_iter().map(|(key, state)| (key, ReplayWindow::restore(state))).collect();
        // Alone on its database a server always leads; in a group, the first to ask does (the
        // others ask again at every tick).
        let leading = store.lead().unwrap_or(false);
        Ingest {
            opener: Opener::Sealed(keys),
            limits,
            store,
            windows,
            live,
            log: RejectLog::new(),
            alerts,
            leading,
            last_stats: None,
            store_log: None,
            commands: commands::CommandState::default(),
        }
    }

    /// **INSECURE, for teaching only**: the same pipeline, but accepting plaintext frames
    /// ([`InsecurePlaintextCodec`]) from any device, without a key and without replay
    /// protection, as the teaching project did. The caps still hold. Also sets the flag that
    /// `/api/stats` and the dashboard's warning banner show.
    pub(crate) fn insecure_plaintext(mut self) -> Ingest {
        tracing::warn!(
            "INSECURE PLAINTEXT MODE: frames are accepted unencrypted and unauthenticated from \
             any device, with no replay protection; for teaching only"
        );
        self.opener = Opener::InsecurePlaintext;
        self.live.stats.set_insecure_plaintext(true);
        self
    }

    /// The shared state this pipeline publishes to.
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
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
    /// the checks is reported as [`Error::Dropped`] and nothing changed.
    pub fn handle_batch(
        &mut self,
        frames: Vec<IncomingFrame>,
    ) -> Vec<Result<AcceptedFrame, Error>> {
        self.handle_frames(&frames)
    }

    /// Runs `frames` through the pipeline until every one is decided: committed or rejected.
    /// Frames whose commit failed are tried again, waiting [`COMMIT_RETRY`] in between, until the
    /// store takes them or `inputs` is closed (the server stops). Returns whether all were
    /// decided; `false` means the store still failed at the stop, and the frames not committed
    /// are dropped here (unacknowledged, the broker still has the QoS 1 ones).
    fn settle(&mut self, frames: Vec<IncomingFrame>, inputs: &mpsc::Receiver<WorkerInput>) -> bool {
        let (first, longest) = COMMIT_RETRY;
        let mut wait = first;
        let mut frames = frames;
        loop {
            let results = self.handle_frames(&frames);
            let failed: Vec<IncomingFrame> = frames
                .into_iter()
                .zip(results)
                .filter_map(|(frame, result)| {
                    matches!(result, Err(Error::Dropped(_))).then_some(frame)
                })
                .collect();
            if failed.is_empty() {
                return true;
            }
            if inputs.is_closed() {
                tracing::warn!(
                    frames = failed.len(),
                    "stopping while the database fails: these frames are not stored; the broker \
                     delivers the QoS 1 ones again at the next start"
                );
                return false;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(longest);
            // Sent again: should the failed commit have gone through after all (its answer was
            // lost), the stored windows refuse these as copies, not as replay attacks.
            frames = failed
                .into_iter()
                .map(|frame| IncomingFrame { duplicate: true, ..frame })
                .collect();
        }
    }

    fn handle_frames(&mut self, frames: &[IncomingFrame]) -> Vec<Result<AcceptedFrame, Error>> {
        // A database shared with other servers may know windows this cache does not: the commit
        // then writes nothing and answers with them, and the batch is checked again against
        // them (each time the cache learns, so this ends; bounded all the same).
        let mut attempts = 0;
        let (batch, rejections, stored) = loop {
            attempts += 1;
            let (mut batch, rejections) = self.check(frames);
            if batch.accepted.is_empty() {
                break (batch, rejections, Ok(()));
            }
            match self.commit(&mut batch) {
                Ok(None) => break (batch, rejections, Ok(())),
                Ok(Some(stored)) if attempts < MAX_STALE_RETRIES => {
                    tracing::debug!(
                        windows = stored.len(),
                        "the database's replay windows were ahead of this server's: checking the \
                         batch again"
                    );
                    for (key, state) in stored {
                        self.windows.insert(key, ReplayWindow::restore(state));
                    }
                }
                Ok(Some(_)) => {
                    let error = "the database's replay windows kept moving".to_owned();
                    break (batch, rejections, Err(error));
                }
                Err(error) => break (batch, rejections, Err(error)),
            }
        };
        for (rejection, device) in &rejections {
            if let Some(error) = rejection {
                if let Some(reason) = error.reject_reason() {
                    self.live.stats.add_rejected(reason);
                }
                self.log.record(device.as_ref().map(DeviceId::as_str), error);
            }
        }
        self.log.maybe_summarise();
        let mut accepted = batch.accepted.into_iter();
        rejections
            .into_iter()
            .map(|(rejection, _)| match (rejection, &stored) {
                (Some(error), _) => Err(error),
                (None, Err(error)) => Err(Error::Dropped(error.clone())),
                (None, Ok(())) => {
                    accepted.next().ok_or_else(|| Error::Dropped("batch bookkeeping".into()))
                }
            })
            .collect()
    }

    /// Steps 1 to 7 for every frame of a batch, counting and logging nothing: the batch so far,
    /// and per frame `None` (accepted: the next of `batch.accepted`) or why it was rejected,
    /// with its device when known.
    #[allow(clippy::type_complexity)]
    fn check(
        &mut self,
        frames: &[IncomingFrame],
    ) -> (Batch, Vec<(Option<Error>, Option<DeviceId>)>) {
        let mut batch = Batch::default();
        let mut rejections = Vec::with_capacity(frames.len());
        for frame in frames {
            let mut verified = self.verify(&batch, frame);
            if let Err((Some(device), error)) = &verified
                && error.reject_reason() == Some(RejectReason::StaleWill)
                && self.refresh_window(&batch, device, frame)
            {
                verified = self.verify(&batch, frame);
            }
            let checked = verified.and_then(|verified| {
                self.admit(&mut batch, verified).map_err(|(d, e)| (Some(d), e))
            });
            match checked {
                Ok(()) => rejections.push((None, None)),
                Err((device, error)) => rejections.push((Some(error), device)),
            }
        }
        (batch, rejections)
    }

    /// A Last Will the cached window refused: the one refusal a stale cache can get wrong. In a
    /// group, another server may have accepted the online status the will belongs to, so the
    /// database's window (the truth) is read and taken into the cache when it is ahead. Whether
    /// the cache changed (then the frame is checked again). A database one server owns always
    /// agrees with its cache, and is not asked.
    fn refresh_window(&mut self, batch: &Batch, device: &DeviceId, frame: &IncomingFrame) -> bool {
        let Ok(header) = FrameHeader::parse(&frame.payload) else { return false };
        let key = (device.clone(), header.key_id);
        if batch.windows.contains_key(&key) {
            // The batch's own frames moved it: its commit compares with the database.
            return false;
        }
        match self.store.stored_window(device, header.key_id) {
            Ok(Some(stored)) if Some(stored) != self.windows.get(&key).map(ReplayWindow::state) => {
                self.windows.insert(key, ReplayWindow::restore(stored));
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!(%device, "cannot read the stored replay window: {error}");
                false
            }
        }
    }

    /// Steps 1 to 5: checks one frame against the keys and the windows (`batch` overrides the
    /// committed windows for frames of the current batch). Changes nothing.
    fn verify(
        &self,
        batch: &Batch,
        frame: &IncomingFrame,
    ) -> Result<Verified, (Option<DeviceId>, Error)> {
        let topic = std::str::from_utf8(&frame.topic)
            .map_err(|_| ledtemp_core::Error::InvalidTopic)
            .and_then(Topic::parse)
            .map_err(|e| (None, Error::rejected(e)))?;
        if topic.direction() == Direction::ToDevice {
            // A command (this server's own, or another's): not the server's to read.
            return Err((None, Error::rejected(ledtemp_core::Error::InvalidTopic)));
        }
        let device = topic.device().clone();
        let fail = |e: ledtemp_core::Error| (Some(device.clone()), Error::rejected(e));
        let window_of = |key_id: KeyId| {
            let key = (device.clone(), key_id);
            batch.windows.get(&key).or_else(|| self.windows.get(&key)).copied().unwrap_or_default()
        };
        let (opened, window) = match &self.opener {
            Opener::Sealed(keys) => {
                let header = FrameHeader::parse(&frame.payload).map_err(fail)?;
                let opened = keys
                    .open(&topic, header.key_id, &frame.payload, frame.received.as_millis())
                    .map_err(|e| (Some(device.clone()), e))?;
                let state = window_of(header.key_id).state_after_frame(&opened).map_err(|e| {
                    let reason = match &opened.message {
                        ledtemp_core::Message::Status(ledtemp_core::StatusReport {
                            status: ledtemp_core::NodeStatus::Offline,
                            ..
                        }) => RejectReason::StaleWill,
                        _ if frame.retained || frame.duplicate => RejectReason::Redelivered,
                        _ => RejectReason::from_core(e),
                    };
                    (Some(device.clone()), Error::Rejected { reason, cause: e })
                })?;
                (opened, ReplayWindow::restore(state))
            }
            Opener::InsecurePlaintext => {
                let opened = InsecurePlaintextCodec::new(KeyId(0))
                    .open(&topic, &frame.payload)
                    .map_err(fail)?;
                // No replay window: the stored window state is written back unchanged.
                let window = window_of(opened.header.key_id);
                (opened, window)
            }
        };
        let update = DeviceUpdate::from_message(device.clone(), frame.received, &opened.message)
            .ok_or_else(|| fail(ledtemp_core::Error::InvalidTopic))?;
        Ok(Verified {
            update: DeviceUpdate { retained: frame.retained, ..update },
            key_id: opened.header.key_id,
            sequence: opened.header.sequence.get(),
            uptime: opened.message.uptime(),
            window,
        })
    }

    /// Steps 6 and 7 for a verified frame: the caps, then its device's new state and the alert
    /// engine. Rejected: nothing changed.
    fn admit(&mut self, batch: &mut Batch, verified: Verified) -> Result<(), (DeviceId, Error)> {
        let device = verified.update.device.clone();
        // A device's first frame in the batch starts from its cached state (`None`: untracked).
        let first = (!batch.devices.contains_key(&device)).then(|| self.live.device(&device));
        let state = match &first {
            Some(tracked) => tracked.as_ref(),
            None => batch.devices.get(&device),
        };
        // Counted only for a device the server does not track yet: the count walks every device.
        let tracked =
            if state.is_none() { self.live.device_count() + batch.new_devices } else { 0 };
        if let Err(error) = self.limits.admit(state, tracked, &verified.update) {
            return Err((device, error));
        }
        if let Some(tracked) = first {
            batch.new_devices += usize::from(tracked.is_none());
            batch.devices.insert(device.clone(), tracked.unwrap_or_default());
        }
        let state = batch.devices.entry(device.clone()).or_default();
        if let Some(alerts) = self.alerts.as_mut().filter(|_| self.leading) {
            alerts.handle(&verified.update, state);
        }
        state.apply(&verified.update);
        batch.windows.insert((device, verified.key_id), verified.window);
        batch.accepted.push(AcceptedFrame {
            update: verified.update,
            key_id: verified.key_id,
            sequence: verified.sequence,
            uptime: verified.uptime,
            window: verified.window.state(),
        });
        Ok(())
    }

    /// Steps 8 and 9. `Ok(Some(windows))`: nothing written, the database's windows were ahead
    /// ([`CommitOutcome::StaleWindows`]); the batch's effects are rolled back.
    #[allow(clippy::type_complexity)]
    fn commit(
        &mut self,
        batch: &mut Batch,
    ) -> Result<Option<Vec<((DeviceId, KeyId), ReplayState)>>, String> {
        let devices: Vec<(&DeviceId, &DeviceState)> = batch.devices.iter().collect();
        let alert_state =
            self.alerts.as_ref().filter(|_| self.leading).and_then(AlertRunner::changed_state);
        let commit =
            Commit { frames: &batch.accepted, devices: &devices, alerts: alert_state.as_ref() };
        let outcome = self.store.commit(&commit);
        if !matches!(outcome, Ok(CommitOutcome::Written))
            && let Some(alerts) = &mut self.alerts
        {
            alerts.rolled_back();
        }
        match outcome {
            Ok(CommitOutcome::Written) => {}
            Ok(CommitOutcome::StaleWindows(stored)) => {
                self.store_recovered();
                return Ok(Some(stored));
            }
            Ok(CommitOutcome::NotLeader) => {
                // Another server took the alerts over: check the batch again without them.
                self.store_recovered();
                self.stop_leading();
                return Ok(Some(Vec::new()));
            }
            Err(error) => {
                self.store_failed(batch.accepted.len(), &error);
                return Err(error.to_string());
            }
        }
        self.store_recovered();
        self.windows.extend(std::mem::take(&mut batch.windows));
        self.commands.note_frames(&batch.accepted);
        let updates: Vec<&DeviceUpdate> = batch.accepted.iter().map(|f| &f.update).collect();
        // Committed: the batch's device states become the cache's (moved, not copied).
        self.live.publish(std::mem::take(&mut batch.devices).into_iter().collect(), &updates);
        // Counted after the caches changed: whoever sees the count sees the data too.
        self.live.stats.add_accepted(batch.accepted.len() as u64);
        if let Some(alerts) = self.alerts.as_mut().filter(|_| self.leading) {
            alerts.committed(&self.live);
        }
        Ok(None)
    }

    /// A commit failed: counted, shown in `/healthz` and `/api/stats`, and logged once when the
    /// store starts failing and then at most once a minute (a failing disk must not also flood
    /// the log).
    fn store_failed(&mut self, frames: usize, error: &Error) {
        let stats = &self.live.stats;
        stats.add_store_error();
        let started = stats.set_store_ok(false);
        let due = self.store_log.is_none_or(|at| at.elapsed() >= STORE_LOG_PERIOD);
        if started || due {
            self.store_log = Some(Instant::now());
            tracing::error!(
                frames,
                failed_commits = stats.store_errors(),
                "the database refused a commit; its frames are kept (the broker holds the QoS 1 \
                 ones, unacknowledged) and the commit is tried again: {error}"
            );
        }
    }

    /// A commit succeeded: if the store was failing, say that it works again.
    fn store_recovered(&mut self) {
        if self.live.stats.set_store_ok(true) {
            self.store_log = None;
            tracing::info!(
                failed_commits = self.live.stats.store_errors(),
                "the database takes commits again"
            );
        }
    }

    /// Time passed: ticks the alert engine (committing its state if that changed), announces
    /// devices that fell silent and the counters if they changed.
    pub fn tick(&mut self, now: UnixMillis) {
        let stats = self.live.stats.snapshot();
        if self.last_stats != Some(stats) {
            self.last_stats = Some(stats);
            self.live.broadcast(LiveEvent::Stats(stats));
        }
        self.live.announce_silences(now);
        self.check_leadership(now);
        if !self.leading {
            return;
        }
        let Some(alerts) = &mut self.alerts else { return };
        alerts.tick(now, self.live.stats.broker_connected(), &*self.live);
        self.commit_alerts();
    }

    /// Commits the alert engine's state alone, when it changed (a tick, or another server's
    /// updates), then hands on its notifications.
    fn commit_alerts(&mut self) {
        let Some(alerts) = self.alerts.as_mut().filter(|_| self.leading) else { return };
        let Some(state) = alerts.changed_state() else {
            alerts.committed(&self.live);
            return;
        };
        let commit = Commit { frames: &[], devices: &[], alerts: Some(&state) };
        match self.store.commit(&commit) {
            // No frames, so no window to be stale.
            Ok(CommitOutcome::Written | CommitOutcome::StaleWindows(_)) => {
                alerts.committed(&self.live);
            }
            Ok(CommitOutcome::NotLeader) => self.stop_leading(),
            Err(error) => {
                alerts.rolled_back();
                self.store_failed(0, &error);
            }
        }
    }

    /// Asks the store whether this server leads (takes the lead when it is free): a server that
    /// becomes the leader restores the alert engine from the database, as another server left
    /// it, so that nothing is sent twice; one that lost the lead stops alerting.
    fn check_leadership(&mut self, now: UnixMillis) {
        let leads = match self.store.lead() {
            Ok(leads) => leads,
            // The database is failing: nothing can be committed either way; ask again later.
            Err(_) => return,
        };
        if leads == self.leading {
            return;
        }
        if !leads {
            self.stop_leading();
            return;
        }
        if let Some(alerts) = &mut self.alerts {
            let snapshot = match self.store.load() {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    tracing::error!("cannot read the alert state to take the alerts over: {error}");
                    return;
                }
            };
            if let Err(error) = alerts.restore(snapshot.alerts, &snapshot.notifier_caps, now) {
                tracing::error!("cannot take the alerts over: {error}");
                return;
            }
            tracing::info!("this server now evaluates the alert rules and sends notifications");
        }
        self.leading = true;
    }

    /// Another server leads (or the lead was lost with the database connection): the engine's
    /// uncommitted decisions are dropped, and it is fed nothing until this server leads again.
    fn stop_leading(&mut self) {
        if !self.leading {
            return;
        }
        self.leading = false;
        if let Some(alerts) = &mut self.alerts {
            alerts.rolled_back();
            tracing::warn!("another server evaluates the alert rules now; this one stops alerting");
        }
    }

    /// Updates another server of the group committed: applied to the device cache and told to
    /// the event clients, as this server's own are after a commit, so that every server's
    /// dashboard shows what any of them accepted. Nothing is stored (the other server did), no
    /// replay window changes (the database's are the truth, and a commit learns them when it
    /// needs to: [`CommitOutcome::StaleWindows`]), no cap is checked (the receiving server did),
    /// and nothing is counted as accepted here.
    pub fn apply_remote(&mut self, updates: &[DeviceUpdate]) {
        let mut devices: BTreeMap<DeviceId, DeviceState> = BTreeMap::new();
        let mut alerts = self.alerts.as_mut().filter(|_| self.leading);
        for update in updates {
            let state = devices
                .entry(update.device.clone())
                .or_insert_with(|| self.live.device(&update.device).unwrap_or_default());
            // The leader's engine sees every server's updates, each with its device's state
            // before it, as it sees this server's own.
            if let Some(alerts) = alerts.as_mut() {
                alerts.handle(update, state);
            }
            state.apply(update);
        }
        let refs: Vec<&DeviceUpdate> = updates.iter().collect();
        self.live.publish(devices.into_iter().collect(), &refs);
        self.commit_alerts();
    }

    /// A notification was sent: out of the engine's outbox, committed with the alert state.
    fn confirm_sent(&mut self, notification: &crate::alerts::Notification) {
        if let Some(alerts) = self.alerts.as_mut().filter(|_| self.leading) {
            alerts.confirm_sent(notification);
            self.commit_alerts();
        }
    }

    /// Stores a notifier's daily cap.
    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) {
        if let Err(error) = self.store.save_notifier_cap(notifier, cap) {
            self.live.stats.add_store_error();
            tracing::error!(notifier, "storing the daily cap failed: {error}");
        }
    }

    /// Deletes readings and LED changes received before `cutoff`: only on the server that leads
    /// (in a group, the others leave it to that one).
    pub fn prune(&mut self, cutoff: UnixMillis) -> Result<usize, Error> {
        if !self.leading {
            return Ok(0);
        }
        self.store.prune(cutoff)
    }

    /// Closes the store (for SQLite: checkpoints its write-ahead log into the file).
    pub fn close(self) -> Result<(), Error> {
        self.store.close()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ledtemp_core::{
        Algorithm, AnyCodec, MAX_FRAME_LEN, Message, MilliCelsius, SensorName, SequenceNumber,
        TemperatureReading, Uptime,
    };

    use super::*;
    use crate::{Pipeline, PipelineOptions, RejectReason};

    /// Whether `reason` is what `result` was rejected for.
    fn rejected_for(result: &Result<AcceptedFrame, Error>, reason: RejectReason) -> bool {
        matches!(result, Err(e) if e.reject_reason() == Some(reason))
    }

    fn reading(sensor: &str) -> Message {
        Message::Temperature(TemperatureReading {
            sensor: SensorName::new(sensor).unwrap(),
            temperature: MilliCelsius(20_000),
            uptime: Uptime(1),
        })
    }

    fn frame(codec: &impl Codec, device: &str, n: u64, message: &Message) -> IncomingFrame {
        let device = DeviceId::new(device).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = codec.seal(&device, SequenceNumber::new(n).unwrap(), message, &mut buf).unwrap();
        IncomingFrame {
            topic: message.topic(&device).to_topic_string().as_str().as_bytes().to_vec(),
            payload: buf[..len].to_vec(),
            received: UnixMillis(1_700_000_000_000 + n as i64),
            retained: false,
            duplicate: false,
        }
    }

    fn pipeline(keys: KeyTable, dir: &std::path::Path, options: PipelineOptions) -> Ingest {
        let options = PipelineOptions { database: dir.join("ledtemp.db").into(), ..options };
        Pipeline::open(&options, keys).unwrap().ingest
    }

    fn limited(limits: Limits) -> PipelineOptions {
        PipelineOptions { limits, ..PipelineOptions::default() }
    }

    #[test]
    fn a_device_with_a_stolen_key_cannot_invent_more_sensors_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let codec = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[7; 16]).unwrap();
        let mut keys = KeyTable::new();
        keys.insert(
            DeviceId::new("pi").unwrap(),
            AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[7; 16]).unwrap(),
        );
        let options = limited(Limits { max_sensors: 3, ..Limits::default() });
        let mut ingest = pipeline(keys, dir.path(), options);
        for (n, sensor) in ["a", "b", "c", "a"].iter().enumerate() {
            assert!(ingest.handle(frame(&codec, "pi", n as u64, &reading(sensor))).is_ok());
        }
        let refused = ingest.handle(frame(&codec, "pi", 10, &reading("d")));
        assert!(rejected_for(&refused, RejectReason::Limit));
        assert_eq!(ingest.live().stats.rejected(RejectReason::Limit), 1);
        let devices = ingest.live().devices();
        assert_eq!(devices[0].1.temperatures.len(), 3, "the refused sensor changed nothing");
        // Known sensors still work.
        assert!(ingest.handle(frame(&codec, "pi", 11, &reading("b"))).is_ok());
    }

    #[test]
    fn insecure_plaintext_accepts_anyone_and_replays_but_not_more_devices_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let plain = InsecurePlaintextCodec::new(KeyId(1));
        let options = PipelineOptions {
            insecure_plaintext: true,
            ..limited(Limits { max_devices: 2, ..Limits::default() })
        };
        let mut ingest = pipeline(KeyTable::new(), dir.path(), options.clone());
        assert!(ingest.live().stats.snapshot().insecure_plaintext);
        let first = frame(&plain, "anyone", 5, &reading("t"));
        assert!(ingest.handle(first.clone()).is_ok());
        assert!(ingest.handle(first).is_ok(), "no replay protection in plaintext mode");
        assert!(ingest.handle(frame(&plain, "another", 0, &reading("t"))).is_ok());
        let third = ingest.handle(frame(&plain, "a-third", 0, &reading("t")));
        assert!(rejected_for(&third, RejectReason::Limit));
        assert_eq!(ingest.live().devices().len(), 2);
        // A batch that would cross the cap halfway: the first frame is taken, the second refused.
        let dir = tempfile::tempdir().unwrap();
        let options =
            PipelineOptions { limits: Limits { max_devices: 1, ..Limits::default() }, ..options };
        let mut ingest = pipeline(KeyTable::new(), dir.path(), options);
        let mut results = ingest.handle_batch(vec![
            frame(&plain, "one", 0, &reading("t")),
            frame(&plain, "two", 0, &reading("t")),
        ]);
        assert!(rejected_for(&results.pop().unwrap(), RejectReason::Limit));
        assert!(results.pop().unwrap().is_ok());
    }
}
