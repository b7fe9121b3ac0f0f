//! Property tests: no decoder panics on any input, and every altered frame is rejected.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeSet;

use ledtemp_core::{
    AesGcmCodec, ChaChaCodec, Codec, Error, FrameHeader, InsecurePlaintextCodec, KeyId,
    MAX_FRAME_LEN, MAX_SEQUENCE, Name, ReplayState, ReplayWindow, SequenceNumber, Topic,
};
use proptest::prelude::*;
use support::*;

fn codec() -> AesGcmCodec {
    AesGcmCodec::from_key_bytes(KeyId(1), b"0123456789abcdef").unwrap()
}

fn topic_strategy() -> impl Strategy<Value = Topic> {
    (name_strategy(), name_strategy(), 0..3u8).prop_map(|(d, n, kind)| {
        let s = match kind {
            0 => format!("ledtemp/{d}/led/{n}"),
            1 => format!("ledtemp/{d}/temp/{n}"),
            _ => format!("ledtemp/{d}/status"),
        };
        Topic::parse(&s).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn open_never_panics_on_arbitrary_bytes(
        topic in topic_strategy(),
        bytes in proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_LEN + 40),
    ) {
        prop_assert!(codec().open(&topic, &bytes).is_err());
        let _ = FrameHeader::parse(&bytes);
    }

    #[test]
    fn open_never_panics_on_arbitrary_bytes_behind_a_valid_header(
        topic in topic_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_LEN),
    ) {
        let mut frame = vec![1u8, 1, 0, 0, 0, 0, 9];
        frame.extend_from_slice(&body);
        prop_assert!(codec().open(&topic, &frame).is_err());
    }

    #[test]
    fn every_message_round_trips(message in message_strategy(), n in 0..=MAX_SEQUENCE, dev in name_strategy()) {
        let dev = device(&dev);
        for codec in [&codec() as &dyn Codec, &ChaChaCodec::from_key_bytes(KeyId(1), &[3; 32]).unwrap()] {
            let mut out = [0u8; MAX_FRAME_LEN];
            let len = codec.seal(&dev, SequenceNumber::new(n).unwrap(), &message, &mut out).unwrap();
            let opened = codec.open(&message.topic(&dev), &out[..len]).unwrap();
            prop_assert_eq!(&opened.message, &message);
            prop_assert_eq!(opened.header.sequence.get(), n);
        }
    }

    #[test]
    fn every_bit_flip_of_a_valid_frame_is_rejected(message in message_strategy(), bit in any::<prop::sample::Index>()) {
        let dev = device("pi");
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = codec().seal(&dev, SequenceNumber::new(77).unwrap(), &message, &mut out).unwrap();
        let mut frame = out[..len].to_vec();
        let bit = bit.index(len * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(codec().open(&message.topic(&dev), &frame).is_err());
    }

    #[test]
    fn truncated_and_extended_frames_are_rejected(message in message_strategy(), cut in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let dev = device("pi");
        let topic = message.topic(&dev);
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = codec().seal(&dev, SequenceNumber::new(5).unwrap(), &message, &mut out).unwrap();
        prop_assert!(codec().open(&topic, &out[..cut.index(len)]).is_err());
        let mut longer = out[..len].to_vec();
        longer.extend_from_slice(&extra);
        prop_assert!(codec().open(&topic, &longer).is_err());
    }

    /// The insecure teaching codec (feature `insecure-plaintext`) reads untrusted bytes too.
    #[test]
    fn insecure_plaintext_open_never_panics_and_round_trips(
        topic in topic_strategy(),
        bytes in proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_LEN + 40),
        message in message_strategy(),
        n in 0..=MAX_SEQUENCE,
    ) {
        let plain = InsecurePlaintextCodec::new(KeyId(1));
        let _ = plain.open(&topic, &bytes);
        let dev = device("pi");
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = plain.seal(&dev, SequenceNumber::new(n).unwrap(), &message, &mut out).unwrap();
        prop_assert_eq!(plain.open(&message.topic(&dev), &out[..len]).unwrap().message, message);
    }

    #[test]
    fn topic_parse_never_panics_and_round_trips_what_it_accepts(s in "\\PC{0,100}") {
        if let Ok(topic) = Topic::parse(&s) {
            prop_assert_eq!(topic.to_string(), s);
        }
    }

    #[test]
    fn topic_parse_of_near_valid_strings(levels in proptest::collection::vec("[a-z0-9+#$/_-]{0,6}", 0..6)) {
        let s = format!("ledtemp/{}", levels.join("/"));
        if let Ok(topic) = Topic::parse(&s) {
            prop_assert_eq!(topic.to_string(), s);
        }
    }

    #[test]
    fn names_never_hold_topic_or_html_metacharacters(s in "\\PC{0,40}") {
        if let Ok(name) = Name::new(&s) {
            prop_assert!(!name.contains(['/', '+', '#', '$', '<', '>', '&', '"', '\'', '.']));
        }
    }

    /// The window against a model that remembers every accepted number.
    #[test]
    fn replay_window_matches_a_model(
        start in proptest::option::of((any::<u64>(), any::<u64>())),
        steps in proptest::collection::vec(0u64..300, 1..200),
    ) {
        let (mut window, base) = match start {
            Some((top, seen)) => {
                let top = top % (MAX_SEQUENCE / 2);
                (ReplayWindow::restore(ReplayState { top, seen, expected_will: 0 }), top)
            }
            None => (ReplayWindow::new(), 0),
        };
        let mut model_seen = BTreeSet::new();
        let mut model_top = window.state().top;
        for step in steps {
            let n = base + step;
            let result = window.accept(SequenceNumber::new(n).unwrap());
            let in_model = model_seen.contains(&n);
            if n >= model_top {
                prop_assert_eq!(result, Ok(()));
                model_top = n + 1;
                model_seen.insert(n);
            } else if model_top - 1 - n >= ReplayWindow::WIDTH {
                prop_assert_eq!(result, Err(Error::TooOld));
            } else if in_model {
                prop_assert_eq!(result, Err(Error::Replayed));
            } else {
                // Either restored as seen, or never seen.
                prop_assert!(result.is_ok() || result == Err(Error::Replayed));
                if result.is_ok() { model_seen.insert(n); }
            }
        }
    }
}
