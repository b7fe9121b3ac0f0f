//! Wiring: the embedded broker (if asked for), keyring, store, ingest worker, MQTT subscriber,
//! stats ticker and the HTTP server, with graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::alert_driver::{AlertDriver, run_alert_deliveries, run_alert_timer};
use crate::broker::{EmbeddedBroker, local_client_addr};
use crate::config::ServeConfig;
use crate::http::{AccessControl, AppState, app};
use crate::ingest::{Ingest, KeyChanges, KeyTable, Limits, Retention, run_worker};
use crate::mqtt::run_subscriber;
use crate::state::{LiveEvent, LiveState, StatusEvent, now_ms, rfc3339};
use crate::store::{AlertStateStore, HistoryReader, Store};

/// Frames buffered between the MQTT subscriber and the ingest worker; when full, the subscriber
/// waits (and the broker holds back).
pub const INGEST_QUEUE: usize = 4096;

/// How long shutdown waits for queued alert notifications to be delivered.
const ALERT_FLUSH: Duration = Duration::from_secs(5);

/// How often the retention prune runs at most.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Printed when a server or demo starts with `--insecure-plaintext`.
pub const INSECURE_PLAINTEXT_WARNING: &str = "\
WARNING: INSECURE PLAINTEXT MODE, FOR TEACHING ONLY. Frames are accepted unencrypted and \
unauthenticated from any device, with no replay protection: anyone on the network can read, \
forge and replay every reading. Never run this outside a lesson (docs/attacks.md).";

/// The keys of every entry of the keyring file at `path` (see `docs/keys.md`; the file must be
/// readable by its owner only).
pub fn load_keys(path: &std::path::Path) -> Result<KeyTable, Error> {
    let keyring = ledtemp_keys::Keyring::load(path)
        .map_err(|e| Error::Keyring(format!("{}: {e}", path.display())))?;
    Ok(keys_from_keyring(&keyring))
}

/// One codec per keyring entry, with its end of grace period; a revoked mark per revoked entry
/// ([`KeyTable::from_keyring`]).
pub fn keys_from_keyring(keyring: &ledtemp_keys::Keyring) -> KeyTable {
    KeyTable::from_keyring(keyring)
}

/// Loads the keyring file at `path` again and swaps it into `keys` as a whole
/// ([`KeyTable::replace`]): what `ledtemp-web serve` does on SIGHUP. The ingest worker, which
/// shares `keys`, opens every later frame with the new keys; replay windows are kept (they belong
/// to the pipeline, per device and key id), so a frame accepted before the reload is still a
/// replay after it. Logs what changed. A keyring that fails to load leaves `keys` as they were;
/// the error is logged and counted (`ledtemp_keyring_reload_failures_total` in `/metrics`).
pub fn reload_keys(
    keys: &KeyTable,
    path: &std::path::Path,
    live: &LiveState,
    max_devices: usize,
) -> Result<KeyChanges, Error> {
    let loaded = load_keys(path).and_then(|new| {
        let devices = new.devices();
        check_device_cap(devices.len(), max_devices)?;
        Ok((new, devices))
    });
    match loaded {
        Ok((new, devices)) => {
            let changes = keys.replace(new);
            live.add_known(devices);
            tracing::info!(
                keyring = %path.display(),
                keys = keys.len(),
                "keyring reloaded: {changes}"
            );
            Ok(changes)
        }
        Err(error) => {
            live.stats.add_keyring_reload_failure();
            tracing::error!("keyring reload failed, the keys loaded before stay in use: {error}");
            Err(error)
        }
    }
}

/// A keyring with more devices than the server may track is refused, at start and on reload.
fn check_device_cap(devices: usize, max_devices: usize) -> Result<(), Error> {
    if devices > max_devices {
        return Err(Error::Config(format!(
            "the keyring has {devices} devices, more than max-devices {max_devices}: raise it"
        )));
    }
    Ok(())
}

/// The alert driver and its two tasks, which stop when this is dropped (also when the server
/// fails to start after spawning them).
struct AlertTasks {
    driver: Arc<AlertDriver>,
    timer: JoinHandle<()>,
    deliveries: JoinHandle<()>,
}

impl Drop for AlertTasks {
    fn drop(&mut self) {
        self.timer.abort();
        self.deliveries.abort();
    }
}

/// A running server. Drop it or call [`Server::shutdown`] to stop.
pub struct Server {
    http_addr: SocketAddr,
    live: Arc<LiveState>,
    stop: watch::Sender<bool>,
    http: JoinHandle<Result<(), Error>>,
    mqtt: JoinHandle<()>,
    ticker: JoinHandle<()>,
    alerts: Option<AlertTasks>,
    worker: Option<std::thread::JoinHandle<()>>,
    broker: Option<EmbeddedBroker>,
    keys: Arc<KeyTable>,
    keyring: std::path::PathBuf,
    max_devices: usize,
}

impl Server {
    /// Starts the embedded broker if `config` asks for one, opens the store, restores the replay
    /// windows and caches, and starts the ingest worker, the MQTT subscriber and the HTTP server.
    /// Returns once the HTTP port is bound.
    ///
    /// An embedded broker whose address is taken is [`Error::EmbeddedBroker`], and nothing else
    /// is started. So is HTTP on an address other than loopback without any login configured
    /// ([`Error::Config`], unless `--insecure-no-auth`).
    pub async fn start(mut config: ServeConfig, keys: KeyTable) -> Result<Server, Error> {
        config.auth.check_listen(config.listen)?;
        let broker = config.embedded_broker.map(EmbeddedBroker::start).transpose()?;
        if let Some(broker) = &broker {
            let at = local_client_addr(broker.addr());
            config.mqtt.host = at.ip().to_string();
            config.mqtt.port = at.port();
        }
        if let Some(group) = &config.mqtt.shared_group {
            tracing::warn!(
                %group,
                "shared subscription: replay windows are per server, so a frame another server \
                 of the group accepted can be replayed to this one"
            );
        }
        check_device_cap(keys.devices().len(), config.max_devices)?;
        let store = Store::open(&config.database)?;
        let history = HistoryReader::open(&config.database)?;
        let snapshot = store.snapshot()?;
        let live = Arc::new(LiveState::new(keys.devices(), &snapshot, config.offline_after));
        let keys = Arc::new(keys);
        let mut ingest = Ingest::new(Arc::clone(&keys), store, Arc::clone(&live))?
            .with_limits(Limits { max_devices: config.max_devices, ..Limits::default() });
        if config.insecure_plaintext {
            ingest = ingest.insecure_plaintext();
        }
        let alerts = if config.alerts.is_empty() {
            None
        } else {
            let state = AlertStateStore::open(&config.database)?;
            let (driver, queue) =
                AlertDriver::start(&config.alerts, state, Arc::clone(&live), now_ms())?;
            ingest = ingest.with_alerts(Arc::clone(&driver));
            tracing::info!(
                rules = config.alerts.rules.len(),
                notifiers = config.alerts.notifiers.len(),
                "alerting on"
            );
            Some(AlertTasks {
                timer: tokio::spawn(run_alert_timer(Arc::clone(&driver), Arc::clone(&live))),
                deliveries: tokio::spawn(run_alert_deliveries(Arc::clone(&driver), queue)),
                driver,
            })
        };
        let (frames_tx, frames_rx) = mpsc::channel(INGEST_QUEUE);
        let retention = Retention { keep: config.retention, every: PRUNE_EVERY };
        let worker = std::thread::Builder::new()
            .name("ledtemp-ingest".into())
            .spawn(move || run_worker(ingest, frames_rx, retention))
            .map_err(|e| Error::io("starting the ingest thread", e))?;
        let mqtt = tokio::spawn(run_subscriber(config.mqtt.clone(), Arc::clone(&live), frames_tx));
        let ticker = tokio::spawn(stats_ticker(Arc::clone(&live)));

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(format!("binding HTTP to {}", config.listen), e))?;
        let http_addr =
            listener.local_addr().map_err(|e| Error::io("reading the HTTP address", e))?;
        let (stop, mut stopped) = watch::channel(false);
        let router = app(AppState {
            live: Arc::clone(&live),
            history,
            alerts: alerts.as_ref().map(|tasks| Arc::clone(&tasks.driver)),
            access: Arc::new(AccessControl::new(&config.auth)),
        });
        let http = tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(|e| Error::io("serving HTTP", e))
        });
        tracing::info!(%http_addr, database = %config.database.display(), "ledtemp-web running");
        Ok(Server {
            http_addr,
            live,
            stop,
            http,
            mqtt,
            ticker,
            alerts,
            worker: Some(worker),
            broker,
            keys,
            keyring: config.keyring.clone(),
            max_devices: config.max_devices,
        })
    }

    /// The keys the ingest worker opens frames with.
    pub fn keys(&self) -> &Arc<KeyTable> {
        &self.keys
    }

    /// Reloads the keyring file the server was started with ([`reload_keys`]): what SIGHUP
    /// does.
    pub fn reload_keys(&self) -> Result<KeyChanges, Error> {
        reload_keys(&self.keys, &self.keyring, &self.live, self.max_devices)
    }

    /// Where the embedded broker listens, when this server runs one.
    pub fn embedded_broker_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(EmbeddedBroker::addr)
    }

    /// Resolves if the embedded broker stops, with the error to report; it stops only when its
    /// listener failed. Never resolves without an embedded broker. Cancel-safe.
    pub async fn embedded_broker_stopped(&mut self) -> Error {
        match &mut self.broker {
            Some(broker) => broker.stopped().await,
            None => std::future::pending().await,
        }
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The live state (counters, caches).
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
    }

    /// Stops taking frames, lets the ingest worker commit what it has, waits (at most 5 s) for
    /// queued alert notifications to be delivered, closes the event streams and stops the HTTP
    /// server. Frames still queued are committed; none is half written. A notification still
    /// undelivered after the wait is lost (its alert stays firing, and is not sent again after a
    /// restart). An embedded broker keeps running until the process exits (rumqttd cannot be
    /// stopped).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.mqtt.abort();
        let _ = (&mut self.mqtt).await;
        self.ticker.abort();
        let _ = self.stop.send(true);
        if let Some(worker) = self.worker.take() {
            tokio::task::spawn_blocking(move || worker.join())
                .await
                .map_err(|e| Error::TaskFailed(e.to_string()))?
                .map_err(|_| Error::TaskFailed("the ingest worker panicked".into()))?;
        }
        if let Some(alerts) = &self.alerts {
            alerts.timer.abort();
            if !alerts.driver.flush(ALERT_FLUSH).await {
                tracing::warn!("alert notifications still queued at shutdown were dropped");
            }
            alerts.deliveries.abort();
        }
        // Open event streams never end on their own: give HTTP a moment, then stop it.
        match tokio::time::timeout(Duration::from_secs(2), &mut self.http).await {
            Ok(result) => result.map_err(|e| Error::TaskFailed(e.to_string()))?,
            Err(_) => {
                self.http.abort();
                Ok(())
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.mqtt.abort();
        self.ticker.abort();
        self.http.abort();
    }
}

/// Once a second: broadcasts the counters to SSE clients if they changed, and a `status` event
/// for each device whose shown online state flipped (also when it went silent for longer than
/// the offline timeout, which no frame announces; a flip a status frame caused was already
/// announced by the pipeline and is announced again, harmlessly). Reads state, writes none.
async fn stats_ticker(live: Arc<LiveState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let mut shown_online: HashMap<String, bool> = HashMap::new();
    loop {
        interval.tick().await;
        let stats = live.stats.snapshot();
        if last != Some(stats) {
            last = Some(stats);
            live.broadcast(LiveEvent::Stats(stats));
        }
        let now = now_ms();
        for (id, device) in live.devices() {
            let online = live.is_online(&device, now);
            if shown_online.insert(id.clone(), online).is_some_and(|before| before != online) {
                live.broadcast(LiveEvent::Status(StatusEvent {
                    device: id,
                    online,
                    at: rfc3339(now),
                }));
            }
        }
    }
}

/// SIGHUP arrivals: each asks `serve` to reload the keyring.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening (must run inside the runtime). If that fails, the error is logged and
    /// [`next`](Self::next) never resolves.
    fn new() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| {
                    tracing::error!("cannot listen for SIGHUP, keyring reload disabled: {error}");
                })
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// Resolves at the next SIGHUP; never on systems without signals. Cancel-safe.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// `ledtemp-web serve`: loads the keyring, starts everything, runs until Ctrl-C or SIGTERM (or
/// until the embedded broker stops, which is an error), then shuts down gracefully.
pub async fn serve(config: ServeConfig) -> Result<(), Error> {
    if config.insecure_plaintext {
        eprintln!("{INSECURE_PLAINTEXT_WARNING}");
    }
    // The teaching mode accepts any device: it has no use for keys.
    let keys =
        if config.insecure_plaintext { KeyTable::new() } else { load_keys(&config.keyring)? };
    if keys.is_empty() && !config.insecure_plaintext {
        tracing::warn!(
            keyring = %config.keyring.display(),
            "the keyring is empty: every frame will be rejected"
        );
    }
    let plaintext = config.insecure_plaintext;
    // Listening before anything is printed: SIGHUP's default action would end the process.
    let mut hangups = Hangups::new();
    let mut server = Server::start(config, keys).await?;
    if let Some(addr) = server.embedded_broker_addr() {
        println!("ledtemp-web: embedded MQTT v5 broker on {addr}");
    }
    println!("ledtemp-web: dashboard at http://{}/", server.http_addr());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            error = server.embedded_broker_stopped() => break Err(error),
            () = hangups.next() => {
                if plaintext {
                    tracing::warn!("SIGHUP ignored: the insecure plaintext mode uses no keyring");
                } else {
                    // Logged and counted inside; the server keeps running on the old keys.
                    let _ = server.reload_keys();
                }
            }
        }
    };
    tracing::info!("shutting down");
    let shut_down = server.shutdown().await;
    outcome.and(shut_down)
}
