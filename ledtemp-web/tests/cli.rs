//! The command line: `ledtemp-web serve --help` explains every setting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
        "--client-id",
        "--shared-group",
        "--broker-user",
        "--broker-password",
        "--listen",
        "--database",
        "--keyring",
        "--retention-days",
        "--offline-after-secs",
        "LEDTEMP_BROKER",
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
}
