//! `ledtemp-web`: the ledtemp server.
//!
//! It subscribes to the broker (`ledtemp/+/#`, or an MQTT v5 shared subscription), opens every
//! frame with the sending device's key from the keyring ([`KeyTable`]), checks it against that
//! key's replay window, turns it into the server's one model of a device ([`DeviceUpdate`],
//! [`DeviceState`]), and stores the reading, the window's new state, the device's new state and
//! the alert engine's state in one transaction through the [`Store`] seam ([`Database`]: a
//! SQLite file by default, [`SqliteStore`], or PostgreSQL, [`PostgresStore`]). Only then it
//! shows it: a JSON API, Server-Sent Events, `/healthz`, Prometheus `/metrics` and the
//! dashboard. Every rejected frame is counted by reason ([`RejectReason`]) and changes nothing
//! else. Alert rules from the configuration file ([`alerts`]) watch the verified frames and text
//! through Twilio, post a webhook or log; `GET /api/alerts` and the dashboard show active and
//! recent alerts. An optional bridge ([`HomeAssistantBridge`], the `[homeassistant]` section)
//! republishes the verified readings to Home Assistant's MQTT broker with MQTT discovery.
//!
//! The data path, one owner per step: [`run_subscriber`] -> [`WorkerInput`] queue ->
//! [`run_worker`] -> [`Ingest`] (keys, verify, caps, model, alert engine) -> [`Store::commit`]
//! -> [`LiveState`] (cache, events) -> HTTP ([`app`]). [`Pipeline::open`] builds it;
//! [`Server::start`] runs it.
//!
//! Access ([`AuthConfig`], the `[auth]` section): open on loopback when nothing is configured;
//! otherwise a password login (Argon2id hash, server-side sessions, CSRF-checked POSTs, a rate
//! limit) or API bearer tokens, for everything but `/healthz`. Off loopback the server does not
//! start without it unless told `--insecure-no-auth`.
//!
//! The binary `ledtemp-web serve` runs it; `ledtemp-web serve --help` lists the settings.
//! `ledtemp-web serve --embedded-broker` runs an MQTT v5 broker (rumqttd) inside the server, so
//! no Mosquitto is needed; `ledtemp-web demo` adds simulated nodes and a forger to that.
//!
//! # Example
//!
//! The pipeline without a broker: a frame sealed with a device's key is accepted once, and the
//! device's state shows its reading.
//!
//! ```
//! use ledtemp_core::{
//!     Algorithm, AnyCodec, Codec, DeviceId, KeyId, MAX_FRAME_LEN, Message, MilliCelsius,
//!     SensorName, SequenceNumber, TemperatureReading, Uptime,
//! };
//! use ledtemp_web::{IncomingFrame, KeyTable, Pipeline, PipelineOptions, RejectReason, UnixMillis};
//!
//! let device = DeviceId::new("kitchen-pi")?;
//! let key = [7u8; 16];
//! let mut keys = KeyTable::new();
//! keys.insert(device.clone(), AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &key)?);
//!
//! let dir = tempfile::tempdir()?;
//! let options =
//!     PipelineOptions { database: dir.path().join("ledtemp.db").into(), ..Default::default() };
//! let Pipeline { mut ingest, state, .. } = Pipeline::open(&options, keys)?;
//!
//! let node = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &key)?;
//! let reading = Message::Temperature(TemperatureReading {
//!     sensor: SensorName::new("cpu")?,
//!     temperature: MilliCelsius(21_375),
//!     uptime: Uptime(1_000),
//! });
//! let mut buf = [0u8; MAX_FRAME_LEN];
//! let len = node.seal(&device, SequenceNumber::new(0)?, &reading, &mut buf)?;
//! let frame = IncomingFrame {
//!     topic: b"ledtemp/kitchen-pi/temp/cpu".to_vec(),
//!     payload: buf[..len].to_vec(),
//!     received: UnixMillis(1_700_000_000_000),
//!     retained: false,
//!     duplicate: false,
//! };
//! assert!(ingest.handle(frame.clone()).is_ok());
//! let again = ingest.handle(frame).unwrap_err();
//! assert_eq!(again.reject_reason(), Some(RejectReason::Replay));
//! assert_eq!(state.live.stats.snapshot().accepted, 1);
//! let kitchen = state.live.device(&device).unwrap();
//! assert_eq!(kitchen.temperatures[&SensorName::new("cpu")?].temperature, MilliCelsius(21_375));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod alerts;
mod broker;
mod command;
mod config;
// The dashboard (page, script, styles, vendored chart library) is maintained separately.
mod dashboard;
mod demo;
mod error;
mod history;
mod homeassistant;
mod http;
mod ingest;
mod keys;
mod live;
mod model;
mod mqtt;
mod server;
mod store;

pub use broker::EmbeddedBroker;
pub use command::{
    COMMAND_LIFETIME, COMMAND_SEQUENCE_BLOCK, CONFIRM_TIMEOUT, CommandLink, CommandOutcome,
    CommandRecord, CommandRefusal, CommandRequest, CommandSettlement, Commander, SealedCommand,
};
pub use config::{ServeArgs, ServeConfig};
pub use demo::{Demo, DemoArgs, demo};
pub use error::{Error, RejectReason};
pub use history::{
    Aggregate, DEFAULT_HISTORY_POINTS, EXPORT_PAGE_ROWS, HOUR_MS, HistoryPoint, LedHistory,
    MAX_HISTORY_POINTS, MAX_LED_CHANGES, MINUTE_AGGREGATE_RETENTION, MINUTE_MS, RangeQuery,
    TemperatureHistory,
};
pub use homeassistant::{
    BridgeCounters, DEFAULT_DISCOVERY_PREFIX, DEFAULT_STATE_PREFIX, HomeAssistantBridge,
    HomeAssistantConfig, PAYLOAD_OFFLINE, PAYLOAD_ONLINE,
};
pub use http::{
    AccessControl, AppState, AuthArgs, AuthConfig, CONTENT_SECURITY_POLICY_VALUE,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpLimits, MAX_COMMAND_LOG,
    MAX_REQUEST_BODY, MAX_VERIFICATIONS, MIN_PASSWORD_LEN, SESSION_RECHECK, app, hash_password,
    hash_password_command, new_api_token, new_token_command,
};
pub use ingest::{
    COMMIT_RETRY, DEFAULT_MAX_DEVICES, IncomingFrame, Ingest, Limits, MAX_BATCH,
    MAX_LEDS_PER_DEVICE, MAX_SENSORS_PER_DEVICE, Retention, WorkerInput, run_worker,
};
pub use keys::{KeyChanges, KeyStatus, KeyTable, load_keys, reload_keys};
pub use live::{LiveEvent, LiveState, RejectedCounts, Stats, StatsSnapshot, StatusChange};
pub use model::{
    DeviceState, DeviceSummary, DeviceUpdate, LedPoint, Observation, Reading, TemperaturePoint,
    UnixMillis,
};
pub use mqtt::{
    Acknowledge, DeliveryAck, MAX_PACKET_SIZE, RECEIVE_MAXIMUM, SubscriberConfig,
    SubscriberControl, run_subscriber,
};
pub use server::{
    DATABASE_RETRY_FIRST, DATABASE_RETRY_MAX, INGEST_QUEUE, INSECURE_PLAINTEXT_WARNING, Pipeline,
    PipelineOptions, Server, ServerState, serve, shutdown_signal,
};
pub use store::{
    AcceptedFrame, CONNECT_TIMEOUT, Commit, CommitOutcome, Database, HistoryQuery, HistoryStore,
    OPERATION_TIMEOUT, OpenDatabase, POSTGRES_SCHEMA_VERSION, PostgresConfig, PostgresHistory,
    PostgresStore, SCHEMA_VERSION, Snapshot, SqliteHistory, SqliteStore, Store,
};
