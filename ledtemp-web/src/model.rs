//! The server's one model of a device and its readings.
//!
//! A verified frame becomes a [`DeviceUpdate`] once, in the pipeline; from then on the store, the
//! live cache, the API, the event stream and the alert engine all use these types. Values stay
//! typed ([`DeviceId`], [`SensorName`], [`LedName`], [`MilliCelsius`], [`LedState`],
//! [`UnixMillis`]) until an edge:
//!
//! - JSON (API, events): the `Serialize` impls here, the only place that turns milli-degrees into
//!   degrees (`celsius`) and a time into RFC 3339 (`at`, `last_seen`);
//! - SQL: the store module of each database, the only place that turns them into columns and back.
//!
//! How a frame changes a device is [`DeviceState::apply`]; nothing else computes it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ledtemp_core::{
    DeviceId, LedName, LedState, Message, MilliCelsius, NodeStatus, SensorName, StatusReport,
};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// A wall-clock time: milliseconds since the Unix epoch (UTC). Serialised as RFC 3339.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Now, from the system clock.
    pub fn now() -> UnixMillis {
        UnixMillis(jiff::Timestamp::now().as_millisecond())
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `duration` earlier (saturating).
    pub fn saturating_sub(self, duration: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_sub(duration_ms(duration)))
    }

    /// RFC 3339 in UTC, e.g. `2026-11-29T15:33:21.5Z` (empty for a time jiff cannot represent).
    pub fn to_rfc3339(self) -> String {
        jiff::Timestamp::from_millisecond(self.0).map(|t| t.to_string()).unwrap_or_default()
    }

    /// Parses RFC 3339 (any offset).
    pub fn parse_rfc3339(text: &str) -> Result<UnixMillis, jiff::Error> {
        text.parse::<jiff::Timestamp>().map(|t| UnixMillis(t.as_millisecond()))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for UnixMillis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One temperature of one sensor. JSON: `{"sensor", "celsius", "at"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperaturePoint {
    /// The sensor.
    pub sensor: SensorName,
    /// The value.
    pub temperature: MilliCelsius,
    /// When the server received it.
    pub at: UnixMillis,
}

impl Serialize for TemperaturePoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TemperaturePoint", 3)?;
        s.serialize_field("sensor", &self.sensor)?;
        s.serialize_field("celsius", &self.temperature.to_celsius())?;
        s.serialize_field("at", &self.at)?;
        s.end()
    }
}

/// The state of one LED. JSON: `{"led", "on", "at"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedPoint {
    /// The LED.
    pub led: LedName,
    /// Lit or not.
    pub state: LedState,
    /// When the server received the frame that reported it.
    pub at: UnixMillis,
}

impl Serialize for LedPoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("LedPoint", 3)?;
        s.serialize_field("led", &self.led)?;
        s.serialize_field("on", &self.state.is_on())?;
        s.serialize_field("at", &self.at)?;
        s.end()
    }
}

/// One value a device reports: what is stored as history, kept as the last value, and sent to
/// event clients (`event: temperature` or `event: led`, the JSON of the point with the device id).
/// A new kind of reading is a variant here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A temperature of one sensor.
    Temperature(TemperaturePoint),
    /// The state of one LED.
    Led(LedPoint),
}

impl Reading {
    /// Its kind: the name of its event.
    pub fn kind(&self) -> &'static str {
        match self {
            Reading::Temperature(_) => "temperature",
            Reading::Led(_) => "led",
        }
    }
}

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reading::Temperature(point) => point.serialize(serializer),
            Reading::Led(point) => point.serialize(serializer),
        }
    }
}

/// What one verified frame says about its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A reading: a temperature, or an LED that changed.
    Reading(Reading),
    /// The node (re)connected, with the state of each of its LEDs.
    Online {
        /// Every LED the node has.
        leds: Vec<LedPoint>,
    },
    /// The node's sealed Last Will: it went away.
    Offline,
}

/// A verified frame as the model sees it: which device, when, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// The sending device (from the authenticated topic).
    pub device: DeviceId,
    /// When the server received it.
    pub at: UnixMillis,
    /// What it said.
    pub observation: Observation,
    /// Delivered from the broker's retained store (MQTT v5 marks it): an old frame, sent when
    /// the server subscribed. Its values count; it is no sign of life (neither online nor last
    /// seen).
    pub retained: bool,
}

impl DeviceUpdate {
    /// The update an opened `message` from `device`, received at `at`, stands for; `None` for a
    /// command, which goes to a device and says nothing about it.
    pub fn from_message(
        device: DeviceId,
        at: UnixMillis,
        message: &Message,
    ) -> Option<DeviceUpdate> {
        let led = |led: &LedName, state: LedState| LedPoint { led: led.clone(), state, at };
        let observation = match message {
            Message::Temperature(reading) => {
                Observation::Reading(Reading::Temperature(TemperaturePoint {
                    sensor: reading.sensor.clone(),
                    temperature: reading.temperature,
                    at,
                }))
            }
            Message::Led(change) => {
                Observation::Reading(Reading::Led(led(&change.led, change.state)))
            }
            Message::Status(StatusReport { status: NodeStatus::Online { leds }, .. }) => {
                Observation::Online {
                    leds: leds.iter().map(|status| led(&status.led, status.state)).collect(),
                }
            }
            Message::Status(StatusReport { status: NodeStatus::Offline, .. }) => {
                Observation::Offline
            }
            Message::Command(_) => return None,
        };
        Some(DeviceUpdate { device, at, observation, retained: false })
    }

    /// Whether the device is online after this update (everything but the Last Will says so).
    pub fn says_online(&self) -> bool {
        !matches!(self.observation, Observation::Offline)
    }

    /// Whether it is a status (online or the Last Will), which event clients are told of.
    pub fn is_status(&self) -> bool {
        matches!(self.observation, Observation::Online { .. } | Observation::Offline)
    }

    /// The readings it reports: its own, or each LED of an online status.
    pub fn readings(&self) -> Vec<Reading> {
        match &self.observation {
            Observation::Reading(reading) => vec![reading.clone()],
            Observation::Online { leds } => leds.iter().cloned().map(Reading::Led).collect(),
            Observation::Offline => Vec::new(),
        }
    }

    /// The LED states it reports (one for a change, all for an online status).
    pub fn leds(&self) -> &[LedPoint] {
        match &self.observation {
            Observation::Reading(Reading::Led(point)) => std::slice::from_ref(point),
            Observation::Online { leds } => leds,
            _ => &[],
        }
    }

    /// The temperature it carries, if it is one.
    pub fn temperature(&self) -> Option<&TemperaturePoint> {
        match &self.observation {
            Observation::Reading(Reading::Temperature(point)) => Some(point),
            _ => None,
        }
    }
}

/// Everything the server knows about one device now: its last values and whether it said it is
/// online. The store persists it; the live cache keeps a copy; both change only through
/// [`DeviceState::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// When any accepted frame last arrived; `None` if never.
    pub last_seen: Option<UnixMillis>,
    /// The last status it reported: online (any frame but the Last Will) or offline.
    pub online: bool,
    /// The last state of each LED.
    pub leds: BTreeMap<LedName, LedPoint>,
    /// The last reading of each sensor.
    pub temperatures: BTreeMap<SensorName, TemperaturePoint>,
}

impl DeviceState {
    /// Applies one verified update: the only definition of how a frame changes a device.
    /// `last_seen` never goes back (frames may arrive out of order after an outage).
    /// A retained update changes values only.
    pub fn apply(&mut self, update: &DeviceUpdate) {
        if !update.retained {
            self.last_seen = Some(self.last_seen.map_or(update.at, |seen| seen.max(update.at)));
            self.online = update.says_online();
        }
        for point in update.leds() {
            self.leds.insert(point.led.clone(), point.clone());
        }
        if let Some(point) = update.temperature() {
            self.temperatures.insert(point.sensor.clone(), point.clone());
        }
    }

    /// Whether it counts as online at `now`: its last status said so and it was heard from less
    /// than `offline_after` ago.
    pub fn is_online(&self, now: UnixMillis, offline_after: Duration) -> bool {
        self.online
            && self
                .last_seen
                .is_some_and(|seen| now.0.saturating_sub(seen.0) < duration_ms(offline_after))
    }

    /// How many more LEDs and sensors than now `update` would make it track.
    pub fn new_names(&self, update: &DeviceUpdate) -> (usize, usize) {
        let leds = update.leds().iter().filter(|p| !self.leds.contains_key(&p.led)).count();
        let sensors =
            update.temperature().is_some_and(|p| !self.temperatures.contains_key(&p.sensor)).into();
        (leds, sensors)
    }
}

/// One device as `GET /api/devices` shows it:
/// `{"id", "online", "last_seen", "leds": [..], "temperatures": [..]}`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSummary<'a> {
    /// The device.
    pub id: &'a DeviceId,
    /// Its state.
    pub state: &'a DeviceState,
    /// Whether it counts as online now ([`DeviceState::is_online`]).
    pub online: bool,
}

impl Serialize for DeviceSummary<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Device", 5)?;
        s.serialize_field("id", self.id)?;
        s.serialize_field("online", &self.online)?;
        s.serialize_field("last_seen", &self.state.last_seen)?;
        s.serialize_field("leds", &self.state.leds.values().collect::<Vec<_>>())?;
        s.serialize_field("temperatures", &self.state.temperatures.values().collect::<Vec<_>>())?;
        s.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ledtemp_core::{LedChange, LedStatus, TemperatureReading, Uptime};

    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("kitchen-pi").unwrap()
    }

    fn led(name: &str, on: bool) -> LedStatus {
        LedStatus { led: LedName::new(name).unwrap(), state: LedState::from(on) }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixMillis(1_500).to_rfc3339(), "1970-01-01T00:00:01.5Z");
        assert_eq!(UnixMillis::parse_rfc3339("1970-01-01T01:00:01.5+01:00").unwrap().0, 1_500);
    }

    #[test]
    fn a_frame_changes_a_device_in_one_way() {
        let mut state = DeviceState::default();
        let online = Message::Status(StatusReport {
            status: NodeStatus::Online { leds: [led("red", true)].into_iter().collect() },
            uptime: Uptime(0),
        });
        state.apply(&DeviceUpdate::from_message(device(), UnixMillis(2_000), &online).unwrap());
        let reading = Message::Temperature(TemperatureReading {
            sensor: SensorName::new("cpu").unwrap(),
            temperature: MilliCelsius(21_375),
            uptime: Uptime(1),
        });
        // Out of order: an older frame does not move last_seen back.
        let update = DeviceUpdate::from_message(device(), UnixMillis(1_000), &reading).unwrap();
        assert_eq!(state.new_names(&update), (0, 1));
        state.apply(&update);
        assert_eq!(state.last_seen, Some(UnixMillis(2_000)));
        assert!(state.online && state.leds.len() == 1 && state.temperatures.len() == 1);
        let change = Message::Led(LedChange {
            led: LedName::new("red").unwrap(),
            state: LedState::Off,
            uptime: Uptime(2),
        });
        state.apply(&DeviceUpdate::from_message(device(), UnixMillis(3_000), &change).unwrap());
        let offline =
            Message::Status(StatusReport { status: NodeStatus::Offline, uptime: Uptime(3) });
        state.apply(&DeviceUpdate::from_message(device(), UnixMillis(4_000), &offline).unwrap());
        assert!(!state.online);
        assert!(!state.is_online(UnixMillis(4_001), Duration::from_secs(120)));
        let json =
            serde_json::to_value(DeviceSummary { id: &device(), state: &state, online: false })
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "kitchen-pi", "online": false, "last_seen": "1970-01-01T00:00:04Z",
                "leds": [{"led": "red", "on": false, "at": "1970-01-01T00:00:03Z"}],
                "temperatures": [{"sensor": "cpu", "celsius": 21.375, "at": "1970-01-01T00:00:01Z"}],
            })
        );
    }

    #[test]
    fn a_silent_device_counts_as_offline_after_the_timeout() {
        let state = DeviceState {
            last_seen: Some(UnixMillis(1_000_000)),
            online: true,
            ..Default::default()
        };
        let timeout = Duration::from_secs(120);
        assert!(state.is_online(UnixMillis(1_000_000 + 119_999), timeout));
        assert!(!state.is_online(UnixMillis(1_000_000 + 120_000), timeout));
        let never = DeviceState { online: true, ..Default::default() };
        assert!(!never.is_online(UnixMillis(0), timeout));
    }
}
