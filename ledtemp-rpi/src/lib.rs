//! `ledtemp-rpi`: the Raspberry Pi side of ledtemp.
//!
//! What a node on a Pi touches, as implementations of the `ledtemp-core` traits:
//! - [`GpioButton`] ([`Button`](ledtemp_core::Button)) and [`GpioLed`]
//!   ([`Led`](ledtemp_core::Led)) on GPIO pins by BCM number, through rppal;
//! - temperature sensors ([`TempSensor`](ledtemp_core::TempSensor)): a DS18B20 on 1-Wire
//!   ([`Ds18b20`]), the SoC's thermal zone ([`ThermalZone`], also
//!   [`AsyncTempSensor`](ledtemp_core::AsyncTempSensor)) and a TMP102 on I2C ([`open_tmp102`]);
//!   their file formats are parsed by pure functions ([`parse_w1_slave`], [`parse_thermal_zone`]);
//! - [`FileSequenceStore`], the node's sequence-number reservation in a file that survives
//!   crashes ([`SequenceStore`](ledtemp_core::SequenceStore));
//! - [`load_key_file`], which refuses a key file that group or others may read.
//!
//! Every sensor and store takes its path as an argument, so the crate runs and tests anywhere;
//! only GPIO and I2C need a Pi, and elsewhere they fail with [`Error::NotARaspberryPi`] (or a
//! missing `/dev/i2c-*`), never a panic. It builds for `aarch64-unknown-linux-gnu`.
//!
//! # Example
//!
//! ```
//! use ledtemp_core::{MilliCelsius, SequenceCounter, TempSensor};
//! use ledtemp_rpi::{FileSequenceStore, ThermalZone};
//!
//! let dir = tempfile::tempdir()?;
//! // On a Pi: ThermalZone::cpu() and a path under /var/lib.
//! std::fs::write(dir.path().join("temp"), "48312\n")?;
//! let mut cpu = ThermalZone::new(dir.path().join("temp"));
//! assert_eq!(cpu.read()?, MilliCelsius(48_312));
//!
//! let mut store = FileSequenceStore::new(dir.path().join("node.seq"));
//! let mut counter = SequenceCounter::resume(&mut store, SequenceCounter::DEFAULT_BLOCK)?;
//! assert_eq!(counter.next(&mut store)?.get(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod gpio;
mod sensor;
mod sequence;

use std::path::Path;

pub use error::Error;
pub use gpio::{GpioButton, GpioLed};
pub use ledtemp_keys::KeyEntry;
pub use sensor::{
    CPU_THERMAL_ZONE, DS18B20_POWER_ON_RESET, DS18B20_RANGE, Ds18b20, ThermalZone, W1_DEVICES_DIR,
    open_tmp102, parse_thermal_zone, parse_w1_slave,
};
pub use sequence::{FileSequenceStore, format_sequence_file, parse_sequence_file};

/// Loads the node's key file (`docs/keys.md`), refusing it if group or others may access it:
/// `ledtemp_keys::load_key_file` with this crate's error.
pub fn load_key_file(path: &Path) -> Result<KeyEntry, Error> {
    ledtemp_keys::load_key_file(path).map_err(Error::Keys)
}
