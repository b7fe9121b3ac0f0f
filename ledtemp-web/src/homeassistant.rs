//! The Home Assistant bridge (optional, off by default): republishes the server's verified
//! readings, LED states and online status to Home Assistant's MQTT broker with MQTT discovery, so
//! that ledtemp devices appear in Home Assistant without YAML (docs/homeassistant.md).
//!
//! Its only source is the live view after commit: [`LiveState::subscribe`] for the events,
//! [`LiveState::devices`] for the states at start, after a lag and after every (re)connection.
//! Nothing reaches either before the pipeline opened, checked and stored it (and, in a group,
//! the other servers' commits arrive there too), so nothing unverified is republished. The bridge
//! never writes anything back: it subscribes to one topic of Home Assistant's broker, Home
//! Assistant's birth message, which only makes it publish again.
//!
//! Shape: [`Mirror`] is the sans-IO core. It holds every retained message Home Assistant's broker
//! should have (one per topic: discovery configs, states, availability) and the topics still to
//! be sent, coalesced, so a slow or absent broker costs one entry per topic and never blocks
//! anyone. [`run_bridge`] is the thin driver: rumqttc's MQTT v5 client, reconnecting with backoff,
//! fed by the broadcast channel, which the ingest worker sends to without ever waiting.
//!
//! Topics (`S` is `state_prefix`, `D` is `discovery_prefix`):
//!
//! | topic | payload (all retained, QoS 1) |
//! | --- | --- |
//! | `S/status` | `online`, `offline` (also the bridge's MQTT Last Will) |
//! | `S/<device>/availability` | `online`, `offline`: the device's status in ledtemp |
//! | `S/<device>/temperature/<sensor>` | `{"sensor":"cpu","celsius":21.375,"at":"<RFC 3339>"}` |
//! | `S/<device>/led/<led>` | `{"led":"red","on":true,"at":"<RFC 3339>"}` |
//! | `D/sensor/ledtemp-<device>/<sensor>/config` | the sensor's discovery config |
//! | `D/binary_sensor/ledtemp-<device>/<led>/config` | the LED's discovery config |
//!
//! The state payloads are the model's JSON, the same as the event stream's.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ledtemp_core::{DeviceId, LedName, SensorName, TOPIC_ROOT};
use ledtemp_tokio::BrokerTls;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::live::{LiveEvent, LiveState};
use crate::model::{DeviceState, LedPoint, Reading, TemperaturePoint, UnixMillis};

/// Home Assistant's default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

/// The default root of the bridge's state topics. Not `ledtemp`: the server subscribes to
/// `ledtemp/+/led/+`, and the devices' retained frames live there.
pub const DEFAULT_STATE_PREFIX: &str = "ledtemp-bridge";

/// Availability payload: online (Home Assistant's default `payload_available`).
pub const PAYLOAD_ONLINE: &str = "online";

/// Availability payload: offline (Home Assistant's default `payload_not_available`).
pub const PAYLOAD_OFFLINE: &str = "offline";

/// First and longest wait between connection attempts to Home Assistant's broker (doubling in
/// between).
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(10));

/// Requests the MQTT client buffers; beyond, topics wait (coalesced) in the [`Mirror`].
const REQUEST_QUEUE: usize = 256;

/// Longest wait, at a stop, for the bridge's `offline` and its DISCONNECT to be sent.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Longest prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;

/// The `[homeassistant]` section of the configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HomeAssistantSection {
    #[serde(default)]
    enabled: bool,
    broker: Option<String>,
    client_id: Option<String>,
    discovery_prefix: Option<String>,
    state_prefix: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
}

impl HomeAssistantSection {
    /// The bridge's settings; `None` unless `enabled = true` (a disabled section is not checked,
    /// so turning the bridge off is one line). `server_client_id` is the server's own MQTT client
    /// id: the bridge's default is it with `-homeassistant` appended, so that the servers of a
    /// group never take over each other's connection.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting (`homeassistant.broker`, ...).
    pub(crate) fn resolve(
        self,
        server_client_id: &str,
    ) -> Result<Option<HomeAssistantConfig>, Error> {
        if !self.enabled {
            return Ok(None);
        }
        let broker = self.broker.ok_or_else(|| {
            Error::Config(
                "homeassistant.broker is required with homeassistant.enabled = true: HOST:PORT \
                 of Home Assistant's MQTT broker"
                    .into(),
            )
        })?;
        let default_port =
            if self.tls { crate::mqtt::MQTT_TLS_PORT } else { crate::mqtt::MQTT_PORT };
        let (host, port) =
            crate::config::parse_broker(&broker, default_port).map_err(|e| match e {
                Error::Config(message) => Error::Config(format!("homeassistant.{message}")),
                other => other,
            })?;
        let client_id =
            self.client_id.unwrap_or_else(|| format!("{server_client_id}-homeassistant"));
        if client_id.is_empty() || client_id == server_client_id {
            return Err(Error::Config(format!(
                "homeassistant.client_id {client_id:?}: give the bridge a client id of its own, \
                 not empty and not the server's"
            )));
        }
        let discovery_prefix = prefix(
            "homeassistant.discovery_prefix",
            self.discovery_prefix.unwrap_or_else(|| DEFAULT_DISCOVERY_PREFIX.to_owned()),
        )?;
        let state_prefix = prefix(
            "homeassistant.state_prefix",
            self.state_prefix.unwrap_or_else(|| DEFAULT_STATE_PREFIX.to_owned()),
        )?;
        if discovery_prefix == state_prefix {
            return Err(Error::Config(
                "homeassistant.state_prefix must differ from homeassistant.discovery_prefix".into(),
            ));
        }
        let password = match (&self.username, self.password_file) {
            (None, Some(_)) => {
                return Err(Error::Config(
                    "homeassistant.password_file needs homeassistant.username".into(),
                ));
            }
            // The broker password's rules (0600, one line, not empty); its messages name the
            // subscriber's setting, so they are renamed.
            (_, file) => crate::mqtt::broker_password(None, file).map_err(|e| match e {
                Error::Config(message) => Error::Config(message.replacen(
                    "broker-password-file",
                    "homeassistant.password_file",
                    1,
                )),
                other => other,
            })?,
        };
        let credentials = self.username.map(|user| (user, password.unwrap_or_default()));
        let tls = match (self.tls, self.ca_file) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(Error::Config(
                    "homeassistant.ca_file is set but homeassistant.tls is not: turn TLS on, or \
                     drop ca_file"
                        .into(),
                ));
            }
            (true, None) => {
                return Err(Error::Config(
                    "homeassistant.tls needs homeassistant.ca_file: the PEM file of the CA that \
                     signed the broker's certificate"
                        .into(),
                ));
            }
            (true, Some(ca_file)) => Some(
                BrokerTls::from_ca_file(ca_file, &host)
                    .map_err(|e| Error::Config(format!("homeassistant.ca_file: {e}")))?,
            ),
        };
        Ok(Some(HomeAssistantConfig {
            host,
            port,
            client_id,
            discovery_prefix,
            state_prefix,
            credentials,
            tls,
            keep_alive: Duration::from_secs(15),
        }))
    }
}

/// A topic prefix: 1 to 128 bytes, levels not empty, no wildcard, no `$` start, and not under
/// `ledtemp/`, the devices' own topics.
fn prefix(setting: &str, value: String) -> Result<String, Error> {
    let bad = |why: &str| Err(Error::Config(format!("{setting} {value:?}: {why}")));
    if value.is_empty() || value.len() > MAX_PREFIX_LEN {
        return bad("use 1 to 128 bytes");
    }
    if value.contains(['+', '#', '\0']) || value.starts_with('$') {
        return bad("no wildcard (+ #), no NUL, no leading $");
    }
    if value.split('/').any(str::is_empty) {
        return bad("no empty topic level (no leading, trailing or double /)");
    }
    if value.split('/').next() == Some(TOPIC_ROOT) {
        return bad("not under ledtemp/, where the devices publish their sealed frames");
    }
    Ok(value)
}

/// The bridge's settings, from the `[homeassistant]` section.
#[derive(Clone)]
pub struct HomeAssistantConfig {
    /// Home Assistant's broker: host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The bridge's MQTT client id (clean start on every connection: it publishes everything
    /// again each time).
    pub client_id: String,
    /// Home Assistant's discovery prefix (`homeassistant`).
    pub discovery_prefix: String,
    /// The root of the bridge's state topics (`ledtemp-bridge`).
    pub state_prefix: String,
    /// User name and password at that broker.
    pub credentials: Option<(String, String)>,
    /// TLS to that broker; `None` for plain TCP. Its certificate must be for `host`.
    pub tls: Option<BrokerTls>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

impl std::fmt::Debug for HomeAssistantConfig {
    /// Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeAssistantConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("state_prefix", &self.state_prefix)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What the bridge did, lock-free; read with [`HomeAssistantBridge::counters`].
#[derive(Debug, Default)]
pub struct BridgeCounters {
    published: AtomicU64,
    superseded: AtomicU64,
    lagged: AtomicU64,
    connections: AtomicU64,
    connected: AtomicBool,
}

impl BridgeCounters {
    /// Messages handed to the MQTT client for Home Assistant's broker.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Values replaced by a newer one of the same topic before they were sent (the broker was
    /// away or slow): dropped, since only the newest counts for a retained state.
    pub fn superseded(&self) -> u64 {
        self.superseded.load(Ordering::Relaxed)
    }

    /// Live events the bridge fell too far behind to read; each time, it took the states from
    /// the live view instead.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Connections to Home Assistant's broker so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the bridge is connected to Home Assistant's broker now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The bridge's topics.
#[derive(Debug, Clone)]
struct TopicScheme {
    discovery: String,
    state: String,
}

impl TopicScheme {
    fn bridge_status(&self) -> String {
        format!("{}/status", self.state)
    }

    fn availability(&self, device: &DeviceId) -> String {
        format!("{}/{device}/availability", self.state)
    }

    fn temperature(&self, device: &DeviceId, sensor: &SensorName) -> String {
        format!("{}/{device}/temperature/{sensor}", self.state)
    }

    fn led(&self, device: &DeviceId, led: &LedName) -> String {
        format!("{}/{device}/led/{led}", self.state)
    }

    /// `<prefix>/<component>/<node_id>/<object_id>/config`: the node id is the device, the
    /// object id the sensor or LED, so that no two entities share a topic whatever their names.
    fn config(&self, component: &str, device: &DeviceId, name: &str) -> String {
        format!("{}/{component}/ledtemp-{device}/{name}/config", self.discovery)
    }

    /// Home Assistant's birth and will messages.
    fn home_assistant_status(&self) -> String {
        format!("{}/status", self.discovery)
    }

    /// The `availability` list of every entity: the bridge and the device must both be online.
    fn availability_list(&self, device: &DeviceId) -> serde_json::Value {
        let entry = |topic: String| {
            json!({
                "topic": topic,
                "payload_available": PAYLOAD_ONLINE,
                "payload_not_available": PAYLOAD_OFFLINE,
            })
        };
        json!([entry(self.bridge_status()), entry(self.availability(device))])
    }

    /// The `device` block shared by a device's entities.
    fn device_block(device: &DeviceId) -> serde_json::Value {
        json!({
            "identifiers": [format!("ledtemp_{device}")],
            "name": device.as_str(),
            "manufacturer": "ledtemp",
            "model": "ledtemp",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn origin() -> serde_json::Value {
        json!({ "name": "ledtemp-web", "sw_version": env!("CARGO_PKG_VERSION") })
    }

    /// The discovery config of a temperature sensor.
    fn sensor_config(&self, device: &DeviceId, sensor: &SensorName) -> String {
        let slug = entity_slug(device, sensor.as_str());
        json!({
            "name": format!("{sensor} temperature"),
            // Names may hold `_`, so `_` would make ids ambiguous; `:` is in no name.
            "unique_id": format!("ledtemp:{device}:temperature:{sensor}"),
            // object_id until Home Assistant 2025.9, default_entity_id since 2025.10; each
            // version drops the key it does not know.
            "object_id": slug,
            "default_entity_id": format!("sensor.{slug}"),
            "state_topic": self.temperature(device, sensor),
            "value_template": "{{ value_json.celsius }}",
            "device_class": "temperature",
            "state_class": "measurement",
            "unit_of_measurement": "°C",
            "suggested_display_precision": 1,
            "availability": self.availability_list(device),
            "availability_mode": "all",
            "qos": 1,
            "device": TopicScheme::device_block(device),
            "origin": TopicScheme::origin(),
        })
        .to_string()
    }

    /// The discovery config of an LED: a binary sensor (read only: switching is not bridged).
    fn led_config(&self, device: &DeviceId, led: &LedName) -> String {
        let slug = format!("{}_led", entity_slug(device, led.as_str()));
        json!({
            "name": format!("{led} LED"),
            "unique_id": format!("ledtemp:{device}:led:{led}"),
            "object_id": slug,
            "default_entity_id": format!("binary_sensor.{slug}"),
            "state_topic": self.led(device, led),
            "value_template": "{{ 'ON' if value_json.on else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "icon": "mdi:led-on",
            "availability": self.availability_list(device),
            "availability_mode": "all",
            "qos": 1,
            "device": TopicScheme::device_block(device),
            "origin": TopicScheme::origin(),
        })
        .to_string()
    }
}

/// `ledtemp_<device>_<name>` in the form of a Home Assistant entity id: lower case, `-` as `_`.
fn entity_slug(device: &DeviceId, name: &str) -> String {
    format!("ledtemp_{device}_{name}").to_ascii_lowercase().replace('-', "_")
}

/// The order in which a full publication sends its topics: every entity's config before the
/// states, the devices' availability after them, and the bridge's `online` last, so that it
/// means "everything current is published".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Config,
    State,
    Availability,
    Bridge,
}

/// One retained message for Home Assistant's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publication {
    /// Its topic.
    pub(crate) topic: String,
    /// Its payload (UTF-8: JSON, or `online`/`offline`).
    pub(crate) payload: String,
}

/// The sans-IO core of the bridge: what Home Assistant's broker should retain, and what is still
/// to send.
///
/// Call order: [`seed`](Self::seed) with the live view's states, then for each live event
/// [`apply`](Self::apply); on every connection [`connected`](Self::connected), then
/// [`next`](Self::next) while the MQTT client takes them, [`retry`](Self::retry) the one it
/// refused. Values that change while their topic waits are coalesced (counted as superseded).
#[derive(Debug)]
pub(crate) struct Mirror {
    scheme: TopicScheme,
    retained: BTreeMap<String, (Stage, String)>,
    pending: VecDeque<String>,
    queued: HashSet<String>,
    superseded: u64,
}

impl Mirror {
    fn new(scheme: TopicScheme) -> Mirror {
        Mirror {
            scheme,
            retained: BTreeMap::new(),
            pending: VecDeque::new(),
            queued: HashSet::new(),
            superseded: 0,
        }
    }

    /// Sets the retained message of `topic`; queues it if it changed.
    fn set(&mut self, topic: String, stage: Stage, payload: String) {
        if self.retained.get(&topic).is_some_and(|(_, before)| *before == payload) {
            return;
        }
        self.retained.insert(topic.clone(), (stage, payload));
        if self.queued.contains(&topic) {
            self.superseded += 1;
        } else {
            self.queued.insert(topic.clone());
            self.pending.push_back(topic);
        }
    }

    /// Takes the states of the live view (at start, and after falling behind its events): the
    /// entities of every sensor and LED, their values, and whether each device is online.
    pub(crate) fn seed(&mut self, devices: &[(DeviceId, DeviceState, bool)]) {
        for (device, state, online) in devices {
            for point in state.temperatures.values() {
                self.temperature(device, point);
            }
            for point in state.leds.values() {
                self.led(device, point);
            }
            self.availability(device, *online);
        }
    }

    /// Follows one live event.
    pub(crate) fn apply(&mut self, event: &LiveEvent) {
        match event {
            LiveEvent::Reading(device, Reading::Temperature(point)) => {
                self.temperature(device, point);
            }
            LiveEvent::Reading(device, Reading::Led(point)) => self.led(device, point),
            LiveEvent::Status(device, change) => self.availability(device, change.online),
            LiveEvent::Stats(_) | LiveEvent::Alert => {}
        }
    }

    fn temperature(&mut self, device: &DeviceId, point: &TemperaturePoint) {
        let config = self.scheme.sensor_config(device, &point.sensor);
        self.set(
            self.scheme.config("sensor", device, point.sensor.as_str()),
            Stage::Config,
            config,
        );
        self.set(self.scheme.temperature(device, &point.sensor), Stage::State, json_of(point));
    }

    fn led(&mut self, device: &DeviceId, point: &LedPoint) {
        let config = self.scheme.led_config(device, &point.led);
        self.set(
            self.scheme.config("binary_sensor", device, point.led.as_str()),
            Stage::Config,
            config,
        );
        self.set(self.scheme.led(device, &point.led), Stage::State, json_of(point));
    }

    fn availability(&mut self, device: &DeviceId, online: bool) {
        let payload = if online { PAYLOAD_ONLINE } else { PAYLOAD_OFFLINE };
        self.set(self.scheme.availability(device), Stage::Availability, payload.to_owned());
    }

    /// A new connection (the broker may have lost everything, and the bridge's will said
    /// `offline`), or Home Assistant came online: everything is to be sent again, in [`Stage`]
    /// order, the bridge's `online` last.
    pub(crate) fn connected(&mut self) {
        let bridge = self.scheme.bridge_status();
        self.retained.insert(bridge, (Stage::Bridge, PAYLOAD_ONLINE.to_owned()));
        let mut all: Vec<(Stage, &String)> =
            self.retained.iter().map(|(topic, (stage, _))| (*stage, topic)).collect();
        all.sort();
        self.pending = all.into_iter().map(|(_, topic)| topic.clone()).collect();
        self.queued = self.pending.iter().cloned().collect();
    }

    /// The next message to send.
    pub(crate) fn next(&mut self) -> Option<Publication> {
        while let Some(topic) = self.pending.pop_front() {
            self.queued.remove(&topic);
            if let Some((_, payload)) = self.retained.get(&topic) {
                return Some(Publication { payload: payload.clone(), topic });
            }
        }
        None
    }

    /// Puts back a message the MQTT client could not take: it is sent first next time.
    pub(crate) fn retry(&mut self, publication: Publication) {
        if self.queued.insert(publication.topic.clone()) {
            self.pending.push_front(publication.topic);
        }
    }

    /// Topics waiting to be sent.
    pub(crate) fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Values replaced before they were sent, so far.
    pub(crate) fn superseded(&self) -> u64 {
        self.superseded
    }
}

/// The model's JSON of a reading (strings, numbers and booleans: it cannot fail).
fn json_of(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The live view's devices, each with whether it counts as online now.
fn snapshot(live: &LiveState) -> Vec<(DeviceId, DeviceState, bool)> {
    let now = UnixMillis::now();
    live.devices()
        .into_iter()
        .map(|(id, state)| {
            let online = live.is_online(&state, now);
            (id, state, online)
        })
        .collect()
}

/// A running bridge. [`stop`](Self::stop) it to tell Home Assistant it went away cleanly;
/// dropped, it stops at once (Home Assistant's broker then publishes its will, `offline`).
#[derive(Debug)]
pub struct HomeAssistantBridge {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    counters: Arc<BridgeCounters>,
}

impl HomeAssistantBridge {
    /// Subscribes to `live`'s events, takes its current states, and starts the bridge on the
    /// current tokio runtime (it must be called inside one). Returns at once; the connection to
    /// Home Assistant's broker is made, and made again, in the background.
    pub fn start(config: HomeAssistantConfig, live: Arc<LiveState>) -> HomeAssistantBridge {
        // Subscribed before the states are read: an event in between is applied twice, which
        // changes nothing; none is missed.
        let events = live.subscribe();
        let scheme = TopicScheme {
            discovery: config.discovery_prefix.clone(),
            state: config.state_prefix.clone(),
        };
        let mut mirror = Mirror::new(scheme);
        mirror.seed(&snapshot(&live));
        let counters = Arc::new(BridgeCounters::default());
        let (stop, stopped) = watch::channel(false);
        let task =
            tokio::spawn(run_bridge(config, live, events, mirror, Arc::clone(&counters), stopped));
        HomeAssistantBridge { task, stop, counters }
    }

    /// What it did so far.
    pub fn counters(&self) -> &Arc<BridgeCounters> {
        &self.counters
    }

    /// Publishes the bridge's `offline` (Home Assistant shows every entity unavailable),
    /// disconnects and returns; within a few seconds at most, whatever the broker does.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(DISCONNECT_WAIT * 2, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for HomeAssistantBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bridge's loop: follows the live events into `mirror`, and sends what it holds to Home
/// Assistant's broker whenever connected, until `stop` turns true (then it publishes `offline`
/// and disconnects) or the live view is gone. Never waits on the ingest side: a bridge that falls
/// behind the broadcast channel takes the states from the live view instead.
///
/// Cancellation: dropping the future drops the connection without DISCONNECT, and the broker
/// publishes the bridge's will (`offline`, retained).
async fn run_bridge(
    config: HomeAssistantConfig,
    live: Arc<LiveState>,
    mut events: broadcast::Receiver<LiveEvent>,
    mut mirror: Mirror,
    counters: Arc<BridgeCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let bridge_status = mirror.scheme.bridge_status();
    let home_assistant_status = mirror.scheme.home_assistant_status();
    let broker = format!("{}:{}", config.host, config.port);
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(config.keep_alive);
    options.set_clean_start(true);
    options.set_last_will(LastWill::new(
        bridge_status.clone(),
        PAYLOAD_OFFLINE,
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.client_config())));
    }
    let (client, mut connection) = AsyncClient::new(options, REQUEST_QUEUE);
    let (first, longest) = RECONNECT_BACKOFF;
    let mut backoff = first;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut connected = false;
    let mut logged_down = false;
    tracing::info!(%broker, client_id = %config.client_id, "Home Assistant bridge starting");
    loop {
        tokio::select! {
            biased;
            stopping = stop.wait_for(|stop| *stop) => {
                let _ = stopping;
                break;
            }
            event = events.recv() => match event {
                Ok(event) => mirror.apply(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    counters.lagged.fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(
                        missed,
                        "the Home Assistant bridge fell behind the live events: publishing the \
                         current states instead"
                    );
                    mirror.seed(&snapshot(&live));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = sleep_until(retry_at) => retry_at = None,
            polled = connection.poll(), if retry_at.is_none() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    logged_down = false;
                    backoff = first;
                    counters.connected.store(true, Ordering::Relaxed);
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    mirror.connected();
                    tracing::info!(
                        %broker,
                        topics = mirror.waiting(),
                        "connected to Home Assistant's broker: publishing discovery and states"
                    );
                    if let Err(error) =
                        client.try_subscribe(home_assistant_status.clone(), QoS::AtLeastOnce)
                    {
                        tracing::warn!("cannot subscribe to {home_assistant_status}: {error}");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // Home Assistant (re)started: it may have lost the entities; send them again.
                    if publish.topic == home_assistant_status.as_bytes()
                        && publish.payload == PAYLOAD_ONLINE.as_bytes()
                    {
                        tracing::info!("Home Assistant came online: publishing everything again");
                        mirror.connected();
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    if connected || !logged_down {
                        tracing::warn!(
                            %broker,
                            "Home Assistant's broker is away ({error}); retrying with backoff \
                             (published {}, superseded {})",
                            counters.published(),
                            mirror.superseded(),
                        );
                        logged_down = true;
                    }
                    connected = false;
                    counters.connected.store(false, Ordering::Relaxed);
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(longest);
                }
            },
        }
        counters.superseded.store(mirror.superseded(), Ordering::Relaxed);
        if connected {
            send_waiting(&client, &mut mirror, &counters);
        }
    }
    counters.connected.store(false, Ordering::Relaxed);
    if connected {
        // What the last commits announced before the stop.
        while let Ok(event) = events.try_recv() {
            mirror.apply(&event);
        }
        send_waiting(&client, &mut mirror, &counters);
        // Not the will: a clean DISCONNECT does not publish it, so say it.
        let _ = client.try_publish(&bridge_status, QoS::AtLeastOnce, true, PAYLOAD_OFFLINE);
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
                loop {
                    match connection.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }
    tracing::info!(
        published = counters.published(),
        superseded = mirror.superseded(),
        lagged = counters.lagged(),
        "Home Assistant bridge stopped"
    );
}

/// Hands the MQTT client what waits, until its queue is full (the rest is sent as the client
/// makes room: every step of its event loop comes back here).
fn send_waiting(client: &AsyncClient, mirror: &mut Mirror, counters: &BridgeCounters) {
    while let Some(publication) = mirror.next() {
        let sent = client.try_publish(
            &publication.topic,
            QoS::AtLeastOnce,
            true,
            publication.payload.clone().into_bytes(),
        );
        if sent.is_err() {
            mirror.retry(publication);
            return;
        }
        counters.published.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resolves at `at`; never without one. Cancel-safe.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use ledtemp_core::{LedState, MilliCelsius};

    use super::*;
    use crate::live::StatusChange;

    fn scheme() -> TopicScheme {
        TopicScheme { discovery: "homeassistant".into(), state: "ledtemp-bridge".into() }
    }

    fn kitchen() -> DeviceId {
        DeviceId::new("kitchen-pi").unwrap()
    }

    fn reading(milli: i32, at: i64) -> LiveEvent {
        LiveEvent::Reading(
            kitchen(),
            Reading::Temperature(TemperaturePoint {
                sensor: SensorName::new("cpu").unwrap(),
                temperature: MilliCelsius(milli),
                at: UnixMillis(at),
            }),
        )
    }

    fn drain(mirror: &mut Mirror) -> Vec<Publication> {
        std::iter::from_fn(|| mirror.next()).collect()
    }

    #[test]
    fn a_connection_sends_configs_then_states_then_availability_then_the_bridge() {
        let mut mirror = Mirror::new(scheme());
        let led = LedPoint {
            led: LedName::new("red").unwrap(),
            state: LedState::On,
            at: UnixMillis(1_000),
        };
        let mut state = DeviceState::default();
        state.leds.insert(led.led.clone(), led);
        mirror.seed(&[(kitchen(), state, true)]);
        mirror.apply(&reading(21_375, 2_000));
        mirror.connected();
        let topics: Vec<String> = drain(&mut mirror).into_iter().map(|p| p.topic).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/ledtemp-kitchen-pi/red/config",
                "homeassistant/sensor/ledtemp-kitchen-pi/cpu/config",
                "ledtemp-bridge/kitchen-pi/led/red",
                "ledtemp-bridge/kitchen-pi/temperature/cpu",
                "ledtemp-bridge/kitchen-pi/availability",
                "ledtemp-bridge/status",
            ]
        );
    }

    #[test]
    fn values_that_change_while_waiting_are_coalesced_and_a_refused_one_goes_first() {
        let mut mirror = Mirror::new(scheme());
        mirror.connected();
        let _ = drain(&mut mirror);
        mirror.apply(&reading(21_000, 1_000));
        mirror.apply(&reading(22_000, 2_000));
        mirror.apply(&reading(23_000, 3_000));
        assert_eq!(mirror.superseded(), 2);
        let sent = drain(&mut mirror);
        assert_eq!(sent.len(), 2, "the config once, the newest state once: {sent:?}");
        assert!(sent[1].payload.contains("\"celsius\":23.0"), "{}", sent[1].payload);
        // The same reading again changes nothing; a config is sent once.
        mirror.apply(&reading(23_000, 3_000));
        assert_eq!(mirror.next(), None);
        mirror.apply(&LiveEvent::Status(
            kitchen(),
            StatusChange { online: false, at: UnixMillis(4_000) },
        ));
        let offline = mirror.next().unwrap();
        assert_eq!(offline.payload, "offline");
        mirror.apply(&reading(24_000, 5_000));
        mirror.retry(offline.clone());
        assert_eq!(mirror.next(), Some(offline));
        assert_eq!(mirror.next().unwrap().topic, "ledtemp-bridge/kitchen-pi/temperature/cpu");
    }

    #[test]
    fn the_discovery_configs_follow_home_assistants_schema() {
        let sensor: serde_json::Value = serde_json::from_str(
            &scheme().sensor_config(&kitchen(), &SensorName::new("cpu").unwrap()),
        )
        .unwrap();
        assert_eq!(sensor["unique_id"], "ledtemp:kitchen-pi:temperature:cpu");
        assert_eq!(sensor["default_entity_id"], "sensor.ledtemp_kitchen_pi_cpu");
        assert_eq!(sensor["unit_of_measurement"], "°C");
        assert_eq!(sensor["availability"][0]["topic"], "ledtemp-bridge/status");
        assert_eq!(sensor["availability"][1]["topic"], "ledtemp-bridge/kitchen-pi/availability");
        assert_eq!(sensor["device"]["identifiers"], json!(["ledtemp_kitchen-pi"]));
        let led: serde_json::Value =
            serde_json::from_str(&scheme().led_config(&kitchen(), &LedName::new("red").unwrap()))
                .unwrap();
        assert_eq!(led["default_entity_id"], "binary_sensor.ledtemp_kitchen_pi_red_led");
        assert_eq!(led["device"], sensor["device"]);
    }

    fn section(text: &str) -> Result<Option<HomeAssistantConfig>, Error> {
        toml::from_str::<HomeAssistantSection>(text).unwrap().resolve("ledtemp-web")
    }

    fn config_error(text: &str) -> String {
        match section(text) {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn off_by_default_and_the_defaults_once_enabled() {
        assert!(section("").unwrap().is_none());
        assert!(section("enabled = false\nbroker = \"nonsense:x\"").unwrap().is_none());
        let config = section("enabled = true\nbroker = \"ha.local\"").unwrap().unwrap();
        assert_eq!((config.host.as_str(), config.port), ("ha.local", 1883));
        assert_eq!(config.client_id, "ledtemp-web-homeassistant");
        assert_eq!(config.discovery_prefix, "homeassistant");
        assert_eq!(config.state_prefix, "ledtemp-bridge");
        assert!(config.credentials.is_none() && config.tls.is_none());
        let config = section("enabled = true\nbroker = \"ha.local\"\nusername = \"ledtemp\"")
            .unwrap()
            .unwrap();
        assert_eq!(config.credentials, Some(("ledtemp".to_owned(), String::new())));
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_setting() {
        use std::os::unix::fs::PermissionsExt;
        assert!(config_error("enabled = true").contains("homeassistant.broker"));
        assert!(config_error("enabled = true\nbroker = \"ha:x\"").contains("homeassistant.broker"));
        for (setting, value) in [
            ("discovery_prefix", "home/#"),
            ("state_prefix", "ledtemp/bridge"),
            ("state_prefix", "a//b"),
            ("state_prefix", "$SYS"),
            ("discovery_prefix", ""),
        ] {
            let error =
                config_error(&format!("enabled = true\nbroker = \"ha\"\n{setting} = {value:?}"));
            assert!(error.contains(&format!("homeassistant.{setting}")), "{error}");
        }
        let same = "enabled = true\nbroker = \"ha\"\nstate_prefix = \"homeassistant\"";
        assert!(config_error(same).contains("state_prefix"));
        let own = "enabled = true\nbroker = \"ha\"\nclient_id = \"ledtemp-web\"";
        assert!(config_error(own).contains("homeassistant.client_id"));
        assert!(config_error("enabled = true\nbroker = \"ha\"\ntls = true").contains("ca_file"));
        assert!(
            config_error("enabled = true\nbroker = \"ha\"\nca_file = \"ca.pem\"").contains("tls")
        );
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_password = format!(
            "enabled = true\nbroker = \"ha\"\nusername = \"u\"\npassword_file = {password:?}"
        );
        let error = config_error(&with_password);
        assert!(error.contains("homeassistant.password_file") && error.contains("600"), "{error}");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = section(&with_password).unwrap().unwrap();
        assert_eq!(config.credentials, Some(("u".to_owned(), "s3cret".to_owned())));
        assert!(!format!("{config:?}").contains("s3cret"), "Debug shows no password");
        let no_user = format!("enabled = true\nbroker = \"ha\"\npassword_file = {password:?}");
        assert!(config_error(&no_user).contains("homeassistant.username"));
    }
}
