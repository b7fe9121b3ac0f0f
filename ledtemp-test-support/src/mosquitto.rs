//! Mosquitto's programs, and [`Mosquitto`]: a broker process of a test's own on a free port.
//!
//! [`TestBroker`](crate::broker::TestBroker), [`SecureBroker`](crate::secure_broker::SecureBroker)
//! and the ingest bench all start theirs through [`Mosquitto::start`]; they differ only in the
//! settings they give it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::WAIT;
use crate::net::{accepts, free_port};

/// The environment variable that makes a missing Mosquitto a failure (`1`; CI sets it).
pub const REQUIRE_MOSQUITTO_ENV: &str = "LEDTEMP_REQUIRE_MOSQUITTO";

/// Where the program `name` is installed: the first match on `PATH`, else in `/usr/sbin`,
/// `/usr/local/sbin`, `/usr/bin` or `/usr/local/bin` (Debian installs `mosquitto` in `/usr/sbin`,
/// which is not on a user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    let usual = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
        .map(|dir| Path::new(dir).join(name));
    on_path.into_iter().chain(usual).find(|path| path.is_file())
}

/// Whether a missing Mosquitto must fail the run (`LEDTEMP_REQUIRE_MOSQUITTO=1`) rather than fall
/// back to rumqttd or skip.
pub fn mosquitto_required() -> bool {
    std::env::var(REQUIRE_MOSQUITTO_ENV).as_deref() == Ok("1")
}

/// The paths of Mosquitto's `programs` (say `["mosquitto", "mosquitto_passwd"]`), or `None` after
/// printing that `what` is skipped and why. With `LEDTEMP_REQUIRE_MOSQUITTO=1` a missing program
/// panics instead.
pub fn mosquitto_programs<const N: usize>(what: &str, programs: [&str; N]) -> Option<[PathBuf; N]> {
    let found = programs.map(|name| (name, find_program(name)));
    let missing: Vec<&str> =
        found.iter().filter(|(_, path)| path.is_none()).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        return Some(found.map(|(_, path)| path.unwrap()));
    }
    let why = format!(
        "{} is not installed (apt-get install mosquitto mosquitto-clients)",
        missing.join(" and ")
    );
    crate::skip_unless_required(REQUIRE_MOSQUITTO_ENV, what, &why);
    None
}

/// What a [`Mosquitto`]'s configuration file holds besides what every one of them has.
///
/// Every configuration starts with `user root` (when the tests run as root, Mosquitto stays root,
/// so the files in its private directory stay readable; as any other user it has no effect) and
/// the [`persistence`](Self::persistence) lines, then [`global`](Self::global), then the listener
/// line `listener <port> 127.0.0.1`, then [`listener`](Self::listener).
#[derive(Debug, Clone, Default)]
pub struct MosquittoConfig {
    /// Lines before the listener line: settings of the whole broker (`allow_anonymous`,
    /// `password_file`, `max_queued_messages`, `autosave_interval`, `log_type` ...).
    pub global: String,
    /// Lines after it: settings of that listener (`certfile`, `keyfile` ...).
    pub listener: String,
    /// `false`: `persistence false`, everything in memory, gone when the broker stops. `true`:
    /// `persistence true` with `persistence_location` in the broker's directory, so that
    /// sessions, their queued messages and retained messages survive a
    /// [`terminate`](Mosquitto::terminate) and [`resume`](Mosquitto::resume) (Mosquitto saves
    /// them when it exits cleanly and every `autosave_interval`, 30 min by default; a
    /// [`stop`](Mosquitto::stop), a kill, loses what arrived since the last save).
    pub persistence: bool,
}

impl MosquittoConfig {
    /// Anyone may connect, publish and subscribe; nothing else changed from Mosquitto's defaults.
    pub fn anonymous() -> Self {
        MosquittoConfig { global: "allow_anonymous true\n".into(), ..MosquittoConfig::default() }
    }

    /// A broker that keeps its subscribers' sessions as docs/broker.md sets it up:
    /// [`persistence`](Self::persistence) on, `autosave_on_changes true` with
    /// `autosave_interval 10`, `max_queued_messages 1000000`; anonymous clients, and a log of
    /// errors, warnings, notices and information (connections, subscriptions) for failure
    /// messages. The delivery and group tests run on it.
    pub fn persistent() -> Self {
        MosquittoConfig {
            global: "allow_anonymous true\n\
                     autosave_on_changes true\n\
                     autosave_interval 10\n\
                     max_queued_messages 1000000\n\
                     log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                .into(),
            listener: String::new(),
            persistence: true,
        }
    }
}

/// A Mosquitto process of a test's own, on a free port of 127.0.0.1, killed when dropped.
///
/// Its configuration file and its log (`mosquitto.log`: what it writes to stdout and stderr) are
/// in its directory, which is removed with it.
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts `binary` with `config`, its files in `dir` (the caller may have written there the
    /// files `config` names: certificates, a password file, an ACL), and waits until it listens.
    /// Panics, with its log, if it exits or does not listen within [`WAIT`].
    pub async fn start(binary: &Path, dir: TempDir, config: &MosquittoConfig) -> Mosquitto {
        let port = free_port();
        let persistence = if config.persistence {
            // The trailing slash: Mosquitto appends the file name to the location as it is.
            format!("persistence true\npersistence_location {}/\n", dir.path().display())
        } else {
            "persistence false\n".to_owned()
        };
        let text = format!(
            "user root\n{persistence}{global}listener {port} 127.0.0.1\n{listener}",
            global = with_newline(&config.global),
            listener = with_newline(&config.listener),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), text).unwrap();
        let mut mosquitto = Mosquitto { binary: binary.to_owned(), port, dir, child: None };
        mosquitto.resume().await;
        mosquitto
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory: configuration file, log, and whatever the caller put there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file its output goes to.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What it logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Kills it: no clean shutdown, its clients see their connections drop (and it publishes no
    /// will); with [`persistence`](MosquittoConfig::persistence), what arrived since its last
    /// save is lost. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it as a service manager does (SIGTERM) and waits until it has exited: with
    /// [`persistence`](MosquittoConfig::persistence) it first saves its sessions, their queued
    /// messages and the retained messages, which a [`resume`](Self::resume) loads again. Its
    /// clients see their connections close. Kills it, and panics with its log, if it has not
    /// exited within [`WAIT`]. Does nothing if it is stopped.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM mosquitto failed");
        let deadline = tokio::time::Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto did not exit within {WAIT:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again (the first start too) on the same port with the same configuration, and
    /// waits until it listens. Panics, with its log, if it exits or does not listen within
    /// [`WAIT`].
    pub async fn resume(&mut self) {
        self.stop();
        let log: File = OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !accepts(self.port).await {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().unwrap()) {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not open port {}:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn with_newline(lines: &str) -> String {
    if lines.is_empty() || lines.ends_with('\n') { lines.to_owned() } else { format!("{lines}\n") }
}
