//! The PostgreSQL store: the SQLite store's tables and guarantees on a database server that
//! several ledtemp servers may share.
//!
//! One writer ([`PostgresStore`], owned by the ingest worker) and a reader for the HTTP
//! handlers' history queries ([`PostgresHistory`]), each on a connection of its own.
//!
//! **Driver and runtime.** `tokio-postgres`, without compile-time-checked queries: the build
//! needs no database. The [`Store`] and [`HistoryStore`] traits are blocking and the ingest
//! worker is a plain thread, so the backend brings its own tokio runtime (one worker thread,
//! shared by the store and its history reader) and blocks on it. Called from inside another
//! runtime (an async test, [`Pipeline::open`](crate::Pipeline::open) in a task, a
//! `spawn_blocking` closure) it blocks on a scoped thread instead, so it works anywhere and
//! never panics; dropping it shuts its runtime down in the background.
//!
//! **One transaction per batch.** [`Store::commit`] writes the frames' readings and LED changes,
//! their replay windows, the devices' states and LEDs and the alert state in one transaction, or
//! nothing. Every table is written with one statement per batch (`UNNEST` of arrays: a
//! multi-row insert or update, not a round trip per frame), the statements are prepared once
//! per connection and sent pipelined.
//!
//! **Replay windows under a row lock.** Inside the transaction the batch's (device, key id)
//! window rows are created if missing and then locked (`SELECT ... FOR UPDATE`, ordered by
//! device and key id, so two servers locking overlapping sets cannot deadlock), and every frame
//! is checked again against the *stored* window, in order
//! ([`ReplayWindow::state_after_rule`]). One server alone always finds the window it last wrote
//! and writes the one it computed. When the stored window is ahead of this server's (another
//! server sharing the database accepted frames of the same key meanwhile, or a commit whose
//! answer was lost did go through), the stored window wins:
//! - a frame the stored window has already accepted (or has moved too far past) is **not
//!   stored again**: its reading or LED change is left out and logged, never written twice;
//! - the window written is the stored window advanced by the frames that are new, so it never
//!   moves backwards and keeps every number either server accepted.
//!
//! The devices' current states and LEDs are written as this server computed them (the last
//! writer wins); the next issue (several servers) makes the caches follow the database. A frame
//! accepted without a replay window (the insecure teaching mode: its window does not record its
//! own number) is stored as it is.
//!
//! **Schema.** Versioned migrations as SQLite's, counted in the `schema_version` table and
//! applied in one transaction under an advisory lock (two servers starting together migrate
//! once). A database with a newer version than this build knows is refused
//! ([`Error::SchemaTooNew`], naming both). Times are `BIGINT` milliseconds, sequence numbers and
//! window bitmaps `BIGINT` bit patterns (as in SQLite), flags `BOOLEAN`. History is read through
//! the index on (device, received_ms, id).
//!
//! **Connection loss.** A commit on a lost connection fails and changes nothing (the ingest
//! worker keeps its frames and tries again); the next call reconnects and prepares its
//! statements again. Connecting gives up after [`CONNECT_TIMEOUT`] per host, and every
//! operation after [`OPERATION_TIMEOUT`], so a dead host never hangs the worker. A commit
//! whose answer was lost may have been written: its retry finds its frames in the stored
//! windows and does not store them twice.
//!
//! **TLS** follows the URL's `sslmode`: `disable`; `prefer` (the default) encrypts when the
//! server offers TLS, without checking its certificate unless a CA file is given, as libpq's
//! `prefer` does; `require` insists on TLS and checks the certificate and host name against the
//! CA file given (`--database-ca`) or the system's CA bundle (libpq's `verify-full`).
//!
//! **Secrets.** The URL's password is never logged nor put in an error: both name the database
//! as `host:port/database` or as the URL with the password left out.
//!
//! This module and `sqlite.rs` are the only ones that know SQL.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ledtemp_core::{
    DeviceId, KeyId, LedName, LedState, MilliCelsius, ReplayRule, ReplayState, ReplayWindow,
    SensorName, SequenceNumber,
};
use ledtemp_tokio::BrokerTls;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AcceptedFrame, Commit, HistoryQuery, HistoryStore, Snapshot, Store, name, to_i64, to_u64,
};
use crate::Error;
use crate::alerts::{CapState, EngineState};
use crate::model::{DeviceState, LedPoint, Observation, Reading, TemperaturePoint, UnixMillis};

/// Schema migrations, applied in order; `schema_version` counts those applied. PostgreSQL's
/// versions are its own: they do not follow SQLite's.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema: SQLite's two migrations in PostgreSQL's types.
    "CREATE TABLE devices (
        device TEXT PRIMARY KEY,
        last_seen_ms BIGINT NOT NULL,
        online BOOLEAN NOT NULL,
        status_ms BIGINT NOT NULL
    );
    CREATE TABLE replay_windows (
        device TEXT NOT NULL,
        key_id SMALLINT NOT NULL,
        top BIGINT NOT NULL,
        seen BIGINT NOT NULL,
        expected_will BIGINT NOT NULL,
        PRIMARY KEY (device, key_id)
    );
    CREATE TABLE temperatures (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device TEXT NOT NULL,
        sensor TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        uptime_ms BIGINT NOT NULL,
        milli_celsius INTEGER NOT NULL,
        sequence BIGINT NOT NULL
    );
    CREATE INDEX temperatures_by_device_time ON temperatures (device, received_ms, id);
    CREATE TABLE led_changes (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        uptime_ms BIGINT NOT NULL,
        led_on BOOLEAN NOT NULL,
        sequence BIGINT NOT NULL
    );
    CREATE INDEX led_changes_by_time ON led_changes (received_ms);
    CREATE TABLE leds (
        device TEXT NOT NULL,
        led TEXT NOT NULL,
        led_on BOOLEAN NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (device, led)
    );
    CREATE TABLE alert_engine (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL
    );
    CREATE TABLE alert_caps (
        notifier TEXT PRIMARY KEY,
        day BIGINT NOT NULL,
        count BIGINT NOT NULL
    );",
];

/// The PostgreSQL schema version this build writes.
pub const POSTGRES_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long connecting to one host may take (TCP and TLS), unless the URL sets
/// `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one operation (a commit, a load, a history query) may take before the connection
/// is given up as dead and the operation fails.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The advisory lock that serialises migrations: "ledtemp" and a 1.
const MIGRATION_LOCK: i64 = 0x6c65_6474_656d_7001;

/// The system's CA bundle (Debian, Ubuntu, Alpine), trusted by `sslmode=require` without
/// `--database-ca`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The form of a PostgreSQL URL, for error messages.
const URL_FORM: &str =
    "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require]";

/// Whether `text` is a PostgreSQL URL (`postgres://` or `postgresql://`).
pub(crate) fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// `url` with its password (in the user part or a `password=` parameter) replaced by `***`:
/// what may be shown of a URL that does not parse. Takes everything before the last `@` as the
/// user part, so a password holding an `@` is hidden too.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.rsplit_once('@') {
        Some((user_part, host_part)) => match user_part.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host_part}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => rest,
    };
    if scheme.is_empty() { rest } else { format!("{scheme}://{rest}") }
}

/// Where a PostgreSQL database is and how to reach it: a `postgres://` URL (parsed by
/// `tokio-postgres`: user, password, hosts, ports, database, `sslmode`, `connect_timeout`,
/// ...) and the CA file that signed the server's certificate, if one is given.
///
/// `Display` and `Debug` show the URL without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Boxed: it is large, and [`Database`](super::Database) holds one or a path.
    config: Box<tokio_postgres::Config>,
    ca_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// Parses a `postgres://` or `postgresql://` URL:
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require]`.
    /// Connecting waits at most [`CONNECT_TIMEOUT`] per host unless the URL sets
    /// `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Config`] for another scheme, a URL that does not parse, or one without a host or
    /// a user; the message shows the URL without its password.
    pub fn parse(url: &str) -> Result<PostgresConfig, Error> {
        let bad = |problem: &str| {
            Error::Config(format!(
                "database URL {}: {problem} (the form is {URL_FORM})",
                redact_url(url)
            ))
        };
        if !is_postgres_url(url) {
            return Err(bad("not a PostgreSQL URL: it starts with postgres:// or postgresql://"));
        }
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error: tokio_postgres::Error| bad(&describe(&error)))?;
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host"));
        }
        if config.get_user().is_none() {
            return Err(bad("it names no user"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ledtemp-web");
        }
        Ok(PostgresConfig { config: Box::new(config), ca_file: None })
    }

    /// Checks the server's certificate against the CA certificates in the PEM file `ca_file`
    /// (read when the store opens), with `sslmode=prefer` as well as `require`.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> PostgresConfig {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// The CA file given with [`with_ca_file`](Self::with_ca_file).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The database's name: the URL's, or as PostgreSQL defaults it, the user's.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or_default()
    }

    /// `host:port/database` (hosts separated by commas): how logs and errors name the database.
    pub fn target(&self) -> String {
        format!("{}/{}", self.hosts().join(","), self.dbname())
    }

    fn hosts(&self) -> Vec<String> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(index, host)| {
                // One port for all hosts, or one each (tokio-postgres checks the count).
                let port = ports.get(index).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect()
    }

    fn ssl_mode(&self) -> &'static str {
        match self.config.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            _ => "require",
        }
    }

    /// The TLS connector for the URL's `sslmode` and the CA file (see the module's
    /// documentation).
    fn tls(&self) -> Result<MakeRustlsConnect, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let checked = |ca_file: &Path| {
            // BrokerTls checks names for its own connector only; tokio-postgres-rustls checks the
            // certificate against the URL's host itself.
            BrokerTls::from_ca_file(ca_file, "localhost")
                .map(|tls| MakeRustlsConnect::new(ClientConfig::clone(&tls.client_config())))
                .map_err(|error| Error::Config(format!("database-ca: {error}")))
        };
        match (self.config.get_ssl_mode(), &self.ca_file) {
            (SslMode::Disable, _) | (SslMode::Prefer, None) => {
                let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                    .with_safe_default_protocol_versions()
                    .map_err(|error| Error::Config(format!("TLS to PostgreSQL: {error}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(UncheckedCertificate(provider)))
                    .with_no_client_auth();
                Ok(MakeRustlsConnect::new(config))
            }
            (_, Some(ca_file)) => checked(ca_file),
            (_, None) => {
                if !Path::new(SYSTEM_CA_BUNDLE).is_file() {
                    return Err(Error::Config(format!(
                        "database URL {self}: sslmode=require checks the server's certificate, \
                         but the system's CA bundle {SYSTEM_CA_BUNDLE} is missing: give the \
                         CA's PEM file with --database-ca, or install ca-certificates"
                    )));
                }
                checked(Path::new(SYSTEM_CA_BUNDLE))
            }
        }
    }
}

impl fmt::Display for PostgresConfig {
    /// `postgres://USER@HOST:PORT/DATABASE?sslmode=MODE`: never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.config.get_user().unwrap_or_default();
        write!(f, "postgres://{user}@{}?sslmode={}", self.target(), self.ssl_mode())
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.to_string())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `sslmode=prefer` without a CA file, as libpq: the connection is encrypted, the certificate is
/// not checked (the handshake's signatures still are). Protects against a passive eavesdropper
/// only; `require` checks the certificate.
#[derive(Debug)]
struct UncheckedCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An error and its causes on one line: `tokio-postgres` puts the interesting part (the
/// server's message, the operating system's error) in the source.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', "; ")
}

/// A driver error as the crate's [`Error::Store`], described with its causes.
#[derive(Debug)]
struct DriverError(tokio_postgres::Error);

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn db(error: tokio_postgres::Error) -> Error {
    Error::Store(Box::new(DriverError(error)))
}

/// An operation that did not finish within [`OPERATION_TIMEOUT`].
fn timed_out() -> Error {
    Error::Store(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from PostgreSQL within {} s", OPERATION_TIMEOUT.as_secs()),
    )))
}

/// Whether the connection is gone after `error` (as opposed to a statement that failed on a
/// working connection): then the next call reconnects.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        None => true,
        Some(db) => {
            let class = db.code().code().get(..2);
            matches!(db.severity(), "FATAL" | "PANIC") || matches!(class, Some("08" | "57"))
        }
    }
}

/// The network error among `error`'s causes that means the server was not reached.
fn unreachable_cause<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e std::io::Error> {
    use std::io::ErrorKind as K;
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::NotConnected
                    | K::AddrNotAvailable
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::NotFound
            )
        {
            return Some(io);
        }
        source = cause.source();
    }
    None
}

/// Why connecting to `config`'s database failed, and what to do: the messages an operator meets
/// first. A server that may answer later is [`Error::DatabaseUnreachable`]; one that refuses
/// this configuration is [`Error::Postgres`].
fn connect_error(config: &PostgresConfig, error: &tokio_postgres::Error) -> Error {
    let target = config.target();
    let unreachable =
        |problem: String| Error::DatabaseUnreachable { target: target.clone(), problem };
    let refused = |problem: String| Error::Postgres { target: target.clone(), problem };
    let user = config.config.get_user().unwrap_or_default();
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            refused(format!(
                "{}: check the user and password in the URL, and the server's pg_hba.conf",
                db.message()
            ))
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            let name = config.dbname();
            refused(format!(
                "database \"{name}\" does not exist: create it (createdb --owner {user} \
                 {name}), or fix the database name in the URL"
            ))
        } else if *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
        {
            unreachable(db.message().to_owned())
        } else {
            refused(describe(error))
        };
    }
    if let Some(io) = unreachable_cause(error) {
        let hint = match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                ": is PostgreSQL running, and listening on that address (listen_addresses)?"
            }
            std::io::ErrorKind::TimedOut => ": is the host up, and the port open to this machine?",
            _ => "",
        };
        return unreachable(format!("{io}{hint}"));
    }
    if error.is_closed() {
        return unreachable("the server closed the connection".into());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return refused(format!(
                "TLS: {}: give the CA that signed the server's certificate with --database-ca, \
                 and use the host name the certificate is for",
                describe(error)
            ));
        }
        source = cause.source();
    }
    refused(describe(error))
}

/// The backend's own tokio runtime: the connections' tasks run on its one worker thread, and
/// the blocking trait methods wait on it.
struct DriverRuntime {
    handle: tokio::runtime::Handle,
    /// Taken by `Drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl DriverRuntime {
    fn start() -> Result<Arc<DriverRuntime>, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ledtemp-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the PostgreSQL driver's runtime", e))?;
        Ok(Arc::new(DriverRuntime { handle: runtime.handle().clone(), runtime: Some(runtime) }))
    }

    /// Runs `future` to completion and returns its output. On a thread inside another tokio
    /// runtime (where blocking on a runtime would panic), it blocks on a scoped thread of its
    /// own instead.
    fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.handle.block_on(future);
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.handle.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `future`, giving up after [`OPERATION_TIMEOUT`] (`None`).
    fn run_timed<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.run(async { tokio::time::timeout(OPERATION_TIMEOUT, future).await.ok() })
    }
}

impl Drop for DriverRuntime {
    /// Shuts down without waiting: dropping a runtime inside another one's task would panic.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What both connections need: the configuration, TLS and the runtime.
struct Link {
    config: PostgresConfig,
    tls: MakeRustlsConnect,
    runtime: Arc<DriverRuntime>,
}

impl Link {
    fn new(config: &PostgresConfig) -> Result<Link, Error> {
        Ok(Link { config: config.clone(), tls: config.tls()?, runtime: DriverRuntime::start()? })
    }

    /// Opens a connection (on the runtime: call it inside [`DriverRuntime::run`]) and runs its
    /// task on the runtime.
    async fn connect(&self) -> Result<Client, Error> {
        let target = self.config.target();
        let port = self.config.config.get_ports().first().copied().unwrap_or(5432);
        for host in self.config.config.get_hosts() {
            if let Host::Tcp(name) = host
                && name.parse::<IpAddr>().is_err()
                && let Err(error) = tokio::net::lookup_host((name.as_str(), port)).await
            {
                return Err(Error::Postgres {
                    target,
                    problem: format!(
                        "the host name \"{name}\" is not known ({error}): check the host in the \
                         URL"
                    ),
                });
            }
        }
        // The TCP and TLS part has its own timeout; this one bounds the whole start-up too.
        let limit = self.config.config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        let connecting = self.config.config.connect(self.tls.clone());
        let (client, connection) = match tokio::time::timeout(limit * 2, connecting).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => return Err(connect_error(&self.config, &error)),
            Err(_) => {
                return Err(Error::DatabaseUnreachable {
                    target,
                    problem: format!(
                        "no answer within {} s: is the host up, and the port open to this \
                         machine?",
                        (limit * 2).as_secs()
                    ),
                });
            }
        };
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                let error = describe(&error);
                tracing::warn!(database = %target, "the connection to PostgreSQL ended: {error}");
            }
        });
        Ok(client)
    }
}

/// The writer's statements, prepared once per connection.
struct WriterStatements {
    create_windows: Statement,
    lock_windows: Statement,
    update_windows: Statement,
    insert_temperatures: Statement,
    insert_led_changes: Statement,
    upsert_devices: Statement,
    upsert_leds: Statement,
    upsert_alerts: Statement,
    upsert_cap: Statement,
}

impl WriterStatements {
    async fn prepare(client: &Client) -> Result<WriterStatements, tokio_postgres::Error> {
        // Rows missing for the batch's keys, created in one order so that two servers creating
        // the same rows wait for each other instead of deadlocking.
        let create_windows = client.prepare(
            "INSERT INTO replay_windows (device, key_id, top, seen, expected_will)
             SELECT device, key_id, 0, 0, 0 FROM UNNEST($1::text[], $2::int2[]) AS n(device, key_id)
             ORDER BY device COLLATE \"C\", key_id
             ON CONFLICT (device, key_id) DO NOTHING",
        );
        let lock_windows = client.prepare(
            "SELECT device, key_id, top, seen, expected_will FROM replay_windows
             WHERE (device, key_id) IN (SELECT * FROM UNNEST($1::text[], $2::int2[]))
             ORDER BY device COLLATE \"C\", key_id
             FOR UPDATE",
        );
        let update_windows = client.prepare(
            "UPDATE replay_windows AS w
             SET top = n.top, seen = n.seen, expected_will = n.expected_will
             FROM UNNEST($1::text[], $2::int2[], $3::int8[], $4::int8[], $5::int8[])
                  AS n(device, key_id, top, seen, expected_will)
             WHERE w.device = n.device AND w.key_id = n.key_id",
        );
        // In the batch's order (WITH ORDINALITY): the newest reading of a sensor has the
        // highest id, as `load` expects.
        let insert_temperatures = client.prepare(
            "INSERT INTO temperatures
             (device, sensor, received_ms, uptime_ms, milli_celsius, sequence)
             SELECT device, sensor, received_ms, uptime_ms, milli_celsius, sequence
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int4[], $6::int8[])
                  WITH ORDINALITY
                  AS n(device, sensor, received_ms, uptime_ms, milli_celsius, sequence, i)
             ORDER BY i",
        );
        let insert_led_changes = client.prepare(
            "INSERT INTO led_changes (device, led, received_ms, uptime_ms, led_on, sequence)
             SELECT device, led, received_ms, uptime_ms, led_on, sequence
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int8[])
                  WITH ORDINALITY AS n(device, led, received_ms, uptime_ms, led_on, sequence, i)
             ORDER BY i",
        );
        // `status_ms` moves only when the online flag changes (as in SQLite).
        let upsert_devices = client.prepare(
            "INSERT INTO devices (device, last_seen_ms, online, status_ms)
             SELECT device, last_seen_ms, online, last_seen_ms
             FROM UNNEST($1::text[], $2::int8[], $3::bool[]) AS n(device, last_seen_ms, online)
             ON CONFLICT (device) DO UPDATE
             SET last_seen_ms = excluded.last_seen_ms,
                 status_ms = CASE WHEN devices.online = excluded.online THEN devices.status_ms
                                  ELSE excluded.status_ms END,
                 online = excluded.online",
        );
        let upsert_leds = client.prepare(
            "INSERT INTO leds (device, led, led_on, at_ms)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[])
             ON CONFLICT (device, led) DO UPDATE
             SET led_on = excluded.led_on, at_ms = excluded.at_ms",
        );
        let upsert_alerts = client.prepare(
            "INSERT INTO alert_engine (id, state) VALUES (1, $1::text)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        );
        let upsert_cap = client.prepare(
            "INSERT INTO alert_caps (notifier, day, count) VALUES ($1::text, $2::int8, $3::int8)
             ON CONFLICT (notifier) DO UPDATE SET day = excluded.day, count = excluded.count",
        );
        // Sent together: one round trip.
        let (
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
        ) = tokio::try_join!(
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
        )?;
        Ok(WriterStatements {
            create_windows,
            lock_windows,
            update_windows,
            insert_temperatures,
            insert_led_changes,
            upsert_devices,
            upsert_leds,
            upsert_alerts,
            upsert_cap,
        })
    }
}

/// The writer's connection and its statements.
struct WriterSession {
    client: Client,
    statements: WriterStatements,
}

impl WriterSession {
    async fn start(link: &Link) -> Result<WriterSession, Error> {
        let client = link.connect().await?;
        let statements = WriterStatements::prepare(&client).await.map_err(db)?;
        Ok(WriterSession { client, statements })
    }
}

/// The writer: owned by the ingest worker. Connects when opened, and again after the connection
/// was lost.
pub struct PostgresStore {
    link: Arc<Link>,
    /// `None` after the connection was lost: the next call connects.
    session: Option<WriterSession>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.link.config.target())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `config` and migrates its schema (in one transaction, under
    /// an advisory lock).
    ///
    /// # Errors
    /// [`Error::DatabaseUnreachable`] when the server cannot be reached (refused, timed out,
    /// starting up), which may pass; [`Error::Postgres`] when it refuses this configuration
    /// (unknown host, authentication, missing database, TLS); [`Error::Config`] for a CA file
    /// that cannot be used; [`Error::SchemaTooNew`] for a database of a newer build. Each names
    /// the database as `host:port/database` and says what to do.
    pub fn open(config: &PostgresConfig) -> Result<PostgresStore, Error> {
        let link = Arc::new(Link::new(config)?);
        let session = link.runtime.run(async {
            let mut client = link.connect().await?;
            let migrated = tokio::time::timeout(OPERATION_TIMEOUT, migrate(&mut client)).await;
            migrated.map_err(|_| timed_out())??;
            let statements = WriterStatements::prepare(&client).await.map_err(db)?;
            Ok::<_, Error>(WriterSession { client, statements })
        })?;
        tracing::debug!(database = %config.target(), "connected to PostgreSQL");
        Ok(PostgresStore { link, session: Some(session) })
    }

    /// A reader for the HTTP handlers' history queries, on a connection of its own and this
    /// store's runtime.
    ///
    /// # Errors
    /// As [`PostgresStore::open`], for its connection.
    pub fn history(&self) -> Result<PostgresHistory, Error> {
        let history = PostgresHistory { link: Arc::clone(&self.link), session: Mutex::new(None) };
        history.session()?;
        Ok(history)
    }

    /// The writer's connection: the open one, or a new one when it was lost.
    fn session(&mut self) -> Result<&mut WriterSession, Error> {
        if self.session.as_ref().is_none_or(|session| session.client.is_closed()) {
            self.session = None;
            let link = &self.link;
            let session = link.runtime.run(WriterSession::start(link))?;
            tracing::info!(database = %link.config.target(), "connected to PostgreSQL again");
            self.session = Some(session);
        }
        self.session
            .as_mut()
            .ok_or_else(|| Error::TaskFailed("the PostgreSQL connection vanished".into()))
    }

    /// The result of an operation on the writer's connection (`None`: timed out). A failure
    /// that lost the connection drops it, so that the next call reconnects.
    fn settle<T>(&mut self, outcome: Option<Result<T, tokio_postgres::Error>>) -> Result<T, Error> {
        match outcome {
            Some(Ok(value)) => Ok(value),
            Some(Err(error)) => {
                let closed = self.session.as_ref().is_none_or(|s| s.client.is_closed());
                if closed || connection_lost(&error) {
                    self.session = None;
                }
                Err(db(error))
            }
            None => {
                self.session = None;
                Err(timed_out())
            }
        }
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let outcome = link.runtime.run_timed(load(&session.client));
        self.settle(outcome)
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let outcome = link.runtime.run_timed(write(session, commit));
        let skipped = self.settle(outcome)?;
        if skipped > 0 {
            tracing::warn!(
                frames = skipped,
                "frames the stored replay windows had already accepted (another server sharing \
                 the database, or a commit whose answer was lost) were not stored again"
            );
        }
        Ok(())
    }

    fn save_notifier_cap(&mut self, notifier: &str, cap: CapState) -> Result<(), Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let count = i64::from(cap.count);
        let statement = &session.statements.upsert_cap;
        let params: [&(dyn ToSql + Sync); 3] = [&notifier, &cap.day, &count];
        let saving = session.client.execute(statement, &params);
        let outcome = link.runtime.run_timed(saving);
        self.settle(outcome).map(drop)
    }

    fn prune(&mut self, cutoff: UnixMillis) -> Result<usize, Error> {
        let link = Arc::clone(&self.link);
        let session = self.session()?;
        let outcome = link.runtime.run_timed(delete_before(&mut session.client, cutoff));
        self.settle(outcome)
    }

    /// Closes the writer's connection; nothing is pending (every commit was a transaction).
    fn close(self: Box<Self>) -> Result<(), Error> {
        drop(self);
        Ok(())
    }
}

/// Deletes readings and LED changes received before `cutoff`, in one transaction.
async fn delete_before(
    client: &mut Client,
    cutoff: UnixMillis,
) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let params: [&(dyn ToSql + Sync); 1] = [&cutoff.0];
    let temperatures = tx.execute("DELETE FROM temperatures WHERE received_ms < $1", &params);
    let leds = tx.execute("DELETE FROM led_changes WHERE received_ms < $1", &params);
    let (temperatures, leds) = tokio::try_join!(temperatures, leds)?;
    tx.commit().await?;
    Ok(usize::try_from(temperatures + leds).unwrap_or(usize::MAX))
}

/// Creates the bookkeeping table if needed and applies the migrations this database lacks, in
/// one transaction, holding an advisory lock so that two servers starting together migrate once.
async fn migrate(client: &mut Client) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version BIGINT NOT NULL
        )",
    )
    .await
    .map_err(db)?;
    let row =
        tx.query_opt("SELECT version FROM schema_version WHERE id = 1", &[]).await.map_err(db)?;
    let version: i64 = match row {
        Some(row) => row.try_get(0).map_err(db)?,
        None => 0,
    };
    if version > POSTGRES_SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { found: version, known: POSTGRES_SCHEMA_VERSION });
    }
    if version == POSTGRES_SCHEMA_VERSION {
        return Ok(());
    }
    for migration in MIGRATIONS.iter().skip(usize::try_from(version.max(0)).unwrap_or(0)) {
        tx.batch_execute(migration).await.map_err(db)?;
    }
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&POSTGRES_SCHEMA_VERSION],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(from = version, to = POSTGRES_SCHEMA_VERSION, "PostgreSQL schema migrated");
    Ok(())
}

async fn load(client: &Client) -> Result<Snapshot, tokio_postgres::Error> {
    let mut snapshot = Snapshot::default();
    let (windows, devices, leds, temperatures, alerts, caps) = tokio::try_join!(
        client.query("SELECT device, key_id, top, seen, expected_will FROM replay_windows", &[]),
        client.query("SELECT device, last_seen_ms, online FROM devices", &[]),
        client.query("SELECT device, led, led_on, at_ms FROM leds", &[]),
        // The newest reading of each sensor: its highest id.
        client.query(
            "SELECT DISTINCT ON (device, sensor) device, sensor, milli_celsius, received_ms
             FROM temperatures ORDER BY device, sensor, id DESC",
            &[],
        ),
        client.query_opt("SELECT state FROM alert_engine WHERE id = 1", &[]),
        client.query("SELECT notifier, day, count FROM alert_caps", &[]),
    )?;
    for row in windows {
        let (device, key_id): (String, i16) = (row.try_get(0)?, row.try_get(1)?);
        let state = ReplayState {
            top: to_u64(row.try_get(2)?),
            seen: to_u64(row.try_get(3)?),
            expected_will: to_u64(row.try_get(4)?),
        };
        let Ok(key_id) = u8::try_from(key_id) else {
            tracing::error!("ignoring a stored window with an invalid key id: {key_id}");
            continue;
        };
        if let Some(device) = name("device id", &device, DeviceId::new) {
            snapshot.windows.insert((device, KeyId(key_id)), state);
        }
    }
    for row in devices {
        let (device, last_seen, online): (String, i64, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let Some(device) = name("device id", &device, DeviceId::new) else { continue };
        let entry = snapshot.devices.entry(device).or_default();
        entry.last_seen = Some(UnixMillis(last_seen));
        entry.online = online;
    }
    for row in leds {
        let (device, led, on, at): (String, String, bool, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let (Some(device), Some(led)) =
            (name("device id", &device, DeviceId::new), name("LED name", &led, LedName::new))
        else {
            continue;
        };
        let point = LedPoint { led: led.clone(), state: LedState::from(on), at: UnixMillis(at) };
        snapshot.devices.entry(device).or_default().leds.insert(led, point);
    }
    for row in temperatures {
        let (device, sensor, milli, at): (String, String, i32, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let (Some(device), Some(sensor)) = (
            name("device id", &device, DeviceId::new),
            name("sensor name", &sensor, SensorName::new),
        ) else {
            continue;
        };
        let point = TemperaturePoint {
            sensor: sensor.clone(),
            temperature: MilliCelsius(milli),
            at: UnixMillis(at),
        };
        snapshot.devices.entry(device).or_default().temperatures.insert(sensor, point);
    }
    if let Some(row) = alerts {
        let json: String = row.try_get(0)?;
        snapshot.alerts = serde_json::from_str::<EngineState>(&json)
            .inspect_err(|error| {
                tracing::error!("the stored alert state is unreadable, starting afresh: {error}")
            })
            .ok();
    }
    for row in caps {
        let (notifier, day, count): (String, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        // A count that does not fit (a tampered row) counts as a full day.
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        snapshot.notifier_caps.insert(notifier, CapState { day, count });
    }
    Ok(snapshot)
}

/// The window rule of a frame, from what the model kept of its message.
fn replay_rule(frame: &AcceptedFrame) -> ReplayRule {
    match frame.update.observation {
        Observation::Reading(_) => ReplayRule::Plain,
        Observation::Online { .. } => ReplayRule::Online,
        Observation::Offline => ReplayRule::Will,
    }
}

/// What the stored window says of a frame of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recheck {
    /// New to the stored window: store it; the window becomes this.
    New(ReplayState),
    /// Accepted without a window (the teaching mode): store it, the window unchanged.
    Unchecked,
    /// The stored window has accepted it (or moved too far past it): not stored again.
    Stored,
}

/// Checks `frame` again against the `stored` window (see the module documentation).
fn recheck(stored: ReplayState, frame: &AcceptedFrame) -> Recheck {
    let Ok(sequence) = SequenceNumber::new(frame.sequence) else { return Recheck::Unchecked };
    if ReplayWindow::restore(frame.window).check(sequence).is_ok() {
        // Its own window does not record it: it was accepted without one.
        return Recheck::Unchecked;
    }
    match ReplayWindow::restore(stored).state_after_rule(sequence, replay_rule(frame)) {
        Ok(state) => Recheck::New(state),
        Err(_) => Recheck::Stored,
    }
}

/// The batch's columns, one array per column: what the `UNNEST` statements take.
#[derive(Default)]
struct Columns<'a> {
    temperature_devices: Vec<&'a str>,
    sensors: Vec<&'a str>,
    temperature_times: Vec<i64>,
    temperature_uptimes: Vec<i64>,
    milli_celsius: Vec<i32>,
    temperature_sequences: Vec<i64>,
    led_devices: Vec<&'a str>,
    led_names: Vec<&'a str>,
    led_times: Vec<i64>,
    led_uptimes: Vec<i64>,
    led_on: Vec<bool>,
    led_sequences: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, frame: &'a AcceptedFrame) {
        let device = frame.device().as_str();
        let at = frame.update.at.0;
        let uptime = i64::from(frame.uptime.0);
        let sequence = to_i64(frame.sequence);
        match &frame.update.observation {
            Observation::Reading(Reading::Temperature(point)) => {
                self.temperature_devices.push(device);
                self.sensors.push(point.sensor.as_str());
                self.temperature_times.push(at);
                self.temperature_uptimes.push(uptime);
                self.milli_celsius.push(point.temperature.0);
                self.temperature_sequences.push(sequence);
            }
            Observation::Reading(Reading::Led(point)) => {
                self.led_devices.push(device);
                self.led_names.push(point.led.as_str());
                self.led_times.push(at);
                self.led_uptimes.push(uptime);
                self.led_on.push(point.state.is_on());
                self.led_sequences.push(sequence);
            }
            Observation::Online { .. } | Observation::Offline => {}
        }
    }
}

/// The devices' rows and LEDs, one array per column.
#[derive(Default)]
struct DeviceColumns<'a> {
    devices: Vec<&'a str>,
    last_seen: Vec<i64>,
    online: Vec<bool>,
    led_devices: Vec<&'a str>,
    leds: Vec<&'a str>,
    led_on: Vec<bool>,
    led_at: Vec<i64>,
}

impl<'a> DeviceColumns<'a> {
    fn new(devices: &[(&'a DeviceId, &'a DeviceState)]) -> DeviceColumns<'a> {
        let mut columns = DeviceColumns::default();
        for (device, state) in devices {
            // Only a device heard from has a row: one known only from retained frames was
            // never seen.
            if let Some(last_seen) = state.last_seen {
                columns.devices.push(device.as_str());
                columns.last_seen.push(last_seen.0);
                columns.online.push(state.online);
            }
            for point in state.leds.values() {
                columns.led_devices.push(device.as_str());
                columns.leds.push(point.led.as_str());
                columns.led_on.push(point.state.is_on());
                columns.led_at.push(point.at.0);
            }
        }
        columns
    }
}

/// One commit's transaction; returns how many frames the stored windows had already accepted
/// (left out).
async fn write(
    session: &mut WriterSession,
    commit: &Commit<'_>,
) -> Result<usize, tokio_postgres::Error> {
    let statements = &session.statements;
    let tx = session.client.transaction().await?;
    let keys: Vec<(&str, i16)> = commit
        .frames
        .iter()
        .map(|frame| (frame.device().as_str(), i16::from(frame.key_id.0)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut stored = vec![ReplayState::default(); keys.len()];
    if !keys.is_empty() {
        let (devices, key_ids): (Vec<&str>, Vec<i16>) = keys.iter().copied().unzip();
        tx.execute(&statements.create_windows, &[&devices, &key_ids]).await?;
        for row in tx.query(&statements.lock_windows, &[&devices, &key_ids]).await? {
            let key: (String, i16) = (row.try_get(0)?, row.try_get(1)?);
            if let Ok(index) = keys.binary_search(&(key.0.as_str(), key.1)) {
                stored[index] = ReplayState {
                    top: to_u64(row.try_get(2)?),
                    seen: to_u64(row.try_get(3)?),
                    expected_will: to_u64(row.try_get(4)?),
                };
            }
        }
    }
    let mut windows = stored.clone();
    let mut columns = Columns::default();
    let mut skipped = 0;
    for frame in commit.frames {
        let key = (frame.device().as_str(), i16::from(frame.key_id.0));
        let Ok(index) = keys.binary_search(&key) else { continue };
        match recheck(windows[index], frame) {
            Recheck::New(state) => {
                windows[index] = state;
                columns.push(frame);
            }
            Recheck::Unchecked => columns.push(frame),
            Recheck::Stored => skipped += 1,
        }
    }
    let mut moved = WindowColumns::default();
    for ((key, before), after) in keys.iter().zip(&stored).zip(&windows) {
        if before != after {
            moved.push(*key, *after);
        }
    }
    let device_columns = DeviceColumns::new(commit.devices);
    let alerts = commit.alerts.map(|state| {
        // Serialising plain data into a String cannot fail.
        serde_json::to_string(state).unwrap_or_default()
    });
    let temperatures: [&(dyn ToSql + Sync); 6] = [
        &columns.temperature_devices,
        &columns.sensors,
        &columns.temperature_times,
        &columns.temperature_uptimes,
        &columns.milli_celsius,
        &columns.temperature_sequences,
    ];
    let led_changes: [&(dyn ToSql + Sync); 6] = [
        &columns.led_devices,
        &columns.led_names,
        &columns.led_times,
        &columns.led_uptimes,
        &columns.led_on,
        &columns.led_sequences,
    ];
    let devices: [&(dyn ToSql + Sync); 3] =
        [&device_columns.devices, &device_columns.last_seen, &device_columns.online];
    let leds: [&(dyn ToSql + Sync); 4] = [
        &device_columns.led_devices,
        &device_columns.leds,
        &device_columns.led_on,
        &device_columns.led_at,
    ];
    let alert_state: [&(dyn ToSql + Sync); 1] = [&alerts];
    // Sent together (pipelined), all in the one transaction.
    tokio::try_join!(
        moved.write(&tx, &statements.update_windows),
        execute_unless(
            columns.temperature_devices.is_empty(),
            &tx,
            &statements.insert_temperatures,
            &temperatures,
        ),
        execute_unless(
            columns.led_devices.is_empty(),
            &tx,
            &statements.insert_led_changes,
            &led_changes,
        ),
        execute_unless(
            device_columns.devices.is_empty(),
            &tx,
            &statements.upsert_devices,
            &devices,
        ),
        execute_unless(device_columns.led_devices.is_empty(), &tx, &statements.upsert_leds, &leds),
        execute_unless(alerts.is_none(), &tx, &statements.upsert_alerts, &alert_state),
    )?;
    tx.commit().await?;
    Ok(skipped)
}

/// Runs `statement` unless `skip` (an empty batch column): 0 rows then.
async fn execute_unless(
    skip: bool,
    tx: &Transaction<'_>,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    if skip { Ok(0) } else { tx.execute(statement, params).await }
}

/// The windows a commit moved, one array per column.
#[derive(Default)]
struct WindowColumns<'a> {
    devices: Vec<&'a str>,
    key_ids: Vec<i16>,
    tops: Vec<i64>,
    seen: Vec<i64>,
    expected_wills: Vec<i64>,
}

impl<'a> WindowColumns<'a> {
    fn push(&mut self, (device, key_id): (&'a str, i16), state: ReplayState) {
        self.devices.push(device);
        self.key_ids.push(key_id);
        self.tops.push(to_i64(state.top));
        self.seen.push(to_i64(state.seen));
        self.expected_wills.push(to_i64(state.expected_will));
    }

    async fn write(
        &self,
        tx: &Transaction<'_>,
        statement: &Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        execute_unless(
            self.devices.is_empty(),
            tx,
            statement,
            &[&self.devices, &self.key_ids, &self.tops, &self.seen, &self.expected_wills],
        )
        .await
    }
}

/// The reader's connection and its statement.
struct HistorySession {
    client: Client,
    temperatures: Statement,
}

/// The HTTP handlers' reader: history queries on a connection of its own (readers never wait
/// for the writer), sharing the store's runtime. Concurrent queries share the connection
/// (pipelined). Reconnects after the connection was lost. Blocking: call it from
/// `spawn_blocking` (or anywhere: inside a runtime it blocks on a thread of its own).
pub struct PostgresHistory {
    link: Arc<Link>,
    session: Mutex<Option<Arc<HistorySession>>>,
}

impl fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresHistory")
            .field("database", &self.link.config.target())
            .finish_non_exhaustive()
    }
}

impl PostgresHistory {
    /// The open connection, or a new one.
    fn session(&self) -> Result<Arc<HistorySession>, Error> {
        // A panic while holding the lock leaves nothing half done: the slot is still valid.
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(session) = slot.as_ref().filter(|session| !session.client.is_closed()) {
            return Ok(Arc::clone(session));
        }
        let link = &self.link;
        let session = link.runtime.run(async {
            let client = link.connect().await?;
            let temperatures = client
                .prepare(
                    "SELECT sensor, received_ms, milli_celsius FROM temperatures
                     WHERE device = $1::text AND received_ms >= $2::int8 AND received_ms <= $3::int8
                       AND ($4::text IS NULL OR sensor = $4::text)
                     ORDER BY received_ms DESC, id DESC LIMIT $5::int8",
                )
                .await
                .map_err(db)?;
            Ok::<_, Error>(HistorySession { client, temperatures })
        })?;
        let session = Arc::new(session);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Forgets `session` after it failed, unless another call replaced it already.
    fn lost(&self, session: &Arc<HistorySession>) {
        let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, session)) {
            *slot = None;
        }
    }
}

impl HistoryStore for PostgresHistory {
    fn temperatures(&self, query: &HistoryQuery) -> Result<Vec<TemperaturePoint>, Error> {
        let session = self.session()?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let sensor = query.sensor.as_ref().map(SensorName::as_str);
        let device = query.device.as_str();
        let rows = self.link.runtime.run_timed(session.client.query(
            &session.temperatures,
            &[&device, &query.since.0, &query.until.0, &sensor, &limit],
        ));
        let rows = match rows {
            Some(Ok(rows)) => rows,
            Some(Err(error)) => {
                if connection_lost(&error) || session.client.is_closed() {
                    self.lost(&session);
                }
                return Err(db(error));
            }
            None => {
                self.lost(&session);
                return Err(timed_out());
            }
        };
        let mut points = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let (sensor, at, milli): (String, i64, i32) = (
                row.try_get(0).map_err(db)?,
                row.try_get(1).map_err(db)?,
                row.try_get(2).map_err(db)?,
            );
            if let Some(sensor) = name("sensor name", &sensor, SensorName::new) {
                points.push(TemperaturePoint {
                    sensor,
                    temperature: MilliCelsius(milli),
                    at: UnixMillis(at),
                });
            }
        }
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let config =
            PostgresConfig::parse("postgres://ledtemp:s3cret@db.example:5433/ledtemp").unwrap();
        assert_eq!(config.target(), "db.example:5433/ledtemp");
        assert_eq!(config.to_string(), "postgres://ledtemp@db.example:5433/ledtemp?sslmode=prefer");
        assert!(!format!("{config:?}").contains("s3cret"));
        let config = PostgresConfig::parse(
            "postgresql://ledtemp@[::1],db2.example:5432/readings?sslmode=require&password=s3cret",
        )
        .unwrap();
        assert_eq!(config.target(), "[::1]:5432,db2.example:5432/readings");
        assert!(config.to_string().ends_with("?sslmode=require"), "{config}");
        assert!(!format!("{config} {config:?}").contains("s3cret"));
        // Without a database name, PostgreSQL uses the user's.
        let config = PostgresConfig::parse("postgres://ledtemp@localhost").unwrap();
        assert_eq!(config.target(), "localhost:5432/ledtemp");
    }

    #[test]
    fn a_bad_url_is_a_config_error_without_the_password() {
        for (url, expected) in [
            ("mysql://u:s3cret@host/db", "not a PostgreSQL URL"),
            ("postgres://u:s3cret@host/db?sslmode=verify-full", "invalid value"),
            ("postgres://u:s3cret@[::1/db", "invalid value"),
            ("postgres://u:s3cret@host/db?nonsense=1", "unknown option"),
            ("postgres://u:s3cret@/db", "names no host"),
            ("postgres://host/db?password=s3cret", "names no user"),
            ("postgres://u:s3c@ret@host:notaport/db", "invalid value"),
        ] {
            let error = PostgresConfig::parse(url).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::Config(_)), "{url}: {message}");
            assert!(message.contains(expected), "{url}: {message}");
            assert!(message.contains(URL_FORM), "{url}: {message}");
            assert!(!message.contains("s3c"), "the password leaked: {message}");
        }
    }

    #[test]
    fn redaction_hides_every_form_of_password() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u:p@w:x@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=pw&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    fn frame(sequence: u64, window: ReplayState, observation: Observation) -> AcceptedFrame {
        AcceptedFrame {
            update: crate::model::DeviceUpdate {
                device: DeviceId::new("pi").unwrap(),
                at: UnixMillis(1),
                observation,
                retained: false,
            },
            key_id: KeyId(1),
            sequence,
            uptime: ledtemp_core::Uptime(0),
            window,
        }
    }

    fn reading() -> Observation {
        Observation::Reading(Reading::Temperature(TemperaturePoint {
            sensor: SensorName::new("cpu").unwrap(),
            temperature: MilliCelsius(1),
            at: UnixMillis(1),
        }))
    }

    fn after(state: ReplayState, sequence: u64) -> ReplayState {
        ReplayWindow::restore(state).state_after(SequenceNumber::new(sequence).unwrap()).unwrap()
    }

    #[test]
    fn a_frame_is_checked_again_against_the_stored_window() {
        let empty = ReplayState::default();
        let five = after(empty, 5);
        // One server: the stored window is the one this server had.
        assert_eq!(recheck(empty, &frame(5, five, reading())), Recheck::New(five));
        // Another server stored 5 already: not again; it stored 7, and 5 is still new.
        assert_eq!(recheck(five, &frame(5, five, reading())), Recheck::Stored);
        let seven = after(empty, 7);
        assert_eq!(recheck(seven, &frame(5, five, reading())), Recheck::New(after(seven, 5)));
        // Far behind the stored window: too old.
        assert_eq!(recheck(after(empty, 500), &frame(5, five, reading())), Recheck::Stored);
        // The teaching mode's frames carry an unchanged window: stored as they are.
        assert_eq!(recheck(five, &frame(9, empty, reading())), Recheck::Unchecked);
        // The will rule, against the stored window.
        let online = ReplayWindow::new()
            .state_after_rule(SequenceNumber::new(10).unwrap(), ReplayRule::Online)
            .unwrap();
        let gone = ReplayWindow::restore(online)
            .state_after_rule(SequenceNumber::new(11).unwrap(), ReplayRule::Will)
            .unwrap();
        assert_eq!(recheck(online, &frame(11, gone, Observation::Offline)), Recheck::New(gone));
        assert_eq!(recheck(gone, &frame(11, gone, Observation::Offline)), Recheck::Stored);
    }
}
