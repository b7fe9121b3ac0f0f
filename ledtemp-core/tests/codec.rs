//! The sealed wire format: round trips, what the associated data binds, and the test vectors.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use ledtemp_core::{
    AesGcmCodec, ChaChaCodec, Codec, Error, FRAME_OVERHEAD, KeyId, LedState, MAX_FRAME_LEN,
    SequenceNumber, Topic,
};
use serde_json::Value;
use support::*;

const KEY: [u8; 16] = *b"0123456789abcdef";

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::new(n).unwrap()
}

fn seal(codec: &impl Codec, dev: &str, n: u64, message: &ledtemp_core::Message) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME_LEN];
    let len = codec.seal(&device(dev), seq(n), message, &mut out).unwrap();
    out[..len].to_vec()
}

#[test]
fn frame_sizes_are_fixed_per_kind_and_small() {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    // Temperature: 4 bytes reading + 4 bytes uptime; any value, same size.
    for milli in [i32::MIN, -40_000, 0, 1, 21_375, i32::MAX] {
        assert_eq!(seal(&codec, "pi", 1, &temperature("cpu", milli, 7)).len(), FRAME_OVERHEAD + 8);
    }
    // LED: on and off are indistinguishable by length.
    let on = seal(&codec, "pi", 2, &led("red", LedState::On, 7));
    let off = seal(&codec, "pi", 3, &led("red", LedState::Off, 7));
    assert_eq!((on.len(), off.len()), (FRAME_OVERHEAD + 5, FRAME_OVERHEAD + 5));
    assert_eq!(seal(&codec, "pi", 4, &offline(9)).len(), FRAME_OVERHEAD + 5);
}

#[test]
fn every_kind_round_trips_with_both_ciphers() {
    let aes = AesGcmCodec::from_key_bytes(KeyId(3), &KEY).unwrap();
    let chacha = ChaChaCodec::from_key_bytes(KeyId(3), &[7u8; 32]).unwrap();
    let messages = [
        temperature("cpu", -12_500, 1),
        led("red", LedState::On, 2),
        online(&[("red", LedState::On), ("green", LedState::Off)], 3),
        offline(4),
    ];
    for codec in [&aes as &dyn Codec, &chacha] {
        for (n, message) in messages.iter().enumerate() {
            let frame = seal(&codec, "pi-7", n as u64, message);
            let topic = message.topic(&device("pi-7"));
            let opened = codec.open(&topic, &frame).unwrap();
            assert_eq!(&opened.message, message);
            assert_eq!(opened.header.sequence, seq(n as u64));
            assert_eq!(opened.header.key_id, KeyId(3));
        }
    }
}

#[test]
fn a_frame_moved_to_another_topic_or_device_fails_to_open() {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    let message = temperature("cpu", 20_000, 5);
    let frame = seal(&codec, "pi-1", 9, &message);
    for other in [
        "ledtemp/pi-2/temp/cpu", // another device (sharing a key, as a misconfiguration)
        "ledtemp/pi-1/temp/board", // another sensor of the same device
        "ledtemp/pi-1/led/cpu",  // another kind
        "ledtemp/pi-1/status",
    ] {
        let topic = Topic::parse(other).unwrap();
        assert_eq!(codec.open(&topic, &frame), Err(Error::Unauthentic), "{other}");
    }
}

#[test]
fn wrong_key_wrong_key_id_and_bad_lengths_are_refused() {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    let message = led("red", LedState::Off, 5);
    let topic = message.topic(&device("pi"));
    let frame = seal(&codec, "pi", 1, &message);

    let other_key = AesGcmCodec::from_key_bytes(KeyId(1), &[0u8; 16]).unwrap();
    assert_eq!(other_key.open(&topic, &frame), Err(Error::Unauthentic));
    let other_id = AesGcmCodec::from_key_bytes(KeyId(2), &KEY).unwrap();
    assert_eq!(other_id.open(&topic, &frame), Err(Error::UnknownKey(1)));
    assert_eq!(codec.open(&topic, &frame[..FRAME_OVERHEAD - 1]), Err(Error::Truncated));
    assert_eq!(codec.open(&topic, &[1u8; MAX_FRAME_LEN + 1]), Err(Error::Oversize));
    let mut appended = frame.clone();
    appended.push(0);
    assert_eq!(codec.open(&topic, &appended), Err(Error::Unauthentic));
    assert!(AesGcmCodec::from_key_bytes(KeyId(1), &[0u8; 15]).is_err());
}

#[test]
fn sealing_into_a_short_buffer_is_an_error_not_a_panic() {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    let message = temperature("cpu", 1, 1);
    for len in 0..FRAME_OVERHEAD + 8 {
        let mut out = vec![0u8; len];
        assert_eq!(
            codec.seal(&device("pi"), seq(1), &message, &mut out),
            Err(Error::BufferTooSmall),
            "{len}"
        );
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// `tests/vectors.json` pins the exact bytes; `docs/protocol.md` explains them. An implementation
/// in another language can check itself against the same file.
#[test]
fn test_vectors_match_exactly() {
    let text = include_str!("vectors.json");
    let vectors: Value = serde_json::from_str(text).unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 5);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let key = unhex(&v["key"]);
        let key_id = KeyId(v["key_id"].as_u64().unwrap() as u8);
        let codec: Box<dyn Codec> = match v["aead"].as_str().unwrap() {
            "AES-128-GCM" => Box::new(AesGcmCodec::from_key_bytes(key_id, &key).unwrap()),
            "ChaCha20-Poly1305" => Box::new(ChaChaCodec::from_key_bytes(key_id, &key).unwrap()),
            other => panic!("{name}: unknown AEAD {other}"),
        };
        let dev = v["device"].as_str().unwrap();
        let message = message_from_json(&v["message"]);
        let topic = message.topic(&device(dev));
        assert_eq!(topic.to_topic_string().as_str(), v["topic"].as_str().unwrap(), "{name}");
        let sequence = seq(v["sequence"].as_u64().unwrap());
        let header = ledtemp_core::FrameHeader { key_id, sequence };
        assert_eq!(header.nonce().to_vec(), unhex(&v["nonce"]), "{name}: nonce");
        let aad = [header.to_bytes().as_slice(), topic.to_topic_string().as_bytes()].concat();
        assert_eq!(aad, unhex(&v["aad"]), "{name}: aad");

        let frame = seal(&codec.as_ref(), dev, sequence.get(), &message);
        assert_eq!(hex::encode(&frame), v["frame"].as_str().unwrap(), "{name}: frame");
        let opened = codec.open(&topic, &unhex(&v["frame"])).unwrap();
        assert_eq!(opened.message, message, "{name}");
    }
}
