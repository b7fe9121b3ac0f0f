//! The message model: what a node says.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::topic::{KIND_COMMAND, KIND_LED, KIND_STATUS, KIND_TEMPERATURE, Topic};
use crate::{DeviceId, LedName, SensorName, SequenceNumber};

/// Most LEDs a status report can carry.
pub const MAX_LEDS: usize = 8;

/// An LED is on or off. Both states encode to one byte, so the frame length never tells them
/// apart (a plain-text `"ON"`/`"OFF"` payload leaks the state through its length even when
/// encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LedState {
    /// The LED is dark.
    Off,
    /// The LED is lit.
    On,
}

impl LedState {
    /// The other state.
    #[must_use]
    pub fn toggled(self) -> Self {
        match self {
            LedState::Off => LedState::On,
            LedState::On => LedState::Off,
        }
    }

    /// `true` when on.
    pub fn is_on(self) -> bool {
        self == LedState::On
    }
}

impl From<bool> for LedState {
    fn from(on: bool) -> Self {
        if on { LedState::On } else { LedState::Off }
    }
}

/// A temperature in thousandths of a degree Celsius (fixed point: no floats on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MilliCelsius(#[serde(with = "postcard::fixint::le")] pub i32);

impl MilliCelsius {
    /// The temperature in degrees Celsius, for display.
    pub fn to_celsius(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

/// Milliseconds since the node booted, as carried on the wire. It wraps after about 49.7 days; a
/// receiver compares two values with wrapping arithmetic. It lets a receiver date frames that
/// waited in the node's queue while the broker was unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uptime(#[serde(with = "postcard::fixint::le")] pub u32);

/// An LED changed state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedChange {
    /// Which LED.
    pub led: LedName,
    /// Its new state.
    pub state: LedState,
    /// When the change happened, on the node's clock.
    pub uptime: Uptime,
}

/// One temperature sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemperatureReading {
    /// Which sensor.
    pub sensor: SensorName,
    /// The temperature.
    pub temperature: MilliCelsius,
    /// When it was sampled, on the node's clock.
    pub uptime: Uptime,
}

/// The state of one LED inside a status report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LedStatus {
    /// Which LED.
    pub led: LedName,
    /// Its state.
    pub state: LedState,
}

/// Whether a node is up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant, reason = "no allocator to box into; messages are transient")]
pub enum NodeStatus {
    /// The node is running (sent on every connection, before anything else), with the current
    /// state of each of its LEDs.
    Online {
        /// Every LED of the node and its state.
        leds: Vec<LedStatus, MAX_LEDS, u8>,
    },
    /// The node went away: its MQTT Last Will, sealed like any frame.
    Offline,
}

/// A node's status report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusReport {
    /// Online (with LED states) or offline.
    pub status: NodeStatus,
    /// When the report was made, on the node's clock.
    pub uptime: Uptime,
}

/// A command to a device: set one of its LEDs. Sealed by the server with the device's key
/// (direction [`ToDevice`](crate::Direction::ToDevice)) and published on
/// `ledtemp/<device>/cmd/<led>`; the node answers with an [`LedChange`] of that LED
/// ([`Node::handle_command`](crate::Node::handle_command)).
///
/// A node applies a command only within the session it names and before it expires, once:
/// `docs/security.md` ("Commands") has the argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedCommand {
    /// Which LED.
    pub led: LedName,
    /// The state to set it to.
    pub state: LedState,
    /// The node's session the command is for: the sequence number of the online status of the
    /// node's connection the sender last saw. A node refuses a command for any other session,
    /// so a command recorded before the node reconnected or rebooted is dead.
    pub session: SequenceNumber,
    /// The node's uptime after which the command must not act: the sender's estimate of the
    /// node's clock when it sent the command, plus how long it waits for the confirmation. A
    /// command held back longer than that is refused, so a command the sender gave up on never
    /// acts later.
    pub expires: Uptime,
}

/// Everything on the wire: what a node publishes, and the commands sent to it. Each kind has its
/// own topic (see [`Topic`]); the names of the LED or sensor travel in the topic, not in the
/// sealed payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(clippy::large_enum_variant, reason = "no allocator to box into; messages are transient")]
pub enum Message {
    /// An LED changed state; topic `ledtemp/<device>/led/<led>`.
    Led(LedChange),
    /// A temperature sample; topic `ledtemp/<device>/temp/<sensor>`.
    Temperature(TemperatureReading),
    /// Online or offline; topic `ledtemp/<device>/status`.
    Status(StatusReport),
    /// A command to the device; topic `ledtemp/<device>/cmd/<led>`.
    Command(LedCommand),
}

impl Message {
    /// The topic this message is published on when `device` sends it.
    pub fn topic(&self, device: &DeviceId) -> Topic {
        let device = device.clone();
        match self {
            Message::Led(change) => Topic::Led { device, led: change.led.clone() },
            Message::Temperature(reading) => {
                Topic::Temperature { device, sensor: reading.sensor.clone() }
            }
            Message::Status(_) => Topic::Status { device },
            Message::Command(command) => Topic::Command { device, led: command.led.clone() },
        }
    }

    /// The topic levels after the device: kind word and optional name (see [`Topic`]).
    pub(crate) fn topic_kind_and_name(&self) -> (&'static str, Option<&str>) {
        match self {
            Message::Led(m) => (KIND_LED, Some(m.led.as_str())),
            Message::Temperature(m) => (KIND_TEMPERATURE, Some(m.sensor.as_str())),
            Message::Status(_) => (KIND_STATUS, None),
            Message::Command(m) => (KIND_COMMAND, Some(m.led.as_str())),
        }
    }

    /// The node time the message carries (for a command, its expiry).
    pub fn uptime(&self) -> Uptime {
        match self {
            Message::Led(m) => m.uptime,
            Message::Temperature(m) => m.uptime,
            Message::Status(m) => m.uptime,
            Message::Command(m) => m.expires,
        }
    }

    /// Which way the message travels.
    pub fn direction(&self) -> crate::Direction {
        match self {
            Message::Command(_) => crate::Direction::ToDevice,
            Message::Led(_) | Message::Temperature(_) | Message::Status(_) => {
                crate::Direction::FromDevice
            }
        }
    }
}
