//! Seal and open of ledtemp frames against two baselines measured in the same run:
//! the bare AEAD over the same plaintext, and serde_json plus the same AEAD.
//!
//! `cargo bench --bench codec`; results and ratios are recorded in `docs/performance.md`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aead::array::typenum::{U12, U16};
use aead::{AeadCore, AeadInOut, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ledtemp_core::{
    AeadCodec, Codec, DeviceId, KeyId, LedChange, LedName, LedState, MAX_FRAME_LEN, Message,
    MilliCelsius, ReplayWindow, SensorName, SequenceNumber, TemperatureReading, Uptime,
};
use serde::{Deserialize, Serialize};

/// What a JSON design would put on the wire for the same reading.
#[derive(Serialize, Deserialize)]
struct JsonMessage {
    device: String,
    kind: String,
    name: String,
    value: i32,
    uptime_ms: u32,
    seq: u64,
}

fn messages() -> [(&'static str, Message, [u8; 8]); 2] {
    [
        (
            "temperature",
            Message::Temperature(TemperatureReading {
                sensor: SensorName::new("cpu").unwrap(),
                temperature: MilliCelsius(21_375),
                uptime: Uptime(123_456),
            }),
            [0x7f, 0x53, 0, 0, 0x40, 0xe2, 1, 0],
        ),
        (
            "led",
            Message::Led(LedChange {
                led: LedName::new("red").unwrap(),
                state: LedState::On,
                uptime: Uptime(123_456),
            }),
            [1, 0x40, 0xe2, 1, 0, 0, 0, 0],
        ),
    ]
}

fn json_of(device: &DeviceId, message: &Message, seq: u64) -> JsonMessage {
    let (kind, name, value) = match message {
        Message::Temperature(t) => ("temp", t.sensor.as_str(), t.temperature.0),
        Message::Led(l) => ("led", l.led.as_str(), i32::from(l.state.is_on())),
        Message::Status(_) => ("status", "", 0),
        Message::Command(c) => ("cmd", c.led.as_str(), i32::from(c.state.is_on())),
    };
    JsonMessage {
        device: device.to_string(),
        kind: kind.into(),
        name: name.into(),
        value,
        uptime_ms: message.uptime().0,
        seq,
    }
}

fn bench_aead<A>(c: &mut Criterion, aead_name: &str, key: &[u8])
where
    A: AeadInOut + AeadCore<NonceSize = U12, TagSize = U16> + KeyInit,
{
    let device = DeviceId::new("kitchen-pi").unwrap();
    let codec = AeadCodec::<A>::from_key_bytes(KeyId(1), key).unwrap();
    let cipher = A::new_from_slice(key).unwrap();
    let nonce = Nonce::<A>::from([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42]);

    for (kind, message, plain) in messages() {
        // The bare AEAD seals the payload bytes ledtemp would seal (4 + 4 or 1 + 4 bytes).
        let plain_len = if kind == "led" { 5 } else { 8 };
        let topic = message.topic(&device);
        let seq = SequenceNumber::new(42).unwrap();
        let mut frame = [0u8; MAX_FRAME_LEN];
        let frame_len = codec.seal(&device, seq, &message, &mut frame).unwrap();
        let frame = &frame[..frame_len];

        let mut seal = c.benchmark_group(format!("seal/{aead_name}"));
        seal.bench_function(BenchmarkId::new("bare_aead", kind), |b| {
            b.iter(|| {
                let mut buf = [0u8; 8];
                buf[..plain_len].copy_from_slice(&plain[..plain_len]);
                let tag = cipher
                    .encrypt_inout_detached(&nonce, &[], (&mut buf[..plain_len]).into())
                    .unwrap();
                black_box((buf, tag))
            })
        });
        let aad = [&[1u8, 1, 0, 0, 0, 0, 42][..], topic.to_topic_string().as_bytes()].concat();
        seal.bench_function(BenchmarkId::new("bare_aead_with_aad", kind), |b| {
            b.iter(|| {
                let mut buf = [0u8; 8];
                buf[..plain_len].copy_from_slice(&plain[..plain_len]);
                let tag = cipher
                    .encrypt_inout_detached(&nonce, black_box(&aad), (&mut buf[..plain_len]).into())
                    .unwrap();
                black_box((buf, tag))
            })
        });
        seal.bench_function(BenchmarkId::new("ledtemp", kind), |b| {
            // A node reuses one frame buffer.
            let mut out = [0u8; MAX_FRAME_LEN];
            b.iter(|| {
                let len =
                    codec.seal(black_box(&device), seq, black_box(&message), &mut out).unwrap();
                black_box(&out[..len]);
            })
        });
        seal.bench_function(BenchmarkId::new("serde_json_aead", kind), |b| {
            b.iter(|| {
                let mut buf =
                    serde_json::to_vec(&json_of(black_box(&device), &message, 42)).unwrap();
                let tag =
                    cipher.encrypt_inout_detached(&nonce, &[], buf.as_mut_slice().into()).unwrap();
                black_box((buf, tag))
            })
        });
        seal.finish();

        let mut sealed_plain = [0u8; 8];
        sealed_plain[..plain_len].copy_from_slice(&plain[..plain_len]);
        let bare_tag = cipher
            .encrypt_inout_detached(&nonce, &[], (&mut sealed_plain[..plain_len]).into())
            .unwrap();
        let mut sealed_with_aad = [0u8; 8];
        sealed_with_aad[..plain_len].copy_from_slice(&plain[..plain_len]);
        let aad_tag = cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut sealed_with_aad[..plain_len]).into())
            .unwrap();
        let mut json_sealed = serde_json::to_vec(&json_of(&device, &message, 42)).unwrap();
        let json_tag =
            cipher.encrypt_inout_detached(&nonce, &[], json_sealed.as_mut_slice().into()).unwrap();

        let mut open = c.benchmark_group(format!("open/{aead_name}"));
        open.bench_function(BenchmarkId::new("bare_aead", kind), |b| {
            b.iter(|| {
                let mut buf = sealed_plain;
                cipher
                    .decrypt_inout_detached(&nonce, &[], (&mut buf[..plain_len]).into(), &bare_tag)
                    .unwrap();
                black_box(buf)
            })
        });
        open.bench_function(BenchmarkId::new("bare_aead_with_aad", kind), |b| {
            b.iter(|| {
                let mut buf = sealed_with_aad;
                cipher
                    .decrypt_inout_detached(
                        &nonce,
                        black_box(&aad),
                        (&mut buf[..plain_len]).into(),
                        &aad_tag,
                    )
                    .unwrap();
                black_box(buf)
            })
        });
        open.bench_function(BenchmarkId::new("ledtemp_with_replay_check", kind), |b| {
            b.iter(|| {
                let mut window = ReplayWindow::new();
                let opened = codec.open(black_box(&topic), black_box(frame)).unwrap();
                window.accept(opened.header.sequence).unwrap();
                black_box(&opened);
                black_box(&window);
            })
        });
        open.bench_function(BenchmarkId::new("serde_json_aead", kind), |b| {
            b.iter(|| {
                let mut buf = json_sealed.clone();
                cipher
                    .decrypt_inout_detached(&nonce, &[], buf.as_mut_slice().into(), &json_tag)
                    .unwrap();
                let parsed: JsonMessage = serde_json::from_slice(&buf).unwrap();
                black_box(parsed)
            })
        });
        open.finish();
    }
}

fn codec_benches(c: &mut Criterion) {
    bench_aead::<aes_gcm::Aes128Gcm>(c, "aes128gcm", &[0x42; 16]);
    bench_aead::<chacha20poly1305::ChaCha20Poly1305>(c, "chacha20poly1305", &[0x42; 32]);
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
