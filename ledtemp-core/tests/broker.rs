//! A node publishing through `MqttPublisher` to a real broker (mosquitto, else rumqttd), read
//! back by a subscriber that opens every frame like the server does.
//!
//! The node runs as on a Raspberry Pi, through `ledtemp_tokio::run_node` (or `run_node_until`,
//! to stop it cleanly). Each test starts its own broker on a free port and bounds every wait.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::pin;
use std::time::Duration;

use ledtemp_core::{
    AesGcmCodec, Backoff, Clock, DeviceId, Instant, KeyId, LedName, LedState, MemorySequenceStore,
    Message, MqttBuffers, MqttConfig, MqttMailbox, MqttPublisher, Node, NodeConfig, NodeStats,
    NodeStatus, ScriptedButton, SensorName, SimulatedTemperature, Stopped, mqtt_link,
};
use ledtemp_test_support::WAIT;
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::mqtt::{Checked, FrameChecker, Subscriber};
use ledtemp_test_support::node::{run_node_until, sleep_until};
use ledtemp_test_support::proxy::Proxy;
use ledtemp_tokio::{BrokerAddress, LoggedLed, NodeWorld, StdClock, TcpConnector};

const KEY: [u8; 16] = [0x5a; 16];
const DEVICE: &str = "bench-node";
const LED: &str = "desk";
const SENSOR: &str = "cpu";

fn codec() -> AesGcmCodec {
    AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap()
}

/// The node under test: one button toggling one LED, one sensor, room for 64 queued messages.
type TestNode = Node<AesGcmCodec, MemorySequenceStore, 64>;

/// A broker of the test's own, a subscriber on it, and a checker holding the node's key.
async fn broker_and_subscriber() -> (TestBroker, Subscriber, FrameChecker<AesGcmCodec>) {
    let broker = TestBroker::start().await;
    eprintln!("broker: {:?} on port {}", broker.kind, broker.port);
    let subscriber = Subscriber::start(broker.port).await;
    (broker, subscriber, FrameChecker::new(codec()))
}

fn node(clock: &mut StdClock) -> TestNode {
    let config = NodeConfig {
        // No periodic LED announcements: every LED frame in these tests is a press.
        announce_period: Duration::from_secs(3600),
        ..NodeConfig::default()
    };
    Node::new(
        DeviceId::new(DEVICE).unwrap(),
        &[LedName::new(LED).unwrap()],
        &[SensorName::new(SENSOR).unwrap()],
        codec(),
        MemorySequenceStore::new(),
        config,
        clock.now(),
    )
    .unwrap()
}

/// Runs `node` (through `MqttPublisher`), pressing its button at `presses`, connecting to
/// `broker` as [`DEVICE`], until `until` finishes (the node never does); then drops the node's
/// connection without DISCONNECT.
async fn run_node<T>(
    node: &mut TestNode,
    clock: StdClock,
    presses: &'static [Instant],
    broker: u16,
    backoff: Backoff,
    until: impl Future<Output = T>,
) -> T {
    let mut buttons = [ScriptedButton::from_presses(clock, presses)];
    let mut leds = [LoggedLed::new(LED)];
    let mut sensors = [SimulatedTemperature::new(clock, 7)];
    let world = NodeWorld::new(BrokerAddress::new("127.0.0.1", broker, DEVICE), clock)
        .buttons(&mut buttons)
        .leds(&mut leds)
        .sensors(&mut sensors)
        .backoff(backoff);
    run_node_until(node, world, until).await
}

/// Takes frames from the subscriber, opened and checked for replay, until `done` says so.
async fn collect(
    subscriber: &mut Subscriber,
    checker: &mut FrameChecker<AesGcmCodec>,
    frames: &mut Vec<Checked>,
    mut done: impl FnMut(&[Checked]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(frames) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = subscriber.next(left).await else {
            panic!("timed out; frames so far: {frames:#?}");
        };
        // Sealed: neither names nor states are in the clear.
        for clear in [DEVICE, LED, SENSOR, "online", "offline"] {
            assert!(
                !received.payload.windows(clear.len()).any(|w| w == clear.as_bytes()),
                "{clear:?} readable in a frame on {}",
                received.topic
            );
        }
        if let Some(checked) = checker.check(&received) {
            frames.push(checked);
        }
    }
}

fn led_changes(frames: &[Checked]) -> Vec<(LedState, u32)> {
    let mut changes: Vec<(LedState, u32)> = Vec::new();
    for frame in frames {
        if let Message::Led(change) = &frame.message {
            assert_eq!(frame.topic, format!("ledtemp/{DEVICE}/led/{LED}"));
            assert_eq!(change.led.as_str(), LED);
            // A change published again after a lost PUBACK has a new sequence number but the
            // same uptime: it is one change.
            if !changes.iter().any(|&(_, uptime)| uptime == change.uptime.0) {
                changes.push((change.state, change.uptime.0));
            }
        }
    }
    changes
}

fn online_statuses(frames: &[Checked]) -> Vec<&Checked> {
    frames
        .iter()
        .filter(|f| {
            matches!(&f.message, Message::Status(s) if matches!(s.status, NodeStatus::Online { .. }))
        })
        .collect()
}

/// LED changes alternate on and off starting with on, each one 20-150 ms after its press
/// (debounce 20 ms, bounce 10 ms, button polled every 5 ms).
fn assert_presses(changes: &[(LedState, u32)], presses: &[Instant]) {
    assert_eq!(changes.len(), presses.len(), "one LED change per press: {changes:?}");
    for (i, ((state, uptime), press)) in changes.iter().zip(presses).enumerate() {
        let expected = if i % 2 == 0 { LedState::On } else { LedState::Off };
        assert_eq!(*state, expected, "change {i}: {changes:?}");
        let after = u64::from(*uptime).checked_sub(press.as_millis());
        assert!(
            after.is_some_and(|ms| (20..=150).contains(&ms)),
            "change {i} at {uptime} ms for the press at {} ms",
            press.as_millis()
        );
    }
}

/// Sequence numbers grow in the order frames were published. A retained frame delivered on
/// (re)subscription is old state, out of that order: rumqttd, which stays up behind its cut
/// proxy, keeps the will it published while the node was cut off and sends it on
/// resubscription.
fn assert_increasing(frames: &[Checked]) {
    let live: Vec<&Checked> = frames.iter().filter(|f| !f.retained).collect();
    for pair in live.windows(2) {
        assert!(pair[0].sequence < pair[1].sequence, "out of order: {pair:#?}");
    }
}

#[tokio::test]
async fn node_publishes_sealed_frames_in_order() {
    static PRESSES: [Instant; 4] = [
        Instant::from_millis(400),
        Instant::from_millis(900),
        Instant::from_millis(1_400),
        Instant::from_millis(1_900),
    ];
    let (broker, mut subscriber, mut checker) = broker_and_subscriber().await;
    let mut frames = Vec::new();
    let mut clock = StdClock::new();
    let mut node = node(&mut clock);

    run_node(&mut node, clock, &PRESSES, broker.port, Backoff::default(), async {
        // Samples at 0, 1, 2 and 3 s; the last press settles by about 2 s.
        collect(&mut subscriber, &mut checker, &mut frames, |frames| {
            let temperatures =
                frames.iter().filter(|f| matches!(f.message, Message::Temperature(_))).count();
            temperatures >= 4 && led_changes(frames).len() >= PRESSES.len()
        })
        .await;
    })
    .await;

    // Online first, with the LED off.
    match &frames[0].message {
        Message::Status(status) => match &status.status {
            NodeStatus::Online { leds } => {
                assert_eq!(leds.len(), 1);
                assert_eq!(leds[0].led.as_str(), LED);
                assert_eq!(leds[0].state, LedState::Off);
            }
            other => panic!("first status is {other:?}"),
        },
        other => panic!("first frame is {other:?}"),
    }
    assert_eq!(frames[0].topic, format!("ledtemp/{DEVICE}/status"));
    assert_eq!(online_statuses(&frames).len(), 1, "one connection, one online status");
    assert_presses(&led_changes(&frames), &PRESSES);
    let temperatures: Vec<u32> = frames
        .iter()
        .filter_map(|f| match &f.message {
            Message::Temperature(t) => {
                assert_eq!(t.sensor.as_str(), SENSOR);
                assert_eq!(f.topic, format!("ledtemp/{DEVICE}/temp/{SENSOR}"));
                Some(t.uptime.0)
            }
            _ => None,
        })
        .collect();
    for pair in temperatures.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((950..=1_100).contains(&gap), "temperatures {temperatures:?}");
    }
    assert_increasing(&frames);
    assert_eq!(checker.duplicates, 0);
    assert_eq!(node.stats().frames_dropped, 0);
}

#[tokio::test]
async fn led_changes_survive_a_broker_restart() {
    // Broker down from 1.2 s until about 2.8 s; three presses fall into that gap.
    static PRESSES: [Instant; 5] = [
        Instant::from_millis(500),
        Instant::from_millis(1_600),
        Instant::from_millis(2_000),
        Instant::from_millis(2_400),
        Instant::from_millis(3_600),
    ];
    let (mut broker, mut subscriber, mut checker) = broker_and_subscriber().await;
    let mut frames = Vec::new();
    let mut clock = StdClock::new();
    let mut node = node(&mut clock);

    // The node's network: a link to the broker that the test can cut.
    let mut network = Proxy::start(broker.port).await;
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    run_node(&mut node, clock, &PRESSES, network.port(), backoff, async {
        collect(&mut subscriber, &mut checker, &mut frames, |f| !led_changes(f).is_empty()).await;
        sleep_until(clock, Instant::from_millis(1_200)).await;
        broker.stop();
        // The node's connection attempts fail while the broker is down.
        sleep_until(clock, Instant::from_millis(2_800)).await;
        // Once the broker is back, the node's network stays down until the subscriber has
        // subscribed again: the frames queued meanwhile are not retained (only the last per
        // topic is), so a subscriber that came back after the node would miss them.
        network.close();
        broker.resume().await;
        subscriber.wait_subscribed(2).await;
        network.open().await;
        collect(&mut subscriber, &mut checker, &mut frames, |f| {
            led_changes(f).len() >= PRESSES.len()
        })
        .await;
    })
    .await;

    let changes = led_changes(&frames);
    assert_presses(&changes, &PRESSES);
    assert!(online_statuses(&frames).len() >= 2, "online again after the restart");
    assert_increasing(&frames);
    let stats: NodeStats = node.stats();
    assert_eq!(stats.frames_dropped, 0, "{stats:?}");
}

#[tokio::test]
async fn broker_publishes_the_sealed_will_when_the_node_vanishes() {
    static NO_PRESSES: [Instant; 0] = [];
    let (broker, mut subscriber, mut checker) = broker_and_subscriber().await;
    let mut frames = Vec::new();
    let mut clock = StdClock::new();
    let mut node = node(&mut clock);

    run_node(&mut node, clock, &NO_PRESSES, broker.port, Backoff::default(), async {
        collect(&mut subscriber, &mut checker, &mut frames, |f| {
            f.iter().any(|f| matches!(f.message, Message::Temperature(_)))
        })
        .await;
    })
    .await;
    // The node's future is gone: its TCP connection closed without DISCONNECT.

    let online = online_statuses(&frames)[0].sequence;
    collect(&mut subscriber, &mut checker, &mut frames, |f| {
        f.iter()
            .any(|f| matches!(&f.message, Message::Status(s) if s.status == NodeStatus::Offline))
    })
    .await;
    let will = frames.last().unwrap();
    assert_eq!(will.topic, format!("ledtemp/{DEVICE}/status"));
    assert_eq!(will.sequence, online + 1, "the will's number directly follows the online status");
}

#[tokio::test]
async fn largest_frames_fit_the_default_buffers() {
    use ledtemp_core::{AsyncPublisher, MAX_FRAME_LEN, MAX_NAME_LEN, MAX_TOPIC_LEN, Outgoing, QoS};
    let broker = TestBroker::start().await;
    let mut subscriber = Subscriber::start(broker.port).await;
    let name = "n".repeat(MAX_NAME_LEN);
    let mut topic = ledtemp_core::TopicString::new();
    topic.push_str(&format!("ledtemp/{name}/temp/{name}")).unwrap();
    assert_eq!(topic.len(), MAX_TOPIC_LEN);
    let frame = [0xa5; MAX_FRAME_LEN];
    let will =
        Outgoing { topic: topic.clone(), frame: &frame, qos: QoS::AtLeastOnce, retain: true };

    let mailbox = MqttMailbox::new();
    let mut buffers = MqttBuffers::new();
    let config = MqttConfig::new("c".repeat(ledtemp_core::MAX_CLIENT_ID_LEN).leak());
    let connector = TcpConnector::new("127.0.0.1", broker.port);
    let link = pin!(mqtt_link(&mailbox, connector, config, &mut buffers));
    let mut publisher = MqttPublisher::new(&mailbox, link);
    tokio::time::timeout(WAIT, publisher.connect(&will)).await.unwrap().unwrap();
    assert!(publisher.is_connected());
    for qos in [QoS::AtLeastOnce, QoS::AtMostOnce, QoS::AtLeastOnce] {
        let outgoing = Outgoing { qos, retain: false, ..will.clone() };
        tokio::time::timeout(WAIT, publisher.publish(&outgoing)).await.unwrap().unwrap();
        tokio::time::timeout(WAIT, publisher.poll()).await.unwrap().unwrap();
        let received = subscriber.next(WAIT).await.expect("the frame arrives");
        assert_eq!(
            (received.topic.as_str(), received.payload.as_slice()),
            (topic.as_str(), &frame[..])
        );
    }
}

fn is_offline(frame: &Checked) -> bool {
    matches!(&frame.message, Message::Status(s) if s.status == NodeStatus::Offline)
}

/// Runs `node` through `ledtemp_tokio::run_node_until` with the broker behind `network`, pressing
/// at `presses`, until `stop`; returns how it stopped.
async fn run_until_stopped(
    node: &mut TestNode,
    clock: StdClock,
    presses: &'static [Instant],
    network: u16,
    stop: impl Future<Output = ()>,
) -> Stopped {
    let mut buttons = [ScriptedButton::from_presses(clock, presses)];
    let mut leds = [LoggedLed::new(LED)];
    let mut sensors = [SimulatedTemperature::new(clock, 7)];
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    let world = NodeWorld::new(BrokerAddress::new("127.0.0.1", network, DEVICE), clock)
        .buttons(&mut buttons)
        .leds(&mut leds)
        .sensors(&mut sensors)
        .backoff(backoff);
    let mut log = |event: ledtemp_core::RunEvent<'_>| {
        eprintln!("{:>6} ms {event}", { clock }.now().as_millis());
    };
    ledtemp_tokio::run_node_until(node, world, stop, &mut log).await.unwrap()
}

#[tokio::test]
async fn a_stopped_node_delivers_what_it_queued_then_its_offline_status_then_disconnects() {
    // The network is cut from 1.0 s to 2.0 s; two presses fall into the gap, and the stop
    // comes at 1.8 s, while the node cannot publish. It reconnects within its 2 s to stop.
    static PRESSES: [Instant; 3] =
        [Instant::from_millis(400), Instant::from_millis(1_200), Instant::from_millis(1_500)];
    let (broker, mut subscriber, mut checker) = broker_and_subscriber().await;
    let mut network = Proxy::start(broker.port).await;
    let mut frames = Vec::new();
    let mut clock = StdClock::new();
    let mut node = node(&mut clock);

    let port = network.port();
    let stop = sleep_until(clock, Instant::from_millis(1_800));
    let (stopped, ()) =
        tokio::join!(run_until_stopped(&mut node, clock, &PRESSES, port, stop), async {
            collect(&mut subscriber, &mut checker, &mut frames, |f| !led_changes(f).is_empty())
                .await;
            sleep_until(clock, Instant::from_millis(1_000)).await;
            network.close();
            sleep_until(clock, Instant::from_millis(2_000)).await;
            network.open().await;
        });
    // Disconnected, not abandoned: the node decided to disconnect before its deadline.
    assert_eq!(stopped, Stopped::Disconnected);

    // Everything until the second offline status (the first is the will the broker published
    // when the network was cut), then nothing more: no will after the clean stop.
    collect(&mut subscriber, &mut checker, &mut frames, |f| {
        f.iter().filter(|f| is_offline(f)).count() >= 2
    })
    .await;
    assert!(subscriber.next(Duration::from_millis(1_500)).await.is_none(), "a will after all");
    let offline = frames.last().unwrap();
    assert!(is_offline(offline), "{frames:#?}");
    let last_online = online_statuses(&frames).last().unwrap().sequence;
    assert_eq!(offline.sequence, last_online + 1, "the reconnection's will, sent by the node");
    // The presses made while cut off went out before it.
    assert_presses(&led_changes(&frames), &PRESSES);
    // In publishing order, but for the offline statuses: the will the broker published when
    // the network was cut, and the node's own, which carries the number reserved at connect.
    let published: Vec<Checked> = frames.iter().filter(|f| !is_offline(f)).cloned().collect();
    assert_increasing(&published);
    assert_eq!(node.stats().queued, 0);
    assert_eq!(node.stats().frames_dropped, 0);
}

#[tokio::test]
async fn a_stopped_node_that_cannot_reach_the_broker_gives_up_at_its_deadline() {
    static PRESSES: [Instant; 1] = [Instant::from_millis(1_200)];
    let (broker, mut subscriber, mut checker) = broker_and_subscriber().await;
    let mut network = Proxy::start(broker.port).await;
    let mut frames = Vec::new();
    let mut clock = StdClock::new();
    let mut node = node(&mut clock);

    let port = network.port();
    let stop = sleep_until(clock, Instant::from_millis(1_500));
    let (stopped, ()) =
        tokio::join!(run_until_stopped(&mut node, clock, &PRESSES, port, stop), async {
            collect(&mut subscriber, &mut checker, &mut frames, |f| !online_statuses(f).is_empty())
                .await;
            sleep_until(clock, Instant::from_millis(1_000)).await;
            network.close();
        });
    // Unsent: the online status of the next connection, the press, and the readings since the cut.
    let Stopped::Abandoned { unsent } = stopped else { panic!("{stopped:?}") };
    assert!(unsent >= 2, "{unsent}");
    // The broker published the connection's will when the network was cut: offline all the same.
    collect(&mut subscriber, &mut checker, &mut frames, |f| f.iter().any(is_offline)).await;
}

#[tokio::test]
async fn the_publisher_disconnects_cleanly_and_the_broker_keeps_the_will_to_itself() {
    use ledtemp_core::{AsyncPublisher, Outgoing, QoS};
    let broker = TestBroker::start().await;
    let mut subscriber = Subscriber::start(broker.port).await;
    let mut topic = ledtemp_core::TopicString::new();
    topic.push_str("ledtemp/n/status").unwrap();
    let will = Outgoing { topic, frame: b"the will", qos: QoS::AtLeastOnce, retain: false };
    let mailbox = MqttMailbox::new();
    let mut buffers = MqttBuffers::new();
    let connector = TcpConnector::new("127.0.0.1", broker.port);
    let link = pin!(mqtt_link(&mailbox, connector, MqttConfig::new("n"), &mut buffers));
    let mut publisher = MqttPublisher::new(&mailbox, link);
    for _ in 0..2 {
        tokio::time::timeout(WAIT, publisher.connect(&will)).await.unwrap().unwrap();
        tokio::time::timeout(WAIT, publisher.disconnect()).await.unwrap().unwrap();
        assert!(!publisher.is_connected());
        assert!(subscriber.next(Duration::from_millis(500)).await.is_none(), "the will came");
    }
    assert!(publisher.disconnect().await.is_err(), "not connected");
}
