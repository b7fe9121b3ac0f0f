//! A frame as a receiver gets it (the server a device's frame, a node a command on its `cmd`
//! topic): a topic and a payload, both from the network.
//!
//! Input: one byte `n`, then `n` bytes of topic, then the MQTT payload. Every step a receiver
//! takes runs: topic parse, header parse, AES-128-GCM and ChaCha20-Poly1305 open, and, for a frame
//! that opens, the replay window. Nothing may panic; an opened frame must carry the topic's device
//! and kind, and a frame the window accepted once must be refused the second time.
#![no_main]

use ledtemp_core::{
    AesGcmCodec, ChaChaCodec, Codec, FrameHeader, KeyId, ReplayState, ReplayWindow, Topic,
};
use libfuzzer_sys::fuzz_target;

/// The keys of the seed corpus (ledtemp-core/tests/vectors.json), so seeds open and the fuzzer
/// reaches the payload decoder and the window.
const AES_KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const CHACHA_KEY: [u8; 32] = [
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
    0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
];

fuzz_target!(|data: &[u8]| {
    let Some((&topic_len, rest)) = data.split_first() else { return };
    let (topic, payload) = rest.split_at(usize::from(topic_len).min(rest.len()));
    let _ = FrameHeader::parse(payload);
    let Ok(topic) = core::str::from_utf8(topic) else { return };
    let Ok(topic) = Topic::parse(topic) else { return };
    let header_key = FrameHeader::parse(payload).map(|h| h.key_id).unwrap_or(KeyId(1));
    let (Ok(aes), Ok(chacha)) = (
        AesGcmCodec::from_key_bytes(header_key, &AES_KEY),
        ChaChaCodec::from_key_bytes(header_key, &CHACHA_KEY),
    ) else {
        return;
    };
    for codec in [&aes as &dyn Codec, &chacha] {
        let Ok(opened) = codec.open(&topic, payload) else { continue };
        assert_eq!(opened.message.topic(topic.device()), topic, "opened frame of another topic");
        let mut window = ReplayWindow::restore(ReplayState::default());
        if window.accept_frame(&opened).is_ok() {
            assert!(window.accept_frame(&opened).is_err(), "a frame was accepted twice");
        }
    }
});
