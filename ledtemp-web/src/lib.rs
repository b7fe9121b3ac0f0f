//! `ledtemp-web`: the ledtemp server.
//!
//! It subscribes to the broker (`ledtemp/+/#`, or an MQTT v5 shared subscription), opens every
//! frame with the sending device's key from the keyring, checks it against that key's replay
//! window, stores the reading and the window's new state in one SQLite transaction, and only then
//! shows it: a JSON API, Server-Sent Events, `/healthz`, Prometheus `/metrics` and the dashboard.
//! Every rejected frame is counted by reason ([`RejectReason`]) and changes nothing else.
//! Alert rules from the configuration file ([`alerts`], run by an [`AlertDriver`]) watch the
//! verified frames and text through Twilio, post a webhook or log; `GET /api/alerts` and the
//! dashboard show active and recent alerts.
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
//! The pipeline without a broker: a frame sealed with a device's key is accepted once.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ledtemp_core::{
//!     Algorithm, AnyCodec, Codec, DeviceId, KeyId, MAX_FRAME_LEN, Message, MilliCelsius,
//!     SensorName, SequenceNumber, TemperatureReading, Uptime,
//! };
//! use ledtemp_web::{IncomingFrame, Ingest, KeyTable, LiveState, RejectReason, Store};
//!
//! let device = DeviceId::new("kitchen-pi")?;
//! let key = [7u8; 16];
//! let mut keys = KeyTable::new();
//! keys.insert(device.clone(), AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &key)?);
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(&dir.path().join("ledtemp.db"))?;
//! let snapshot = store.snapshot()?;
//! let live = Arc::new(LiveState::new(keys.devices(), &snapshot, Duration::from_secs(120)));
//! let mut ingest = Ingest::new(Arc::new(keys), store, live.clone())?;
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
//!     received_ms: 1_700_000_000_000,
//! };
//! assert!(ingest.handle(frame.clone()).is_ok());
//! let again = ingest.handle(frame).unwrap_err();
//! assert_eq!(again.reject_reason(), Some(RejectReason::Replay));
//! assert_eq!(live.stats.snapshot().accepted, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod alert_config;
mod alert_driver;
pub mod alerts;
mod broker;
mod config;
// The dashboard (page, script, styles, vendored chart library) is maintained separately.
mod dashboard;
mod demo;
mod error;
mod http;
mod ingest;
mod mqtt;
mod server;
mod state;
mod store;

pub use alert_config::{AlertsConfig, NotifierKind, NotifierSettings};
pub use alert_driver::{
    ALERT_QUEUE, AlertDriver, AlertQueue, AlertsSnapshot, NotifierStatus, run_alert_deliveries,
    run_alert_timer,
};
pub use config::{ServeArgs, ServeConfig};
pub use demo::{Demo, DemoArgs, demo};
pub use error::{Error, RejectReason};
pub use http::{
    AccessControl, AppState, AuthArgs, AuthConfig, CONTENT_SECURITY_POLICY_VALUE, MAX_REQUEST_BODY,
    MAX_VERIFICATIONS, MIN_PASSWORD_LEN, SESSION_RECHECK, app, hash_password,
    hash_password_command, new_api_token, new_token_command,
};
pub use ingest::{
    DEFAULT_MAX_DEVICES, IncomingFrame, Ingest, KeyChanges, KeyStatus, KeyTable, Limits, MAX_BATCH,
    MAX_LEDS_PER_DEVICE, MAX_SENSORS_PER_DEVICE, Retention, run_worker,
};
pub use mqtt::{MAX_PACKET_SIZE, SubscriberConfig, run_subscriber};
pub use server::{
    INGEST_QUEUE, INSECURE_PLAINTEXT_WARNING, Server, keys_from_keyring, load_keys, reload_keys,
    serve, shutdown_signal,
};
pub use state::{
    LedEvent, LiveEvent, LiveState, RejectedCounts, Stats, StatsSnapshot, StatusEvent,
    TemperatureEvent,
};
pub use store::{
    AcceptedFrame, DeviceSnapshot, HistoryPoint, HistoryReader, SCHEMA_VERSION, Snapshot, Store,
};
