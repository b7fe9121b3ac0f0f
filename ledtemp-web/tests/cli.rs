//! The command line: `ledtemp-web serve --help` explains every setting; start-up errors are clear
//! and exit non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

#[test]
fn serve_help_explains_every_option() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_ledtemp-web")).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--config",
        "--broker",
        "--embedded-broker",
        "--client-id",
        "--shared-group",
        "--broker-user",
        "--broker-password",
        "--listen",
        "--database",
        "--database-ca",
        "postgres://",
        "--keyring",
        "--retention-days",
        "--offline-after-secs",
        "LEDTEMP_BROKER",
        "LEDTEMP_EMBEDDED_BROKER",
        "127.0.0.1:1883",
        "127.0.0.1:8080",
        "ledtemp.db",
        "keyring.toml",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn a_missing_keyring_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["serve", "--listen", "127.0.0.1:0", "--keyring"])
        .arg(dir.path().join("nope.toml"))
        .arg("--database")
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("keyring") && stderr.contains("nope.toml"), "{stderr}");
    assert!(stderr.contains("ledtemp-keys -- add <device> --keyring"), "{stderr}");
}

/// `ledtemp-web serve` with the database `database` and the keyring `keyring` (a fresh one in
/// `dir` when `None`), which must fail at start; its stderr.
fn serve_fails(dir: &Path, database: &Path, keyring: Option<&Path>) -> String {
    let fresh = dir.join("keyring.toml");
    ledtemp_keys::Keyring::new().save(&fresh).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["serve", "--listen", "127.0.0.1:0", "--keyring"])
        .arg(keyring.unwrap_or(&fresh))
        .arg("--database")
        .arg(database)
        .env_remove("LEDTEMP_BROKER")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("dashboard at"), "{stderr}");
    stderr
}

#[test]
fn a_database_that_is_not_sqlite_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("notes.db");
    std::fs::write(&database, "shopping list: milk, eggs\n".repeat(200)).unwrap();
    let stderr = serve_fails(dir.path(), &database, None);
    let expected = format!("database {}: is not a SQLite database", database.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("point --database at another file"), "{stderr}");
}

#[test]
fn a_database_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("no-such-dir").join("ledtemp.db");
    let stderr = serve_fails(dir.path(), &database, None);
    let expected = format!(
        "database {}: its directory {} does not exist: create it",
        database.display(),
        dir.path().join("no-such-dir").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn a_keyring_path_that_is_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("ledtemp.db");
    let stderr = serve_fails(dir.path(), &database, Some(dir.path()));
    let expected = format!("{} is a directory, not a key file or keyring", dir.path().display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("chmod"), "{stderr}");
}

#[test]
fn an_embedded_broker_address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.toml");
    ledtemp_keys::Keyring::new().save(&keyring).unwrap();
    // Held for the whole test, as a Mosquitto service would hold 1883.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let serve = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--keyring"])
            .arg(&keyring)
            .arg("--database")
            .arg(dir.path().join("db"))
            .env_remove("LEDTEMP_BROKER");
        command
    };
    let by_flag = serve().args(["--embedded-broker", &addr]).output().unwrap();
    let by_env = serve().env("LEDTEMP_EMBEDDED_BROKER", &addr).output().unwrap();
    for output in [by_flag, by_env] {
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{stderr}");
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("embedded MQTT broker: cannot listen on {addr}")),
            "{stderr}"
        );
        assert!(stderr.contains("--broker"), "{stderr}");
        assert!(!stderr.contains("dashboard at"), "{stderr}");
    }
    drop(taken);
}

/// The demo on an HTTP port that is taken: one clear error that names `--listen`, and nothing
/// started before it (no embedded broker noise after it).
#[test]
fn an_http_address_in_use_is_a_clear_error_and_nothing_else_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["demo", "--listen", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("binding HTTP to {addr}")), "{stderr}");
    assert!(stderr.contains("--listen 127.0.0.1:8081"), "{stderr}");
    assert!(!stdout.contains("embedded MQTT") && !stdout.contains("rumqttd"), "{stdout}");
    assert!(!stdout.contains("ERROR"), "{stdout}");
    assert!(!stdout.contains("\u{1b}["), "colour codes in a pipe: {stdout}");
    drop(taken);
}

/// A clean stop (SIGTERM, as systemd and Ctrl-C send) closes the database: only the database
/// file is left, no write-ahead log or shared-memory file beside it.
#[test]
fn a_clean_stop_leaves_only_the_database_file() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.toml");
    ledtemp_keys::Keyring::new().save(&keyring).unwrap();
    let database = dir.path().join("ledtemp.db");
    let mut server = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["serve", "--listen", "127.0.0.1:0", "--embedded-broker", "127.0.0.1:0"])
        .arg("--keyring")
        .arg(&keyring)
        .arg("--database")
        .arg(&database)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(server.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains("dashboard at") {
            break;
        }
    }
    let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(server.wait().unwrap().success());
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["keyring.toml", "ledtemp.db"]);
}

/// The demo as a newcomer runs it: it names its dashboard, says that its forger's warnings are
/// expected, prints no colour codes into a pipe, and stops cleanly on SIGTERM.
#[test]
fn the_demo_says_its_forgers_warnings_are_expected_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(demo.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("those warnings are expected") {
            break;
        }
    }
    let killed = Command::new("kill").args(["-TERM", &demo.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(demo.wait().unwrap().success(), "{seen}");
    assert!(seen.contains("ledtemp demo: open http://127.0.0.1:"), "{seen}");
    assert!(seen.contains("those warnings are expected"), "{seen}");
    assert!(!seen.contains('\u{1b}'), "colour codes in a pipe: {seen}");
}

/// `serve` on a PostgreSQL that does not answer (a port nothing listens on) says so once,
/// naming `host:port/database` and never the password, waits instead of exiting, and still
/// stops at once on SIGTERM.
#[test]
fn serve_waits_for_an_unreachable_postgres_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.toml");
    ledtemp_keys::Keyring::new().save(&keyring).unwrap();
    let port = ledtemp_test_support::net::free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .args(["serve", "--listen", "127.0.0.1:0", "--keyring"])
        .arg(&keyring)
        .arg("--database")
        .arg(format!("postgres://ledtemp:s3cret@127.0.0.1:{port}/readings"))
        .env_remove("LEDTEMP_BROKER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(server.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("cannot reach PostgreSQL") {
            break;
        }
    }
    let expected = format!("cannot reach PostgreSQL at 127.0.0.1:{port}/readings");
    assert!(seen.contains(&expected) && seen.contains("retrying"), "{seen}");
    assert!(!seen.contains("s3cret"), "the password leaked: {seen}");
    assert!(server.try_wait().unwrap().is_none(), "serve exited instead of waiting");
    let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < ledtemp_test_support::WAIT, "serve did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// A PostgreSQL URL that does not parse stops `serve` at once with the reason, the URL shown
/// without its password.
#[test]
fn a_wrong_postgres_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = Path::new("postgres://ledtemp:s3cret@db.example/readings?sslmode=verify-full");
    let stderr = serve_fails(dir.path(), url, None);
    assert!(stderr.contains("database URL postgres://ledtemp:***@db.example"), "{stderr}");
    assert!(stderr.contains("sslmode"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}
