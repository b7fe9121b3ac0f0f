//! Sensor parsers and sensors against the fixture files in `tests/fixtures/`: sysfs as the
//! kernel lays it out on a Pi.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use ledtemp_core::{AsyncTempSensor, MilliCelsius, TempSensor, block_on};
use ledtemp_rpi::{
    Ds18b20, Error, ThermalZone, W1_DEVICES_DIR, open_tmp102, parse_thermal_zone, parse_w1_slave,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn w1_devices() -> PathBuf {
    fixtures().join("w1/devices")
}

fn ds18b20(id: &str) -> Ds18b20 {
    Ds18b20::with_id(w1_devices(), id).unwrap()
}

fn read_fixture(relative: &str) -> String {
    std::fs::read_to_string(fixtures().join(relative)).unwrap()
}

#[test]
fn ds18b20_reads_valid_fixtures() {
    assert_eq!(ds18b20("28-0316a2796eff").read().unwrap(), MilliCelsius(23_125));
    assert_eq!(ds18b20("28-0416b3a1c2ff").read().unwrap(), MilliCelsius(-10_062));
    let by_path = Ds18b20::new(w1_devices().join("28-0316a2796eff/w1_slave"));
    assert_eq!(by_path.clone().read().unwrap(), MilliCelsius(23_125));
    assert!(by_path.path().ends_with("28-0316a2796eff/w1_slave"));
}

#[test]
fn ds18b20_rejects_bad_fixtures_naming_the_file() {
    type IsExpected = fn(&Error) -> bool;
    let cases: [(&str, IsExpected); 6] = [
        ("28-badcrc00000a", |e| matches!(e, Error::CrcMismatch { path: Some(_) })),
        ("28-garbage0000b", |e| matches!(e, Error::MalformedReading { path: Some(_), .. })),
        ("28-empty000000c", |e| matches!(e, Error::MalformedReading { path: Some(_), .. })),
        ("28-reset850000d", |e| matches!(e, Error::PowerOnReset { path: Some(_) })),
        ("28-unplugged00e", |e| matches!(e, Error::OutOfRange { value: -127_000, .. })),
        ("28-zeros000000f", |e| matches!(e, Error::MalformedReading { path: Some(_), .. })),
    ];
    for (id, expected) in cases {
        let err = ds18b20(id).read().unwrap_err();
        assert!(expected(&err), "{id}: {err:?}");
        assert!(err.to_string().contains(id), "{id}: {err}");
    }
    assert!(ds18b20("28-unplugged00e").read().unwrap_err().to_string().contains("disconnected"));
    assert!(ds18b20("28-reset850000d").read().unwrap_err().to_string().contains("85 °C"));
}

#[test]
fn ds18b20_of_a_missing_device_directory_is_missing() {
    let err = ds18b20("28-000000000000").read().unwrap_err();
    assert!(
        matches!(&err, Error::SensorMissing { path } if path.ends_with("28-000000000000/w1_slave"))
    );
    assert!(err.to_string().contains("unplugged"), "{err}");
    let err = Ds18b20::discover(fixtures().join("no-such-dir")).unwrap_err();
    assert!(matches!(err, Error::SensorMissing { .. }), "{err:?}");
}

#[test]
fn ds18b20_ids_cannot_leave_the_devices_directory() {
    for bad in ["../../etc", "28-x/../..", "", ".", "..", "28 0316"] {
        assert!(matches!(Ds18b20::with_id(W1_DEVICES_DIR, bad), Err(Error::InvalidSensorId(_))));
    }
    let sensor = Ds18b20::with_id(W1_DEVICES_DIR, "28-0316a2796eff").unwrap();
    assert_eq!(sensor.path(), Path::new("/sys/bus/w1/devices/28-0316a2796eff/w1_slave"));
}

#[test]
fn discover_lists_thermometers_only_sorted() {
    let ids = Ds18b20::discover(w1_devices()).unwrap();
    assert_eq!(ids.first().map(String::as_str), Some("28-0316a2796eff"));
    assert_eq!(ids.len(), 8);
    assert!(!ids.iter().any(|id| id.starts_with("w1_bus_master")));
}

#[test]
fn w1_slave_parser_pins_the_format() {
    let line = |status: &str, t: &str| {
        format!("72 01 4b 46 7f ff 0e 10 57 : crc=57 {status}\n72 01 4b 46 7f ff 0e 10 57 t={t}\n")
    };
    assert_eq!(parse_w1_slave(&line("YES", "23125")).unwrap(), MilliCelsius(23_125));
    assert_eq!(parse_w1_slave(&line("YES", "-55000")).unwrap(), MilliCelsius(-55_000));
    assert_eq!(parse_w1_slave(&line("YES", "125000")).unwrap(), MilliCelsius(125_000));
    assert_eq!(parse_w1_slave(&line("YES", "0")).unwrap(), MilliCelsius(0));
    // Without the final newline, and with CRLF.
    assert!(parse_w1_slave(line("YES", "1").trim_end()).is_ok());
    assert!(parse_w1_slave(&line("YES", "1").replace('\n', "\r\n")).is_ok());
    assert!(matches!(parse_w1_slave(&line("NO", "23125")), Err(Error::CrcMismatch { path: None })));
    assert!(matches!(parse_w1_slave(&line("YES", "85000")), Err(Error::PowerOnReset { .. })));
    for (t, value) in [("125001", 125_001), ("-55001", -55_001), ("999999999999", 999_999_999_999)]
    {
        assert!(
            matches!(parse_w1_slave(&line("YES", t)),
                Err(Error::OutOfRange { value: v, .. }) if v == value),
            "{t}"
        );
    }
    for bad in [
        line("MAYBE", "1"),
        line("YES", ""),
        line("YES", "12.5"),
        line("YES", "+12"),
        line("YES", "--1"),
        line("YES", "9999999999999"),
        line("YES", "1").replace("t=", "T="),
        line("YES", "1").replace("crc=", "crc:"),
        line("YES", "1").replace("72 01", "7201"),
        line("YES", "1").replace("72 01", "zz 01"),
        format!("{}extra\n", line("YES", "1")),
        line("YES", "1").lines().next().unwrap().to_owned(),
        String::new(),
        "\n\n".into(),
    ] {
        assert!(matches!(parse_w1_slave(&bad), Err(Error::MalformedReading { .. })), "{bad:?}");
    }
}

#[test]
fn thermal_zone_reads_fixtures() {
    let zone = |name: &str| ThermalZone::new(fixtures().join("thermal").join(name).join("temp"));
    assert_eq!(zone("thermal_zone0").read().unwrap(), MilliCelsius(48_312));
    assert_eq!(zone("below_zero").read().unwrap(), MilliCelsius(-5_250));
    assert!(matches!(zone("garbage").read(), Err(Error::MalformedReading { path: Some(_), .. })));
    assert!(matches!(zone("empty").read(), Err(Error::MalformedReading { path: Some(_), .. })));
    assert!(matches!(
        zone("below_absolute_zero").read(),
        Err(Error::OutOfRange { value: -300_000, .. })
    ));
    assert!(matches!(zone("thermal_zone9").read(), Err(Error::SensorMissing { .. })));
    // The async form reads the same file.
    let mut cpu = zone("thermal_zone0");
    assert_eq!(block_on(AsyncTempSensor::read(&mut cpu)).unwrap(), MilliCelsius(48_312));
    assert_eq!(ThermalZone::cpu().path(), Path::new("/sys/class/thermal/thermal_zone0/temp"));
}

#[test]
fn thermal_zone_parser_pins_the_format() {
    assert_eq!(parse_thermal_zone(&read_fixture("thermal/thermal_zone0/temp")).unwrap().0, 48_312);
    assert_eq!(parse_thermal_zone("48312").unwrap(), MilliCelsius(48_312));
    assert_eq!(parse_thermal_zone("-273150\n").unwrap(), MilliCelsius(-273_150));
    for bad in ["", "\n", "48.3\n", " 48312\n", "48312\n\n", "0x10\n", "99999999999999999999\n"] {
        assert!(parse_thermal_zone(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(parse_thermal_zone("9999999999"), Err(Error::OutOfRange { .. })));
}

#[test]
fn a_directory_where_a_sensor_file_should_be_is_an_io_error() {
    let err = ThermalZone::new(fixtures().join("thermal/thermal_zone0")).read().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn open_tmp102_checks_the_address_and_never_panics_off_a_pi() {
    assert!(matches!(open_tmp102(1, 0x80), Err(Error::InvalidI2cAddress(0x80))));
    assert!(matches!(open_tmp102(1, 0x00), Err(Error::InvalidI2cAddress(0))));
    if !Path::new("/dev/i2c-250").exists() {
        let err = open_tmp102(250, 0x48).unwrap_err();
        assert!(matches!(err, Error::I2c { bus: 250, .. }), "{err:?}");
        assert!(err.to_string().contains("/dev/i2c-250"), "{err}");
    }
}
