//! See a node's readings sealed, opened by a server, and every forgery and replay refused.
//!
//! `cargo run --example sealed_frames`
//!
//! Runs the `ledtemp-core` wire format end to end in one process: no broker, no hardware.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledtemp_core::{
    AesGcmCodec, Codec, DeviceId, KeyId, LedChange, LedName, LedState, MAX_FRAME_LEN,
    MemorySequenceStore, Message, MilliCelsius, ReplayWindow, SensorName, SequenceCounter,
    TemperatureReading, Topic, Uptime,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's side: parse the topic, open the frame, check the replay window.
fn receive(codec: &AesGcmCodec, window: &mut ReplayWindow, topic: &str, frame: &[u8]) -> String {
    let result = Topic::parse(topic).and_then(|topic| {
        let opened = codec.open(&topic, frame)?;
        window.accept(opened.header.sequence)?;
        Ok(opened)
    });
    match result {
        Ok(opened) => match opened.message {
            Message::Temperature(t) => format!(
                "accepted #{}: {} reads {:.3} °C",
                opened.header.sequence.get(),
                t.sensor,
                t.temperature.to_celsius()
            ),
            Message::Led(l) => {
                format!(
                    "accepted #{}: LED {} is {:?}",
                    opened.header.sequence.get(),
                    l.led,
                    l.state
                )
            }
            Message::Status(s) => format!("accepted #{}: {:?}", opened.header.sequence.get(), s),
            Message::Command(c) => {
                format!(
                    "accepted #{}: set LED {} {:?}",
                    opened.header.sequence.get(),
                    c.led,
                    c.state
                )
            }
        },
        Err(e) => format!("REJECTED: {e}"),
    }
}

fn main() -> Result<(), ledtemp_core::Error> {
    let key = [0x5a; 16]; // a real device reads its own random key from a key file
    let device = DeviceId::new("kitchen-pi")?;
    let node = AesGcmCodec::from_key_bytes(KeyId(1), &key)?;
    let server = AesGcmCodec::from_key_bytes(KeyId(1), &key)?;
    let mut window = ReplayWindow::new();
    let mut store = MemorySequenceStore::new();
    let mut counter = SequenceCounter::resume(&mut store, SequenceCounter::DEFAULT_BLOCK)?;

    println!("device {device}, AES-128-GCM, key id 1\n");
    let reading = Message::Temperature(TemperatureReading {
        sensor: SensorName::new("cpu")?,
        temperature: MilliCelsius(21_375),
        uptime: Uptime(1_000),
    });
    let press = Message::Led(LedChange {
        led: LedName::new("red")?,
        state: LedState::On,
        uptime: Uptime(1_250),
    });

    let mut frames = Vec::new();
    for message in [&reading, &press] {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = node.seal(&device, counter.next(&mut store)?, message, &mut buf)?;
        let topic = message.topic(&device).to_string();
        println!("node publishes  {topic:<28} {len} bytes  {}", hex(&buf[..len]));
        frames.push((topic, buf[..len].to_vec()));
    }
    println!("(an eavesdropper sees only these bytes: no temperature, no LED state)\n");

    for (topic, frame) in &frames {
        println!("server: {}", receive(&server, &mut window, topic, frame));
    }

    let (topic, frame) = &frames[0];
    println!("\nattacks on the temperature frame:");
    let mut flipped = frame.clone();
    flipped[9] ^= 0x01;
    let attacker = AesGcmCodec::from_key_bytes(KeyId(1), &[0u8; 16])?;
    let fake = Message::Temperature(TemperatureReading {
        sensor: SensorName::new("cpu")?,
        temperature: MilliCelsius(95_000),
        uptime: Uptime(2_000),
    });
    let mut forged = [0u8; MAX_FRAME_LEN];
    let len = attacker.seal(&device, counter.next(&mut store)?, &fake, &mut forged)?;
    let attacks: [(&str, &str, &[u8]); 5] = [
        ("one bit flipped", topic, &flipped),
        ("moved to ledtemp/kitchen-pi/temp/outdoor", "ledtemp/kitchen-pi/temp/outdoor", frame),
        ("moved to ledtemp/garage-pi/temp/cpu", "ledtemp/garage-pi/temp/cpu", frame),
        ("replayed as captured", topic, frame),
        ("forged 95 °C with a guessed key", topic, &forged[..len]),
    ];
    for (what, topic, bytes) in attacks {
        println!("  {what:<42} -> {}", receive(&server, &mut window, topic, bytes));
    }

    let mut rebooted = SequenceCounter::resume(&mut store, SequenceCounter::DEFAULT_BLOCK)?;
    println!(
        "\nnode reboots: resumes at sequence {} (the reservation was persisted before use), \
         so no nonce is ever reused",
        rebooted.next(&mut store)?.get()
    );
    Ok(())
}
