//! The sealed wire format: round trips, what the associated data binds, exact decoding, and the
//! test vectors (frames that open, frames that must be refused, replay-window steps, a node's
//! checks of the commands sent to it).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use aead::{AeadInOut, KeyInit};
use ledtemp_core::{
    AesGcmCodec, AppliedCommand, ChaChaCodec, Codec, Direction, Error, FRAME_OVERHEAD, FrameHeader,
    Instant, KeyId, LedName, LedState, MAX_FRAME_LEN, MAX_NAME_LEN, MAX_SEQUENCE, MAX_TOPIC_LEN,
    MemorySequenceStore, Message, Node, NodeConfig, ReplayState, ReplayWindow, SequenceNumber,
    SequenceStore, Topic,
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
    // Command: 1 byte state + 8 bytes session + 4 bytes expiry, whatever the values.
    for (n, (state, session, expires)) in
        [(LedState::On, 0, 0), (LedState::Off, 1, 60_000), (LedState::On, MAX_SEQUENCE, u32::MAX)]
            .into_iter()
            .enumerate()
    {
        let frame = seal(&codec, "pi", n as u64, &command("red", state, session, expires));
        assert_eq!(frame.len(), FRAME_OVERHEAD + 13);
        assert_eq!(frame.len(), 36);
    }
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
        command("red", LedState::On, 3, 60_003),
        command("red", LedState::Off, MAX_SEQUENCE, u32::MAX),
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

/// The direction is bound twice: by the nonce's third byte and by the topic kind in the
/// associated data. A device's frame never opens as a command, nor a command as a device's frame,
/// even with equal sequence numbers and the same key.
#[test]
fn a_frame_never_opens_in_the_other_direction() {
    let codec = AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap();
    let led_change = led("red", LedState::On, 5);
    let order = command("red", LedState::On, 4, 60_000);
    let (up, down) = (seal(&codec, "pi-1", 9, &led_change), seal(&codec, "pi-1", 9, &order));
    let (led_topic, cmd_topic) = (led_change.topic(&device("pi-1")), order.topic(&device("pi-1")));
    assert_eq!(cmd_topic.to_string(), "ledtemp/pi-1/cmd/red");
    assert_eq!(cmd_topic.direction(), Direction::ToDevice);
    assert_eq!(codec.open(&cmd_topic, &up), Err(Error::Unauthentic));
    assert_eq!(codec.open(&led_topic, &down), Err(Error::Unauthentic));
    for other in ["ledtemp/pi-2/cmd/red", "ledtemp/pi-1/cmd/green", "ledtemp/pi-1/status"] {
        let topic = Topic::parse(other).unwrap();
        assert_eq!(codec.open(&topic, &down), Err(Error::Unauthentic), "{other}");
    }
    // The same header, payload and topic, only the nonce's direction byte differs: refused.
    let header = FrameHeader { key_id: KeyId(1), sequence: seq(9) };
    let payload = [&[0x01][..], &4u64.to_le_bytes(), &60_000u32.to_le_bytes()].concat();
    let topic = "ledtemp/pi-1/cmd/red";
    let right = seal_payload("AES-128-GCM", &KEY, header, topic, &payload, None);
    assert_eq!(right, down, "the command payload is state, session (8 bytes LE), expiry");
    let wrong = header.nonce(Direction::FromDevice);
    let sealed = seal_payload("AES-128-GCM", &KEY, header, topic, &payload, Some(wrong));
    assert_eq!(codec.open(&cmd_topic, &sealed), Err(Error::Unauthentic));
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
/// (and the decoding tests below) get authentic frames that the encoder would never write. With
/// `nonce`, sealed with that nonce instead of the one of the topic's direction.
fn seal_payload(
    aead: &str,
    key: &[u8],
    header: FrameHeader,
    topic: &str,
    payload: &[u8],
    nonce: Option<[u8; 12]>,
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
    let nonce = nonce.unwrap_or_else(|| header.nonce(direction));
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
    let frame = seal_payload("AES-128-GCM", &KEY, header, topic, payload, None);
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
    assert_eq!(
        open_payload(
            "ledtemp/pi/cmd/red",
            &[&[0x81, 0x00][..], &[7, 0, 0, 0, 0, 0, 0, 0], &uptime].concat()
        ),
        Ok(command("red", LedState::On, 7, 1000))
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

/// A command's session is a fixed 8-byte little-endian integer, not a varint, and at most
/// `MAX_SEQUENCE`; its expiry a fixed 4-byte one (docs/protocol.md, Commands).
#[test]
fn a_command_payload_is_fixed_width_and_its_session_bounded() {
    let payload = |state: u8, session: u64| {
        [&[state][..], &session.to_le_bytes(), &0xfedc_ba98_u32.to_le_bytes()].concat()
    };
    let topic = "ledtemp/pi/cmd/red";
    assert_eq!(
        open_payload(topic, &payload(1, MAX_SEQUENCE)),
        Ok(command("red", LedState::On, MAX_SEQUENCE, 0xfedc_ba98))
    );
    assert_eq!(
        open_payload(topic, &payload(0, 0)),
        Ok(command("red", LedState::Off, 0, 0xfedc_ba98))
    );
    for (what, bytes) in [
        ("session 2^40", payload(1, MAX_SEQUENCE + 1)),
        ("session u64::MAX", payload(1, u64::MAX)),
        ("state 2", payload(2, 0)),
        ("13 bytes and one more", [payload(1, 0), vec![0]].concat()),
        ("12 bytes", payload(1, 0)[..12].to_vec()),
        ("session as a varint", [&[0x01, 0x07][..], &[0, 0, 0, 0]].concat()),
        ("an LED change", [&[0x01][..], &[0xe8, 0x03, 0, 0]].concat()),
        ("nothing", Vec::new()),
    ] {
        assert_eq!(open_payload(topic, &bytes), Err(Error::MalformedPayload), "{what}");
    }
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
            let nonce = v.get("nonce").map(|n| <[u8; 12]>::try_from(unhex(n)).unwrap());
            if let Some(nonce) = nonce {
                let direction = topic.direction();
                assert_ne!(nonce, header.nonce(direction), "{name}: not the topic's own nonce");
            }
            let sealed = seal_payload(
                v["aead"].as_str().unwrap(),
                &unhex(&v["key"]),
                header,
                v["topic"].as_str().unwrap(),
                &unhex(payload),
                nonce,
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

    // Commands (issue 15): both AEADs, key ids 0 and 255, on and off, the lowest and highest
    // session, an expiry near the uptime's wrap, the longest command topic; every command frame
    // is 36 bytes and its nonce names the direction to the device, every other frame's the
    // direction from it.
    let commands: Vec<&Value> =
        vectors.iter().filter(|v| v["message"]["kind"] == "command").collect();
    for v in &vectors[..] {
        let direction = if v["message"]["kind"] == "command" { "01" } else { "00" };
        assert_eq!(&v["nonce"].as_str().unwrap()[4..6], direction, "{}", v["name"]);
    }
    for v in &commands {
        assert_eq!(len(v, "frame"), 2 * 36, "{}", v["name"]);
    }
    let any = |f: &dyn Fn(&Value) -> bool| commands.iter().any(|v| f(v));
    assert!(any(&|v| v["aead"] == "AES-128-GCM") && any(&|v| v["aead"] == "ChaCha20-Poly1305"));
    assert!(any(&|v| v["key_id"] == 0) && any(&|v| v["key_id"] == 255));
    assert!(any(&|v| v["message"]["state"] == "on") && any(&|v| v["message"]["state"] == "off"));
    assert!(any(&|v| v["message"]["session"] == 0));
    assert!(any(&|v| v["message"]["session"] == MAX_SEQUENCE));
    assert!(any(&|v| v["message"]["expires_ms"] == u32::MAX));
    let longest_command_topic = "ledtemp/".len() + MAX_NAME_LEN + "/cmd/".len() + MAX_NAME_LEN;
    assert!(any(&|v| len(v, "topic") == longest_command_topic));
    let rejected = file["rejected"].as_array().unwrap();
    let on_cmd = |v: &&Value| v["topic"].as_str().unwrap().contains("/cmd/");
    let malformed = rejected.iter().filter(on_cmd).filter(|v| v["error"] == "MalformedPayload");
    assert!(malformed.count() >= 4, "command payloads that must not decode");
    assert!(rejected.iter().filter(on_cmd).any(|v| v.get("nonce").is_some()));

    let checks = file["command_checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c.get("accepted").is_some()));
    assert!(checks.iter().any(|c| c["node"]["session"].is_null()));
    assert!(checks.iter().any(|c| c["node"]["stopping"] == true));
    let by_name = |name: &Value| vectors.iter().find(|v| v["name"] == *name).unwrap();
    // An expiry and an uptime on either side of the wrap, 2^32 ms apart but for a moment.
    for accepted in [true, false] {
        assert!(checks.iter().any(|c| {
            let expires = by_name(&c["vector"])["message"]["expires_ms"].as_u64();
            let uptime = c["node"]["uptime_ms"].as_u64().unwrap();
            c.get("accepted").is_some() == accepted
                && expires.is_some_and(|e| e.abs_diff(uptime) > 1 << 31)
        }));
    }
    let errors: Vec<&str> = checks.iter().filter_map(|c| c["error"].as_str()).collect();
    for reason in [
        "InvalidTopic",
        "UnknownLed",
        "Unauthentic",
        "StaleCommand",
        "CommandExpired",
        "Replayed",
        "TooOld",
    ] {
        assert!(errors.contains(&reason), "no command check refused as {reason}");
    }
}

/// The step of docs/protocol.md's "Commands" list of checks that gives `error`.
fn command_step(error: &Error) -> u64 {
    match error {
        Error::InvalidTopic => 1,
        Error::UnknownLed => 2,
        Error::StaleCommand => 4,
        Error::CommandExpired => 5,
        Error::Replayed | Error::TooOld => 6,
        _ => 3, // what Codec::open refuses
    }
}

/// Seals, publishes and drops everything the node has queued; returns the topics and frames.
fn drain<C: Codec, S: SequenceStore>(node: &mut Node<C, S>) -> Vec<(String, Vec<u8>)> {
    let mut sent = Vec::new();
    let mut buf = [0u8; MAX_FRAME_LEN];
    while let Some(out) = node.poll_transmit(&mut buf).unwrap() {
        sent.push((out.topic.to_string(), out.frame.to_vec()));
        node.handle_sent();
    }
    sent
}

/// Every entry of `command_checks`, through a real `Node`: a node of the entry's device and
/// LEDs holding the vector's key, in the stated session (its sequence store arranged so that
/// its connection's online status takes that number), with the stated window (the server's
/// commands of that session accepted before), stopping or not; then the vector's frame at the
/// stated uptime. An accepted command sets the LED and is confirmed by an LED frame; a refused one
/// changes no LED and sends nothing.
#[test]
fn command_checks_pass_through_a_real_node_as_stated() {
    let file = vector_file();
    let vectors = file["vectors"].as_array().unwrap();
    for check in file["command_checks"].as_array().unwrap() {
        let name = check["name"].as_str().unwrap();
        let v = vectors.iter().find(|v| v["name"] == check["vector"]).unwrap();
        let codec = codec_of(v);
        let n = &check["node"];
        let dev = device(n["device"].as_str().unwrap());
        let leds: Vec<LedName> = n["leds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| LedName::new(l.as_str().unwrap()).unwrap())
            .collect();
        let session = n["session"].as_u64();
        let window = replay_state(&json_window(&n["window"]));
        let mut store = MemorySequenceStore::new();
        if let Some(session) = session.filter(|s| *s > 0) {
            store.persist(session).unwrap();
        }
        let at = Instant::from_millis;
        let mut node: Node<_, _> =
            Node::new(dev.clone(), &leds, &[], codec.as_ref(), store, NodeConfig::default(), at(0))
                .unwrap();
        let mut will = [0u8; MAX_FRAME_LEN];
        if let Some(session) = session {
            node.handle_connect(at(0), &mut will).unwrap();
            let (topic, frame) = drain(&mut node).remove(0);
            let online = codec.open(&Topic::parse(&topic).unwrap(), &frame).unwrap();
            assert_eq!(online.header.sequence, seq(session), "{name}: the node's session");
            // The commands of this session accepted before: the window's numbers, in order.
            for offset in (0..ReplayWindow::WIDTH).rev() {
                if window.seen >> offset & 1 == 1 {
                    let number = window.top - 1 - offset;
                    let earlier = command(leds[0].as_str(), LedState::Off, session, 0);
                    let frame = seal(&codec.as_ref(), dev.as_str(), number, &earlier);
                    let topic = earlier.topic(&dev).to_string();
                    node.handle_command(at(0), &topic, &frame).unwrap();
                }
            }
            drain(&mut node);
        } else {
            assert_eq!(window, ReplayState::default(), "{name}: a window without a session");
        }
        if n["stopping"] == true {
            node.handle_shutdown(at(0));
            drain(&mut node);
        }
        // The LEDs as driven at start (all off) and by the earlier commands.
        while node.poll_led().is_some() {}
        let leds_before: Vec<_> = (0..leds.len()).map(|i| node.led_state(i)).collect();
        let stats = node.stats();

        let topic = check.get("topic").unwrap_or(&v["topic"]).as_str().unwrap();
        let frame = unhex(&v["frame"]);
        let now = at(n["uptime_ms"].as_u64().unwrap());
        let result = node.handle_command(now, topic, &frame);
        match check.get("accepted") {
            Some(after) => {
                let Message::Command(order) = message_from_json(&v["message"]) else {
                    panic!("{name}: not a command vector")
                };
                let index = leds.iter().position(|l| *l == order.led).unwrap();
                let changed = leds_before[index] != Some(order.state);
                let applied = AppliedCommand { index, state: order.state, changed };
                assert_eq!(result, Ok(applied), "{name}");
                assert_eq!(node.led_state(index), Some(order.state), "{name}");
                // The confirmation: the LED's state, on its LED topic.
                let sent = drain(&mut node);
                assert_eq!(sent.len(), 1, "{name}: one confirmation");
                let led_topic = Topic::parse(&sent[0].0).unwrap();
                let opened = codec.open(&led_topic, &sent[0].1).unwrap();
                assert_eq!(
                    opened.message.topic(&dev),
                    Topic::Led { device: dev.clone(), led: order.led }
                );
                assert!(matches!(opened.message, Message::Led(l) if l.state == order.state));
                // The window after: as the file says, and the command is now a copy.
                let sequence = seq(v["sequence"].as_u64().unwrap());
                let expected = ReplayWindow::restore(window).state_after(sequence).unwrap();
                assert_eq!(expected, replay_state(&json_window(after)), "{name}: window after");
                assert_eq!(node.handle_command(now, topic, &frame), Err(Error::Replayed), "{name}");
            }
            None => {
                let error = result.expect_err(name);
                assert_eq!(Some(format!("{error:?}").as_str()), check["error"].as_str(), "{name}");
                assert_eq!(check["step"].as_u64(), Some(command_step(&error)), "{name}: step");
                let leds_after: Vec<_> = (0..leds.len()).map(|i| node.led_state(i)).collect();
                assert_eq!(leds_after, leds_before, "{name}: a refused command changes no LED");
                assert_eq!(node.poll_led(), None, "{name}");
                assert!(drain(&mut node).is_empty(), "{name}: a refused command sends nothing");
                assert_eq!(node.stats().commands_refused, stats.commands_refused + 1, "{name}");
                assert_eq!(node.stats().commands_applied, stats.commands_applied, "{name}");
            }
        }
    }
}

/// A command window of `command_checks` (top and seen) as a `replay` window.
fn json_window(v: &Value) -> Value {
    serde_json::json!({ "top": v["top"], "seen": v["seen"], "expected_will": 0 })
}
