//! The sealed wire format: round trips, what the associated data binds, exact decoding, and the
//! test vectors (frames that open, frames that must be refused, replay-window steps).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use aead::{AeadInOut, KeyInit};
use ledtemp_core::{
    AesGcmCodec, ChaChaCodec, Codec, Direction, Error, FRAME_OVERHEAD, FrameHeader, KeyId,
    LedState, MAX_FRAME_LEN, MAX_TOPIC_LEN, Message, ReplayState, ReplayWindow, SequenceNumber,
    Topic,
};
use serde_json::Value;
use support::*;

const KEY: [u8; 16] = *b"0123456789abcdef";

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::new(n).unwrap()
}

fn seal(codec: &impl Codec, dev: &str, n: u64, message: &Message) -> Vec<u8> {
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

/// Seals `payload` as it is, bypassing the message encoder: how the vectors with a `payload`
/// (and the decoding tests below) get authentic frames that the encoder would never write.
fn seal_payload(
    aead: &str,
    key: &[u8],
    header: FrameHeader,
    topic: &str,
    payload: &[u8],
) -> Vec<u8> {
    fn seal_with<A: AeadInOut + KeyInit>(
        key: &[u8],
        nonce: [u8; 12],
        aad: &[u8],
        payload: &mut [u8],
    ) -> Vec<u8> {
        let cipher = A::new_from_slice(key).unwrap();
        let nonce = aead::Nonce::<A>::try_from(nonce.as_slice()).unwrap();
        cipher.encrypt_inout_detached(&nonce, aad, payload.into()).unwrap().to_vec()
    }
    let aad = [header.to_bytes().as_slice(), topic.as_bytes()].concat();
    let direction = Topic::parse(topic).map_or(Direction::FromDevice, |t| t.direction());
    let nonce = header.nonce(direction);
    let mut ciphertext = payload.to_vec();
    let tag = match aead {
        "AES-128-GCM" => seal_with::<aes_gcm::Aes128Gcm>(key, nonce, &aad, &mut ciphertext),
        "ChaCha20-Poly1305" => {
            seal_with::<chacha20poly1305::ChaCha20Poly1305>(key, nonce, &aad, &mut ciphertext)
        }
        other => panic!("unknown AEAD {other}"),
    };
    [header.to_bytes().as_slice(), &ciphertext, &tag].concat()
}

/// Opens `payload`, sealed as it is on `topic`, with the real codec.
fn open_payload(topic: &str, payload: &[u8]) -> Result<Message, Error> {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    let header = FrameHeader { key_id: KeyId(1), sequence: seq(5) };
    let frame = seal_payload("AES-128-GCM", &KEY, header, topic, payload);
    codec.open(&Topic::parse(topic).unwrap(), &frame).map(|opened| opened.message)
}

/// Pinned behaviour (docs/protocol.md, Payloads): the decoder takes postcard's varints (enum
/// variants, the LED count, name lengths) in any length up to postcard's limit, not only in the
/// minimal form the encoder writes. Only a holder of the key can seal such a payload.
#[test]
fn the_decoder_accepts_non_minimal_varints() {
    let uptime = [0xe8, 0x03, 0, 0]; // 1000 ms
    let red_on = online(&[("red", LedState::On)], 1000);
    for (what, payload) in [
        ("minimal", [&uptime[..], &[0x00, 0x01, 0x03], b"red", &[0x01]].concat()),
        (
            "LED count 1 as 81 00",
            [&uptime[..], &[0x00, 0x81, 0x00, 0x03], b"red", &[0x01]].concat(),
        ),
        (
            "name length 3 as 83 00",
            [&uptime[..], &[0x00, 0x01, 0x83, 0x00], b"red", &[0x01]].concat(),
        ),
        (
            "online variant as 80 00",
            [&uptime[..], &[0x80, 0x00, 0x01, 0x03], b"red", &[0x01]].concat(),
        ),
        (
            "LED state on as 81 80 00",
            [&uptime[..], &[0x00, 0x01, 0x03], b"red", &[0x81, 0x80, 0x00]].concat(),
        ),
    ] {
        assert_eq!(open_payload("ledtemp/pi/status", &payload), Ok(red_on.clone()), "{what}");
    }
    assert_eq!(
        open_payload("ledtemp/pi/status", &[&uptime[..], &[0x81, 0x00]].concat()),
        Ok(offline(1000))
    );
    assert_eq!(
        open_payload("ledtemp/pi/led/red", &[&[0x81, 0x00][..], &uptime].concat()),
        Ok(led("red", LedState::On, 1000))
    );
    // Longer than a u32's five varint bytes: refused.
    assert_eq!(
        open_payload(
            "ledtemp/pi/status",
            &[&uptime[..], &[0x81, 0x80, 0x80, 0x80, 0x80, 0x00]].concat()
        ),
        Err(Error::MalformedPayload)
    );
}

/// Pinned behaviour (docs/protocol.md, Payloads): an online status may name an LED twice; the
/// decoder keeps both entries, in order. The node does not send one unless it was given the same
/// LED name twice.
#[test]
fn an_online_status_may_repeat_an_led_name() {
    let payload =
        [&[0, 0, 0, 0, 0x00, 0x02, 0x03][..], b"red", &[0x01, 0x03], b"red", &[0x00]].concat();
    assert_eq!(
        open_payload("ledtemp/pi/status", &payload),
        Ok(online(&[("red", LedState::On), ("red", LedState::Off)], 0))
    );
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn vector_file() -> Value {
    serde_json::from_str(include_str!("vectors.json")).unwrap()
}

/// The receiver's codec of a vector: its `aead`, `key` and `key_id`.
fn codec_of(v: &Value) -> Box<dyn Codec> {
    let key = unhex(&v["key"]);
    let key_id = KeyId(u8::try_from(v["key_id"].as_u64().unwrap()).unwrap());
    match v["aead"].as_str().unwrap() {
        "AES-128-GCM" => Box::new(AesGcmCodec::from_key_bytes(key_id, &key).unwrap()),
        "ChaCha20-Poly1305" => Box::new(ChaChaCodec::from_key_bytes(key_id, &key).unwrap()),
        other => panic!("unknown AEAD {other}"),
    }
}

/// `tests/vectors.json` pins the exact bytes; `docs/protocol.md` explains them. An implementation
/// in another language can check itself against the same file.
#[test]
fn test_vectors_match_exactly() {
    let file = vector_file();
    for v in file["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let codec = codec_of(v);
        let key_id = codec.key_id();
        let dev = v["device"].as_str().unwrap();
        let message = message_from_json(&v["message"]);
        let topic = message.topic(&device(dev));
        assert_eq!(topic.to_topic_string().as_str(), v["topic"].as_str().unwrap(), "{name}");
        let sequence = seq(v["sequence"].as_u64().unwrap());
        let header = FrameHeader { key_id, sequence };
        let nonce = header.nonce(message.direction());
        assert_eq!(nonce.to_vec(), unhex(&v["nonce"]), "{name}: nonce");
        let aad = [header.to_bytes().as_slice(), topic.to_topic_string().as_bytes()].concat();
        assert_eq!(aad, unhex(&v["aad"]), "{name}: aad");

        let frame = seal(&codec.as_ref(), dev, sequence.get(), &message);
        assert_eq!(hex::encode(&frame), v["frame"].as_str().unwrap(), "{name}: frame");
        let opened = codec.open(&topic, &unhex(&v["frame"])).unwrap();
        assert_eq!((opened.header, opened.message), (header, message), "{name}");
    }
}

/// Every frame of `rejected` is refused with exactly the stated `ledtemp_core::Error`; those
/// given with a payload are re-sealed here to show that they are authentic.
#[test]
fn rejected_vectors_fail_for_the_stated_reason() {
    let file = vector_file();
    for v in file["rejected"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let codec = codec_of(v);
        let topic = Topic::parse(v["topic"].as_str().unwrap()).unwrap();
        let frame = unhex(&v["frame"]);
        if let Some(payload) = v.get("payload") {
            let header = FrameHeader {
                key_id: codec.key_id(),
                sequence: seq(v["sequence"].as_u64().unwrap()),
            };
            let sealed = seal_payload(
                v["aead"].as_str().unwrap(),
                &unhex(&v["key"]),
                header,
                v["topic"].as_str().unwrap(),
                &unhex(payload),
            );
            assert_eq!(sealed, frame, "{name}: the payload seals to the frame");
        }
        let error = codec.open(&topic, &frame).err();
        assert_eq!(error.map(|e| format!("{e:?}")).as_deref(), v["error"].as_str(), "{name}");
        // The step of docs/protocol.md's "Receiving, in this order" that gives this error.
        let step = match error {
            Some(Error::Oversize | Error::Truncated | Error::UnsupportedVersion(_)) => 2,
            Some(Error::UnknownKey(_)) => 3,
            Some(Error::Unauthentic) => 4,
            Some(Error::MalformedPayload) => 5,
            _ => 0,
        };
        assert_eq!(v["step"].as_u64(), Some(step), "{name}: step");
    }
}

fn replay_state(v: &Value) -> ReplayState {
    ReplayState {
        top: v["top"].as_u64().unwrap(),
        seen: u64::from_str_radix(v["seen"].as_str().unwrap(), 16).unwrap(),
        expected_will: v["expected_will"].as_u64().unwrap(),
    }
}

/// Every step of `replay`: the named frame, checked against the `before` window, gives the
/// `after` window or the stated error (and leaves the window as it was).
#[test]
fn replay_vectors_move_the_window_as_stated() {
    let file = vector_file();
    let vectors = file["vectors"].as_array().unwrap();
    for step in file["replay"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        let frame = step["vector"].as_str().unwrap();
        let v = vectors.iter().find(|v| v["name"] == frame).unwrap();
        let topic = Topic::parse(v["topic"].as_str().unwrap()).unwrap();
        let opened = codec_of(v).open(&topic, &unhex(&v["frame"])).unwrap();
        let before = replay_state(&step["before"]);
        let mut window = ReplayWindow::restore(before);
        let result = window.accept_frame(&opened);
        match step.get("error") {
            Some(error) => {
                let got = result.err().map(|e| format!("{e:?}"));
                assert_eq!(got.as_deref(), error.as_str(), "{name}");
                assert_eq!(window.state(), before, "{name}: a refused frame changes nothing");
            }
            None => {
                assert_eq!(result, Ok(()), "{name}");
                assert_eq!(window.state(), replay_state(&step["after"]), "{name}");
            }
        }
    }
}

/// The file keeps the cases issue 12 asked for: the limits, key id 0, ChaCha status frames, a
/// will pair in the order a node makes it, and every reason a frame is refused.
#[test]
fn the_vectors_cover_the_limits_and_every_reason() {
    let file = vector_file();
    let vectors = file["vectors"].as_array().unwrap();
    let by_name = |name: &str| vectors.iter().find(|v| v["name"] == name).unwrap();
    let len = |v: &Value, field: &str| v[field].as_str().unwrap().len();
    assert!(vectors.iter().any(|v| len(v, "frame") == 2 * MAX_FRAME_LEN));
    assert!(vectors.iter().any(|v| len(v, "topic") == MAX_TOPIC_LEN));
    assert!(vectors.iter().any(|v| v["key_id"] == 0));
    for leds in [0, ledtemp_core::MAX_LEDS] {
        assert!(
            vectors
                .iter()
                .any(|v| v["message"]["leds"].as_array().is_some_and(|l| l.len() == leds))
        );
    }
    for kind in ["online", "offline"] {
        assert!(
            vectors
                .iter()
                .any(|v| v["aead"] == "ChaCha20-Poly1305" && v["message"]["kind"] == kind)
        );
    }
    // A will pair as the node makes it (Node::handle_connect): the online status takes the first
    // of two reserved numbers, the will the second; both carry the connection's uptime.
    for (online_name, will_name) in
        [("online-aes", "offline-aes"), ("online-chacha", "offline-chacha")]
    {
        let (online, will) = (by_name(online_name), by_name(will_name));
        assert_eq!(will["sequence"].as_u64(), online["sequence"].as_u64().map(|n| n + 1));
        assert_eq!(will["message"]["uptime_ms"], online["message"]["uptime_ms"]);
    }
    let errors: Vec<&str> = file["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .chain(file["replay"].as_array().unwrap())
        .filter_map(|v| v["error"].as_str())
        .collect();
    for reason in [
        "Oversize",
        "Truncated",
        "UnsupportedVersion(2)",
        "UnknownKey(2)",
        "Unauthentic",
        "MalformedPayload",
        "Replayed",
        "TooOld",
    ] {
        assert!(errors.contains(&reason), "no vector refused as {reason}");
    }
}
