//! The one error type of `ledtemp-rpi`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong on the Pi side.
///
/// Sensor errors are what the node reports for a failed reading; they are never fatal. Errors
/// about text from a file carry its path (`None` when a parser was given the text directly).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// rppal cannot identify a Raspberry Pi here: this is another machine, or the files that name
    /// the model (`/proc/device-tree/compatible`, `/proc/cpuinfo`) are missing.
    NotARaspberryPi,
    /// A GPIO pin could not be opened: in use, not on this Pi, permission denied, or I/O.
    Gpio {
        /// The BCM GPIO number.
        pin: u8,
        /// What rppal said.
        source: rppal::gpio::Error,
    },
    /// An I2C bus could not be opened.
    I2c {
        /// The bus number (`/dev/i2c-<bus>`).
        bus: u8,
        /// What rppal said.
        source: rppal::i2c::Error,
    },
    /// An I2C address outside the 7-bit range devices may use (`0x08` to `0x77`).
    InvalidI2cAddress(u8),
    /// A 1-Wire sensor id that is not a plain name (1 to 32 of `A-Z a-z 0-9 - _`).
    InvalidSensorId(String),
    /// A sensor's file does not exist: the sensor is unplugged or its kernel driver not loaded.
    SensorMissing {
        /// The file.
        path: PathBuf,
    },
    /// A DS18B20 reported a CRC mismatch (`NO`): the bus garbled the reading; try again.
    CrcMismatch {
        /// The `w1_slave` file, if known.
        path: Option<PathBuf>,
    },
    /// A DS18B20 returned its power-on reset value (85 °C): it did not convert; try again.
    PowerOnReset {
        /// The `w1_slave` file, if known.
        path: Option<PathBuf>,
    },
    /// A reading outside what the sensor can measure (-127 °C: a DS18B20 that is disconnected).
    OutOfRange {
        /// The sensor's file, if known.
        path: Option<PathBuf>,
        /// The value read, in milli-degrees Celsius.
        value: i64,
    },
    /// A sensor file that does not have the expected format.
    MalformedReading {
        /// The sensor's file, if known.
        path: Option<PathBuf>,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The sequence-number file is damaged. Refused rather than restarting at 0, which would
    /// reuse nonces.
    CorruptSequenceFile {
        /// The file, if known.
        path: Option<PathBuf>,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A file could not be opened, read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. `"read"`.
        action: &'static str,
        /// What the operating system said.
        source: io::Error,
    },
    /// A key file could not be loaded, or a private file written (see `ledtemp_keys::Error`).
    Keys(ledtemp_keys::Error),
}

impl Error {
    /// Sets the path of an error about text that turned out to come from `file`.
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        match &mut self {
            Error::CrcMismatch { path }
            | Error::PowerOnReset { path }
            | Error::OutOfRange { path, .. }
            | Error::MalformedReading { path, .. }
            | Error::CorruptSequenceFile { path, .. } => *path = Some(file.to_path_buf()),
            _ => {}
        }
        self
    }
}

impl From<ledtemp_keys::Error> for Error {
    fn from(e: ledtemp_keys::Error) -> Self {
        match e {
            ledtemp_keys::Error::Io { path, action, source } => Error::Io { path, action, source },
            other => Error::Keys(other),
        }
    }
}

/// `"<path>: "` or nothing.
struct In<'a>(&'a Option<PathBuf>);

impl fmt::Display for In<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}: ", path.display()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use rppal::gpio::Error as G;
        use rppal::i2c::Error as I;
        match self {
            Error::NotARaspberryPi => f.write_str(
                "this machine is not a Raspberry Pi that rppal recognizes: GPIO and I2C are only \
                 available on one (use simulated hardware elsewhere)",
            ),
            Error::Gpio { pin, source } => match source {
                G::PinUsed(_) => write!(f, "GPIO {pin} is already in use by this program"),
                G::PinNotAvailable(_) => write!(
                    f,
                    "this Pi has no GPIO {pin}: pins are BCM GPIO numbers, not header positions"
                ),
                G::PermissionDenied(dev) => write!(
                    f,
                    "permission denied opening {dev} for GPIO {pin}: add the user to the `gpio` \
                     group"
                ),
                other => write!(f, "cannot open GPIO {pin}: {other}"),
            },
            Error::I2c { bus, source } => match source {
                I::Io(e) if e.kind() == io::ErrorKind::NotFound => write!(
                    f,
                    "no /dev/i2c-{bus}: enable I2C (raspi-config, or dtparam=i2c_arm=on in \
                     config.txt) and check the bus number"
                ),
                I::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => write!(
                    f,
                    "permission denied opening /dev/i2c-{bus}: add the user to the `i2c` group"
                ),
                other => write!(f, "cannot open I2C bus {bus}: {other}"),
            },
            Error::InvalidI2cAddress(a) => {
                write!(
                    f,
                    "I2C address {a:#04x} is not usable: use a 7-bit address from 0x08 to 0x77"
                )
            }
            Error::InvalidSensorId(id) => write!(
                f,
                "invalid 1-Wire sensor id {id:?}: use a directory name from \
                 /sys/bus/w1/devices, e.g. 28-0316a2796eff"
            ),
            Error::SensorMissing { path } => write!(
                f,
                "{} does not exist: the sensor is unplugged or its driver not loaded (1-Wire: \
                 dtoverlay=w1-gpio in config.txt)",
                path.display()
            ),
            Error::CrcMismatch { path } => write!(
                f,
                "{}the DS18B20 reading failed its CRC check (noisy or long wiring?); it is \
                 retried at the next sample",
                In(path)
            ),
            Error::PowerOnReset { path } => write!(
                f,
                "{}the DS18B20 returned its power-on value 85 °C, not a measurement (power \
                 dropped during conversion?); it is retried at the next sample",
                In(path)
            ),
            Error::OutOfRange { path, value: -127_000 } => write!(
                f,
                "{}the DS18B20 reads -127 °C: it is disconnected; check its wiring",
                In(path)
            ),
            Error::OutOfRange { path, value } => write!(
                f,
                "{}reading of {value} m°C is outside what the sensor can measure; check the sensor",
                In(path)
            ),
            Error::MalformedReading { path, problem } => {
                write!(f, "{}unexpected sensor data: {problem}", In(path))
            }
            Error::CorruptSequenceFile { path, problem } => write!(
                f,
                "{}sequence-number file is damaged ({problem}); refusing to guess, since \
                 restarting low would reuse nonces: provision a new key id for this device and \
                 delete the file",
                In(path)
            ),
            Error::Io { path, action, source } => write!(
                f,
                "cannot {action} {}: {source}; check the path and that this user may access it",
                path.display()
            ),
            Error::Keys(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Gpio { source, .. } => Some(source),
            Error::I2c { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::Keys(e) => Some(e),
            _ => None,
        }
    }
}
