//! Configuration: flags, `LEDTEMP_...` environment variables, a TOML file, defaults.
//!
//! Precedence, highest first: a flag, its environment variable, the TOML file given with
//! `--config` (or `LEDTEMP_CONFIG`), the default. The defaults work on one machine: broker
//! `127.0.0.1:1883`, HTTP on `127.0.0.1:8080`, database `ledtemp.db`, keyring `keyring.toml`.
//! `--embedded-broker` replaces the external broker with one inside the server.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::Error;
use crate::alerts::AlertSection;
use crate::broker::local_client_addr;
use crate::homeassistant::{HomeAssistantConfig, HomeAssistantSection};
use crate::http::HttpLimits;
use crate::http::{AuthArgs, AuthConfig, AuthSection};
use crate::ingest::Limits;
use crate::mqtt::{Acknowledge, SubscriberConfig};
use crate::server::PipelineOptions;
use crate::store::Database;

/// The server's MQTT client id when none is configured: stable, so that a restarted server finds
/// its session (and the frames the broker kept for it).
pub const DEFAULT_CLIENT_ID: &str = "ledtemp-web";

/// How long the broker keeps the server's session by default, in seconds: a day, long enough to
/// survive a reboot or a weekend's outage of the server.
pub const DEFAULT_SESSION_EXPIRY: u32 = 86_400;

/// What a server of a shared subscription group needs: a database the group shares, and a client
/// id of its own.
pub(crate) fn shared_group_check(database: &Database, client_id: &str) -> Result<(), Error> {
    if let Database::Sqlite(path) = database {
        return Err(Error::Config(format!(
            "shared-group needs a database the servers of the group share (--database \
             postgres://...): with a SQLite file ({}) each server would keep its own replay \
             windows, and a frame one accepted could be replayed to another",
            path.display()
        )));
    }
    if client_id == DEFAULT_CLIENT_ID {
        return Err(Error::Config(format!(
            "shared-group needs --client-id, a different one for each server of the group: with \
             the default ({DEFAULT_CLIENT_ID}) the servers would take over each other's session"
        )));
    }
    Ok(())
}

/// Options of `ledtemp-web serve`. Every option is optional here; [`ServeArgs::resolve`] fills
/// the gaps from the file and the defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the long options, with `_` for `-`),
    /// and the alert rules and notifiers ([[alert.rule]], [alert.notifier.NAME]; see the README,
    /// "SMS alerts") and the Home Assistant bridge (`[homeassistant]`; docs/homeassistant.md),
    /// which only the file can give.
    #[arg(long, env = "LEDTEMP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT broker as HOST:PORT [default: 127.0.0.1:1883; with --broker-tls, port 8883].
    #[arg(long, env = "LEDTEMP_BROKER", value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// Run an MQTT v5 broker (rumqttd) inside the server, listening on ADDR:PORT, and subscribe
    /// to it: no Mosquitto needed. Given without a value: 127.0.0.1:1883. Use 0.0.0.0:1883 for
    /// devices on other machines; it has no TLS and no passwords (the server still accepts only
    /// sealed frames). MQTT v5 clients only, as the nodes are. Not together with --broker. An
    /// address in use (say by a Mosquitto service) stops the server with an error naming it.
    #[arg(
        long,
        env = "LEDTEMP_EMBEDDED_BROKER",
        value_name = "ADDR:PORT",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:1883"
    )]
    pub embedded_broker: Option<SocketAddr>,
    /// MQTT client id: the name of the server's session at the broker, so it must stay the same
    /// across restarts and differ between servers on one broker [default: ledtemp-web].
    #[arg(long, env = "LEDTEMP_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// How long the broker keeps the server's session (its subscription, and the QoS 1 frames
    /// that arrive meanwhile) while the server is away; 0 starts a clean session on every
    /// connection, losing what arrives while it is away (docs/reliability.md) [default: 86400,
    /// a day].
    #[arg(long, env = "LEDTEMP_SESSION_EXPIRY_SECS", value_name = "SECS")]
    pub session_expiry_secs: Option<u32>,
    /// Join an MQTT v5 shared subscription group ($share/NAME/ledtemp/+/#) so several servers
    /// split the stream. They must share one PostgreSQL database (a SQLite file is refused): the
    /// replay windows are checked and advanced in it, so each frame is accepted once, whichever
    /// server it reaches (docs/scaling.md). Each server needs its own --client-id.
    #[arg(long, env = "LEDTEMP_SHARED_GROUP", value_name = "NAME")]
    pub shared_group: Option<String>,
    /// Broker user name.
    #[arg(long, env = "LEDTEMP_BROKER_USER", value_name = "USER")]
    pub broker_user: Option<String>,
    /// Broker password: prefer the environment variable to a flag, which other users can see.
    #[arg(long, env = "LEDTEMP_BROKER_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,
    /// Broker password from a file (one line), readable by its owner only (chmod 600). Not
    /// together with --broker-password.
    #[arg(long, env = "LEDTEMP_BROKER_PASSWORD_FILE", value_name = "FILE")]
    pub broker_password_file: Option<PathBuf>,
    /// Connect to the broker over TLS (default port then 8883); needs --broker-ca. The broker's
    /// certificate must be for the broker's host name (docs/broker.md).
    #[arg(long, env = "LEDTEMP_BROKER_TLS")]
    pub broker_tls: bool,
    /// With --broker-tls: PEM file of the CA that signed the broker's certificate.
    #[arg(long, env = "LEDTEMP_BROKER_CA", value_name = "FILE")]
    pub broker_ca: Option<PathBuf>,
    /// Address the HTTP server listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "LEDTEMP_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Login for the dashboard, API, event stream and metrics (`[auth]` in the file).
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The database: a SQLite file, created if missing, or a PostgreSQL URL,
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=prefer (password, port and sslmode
    /// optional; sslmode disable, prefer or require; the database must exist; prefer the
    /// environment variable to a flag for a URL with a password, which other users can see)
    /// [default: ledtemp.db].
    #[arg(long, env = "LEDTEMP_DATABASE", value_name = "FILE|URL", hide_env_values = true)]
    pub database: Option<OsString>,
    /// With a PostgreSQL database: PEM file of the CA that signed the database server's
    /// certificate, checked with sslmode=prefer and require [default with sslmode=require: the
    /// system's CA bundle].
    #[arg(long, env = "LEDTEMP_DATABASE_CA", value_name = "FILE")]
    pub database_ca: Option<PathBuf>,
    /// Keyring: the devices and their keys (docs/keys.md); must be mode 0600 [default:
    /// keyring.toml].
    #[arg(long, env = "LEDTEMP_KEYRING", value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Delete temperature readings and LED changes older than this many days; 0 keeps
    /// everything [default: 30].
    #[arg(long, env = "LEDTEMP_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u32>,
    /// Show a device as offline when nothing came from it for this many seconds [default: 120].
    #[arg(long, env = "LEDTEMP_OFFLINE_AFTER_SECS", value_name = "SECS")]
    pub offline_after_secs: Option<u64>,
    /// Track at most this many devices; a frame of one more is rejected (reason `limit`), and a
    /// bigger keyring is an error at start [default: 1000]. Each device may also have at most
    /// 32 LEDs and 32 sensors.
    #[arg(long, env = "LEDTEMP_MAX_DEVICES", value_name = "N")]
    pub max_devices: Option<usize>,
    /// INSECURE, FOR TEACHING ONLY: accept unencrypted, unauthenticated frames from any device,
    /// with no replay protection (the "before" of docs/attacks.md; nodes need the same flag). No
    /// keyring is read. A flag only: no environment variable or file setting turns it on.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The TOML file's settings (all optional; unknown keys are an error).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    broker: Option<String>,
    embedded_broker: Option<SocketAddr>,
    client_id: Option<String>,
    session_expiry_secs: Option<u32>,
    shared_group: Option<String>,
    broker_user: Option<String>,
    broker_password: Option<String>,
    broker_password_file: Option<PathBuf>,
    broker_tls: Option<bool>,
    broker_ca: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database: Option<String>,
    database_ca: Option<PathBuf>,
    keyring: Option<PathBuf>,
    retention_days: Option<u32>,
    offline_after_secs: Option<u64>,
    max_devices: Option<usize>,
    /// `[[alert.rule]]` and `[alert.notifier.NAME]`: see [`crate::alerts::AlertsConfig`].
    #[serde(default)]
    alert: AlertSection,
    /// `[auth]`: see [`crate::http::AuthConfig`].
    #[serde(default)]
    auth: AuthSection,
    /// `[homeassistant]`: see [`HomeAssistantConfig`].
    #[serde(default)]
    homeassistant: HomeAssistantSection,
}

/// A complete, validated configuration of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The MQTT side. With an embedded broker it points at that broker (its port filled in by
    /// [`Server::start`](crate::Server::start) when 0 was asked for).
    pub mqtt: SubscriberConfig,
    /// Run the embedded MQTT v5 broker on this address (port 0: a free one). Once started it
    /// runs until the process exits, even after the server shuts down.
    pub embedded_broker: Option<SocketAddr>,
    /// HTTP listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Keyring file.
    pub keyring: PathBuf,
    /// The database, caps, offline timeout, retention, alerts and the plaintext teaching mode.
    pub pipeline: PipelineOptions,
    /// Login: required when configured, and off loopback (checked by `Server::start`).
    pub auth: AuthConfig,
    /// The HTTP side's header-read timeout and connection limit.
    pub http: HttpLimits,
    /// The Home Assistant bridge (`[homeassistant]` in the file, `enabled = true`); `None`: off,
    /// the default.
    pub homeassistant: Option<HomeAssistantConfig>,
}

/// Splits `HOST:PORT` (a bare host gets `default_port`; `[v6]:port` works).
pub(crate) fn parse_broker(text: &str, default_port: u16) -> Result<(String, u16), Error> {
    let bad = || Error::Config(format!("broker {text:?}: expected HOST:PORT"));
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (text, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The database setting: a PostgreSQL URL, or else a SQLite file's path (which need not be
/// UTF-8); `ca_file` only with PostgreSQL.
fn database(setting: Option<OsString>, ca_file: Option<PathBuf>) -> Result<Database, Error> {
    let database = match setting {
        None => Database::Sqlite(PathBuf::from("ledtemp.db")),
        Some(setting) => match setting.to_str() {
            Some(text) => Database::parse(text)?,
            None => Database::Sqlite(PathBuf::from(setting)),
        },
    };
    match (database, ca_file) {
        (Database::Postgres(config), Some(ca_file)) => {
            Ok(Database::Postgres(config.with_ca_file(ca_file)))
        }
        (Database::Sqlite(_), Some(_)) => Err(Error::Config(
            "database-ca is set but the database is a SQLite file: drop database-ca, or give a \
             postgres:// URL"
                .into(),
        )),
        (database, None) => Ok(database),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

impl ServeArgs {
    /// Merges flags and environment (already in `self`), the TOML file and the defaults.
    pub fn resolve(self) -> Result<ServeConfig, Error> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let broker = self.broker.or(file.broker);
        let embedded_broker = self.embedded_broker.or(file.embedded_broker);
        let tls = self.broker_tls || file.broker_tls.unwrap_or(false);
        if tls && embedded_broker.is_some() {
            return Err(Error::Config("the embedded broker has no TLS: drop broker-tls".into()));
        }
        let default_port = if tls { crate::mqtt::MQTT_TLS_PORT } else { crate::mqtt::MQTT_PORT };
        let (host, port) = match (&broker, embedded_broker) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "broker and embedded-broker are both set: give one (an external broker, or \
                     the one inside the server)"
                        .into(),
                ));
            }
            (broker, None) => parse_broker(broker.as_deref().unwrap_or("127.0.0.1"), default_port)?,
            (None, Some(listen)) => {
                let at = local_client_addr(listen);
                (at.ip().to_string(), at.port())
            }
        };
        let client_id =
            self.client_id.or(file.client_id).unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned());
        let session_expiry = Duration::from_secs(u64::from(
            self.session_expiry_secs.or(file.session_expiry_secs).unwrap_or(DEFAULT_SESSION_EXPIRY),
        ));
        let shared_group = self.shared_group.or(file.shared_group);
        if let Some(group) = &shared_group {
            // The same rules as device names: no `/`, `+`, `#`, not empty.
            ledtemp_core::Name::new(group).map_err(|_| {
                Error::Config(format!(
                    "shared group {group:?}: use 1 to 32 characters from A-Z a-z 0-9 - _"
                ))
            })?;
        }
        let user = self.broker_user.or(file.broker_user);
        let password = crate::mqtt::broker_password(
            self.broker_password.or(file.broker_password),
            self.broker_password_file.or(file.broker_password_file),
        )?;
        let broker_tls =
            crate::mqtt::broker_tls(tls, self.broker_ca.or(file.broker_ca).as_deref(), &host)?;
        let credentials = match (user, password) {
            (Some(user), password) => Some((user, password.unwrap_or_default())),
            (None, Some(_)) => {
                return Err(Error::Config("a broker password needs a broker user".into()));
            }
            (None, None) => None,
        };
        let database = database(
            self.database.or(file.database.map(OsString::from)),
            self.database_ca.or(file.database_ca),
        )?;
        if shared_group.is_some() {
            shared_group_check(&database, &client_id)?;
        }
        let alerts = file.alert.resolve()?;
        let homeassistant = file.homeassistant.resolve(&client_id)?;
        let retention_days = self.retention_days.or(file.retention_days).unwrap_or(30);
        let offline_after = self.offline_after_secs.or(file.offline_after_secs).unwrap_or(120);
        if offline_after == 0 {
            return Err(Error::Config("offline-after-secs must be at least 1".into()));
        }
        let max_devices =
            self.max_devices.or(file.max_devices).unwrap_or(crate::ingest::DEFAULT_MAX_DEVICES);
        if max_devices == 0 {
            return Err(Error::Config("max-devices must be at least 1".into()));
        }
        Ok(ServeConfig {
            mqtt: SubscriberConfig {
                host,
                port,
                client_id,
                session_expiry,
                acknowledge: Acknowledge::AfterCommit,
                shared_group,
                credentials,
                keep_alive: Duration::from_secs(15),
                tls: broker_tls,
            },
            embedded_broker,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            keyring: self.keyring.or(file.keyring).unwrap_or_else(|| "keyring.toml".into()),
            pipeline: PipelineOptions {
                database,
                retention: (retention_days > 0)
                    .then(|| Duration::from_secs(u64::from(retention_days) * 24 * 3600)),
                offline_after: Duration::from_secs(offline_after),
                alerts,
                limits: Limits { max_devices, ..Limits::default() },
                insecure_plaintext: self.insecure_plaintext,
            },
            auth: self.auth.resolve(file.auth)?,
            http: HttpLimits::default(),
            homeassistant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_one_machine() {
        let config = ServeArgs::default().resolve().unwrap();
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("127.0.0.1", 1883));
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.pipeline.database, Database::Sqlite(PathBuf::from("ledtemp.db")));
        assert_eq!(config.keyring, PathBuf::from("keyring.toml"));
        assert_eq!(config.pipeline.retention, Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(
            config.mqtt.filters(),
            ["ledtemp/+/led/+", "ledtemp/+/temp/+", "ledtemp/+/status"]
        );
        assert_eq!(config.embedded_broker, None);
        assert!(config.homeassistant.is_none(), "the Home Assistant bridge is off by default");
    }

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn embedded_broker_without_a_value_listens_on_loopback_1883() {
        use clap::Parser;
        let parsed = Command::try_parse_from(["serve", "--embedded-broker"]).unwrap();
        assert_eq!(parsed.serve.embedded_broker, Some("127.0.0.1:1883".parse().unwrap()));
        let parsed =
            Command::try_parse_from(["serve", "--embedded-broker", "0.0.0.0:1884"]).unwrap();
        assert_eq!(parsed.serve.embedded_broker, Some("0.0.0.0:1884".parse().unwrap()));
        assert!(Command::try_parse_from(["serve", "--embedded-broker", "nohost"]).is_err());
    }

    #[test]
    fn the_embedded_broker_comes_from_a_flag_or_the_file_and_the_server_subscribes_to_it() {
        let args = ServeArgs {
            embedded_broker: Some("0.0.0.0:1884".parse().unwrap()),
            ..ServeArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.embedded_broker, Some("0.0.0.0:1884".parse().unwrap()));
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("127.0.0.1", 1884));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.toml");
        std::fs::write(&path, "embedded_broker = \"[::1]:1885\"\n").unwrap();
        let config =
            ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }.resolve().unwrap();
        assert_eq!(config.embedded_broker, Some("[::1]:1885".parse().unwrap()));
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("::1", 1885));

        let both = ServeArgs {
            config: Some(path),
            broker: Some("mqtt.local".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(both.resolve(), Err(Error::Config(m)) if m.contains("embedded-broker")));
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.toml");
        std::fs::write(
            &path,
            "broker = \"mqtt.local:1884\"\nshared_group = \"web\"\nclient_id = \"web-1\"\n\
             database = \"postgres://web@db/ledtemp\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            database: Some("postgres://web@db2/ledtemp".into()),
            ..ServeArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("mqtt.local", 1884));
        assert_eq!(
            config.pipeline.database.to_string(),
            "postgres://web@db2:5432/ledtemp?sslmode=prefer"
        );
        assert_eq!(config.mqtt.filters()[2], "$share/web/ledtemp/+/status");
        // A shared group on a SQLite file, or without a client id of its own, is refused.
        let sqlite =
            ServeArgs { config: Some(path), database: Some("y.db".into()), ..ServeArgs::default() };
        let error = sqlite.resolve().unwrap_err().to_string();
        assert!(error.contains("shared-group") && error.contains("y.db"), "{error}");
        let default_id = ServeArgs {
            shared_group: Some("web".into()),
            database: Some("postgres://web@db/ledtemp".into()),
            ..ServeArgs::default()
        };
        let error = default_id.resolve().unwrap_err().to_string();
        assert!(error.contains("--client-id"), "{error}");
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_anything_else_is_a_sqlite_file() {
        let url = "postgres://ledtemp:s3cret@db.example/readings?sslmode=require";
        let args = ServeArgs {
            database: Some(url.into()),
            database_ca: Some("ca.pem".into()),
            ..ServeArgs::default()
        };
        let Database::Postgres(config) = args.resolve().unwrap().pipeline.database else {
            panic!("not PostgreSQL");
        };
        assert_eq!(config.target(), "db.example:5432/readings");
        assert_eq!(config.ca_file(), Some(Path::new("ca.pem")));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledtemp.toml");
        std::fs::write(&path, "database = \"postgresql://ledtemp@db.example/readings\"\n").unwrap();
        let config =
            ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }.resolve().unwrap();
        assert!(matches!(config.pipeline.database, Database::Postgres(_)));
        // A flag's file wins over the file's URL.
        let args = ServeArgs {
            config: Some(path),
            database: Some("postgres.db".into()),
            ..ServeArgs::default()
        };
        let database = args.resolve().unwrap().pipeline.database;
        assert_eq!(database, Database::Sqlite(PathBuf::from("postgres.db")));

        // A bad URL is a configuration error that shows no password; a CA needs PostgreSQL.
        let args = ServeArgs {
            database: Some("postgres://ledtemp:s3cret@db.example/readings?sslmode=verify".into()),
            ..ServeArgs::default()
        };
        let error = args.resolve().unwrap_err().to_string();
        assert!(error.contains("sslmode") && !error.contains("s3cret"), "{error}");
        let args = ServeArgs { database_ca: Some("ca.pem".into()), ..ServeArgs::default() };
        assert!(matches!(args.resolve(), Err(Error::Config(m)) if m.contains("database-ca")));
    }

    #[test]
    fn bad_settings_are_errors() {
        for args in [
            ServeArgs { broker: Some("host:notaport".into()), ..ServeArgs::default() },
            ServeArgs { shared_group: Some("a/b".into()), ..ServeArgs::default() },
            ServeArgs { broker_password: Some("x".into()), ..ServeArgs::default() },
        ] {
            assert!(matches!(args.resolve(), Err(Error::Config(_))));
        }
        assert_eq!(parse_broker("[::1]:1883", 1883).unwrap(), ("::1".to_owned(), 1883));
        assert_eq!(parse_broker("broker", 1883).unwrap(), ("broker".to_owned(), 1883));
        assert_eq!(parse_broker("broker", 8883).unwrap(), ("broker".to_owned(), 8883));
    }
}
