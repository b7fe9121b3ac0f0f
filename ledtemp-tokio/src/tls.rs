//! TLS to the broker: rustls (ring provider) over tokio, under the core's minimq publisher.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embedded_io_adapters::tokio_1::FromTokio;
use ledtemp_core::Connector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Largest CA certificate file read (a whole system bundle is about 200 KiB).
pub const MAX_CA_FILE_LEN: u64 = 1024 * 1024;

/// How the node checks the broker over TLS: the CA certificates it trusts and the name the
/// broker's certificate must carry.
///
/// Built once from files ([`BrokerTls::from_ca_file`]), so a missing or malformed file is an
/// error at start, never a connection that keeps failing. Cheap to clone. Two settings are equal
/// when they were loaded from the same file for the same server name.
#[derive(Clone)]
pub struct BrokerTls {
    ca_file: PathBuf,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl BrokerTls {
    /// Trusts the CA certificates in the PEM file `ca_file` (one or more `CERTIFICATE` blocks;
    /// other blocks are skipped) and expects the broker's certificate to be for `server_name` (a
    /// DNS name or an IP address; usually the broker's host name). TLS 1.2 and 1.3, ring.
    ///
    /// # Errors
    /// [`Error::CaFile`] when the file cannot be read (or is over [`MAX_CA_FILE_LEN`]),
    /// [`Error::CaCertificate`] when it holds no certificate or a malformed one,
    /// [`Error::ServerName`] for a name that is neither a DNS name nor an IP address.
    pub fn from_ca_file(ca_file: impl Into<PathBuf>, server_name: &str) -> Result<Self, Error> {
        let ca_file = ca_file.into();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| Error::ServerName(server_name.to_owned()))?;
        let roots = load_roots(&ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(BrokerTls { ca_file, server_name, config: Arc::new(config) })
    }

    /// The CA certificate file the settings were loaded from.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The name the broker's certificate is checked against.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// The rustls client configuration (ring provider, the CA's roots, no client certificate),
    /// for other MQTT clients that should trust the same broker.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }
}

impl PartialEq for BrokerTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file && self.server_name == other.server_name
    }
}

impl Eq for BrokerTls {}

impl fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerTls")
            .field("ca_file", &self.ca_file)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let too_big = || Error::CaFile {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "larger than 1 MiB"),
    };
    let metadata =
        std::fs::metadata(path).map_err(|source| Error::CaFile { path: path.into(), source })?;
    if metadata.len() > MAX_CA_FILE_LEN {
        return Err(too_big());
    }
    let pem = std::fs::read(path).map_err(|source| Error::CaFile { path: path.into(), source })?;
    let bad = |reason: String| Error::CaCertificate { path: path.to_path_buf(), reason };
    let mut roots = RootCertStore::empty();
    for (index, certificate) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let certificate = certificate
            .map_err(|e| bad(format!("certificate {}: not valid PEM: {e}", index + 1)))?;
        roots
            .add(certificate)
            .map_err(|e| bad(format!("certificate {}: not a usable CA: {e}", index + 1)))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM CERTIFICATE block in it".into()));
    }
    Ok(roots)
}

/// Opens TLS connections to the broker, one per MQTT connection: TCP, then a TLS handshake that
/// checks the broker's certificate against [`BrokerTls`].
#[derive(Debug, Clone)]
pub struct TlsConnector {
    host: String,
    port: u16,
    tls: BrokerTls,
}

impl TlsConnector {
    /// Connects to `host:port` (8883 is MQTT's TLS port) and checks the broker with `tls`.
    pub fn new(host: impl Into<String>, port: u16, tls: BrokerTls) -> Self {
        TlsConnector { host: host.into(), port, tls }
    }
}

impl Connector for TlsConnector {
    type Io = TlsTransport;
    /// Connection refused, and every handshake failure (an untrusted certificate, a wrong name)
    /// as an `io::Error` wrapping the `rustls::Error`.
    type Error = io::Error;

    async fn connect(&mut self) -> Result<TlsTransport, io::Error> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config());
        let stream = connector.connect(self.tls.server_name.clone(), stream).await?;
        Ok(TlsTransport(FromTokio::new(stream)))
    }
}

/// A TLS connection to the broker as an `embedded-io-async` transport.
///
/// Every write is flushed: tokio-rustls may keep encrypted bytes buffered when the socket is
/// momentarily full, and minimq never calls `flush`, so an MQTT packet could otherwise sit there
/// until the next one.
pub struct TlsTransport(FromTokio<TlsStream<TcpStream>>);

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl embedded_io_async::ErrorType for TlsTransport {
    type Error = io::Error;
}

impl embedded_io_async::Read for TlsTransport {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        self.0.read(buf).await
    }
}

impl embedded_io_async::Write for TlsTransport {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        let written = self.0.write(buf).await?;
        self.0.flush().await?;
        Ok(written)
    }

    async fn flush(&mut self) -> Result<(), io::Error> {
        self.0.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_typed_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("ledtemp-tokio-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let error = BrokerTls::from_ca_file(&missing, "broker").unwrap_err();
        assert!(matches!(&error, Error::CaFile { path, .. } if *path == missing), "{error}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let error = BrokerTls::from_ca_file(&empty, "broker").unwrap_err();
        assert!(matches!(error, Error::CaCertificate { .. }), "{error}");
        assert!(error.to_string().contains("empty.pem"), "{error}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let error = BrokerTls::from_ca_file(&garbage, "broker").unwrap_err();
        assert!(matches!(error, Error::CaCertificate { .. }), "{error}");

        let error = BrokerTls::from_ca_file(&garbage, "not a name").unwrap_err();
        assert!(matches!(error, Error::ServerName(_)), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
