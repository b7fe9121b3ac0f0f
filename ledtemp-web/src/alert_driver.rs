//! The alert driver: runs the sans-IO [`Engine`] inside the server.
//!
//! - The ingest worker feeds it every committed frame ([`AlertDriver::handle_frames`]), after
//!   the commit, so an alert is never about a frame that was not stored.
//! - A timer task calls [`Engine::handle_tick`] at start, at [`Engine::poll_timeout`] and at
//!   least every second, and restarts the offline clocks when the broker connection comes back
//!   (the server could not hear the devices while it was down).
//! - Notifications go to a bounded queue that one delivery task drains, so ingest never waits on
//!   HTTP; each goes to the notifiers its rule names, through their [`Delivery`] policy.
//! - After each step the engine's state is stored (only when it changed), and after each
//!   delivery the notifier's daily cap: a restart neither forgets a firing alert nor sends it
//!   again, and the daily cap holds across restarts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::Error;
use crate::alert_config::AlertsConfig;
use crate::alerts::{
    Alert, AlertInput, AnyNotifier, CapState, Delivery, DeliveryCounters, Engine, EngineCounters,
    EngineState, Notification, TokioSleeper,
};
use crate::state::{LiveEvent, LiveState, now_ms, rfc3339};
use crate::store::{AcceptedFrame, AlertStateStore};

/// The receiving end of an [`AlertDriver`]'s notification queue, for [`run_alert_deliveries`].
pub type AlertQueue = mpsc::Receiver<Notification>;

/// Notifications waiting for the delivery task; past it new ones are dropped (and counted):
/// alerts on that scale mean something else is wrong, and no phone should get them all.
pub const ALERT_QUEUE: usize = 256;

/// The longest the timer waits between two ticks of the engine.
const TICK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// One notifier, its policy and what happened to its last delivery.
struct NotifierSlot {
    name: String,
    kind: &'static str,
    delivery: Delivery<AnyNotifier, TokioSleeper>,
    /// The last failure (time, message without secrets) since the last success.
    last_error: Mutex<Option<(i64, String)>>,
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
    /// When it failed, RFC 3339.
    pub last_error_at: Option<String>,
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

struct EngineSide {
    engine: Engine,
    /// The JSON last stored, to skip writes that change nothing.
    saved: String,
    /// The active and recent alerts last announced with an `alert` event.
    shown: String,
}

/// The engine, its store and the delivery queue. Shared (`Arc`) by the ingest worker, the timer
/// task and the HTTP handlers.
pub struct AlertDriver {
    side: Mutex<EngineSide>,
    store: Arc<Mutex<AlertStateStore>>,
    slots: Arc<[NotifierSlot]>,
    routes: Arc<BTreeMap<String, Vec<usize>>>,
    queue: mpsc::Sender<Notification>,
    /// Notifications queued or being delivered.
    in_flight: Arc<AtomicUsize>,
    dropped: AtomicU64,
    live: Arc<LiveState>,
}

impl std::fmt::Debug for AlertDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertDriver").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AlertDriver {
    /// Opens the alert tables of the database at `database` (open the [`Store`](crate::Store)
    /// first: it creates and migrates the file), builds the notifiers of `config`, restores the
    /// engine and the daily caps at `now` (milliseconds since the Unix epoch) and ticks the
    /// engine once. Run [`run_alert_deliveries`] with the queue, and [`run_alert_timer`] for
    /// offline rules.
    ///
    /// # Errors
    /// [`Error::Config`] for a notifier that cannot be built or a stored state from a newer
    /// version; [`Error::Store`] when the database cannot be read. A stored state that does not
    /// parse is logged and replaced.
    pub fn open(
        config: &AlertsConfig,
        database: &std::path::Path,
        live: Arc<LiveState>,
        now: i64,
    ) -> Result<(Arc<AlertDriver>, AlertQueue), Error> {
        AlertDriver::start(config, AlertStateStore::open(database)?, live, now)
    }

    /// Builds the notifiers of `config`, restores the engine and the daily caps from `store` at
    /// `now` (milliseconds since the Unix epoch) and ticks the engine once. Returns the driver
    /// and the receiving end of its queue.
    ///
    /// # Errors
    /// [`Error::Config`] for a notifier that cannot be built or a stored state from a newer
    /// version; [`Error::Store`] when the state cannot be read. A stored state that does not
    /// parse is logged and replaced.
    pub(crate) fn start(
        config: &AlertsConfig,
        store: AlertStateStore,
        live: Arc<LiveState>,
        now: i64,
    ) -> Result<(Arc<AlertDriver>, AlertQueue), Error> {
        let caps = store.caps()?;
        let mut slots = Vec::new();
        for settings in &config.notifiers {
            let delivery = Delivery::new(settings.build()?, settings.policy, TokioSleeper);
            if let Some(&(day, count)) = caps.get(&settings.name) {
                delivery.restore_cap_state(CapState { day, count });
            }
            slots.push(NotifierSlot {
                name: settings.name.clone(),
                kind: settings.kind_label(),
                delivery,
                last_error: Mutex::new(None),
            });
        }
        let stored = store.engine_state()?;
        let state = stored.as_deref().and_then(|json| {
            serde_json::from_str::<EngineState>(json)
                .inspect_err(|error| {
                    tracing::error!(
                        "the stored alert state is unreadable, starting afresh: {error}"
                    )
                })
                .ok()
        });
        let mut engine = match state {
            Some(state) => Engine::restore(config.rules.clone(), state, now),
            None => Engine::new(config.rules.clone()),
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        engine.handle_tick(now);
        let (queue, receiver) = mpsc::channel(ALERT_QUEUE);
        let driver = Arc::new(AlertDriver {
            side: Mutex::new(EngineSide {
                engine,
                saved: stored.unwrap_or_default(),
                shown: String::new(),
            }),
            store: Arc::new(Mutex::new(store)),
            slots: slots.into(),
            routes: Arc::new(config.routes.clone()),
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
            live,
        });
        driver.step(|_| {});
        Ok((driver, receiver))
    }

    /// Runs `change` on the engine, queues its notifications, stores its state if it changed
    /// and announces changed alerts to SSE clients. Blocking (a SQLite write).
    fn step(&self, change: impl FnOnce(&mut Engine)) {
        let mut side = lock(&self.side);
        change(&mut side.engine);
        while let Some(notification) = side.engine.poll_notification() {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if self.queue.try_send(notification).is_err() {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("the alert queue is full: a notification was dropped");
            }
        }
        match serde_json::to_string(&side.engine.export()) {
            Ok(json) if json != side.saved => match lock(&self.store).save_engine_state(&json) {
                Ok(()) => side.saved = json,
                Err(error) => tracing::error!("storing the alert state failed: {error}"),
            },
            Ok(_) => {}
            Err(error) => tracing::error!("serialising the alert state failed: {error}"),
        }
        let active: Vec<&Alert> = side.engine.active().collect();
        let recent: Vec<&Alert> = side.engine.recent().collect();
        let shown = serde_json::to_string(&(active, recent)).unwrap_or_default();
        if shown != side.shown {
            side.shown = shown;
            self.live.broadcast(LiveEvent::Alert);
        }
    }

    /// Feeds committed frames to the engine, in order. Blocking.
    pub(crate) fn handle_frames(&self, frames: &[AcceptedFrame]) {
        self.step(|engine| {
            for frame in frames {
                for input in AlertInput::from_frame(frame) {
                    engine.handle(&input);
                }
            }
        });
    }

    /// Advances the engine's time to `now`; with `restart_clocks`, first restarts the offline
    /// countdowns (the broker connection came back). Blocking. Returns when the engine wants
    /// the next tick.
    fn tick(&self, now: i64, restart_clocks: bool) -> Option<i64> {
        let mut next = None;
        self.step(|engine| {
            if restart_clocks {
                engine.restart_offline_clocks(now);
            }
            engine.handle_tick(now);
            next = engine.poll_timeout();
        });
        next
    }

    /// What `/api/alerts` shows.
    pub fn snapshot(&self) -> AlertsSnapshot {
        let (active, recent, counters) = {
            let side = lock(&self.side);
            (
                side.engine.active().cloned().collect(),
                side.engine.recent().cloned().collect(),
                side.engine.counters(),
            )
        };
        AlertsSnapshot {
            active,
            recent,
            notifiers: self.notifier_statuses(),
            counters,
            dropped: self.dropped.load(Ordering::Relaxed),
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
                    last_error_at: last_error.as_ref().map(|(at, _)| rfc3339(*at)),
                    last_error: last_error.map(|(_, message)| message),
                }
            })
            .collect()
    }

    /// What the engine decided so far.
    pub fn engine_counters(&self) -> EngineCounters {
        lock(&self.side).engine.counters()
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
}

/// The timer task: ticks the engine when it asks and at least every second while the broker
/// connection is up, pauses while it is down, and restarts the offline clocks when it comes back.
/// Runs until dropped.
pub async fn run_alert_timer(driver: Arc<AlertDriver>, live: Arc<LiveState>) {
    let mut connected = live.stats.broker_connected();
    loop {
        let now_connected = live.stats.broker_connected();
        let reconnected = now_connected && !connected;
        connected = now_connected;
        if !now_connected {
            // While the server cannot hear the broker, a device's silence proves nothing: ticking
            // would fire an offline alert for every device. Time stands still for the engine until
            // the link is back, and then the offline countdowns restart.
            tokio::time::sleep(TICK_AT_LEAST_EVERY).await;
            continue;
        }
        let ticking = Arc::clone(&driver);
        let next = tokio::task::spawn_blocking(move || ticking.tick(now_ms(), reconnected))
            .await
            .ok()
            .flatten();
        let longest = TICK_AT_LEAST_EVERY;
        let wait = next.map_or(longest, |at| {
            let ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            Duration::from_millis(ms).min(longest)
        });
        // A deadline already due is handled at once, but never in a busy loop.
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

/// The delivery task: sends each notification to the notifiers its rule names, one after the
/// other, and stores each notifier's daily cap after use. Returns when the queue is closed.
pub async fn run_alert_deliveries(driver: Arc<AlertDriver>, mut notifications: AlertQueue) {
    let slots = Arc::clone(&driver.slots);
    let routes = Arc::clone(&driver.routes);
    let in_flight = Arc::clone(&driver.in_flight);
    let store = Arc::clone(&driver.store);
    let live = Arc::clone(&driver.live);
    // Only the pieces are kept: the driver itself (and with it the queue's sender) may go.
    drop(driver);
    while let Some(notification) = notifications.recv().await {
        let targets = routes.get(&notification.rule).cloned().unwrap_or_default();
        for index in targets {
            let Some(slot) = slots.get(index) else { continue };
            let now = now_ms();
            let outcome = slot.delivery.deliver(now, &notification).await;
            match outcome {
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
            let cap = slot.delivery.cap_state();
            let store = Arc::clone(&store);
            let name = slot.name.clone();
            let saved = tokio::task::spawn_blocking(move || {
                lock(&store).save_cap(&name, cap.day, cap.count)
            })
            .await;
            if let Ok(Err(error)) = saved {
                tracing::error!(notifier = %slot.name, "storing the daily cap failed: {error}");
            }
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
        live.broadcast(LiveEvent::Alert);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alert_config::{NotifierKind, NotifierSettings};
    use crate::alerts::{Condition, DeliveryPolicy, Rule};
    use crate::store::{Snapshot, Store};

    fn config() -> AlertsConfig {
        let rule = Rule::new(
            "kitchen-offline",
            Condition::Offline { device: "kitchen-pi".into(), after: Duration::from_secs(60) },
        );
        AlertsConfig {
            rules: vec![rule],
            notifiers: vec![NotifierSettings {
                name: "log".into(),
                kind: NotifierKind::Log,
                policy: DeliveryPolicy::default(),
            }],
            routes: [("kitchen-offline".to_owned(), vec![0])].into(),
        }
    }

    fn live() -> Arc<LiveState> {
        Arc::new(LiveState::new([], &Snapshot::default(), Duration::from_secs(120)))
    }

    #[test]
    fn state_and_caps_are_stored_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.db");
        let _store = Store::open(&path).unwrap();
        let t0 = 1_700_000_000_000;
        {
            let (driver, _queue) = AlertDriver::open(&config(), &path, live(), t0).unwrap();
            // The device never spoke: it counts as offline a minute after watching began.
            driver.tick(t0 + 60_000, false);
            assert_eq!(driver.snapshot().active.len(), 1);
            lock(&driver.store).save_cap("log", 19_675, 7).unwrap();
        }
        let (driver, mut queue) =
            AlertDriver::open(&config(), &path, live(), t0 + 120_000).unwrap();
        let snapshot = driver.snapshot();
        assert_eq!(snapshot.active.len(), 1, "the firing alert was forgotten");
        assert_eq!(snapshot.counters.fired, 1);
        assert_eq!(driver.slots[0].delivery.cap_state(), CapState { day: 19_675, count: 7 });
        driver.tick(t0 + 600_000, false);
        // Only the first start's firing was ever queued; the restart queued nothing.
        assert!(queue.try_recv().is_err());
    }

    #[test]
    fn unreadable_state_starts_afresh_and_newer_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.db");
        let _store = Store::open(&path).unwrap();
        AlertStateStore::open(&path).unwrap().save_engine_state("{not json").unwrap();
        let (driver, _queue) = AlertDriver::open(&config(), &path, live(), 0).unwrap();
        assert!(driver.snapshot().active.is_empty());
        let mut state = serde_json::to_value(driver.side.lock().unwrap().engine.export()).unwrap();
        state["version"] = 999.into();
        AlertStateStore::open(&path).unwrap().save_engine_state(&state.to_string()).unwrap();
        let error = AlertDriver::open(&config(), &path, live(), 0).unwrap_err().to_string();
        assert!(error.contains("newer"), "{error}");
    }
}
