//! Helpers shared by the core's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ledtemp_core::{
    DeviceId, LedChange, LedCommand, LedName, LedState, LedStatus, MAX_SEQUENCE, Message,
    MilliCelsius, NodeStatus, SensorName, SequenceNumber, StatusReport, TemperatureReading, Uptime,
};
use proptest::prelude::*;
use serde_json::Value;

pub fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

pub fn temperature(sensor: &str, milli: i32, uptime: u32) -> Message {
    Message::Temperature(TemperatureReading {
        sensor: SensorName::new(sensor).unwrap(),
        temperature: MilliCelsius(milli),
        uptime: Uptime(uptime),
    })
}

pub fn led(name: &str, state: LedState, uptime: u32) -> Message {
    Message::Led(LedChange { led: LedName::new(name).unwrap(), state, uptime: Uptime(uptime) })
}

pub fn online(leds: &[(&str, LedState)], uptime: u32) -> Message {
    let leds = leds
        .iter()
        .map(|(name, state)| LedStatus { led: LedName::new(name).unwrap(), state: *state })
        .collect::<heapless::Vec<_, { ledtemp_core::MAX_LEDS }, u8>>();
    Message::Status(StatusReport { status: NodeStatus::Online { leds }, uptime: Uptime(uptime) })
}

pub fn offline(uptime: u32) -> Message {
    Message::Status(StatusReport { status: NodeStatus::Offline, uptime: Uptime(uptime) })
}

/// A command to a device: set `name` to `state`, for the node's `session`, until its uptime
/// `expires`.
pub fn command(name: &str, state: LedState, session: u64, expires: u32) -> Message {
    Message::Command(LedCommand {
        led: LedName::new(name).unwrap(),
        state,
        session: SequenceNumber::new(session).unwrap(),
        expires: Uptime(expires),
    })
}

fn state_of(v: &Value) -> LedState {
    match v.as_str().unwrap() {
        "on" => LedState::On,
        "off" => LedState::Off,
        other => panic!("bad LED state {other}"),
    }
}

/// A message from its JSON description in `tests/vectors.json`.
pub fn message_from_json(v: &Value) -> Message {
    let uptime = || v["uptime_ms"].as_u64().unwrap() as u32;
    match v["kind"].as_str().unwrap() {
        "temperature" => temperature(
            v["sensor"].as_str().unwrap(),
            v["milli_celsius"].as_i64().unwrap() as i32,
            uptime(),
        ),
        "led" => led(v["led"].as_str().unwrap(), state_of(&v["state"]), uptime()),
        "online" => {
            let leds: Vec<(String, LedState)> = v["leds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| (l["led"].as_str().unwrap().to_owned(), state_of(&l["state"])))
                .collect();
            let leds: Vec<(&str, LedState)> = leds.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            online(&leds, uptime())
        }
        "offline" => offline(uptime()),
        "command" => command(
            v["led"].as_str().unwrap(),
            state_of(&v["state"]),
            v["session"].as_u64().unwrap(),
            u32::try_from(v["expires_ms"].as_u64().unwrap()).unwrap(),
        ),
        other => panic!("bad message kind {other}"),
    }
}

pub fn name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

pub fn led_state_strategy() -> impl Strategy<Value = LedState> {
    any::<bool>().prop_map(LedState::from)
}

/// Any valid message, either direction.
pub fn message_strategy() -> impl Strategy<Value = Message> {
    prop_oneof![
        (name_strategy(), any::<i32>(), any::<u32>()).prop_map(|(s, t, u)| temperature(&s, t, u)),
        (name_strategy(), led_state_strategy(), any::<u32>()).prop_map(|(n, s, u)| led(&n, s, u)),
        (proptest::collection::vec((name_strategy(), led_state_strategy()), 0..=8), any::<u32>())
            .prop_map(|(leds, u)| {
                let leds: Vec<(&str, LedState)> =
                    leds.iter().map(|(n, s)| (n.as_str(), *s)).collect();
                online(&leds, u)
            }),
        any::<u32>().prop_map(offline),
        (name_strategy(), led_state_strategy(), 0..=MAX_SEQUENCE, any::<u32>())
            .prop_map(|(n, s, session, e)| command(&n, s, session, e)),
    ]
}
