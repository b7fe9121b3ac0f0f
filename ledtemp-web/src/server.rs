//! Building and running the server: [`Pipeline::open`] assembles the store, the caches, the
//! replay windows, the alert engine and the ingest pipeline (every caller: `serve`, the demo, the
//! tests, the crate example); [`Server::start`] runs a pipeline with the embedded broker (if
//! asked for), the MQTT subscriber, the ingest worker, the clock and the HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::alerts::{AlertBoard, AlertRunner, AlertsConfig, DeliveryQueue, run_alert_deliveries};
use crate::broker::{EmbeddedBroker, local_client_addr};
use crate::command::{CommandLink, Commander};
use crate::config::ServeConfig;
use crate::homeassistant::HomeAssistantBridge;
use crate::http::{AccessControl, AppState, app};
use crate::ingest::{Ingest, Limits, Retention, WorkerInput, run_worker};
use crate::keys::{KeyChanges, KeyTable, check_device_cap, load_keys, reload_keys};
use crate::live::LiveState;
use crate::model::UnixMillis;
use crate::mqtt::{SubscriberControl, run_subscriber};
use crate::store::{Database, HistoryStore, OpenDatabase, Store};

/// Inputs buffered for the ingest worker (frames from the MQTT subscriber, ticks, notifier
/// caps); when full, the subscriber waits (and the broker holds back).
pub const INGEST_QUEUE: usize = 8192;

/// Notices of the other servers of a group waiting for the ingest worker; beyond, they are left
/// out of the live view (the database has them).
const REMOTE_QUEUE: usize = 256;

/// How long shutdown waits for queued alert notifications to be delivered.
const ALERT_FLUSH: Duration = Duration::from_secs(5);

/// How often the retention prune runs at most.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The first wait before trying an unreachable database again; it doubles after each failure.
pub const DATABASE_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries of an unreachable database.
pub const DATABASE_RETRY_MAX: Duration = Duration::from_secs(10);

/// How often an unreachable database is logged again while the server waits for it.
const DATABASE_WAIT_LOG: Duration = Duration::from_secs(60);

/// How often the ingest worker is ticked (offline alerts, silent devices, the counters' event).
const TICK_EVERY: Duration = Duration::from_secs(1);

/// Printed when a server or demo starts with `--insecure-plaintext`.
pub const INSECURE_PLAINTEXT_WARNING: &str = "\
WARNING: INSECURE PLAINTEXT MODE, FOR TEACHING ONLY. Frames are accepted unencrypted and \
unauthenticated from any device, with no replay protection: anyone on the network can read, \
forge and replay every reading. Never run this outside a lesson (docs/attacks.md).";

/// How the pipeline is built: where its data lives and the rules it applies.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The database: a SQLite file (created if missing) or PostgreSQL.
    pub database: Database,
    /// How long history is kept; `None` for ever.
    pub retention: Option<Duration>,
    /// Silence after which a device is shown offline.
    pub offline_after: Duration,
    /// Alert rules and notifiers (only from the TOML file); empty: no alerting.
    pub alerts: AlertsConfig,
    /// Caps on devices, and on LEDs and sensors per device (a bigger keyring is an error).
    pub limits: Limits,
    /// **INSECURE, teaching only**: accept plaintext frames from any device, no replay
    /// protection (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
}

impl Default for PipelineOptions {
    /// `ledtemp.db` in the working directory, history kept for ever, offline after 120 s, no
    /// alerts, the default caps, sealed frames.
    fn default() -> PipelineOptions {
        PipelineOptions {
            database: Database::Sqlite(PathBuf::from("ledtemp.db")),
            retention: None,
            offline_after: Duration::from_secs(120),
            alerts: AlertsConfig::default(),
            limits: Limits::default(),
            insecure_plaintext: false,
        }
    }
}

/// What the HTTP side and the server's owner read: counters and device states, history, alerts,
/// keys. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    /// Counters, the device cache and the event channel.
    pub live: Arc<LiveState>,
    /// History queries (read-only, on their own connection).
    pub history: Arc<dyn HistoryStore>,
    /// Alerts as of the last commit, and the notifiers; `None` when no rule is configured.
    pub alerts: Option<Arc<AlertBoard>>,
    /// The keys the pipeline opens frames with (a keyring reload swaps them in place).
    pub keys: Arc<KeyTable>,
    /// Sends LED commands; `None` without an MQTT link (a pipeline fed directly).
    pub commands: Option<Commander>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").finish_non_exhaustive()
    }
}

impl ServerState {
    /// The state the HTTP application serves, with `access` deciding who may read it.
    pub fn app_state(&self, access: AccessControl) -> AppState {
        AppState { server: self.clone(), access: Arc::new(access) }
    }
}

/// The server without the network: the ingest pipeline over its store, and what everyone else
/// reads. Feed it frames directly ([`Ingest::handle`]), or let [`Server::start`] run it.
pub struct Pipeline {
    /// The pipeline: the one writer of the server's state.
    pub ingest: Ingest,
    /// What the HTTP side reads.
    pub state: ServerState,
    deliveries: Option<DeliveryQueue>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("ingest", &self.ingest).finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Opens the database of `options` ([`Database::open`]: creating and migrating it) and
    /// builds the pipeline on it with `keys` ([`Pipeline::with_store`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a keyring with more devices than `options.limits.max_devices` or an
    /// alert notifier that cannot be built; for the database, the errors of [`Database::open`].
    pub fn open(options: &PipelineOptions, keys: KeyTable) -> Result<Pipeline, Error> {
        let OpenDatabase { store, history } = options.database.open()?;
        Pipeline::with_store(store, history, options, keys)
    }

    /// Builds the pipeline on any database: rebuilds the device cache, the replay windows and the
    /// alert engine from `store` ([`Store::load`]); `history` answers the HTTP side's history
    /// queries. `options.database` is not used.
    ///
    /// # Errors
    /// As [`Pipeline::open`].
    pub fn with_store(
        mut store: Box<dyn Store>,
        history: Arc<dyn HistoryStore>,
        options: &PipelineOptions,
        keys: KeyTable,
    ) -> Result<Pipeline, Error> {
        let known = keys.devices();
        check_device_cap(known.len(), options.limits.max_devices)?;
        let snapshot = store.load()?;
        let live = Arc::new(LiveState::new(known, snapshot.devices, options.offline_after));
        let (alerts, board, deliveries) = if options.alerts.is_empty() {
            (None, None, None)
        } else {
            let (runner, board, queue) = AlertRunner::new(
                &options.alerts,
                snapshot.alerts,
                &snapshot.notifier_caps,
                UnixMillis::now(),
                &*live,
            )?;
            (Some(runner), Some(board), Some(queue))
        };
        let keys = Arc::new(keys);
        let mut ingest = Ingest::new(
            Arc::clone(&keys),
            store,
            snapshot.windows,
            Arc::clone(&live),
            options.limits,
            alerts,
        );
        if options.insecure_plaintext {
            ingest = ingest.insecure_plaintext();
        }
        Ok(Pipeline {
            ingest,
            state: ServerState { live, history, alerts: board, keys, commands: None },
            deliveries,
        })
    }

    /// The alert delivery task, to spawn on a tokio runtime; `None` without alert rules, or when
    /// it was taken already. Each notifier's daily cap goes to `caps` (the ingest worker's queue)
    /// to be stored; without one (a pipeline fed directly), the caps hold only in memory.
    pub fn alert_deliveries(
        &mut self,
        caps: Option<mpsc::Sender<WorkerInput>>,
    ) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        let queue = self.deliveries.take()?;
        let board = Arc::clone(self.state.alerts.as_ref()?);
        Some(run_alert_deliveries(board, queue, caps, Arc::clone(&self.state.live)))
    }
}

/// A running server. Drop it or call [`Server::shutdown`] to stop.
pub struct Server {
    http_addr: SocketAddr,
    state: ServerState,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    mqtt: JoinHandle<()>,
    mqtt_control: watch::Sender<SubscriberControl>,
    clock: JoinHandle<()>,
    /// Forwards the other servers' updates (a shared group) to the worker.
    remote: JoinHandle<()>,
    deliveries: Option<JoinHandle<()>>,
    worker: Option<std::thread::JoinHandle<()>>,
    broker: Option<EmbeddedBroker>,
    /// The Home Assistant bridge, when configured.
    homeassistant: Option<HomeAssistantBridge>,
    keyring: PathBuf,
    max_devices: usize,
}

impl Server {
    /// Starts the embedded broker if `config` asks for one, opens the pipeline
    /// ([`Pipeline::open`]), and starts the ingest worker, its clock, the MQTT subscriber, the
    /// alert deliveries and the HTTP server. Returns once the HTTP port is bound.
    ///
    /// A PostgreSQL server that cannot be reached ([`Error::DatabaseUnreachable`]: refused,
    /// timed out, starting up) is waited for: logged once (then once a minute) and tried again,
    /// every [`DATABASE_RETRY_MAX`] at most, until it answers; drop the future to give up. Any
    /// other database error (a wrong URL, authentication, a newer schema) is returned at once.
    ///
    /// An embedded broker whose address is taken is [`Error::EmbeddedBroker`], and nothing else
    /// is started. So is HTTP on an address other than loopback without any login configured
    /// ([`Error::Config`], unless `--insecure-no-auth`).
    pub async fn start(mut config: ServeConfig, keys: KeyTable) -> Result<Server, Error> {
        config.auth.check_listen(config.listen)?;
        // HTTP's port first: when it is taken, nothing else has started.
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another program uses it: stop it, or choose another address with --listen, \
                 e.g. --listen 127.0.0.1:8081)"
            } else {
                ""
            };
            Error::io(format!("binding HTTP to {}{hint}", config.listen), e)
        })?;
        let broker = config.embedded_broker.map(EmbeddedBroker::start).transpose()?;
        if let Some(broker) = &broker {
            let at = local_client_addr(broker.addr());
            config.mqtt.host = at.ip().to_string();
            config.mqtt.port = at.port();
        }
        if let Some(group) = &config.mqtt.shared_group {
            crate::config::shared_group_check(&config.pipeline.database, &config.mqtt.client_id)?;
            tracing::info!(%group, "shared subscription: the replay windows are the database's");
        }
        let OpenDatabase { mut store, history } = open_database(&config.pipeline.database).await?;
        // The other servers of a group: their commits reach this server's live view.
        let (remote_sink, remote_updates) = mpsc::channel(REMOTE_QUEUE);
        if config.mqtt.shared_group.is_some() {
            store.follow_others(remote_sink)?;
        }
        let mut pipeline = Pipeline::with_store(store, history, &config.pipeline, keys)?;
        let alerts = &config.pipeline.alerts;
        if !alerts.is_empty() {
            tracing::info!(
                rules = alerts.rules.len(),
                notifiers = alerts.notifiers.len(),
                "alerting on"
            );
        }
        let (inputs, worker_inputs) = mpsc::channel(INGEST_QUEUE);
        let deliveries = pipeline.alert_deliveries(Some(inputs.clone())).map(tokio::spawn);
        let Pipeline { ingest, mut state, .. } = pipeline;
        let retention = Retention { keep: config.pipeline.retention, every: PRUNE_EVERY };
        let worker = std::thread::Builder::new()
            .name("ledtemp-ingest".into())
            .spawn(move || run_worker(ingest, worker_inputs, retention))
            .map_err(|e| Error::io("starting the ingest thread", e))?;
        let (mqtt_control, control) = watch::channel(SubscriberControl::Run);
        let link = CommandLink::new();
        state.commands =
            Some(Commander::new(inputs.clone(), link.clone(), Arc::clone(&state.live)));
        let mqtt = tokio::spawn(run_subscriber(
            config.mqtt.clone(),
            Arc::clone(&state.live),
            inputs.clone(),
            control,
            link,
        ));
        let remote = tokio::spawn(forward_remote(remote_updates, inputs.clone()));
        let clock = tokio::spawn(run_clock(inputs));
        // It only reads the live events (a broadcast channel: the worker never waits for it).
        let homeassistant = config.homeassistant.clone().map(|bridge| {
            tracing::info!(
                broker = %format!("{}:{}", bridge.host, bridge.port),
                "Home Assistant bridge on: verified readings leave the sealed world there"
            );
            HomeAssistantBridge::start(bridge, Arc::clone(&state.live))
        });

        let http_addr =
            listener.local_addr().map_err(|e| Error::io("reading the HTTP address", e))?;
        let (stop, stopped) = watch::channel(false);
        let router = app(state.app_state(AccessControl::new(&config.auth)));
        let http = tokio::spawn(crate::http::serve(listener, router, config.http, stopped));
        tracing::info!(
            %http_addr,
            database = %config.pipeline.database,
            "ledtemp-web running"
        );
        Ok(Server {
            http_addr,
            state,
            stop,
            http,
            mqtt,
            mqtt_control,
            clock,
            remote,
            deliveries,
            worker: Some(worker),
            broker,
            homeassistant,
            keyring: config.keyring.clone(),
            max_devices: config.pipeline.limits.max_devices,
        })
    }

    /// The keys the ingest worker opens frames with.
    pub fn keys(&self) -> &Arc<KeyTable> {
        &self.state.keys
    }

    /// Reloads the keyring file the server was started with ([`reload_keys`]): what SIGHUP
    /// does.
    pub fn reload_keys(&self) -> Result<KeyChanges, Error> {
        reload_keys(&self.state.keys, &self.keyring, &self.state.live, self.max_devices)
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

    /// The Home Assistant bridge's counters, when it runs.
    pub fn homeassistant(&self) -> Option<&Arc<crate::homeassistant::BridgeCounters>> {
        self.homeassistant.as_ref().map(HomeAssistantBridge::counters)
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The live state (counters, caches).
    pub fn live(&self) -> &Arc<LiveState> {
        &self.state.live
    }

    /// Everything the HTTP side reads.
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// Stops taking frames, waits (at most 5 s) for queued alert notifications to be delivered,
    /// lets the ingest worker commit what it has, acknowledges it to the broker and closes the
    /// database, disconnects from the broker (which keeps the session), closes the event
    /// streams and stops the HTTP server. The Home Assistant bridge, if any, publishes the last
    /// states it has and its `offline`, and disconnects. Frames still queued are committed; none
    /// is half written; frames that arrive during the stop are not acknowledged, and the broker sends
    /// them to the next start. A notification still undelivered after the wait is lost (its
    /// alert stays firing, and is not sent again after a restart). An embedded broker keeps
    /// running until the process exits (rumqttd cannot be stopped).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        // The subscriber hands on nothing more but keeps the connection for the
        // acknowledgements of what the worker still commits.
        let _ = self.mqtt_control.send(SubscriberControl::Drain);
        self.clock.abort();
        self.remote.abort();
        let _ = (&mut self.clock).await;
        let _ = self.stop.send(true);
        if let Some(deliveries) = self.deliveries.take() {
            if let Some(board) = &self.state.alerts
                && !board.flush(ALERT_FLUSH).await
            {
                tracing::warn!("alert notifications still queued at shutdown were dropped");
            }
            deliveries.abort();
            let _ = deliveries.await;
        }
        // Every sender of the worker's queue is gone now: it drains it and returns.
        if let Some(worker) = self.worker.take() {
            tokio::task::spawn_blocking(move || worker.join())
                .await
                .map_err(|e| Error::TaskFailed(e.to_string()))?
                .map_err(|_| Error::TaskFailed("the ingest worker panicked".into()))?;
        }
        // After the worker: the last commits' events are in the bridge's channel.
        if let Some(bridge) = self.homeassistant.take() {
            bridge.stop().await;
        }
        let _ = self.mqtt_control.send(SubscriberControl::Disconnect);
        if tokio::time::timeout(Duration::from_secs(3), &mut self.mqtt).await.is_err() {
            self.mqtt.abort();
        }
        // Open event streams never end on their own: give HTTP a moment, then stop it.
        match tokio::time::timeout(Duration::from_secs(2), &mut self.http).await {
            Ok(result) => result.map_err(|e| Error::TaskFailed(e.to_string())),
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
        self.clock.abort();
        self.remote.abort();
        if let Some(deliveries) = &self.deliveries {
            deliveries.abort();
        }
        self.http.abort();
    }
}

/// Opens `database`, waiting while it cannot be reached (see [`Server::start`]). Cancel-safe: an
/// attempt under way when the future is dropped ends on its own thread (within the connect
/// timeout) and is discarded.
async fn open_database(database: &Database) -> Result<OpenDatabase, Error> {
    let mut delay = DATABASE_RETRY_FIRST;
    let mut waiting: Option<(std::time::Instant, std::time::Instant)> = None;
    loop {
        let attempt = database.clone();
        let (opened, result) = tokio::sync::oneshot::channel();
        // A thread of its own, not spawn_blocking: an abandoned attempt must not hold up the
        // runtime's shutdown.
        std::thread::Builder::new()
            .name("ledtemp-db-open".into())
            .spawn(move || {
                let _ = opened.send(attempt.open());
            })
            .map_err(|e| Error::io("starting the database thread", e))?;
        let result =
            result.await.map_err(|_| Error::TaskFailed("opening the database panicked".into()))?;
        let (target, problem) = match result {
            Err(Error::DatabaseUnreachable { target, problem }) => (target, problem),
            Ok(opened) => {
                if let Some((since, _)) = waiting {
                    tracing::info!(
                        database = %database,
                        waited_secs = since.elapsed().as_secs(),
                        "the database answers: starting"
                    );
                }
                return Ok(opened);
            }
            Err(other) => return Err(other),
        };
        let now = std::time::Instant::now();
        match &mut waiting {
            None => {
                tracing::warn!(
                    "cannot reach PostgreSQL at {target}: {problem}; retrying every {} s at most \
                     until it answers (Ctrl-C stops)",
                    DATABASE_RETRY_MAX.as_secs()
                );
                waiting = Some((now, now));
            }
            Some((since, logged)) if now.duration_since(*logged) >= DATABASE_WAIT_LOG => {
                tracing::warn!(
                    waited_secs = now.duration_since(*since).as_secs(),
                    "still cannot reach PostgreSQL at {target}: {problem}"
                );
                *logged = now;
            }
            Some(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(DATABASE_RETRY_MAX);
    }
}

/// Hands the other servers' updates to the ingest worker, until either side is gone.
async fn forward_remote(
    mut updates: mpsc::Receiver<Vec<crate::model::DeviceUpdate>>,
    inputs: mpsc::Sender<WorkerInput>,
) {
    while let Some(batch) = updates.recv().await {
        if inputs.send(WorkerInput::Remote(batch)).await.is_err() {
            return;
        }
    }
}

/// The ingest worker's clock: a tick every second, until the worker is gone.
async fn run_clock(inputs: mpsc::Sender<WorkerInput>) {
    let mut interval = tokio::time::interval(TICK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if inputs.send(WorkerInput::Tick(UnixMillis::now())).await.is_err() {
            return;
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
    if config.pipeline.insecure_plaintext {
        eprintln!("{INSECURE_PLAINTEXT_WARNING}");
    }
    // The teaching mode accepts any device: it has no use for keys.
    let plaintext = config.pipeline.insecure_plaintext;
    let keys = if plaintext { KeyTable::new() } else { load_keys(&config.keyring)? };
    if keys.is_empty() && !plaintext {
        tracing::warn!(
            keyring = %config.keyring.display(),
            "the keyring is empty: every frame will be rejected"
        );
    }
    // Listening before anything is printed: SIGHUP's default action would end the process.
    let mut hangups = Hangups::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // A stop while the server waits for its database ends the wait.
    let mut server = tokio::select! {
        started = Server::start(config, keys) => started?,
        () = &mut shutdown => {
            tracing::info!("stopped while waiting for the database");
            return Ok(());
        }
    };
    if let Some(addr) = server.embedded_broker_addr() {
        println!("ledtemp-web: embedded MQTT v5 broker on {addr}");
    }
    println!("ledtemp-web: dashboard at http://{}/", server.http_addr());
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
