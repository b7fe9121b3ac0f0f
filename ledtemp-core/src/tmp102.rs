//! A register-level driver for the TI TMP102 I²C temperature sensor.
//!
//! Only the temperature register is read; the configuration is left at whatever it is (power-on
//! default: continuous conversion at 4 Hz, 12-bit normal mode). Register layout and the
//! conversion table are from the TMP102 datasheet (SBOS397), section 7.5.
//!
//! ```text
//! temperature register (pointer 0x00), two bytes, most significant first:
//!   normal mode:   T11 .. T0 (12-bit two's complement), 0, 0, 0, EM = 0
//!   extended mode: T12 .. T0 (13-bit two's complement), 0, 0,    EM = 1
//! one count = 0.0625 °C in both modes
//! ```

use embedded_hal::i2c::I2c;

use crate::{AsyncTempSensor, MilliCelsius, TempSensor};

/// Pointer register value that selects the temperature register.
const TEMPERATURE_REGISTER: u8 = 0x00;

/// Bit 0 of the temperature register's second byte: set when the sensor runs in 13-bit extended
/// mode (range up to 150 °C).
const EXTENDED_MODE_FLAG: u8 = 0x01;

/// A TMP102 on an I²C bus, blocking ([`TempSensor`], for an `embedded_hal::i2c::I2c` bus) or async
/// ([`AsyncTempSensor`], for an `embedded_hal_async::i2c::I2c` bus).
///
/// Each read is one write-read transaction (pointer register `0x00`, then two bytes), so it works
/// whatever the pointer register was left at. Bus errors are returned as the bus reported them.
///
/// ```
/// use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
/// use ledtemp_core::{MilliCelsius, TempSensor, Tmp102};
///
/// // What the bus will see: pointer 0x00 written, 0x19 0x00 (25 °C) read back.
/// let bus = Mock::new(&[Transaction::write_read(0x48, vec![0x00], vec![0x19, 0x00])]);
/// let mut sensor = Tmp102::new(bus, Tmp102::DEFAULT_ADDRESS);
/// assert_eq!(sensor.read(), Ok(MilliCelsius(25_000)));
/// sensor.destroy().done();
/// ```
#[derive(Debug)]
pub struct Tmp102<I2C> {
    bus: I2C,
    address: u8,
}

impl Tmp102<()> {
    /// The 7-bit address with the ADD0 pin tied to ground. ADD0 to V+, SDA or SCL gives `0x49`,
    /// `0x4A` or `0x4B`.
    pub const DEFAULT_ADDRESS: u8 = 0x48;
}

impl<I2C> Tmp102<I2C> {
    /// A driver for the TMP102 at the 7-bit `address` on `bus`. Does not touch the bus.
    pub fn new(bus: I2C, address: u8) -> Self {
        Tmp102 { bus, address }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.bus
    }
}

impl<I2C: I2c> TempSensor for Tmp102<I2C> {
    type Error = I2C::Error;

    /// One write-read transaction on the bus.
    fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        let mut raw = [0u8; 2];
        self.bus.write_read(self.address, &[TEMPERATURE_REGISTER], &mut raw)?;
        Ok(raw_to_milli_celsius(raw))
    }
}

impl<I2C: embedded_hal_async::i2c::I2c> AsyncTempSensor for Tmp102<I2C> {
    type Error = I2C::Error;

    /// One write-read transaction on the bus. Cancel-safe: a dropped read leaves nothing behind
    /// that the next read depends on (it selects the register again).
    async fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        let mut raw = [0u8; 2];
        self.bus.write_read(self.address, &[TEMPERATURE_REGISTER], &mut raw).await?;
        Ok(raw_to_milli_celsius(raw))
    }
}

/// The temperature in the TMP102's temperature register, as read (most significant byte first).
///
/// The mode is taken from the register itself (the EM flag), so this is right in normal and in
/// extended mode. One count is 62.5 m°C; an odd count falls on a half milli-degree, which is
/// rounded toward zero (0.0625 °C → 62 m°C, −0.0625 °C → −62 m°C, 127.9375 °C → 127 937 m°C), so
/// the result is at most 0.5 m°C off: a thousandth of the sensor's ±0.5 °C accuracy. Every input
/// is valid; no overflow is possible (the range is −256 °C to +256 °C).
pub(crate) fn raw_to_milli_celsius(raw: [u8; 2]) -> MilliCelsius {
    let [_, lsb] = raw;
    let left_justified = i16::from_be_bytes(raw);
    // Arithmetic shifts keep the sign of the two's complement count.
    let counts =
        if lsb & EXTENDED_MODE_FLAG != 0 { left_justified >> 3 } else { left_justified >> 4 };
    // Integer division truncates toward zero: the documented rounding.
    MilliCelsius(i32::from(counts) * 125 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
    use std::vec;

    const ADDRESS: u8 = Tmp102::DEFAULT_ADDRESS;

    /// Register bytes for a 12-bit datasheet code in normal mode.
    fn normal(code: u16) -> [u8; 2] {
        (code << 4).to_be_bytes()
    }

    /// Register bytes for a 13-bit datasheet code in extended mode.
    fn extended(code: u16) -> [u8; 2] {
        ((code << 3) | u16::from(EXTENDED_MODE_FLAG)).to_be_bytes()
    }

    fn celsius(raw: [u8; 2]) -> i32 {
        raw_to_milli_celsius(raw).0
    }

    #[test]
    fn converts_the_datasheet_table_in_normal_mode() {
        // TMP102 datasheet, table "12-Bit Temperature Data Format".
        let table: [(u16, i32); 14] = [
            (0x7FF, 127_937),
            (0x640, 100_000),
            (0x500, 80_000),
            (0x4B0, 75_000),
            (0x320, 50_000),
            (0x190, 25_000),
            (0x008, 500),
            (0x004, 250),
            (0x001, 62),
            (0x000, 0),
            (0xFFF, -62),
            (0xFFC, -250),
            (0xE70, -25_000),
            (0xC90, -55_000),
        ];
        for (code, expected) in table {
            assert_eq!(celsius(normal(code)), expected, "code {code:#05x}");
        }
    }

    #[test]
    fn converts_the_datasheet_table_in_extended_mode() {
        // TMP102 datasheet, table "13-Bit Temperature Data Format".
        let table: [(u16, i32); 12] = [
            (0x0960, 150_000),
            (0x0800, 128_000),
            (0x07FF, 127_937),
            (0x0640, 100_000),
            (0x0500, 80_000),
            (0x04B0, 75_000),
            (0x0320, 50_000),
            (0x0190, 25_000),
            (0x0000, 0),
            (0x1FFF, -62),
            (0x1E70, -25_000),
            (0x1C90, -55_000),
        ];
        for (code, expected) in table {
            assert_eq!(celsius(extended(code)), expected, "code {code:#06x}");
        }
    }

    #[test]
    fn converts_register_bytes_as_read_from_the_bus() {
        assert_eq!(celsius([0x7F, 0xF0]), 127_937);
        assert_eq!(celsius([0x19, 0x00]), 25_000);
        assert_eq!(celsius([0x00, 0x80]), 500);
        assert_eq!(celsius([0xE7, 0x00]), -25_000);
        assert_eq!(celsius([0xFF, 0xF0]), -62);
        assert_eq!(celsius([0x40, 0x01]), 128_000);
        assert_eq!(celsius([0x4B, 0x01]), 150_000);
        // The EM flag alone decides the width: the same high bits read twice as far from zero.
        assert_eq!(celsius([0xE7, 0x01]), -50_000);
    }

    #[test]
    fn every_code_rounds_toward_zero() {
        let check = |raw: [u8; 2], code: i32| {
            let exact = f64::from(code) * 62.5;
            assert_eq!(f64::from(celsius(raw)), exact.trunc(), "raw {raw:02x?}");
        };
        for code in 0..0x1000u16 {
            // Sign-extend the 12-bit code.
            check(normal(code), i32::from(((code << 4) as i16) >> 4));
        }
        for code in 0..0x2000u16 {
            check(extended(code), i32::from(((code << 3) as i16) >> 3));
        }
    }

    #[test]
    fn reads_the_temperature_register() {
        let bus = Mock::new(&[
            Transaction::write_read(ADDRESS, vec![0x00], vec![0x19, 0x00]),
            Transaction::write_read(ADDRESS, vec![0x00], vec![0xE7, 0x00]),
        ]);
        let mut sensor = Tmp102::new(bus, ADDRESS);
        assert_eq!(TempSensor::read(&mut sensor), Ok(MilliCelsius(25_000)));
        assert_eq!(TempSensor::read(&mut sensor), Ok(MilliCelsius(-25_000)));
        sensor.destroy().done();
    }

    #[test]
    fn uses_the_address_it_was_given() {
        let bus = Mock::new(&[Transaction::write_read(0x4B, vec![0x00], vec![0x4B, 0x01])]);
        let mut sensor = Tmp102::new(bus, 0x4B);
        assert_eq!(TempSensor::read(&mut sensor), Ok(MilliCelsius(150_000)));
        sensor.destroy().done();
    }

    #[test]
    fn reports_bus_errors_as_is() {
        let bus = Mock::new(&[
            Transaction::write_read(ADDRESS, vec![0x00], vec![0x00, 0x00])
                .with_error(ErrorKind::Other),
            Transaction::write_read(ADDRESS, vec![0x00], vec![0x19, 0x00]),
        ]);
        let mut sensor = Tmp102::new(bus, ADDRESS);
        assert_eq!(TempSensor::read(&mut sensor), Err(ErrorKind::Other));
        // The next read starts from scratch.
        assert_eq!(TempSensor::read(&mut sensor), Ok(MilliCelsius(25_000)));
        sensor.destroy().done();
    }

    #[test]
    fn reads_the_temperature_register_async() {
        let bus = Mock::new(&[
            Transaction::write_read(ADDRESS, vec![0x00], vec![0x7F, 0xF0]),
            Transaction::write_read(ADDRESS, vec![0x00], vec![0xFF, 0xF0]),
        ]);
        let mut sensor = Tmp102::new(bus, ADDRESS);
        assert_eq!(block_on(AsyncTempSensor::read(&mut sensor)), Ok(MilliCelsius(127_937)));
        assert_eq!(block_on(AsyncTempSensor::read(&mut sensor)), Ok(MilliCelsius(-62)));
        sensor.destroy().done();
    }

    #[test]
    fn reports_bus_errors_as_is_async() {
        let bus = Mock::new(&[Transaction::write_read(ADDRESS, vec![0x00], vec![0x00, 0x00])
            .with_error(ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Address,
            ))]);
        let mut sensor = Tmp102::new(bus, ADDRESS);
        assert_eq!(
            block_on(AsyncTempSensor::read(&mut sensor)),
            Err(ErrorKind::NoAcknowledge(embedded_hal::i2c::NoAcknowledgeSource::Address))
        );
        sensor.destroy().done();
    }
}
