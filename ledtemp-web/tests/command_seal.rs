//! LED commands between the server's pipeline and a real `ledtemp_core::Node`, without a broker,
//! on SQLite and on PostgreSQL: the pipeline seals a command for the session of the online
//! status it accepted, the node applies it in that session only and before its expiry, the
//! server's sequence numbers are reserved in blocks that survive a restart (and that two servers
//! on one database never share), and the command log reads back what was written and settled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ledtemp_core::{
    AnyCodec, DeviceId, Error as CoreError, Instant, LedName, LedState, MAX_FRAME_LEN,
    MemorySequenceStore, Node, NodeConfig, SensorName,
};
use ledtemp_web::{
    COMMAND_SEQUENCE_BLOCK, CommandOutcome, CommandRecord, CommandRefusal, CommandRequest,
    CommandSettlement, Database, Ingest, SealedCommand, UnixMillis,
};
use support::*;

type TestNode<'a> = Node<AnyCodec, &'a mut MemorySequenceStore, 8>;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn kitchen_node(store: &mut MemorySequenceStore) -> TestNode<'_> {
    Node::new(
        DeviceId::new(KITCHEN).unwrap(),
        &[LedName::new("red").unwrap()],
        &[SensorName::new("cpu").unwrap()],
        kitchen_codec(),
        store,
        NodeConfig::default(),
        at(0),
    )
    .unwrap()
}

/// Connects the node at `now` and hands its queued frames (the online status first) to the
/// pipeline, as the broker would.
fn connect(node: &mut TestNode<'_>, ingest: &mut Ingest, now: u64) {
    let mut will = [0u8; MAX_FRAME_LEN];
    node.handle_connect(at(now), &mut will).unwrap();
    deliver(node, ingest);
}

/// Hands every queued frame of the node to the pipeline.
fn deliver(node: &mut TestNode<'_>, ingest: &mut Ingest) {
    let mut buf = [0u8; MAX_FRAME_LEN];
    while let Some(out) = node.poll_transmit(&mut buf).unwrap() {
        ingest.handle(incoming(&out.topic, out.frame)).unwrap();
        node.handle_sent();
    }
}

fn red(on: bool) -> CommandRequest {
    CommandRequest {
        device: DeviceId::new(KITCHEN).unwrap(),
        led: LedName::new("red").unwrap(),
        state: LedState::from(on),
    }
}

fn apply(node: &mut TestNode<'_>, now: u64, sealed: &SealedCommand) -> Result<LedState, CoreError> {
    node.handle_command(at(now), &sealed.topic, &sealed.frame).map(|applied| applied.state)
}

fn a_sealed_command_acts_on_the_node_in_its_session_only(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let mut sequences = MemorySequenceStore::new();
    let (first_sequence, topic, frame) = {
        let (mut ingest, state) = pipeline_on(database.database());
        // Nothing heard from the device: it has no LED the server knows.
        assert_eq!(ingest.seal_command(&red(true)), Err(CommandRefusal::UnknownLed));
        let mut node = kitchen_node(&mut sequences);
        connect(&mut node, &mut ingest, 0);
        let sealed = ingest.seal_command(&red(true)).unwrap();
        assert_eq!(sealed.topic, "ledtemp/kitchen-pi/cmd/red");
        assert_eq!(sealed.frame.len(), 36, "a command frame is 36 bytes");
        assert_eq!(apply(&mut node, 10, &sealed), Ok(LedState::On));
        // The node confirms with its LED frame; the server shows the confirmed state.
        deliver(&mut node, &mut ingest);
        let shown = device_state(&state, KITCHEN).leds[&led_name("red")].state;
        assert_eq!(shown, LedState::On);
        // A copy in the same session is refused; a new command is numbered after it.
        assert_eq!(apply(&mut node, 20, &sealed), Err(CoreError::Replayed));
        let next = ingest.seal_command(&red(false)).unwrap();
        assert!(next.sequence > sealed.sequence);
        // Its expiry is the node's uptime when it was sent (about 10 ms) plus 5 s.
        assert_eq!(apply(&mut node, 60_000, &next), Err(CoreError::CommandExpired));
        assert_eq!(apply(&mut node, 30, &next), Ok(LedState::Off));

        // The node reconnects: commands of the earlier session are dead, new ones work.
        let old = ingest.seal_command(&red(true)).unwrap();
        connect(&mut node, &mut ingest, 1_000);
        assert_eq!(apply(&mut node, 1_010, &old), Err(CoreError::StaleCommand));
        let fresh = ingest.seal_command(&red(true)).unwrap();
        assert_eq!(apply(&mut node, 1_020, &fresh), Ok(LedState::On));
        // Offline (its Last Will): nothing is sealed.
        let mut will = [0u8; MAX_FRAME_LEN];
        let will = node.handle_connect(at(2_000), &mut will).unwrap();
        let (will_topic, will_frame) = (will.topic.to_string(), will.frame.to_vec());
        deliver(&mut node, &mut ingest);
        ingest.handle(incoming(&will_topic, &will_frame)).unwrap();
        assert_eq!(ingest.seal_command(&red(false)), Err(CommandRefusal::Offline));
        ingest.close().unwrap();
        (sealed.sequence, fresh.topic, fresh.frame)
    };

    // A restart on the same database: the server's counter goes on from the next block, and
    // the node (rebooted too: a new session) refuses everything sealed before.
    let (mut ingest, _state) = pipeline_on(database.database());
    let mut node = kitchen_node(&mut sequences);
    connect(&mut node, &mut ingest, 0);
    assert_eq!(
        node.handle_command(at(5), &topic, &frame).map(|a| a.state),
        Err(CoreError::StaleCommand)
    );
    let after_restart = ingest.seal_command(&red(false)).unwrap();
    assert!(after_restart.sequence >= first_sequence + COMMAND_SEQUENCE_BLOCK);
    assert_eq!(apply(&mut node, 10, &after_restart), Ok(LedState::Off));
}
on_both_backends!(fn a_sealed_command_acts_on_the_node_in_its_session_only);

fn servers_on_one_database_never_share_a_command_sequence_number(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let device = DeviceId::new(KITCHEN).unwrap();
    let key = kitchen_codec();
    let key_id = ledtemp_core::Codec::key_id(&key);
    let mut blocks = Vec::new();
    match database.database() {
        Database::Sqlite(_) => {
            // One server owns a SQLite file: its reservations follow each other across reopens.
            for _ in 0..3 {
                let mut store = database.database().open().unwrap().store;
                blocks.push(store.reserve_command_sequences(&device, key_id, 64).unwrap());
                store.close().unwrap();
            }
        }
        Database::Postgres(_) => {
            // Two writers reserving in turn and at once: every block is their own.
            let mut one = database.database().open().unwrap().store;
            let mut two = database.database().open().unwrap().store;
            let (left, right) = std::thread::scope(|scope| {
                let left = scope.spawn(|| {
                    (0..20)
                        .map(|_| one.reserve_command_sequences(&device, key_id, 64).unwrap())
                        .collect::<Vec<_>>()
                });
                let right = scope.spawn(|| {
                    (0..20)
                        .map(|_| two.reserve_command_sequences(&device, key_id, 64).unwrap())
                        .collect::<Vec<_>>()
                });
                (left.join().unwrap(), right.join().unwrap())
            });
            blocks.extend(left);
            blocks.extend(right);
        }
    }
    blocks.sort_unstable();
    let expected: Vec<u64> = (0..blocks.len() as u64).map(|i| i * 64).collect();
    assert_eq!(blocks, expected, "disjoint, gapless blocks of 64");
}
on_both_backends!(fn servers_on_one_database_never_share_a_command_sequence_number);

fn the_command_log_reads_back_newest_first(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let record = |at, on, outcome, sequence, by: &str| CommandRecord {
        at: UnixMillis(at),
        by: by.to_owned(),
        device: DeviceId::new(KITCHEN).unwrap(),
        led: LedName::new("red").unwrap(),
        state: LedState::from(on),
        outcome,
        sequence,
        confirmed_at: (outcome == CommandOutcome::Confirmed).then_some(UnixMillis(at + 40)),
    };
    let written = [
        record(1_000, true, CommandOutcome::Confirmed, Some(0), "session 0a1b2c3d"),
        record(2_000, false, CommandOutcome::TimedOut, Some(1), "token 99aa88bb"),
        record(3_000, true, CommandOutcome::Offline, None, "open"),
    ];
    // The confirmed one was written when it was sent, and settled later.
    let sent =
        CommandRecord { outcome: CommandOutcome::Sent, confirmed_at: None, ..written[0].clone() };
    let id = ingest.log_command(&sent).unwrap();
    let device = DeviceId::new(KITCHEN).unwrap();
    assert_eq!(state.history.commands(Some(&device), 10).unwrap(), [sent]);
    ingest.settle_command(&CommandSettlement {
        log_id: id,
        outcome: CommandOutcome::Confirmed,
        confirmed_at: written[0].confirmed_at,
    });
    for entry in &written[1..] {
        ingest.log_command(entry).unwrap();
    }
    let read = state.history.commands(Some(&device), 10).unwrap();
    assert_eq!(read, written.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(state.history.commands(None, 1).unwrap(), [written[2].clone()]);
    let garage = DeviceId::new(GARAGE).unwrap();
    assert!(state.history.commands(Some(&garage), 10).unwrap().is_empty());
}
on_both_backends!(fn the_command_log_reads_back_newest_first);
