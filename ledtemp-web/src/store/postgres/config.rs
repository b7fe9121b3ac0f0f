//! Where the database is and how to reach it: the URL (shown without its password) and TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledtemp_tokio::BrokerTls;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::CONNECT_TIMEOUT;
use super::connection::describe;
use crate::Error;

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
    pub(super) config: Box<tokio_postgres::Config>,
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
    pub(super) fn tls(&self) -> Result<MakeRustlsConnect, Error> {
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
}
