//! The one error type of `ledtemp-tokio`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What went wrong in `ledtemp-tokio`: a broker connection that could not be set up, or (as the
/// error that [`run_node`](crate::run_node) reports in `RunEvent::ConnectFailed` and
/// `RunEvent::LinkLost`) one that failed.
///
/// The node retries failed connections with backoff; only the set-up errors stop a program.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A connection to the broker failed: it could not be reached, it refused, or a connection
    /// was lost. Displayed, it names the broker and says which ("cannot reach the MQTT broker at
    /// 10.0.0.2:1883: Connection refused (os error 111)", "lost the connection to the MQTT broker
    /// at ...").
    Broker {
        /// The broker, `host:port`.
        address: String,
        /// What the MQTT client said.
        source: ledtemp_core::MqttError<io::Error>,
    },
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
            Error::Broker { address, source } => write!(f, "{}", source.at(address)),
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
            Error::Broker { source, .. } => Some(source),
            Error::CaFile { source, .. } => Some(source),
            Error::Tls(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledtemp_core::MqttError;

    fn at_broker(source: MqttError<io::Error>) -> String {
        Error::Broker { address: "10.0.0.2:1883".into(), source }.to_string()
    }

    #[test]
    fn broker_errors_name_the_broker_and_say_what_happened_in_words() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            at_broker(MqttError::Connect(refused)),
            "cannot reach the MQTT broker at 10.0.0.2:1883: connection refused"
        );
        assert_eq!(
            at_broker(MqttError::Closed),
            "lost the connection to the MQTT broker at 10.0.0.2:1883: it closed the connection"
        );
        assert_eq!(
            at_broker(MqttError::Transport(embedded_io_async::ErrorKind::ConnectionReset)),
            "lost the connection to the MQTT broker at 10.0.0.2:1883: the connection was reset"
        );
        assert_eq!(
            at_broker(MqttError::Timeout),
            "the MQTT broker at 10.0.0.2:1883 did not answer in time"
        );
        // The operating system's own words, never Rust's debug output.
        let os = io::Error::from_raw_os_error(111);
        let message = at_broker(MqttError::Connect(os));
        assert!(
            message.starts_with("cannot reach the MQTT broker at 10.0.0.2:1883: "),
            "{message}"
        );
        assert!(!message.contains("Os {") && !message.contains("kind:"), "{message}");
    }
}
