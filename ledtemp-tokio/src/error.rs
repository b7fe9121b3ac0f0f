//! The one error type of `ledtemp-tokio`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a connection to the broker could not be set up.
///
/// Failures of a connection attempt itself (broker down, TLS handshake refused) are not here: the
/// node retries those with backoff and reports them as `RunEvent::ConnectFailed`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The CA certificate file could not be read.
    CaFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The CA certificate file holds no PEM certificate, or one that is not valid X.509.
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The name the broker's certificate is checked against is neither a DNS name nor an IP
    /// address.
    ServerName(String),
    /// rustls refused the TLS configuration.
    Tls(rustls::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CaFile { path, source } => {
                write!(f, "cannot read the CA certificate file {}: {source}", path.display())
            }
            Error::CaCertificate { path, reason } => write!(
                f,
                "CA certificate file {}: {reason} (give the PEM certificate of the CA that signed \
                 the broker's certificate)",
                path.display()
            ),
            Error::ServerName(name) => write!(
                f,
                "broker server name {name:?} is not a DNS name or an IP address (give the name \
                 in the broker's certificate)"
            ),
            Error::Tls(error) => write!(f, "TLS configuration refused: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::CaFile { source, .. } => Some(source),
            Error::Tls(error) => Some(error),
            _ => None,
        }
    }
}
