//! The ingest pipeline without a broker, on a real SQLite file and on PostgreSQL (each test that
//! stores something runs on both): each rejection counted under its reason and changing nothing;
//! the Last Will rule; replay windows surviving a restart; no panic on any bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ledtemp_core::{Algorithm, AnyCodec, DeviceId, KeyId, MAX_FRAME_LEN, MilliCelsius};
use ledtemp_web::{DeviceState, Ingest, RejectReason, StatsSnapshot, UnixMillis};
use proptest::prelude::*;
use support::*;

fn rejected(ingest: &mut Ingest, topic: &str, payload: &[u8]) -> RejectReason {
    let error = ingest.handle(incoming(topic, payload)).unwrap_err();
    error.reject_reason().unwrap_or_else(|| panic!("not a rejection: {error}"))
}

fn devices_json(state: &ledtemp_web::AppState) -> Vec<(DeviceId, DeviceState)> {
    state.live.devices()
}

fn every_bad_frame_is_counted_under_its_reason_and_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let kitchen = kitchen_codec();
    let (topic, frame) = seal(&kitchen, KITCHEN, 5, &temperature("cpu", 21_375));
    ingest.handle(incoming(&topic, &frame)).unwrap();
    let before = devices_json(&state);
    let accepted = state.live.stats.snapshot().accepted;

    // Wrong key: a key the server does not hold for this device.
    let forger = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &[0x99; 16]).unwrap();
    let (t, f) = seal(&forger, KITCHEN, 6, &temperature("cpu", 99_000));
    assert_eq!(rejected(&mut ingest, &t, &f), RejectReason::BadTag);
    // A flipped bit.
    let mut flipped = frame.clone();
    flipped[9] ^= 1;
    assert_eq!(rejected(&mut ingest, &topic, &flipped), RejectReason::BadTag);
    // Replayed.
    assert_eq!(rejected(&mut ingest, &topic, &frame), RejectReason::Replay);
    // Moved to another sensor, and to another device.
    assert_eq!(rejected(&mut ingest, "ledtemp/kitchen-pi/temp/gpu", &frame), RejectReason::BadTag);
    assert_eq!(rejected(&mut ingest, "ledtemp/garage/temp/cpu", &frame), RejectReason::BadTag);
    // Unknown device, and a known device with an unknown key id.
    let (t, f) = seal(&kitchen, "stranger", 1, &temperature("cpu", 1));
    assert_eq!(rejected(&mut ingest, &t, &f), RejectReason::UnknownDevice);
    let other_key = AnyCodec::new(Algorithm::Aes128Gcm, KeyId(9), &KITCHEN_KEY).unwrap();
    let (t, f) = seal(&other_key, KITCHEN, 7, &temperature("cpu", 1));
    assert_eq!(rejected(&mut ingest, &t, &f), RejectReason::UnknownDevice);
    // Oversize, before any cryptography.
    assert_eq!(rejected(&mut ingest, &topic, &[1u8; MAX_FRAME_LEN + 1]), RejectReason::Oversize);
    // Malformed: topics outside the scheme, non-UTF-8 topics, truncated frames, other versions.
    for bad_topic in ["ledtemp/kitchen-pi/temp", "other/kitchen-pi/status", "ledtemp/a b/status"] {
        assert_eq!(rejected(&mut ingest, bad_topic, &frame), RejectReason::Malformed);
    }
    let error = ingest
        .handle(ledtemp_web::IncomingFrame {
            topic: vec![0xff, 0xfe],
            payload: frame.clone(),
            received: UnixMillis(0),
            retained: false,
            duplicate: false,
        })
        .unwrap_err();
    assert_eq!(error.reject_reason(), Some(RejectReason::Malformed));
    assert_eq!(rejected(&mut ingest, &topic, &frame[..20]), RejectReason::Malformed);
    let mut v2 = frame.clone();
    v2[0] = 2;
    assert_eq!(rejected(&mut ingest, &topic, &v2), RejectReason::Malformed);
    assert_eq!(rejected(&mut ingest, &topic, b"garbage"), RejectReason::Malformed);

    let stats = state.live.stats.snapshot();
    assert_eq!(stats.accepted, accepted);
    assert_eq!(
        (stats.rejected.bad_tag, stats.rejected.replay, stats.rejected.unknown_device),
        (4, 1, 2)
    );
    assert_eq!((stats.rejected.oversize, stats.rejected.malformed), (1, 7));
    assert_eq!(devices_json(&state), before, "a rejected frame changed the device state");
    let history = history(&state, KITCHEN);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].temperature, MilliCelsius(21_375));
}
on_both_backends!(fn every_bad_frame_is_counted_under_its_reason_and_changes_nothing);

fn a_frame_accepted_before_a_restart_is_rejected_after_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    let kitchen = kitchen_codec();
    let first = seal(&kitchen, KITCHEN, 100, &temperature("cpu", 20_000));
    let late = seal(&kitchen, KITCHEN, 90, &temperature("cpu", 19_000));
    let online = seal(&kitchen, KITCHEN, 101, &online(&[("red", true)]));
    let will = seal(&kitchen, KITCHEN, 102, &offline());
    {
        let (mut ingest, _) = pipeline_on(database);
        ingest.handle(incoming(&first.0, &first.1)).unwrap();
        ingest.handle(incoming(&online.0, &online.1)).unwrap();
    }
    let (mut ingest, state) = pipeline_on(database);
    // Restored: history, LED state, and the window (incl. the expected will).
    let kitchen_state = device_state(&state, KITCHEN);
    assert_eq!(kitchen_state.temperatures[&sensor("cpu")].temperature, MilliCelsius(20_000));
    assert!(kitchen_state.leds[&led_name("red")].state.is_on());
    assert!(kitchen_state.online);
    assert_eq!(rejected(&mut ingest, &first.0, &first.1), RejectReason::Replay);
    assert_eq!(rejected(&mut ingest, &online.0, &online.1), RejectReason::Replay);
    // Inside the window and never seen: still accepted once.
    ingest.handle(incoming(&late.0, &late.1)).unwrap();
    assert_eq!(rejected(&mut ingest, &late.0, &late.1), RejectReason::Replay);
    // The will of the connection before the restart is accepted once, then marks it offline.
    ingest.handle(incoming(&will.0, &will.1)).unwrap();
    assert_eq!(rejected(&mut ingest, &will.0, &will.1), RejectReason::StaleWill);
    assert!(!device_state(&state, KITCHEN).online);
    drop(ingest);
    let (mut ingest, _) = pipeline_on(database);
    assert_eq!(rejected(&mut ingest, &will.0, &will.1), RejectReason::StaleWill);
}
on_both_backends!(fn a_frame_accepted_before_a_restart_is_rejected_after_it);

fn a_stale_will_is_rejected_and_a_batch_checks_frames_against_each_other(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let garage = garage_codec();
    let online_1 = seal(&garage, GARAGE, 10, &online(&[]));
    let will_1 = seal(&garage, GARAGE, 11, &offline());
    let online_2 = seal(&garage, GARAGE, 20, &online(&[]));
    let will_2 = seal(&garage, GARAGE, 21, &offline());
    let results = ingest.handle_batch(vec![
        incoming(&online_1.0, &online_1.1),
        incoming(&online_2.0, &online_2.1),
        incoming(&online_2.0, &online_2.1),
        incoming(&will_1.0, &will_1.1),
        incoming(&will_2.0, &will_2.1),
    ]);
    let reasons: Vec<Option<RejectReason>> =
        results.iter().map(|r| r.as_ref().err().and_then(|e| e.reject_reason())).collect();
    assert_eq!(
        reasons,
        [None, None, Some(RejectReason::Replay), Some(RejectReason::StaleWill), None]
    );
    let StatsSnapshot { accepted, .. } = state.live.stats.snapshot();
    assert_eq!(accepted, 3);
}
on_both_backends!(fn a_stale_will_is_rejected_and_a_batch_checks_frames_against_each_other);

fn retention_prunes_old_readings_but_keeps_state_and_windows(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let (mut ingest, state) = pipeline_on(database.database());
    let kitchen = kitchen_codec();
    let (topic, frame) = seal(&kitchen, KITCHEN, 1, &temperature("cpu", 1_000));
    let mut old = incoming(&topic, &frame);
    old.received = UnixMillis(1_000);
    ingest.handle(old).unwrap();
    let (topic2, frame2) = seal(&kitchen, KITCHEN, 2, &temperature("cpu", 2_000));
    ingest.handle(incoming(&topic2, &frame2)).unwrap();
    assert_eq!(ingest.prune(UnixMillis(now_ms() - 60_000)).unwrap(), 1);
    assert_eq!(history(&state, KITCHEN).len(), 1);
    assert_eq!(rejected(&mut ingest, &topic, &frame), RejectReason::Replay);
}
on_both_backends!(fn retention_prunes_old_readings_but_keeps_state_and_windows);

/// Whatever arrives, the pipeline answers with a result, never a panic, and a rejection changes
/// no state. One pipeline and database for all cases, so that earlier cases' windows are there.
#[test]
fn ingest_never_panics_on_arbitrary_topic_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, state) = pipeline(dir.path());
    let ingest = std::cell::RefCell::new(ingest);
    let topic = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..100),
        "ledtemp/(kitchen-pi|garage|x)/(temp/cpu|led/red|status|temp)".prop_map(String::into_bytes),
    ];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        // A plausible header (version 1, key id 1) in front of random bytes.
        proptest::collection::vec(any::<u8>(), 23..40).prop_map(|mut v| {
            v[0] = 1;
            v[1] = 1;
            v
        }),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    });
    runner
        .run(&(topic, payload), |(topic, payload)| {
            let frame = ledtemp_web::IncomingFrame {
                topic,
                payload,
                received: UnixMillis(0),
                retained: false,
                duplicate: false,
            };
            let result = ingest.borrow_mut().handle(frame);
            prop_assert!(result.is_err(), "random bytes were accepted");
            prop_assert_eq!(state.live.stats.snapshot().accepted, 0);
            prop_assert!(state.live.devices().iter().all(|(_, d)| d.last_seen.is_none()));
            Ok(())
        })
        .unwrap();
}

/// An offline rule on the kitchen with a log notifier.
fn kitchen_offline_alerts() -> ledtemp_web::PipelineOptions {
    use ledtemp_web::alerts::{
        AlertsConfig, Condition, DeliveryPolicy, NotifierKind, NotifierSettings, Rule,
    };
    let rule = Rule::new(
        "kitchen-offline",
        Condition::Offline { device: KITCHEN.into(), after: std::time::Duration::from_secs(60) },
    );
    let alerts = AlertsConfig {
        rules: vec![rule],
        notifiers: vec![NotifierSettings {
            name: "log".into(),
            kind: NotifierKind::Log,
            policy: DeliveryPolicy::default(),
        }],
        routes: [("kitchen-offline".to_owned(), vec![0])].into(),
    };
    ledtemp_web::PipelineOptions { alerts, ..ledtemp_web::PipelineOptions::default() }
}

/// The alert engine's state is committed with the frames that changed it: a restart neither
/// forgets a firing alert nor fires it again, and a failed commit (a real database error) takes
/// the frames and the alert decisions back together.
fn alert_state_is_committed_with_the_frames_that_changed_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let kitchen = kitchen_codec();
    let first_online = seal(&kitchen, KITCHEN, 1, &online(&[]));
    let will = seal(&kitchen, KITCHEN, 2, &offline());
    let online_frame = seal(&kitchen, KITCHEN, 3, &online(&[]));
    {
        let ledtemp_web::Pipeline { mut ingest, state, .. } =
            open_pipeline_on(database.database(), kitchen_offline_alerts());
        ingest.handle(incoming(&first_online.0, &first_online.1)).unwrap();
        // The sealed Last Will fires the alert at once, in the will's own transaction.
        ingest.handle(incoming(&will.0, &will.1)).unwrap();
        let alerts = state.alerts.as_ref().unwrap().snapshot();
        assert_eq!((alerts.active.len(), alerts.counters.fired), (1, 1));
    }
    // Restarted: still firing, not fired again by the silence that follows.
    let ledtemp_web::Pipeline { mut ingest, state, .. } =
        open_pipeline_on(database.database(), kitchen_offline_alerts());
    let board = state.alerts.clone().unwrap();
    ingest.tick(UnixMillis(now_ms() + 3_600_000));
    let alerts = board.snapshot();
    assert_eq!((alerts.active.len(), alerts.counters.fired), (1, 1), "{alerts:?}");

    // The database refuses the next commit: the frame is dropped and the alert it would have
    // resolved stays firing.
    database.execute("ALTER TABLE alert_engine RENAME TO alert_engine_away");
    let error = ingest.handle(incoming(&online_frame.0, &online_frame.1)).unwrap_err();
    assert!(error.reject_reason().is_none(), "a database failure, not a rejection: {error}");
    assert_eq!(state.live.stats.store_errors(), 1);
    assert_eq!(board.snapshot().active.len(), 1, "the failed batch changed the alerts");
    let kitchen_state = state.live.device(&device(KITCHEN)).unwrap();
    assert!(!kitchen_state.online, "the failed batch changed the device");

    // Back: the same frame (never stored, so not a replay) resolves it, once.
    database.execute("ALTER TABLE alert_engine_away RENAME TO alert_engine");
    ingest.handle(incoming(&online_frame.0, &online_frame.1)).unwrap();
    let alerts = board.snapshot();
    assert_eq!((alerts.active.len(), alerts.counters.resolved), (0, 1));
    assert_eq!(alerts.recent.len(), 1);
    drop(ingest);
    let ledtemp_web::Pipeline { state, .. } =
        open_pipeline_on(database.database(), kitchen_offline_alerts());
    let alerts = state.alerts.unwrap().snapshot();
    assert_eq!((alerts.active.len(), alerts.counters.resolved), (0, 1), "{alerts:?}");
}
on_both_backends!(fn alert_state_is_committed_with_the_frames_that_changed_it);

/// A stored alert state that does not parse is logged and replaced, not a start-up failure.
fn unreadable_alert_state_starts_afresh(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    drop(open_pipeline_on(database.database(), kitchen_offline_alerts()));
    database.execute("INSERT INTO alert_engine (id, state) VALUES (1, '{not json')");
    let ledtemp_web::Pipeline { state, .. } =
        open_pipeline_on(database.database(), kitchen_offline_alerts());
    assert!(state.alerts.unwrap().snapshot().active.is_empty());
}
on_both_backends!(fn unreadable_alert_state_starts_afresh);
