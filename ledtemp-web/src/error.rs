//! The one error type of `ledtemp-web`.

use std::fmt;

/// Why a received frame was refused: the label of the counter it is counted under.
///
/// Each reason is one Prometheus label value (`ledtemp_frames_rejected_total{reason="..."}`) and
/// one key of the `rejected` object in `/api/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectReason {
    /// The device is not in the keyring, or has no key with the frame's key id.
    UnknownDevice,
    /// The frame failed authentication (wrong key, altered byte, frame moved to another topic).
    BadTag,
    /// The sequence number was accepted before or is below the replay window, or an offline
    /// status that is not the current connection's Last Will.
    Replay,
    /// The topic does not follow the scheme, the frame is truncated or of an unknown version, or
    /// an authentic payload does not decode.
    Malformed,
    /// The MQTT payload is longer than a frame can be.
    Oversize,
    /// The frame's key was revoked, or its rotation grace period is over (docs/keys.md).
    Revoked,
    /// Accepting the frame would exceed a cap: the number of devices the server tracks, or of
    /// LEDs or sensors of one device.
    Limit,
    /// An authentic offline status (Last Will) that cannot be checked against its connection: it
    /// is not the will of the last online status accepted. A broker delivers such a will from its
    /// retained store to a server that never saw the connection, or after the node came back; a
    /// replayed will looks the same. Refused, and counted apart from replays.
    StaleWill,
    /// A genuine frame the broker delivered again that the replay window had already accepted:
    /// from its retained store (at a (re)subscription), or a QoS 1 frame sent again (DUP flag)
    /// because the server had committed it but stopped before its acknowledgement reached the
    /// broker. It was stored before, and is not stored again. Counted apart from replays so that
    /// a restart does not look like an attack: only the broker sets those flags on what it
    /// delivers (a replay published by an attacker arrives with neither).
    Redelivered,
}

impl RejectReason {
    /// Every reason, in the order they are reported.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::UnknownDevice,
        RejectReason::BadTag,
        RejectReason::Replay,
        RejectReason::Malformed,
        RejectReason::Oversize,
        RejectReason::Revoked,
        RejectReason::Limit,
        RejectReason::StaleWill,
        RejectReason::Redelivered,
    ];

    /// The label: `unknown_device`, `bad_tag`, `replay`, `malformed`, `oversize`, `revoked`,
    /// `limit`, `stale_will` or `redelivered`.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::BadTag => "bad_tag",
            RejectReason::Replay => "replay",
            RejectReason::Malformed => "malformed",
            RejectReason::Oversize => "oversize",
            RejectReason::Revoked => "revoked",
            RejectReason::Limit => "limit",
            RejectReason::StaleWill => "stale_will",
            RejectReason::Redelivered => "redelivered",
        }
    }

    /// Position in [`RejectReason::ALL`].
    pub(crate) const fn index(self) -> usize {
        match self {
            RejectReason::UnknownDevice => 0,
            RejectReason::BadTag => 1,
            RejectReason::Replay => 2,
            RejectReason::Malformed => 3,
            RejectReason::Oversize => 4,
            RejectReason::Revoked => 5,
            RejectReason::Limit => 6,
            RejectReason::StaleWill => 7,
            RejectReason::Redelivered => 8,
        }
    }

    /// The reason a core error stands for when it refuses a received frame.
    pub fn from_core(error: ledtemp_core::Error) -> RejectReason {
        use ledtemp_core::Error as E;
        match error {
            E::Oversize => RejectReason::Oversize,
            E::UnknownKey(_) => RejectReason::UnknownDevice,
            E::Unauthentic => RejectReason::BadTag,
            E::Replayed | E::TooOld => RejectReason::Replay,
            _ => RejectReason::Malformed,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything that can go wrong in `ledtemp-web`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A received frame was refused; it changed nothing but a counter. `cause` is the core's
    /// reason, for the log only.
    Rejected {
        /// The counter it is counted under.
        reason: RejectReason,
        /// What the core said.
        cause: ledtemp_core::Error,
    },
    /// The configuration (file, environment or flags) is invalid; the message says which setting.
    Config(String),
    /// The keyring could not be loaded; the message names the file and the entry.
    Keyring(String),
    /// The database failed; nothing of the operation was written. The source is the database
    /// driver's error.
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// The database at `path` cannot be used; `problem` says why and what to do.
    Database {
        /// The database file.
        path: std::path::PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The database was written by a newer `ledtemp-web` (its schema version is higher than this
    /// build knows): upgrade, or point `--database` at another database. Nothing was changed.
    SchemaTooNew {
        /// The version the database has.
        found: i64,
        /// The highest version this build knows.
        known: i64,
    },
    /// The PostgreSQL server at `target` (`host:port/database`) cannot be reached: the connection
    /// was refused, timed out or dropped, or the server is starting or full. Trying again later
    /// may work: `serve` retries at start, and the store reconnects by itself while running.
    DatabaseUnreachable {
        /// `host:port/database`, never the password.
        target: String,
        /// What happened, and what to check.
        problem: String,
    },
    /// The PostgreSQL database at `target` (`host:port/database`) refuses this server: an unknown
    /// host, a failed authentication, a database that does not exist, a TLS certificate that
    /// is not trusted. Trying again will not help until the URL or the server is fixed.
    Postgres {
        /// `host:port/database`, never the password.
        target: String,
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// A file or socket operation failed; `context` says which.
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The embedded MQTT broker cannot listen on `addr`: another program (often a Mosquitto
    /// service) holds the port, or the address is not one of this machine's.
    EmbeddedBroker {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A frame passed every check but could not be stored (the database failed); it was
    /// dropped and nothing changed.
    Dropped(String),
    /// A background task (ingest, MQTT, HTTP) stopped unexpectedly.
    TaskFailed(String),
}

impl Error {
    /// A rejection for `cause`, with the reason it maps to.
    pub fn rejected(cause: ledtemp_core::Error) -> Error {
        Error::Rejected { reason: RejectReason::from_core(cause), cause }
    }

    /// The rejection reason, when this is a refused frame.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Error::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rejected { reason, cause } => write!(f, "frame rejected ({reason}): {cause}"),
            Error::Config(message) => write!(f, "configuration: {message}"),
            Error::Keyring(message) => write!(f, "keyring: {message}"),
            Error::Store(error) => write!(f, "database: {error}"),
            Error::Database { path, problem } => {
                write!(f, "database {}: {problem}", path.display())
            }
            Error::SchemaTooNew { found, known } => write!(
                f,
                "the database has schema version {found}, newer than the {known} this \
                 ledtemp-web knows: upgrade ledtemp-web, or use another database"
            ),
            Error::DatabaseUnreachable { target, problem } => {
                write!(f, "cannot reach PostgreSQL at {target}: {problem}")
            }
            Error::Postgres { target, problem } => write!(f, "PostgreSQL at {target}: {problem}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::EmbeddedBroker { addr, source } => {
                write!(f, "embedded MQTT broker: cannot listen on {addr}: {source}")?;
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    write!(
                        f,
                        " (another program, such as a Mosquitto service, is using it: stop it, \
                         or use that broker with --broker {addr} instead of --embedded-broker, \
                         or give --embedded-broker another ADDR:PORT)"
                    )?;
                }
                Ok(())
            }
            Error::Dropped(message) => write!(f, "frame dropped, database failed: {message}"),
            Error::TaskFailed(message) => write!(f, "background task failed: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Rejected { cause, .. } => Some(cause),
            Error::Store(error) => Some(error.as_ref()),
            Error::Io { source, .. } | Error::EmbeddedBroker { source, .. } => Some(source),
            _ => None,
        }
    }
}
