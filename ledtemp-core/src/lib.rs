//! `ledtemp-core`: the `no_std`, allocation-free heart of ledtemp.
//!
//! A node reports LED changes and temperatures over MQTT. Every message leaves the device as a
//! *sealed frame*: a postcard payload encrypted and authenticated with a per-device AEAD key, with
//! the frame header and the MQTT topic bound in as associated data. Nobody without the key can
//! read a frame, forge one, or move one to another topic or device; the receiver's
//! [`ReplayWindow`] rejects frames it has seen before.
//!
//! This crate owns:
//! - the message model ([`Message`], [`LedChange`], [`TemperatureReading`], [`StatusReport`]) and
//!   validated names ([`DeviceId`], [`LedName`], [`SensorName`]);
//! - the topic scheme ([`Topic`]);
//! - the wire format ([`Codec`], [`AeadCodec`], [`AnyCodec`], [`FrameHeader`]; byte by byte in
//!   `docs/protocol.md`);
//! - sequence numbers that survive reboots without reuse ([`SequenceCounter`], [`SequenceStore`])
//!   and the receiver's [`ReplayWindow`];
//! - what a node touches ([`Button`], [`Led`], [`TempSensor`], [`Publisher`], [`Clock`] and their
//!   async forms), with adapters for embedded-hal pins ([`PinButton`], [`PinLed`]), a TMP102 I2C
//!   driver ([`Tmp102`]) and simulated hardware ([`ScriptedButton`], [`SimulatedTemperature`]);
//! - the node itself: [`Node`], a sans-IO state machine (debounce, LED toggling, sampling
//!   schedule, store-and-forward queue, Last Will), and the thin loops that drive it
//!   ([`run_blocking`], [`run_async`], [`Driver`]), and their `_until` forms that stop it cleanly
//!   ([`Stopped`]);
//! - with the `minimq` feature, an MQTT v5 publisher (`MqttPublisher`).
//!
//! It never reads a clock, a socket or a file, never allocates and never panics on input.
//!
//! # Example
//!
//! ```
//! use ledtemp_core::{
//!     AesGcmCodec, Codec, DeviceId, KeyId, MAX_FRAME_LEN, MemorySequenceStore, Message,
//!     MilliCelsius, ReplayWindow, SensorName, SequenceCounter, TemperatureReading, Topic, Uptime,
//! };
//!
//! let key = [0x42; 16]; // one key per device, from a key file in real life
//! let node_codec = AesGcmCodec::from_key_bytes(KeyId(1), &key)?;
//! let device = DeviceId::new("kitchen-pi")?;
//!
//! // Node: seal a reading with a fresh sequence number.
//! let mut store = MemorySequenceStore::new();
//! let mut counter = SequenceCounter::resume(&mut store, SequenceCounter::DEFAULT_BLOCK)?;
//! let reading = Message::Temperature(TemperatureReading {
//!     sensor: SensorName::new("cpu")?,
//!     temperature: MilliCelsius(21_375),
//!     uptime: Uptime(1_000),
//! });
//! let mut frame = [0u8; MAX_FRAME_LEN];
//! let len = node_codec.seal(&device, counter.next(&mut store)?, &reading, &mut frame)?;
//! let topic = reading.topic(&device).to_topic_string();
//! assert_eq!(topic.as_str(), "ledtemp/kitchen-pi/temp/cpu");
//! assert_eq!(len, 31);
//!
//! // Server: parse the topic, open with that device's key, then check for replay.
//! let server_codec = AesGcmCodec::from_key_bytes(KeyId(1), &key)?;
//! let mut window = ReplayWindow::new();
//! let topic = Topic::parse(&topic)?;
//! let opened = server_codec.open(&topic, &frame[..len])?;
//! window.accept(opened.header.sequence)?;
//! assert_eq!(opened.message, reading);
//! assert!(window.accept(opened.header.sequence).is_err()); // a replay
//! # Ok::<(), ledtemp_core::Error>(())
//! ```
//!
//! # Features
//! - `chacha20poly1305` (default): [`ChaChaCodec`], for CPUs without AES instructions.
//! - `minimq`: `MqttPublisher`, an [`AsyncPublisher`] over the minimq MQTT v5 client (`no_std`;
//!   needs an embassy-time driver).
//! - `insecure-plaintext` (off; **for teaching only**, never enabled by the firmware):
//!   `InsecurePlaintextCodec`, the unsealed "before" that `examples/attack.rs` attacks.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(test)]
extern crate std;

mod algorithm;
mod codec;
mod driver;
mod error;
mod frame;
mod hal;
mod hardware;
mod message;
#[cfg(feature = "minimq")]
mod mqtt;
mod name;
mod node;
#[cfg(feature = "insecure-plaintext")]
mod plaintext;
mod replay;
mod sequence;
mod sim;
mod time;
mod tmp102;
mod topic;

pub use algorithm::{Algorithm, AnyCodec};
#[cfg(feature = "chacha20poly1305")]
pub use codec::ChaChaCodec;
pub use codec::{AeadCodec, AesGcmCodec, Codec, OpenedFrame};
pub use driver::{
    AsyncIo, BUTTON_POLL_INTERVAL, Backoff, BlockingIo, Driver, LinkError, NodeIo, RunEvent,
    Stopped, block_on, run_async, run_async_until, run_blocking, run_blocking_until,
};
pub use error::Error;
pub use frame::{
    FRAME_OVERHEAD, FRAME_VERSION, FrameHeader, HEADER_LEN, KeyId, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
    MAX_SEQUENCE, SequenceNumber, TAG_LEN,
};
pub use hal::{PinButton, PinLed};
pub use hardware::{
    AsyncPublisher, AsyncTempSensor, Button, Led, Outgoing, Publisher, QoS, TempSensor,
};
pub use message::{
    LedChange, LedCommand, LedState, LedStatus, MAX_LEDS, Message, MilliCelsius, NodeStatus,
    StatusReport, TemperatureReading, Uptime,
};
#[cfg(feature = "minimq")]
pub use mqtt::{
    Connector, MAX_CLIENT_ID_LEN, MQTT_CLOSE_WAIT, MQTT_RX_LEN, MQTT_TX_LEN, MqttBuffers,
    MqttConfig, MqttError, MqttMailbox, MqttPublisher, mqtt_link,
};
pub use name::{DeviceId, LedName, MAX_NAME_LEN, Name, SensorName};
pub use node::{
    AppliedCommand, DEFAULT_QUEUE_CAPACITY, MAX_COMMAND_LIFETIME, MAX_SENSORS, Node, NodeConfig,
    NodeStats, SHUTDOWN_TIMEOUT, Shutdown,
};
#[cfg(feature = "insecure-plaintext")]
pub use plaintext::{InsecurePlaintextCodec, SealedOrPlaintext};
pub use replay::{ReplayRule, ReplayState, ReplayWindow};
pub use sequence::{MemorySequenceStore, SequenceCounter, SequenceStore};
pub use sim::{ScriptedButton, SimulatedFault, SimulatedTemperature};
pub use time::{Clock, Instant};
pub use tmp102::Tmp102;
pub use topic::{
    Direction, MAX_TOPIC_LEN, TOPIC_FILTER_ALL, TOPIC_FILTERS_FROM_DEVICES, TOPIC_ROOT, Topic,
    TopicString,
};

/// Re-exported so callers name the same `aead` the codec is generic over.
pub use aead;
