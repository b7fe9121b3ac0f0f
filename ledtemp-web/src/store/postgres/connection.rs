//! Connecting and staying connected: the driver's runtime, connections with their timeouts, and
//! what a failure means (retry or fix), in words that never hold the password.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{CONNECT_TIMEOUT, OPERATION_TIMEOUT, PostgresConfig};
use crate::Error;

/// An error and its causes on one line: `tokio-postgres` puts the interesting part (the
/// server's message, the operating system's error) in the source.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
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

pub(super) fn db(error: tokio_postgres::Error) -> Error {
    Error::Store(Box::new(DriverError(error)))
}

/// An operation that did not finish within [`OPERATION_TIMEOUT`].
pub(super) fn timed_out() -> Error {
    Error::Store(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from PostgreSQL within {} s", OPERATION_TIMEOUT.as_secs()),
    )))
}

/// Whether the connection is gone after `error` (as opposed to a statement that failed on a
/// working connection): then the next call reconnects.
pub(super) fn connection_lost(error: &tokio_postgres::Error) -> bool {
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
    if tls_failed(error) {
        return refused(format!(
            "{}: with sslmode=require, give the CA that signed the server's certificate with \
             --database-ca and use the host name the certificate is for; or, if the server has \
             no TLS, another sslmode",
            describe(error)
        ));
    }
    refused(describe(error))
}

/// Whether connecting failed in the TLS handshake: a rustls error among the causes (an
/// `io::Error` hides the error it wraps from `source`), or the server refusing TLS.
fn tls_failed(error: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let wrapped = cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if cause.is::<rustls::Error>() || wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        source = cause.source();
    }
    // tokio-postgres's own words for a TLS failure, such as a server without TLS.
    error.to_string().starts_with("error performing TLS handshake")
}

/// The backend's own tokio runtime: the connections' tasks run on its one worker thread, and
/// the blocking trait methods wait on it.
pub(super) struct DriverRuntime {
    handle: tokio::runtime::Handle,
    /// Taken by `Drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl DriverRuntime {
    pub(super) fn start() -> Result<Arc<DriverRuntime>, Error> {
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
    pub(super) fn run<F>(&self, future: F) -> F::Output
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

    /// Runs `future` on the runtime in the background, until it ends or the runtime stops.
    pub(super) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }

    /// Runs `future`, giving up after [`OPERATION_TIMEOUT`] (`None`).
    pub(super) fn run_timed<F>(&self, future: F) -> Option<F::Output>
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

/// An open connection: the client, and the task that runs it on the driver's runtime (it ends,
/// after telling the server, once the client and its statements are dropped).
pub(super) struct Connection {
    pub(super) client: Client,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// What both connections need: the configuration, TLS and the runtime.
pub(super) struct Link {
    pub(super) config: PostgresConfig,
    tls: MakeRustlsConnect,
    pub(super) runtime: Arc<DriverRuntime>,
}

impl Link {
    pub(super) fn new(config: &PostgresConfig) -> Result<Link, Error> {
        Ok(Link { config: config.clone(), tls: config.tls()?, runtime: DriverRuntime::start()? })
    }

    /// Opens a connection (on the runtime: call it inside [`DriverRuntime::run`]) and runs its
    /// task on the runtime.
    pub(super) async fn connect(&self) -> Result<Connection, Error> {
        self.connect_with(None).await
    }

    /// As [`connect`](Self::connect), handing every notification (`LISTEN`) the server sends
    /// on it to `notifications`.
    pub(super) async fn connect_listening(
        &self,
        notifications: mpsc::UnboundedSender<Notification>,
    ) -> Result<Connection, Error> {
        self.connect_with(Some(notifications)).await
    }

    async fn connect_with(
        &self,
        notifications: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<Connection, Error> {
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
        let task = tokio::spawn(async move {
            let ended = match notifications {
                None => connection.await,
                Some(notifications) => {
                    let mut connection = connection;
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(notification))) => {
                                let _ = notifications.send(notification);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break Err(error),
                            None => break Ok(()),
                        }
                    }
                }
            };
            if let Err(error) = ended {
                let error = describe(&error);
                tracing::warn!(database = %target, "the connection to PostgreSQL ended: {error}");
            }
        });
        Ok(Connection { client, task })
    }
}
