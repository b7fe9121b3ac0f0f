//! Caps on what the server tracks.

use crate::model::{DeviceState, DeviceUpdate};
use crate::{Error, RejectReason};

/// Devices the server tracks at most, by default (`--max-devices`).
pub const DEFAULT_MAX_DEVICES: usize = 1000;

/// LEDs the server tracks per device at most.
pub const MAX_LEDS_PER_DEVICE: usize = 32;

/// Sensors the server tracks per device at most.
pub const MAX_SENSORS_PER_DEVICE: usize = 32;

/// Caps on what the server tracks, against "device-name explosion": a flood of invented device
/// ids (possible only without authentication, as in the plaintext teaching mode), or a device
/// whose key was stolen inventing LED and sensor names. A frame over a cap is rejected with
/// [`RejectReason::Limit`] and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Devices tracked (keyring devices and devices with stored data).
    pub max_devices: usize,
    /// LEDs per device.
    pub max_leds: usize,
    /// Sensors per device.
    pub max_sensors: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_devices: DEFAULT_MAX_DEVICES,
            max_leds: MAX_LEDS_PER_DEVICE,
            max_sensors: MAX_SENSORS_PER_DEVICE,
        }
    }
}

impl Limits {
    /// Whether `update` may be taken: its device is already tracked (`state` is `Some`, its
    /// state with every earlier frame of the batch applied) or there is room for one more of
    /// the `tracked` devices, and it does not make that device track more LEDs or sensors than
    /// allowed. Otherwise a [`RejectReason::Limit`] rejection.
    pub(crate) fn admit(
        &self,
        state: Option<&DeviceState>,
        tracked: usize,
        update: &DeviceUpdate,
    ) -> Result<(), Error> {
        let limit = || Error::Rejected {
            reason: RejectReason::Limit,
            cause: ledtemp_core::Error::Capacity,
        };
        let empty = DeviceState::default();
        if state.is_none() && tracked >= self.max_devices {
            return Err(limit());
        }
        let state = state.unwrap_or(&empty);
        let (new_leds, new_sensors) = state.new_names(update);
        if state.leds.len() + new_leds > self.max_leds
            || state.temperatures.len() + new_sensors > self.max_sensors
        {
            return Err(limit());
        }
        Ok(())
    }
}
