//! The MQTT topic scheme, both ways.

use core::fmt;

use heapless::String;

use crate::{DeviceId, Error, LedName, MAX_NAME_LEN, SensorName};

/// First level of every ledtemp topic.
pub const TOPIC_ROOT: &str = "ledtemp";

/// Topic filter that matches everything under the ledtemp root: what devices publish, and the
/// commands sent to them.
pub const TOPIC_FILTER_ALL: &str = "ledtemp/+/#";

/// The topic filters a receiver of device frames subscribes to: every LED, temperature and
/// status topic of every device, and no command topic ([`Topic::Command`] goes the other way).
pub const TOPIC_FILTERS_FROM_DEVICES: [&str; 3] =
    ["ledtemp/+/led/+", "ledtemp/+/temp/+", "ledtemp/+/status"];

/// Longest topic, in bytes: `ledtemp/<device>/temp/<sensor>` with both names at their limit.
pub const MAX_TOPIC_LEN: usize =
    TOPIC_ROOT.len() + 1 + MAX_NAME_LEN + "/temp/".len() + MAX_NAME_LEN;

pub(crate) const KIND_LED: &str = "led";
pub(crate) const KIND_TEMPERATURE: &str = "temp";
pub(crate) const KIND_STATUS: &str = "status";
pub(crate) const KIND_COMMAND: &str = "cmd";

/// Which way a frame travels. Both directions use the device's key, so the direction is bound
/// into the nonce (its first reserved byte, [`FrameHeader::nonce`](crate::FrameHeader::nonce))
/// and, through the topic kind, into the associated data: the two never share a nonce, and a
/// frame of one direction never opens as one of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device: LED changes, temperatures, status reports. Nonce byte 2 is `0x00`.
    FromDevice,
    /// To the device: commands ([`Topic::Command`]). Nonce byte 2 is `0x01`.
    ToDevice,
}

impl Direction {
    /// The nonce byte that names the direction.
    pub const fn nonce_byte(self) -> u8 {
        match self {
            Direction::FromDevice => 0x00,
            Direction::ToDevice => 0x01,
        }
    }
}

/// A topic held without allocation.
pub type TopicString = String<MAX_TOPIC_LEN>;

/// A parsed ledtemp topic.
///
/// | topic | message |
/// | --- | --- |
/// | `ledtemp/<device>/led/<led>` | [`LedChange`](crate::LedChange) |
/// | `ledtemp/<device>/temp/<sensor>` | [`TemperatureReading`](crate::TemperatureReading) |
/// | `ledtemp/<device>/status` | [`StatusReport`](crate::StatusReport) |
/// | `ledtemp/<device>/cmd/<led>` | [`LedCommand`](crate::LedCommand), to the device |
///
/// Parsing is strict (no empty levels, no extra levels, names validated), so a parsed topic
/// formats back to exactly the bytes it came from; the sealed frame's associated data relies on it.
///
/// ```
/// use ledtemp_core::Topic;
/// let topic = Topic::parse("ledtemp/kitchen/temp/cpu")?;
/// assert_eq!(topic.device().as_str(), "kitchen");
/// assert_eq!(topic.to_topic_string().as_str(), "ledtemp/kitchen/temp/cpu");
/// # Ok::<(), ledtemp_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `ledtemp/<device>/led/<led>`
    Led {
        /// Sending device.
        device: DeviceId,
        /// LED name.
        led: LedName,
    },
    /// `ledtemp/<device>/temp/<sensor>`
    Temperature {
        /// Sending device.
        device: DeviceId,
        /// Sensor name.
        sensor: SensorName,
    },
    /// `ledtemp/<device>/status`
    Status {
        /// Sending device.
        device: DeviceId,
    },
    /// `ledtemp/<device>/cmd/<led>`: a command to the device, about one of its LEDs.
    Command {
        /// The device the command is for.
        device: DeviceId,
        /// LED name.
        led: LedName,
    },
}

impl Topic {
    /// Parses a topic string; anything outside the scheme is [`Error::InvalidTopic`].
    pub fn parse(topic: &str) -> Result<Self, Error> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(Error::InvalidTopic);
        }
        let mut levels = topic.split('/');
        let (Some(TOPIC_ROOT), Some(device)) = (levels.next(), levels.next()) else {
            return Err(Error::InvalidTopic);
        };
        let device = DeviceId::new(device).map_err(|_| Error::InvalidTopic)?;
        let parsed = match (levels.next(), levels.next()) {
            (Some(KIND_LED), Some(led)) => {
                Topic::Led { device, led: LedName::new(led).map_err(|_| Error::InvalidTopic)? }
            }
            (Some(KIND_TEMPERATURE), Some(sensor)) => Topic::Temperature {
                device,
                sensor: SensorName::new(sensor).map_err(|_| Error::InvalidTopic)?,
            },
            (Some(KIND_STATUS), None) => Topic::Status { device },
            (Some(KIND_COMMAND), Some(led)) => {
                Topic::Command { device, led: LedName::new(led).map_err(|_| Error::InvalidTopic)? }
            }
            _ => return Err(Error::InvalidTopic),
        };
        match levels.next() {
            None => Ok(parsed),
            Some(_) => Err(Error::InvalidTopic),
        }
    }

    /// The device the topic belongs to.
    pub fn device(&self) -> &DeviceId {
        match self {
            Topic::Led { device, .. }
            | Topic::Temperature { device, .. }
            | Topic::Status { device }
            | Topic::Command { device, .. } => device,
        }
    }

    /// Which way frames on this topic travel.
    pub fn direction(&self) -> Direction {
        match self {
            Topic::Command { .. } => Direction::ToDevice,
            Topic::Led { .. } | Topic::Temperature { .. } | Topic::Status { .. } => {
                Direction::FromDevice
            }
        }
    }

    /// The filter a node subscribes to for the commands sent to `device`:
    /// `ledtemp/<device>/cmd/+`.
    pub fn command_filter(device: &DeviceId) -> TopicString {
        let mut out = TopicString::new();
        // Cannot overflow: shorter than the longest topic.
        for part in [TOPIC_ROOT, "/", device.as_str(), "/", KIND_COMMAND, "/+"] {
            let _ = out.push_str(part);
        }
        out
    }

    /// The topic as a string.
    pub fn to_topic_string(&self) -> TopicString {
        let (kind, name) = self.kind_and_name();
        let mut out = TopicString::new();
        // Built piece by piece rather than with `write!`, which would pull `core::fmt` into
        // firmware images. Cannot overflow: MAX_TOPIC_LEN is the longest topic names can form.
        for part in [TOPIC_ROOT, "/", self.device().as_str(), "/", kind] {
            let _ = out.push_str(part);
        }
        if let Some(name) = name {
            let _ = out.push_str("/");
            let _ = out.push_str(name);
        }
        out
    }

    /// Levels after the device, as the static kind word and the optional name.
    pub(crate) fn kind_and_name(&self) -> (&'static str, Option<&str>) {
        match self {
            Topic::Led { led, .. } => (KIND_LED, Some(led.as_str())),
            Topic::Temperature { sensor, .. } => (KIND_TEMPERATURE, Some(sensor.as_str())),
            Topic::Status { .. } => (KIND_STATUS, None),
            Topic::Command { led, .. } => (KIND_COMMAND, Some(led.as_str())),
        }
    }

    /// Writes the topic's bytes into `out`, returning how many were written.
    #[cfg(test)]
    fn write_bytes(&self, out: &mut [u8]) -> Result<usize, Error> {
        let (kind, name) = self.kind_and_name();
        write_topic_bytes(self.device(), kind, name, out)
    }
}

/// Writes `ledtemp/<device>/<kind>[/<name>]` into `out` without `core::fmt`, returning its length.
/// The sealing path uses it to put the topic into the associated data without building a [`Topic`].
pub(crate) fn write_topic_bytes(
    device: &DeviceId,
    kind: &str,
    name: Option<&str>,
    out: &mut [u8],
) -> Result<usize, Error> {
    let parts = [TOPIC_ROOT, "/", device.as_str(), "/", kind];
    let name_parts = match name {
        Some(name) => ["/", name],
        None => ["", ""],
    };
    let mut len = 0;
    for part in parts.iter().chain(name_parts.iter()) {
        let end = len + part.len();
        out.get_mut(len..end).ok_or(Error::BufferTooSmall)?.copy_from_slice(part.as_bytes());
        len = end;
    }
    Ok(len)
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = self.kind_and_name();
        write!(f, "{TOPIC_ROOT}/{}/{kind}", self.device())?;
        match name {
            Some(name) => write!(f, "/{name}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn parses_each_kind_and_formats_back() {
        for s in [
            "ledtemp/pi-1/led/red",
            "ledtemp/pi-1/temp/cpu",
            "ledtemp/pi-1/status",
            "ledtemp/pi-1/cmd/red",
        ] {
            let topic = Topic::parse(s).unwrap();
            assert_eq!(topic.to_topic_string().as_str(), s);
            let mut buf = [0u8; MAX_TOPIC_LEN];
            let n = topic.write_bytes(&mut buf).unwrap();
            assert_eq!(&buf[..n], s.as_bytes());
        }
    }

    #[test]
    fn commands_travel_to_the_device_and_have_their_own_filter() {
        let command = Topic::parse("ledtemp/pi-1/cmd/red").unwrap();
        assert_eq!(command.direction(), Direction::ToDevice);
        assert_eq!(
            Topic::parse("ledtemp/pi-1/led/red").unwrap().direction(),
            Direction::FromDevice
        );
        let device = DeviceId::new("pi-1").unwrap();
        assert_eq!(Topic::command_filter(&device).as_str(), "ledtemp/pi-1/cmd/+");
        let name = "n".repeat(MAX_NAME_LEN);
        let longest = format!("ledtemp/{name}/cmd/{name}");
        assert!(longest.len() < MAX_TOPIC_LEN);
        assert_eq!(Topic::parse(&longest).unwrap().to_topic_string().as_str(), longest);
    }

    #[test]
    fn longest_topic_fits() {
        let name = "n".repeat(MAX_NAME_LEN);
        let s = format!("ledtemp/{name}/temp/{name}");
        assert_eq!(s.len(), MAX_TOPIC_LEN);
        assert_eq!(Topic::parse(&s).unwrap().to_topic_string().as_str(), s);
    }

    #[test]
    fn rejects_everything_off_scheme() {
        for s in [
            "",
            "ledtemp",
            "ledtemp/",
            "ledtemp/pi",
            "ledtemp/pi/",
            "ledtemp//status",
            "ledtemp/pi/status/",
            "ledtemp/pi/status/extra",
            "ledtemp/pi/led",
            "ledtemp/pi/led/",
            "ledtemp/pi/led/red/x",
            "ledtemp/+/status",
            "ledtemp/#",
            "ledtemp/pi/temp/#",
            "other/pi/status",
            "/ledtemp/pi/status",
            "ledtemp/pi/humidity/x",
            "ledtemp/pi/cmd",
            "ledtemp/pi/cmd/",
            "ledtemp/pi/cmd/+",
            "ledtemp/pi/cmd/red/x",
        ] {
            assert_eq!(Topic::parse(s), Err(Error::InvalidTopic), "{s:?}");
        }
    }
}
