//! Property tests: no decoder panics on any input, every altered frame is rejected, and a node
//! never panics on a command and never lets a refused one touch its LEDs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeSet;

use ledtemp_core::{
    AesGcmCodec, ChaChaCodec, Codec, Error, FrameHeader, InsecurePlaintextCodec, Instant, KeyId,
    LedName, MAX_FRAME_LEN, MAX_SEQUENCE, MemorySequenceStore, Message, Name, Node, NodeConfig,
    ReplayState, ReplayWindow, SequenceNumber, Topic,
};
use proptest::prelude::*;
use support::*;

fn codec() -> AesGcmCodec {
    AesGcmCodec::from_key_bytes(KeyId(1), b"0123456789abcdef").unwrap()
}

fn topic_strategy() -> impl Strategy<Value = Topic> {
    (name_strategy(), name_strategy(), 0..4u8).prop_map(|(d, n, kind)| {
        let s = match kind {
            0 => format!("ledtemp/{d}/led/{n}"),
            1 => format!("ledtemp/{d}/temp/{n}"),
            2 => format!("ledtemp/{d}/cmd/{n}"),
            _ => format!("ledtemp/{d}/status"),
        };
        Topic::parse(&s).unwrap()
    })
}

/// What a node is handed as a command: any text as the topic, or one of its own command topics,
/// another device's, an uplink one; and any bytes as the frame, or a command sealed with its key
/// (for its session or another, expired or not, any number), altered or not.
#[derive(Debug, Clone)]
struct CommandInput {
    topic: String,
    frame: Vec<u8>,
    /// Milliseconds after the node connected.
    after_ms: u64,
}

const NODE_LEDS: [&str; 2] = ["red", "green"];

fn command_input_strategy() -> impl Strategy<Value = CommandInput> {
    let topic = prop_oneof![
        "\\PC{0,90}",
        (
            prop::sample::select(vec!["pi", "pi-2"]),
            prop::sample::select(vec!["cmd", "cmd", "cmd", "led", "temp"]),
            prop::sample::select(vec!["red", "green", "blue"]),
        )
            .prop_map(|(d, k, l)| format!("ledtemp/{d}/{k}/{l}")),
    ];
    let sealed = (
        prop::sample::select(vec!["red", "green", "blue"]),
        led_state_strategy(),
        prop_oneof![2 => Just(0u64), 1 => Just(2u64), 1 => 0..=MAX_SEQUENCE],
        prop_oneof![60_000..120_000u32, any::<u32>()],
        prop_oneof![0..8u64, 0..=MAX_SEQUENCE],
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(led, state, session, expires, n, flip)| {
            let message = command(led, state, session, expires);
            let mut out = [0u8; MAX_FRAME_LEN];
            let len = codec()
                .seal(&device("pi"), SequenceNumber::new(n).unwrap(), &message, &mut out)
                .unwrap();
            let mut frame = out[..len].to_vec();
            if let Some(flip) = flip {
                let bit = flip.index(len * 8);
                frame[bit / 8] ^= 1 << (bit % 8);
            }
            (message.topic(&device("pi")).to_string(), frame)
        });
    let frame = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_LEN + 40).prop_map(|f| (None, f)),
        sealed.prop_map(|(t, f)| (Some(t), f)),
    ];
    let after_ms = prop_oneof![0..120_000u64, 0..(1u64 << 33)];
    (topic, frame, prop::bool::weighted(0.8), after_ms).prop_map(
        |(topic, (own, frame), use_own, after_ms)| {
            // A sealed command mostly on its own topic, so that the checks after the cryptography run.
            let topic = match own {
                Some(own) if use_own => own,
                _ => topic,
            };
            CommandInput { topic, frame, after_ms }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `Node::handle_command` on anything: no panic; a refused command changes no LED, drives
    /// nothing and sends nothing; an applied one sets exactly its LED and sends one frame.
    #[test]
    fn handle_command_never_panics_and_a_refused_command_changes_nothing(
        connected in prop::bool::weighted(0.8),
        stopping in prop::bool::weighted(0.2),
        inputs in proptest::collection::vec(command_input_strategy(), 1..12),
    ) {
        let leds: Vec<LedName> = NODE_LEDS.iter().map(|l| LedName::new(l).unwrap()).collect();
        let mut node: Node<_, _> = Node::new(
            device("pi"), &leds, &[], codec(), MemorySequenceStore::new(), NodeConfig::default(),
            Instant::from_millis(0),
        ).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        if connected {
            // Session 0: the sealed commands of the strategy name it now and then.
            node.handle_connect(Instant::from_millis(0), &mut buf).unwrap();
        }
        if stopping {
            node.handle_shutdown(Instant::from_millis(0));
        }
        let mut drain = |node: &mut Node<AesGcmCodec, MemorySequenceStore>| {
            let mut sent = Vec::new();
            while let Some(out) = node.poll_transmit(&mut buf).unwrap() {
                sent.push(out.topic.to_string());
                node.handle_sent();
            }
            sent
        };
        drain(&mut node);
        while node.poll_led().is_some() {}
        for input in inputs {
            let before: Vec<_> = (0..leds.len()).map(|i| node.led_state(i)).collect();
            let stats = node.stats();
            let result = node.handle_command(Instant::from_millis(input.after_ms), &input.topic, &input.frame);
            let after: Vec<_> = (0..leds.len()).map(|i| node.led_state(i)).collect();
            match result {
                Err(_) => {
                    prop_assert_eq!(&after, &before);
                    prop_assert_eq!(node.poll_led(), None);
                    prop_assert!(drain(&mut node).is_empty());
                    prop_assert_eq!(node.stats().commands_refused, stats.commands_refused + 1);
                }
                Ok(applied) => {
                    // Only an authentic command for the current session, before its expiry.
                    prop_assert!(connected && !stopping);
                    let opened = codec().open(&Topic::parse(&input.topic).unwrap(), &input.frame).unwrap();
                    let Message::Command(order) = opened.message else { panic!("not a command") };
                    prop_assert_eq!(order.session.get(), 0);
                    let ahead = order.expires.0.wrapping_sub(Instant::from_millis(input.after_ms).uptime().0);
                    prop_assert!(u128::from(ahead) <= ledtemp_core::MAX_COMMAND_LIFETIME.as_millis());
                    prop_assert_eq!(NODE_LEDS[applied.index], order.led.as_str());
                    prop_assert_eq!(applied.state, order.state);
                    prop_assert_eq!(applied.changed, before[applied.index] != Some(order.state));
                    for (i, state) in after.iter().enumerate() {
                        let expected = if i == applied.index { Some(order.state) } else { before[i] };
                        prop_assert_eq!(*state, expected);
                    }
                    let expected_led = if applied.changed { Some((applied.index, order.state)) } else { None };
                    prop_assert_eq!(node.poll_led(), expected_led);
                    let sent = drain(&mut node);
                    prop_assert_eq!(sent, vec![format!("ledtemp/pi/led/{}", order.led)]);
                    // Never twice.
                    let again = node.handle_command(Instant::from_millis(input.after_ms), &input.topic, &input.frame);
                    prop_assert!(matches!(again, Err(Error::Replayed)));
                    drain(&mut node);
                }
            }
        }
    }

    /// `Codec::open` on a command topic, of frames that are commands, and frames that are not.
    #[test]
    fn open_on_a_command_topic_never_panics(
        dev in name_strategy(),
        led in name_strategy(),
        bytes in proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_LEN + 40),
        state in led_state_strategy(),
    ) {
        let topic = Topic::parse(&format!("ledtemp/{dev}/cmd/{led}")).unwrap();
        prop_assert!(codec().open(&topic, &bytes).is_err());
        let mut frame = vec![1u8, 1, 0, 0, 0, 0, 9];
        frame.extend_from_slice(&bytes);
        prop_assert!(codec().open(&topic, &frame).is_err());
        // The device's own LED change, on the command topic of the same LED: refused.
        let mut out = [0u8; MAX_FRAME_LEN];
        let uplink = support::led(&led, state, 1);
        let len = codec().seal(&device(&dev), SequenceNumber::new(9).unwrap(), &uplink, &mut out).unwrap();
        prop_assert_eq!(codec().open(&topic, &out[..len]), Err(Error::Unauthentic));
    }

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
