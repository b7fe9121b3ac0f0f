//! The alert driver: runs the sans-IO [`Engine`] inside the ingest worker, and delivers what it
//! decides.
//!
//! - The ingest worker owns the engine ([`AlertRunner`]): it feeds it every verified frame of a
//!   batch before the commit, and the engine's new state is written in the same transaction as
//!   the frames that changed it (only when it changed). If the commit fails the engine goes back
//!   to the state before the batch, and nothing it decided is sent.
//! - The worker also ticks it (about once a second) for offline rules, pausing while the broker
//!   connection is down and restarting the offline countdowns when it comes back (the server
//!   could not hear the devices meanwhile). A tick that changes the state is committed alone.
//! - Only after a commit are notifications queued; one delivery task drains the bounded queue
//!   ([`run_alert_deliveries`]), so ingest never waits on HTTP, and hands each notifier's daily
//!   cap back to the worker to store.
//! - A notification is in the stored alert state (its outbox) from the commit that decided it
//!   until the delivery task says it was sent (or given up on) and the worker commits again: a
//!   crash or stop in between sends it at the next start, or by the server that takes the lead.
//!   At least once: a crash after the send and before that commit sends it twice.
//! - HTTP handlers read an [`AlertBoard`]: the engine's alerts as of the last commit, and each
//!   notifier's counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::config::AlertsConfig;
use super::{
    Alert, AnyNotifier, CapState, Delivery, DeliveryCounters, Engine, EngineCounters, EngineState,
    LastSeen, Notification, TokioSleeper,
};
use crate::Error;
use crate::ingest::WorkerInput;
use crate::live::{LiveEvent, LiveState};
use crate::model::{DeviceState, DeviceUpdate, UnixMillis};

/// Notifications waiting for the delivery task; past it new ones are dropped (and counted):
/// alerts on that scale mean something else is wrong, and no phone should get them all.
pub const ALERT_QUEUE: usize = 256;

/// One notifier, its policy and what happened to its last delivery.
struct NotifierSlot {
    name: String,
    kind: &'static str,
    delivery: Delivery<AnyNotifier, TokioSleeper>,
    /// The last failure (time, message without secrets) since the last success.
    last_error: Mutex<Option<(UnixMillis, String)>>,
}

/// What `/api/alerts` shows of one notifier.
#[derive(Debug, Clone, Serialize)]
pub struct NotifierStatus {
    /// The name from the configuration.
    pub name: String,
    /// `twilio`, `webhook` or `log`.
    pub kind: &'static str,
    /// Sent, failed, retried and capped.
    #[serde(flatten)]
    pub counters: DeliveryCounters,
    /// The last failure since the last success: what went wrong (never a secret).
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<UnixMillis>,
}

/// The body of `GET /api/alerts`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertsSnapshot {
    /// Pending and firing alerts.
    pub active: Vec<Alert>,
    /// Resolved alerts and LED notices, newest first.
    pub recent: Vec<Alert>,
    /// Each notifier and how its deliveries went.
    pub notifiers: Vec<NotifierStatus>,
    /// What the engine decided so far.
    pub counters: EngineCounters,
    /// Notifications dropped because the delivery queue was full.
    pub dropped: u64,
}

/// The engine's alerts as of the last commit.
#[derive(Debug, Default, PartialEq)]
struct EngineView {
    active: Vec<Alert>,
    recent: Vec<Alert>,
    counters: EngineCounters,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the HTTP side reads of alerting: committed alerts, notifier counters, the drop count.
/// Written by the ingest worker (alerts) and the delivery task (notifiers).
pub struct AlertBoard {
    view: RwLock<EngineView>,
    slots: Vec<NotifierSlot>,
    /// Notifications queued or being delivered.
    in_flight: AtomicUsize,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AlertBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertBoard").finish_non_exhaustive()
    }
}

impl AlertBoard {
    /// What `/api/alerts` shows.
    pub fn snapshot(&self) -> AlertsSnapshot {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        AlertsSnapshot {
            active: view.active.clone(),
            recent: view.recent.clone(),
            notifiers: self.notifier_statuses(),
            counters: view.counters,
            dropped: self.dropped(),
        }
    }

    /// Each notifier's counters and last failure.
    pub fn notifier_statuses(&self) -> Vec<NotifierStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let last_error = lock(&slot.last_error).clone();
                NotifierStatus {
                    name: slot.name.clone(),
                    kind: slot.kind,
                    counters: slot.delivery.counters(),
                    last_error_at: last_error.as_ref().map(|(at, _)| *at),
                    last_error: last_error.map(|(_, message)| message),
                }
            })
            .collect()
    }

    /// What the engine decided so far (as of the last commit).
    pub fn engine_counters(&self) -> EngineCounters {
        self.view.read().unwrap_or_else(PoisonError::into_inner).counters
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every queued notification was delivered (or given up on), for at most
    /// `limit`. Returns whether the queue is empty.
    pub(crate) async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Replaces the committed view; whether the alerts shown changed.
    fn show(&self, engine: &Engine) -> bool {
        let view = EngineView {
            active: engine.active().cloned().collect(),
            recent: engine.recent().cloned().collect(),
            counters: engine.counters(),
        };
        let mut shown = self.view.write().unwrap_or_else(PoisonError::into_inner);
        let changed = shown.active != view.active || shown.recent != view.recent;
        *shown = view;
        changed
    }
}

/// The receiving end of the notification queue, for [`run_alert_deliveries`].
pub(crate) struct DeliveryQueue {
    receiver: mpsc::Receiver<Notification>,
    routes: std::collections::BTreeMap<String, Vec<usize>>,
}

/// The engine as the ingest worker runs it (see the module documentation).
pub(crate) struct AlertRunner {
    engine: Engine,
    /// The rules, to restore the engine from a stored state when this server takes the lead.
    rules: Vec<super::Rule>,
    /// The engine as of the last commit, while a batch is being handled.
    committed: Option<Engine>,
    board: Arc<AlertBoard>,
    queue: mpsc::Sender<Notification>,
    /// Whether the broker link was up at the last tick.
    connected: bool,
}

impl AlertRunner {
    /// Builds the notifiers of `config` with their stored daily `caps`, restores the engine from
    /// its stored `state` (if any) at `now` and ticks it once.
    ///
    /// # Errors
    /// [`Error::Config`] for a notifier that cannot be built or a stored state from a newer
    /// version.
    pub(crate) fn new(
        config: &AlertsConfig,
        state: Option<EngineState>,
        caps: &std::collections::HashMap<String, CapState>,
        now: UnixMillis,
        devices: &impl LastSeen,
    ) -> Result<(AlertRunner, Arc<AlertBoard>, DeliveryQueue), Error> {
        let mut slots = Vec::new();
        for settings in &config.notifiers {
            let delivery = Delivery::new(settings.build()?, settings.policy, TokioSleeper);
            if let Some(&cap) = caps.get(&settings.name) {
                delivery.restore_cap_state(cap);
            }
            slots.push(NotifierSlot {
                name: settings.name.clone(),
                kind: settings.kind_label(),
                delivery,
                last_error: Mutex::new(None),
            });
        }
        let mut engine = match state {
            Some(state) => Engine::restore(config.rules.clone(), state, now.as_millis()),
            None => Engine::new(config.rules.clone()),
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        engine.handle_tick(now.as_millis(), devices);
        let board = Arc::new(AlertBoard {
            view: RwLock::new(EngineView::default()),
            slots,
            in_flight: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        board.show(&engine);
        let (queue, receiver) = mpsc::channel(ALERT_QUEUE);
        let runner = AlertRunner {
            engine,
            rules: config.rules.clone(),
            committed: None,
            board: Arc::clone(&board),
            queue,
            connected: true,
        };
        Ok((runner, board, DeliveryQueue { receiver, routes: config.routes.clone() }))
    }

    /// Starts again from the stored `state` and daily `caps` (as another server of the group
    /// left them) at `now`: this server takes the lead. What the engine held before is dropped.
    ///
    /// # Errors
    /// [`Error::Config`] for a stored state from a newer version.
    pub(crate) fn restore(
        &mut self,
        state: Option<EngineState>,
        caps: &std::collections::HashMap<String, CapState>,
        now: UnixMillis,
    ) -> Result<(), Error> {
        let engine = match state {
            Some(state) => Engine::restore(self.rules.clone(), state, now.as_millis()),
            None => Engine::new(self.rules.clone()),
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        for slot in &self.board.slots {
            if let Some(&cap) = caps.get(&slot.name) {
                slot.delivery.restore_cap_state(cap);
            }
        }
        // Not ticked here: the worker's next tick starts from the stored state, so that what it
        // decides is committed before anything is sent.
        self.engine = engine;
        self.committed = None;
        self.board.show(&self.engine);
        Ok(())
    }

    /// Keeps the engine as it is now, to go back to if the coming commit fails.
    fn begin(&mut self) {
        if self.committed.is_none() {
            self.committed = Some(self.engine.clone());
        }
    }

    /// Feeds one verified update of the current batch; `before` is its device's state before it.
    pub(crate) fn handle(&mut self, update: &DeviceUpdate, before: &DeviceState) {
        self.begin();
        self.engine.handle(update, before);
    }

    /// Advances time to `now` (see the module documentation for the broker pause).
    pub(crate) fn tick(
        &mut self,
        now: UnixMillis,
        broker_connected: bool,
        devices: &impl LastSeen,
    ) {
        let reconnected = broker_connected && !self.connected;
        self.connected = broker_connected;
        if !broker_connected {
            // While the server cannot hear the broker, a device's silence proves nothing: ticking
            // would fire an offline alert for every device. Time stands still for the engine until
            // the link is back, and then the offline countdowns restart.
            return;
        }
        self.begin();
        if reconnected {
            self.engine.restart_offline_clocks(now.as_millis());
        }
        self.engine.handle_tick(now.as_millis(), devices);
    }

    /// The engine's state to commit, when the current batch changed it.
    pub(crate) fn changed_state(&self) -> Option<EngineState> {
        let before = self.committed.as_ref()?;
        (!self.engine.same_state(before)).then(|| self.engine.export())
    }

    /// The batch was committed: hands its notifications to the delivery task and shows the new
    /// alerts.
    pub(crate) fn committed(&mut self, live: &LiveState) {
        self.committed = None;
        while let Some(notification) = self.engine.poll_notification() {
            self.board.in_flight.fetch_add(1, Ordering::SeqCst);
            if self.queue.try_send(notification).is_err() {
                self.board.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.board.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("the alert queue is full: a notification was dropped");
            }
        }
        if self.board.show(&self.engine) {
            live.broadcast(LiveEvent::Alert);
        }
    }

    /// `notification` was delivered (or given up on): it leaves the engine's stored outbox with
    /// the next commit of the alert state.
    pub(crate) fn confirm_sent(&mut self, notification: &Notification) {
        self.begin();
        self.engine.confirm_sent(notification);
    }

    /// The batch was not committed: the engine goes back to the last committed state, and what it
    /// decided meanwhile is forgotten.
    pub(crate) fn rolled_back(&mut self) {
        if let Some(engine) = self.committed.take() {
            self.engine = engine;
        }
    }
}

/// The delivery task: sends each notification to the notifiers its rule names, one after the
/// other, and hands each notifier's daily cap to the ingest worker to store (`store`, if any).
/// Returns when the queue is closed.
pub(crate) async fn run_alert_deliveries(
    board: Arc<AlertBoard>,
    mut queue: DeliveryQueue,
    store: Option<mpsc::Sender<WorkerInput>>,
    live: Arc<LiveState>,
) {
    while let Some(notification) = queue.receiver.recv().await {
        let targets = queue.routes.get(&notification.rule).cloned().unwrap_or_default();
        for index in targets {
            let Some(slot) = board.slots.get(index) else { continue };
            let now = UnixMillis::now();
            match slot.delivery.deliver(now.as_millis(), &notification).await {
                Ok(sent) => {
                    *lock(&slot.last_error) = None;
                    tracing::info!(
                        notifier = %slot.name,
                        alert = notification.alert_id,
                        id = sent.id.as_deref().unwrap_or(""),
                        "notification sent"
                    );
                }
                Err(error) => *lock(&slot.last_error) = Some((now, error.to_string())),
            }
            let cap = WorkerInput::NotifierCap(slot.name.clone(), slot.delivery.cap_state());
            if let Some(store) = &store
                && store.send(cap).await.is_err()
            {
                tracing::error!(notifier = %slot.name, "the daily cap was not stored: ingest stopped");
            }
        }
        // Sent (or given up on) everywhere: it may leave the stored outbox.
        if let Some(store) = &store
            && store.send(WorkerInput::NotificationSent(notification)).await.is_err()
        {
            tracing::warn!("a sent notification stays in the outbox: ingest stopped");
        }
        board.in_flight.fetch_sub(1, Ordering::SeqCst);
        live.broadcast(LiveEvent::Alert);
    }
}
