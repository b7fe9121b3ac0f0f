//! A batch as the transaction writes it: each frame checked again against the stored window, and
//! the columns of the `UNNEST` statements.

use ledtemp_core::{DeviceId, MilliCelsius, ReplayRule, ReplayState, ReplayWindow, SequenceNumber};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Statement, Transaction};

use crate::model::{DeviceState, Observation, Reading};
use crate::store::{AcceptedFrame, to_i64};

/// The window rule of a frame, from what the model kept of its message.
fn replay_rule(frame: &AcceptedFrame) -> ReplayRule {
    match frame.update.observation {
        Observation::Reading(_) => ReplayRule::Plain,
        Observation::Online { .. } => ReplayRule::Online,
        Observation::Offline => ReplayRule::Will,
    }
}

/// What the stored window says of a frame of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recheck {
    /// New to the stored window: store it; the window becomes this.
    New(ReplayState),
    /// Accepted without a window (the teaching mode): store it, the window unchanged.
    Unchecked,
    /// The stored window has accepted it (or moved too far past it): not stored again.
    Stored,
}

/// Checks `frame` again against the `stored` window (see the module documentation).
pub(super) fn recheck(stored: ReplayState, frame: &AcceptedFrame) -> Recheck {
    let Ok(sequence) = SequenceNumber::new(frame.sequence) else { return Recheck::Unchecked };
    if ReplayWindow::restore(frame.window).check(sequence).is_ok() {
        // Its own window does not record it: it was accepted without one.
        return Recheck::Unchecked;
    }
    match ReplayWindow::restore(stored).state_after_rule(sequence, replay_rule(frame)) {
        Ok(state) => Recheck::New(state),
        Err(_) => Recheck::Stored,
    }
}

/// The batch's columns, one array per column: what the `UNNEST` statements take.
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub(super) temperature_devices: Vec<&'a str>,
    pub(super) sensors: Vec<&'a str>,
    pub(super) temperature_times: Vec<i64>,
    pub(super) temperature_uptimes: Vec<i64>,
    pub(super) milli_celsius: Vec<i32>,
    pub(super) temperature_sequences: Vec<i64>,
    pub(super) led_devices: Vec<&'a str>,
    pub(super) led_names: Vec<&'a str>,
    pub(super) led_times: Vec<i64>,
    pub(super) led_uptimes: Vec<i64>,
    pub(super) led_on: Vec<bool>,
    pub(super) led_sequences: Vec<i64>,
}

impl<'a> Columns<'a> {
    pub(super) fn push(&mut self, frame: &'a AcceptedFrame) {
        let device = frame.device().as_str();
        let at = frame.update.at.0;
        let uptime = i64::from(frame.uptime.0);
        let sequence = to_i64(frame.sequence);
        match &frame.update.observation {
            Observation::Reading(Reading::Temperature(point)) => {
                self.temperature_devices.push(device);
                self.sensors.push(point.sensor.as_str());
                self.temperature_times.push(at);
                self.temperature_uptimes.push(uptime);
                self.milli_celsius.push(point.temperature.0);
                self.temperature_sequences.push(sequence);
            }
            Observation::Reading(Reading::Led(point)) => {
                self.led_devices.push(device);
                self.led_names.push(point.led.as_str());
                self.led_times.push(at);
                self.led_uptimes.push(uptime);
                self.led_on.push(point.state.is_on());
                self.led_sequences.push(sequence);
            }
            Observation::Online { .. } | Observation::Offline => {}
        }
    }
}

/// The devices' rows and LEDs, one array per column.
#[derive(Default)]
pub(super) struct DeviceColumns<'a> {
    pub(super) devices: Vec<&'a str>,
    pub(super) last_seen: Vec<i64>,
    pub(super) online: Vec<bool>,
    pub(super) led_devices: Vec<&'a str>,
    pub(super) leds: Vec<&'a str>,
    pub(super) led_on: Vec<bool>,
    pub(super) led_at: Vec<i64>,
}

impl<'a> DeviceColumns<'a> {
    pub(super) fn new(devices: &[(&'a DeviceId, &'a DeviceState)]) -> DeviceColumns<'a> {
        let mut columns = DeviceColumns::default();
        for (device, state) in devices {
            // Only a device heard from has a row: one known only from retained frames was
            // never seen.
            if let Some(last_seen) = state.last_seen {
                columns.devices.push(device.as_str());
                columns.last_seen.push(last_seen.0);
                columns.online.push(state.online);
            }
            for point in state.leds.values() {
                columns.led_devices.push(device.as_str());
                columns.leds.push(point.led.as_str());
                columns.led_on.push(point.state.is_on());
                columns.led_at.push(point.at.0);
            }
        }
        columns
    }
}

/// The aggregates a batch adds to one table ([`crate::history::rollup`]: one row per device,
/// sensor and bucket, in key order), one array per column.
#[derive(Default)]
pub(super) struct AggregateColumns<'a> {
    devices: Vec<&'a str>,
    sensors: Vec<&'a str>,
    buckets: Vec<i64>,
    min: Vec<i32>,
    max: Vec<i32>,
    sum: Vec<i64>,
    count: Vec<i64>,
}

impl<'a> AggregateColumns<'a> {
    /// The `width`-wide aggregates of the readings the batch writes.
    pub(super) fn new(columns: &Columns<'a>, width: i64) -> AggregateColumns<'a> {
        let readings = (columns.temperature_devices.iter().zip(&columns.sensors))
            .zip(columns.temperature_times.iter().zip(&columns.milli_celsius))
            .map(|((device, sensor), (at, milli))| (*device, *sensor, *at, MilliCelsius(*milli)));
        let mut out = AggregateColumns::default();
        for ((device, sensor, bucket), sum) in crate::history::rollup(readings, width) {
            out.devices.push(device);
            out.sensors.push(sensor);
            out.buckets.push(bucket);
            out.min.push(sum.min.0);
            out.max.push(sum.max.0);
            out.sum.push(sum.sum);
            out.count.push(sum.count);
        }
        out
    }

    pub(super) async fn write(
        &self,
        tx: &Transaction<'_>,
        statement: &Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        execute_unless(
            self.devices.is_empty(),
            tx,
            statement,
            &[
                &self.devices,
                &self.sensors,
                &self.buckets,
                &self.min,
                &self.max,
                &self.sum,
                &self.count,
            ],
        )
        .await
    }
}

/// Runs `statement` unless `skip` (an empty batch column): 0 rows then.
pub(super) async fn execute_unless(
    skip: bool,
    tx: &Transaction<'_>,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    if skip { Ok(0) } else { tx.execute(statement, params).await }
}

/// The windows a commit moved, one array per column.
#[derive(Default)]
pub(super) struct WindowColumns<'a> {
    devices: Vec<&'a str>,
    key_ids: Vec<i16>,
    tops: Vec<i64>,
    seen: Vec<i64>,
    expected_wills: Vec<i64>,
}

impl<'a> WindowColumns<'a> {
    pub(super) fn push(&mut self, (device, key_id): (&'a str, i16), state: ReplayState) {
        self.devices.push(device);
        self.key_ids.push(key_id);
        self.tops.push(to_i64(state.top));
        self.seen.push(to_i64(state.seen));
        self.expected_wills.push(to_i64(state.expected_will));
    }

    pub(super) async fn write(
        &self,
        tx: &Transaction<'_>,
        statement: &Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        execute_unless(
            self.devices.is_empty(),
            tx,
            statement,
            &[&self.devices, &self.key_ids, &self.tops, &self.seen, &self.expected_wills],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use ledtemp_core::{KeyId, SensorName};

    use super::*;
    use crate::model::{TemperaturePoint, UnixMillis};

    fn frame(sequence: u64, window: ReplayState, observation: Observation) -> AcceptedFrame {
        AcceptedFrame {
            update: crate::model::DeviceUpdate {
                device: DeviceId::new("pi").unwrap(),
                at: UnixMillis(1),
                observation,
                retained: false,
            },
            key_id: KeyId(1),
            sequence,
            uptime: ledtemp_core::Uptime(0),
            window,
        }
    }

    fn reading() -> Observation {
        Observation::Reading(Reading::Temperature(TemperaturePoint {
            sensor: SensorName::new("cpu").unwrap(),
            temperature: MilliCelsius(1),
            at: UnixMillis(1),
        }))
    }

    fn after(state: ReplayState, sequence: u64) -> ReplayState {
        ReplayWindow::restore(state).state_after(SequenceNumber::new(sequence).unwrap()).unwrap()
    }

    #[test]
    fn a_frame_is_checked_again_against_the_stored_window() {
        let empty = ReplayState::default();
        let five = after(empty, 5);
        // One server: the stored window is the one this server had.
        assert_eq!(recheck(empty, &frame(5, five, reading())), Recheck::New(five));
        // Another server stored 5 already: not again; it stored 7, and 5 is still new.
        assert_eq!(recheck(five, &frame(5, five, reading())), Recheck::Stored);
        let seven = after(empty, 7);
        assert_eq!(recheck(seven, &frame(5, five, reading())), Recheck::New(after(seven, 5)));
        // Far behind the stored window: too old.
        assert_eq!(recheck(after(empty, 500), &frame(5, five, reading())), Recheck::Stored);
        // The teaching mode's frames carry an unchanged window: stored as they are.
        assert_eq!(recheck(five, &frame(9, empty, reading())), Recheck::Unchecked);
        // The will rule, against the stored window.
        let online = ReplayWindow::new()
            .state_after_rule(SequenceNumber::new(10).unwrap(), ReplayRule::Online)
            .unwrap();
        let gone = ReplayWindow::restore(online)
            .state_after_rule(SequenceNumber::new(11).unwrap(), ReplayRule::Will)
            .unwrap();
        assert_eq!(recheck(online, &frame(11, gone, Observation::Offline)), Recheck::New(gone));
        assert_eq!(recheck(gone, &frame(11, gone, Observation::Offline)), Recheck::Stored);
    }
}
