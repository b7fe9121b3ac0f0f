//! The PostgreSQL store against this machine's PostgreSQL, each test on a database of its own:
//! the same snapshot and history as SQLite for the same frames, a failed commit that writes
//! nothing, a newer schema refused, wrong URLs as clear errors, two servers sharing one database
//! never storing a frame twice, a killed connection reopened, and a server that waits for a
//! database it cannot reach yet. Skipped (with the reason) where PostgreSQL is not running,
//! unless `LEDTEMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use ledtemp_core::{AnyCodec, Message, MilliCelsius, ReplayState, ReplayWindow, SequenceNumber};
use ledtemp_test_support::postgres::{admin_url, with_database};
use ledtemp_test_support::proxy::Proxy;
use ledtemp_web::{
    AcceptedFrame, Commit, CommitOutcome, Database, DeviceState, DeviceUpdate, Error, HistoryQuery,
    HistoryStore, IncomingFrame, Ingest, POSTGRES_SCHEMA_VERSION, PostgresConfig, PostgresStore,
    Reading, RejectReason, Server, Snapshot, SqliteStore, Store, TemperaturePoint, UnixMillis,
};
use support::*;

/// The frames of a small, varied history: readings of two sensors (two at the same time), LED
/// changes, an online status and its will, for both devices; received at fixed times.
fn varied_frames() -> Vec<IncomingFrame> {
    let (kitchen, garage) = (kitchen_codec(), garage_codec());
    let mut frames = Vec::new();
    let mut at = |frame: (String, Vec<u8>), ms: i64| {
        let mut incoming = incoming(&frame.0, &frame.1);
        incoming.received = UnixMillis(1_700_000_000_000 + ms);
        frames.push(incoming);
    };
    at(seal(&kitchen, KITCHEN, 1, &online(&[("red", false), ("green", true)])), 0);
    for n in 0..20u64 {
        let sensor = if n % 3 == 0 { "gpu" } else { "cpu" };
        let milli = 20_000 + i32::try_from(n).unwrap() * 125;
        // Readings 4 and 5 arrive in the same millisecond.
        let ms = if n == 5 { 4_000 } else { i64::try_from(n).unwrap() * 1_000 };
        at(seal(&kitchen, KITCHEN, 10 + n, &temperature(sensor, milli)), ms);
    }
    at(seal(&kitchen, KITCHEN, 40, &led("red", true)), 21_000);
    at(seal(&garage, GARAGE, 7, &online(&[])), 500);
    at(seal(&garage, GARAGE, 9, &temperature("attic", -4_500)), 600);
    // The will, sealed at connection with the number after the online status.
    at(seal(&garage, GARAGE, 8, &offline()), 700);
    at(seal(&kitchen, KITCHEN, 2, &led("green", false)), 22_000);
    frames
}

/// `message` sealed by `device` with `codec`, as received now.
fn sealed(codec: &AnyCodec, device: &str, sequence: u64, message: &Message) -> IncomingFrame {
    let (topic, frame) = seal(codec, device, sequence, message);
    incoming(&topic, &frame)
}

fn feed(ingest: &mut Ingest, frames: &[IncomingFrame]) {
    // In two batches, as the worker commits what arrived together.
    let (first, second) = frames.split_at(frames.len() / 2);
    for batch in [first, second] {
        for result in ingest.handle_batch(batch.to_vec()) {
            result.unwrap();
        }
    }
}

fn assert_same(a: &Snapshot, b: &Snapshot) {
    assert_eq!(a.windows, b.windows);
    assert_eq!(a.devices, b.devices);
    assert_eq!(a.notifier_caps, b.notifier_caps);
}

fn history_query(
    device: &str,
    sensor: Option<&str>,
    since: i64,
    until: i64,
    limit: usize,
) -> HistoryQuery {
    HistoryQuery {
        device: support::device(device),
        sensor: sensor.map(support::sensor),
        since: UnixMillis(1_700_000_000_000 + since),
        until: UnixMillis(1_700_000_000_000 + until),
        limit,
    }
}

/// The same frames through a SQLite pipeline and a PostgreSQL one: the same snapshot at the
/// next start (windows, devices, LEDs, latest readings), the same history for every question.
#[test]
fn the_same_frames_load_and_query_as_on_sqlite() {
    let Some(postgres) = TestDatabase::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Database::Sqlite(dir.path().join("ledtemp.db"));
    let frames = varied_frames();
    let (mut on_sqlite, sqlite_state) = pipeline_on(&sqlite);
    let (mut on_postgres, postgres_state) = pipeline_on(&postgres.database());
    feed(&mut on_sqlite, &frames);
    feed(&mut on_postgres, &frames);

    for query in [
        history_query(KITCHEN, None, 0, 60_000, 100),
        history_query(KITCHEN, None, 0, 60_000, 5),
        history_query(KITCHEN, Some("gpu"), 0, 60_000, 100),
        history_query(KITCHEN, Some("cpu"), 2_000, 9_000, 3),
        history_query(KITCHEN, None, 4_000, 4_000, 1),
        history_query(KITCHEN, Some("nothing"), 0, 60_000, 100),
        history_query(GARAGE, None, 0, 60_000, 100),
        history_query(GARAGE, None, 601, 60_000, 100),
    ] {
        let expected = sqlite_state.history.temperatures(&query).unwrap();
        let got = postgres_state.history.temperatures(&query).unwrap();
        assert_eq!(got, expected, "{query:?}");
    }
    assert_eq!(history(&postgres_state, KITCHEN).len(), 20);

    drop((on_sqlite, on_postgres));
    let from_sqlite = SqliteStore::open(&dir.path().join("ledtemp.db")).unwrap().load().unwrap();
    let Database::Postgres(config) = postgres.database() else { unreachable!() };
    let from_postgres = PostgresStore::open(&config).unwrap().load().unwrap();
    assert_same(&from_postgres, &from_sqlite);
    let kitchen = &from_postgres.devices[&device(KITCHEN)];
    assert_eq!(kitchen.temperatures[&sensor("cpu")].temperature, MilliCelsius(20_000 + 19 * 125));
    assert!(!kitchen.leds[&led_name("green")].state.is_on());
    assert!(!from_postgres.devices[&device(GARAGE)].online);
    // The stored columns: one row per reading, sequence numbers as sent.
    let sequences = postgres.query_i64(
        "SELECT sequence FROM temperatures WHERE device = 'kitchen-pi' ORDER BY sequence",
    );
    assert_eq!(sequences, (10..30).collect::<Vec<i64>>());
    let plan = postgres.query_i64(
        "SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'temperatures_by_device_time'",
    );
    assert_eq!(plan, [1]);
}

fn config_of(database: &Database) -> PostgresConfig {
    match database {
        Database::Postgres(config) => config.clone(),
        Database::Sqlite(path) => panic!("not PostgreSQL: {}", path.display()),
    }
}

/// A frame of kitchen-pi's, accepted after `window`, with what the store needs.
fn accepted(sequence: u64, milli: i32, window: ReplayState) -> AcceptedFrame {
    let at = UnixMillis(1_700_000_000_000 + i64::try_from(sequence).unwrap());
    let point = TemperaturePoint { sensor: sensor("cpu"), temperature: MilliCelsius(milli), at };
    AcceptedFrame {
        update: DeviceUpdate {
            device: device(KITCHEN),
            at,
            observation: ledtemp_web::Observation::Reading(Reading::Temperature(point)),
            retained: false,
        },
        key_id: ledtemp_core::KeyId(1),
        sequence,
        uptime: ledtemp_core::Uptime(1),
        window: ReplayWindow::restore(window)
            .state_after(SequenceNumber::new(sequence).unwrap())
            .unwrap(),
    }
}

fn commit_frames(
    store: &mut PostgresStore,
    frames: &[AcceptedFrame],
) -> Result<CommitOutcome, Error> {
    let mut state = DeviceState::default();
    for frame in frames {
        state.apply(&frame.update);
    }
    let kitchen = device(KITCHEN);
    store.commit(&Commit { frames, devices: &[(&kitchen, &state)], alerts: None })
}

fn stored_window(postgres: &TestDatabase) -> Vec<i64> {
    postgres.query_i64(
        "SELECT unnest(ARRAY[top, seen, expected_will]) FROM replay_windows
         WHERE device = 'kitchen-pi' AND key_id = 1",
    )
}

/// A commit that fails half way (a constraint rejects its LED change) writes nothing: not its
/// readings, not its windows, not its device states; the same commit goes through once the
/// database takes it.
#[test]
fn a_failed_commit_writes_nothing() {
    let Some(postgres) = TestDatabase::create() else { return };
    let (mut ingest, state) = pipeline_on(&postgres.database());
    let kitchen = kitchen_codec();
    ingest.handle(sealed(&kitchen, KITCHEN, 1, &temperature("cpu", 20_000))).unwrap();
    let before =
        (stored_window(&postgres), postgres.query_i64("SELECT COUNT(*) FROM temperatures"));

    postgres.execute("ALTER TABLE led_changes ADD CONSTRAINT no_blue CHECK (led <> 'blue')");
    let batch = vec![
        sealed(&kitchen, KITCHEN, 2, &temperature("cpu", 21_000)),
        sealed(&kitchen, KITCHEN, 3, &led("blue", true)),
    ];
    let results = ingest.handle_batch(batch.clone());
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_eq!(
        (stored_window(&postgres), postgres.query_i64("SELECT COUNT(*) FROM temperatures")),
        before
    );
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM leds"), [0]);
    assert_eq!(history(&state, KITCHEN).len(), 1);

    postgres.execute("ALTER TABLE led_changes DROP CONSTRAINT no_blue");
    for result in ingest.handle_batch(batch) {
        result.unwrap();
    }
    assert_eq!(history(&state, KITCHEN).len(), 2);
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM led_changes"), [1]);
}

/// A database migrated by a newer build is refused, naming both versions, and left as it is.
#[test]
fn a_newer_schema_is_refused_naming_both_versions() {
    let Some(postgres) = TestDatabase::create() else { return };
    let config = config_of(&postgres.database());
    drop(PostgresStore::open(&config).unwrap());
    assert_eq!(postgres.query_i64("SELECT version FROM schema_version"), [POSTGRES_SCHEMA_VERSION]);
    postgres.execute("UPDATE schema_version SET version = 99");
    let error = PostgresStore::open(&config).unwrap_err();
    assert!(
        matches!(error, Error::SchemaTooNew { found: 99, known: POSTGRES_SCHEMA_VERSION }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("99") && message.contains(&POSTGRES_SCHEMA_VERSION.to_string()),
        "{message}"
    );
    assert_eq!(postgres.query_i64("SELECT version FROM schema_version"), [99]);
}

/// Wrong URLs are typed errors naming `host:port/database` and the fix, never the password: a
/// port nothing listens on (worth waiting for), a database that does not exist, an unknown
/// role, an unknown host (not worth waiting for).
#[test]
fn wrong_urls_are_clear_errors_without_the_password() {
    let Some(postgres) = TestDatabase::create() else { return };
    let server = config_of(&postgres.database()).target();
    let host_port = server.split('/').next().unwrap().to_owned();
    let open = |url: &str| {
        let Database::Postgres(config) = Database::parse(url).unwrap() else { unreachable!() };
        let error = PostgresStore::open(&config).unwrap_err();
        let message = error.to_string();
        assert!(!message.contains("s3cret"), "the password leaked: {message}");
        (error, message)
    };

    let free = ledtemp_test_support::net::free_port();
    let (error, message) = open(&format!("postgres://ledtemp:s3cret@127.0.0.1:{free}/readings"));
    assert!(matches!(error, Error::DatabaseUnreachable { .. }), "{error:?}");
    assert!(message.contains(&format!("127.0.0.1:{free}/readings")), "{message}");
    assert!(message.contains("refused") && message.contains("running"), "{message}");

    let missing = format!("{}_missing", postgres.name());
    let (error, message) =
        open(&with_database(&admin_url(), &missing).replace("postgres@", "postgres:s3cret@"));
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(message.contains(&format!("{host_port}/{missing}")), "{message}");
    assert!(message.contains("does not exist") && message.contains("createdb"), "{message}");

    let (error, message) =
        open(&format!("postgres://nobody_here:s3cret@{host_port}/postgres?sslmode=disable"));
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(message.contains("nobody_here") && message.contains("pg_hba.conf"), "{message}");

    let (error, message) = open("postgres://ledtemp:s3cret@no-such-host.invalid/readings");
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(message.contains("no-such-host.invalid") && message.contains("not known"), "{message}");
}

/// Two servers on one database (two stores whose windows were loaded before the other's
/// commits): the window rows are locked and each frame checked against the stored window, so a
/// batch holding a frame the other stored writes nothing and answers with the stored windows,
/// and the window never moves backwards.
#[test]
fn two_stores_on_one_database_never_store_a_frame_twice() {
    let Some(postgres) = TestDatabase::create() else { return };
    let config = config_of(&postgres.database());
    let mut a = PostgresStore::open(&config).unwrap();
    let mut b = PostgresStore::open(&config).unwrap();
    let empty = ReplayState::default();
    let written = |outcome: Result<CommitOutcome, Error>| {
        assert_eq!(outcome.unwrap(), CommitOutcome::Written);
    };
    // A stores 5; B, which never saw it, tries 5 and 6: nothing written, the stored window
    // comes back; B checks again (as its pipeline does) and stores 6 alone.
    written(commit_frames(&mut a, &[accepted(5, 1, empty)]));
    let five = accepted(5, 2, empty);
    let six = accepted(6, 2, five.window);
    let stored = accepted(5, 1, empty).window;
    assert_eq!(
        commit_frames(&mut b, &[five, six]).unwrap(),
        CommitOutcome::StaleWindows(vec![((device(KITCHEN), ledtemp_core::KeyId(1)), stored)])
    );
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM temperatures"), [1]);
    written(commit_frames(&mut b, &[accepted(6, 2, stored)]));
    // A, behind B, stores 7: added to the stored window, not written over it.
    written(commit_frames(&mut a, &[accepted(7, 3, accepted(5, 1, empty).window)]));
    assert_eq!(postgres.query_i64("SELECT sequence FROM temperatures ORDER BY id"), [5, 6, 7]);
    assert_eq!(
        postgres.query_i64("SELECT milli_celsius::int8 FROM temperatures ORDER BY id"),
        [1, 2, 3]
    );
    assert_eq!(stored_window(&postgres), [8, 0b111, 0]);
    // B, far behind, cannot move the window back either.
    assert!(matches!(
        commit_frames(&mut b, &[accepted(6, 9, empty)]).unwrap(),
        CommitOutcome::StaleWindows(_)
    ));
    assert_eq!(stored_window(&postgres), [8, 0b111, 0]);
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM temperatures"), [3]);
}

/// Two pipelines on one database fed the same frames at the same time, from two threads, in
/// batches of different sizes: every frame is accepted by one of them and refused as a replay by
/// the other, stored exactly once, and nothing deadlocks.
#[test]
fn two_servers_racing_on_the_same_frames_store_each_once() {
    let Some(postgres) = TestDatabase::create() else { return };
    let database = postgres.database();
    let frames: Vec<_> = (0..300u64)
        .map(|n| {
            let (codec, name) =
                if n % 2 == 0 { (kitchen_codec(), KITCHEN) } else { (garage_codec(), GARAGE) };
            sealed(&codec, name, n, &temperature("cpu", 1_000))
        })
        .collect();
    let (mut a, _) = pipeline_on(&database);
    let (mut b, _) = pipeline_on(&database);
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for (ingest, batch) in [(&mut a, 7), (&mut b, 11)] {
            let (frames, accepted) = (&frames, &accepted);
            scope.spawn(move || {
                for chunk in frames.chunks(batch) {
                    for result in ingest.handle_batch(chunk.to_vec()) {
                        match result {
                            Ok(_) => {
                                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(error) => {
                                assert_eq!(error.reject_reason(), Some(RejectReason::Replay));
                            }
                        }
                    }
                }
            });
        }
    });
    assert_eq!(accepted.into_inner(), 300, "each frame accepted once, by one pipeline");
    let replays = |ingest: &Ingest| ingest.live().stats.rejected(RejectReason::Replay);
    assert_eq!(replays(&a) + replays(&b), 300);
    let counts = postgres.query_i64(
        "SELECT COUNT(*) FROM temperatures UNION ALL
         SELECT COUNT(DISTINCT (device, sequence)) FROM temperatures",
    );
    assert_eq!(counts, [300, 300]);
}

/// The connection killed from the server side (as a database restart does): the next commit
/// reconnects, or fails and the one after it does; nothing is lost or doubled; the history
/// reader reconnects too.
#[test]
fn a_killed_connection_is_opened_again() {
    let Some(postgres) = TestDatabase::create() else { return };
    let config = config_of(&postgres.database());
    let mut store = PostgresStore::open(&config).unwrap();
    let history = store.history().unwrap();
    let first = accepted(1, 1, ReplayState::default());
    commit_frames(&mut store, std::slice::from_ref(&first)).unwrap();
    let query = history_query(KITCHEN, None, 0, 10, 10);
    assert_eq!(history.temperatures(&query).unwrap().len(), 1);

    postgres.terminate_connections();
    let second = accepted(2, 2, first.window);
    if let Err(error) = commit_frames(&mut store, std::slice::from_ref(&second)) {
        eprintln!("the first commit after the kill failed, as it may: {error}");
        commit_frames(&mut store, std::slice::from_ref(&second)).unwrap();
    }
    let points = match history.temperatures(&query) {
        Ok(points) => points,
        Err(_) => history.temperatures(&query).unwrap(),
    };
    assert_eq!(points.len(), 2);
    assert_eq!(postgres.query_i64("SELECT sequence FROM temperatures ORDER BY id"), [1, 2]);
}

/// A commit retried after its answer was lost (it did go through): its frames are found in the
/// stored window and not stored again.
#[test]
fn a_commit_retried_after_it_went_through_stores_nothing_twice() {
    let Some(postgres) = TestDatabase::create() else { return };
    let config = config_of(&postgres.database());
    let mut store = PostgresStore::open(&config).unwrap();
    let frames = [accepted(1, 1, ReplayState::default())];
    assert_eq!(commit_frames(&mut store, &frames).unwrap(), CommitOutcome::Written);
    assert!(matches!(commit_frames(&mut store, &frames).unwrap(), CommitOutcome::StaleWindows(_)));
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM temperatures"), [1]);
}

/// `serve` on a PostgreSQL it cannot reach yet (the port refuses) waits, trying again, and
/// starts once it answers; giving up (dropping the start, as Ctrl-C does) ends the wait at
/// once; a database that does not exist is an error at once, not a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_waits_for_a_database_it_cannot_reach_yet() {
    let Some(postgres) = TestDatabase::create() else { return };
    let port = config_of(&postgres.database()).target();
    let port: u16 = port.split('/').next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let mut proxy = Proxy::start(port).await;
    proxy.close();
    let proxy_port = proxy.port();
    let through_proxy = |name: &str| {
        let url = format!("postgres://postgres@127.0.0.1:{proxy_port}/{name}?sslmode=disable");
        Database::parse(&url).unwrap()
    };

    let config = serve_config_on(&through_proxy(postgres.name()), 1);
    let starting = tokio::spawn(Server::start(config, keys()));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!starting.is_finished(), "the server did not wait for its database");
    proxy.open().await;
    let server = tokio::time::timeout(WAIT, starting).await.unwrap().unwrap().unwrap();
    let (status, _) = get_json(server.http_addr(), "/api/stats").await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();

    proxy.close();
    let config = serve_config_on(&through_proxy(postgres.name()), 1);
    let waiting = tokio::spawn(Server::start(config, keys()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    waiting.abort();
    assert!(tokio::time::timeout(Duration::from_secs(2), waiting).await.unwrap().is_err());

    proxy.open().await;
    let config = serve_config_on(&through_proxy(&format!("{}_missing", postgres.name())), 1);
    let refused = tokio::time::timeout(WAIT, Server::start(config, keys())).await.unwrap();
    assert!(matches!(refused, Err(Error::Postgres { .. })), "{:?}", refused.err());
}

/// A database that holds another program's table of the same name, or a role that may not
/// create tables there: refused, saying what to do, and nothing is created.
#[test]
fn a_database_that_is_not_ledtemps_is_refused() {
    let Some(postgres) = TestDatabase::create() else { return };
    let config = config_of(&postgres.database());
    postgres.execute("CREATE TABLE devices (name TEXT)");
    let error = PostgresStore::open(&config).unwrap_err();
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(error.to_string().contains("a database of its own"), "{error}");
    assert_eq!(postgres.query_i64("SELECT COUNT(*) FROM pg_tables WHERE tablename = 'leds'"), [0]);
    postgres.execute("DROP TABLE devices");

    let role = format!("{}_reader", postgres.name());
    postgres
        .execute(&format!("CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC"));
    let url =
        config.to_string().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let error = PostgresStore::open(&config_of(&Database::parse(&url).unwrap())).unwrap_err();
    postgres.execute(&format!("DROP ROLE {role}"));
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(error.to_string().contains("OWNER TO"), "{error}");
}

/// A new database gets its tables and loads as nothing at all.
#[test]
fn an_empty_database_loads_an_empty_snapshot() {
    let Some(postgres) = TestDatabase::create() else { return };
    let snapshot = PostgresStore::open(&config_of(&postgres.database())).unwrap().load().unwrap();
    assert!(snapshot.windows.is_empty() && snapshot.devices.is_empty());
    assert!(snapshot.alerts.is_none() && snapshot.notifier_caps.is_empty());
}

/// TLS to this machine's PostgreSQL, where it has TLS on with its certificate for `localhost`
/// (Debian's snakeoil certificate, as the CI image has it; skipped otherwise): `prefer` encrypts
/// without a CA, `require` checks the certificate against `--database-ca` and the host name, and
/// refuses a certificate for another name or one no CA given signed.
#[test]
fn tls_follows_the_sslmode_and_checks_the_certificate_when_asked() {
    let Some(postgres) = TestDatabase::create() else { return };
    let settings = postgres
        .query_text("SELECT current_setting('ssl') || ' ' || current_setting('ssl_cert_file')");
    let (ssl, cert_file) = settings[0].split_once(' ').unwrap();
    let cert_file = std::path::PathBuf::from(cert_file);
    if ssl != "on" || !cert_file.is_file() {
        ledtemp_test_support::skip_unless_required(
            "LEDTEMP_REQUIRE_POSTGRES_TLS",
            "the PostgreSQL TLS test",
            &format!(
                "the test server has ssl = {ssl} and its certificate {} is not readable here",
                cert_file.display()
            ),
        );
        return;
    }
    let server = config_of(&postgres.database()).target();
    let port = server.split('/').next().unwrap().rsplit(':').next().unwrap().to_owned();
    let url = |host: &str, mode: &str| {
        format!("postgres://postgres@{host}:{port}/{}?sslmode={mode}", postgres.name())
    };
    let encrypted = || {
        postgres.query_i64(
            "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE ssl AND application_name = 'ledtemp-web'",
        )[0]
    };
    let open = |url: &str, ca: Option<&std::path::Path>| {
        let config = config_of(&Database::parse(url).unwrap());
        let config = match ca {
            Some(ca) => config.with_ca_file(ca),
            None => config,
        };
        PostgresStore::open(&config)
    };

    let store = open(&url("127.0.0.1", "prefer"), None).unwrap();
    assert!(encrypted() >= 1, "sslmode=prefer did not encrypt");
    drop(store);
    let store = open(&url("localhost", "require"), Some(&cert_file)).unwrap();
    assert!(encrypted() >= 1);
    drop(store);

    for (url, ca) in [
        // The certificate is for localhost, not for this address.
        (url("127.0.0.1", "require"), Some(cert_file.as_path())),
        // No CA given: the system's bundle does not hold the server's self-signed certificate.
        (url("localhost", "require"), None),
    ] {
        let error = open(&url, ca).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::Postgres { .. }), "{url}: {error:?}");
        assert!(message.contains("TLS") && message.contains("--database-ca"), "{message}");
    }
}
