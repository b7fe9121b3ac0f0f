//! What the servers of a group tell each other through the database: after each commit, the
//! committing server sends the batch's updates with `pg_notify` inside the transaction (so they
//! are delivered if and only if the commit is), and every other server that `LISTEN`s applies
//! them to its live view. The frames are verified once, by the server that received them; the
//! others trust their database, which they trust already.
//!
//! A notice is JSON (`{"origin":..,"updates":[..]}`) of at most [`MAX_NOTICE_LEN`] bytes, as
//! PostgreSQL's payload limit demands; a batch takes as many notices as it needs. A notice that
//! does not decode, or an update naming an invalid device, sensor or LED, is skipped and logged:
//! whatever the payload, decoding never panics.

use ledtemp_core::{DeviceId, LedName, LedState, MilliCelsius, SensorName};
use serde::{Deserialize, Serialize};

use crate::model::{DeviceUpdate, LedPoint, Observation, Reading, TemperaturePoint, UnixMillis};

/// The channel the servers of a group notify and listen on.
pub(super) const CHANNEL: &str = "ledtemp_commits";

/// Longest notice sent, in bytes: under PostgreSQL's limit of 8,000, with room for the JSON
/// framing of the last update.
pub(super) const MAX_NOTICE_LEN: usize = 7_000;

/// One notice: the sender, and updates it committed.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    /// The sending store's random id: a server skips its own notices.
    origin: u64,
    updates: Vec<WireUpdate>,
}

/// A [`DeviceUpdate`] on the wire, with short keys: a notice carries dozens.
#[derive(Debug, Serialize, Deserialize)]
struct WireUpdate {
    /// Device id.
    d: String,
    /// Receive time, milliseconds since the Unix epoch.
    t: i64,
    /// Delivered from the broker's retained store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    r: bool,
    o: WireObservation,
}

/// An [`Observation`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum WireObservation {
    /// A temperature: sensor, milli-degrees Celsius.
    T(String, i32),
    /// An LED change: LED, on.
    L(String, bool),
    /// Online, with every LED and whether it is on.
    N(Vec<(String, bool)>),
    /// Offline (the Last Will).
    F,
}

impl WireUpdate {
    fn from_update(update: &DeviceUpdate) -> WireUpdate {
        let o = match &update.observation {
            Observation::Reading(Reading::Temperature(point)) => {
                WireObservation::T(point.sensor.as_str().to_owned(), point.temperature.0)
            }
            Observation::Reading(Reading::Led(point)) => {
                WireObservation::L(point.led.as_str().to_owned(), point.state.is_on())
            }
            Observation::Online { leds } => WireObservation::N(
                leds.iter().map(|p| (p.led.as_str().to_owned(), p.state.is_on())).collect(),
            ),
            Observation::Offline => WireObservation::F,
        };
        WireUpdate { d: update.device.as_str().to_owned(), t: update.at.0, r: update.retained, o }
    }

    /// The update, if every name in it is valid.
    fn into_update(self) -> Option<DeviceUpdate> {
        let at = UnixMillis(self.t);
        let led = |name: &str, on: bool| {
            Some(LedPoint { led: LedName::new(name).ok()?, state: LedState::from(on), at })
        };
        let observation = match self.o {
            WireObservation::T(sensor, milli) => {
                Observation::Reading(Reading::Temperature(TemperaturePoint {
                    sensor: SensorName::new(&sensor).ok()?,
                    temperature: MilliCelsius(milli),
                    at,
                }))
            }
            WireObservation::L(name, on) => Observation::Reading(Reading::Led(led(&name, on)?)),
            WireObservation::N(leds) => Observation::Online {
                leds: leds.iter().map(|(name, on)| led(name, *on)).collect::<Option<_>>()?,
            },
            WireObservation::F => Observation::Offline,
        };
        Some(DeviceUpdate {
            device: DeviceId::new(&self.d).ok()?,
            at,
            observation,
            retained: self.r,
        })
    }
}

/// The notices that carry `updates` from `origin`, each at most [`MAX_NOTICE_LEN`] bytes (an
/// update is far smaller: names are at most 32 characters, an online status at most 8 LEDs).
pub(super) fn encode(origin: u64, updates: &[&DeviceUpdate]) -> Vec<String> {
    let mut notices = Vec::new();
    let mut pending: Vec<WireUpdate> = Vec::new();
    let mut pending_len = 0;
    for update in updates {
        let wire = WireUpdate::from_update(update);
        // Serialising plain data into a String cannot fail.
        let len = serde_json::to_string(&wire).map_or(0, |text| text.len()) + 1;
        if pending_len + len > MAX_NOTICE_LEN - 64 && !pending.is_empty() {
            let updates = std::mem::take(&mut pending);
            notices.push(serde_json::to_string(&Notice { origin, updates }).unwrap_or_default());
            pending_len = 0;
        }
        pending.push(wire);
        pending_len += len;
    }
    if !pending.is_empty() {
        notices
            .push(serde_json::to_string(&Notice { origin, updates: pending }).unwrap_or_default());
    }
    notices
}

/// A notice that is not one (another program on the channel, or a newer server's format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MalformedNotice(pub(super) String);

/// Another server's notice, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decoded {
    /// Its valid updates, in order.
    pub(super) updates: Vec<DeviceUpdate>,
    /// How many updates named an invalid device, sensor or LED (left out).
    pub(super) invalid: usize,
}

/// The updates of a notice from another store than `own`; `Ok(None)` for the store's own.
pub(super) fn decode(own: u64, payload: &str) -> Result<Option<Decoded>, MalformedNotice> {
    let notice: Notice =
        serde_json::from_str(payload).map_err(|e| MalformedNotice(e.to_string()))?;
    if notice.origin == own {
        return Ok(None);
    }
    let total = notice.updates.len();
    let updates: Vec<DeviceUpdate> =
        notice.updates.into_iter().filter_map(WireUpdate::into_update).collect();
    let invalid = total - updates.len();
    Ok(Some(Decoded { updates, invalid }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn update(device: &str, at: i64, observation: Observation) -> DeviceUpdate {
        DeviceUpdate {
            device: DeviceId::new(device).unwrap(),
            at: UnixMillis(at),
            observation,
            retained: false,
        }
    }

    fn updates() -> Vec<DeviceUpdate> {
        let at = UnixMillis(7);
        let led = |name: &str, on| LedPoint {
            led: LedName::new(name).unwrap(),
            state: LedState::from(on),
            at,
        };
        vec![
            update(
                "kitchen",
                7,
                Observation::Reading(Reading::Temperature(TemperaturePoint {
                    sensor: SensorName::new("cpu").unwrap(),
                    temperature: MilliCelsius(-12_345),
                    at,
                })),
            ),
            update("kitchen", 7, Observation::Reading(Reading::Led(led("red", true)))),
            update(
                "garage",
                7,
                Observation::Online { leds: vec![led("a", false), led("b", true)] },
            ),
            DeviceUpdate { retained: true, ..update("garage", 7, Observation::Offline) },
        ]
    }

    #[test]
    fn updates_travel_whole_and_a_server_skips_its_own() {
        let updates = updates();
        let refs: Vec<&DeviceUpdate> = updates.iter().collect();
        let notices = encode(1, &refs);
        assert_eq!(notices.len(), 1);
        assert_eq!(decode(2, &notices[0]).unwrap(), Some(Decoded { updates, invalid: 0 }));
        assert_eq!(decode(1, &notices[0]).unwrap(), None);
    }

    #[test]
    fn a_big_batch_is_split_into_notices_postgresql_accepts() {
        let many: Vec<DeviceUpdate> = (0..1024).flat_map(|_| updates()).collect();
        let refs: Vec<&DeviceUpdate> = many.iter().collect();
        let notices = encode(1, &refs);
        assert!(notices.len() > 1);
        assert!(notices.iter().all(|n| n.len() <= MAX_NOTICE_LEN), "a notice over the limit");
        let back: Vec<DeviceUpdate> =
            notices.iter().flat_map(|n| decode(2, n).unwrap().unwrap().updates).collect();
        assert_eq!(back, many);
    }

    #[test]
    fn invalid_names_are_skipped_and_counted() {
        let payload =
            r#"{"origin":1,"updates":[{"d":"a/b","t":1,"o":"F"},{"d":"ok","t":1,"o":"F"}]}"#;
        let decoded = decode(2, payload).unwrap().unwrap();
        assert_eq!((decoded.updates.len(), decoded.invalid), (1, 1));
        assert!(decode(2, "not json").is_err());
    }

    proptest! {
        /// Whatever arrives on the channel, decoding returns a value or an error, never panics.
        #[test]
        fn decoding_any_payload_never_panics(payload in ".{0,300}") {
            let _ = decode(0, &payload);
        }

        #[test]
        fn decoding_mutated_notices_never_panics(flip in 0usize..400, byte in any::<u8>()) {
            let updates = updates();
            let refs: Vec<&DeviceUpdate> = updates.iter().collect();
            let mut bytes = encode(1, &refs).remove(0).into_bytes();
            let at = flip % bytes.len();
            bytes[at] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = decode(0, &text);
            }
        }
    }
}
