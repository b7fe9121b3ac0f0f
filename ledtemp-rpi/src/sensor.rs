//! Temperature sensors: DS18B20 on 1-Wire and the SoC's thermal zone through sysfs, and the
//! TMP102 on I2C through the core's driver.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ledtemp_core::{AsyncTempSensor, MilliCelsius, Name, TempSensor, Tmp102};
use rppal::i2c::I2c;

use crate::Error;

/// Where the kernel's 1-Wire driver lists its devices.
pub const W1_DEVICES_DIR: &str = "/sys/bus/w1/devices";

/// The Pi's SoC temperature.
pub const CPU_THERMAL_ZONE: &str = "/sys/class/thermal/thermal_zone0/temp";

/// Lowest and highest temperature a DS18B20 measures (datasheet: -55 °C to +125 °C).
pub const DS18B20_RANGE: core::ops::RangeInclusive<i32> = -55_000..=125_000;

/// What a DS18B20 reports after power-on until its first conversion: 85 °C.
pub const DS18B20_POWER_ON_RESET: i32 = 85_000;

/// Longest sensor file read, in bytes: a `w1_slave` file is about 75.
const MAX_SENSOR_FILE_LEN: u64 = 512;

/// Reads a small sysfs file. A missing file is [`Error::SensorMissing`].
fn read_sensor_file(path: &Path) -> Result<String, Error> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::SensorMissing { path: path.to_path_buf() },
        _ => Error::Io { path: path.to_path_buf(), action: "open", source: e },
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SENSOR_FILE_LEN + 1).read_to_end(&mut bytes).map_err(|e| {
        // The w1 driver answers a read of a sensor that was unplugged with ENODEV or ENXIO.
        const ENXIO: i32 = 6;
        const ENODEV: i32 = 19;
        match e.raw_os_error() {
            Some(ENODEV | ENXIO) => Error::SensorMissing { path: path.to_path_buf() },
            _ => Error::Io { path: path.to_path_buf(), action: "read", source: e },
        }
    })?;
    if bytes.len() as u64 > MAX_SENSOR_FILE_LEN {
        return Err(Error::MalformedReading {
            path: Some(path.to_path_buf()),
            problem: "file is longer than a sensor file",
        });
    }
    String::from_utf8(bytes).map_err(|_| Error::MalformedReading {
        path: Some(path.to_path_buf()),
        problem: "not text",
    })
}

/// Parses a 1-Wire thermometer's `w1_slave` file (DS18B20 and the DS18S20, DS1822 and MAX31850
/// families, which share the format):
///
/// ```text
/// 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
/// 72 01 4b 46 7f ff 0e 10 57 t=23125
/// ```
///
/// The first line holds the sensor's nine scratchpad bytes and ends in `YES` when the kernel's
/// CRC check passed, `NO` otherwise ([`Error::CrcMismatch`]); nine zero bytes (which pass the
/// CRC) mean the sensor did not answer ([`Error::MalformedReading`]). The second line ends in
/// `t=` and the temperature in milli-degrees. Refuses the power-on value 85 °C
/// ([`Error::PowerOnReset`]) and anything outside [`DS18B20_RANGE`],
/// such as -127 °C from a disconnected sensor ([`Error::OutOfRange`]).
///
/// ```
/// use ledtemp_core::MilliCelsius;
/// let text = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
/// assert_eq!(ledtemp_rpi::parse_w1_slave(text)?, MilliCelsius(23_125));
/// # Ok::<(), ledtemp_rpi::Error>(())
/// ```
pub fn parse_w1_slave(text: &str) -> Result<MilliCelsius, Error> {
    let malformed = |problem| Error::MalformedReading { path: None, problem };
    let mut lines = text.lines();
    let (Some(status), Some(reading), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(malformed("expected two lines (CRC status, then t=<milli-degrees>)"));
    };
    let Some((scratchpad, crc_status)) = status.split_once(" : crc=") else {
        return Err(malformed("first line has no crc= status"));
    };
    let mut bytes = [0u8; 9];
    let mut tokens = scratchpad.split(' ');
    for byte in &mut bytes {
        *byte = tokens
            .next()
            .filter(|t| t.len() == 2)
            .and_then(|t| u8::from_str_radix(t, 16).ok())
            .ok_or_else(|| malformed("first line does not start with 9 hex bytes"))?;
    }
    if tokens.next().is_some() {
        return Err(malformed("first line does not start with 9 hex bytes"));
    }
    // Nine zero bytes pass the CRC (the CRC of zeros is zero): the sensor did not answer.
    if bytes == [0; 9] {
        return Err(malformed("all-zero scratchpad: the sensor did not answer; check its wiring"));
    }
    match crc_status.trim_end().rsplit(' ').next() {
        Some("YES") => {}
        Some("NO") => return Err(Error::CrcMismatch { path: None }),
        _ => return Err(malformed("first line does not end in YES or NO")),
    }
    let Some((_, digits)) = reading.trim_end().rsplit_once("t=") else {
        return Err(malformed("second line has no t=<milli-degrees>"));
    };
    let value = parse_milli_degrees(digits).ok_or_else(|| malformed("t= is not an integer"))?;
    if value == i64::from(DS18B20_POWER_ON_RESET) {
        return Err(Error::PowerOnReset { path: None });
    }
    match i32::try_from(value) {
        Ok(v) if DS18B20_RANGE.contains(&v) => Ok(MilliCelsius(v)),
        _ => Err(Error::OutOfRange { path: None, value }),
    }
}

/// Parses a thermal zone's `temp` file: the temperature in milli-degrees as decimal text, e.g.
/// `48312\n`. Refuses values below absolute zero.
///
/// ```
/// use ledtemp_core::MilliCelsius;
/// assert_eq!(ledtemp_rpi::parse_thermal_zone("48312\n")?, MilliCelsius(48_312));
/// # Ok::<(), ledtemp_rpi::Error>(())
/// ```
pub fn parse_thermal_zone(text: &str) -> Result<MilliCelsius, Error> {
    let value = parse_milli_degrees(text.strip_suffix('\n').unwrap_or(text)).ok_or(
        Error::MalformedReading { path: None, problem: "not a temperature in milli-degrees" },
    )?;
    match i32::try_from(value) {
        Ok(v) if v >= -273_150 => Ok(MilliCelsius(v)),
        _ => Err(Error::OutOfRange { path: None, value }),
    }
}

/// An optional minus sign and 1 to 12 ASCII digits, nothing else; wide enough to report any
/// out-of-range value, narrow enough never to overflow.
fn parse_milli_degrees(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A DS18B20 (or another 1-Wire thermometer of the same family) read through the kernel's w1
/// driver.
///
/// Each [`read`](TempSensor::read) reads the `w1_slave` file, which makes the kernel start a
/// conversion and wait for it: about 750 ms at the default 12-bit resolution. That is why this
/// sensor has no [`AsyncTempSensor`] form: it would stall an executor; run it on its own thread.
#[derive(Debug, Clone)]
pub struct Ds18b20 {
    path: PathBuf,
}

impl Ds18b20 {
    /// The sensor whose `w1_slave` file is at `path`, e.g.
    /// `/sys/bus/w1/devices/28-0316a2796eff/w1_slave`. Nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Ds18b20 { path: path.into() }
    }

    /// The sensor `id` (e.g. `28-0316a2796eff`) under `devices_dir` (normally
    /// [`W1_DEVICES_DIR`]). [`Error::InvalidSensorId`] unless `id` is a plain name, so it can
    /// never point outside `devices_dir`.
    pub fn with_id(devices_dir: impl AsRef<Path>, id: &str) -> Result<Self, Error> {
        Name::new(id).map_err(|_| Error::InvalidSensorId(id.to_owned()))?;
        Ok(Self::new(devices_dir.as_ref().join(id).join("w1_slave")))
    }

    /// The ids of the 1-Wire thermometers under `devices_dir` (normally [`W1_DEVICES_DIR`]),
    /// sorted: every entry whose family code is that of a DS18S20 (`10-`), DS1822 (`22-`),
    /// DS18B20 (`28-`), MAX31850 (`3b-`) or DS28EA00 (`42-`).
    pub fn discover(devices_dir: impl AsRef<Path>) -> Result<Vec<String>, Error> {
        let dir = devices_dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::SensorMissing { path: dir.to_path_buf() },
            _ => Error::Io { path: dir.to_path_buf(), action: "list", source: e },
        })?;
        let mut ids: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|id| ["10-", "22-", "28-", "3b-", "42-"].iter().any(|f| id.starts_with(f)))
            .filter(|id| Name::new(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The `w1_slave` file read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TempSensor for Ds18b20 {
    type Error = Error;

    /// Reads and parses the `w1_slave` file; blocks for the conversion (about 750 ms).
    fn read(&mut self) -> Result<MilliCelsius, Error> {
        parse_w1_slave(&read_sensor_file(&self.path)?).map_err(|e| e.in_file(&self.path))
    }
}

/// A Linux thermal zone, such as the Pi's SoC temperature ([`CPU_THERMAL_ZONE`]).
#[derive(Debug, Clone)]
pub struct ThermalZone {
    path: PathBuf,
}

impl ThermalZone {
    /// The zone whose `temp` file is at `path`, e.g. `/sys/class/thermal/thermal_zone0/temp`.
    /// Nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ThermalZone { path: path.into() }
    }

    /// The SoC's zone, [`CPU_THERMAL_ZONE`].
    pub fn cpu() -> Self {
        Self::new(CPU_THERMAL_ZONE)
    }

    /// The `temp` file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the `temp` file (the kernel answers at once): what both sensor traits
    /// do. Inherent, so `zone.read()` is not ambiguous with both traits in scope.
    pub fn read(&self) -> Result<MilliCelsius, Error> {
        parse_thermal_zone(&read_sensor_file(&self.path)?).map_err(|e| e.in_file(&self.path))
    }
}

impl TempSensor for ThermalZone {
    type Error = Error;

    /// [`ThermalZone::read`].
    fn read(&mut self) -> Result<MilliCelsius, Error> {
        ThermalZone::read(self)
    }
}

impl AsyncTempSensor for ThermalZone {
    type Error = Error;

    /// Reads the `temp` file, blocking for the microseconds the kernel takes. Cancel-safe.
    async fn read(&mut self) -> Result<MilliCelsius, Error> {
        ThermalZone::read(self)
    }
}

/// A TMP102 at the 7-bit `address` (`0x48` with ADD0 to ground) on I2C bus `bus`
/// (`/dev/i2c-<bus>`; bus 1 is on header pins 3 and 5 of every Pi since the B rev 2).
///
/// rppal sends the pointer-register write and the read as two messages rather than one with a
/// repeated start; the TMP102 keeps its pointer between them, so readings are unaffected.
pub fn open_tmp102(bus: u8, address: u8) -> Result<Tmp102<I2c>, Error> {
    if !(0x08..=0x77).contains(&address) {
        return Err(Error::InvalidI2cAddress(address));
    }
    let i2c = I2c::with_bus(bus).map_err(|source| match source {
        rppal::i2c::Error::UnknownModel => Error::NotARaspberryPi,
        source => Error::I2c { bus, source },
    })?;
    Ok(Tmp102::new(i2c, address))
}
