//! A ledtemp node on a Raspberry Pi: a button toggles an LED, a sensor reports the temperature
//! every second, and every message goes to the MQTT broker sealed with the device's key.
//!
//! ```text
//! cargo run --example rpi_node -- --config examples/rpi_node.toml             # on a Pi
//! cargo run --example rpi_node -- --config examples/rpi_node.toml --simulate  # anywhere
//! ```
//!
//! `--simulate` replaces the GPIO button with one pressed every few seconds (or, with
//! `--keyboard`, by pressing Enter), the LEDs with log lines, and each sensor with a slow sine
//! plus noise; the key, the sequence-number store and the broker are real. Wiring, 1-Wire and
//! I2C set-up and a systemd unit are in docs/raspberry-pi.md.
//!
//! The node also obeys commands: it subscribes to `ledtemp/<device>/cmd/+` and sets the GPIO LED
//! (with `--simulate`, the logged one) as a sealed command from the server says, then confirms
//! with an LED frame. Refused commands (forged, replayed, for an earlier connection, expired)
//! are logged as warnings and change nothing.
//!
//! SIGTERM (systemd's stop) and Ctrl-C stop the node cleanly: it publishes what is queued and
//! then its sealed offline status, and disconnects with MQTT DISCONNECT, so the broker does not
//! publish the Last Will as well; all within `ledtemp_core::SHUTDOWN_TIMEOUT` (2 s) plus, with a
//! broker that stops answering, one MQTT timeout (5 s). It then exits with status 0.
//!
//! In production the node talks to the broker over TLS with its own broker account (user name =
//! device id), which the broker's ACL confines to `ledtemp/<device id>/#`:
//!
//! ```toml
//! [broker]
//! host = "mqtt.example.net"
//! tls = true                       # port then defaults to 8883 (1883 without TLS)
//! ca_file = "broker-ca.pem"        # PEM of the CA that signed the broker's certificate
//! # server_name = "mqtt.internal"  # when the certificate is not for `host`
//! password_file = "broker.password"  # chmod 600; username defaults to the device id
//! ```
//!
//! The broker side is in docs/broker.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use ledtemp_core::{
    Button, Clock, DeviceId, InsecurePlaintextCodec, Led, LedName, LedState, MilliCelsius, Node,
    NodeConfig, QoS, RunEvent, ScriptedButton, SealedOrPlaintext, SensorName, SimulatedTemperature,
    Stopped, TempSensor,
};
use ledtemp_tokio::{BlockingSensor, BrokerAddress, NodeWorld, StdClock, run_node_until};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "A ledtemp node: button, LED and temperature over sealed MQTT")]
struct Args {
    /// The node's configuration file (TOML; see examples/rpi_node.toml).
    #[arg(long, default_value = "examples/rpi_node.toml")]
    config: PathBuf,
    /// Run without Raspberry Pi hardware: a scripted button, logged LEDs, simulated sensors.
    #[arg(long)]
    simulate: bool,
    /// With --simulate: the button is pressed by pressing Enter instead of on a schedule.
    #[arg(long, requires = "simulate")]
    keyboard: bool,
    /// With --simulate: seconds between scripted presses.
    #[arg(long, default_value_t = 5)]
    press_every: u64,
    /// INSECURE, FOR TEACHING ONLY: publish unencrypted, unauthenticated frames (for a server
    /// run with --insecure-plaintext; docs/attacks.md). The key file still names the device.
    #[arg(long)]
    insecure_plaintext: bool,
}

/// The configuration file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The device's key file (ledtemp-keys format).
    key_file: PathBuf,
    /// The device id; must match the key file's when given.
    device: Option<String>,
    /// Directory for the sequence-number store.
    state_dir: PathBuf,
    /// Temperature period in milliseconds.
    #[serde(default = "default_period_ms")]
    period_ms: u64,
    /// MQTT QoS of temperature frames: 1 (default, queued by the broker while the server is
    /// away) or 0 (no round trip per reading; readings sent while the server is away are lost).
    #[serde(default = "default_temperature_qos")]
    temperature_qos: u8,
    broker: BrokerConfig,
    #[serde(default, rename = "led")]
    leds: Vec<LedConfig>,
    #[serde(default, rename = "sensor")]
    sensors: Vec<SensorConfig>,
}

fn default_period_ms() -> u64 {
    1_000
}

fn default_temperature_qos() -> u8 {
    1
}

/// `[broker]`: where the broker is and how the node proves who it is (docs/broker.md).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct BrokerConfig {
    host: String,
    /// Default 8883 with TLS, 1883 without.
    port: Option<u16>,
    /// The broker account; by convention its user name is the device id, which is also the
    /// default when only a password is given.
    username: Option<String>,
    password: Option<String>,
    /// A file holding the password (one line), readable by its owner only (chmod 600).
    password_file: Option<PathBuf>,
    /// Connect over TLS, checking the broker's certificate against `ca_file`.
    #[serde(default)]
    tls: bool,
    /// PEM file of the CA that signed the broker's certificate (needed with `tls = true`).
    ca_file: Option<PathBuf>,
    /// The name the broker's certificate must be for, when not `host`.
    server_name: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LedConfig {
    name: String,
    pin: u8,
    button_pin: Option<u8>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
enum SensorConfig {
    ThermalZone {
        name: String,
        #[serde(default = "default_thermal_zone")]
        path: PathBuf,
    },
    Ds18b20 {
        name: String,
        id: String,
        #[serde(default = "default_w1_dir")]
        devices_dir: PathBuf,
    },
    Tmp102 {
        name: String,
        #[serde(default = "default_i2c_bus")]
        i2c_bus: u8,
        #[serde(default = "default_tmp102_address")]
        address: u8,
    },
}

fn default_thermal_zone() -> PathBuf {
    PathBuf::from("/sys/class/thermal/thermal_zone0/temp")
}
fn default_w1_dir() -> PathBuf {
    PathBuf::from("/sys/bus/w1/devices")
}
fn default_i2c_bus() -> u8 {
    1
}
fn default_tmp102_address() -> u8 {
    0x48
}

impl SensorConfig {
    fn name(&self) -> &str {
        match self {
            SensorConfig::ThermalZone { name, .. }
            | SensorConfig::Ds18b20 { name, .. }
            | SensorConfig::Tmp102 { name, .. } => name,
        }
    }
}

/// A failure to start, with the message the user sees.
struct StartError(String);

impl<E: std::fmt::Display> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError(e.to_string())
    }
}

/// Hardware chosen at run time: real pins and sensors, or simulated ones.
struct DynButton(Box<dyn FnMut() -> Result<bool, String> + Send>);
impl Button for DynButton {
    type Error = String;
    fn is_pressed(&mut self) -> Result<bool, String> {
        (self.0)()
    }
}

struct DynLed(Box<dyn FnMut(LedState) -> Result<(), String> + Send>);
impl Led for DynLed {
    type Error = String;
    fn set(&mut self, state: LedState) -> Result<(), String> {
        (self.0)(state)
    }
}

struct DynSensor(Box<dyn FnMut() -> Result<MilliCelsius, String> + Send>);
impl TempSensor for DynSensor {
    type Error = String;
    fn read(&mut self) -> Result<MilliCelsius, String> {
        (self.0)()
    }
}

fn main() -> ExitCode {
    // Colour only for a terminal: journald and pipes get plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError(message)) => {
            error!("{message}");
            ExitCode::from(2)
        }
    }
}

fn read_config(path: &Path) -> Result<Config, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| StartError(format!("config {}: {e}", path.display())))
}

async fn run(args: Args) -> Result<(), StartError> {
    let config = read_config(&args.config)?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let key = ledtemp_keys::load_key_file(&base.join(&config.key_file))
        .map_err(|e| StartError(format!("config field `key_file`: {e}")))?;
    let device = match &config.device {
        Some(id) => {
            let id =
                DeviceId::new(id).map_err(|e| StartError(format!("config field `device`: {e}")))?;
            if id != key.device {
                return Err(StartError(format!(
                    "config field `device` is {id} but the key file is for {}",
                    key.device
                )));
            }
            id
        }
        None => key.device.clone(),
    };
    if config.period_ms == 0 {
        return Err(StartError("config field `period_ms` must be at least 1".into()));
    }
    let temperature_qos = match config.temperature_qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => {
            return Err(StartError(format!(
                "config field `temperature_qos` is {other}; it must be 0 or 1"
            )));
        }
    };
    let mut led_names = Vec::new();
    for (i, led) in config.leds.iter().enumerate() {
        led_names.push(
            LedName::new(&led.name)
                .map_err(|e| StartError(format!("config field `led[{i}].name`: {e}")))?,
        );
    }
    let mut sensor_names = Vec::new();
    for (i, sensor) in config.sensors.iter().enumerate() {
        sensor_names.push(
            SensorName::new(sensor.name())
                .map_err(|e| StartError(format!("config field `sensor[{i}].name`: {e}")))?,
        );
    }
    let password = match (&config.broker.password, &config.broker.password_file) {
        (Some(_), Some(_)) => {
            return Err(StartError(
                "config fields `broker.password` and `broker.password_file`: give one, not both"
                    .into(),
            ));
        }
        (Some(password), None) => Some(password.clone()),
        (None, Some(file)) => {
            let file = base.join(file);
            let field = |e: &dyn std::fmt::Display| {
                StartError(format!("config field `broker.password_file`: {e}"))
            };
            ledtemp_keys::check_private(&file).map_err(|e| field(&e))?;
            Some(std::fs::read_to_string(&file).map_err(|e| field(&e))?.trim_end().to_owned())
        }
        (None, None) => None,
    };
    let tls = match (config.broker.tls, &config.broker.ca_file) {
        (true, Some(ca_file)) => {
            let server_name = config.broker.server_name.as_deref().unwrap_or(&config.broker.host);
            let tls = ledtemp_tokio::BrokerTls::from_ca_file(base.join(ca_file), server_name)
                .map_err(|e| match e {
                    ledtemp_tokio::Error::ServerName(_) if config.broker.server_name.is_some() => {
                        StartError(format!("config field `broker.server_name`: {e}"))
                    }
                    ledtemp_tokio::Error::ServerName(_) => {
                        StartError(format!("config field `broker.host`: {e}"))
                    }
                    e => StartError(format!("config field `broker.ca_file`: {e}")),
                })?;
            Some(tls)
        }
        (true, None) => {
            return Err(StartError(
                "config field `broker.ca_file` is required with `broker.tls = true`: the PEM \
                 file of the CA that signed the broker's certificate"
                    .into(),
            ));
        }
        (false, _) if config.broker.ca_file.is_some() || config.broker.server_name.is_some() => {
            return Err(StartError(
                "config fields `broker.ca_file` and `broker.server_name` need `broker.tls = true`"
                    .into(),
            ));
        }
        (false, _) => None,
    };
    let broker_port = config.broker.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 });

    let state_dir = base.join(&config.state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        StartError(format!("config field `state_dir` {}: {e}", state_dir.display()))
    })?;
    let store_path = state_dir.join(format!("{device}.key{}.seq", key.key_id.0));
    let store = ledtemp_rpi::FileSequenceStore::new(&store_path);

    let clock = StdClock::new();
    let (mut buttons, mut leds, sensors) = if args.simulate {
        simulated_hardware(
            &config,
            clock,
            args.keyboard,
            Duration::from_secs(args.press_every.max(1)),
        )
    } else {
        real_hardware(&config)?
    };
    let mut sensors: Vec<BlockingSensor<DynSensor>> =
        sensors.into_iter().map(BlockingSensor::new).collect();

    let node_config = NodeConfig {
        temperature_period: Duration::from_millis(config.period_ms),
        temperature_qos,
        ..NodeConfig::default()
    };
    let mut node: Node<_, _> = Node::new(
        device.clone(),
        &led_names,
        &sensor_names,
        if args.insecure_plaintext {
            warn!("INSECURE PLAINTEXT MODE, for teaching only: frames go out unsealed");
            SealedOrPlaintext::InsecurePlaintext(InsecurePlaintextCodec::new(key.key_id))
        } else {
            SealedOrPlaintext::Sealed(key.codec())
        },
        store,
        node_config,
        { clock }.now(),
    )
    .map_err(|e| StartError(format!("cannot start the node: {e}")))?;

    let mut broker = BrokerAddress::new(&config.broker.host, broker_port, device.as_str());
    broker.credentials = match (&config.broker.username, password) {
        (Some(user), password) => Some((user.clone(), password.unwrap_or_default())),
        // The convention: a device's broker user name is its device id.
        (None, Some(password)) => Some((device.to_string(), password)),
        (None, None) => None,
    };
    broker.tls = tls;
    info!(
        "node {device} ({} LEDs, {} sensors, {}), broker {}:{}{}{}",
        led_names.len(),
        sensor_names.len(),
        key.algorithm,
        broker.host,
        broker.port,
        if broker.tls.is_some() { " over TLS" } else { "" },
        if args.simulate { ", simulated hardware" } else { "" }
    );

    // Before the first connection: from here on SIGTERM and Ctrl-C stop the node cleanly.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| StartError(format!("cannot handle SIGTERM: {e}")))?;
    let stop = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        };
        info!("{name}: stopping");
    };

    let published = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&published);
    let address = broker.to_string();
    let mut on_event = move |event: RunEvent<'_>| match event {
        RunEvent::Connected => info!("connected to the MQTT broker at {address}"),
        RunEvent::Published { .. } => {
            counter.fetch_add(1, Ordering::Relaxed);
            debug!("{event}");
        }
        RunEvent::Stopping { .. } | RunEvent::CommandApplied { .. } => info!("{event}"),
        // A refused command (forged, replayed, stale) is logged and changes nothing.
        // Failures name the broker and say what happened ("cannot reach", "lost the connection").
        event => warn!("{event}"),
    };
    let address = broker.to_string();
    let world =
        NodeWorld::new(broker, clock).buttons(&mut buttons).leds(&mut leds).sensors(&mut sensors);
    let stopped = run_node_until(&mut node, world, stop, &mut on_event)
        .await
        .map_err(|e| StartError(format!("the node stopped: {e}")))?;
    let frames = published.load(Ordering::Relaxed);
    match stopped {
        Stopped::Disconnected => info!(
            "stopped after {frames} frames: offline status published, disconnected from the MQTT \
             broker at {address}"
        ),
        Stopped::Abandoned { unsent } => warn!(
            "stopped after {frames} frames without reaching the MQTT broker at {address}: \
             {unsent} queued messages dropped; the broker publishes the node's Last Will (offline)"
        ),
        other => info!("stopped after {frames} frames: {other:?}"),
    }
    Ok(())
}

type Hardware = (Vec<DynButton>, Vec<DynLed>, Vec<DynSensor>);

fn simulated_hardware(
    config: &Config,
    clock: StdClock,
    keyboard: bool,
    every: Duration,
) -> Hardware {
    let mut buttons = Vec::new();
    let mut leds = Vec::new();
    for (i, led) in config.leds.iter().enumerate() {
        if keyboard && i == 0 {
            buttons.push(keyboard_button(clock));
        } else {
            let button = ScriptedButton::new(clock, every, Duration::from_millis(150));
            buttons.push(DynButton(Box::new(move || Ok(button.is_pressed_at({ clock }.now())))));
        }
        let name = led.name.clone();
        leds.push(DynLed(Box::new(move |state| {
            info!("LED {name} {}", if state.is_on() { "on" } else { "off" });
            Ok(())
        })));
    }
    let sensors = (0..config.sensors.len())
        .map(|i| {
            let mut sensor = SimulatedTemperature::new(clock, 0x5eed + i as u32);
            DynSensor(Box::new(move || sensor.read().map_err(|e| e.to_string())))
        })
        .collect();
    if keyboard {
        info!(
            "press Enter to press the button of LED {}",
            config.leds.first().map_or("-", |l| &l.name)
        );
    }
    (buttons, leds, sensors)
}

/// A button "held" for 150 ms after each Enter on standard input.
fn keyboard_button(clock: StdClock) -> DynButton {
    let pressed_at = Arc::new(AtomicU64::new(u64::MAX));
    let writer = Arc::clone(&pressed_at);
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            writer.store({ clock }.now().as_millis(), Ordering::Relaxed);
            line.clear();
        }
    });
    DynButton(Box::new(move || {
        let at = pressed_at.load(Ordering::Relaxed);
        let now = { clock }.now().as_millis();
        Ok(at != u64::MAX && now >= at && now - at < 150)
    }))
}

fn real_hardware(config: &Config) -> Result<Hardware, StartError> {
    let mut buttons = Vec::new();
    let mut leds = Vec::new();
    for (i, led) in config.leds.iter().enumerate() {
        let mut output = ledtemp_rpi::GpioLed::open(led.pin)
            .map_err(|e| StartError(format!("config field `led[{i}].pin`: {e}")))?;
        leds.push(DynLed(Box::new(move |state| output.set(state).map_err(|e| e.to_string()))));
        match led.button_pin {
            Some(pin) => {
                let mut input = ledtemp_rpi::GpioButton::open(pin)
                    .map_err(|e| StartError(format!("config field `led[{i}].button_pin`: {e}")))?;
                buttons.push(DynButton(Box::new(move || {
                    input.is_pressed().map_err(|e| e.to_string())
                })));
            }
            None => buttons.push(DynButton(Box::new(|| Ok(false)))),
        }
    }
    let mut sensors = Vec::new();
    for (i, sensor) in config.sensors.iter().enumerate() {
        let sensor = match sensor {
            SensorConfig::ThermalZone { path, .. } => {
                let zone = ledtemp_rpi::ThermalZone::new(path);
                DynSensor(Box::new(move || zone.read().map_err(|e| e.to_string())))
            }
            SensorConfig::Ds18b20 { id, devices_dir, .. } => {
                let mut probe = ledtemp_rpi::Ds18b20::new(devices_dir.join(id).join("w1_slave"));
                DynSensor(Box::new(move || probe.read().map_err(|e| e.to_string())))
            }
            SensorConfig::Tmp102 { i2c_bus, address, .. } => {
                let mut chip = ledtemp_rpi::open_tmp102(*i2c_bus, *address)
                    .map_err(|e| StartError(format!("config field `sensor[{i}]`: {e}")))?;
                DynSensor(Box::new(move || {
                    TempSensor::read(&mut chip).map_err(|e| format!("I2C: {e:?}"))
                }))
            }
        };
        sensors.push(sensor);
    }
    Ok((buttons, leds, sensors))
}
