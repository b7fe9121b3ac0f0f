//! A Mosquitto of a test's own, locked down as docs/broker.md describes: a TLS listener on a free
//! port of 127.0.0.1 (a CA and a server certificate made here with rcgen), no anonymous clients,
//! a password file made with `mosquitto_passwd -b`, an ACL (each device user may only write
//! `ledtemp/<its user name>/#`, the server user may only read `ledtemp/#`), and
//! `use_username_as_clientid` (so nobody can take over another client's session by its id).
//!
//! Only Mosquitto: rumqttd, the fallback of the plain broker tests, has no ACLs, so these tests
//! cannot run on it. Without Mosquitto [`SecureBroker::start`] prints why and returns `None`, and
//! the test returns early; `LEDTEMP_REQUIRE_MOSQUITTO=1` (CI) turns that into a failure.
//!
//! Also here: a TCP proxy that records every byte it forwards (an eavesdropper on the link) and
//! rumqttc options for a client over TLS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledtemp_tokio::BrokerTls;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The server's broker user: it may read `ledtemp/#` and write nothing.
pub const SERVER_USER: &str = "ledtemp-web";

/// Every wait on the broker ends after this.
pub const BROKER_WAIT: Duration = Duration::from_secs(10);

/// The ACL: the server reads everything under `ledtemp/`, each device writes only under its own
/// id (`%u` is the user name, which is the device id), nobody else may do anything.
const ACL: &str = "\
# the server reads every device's frames and publishes nothing
user ledtemp-web
topic read ledtemp/#

# a device (user name = device id) publishes under its own topics only, and reads nothing
pattern write ledtemp/%u/#
";

fn find(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    on_path.into_iter().chain(fallbacks.iter().map(PathBuf::from)).find(|path| path.is_file())
}

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA, and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM.
pub struct TestCertificates {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
}

impl TestCertificates {
    pub fn generate(ca_name: &str) -> TestCertificates {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "ledtemp test broker");
        let server_key = KeyPair::generate().unwrap();
        let issuer: &Issuer<'_, KeyPair> = &ca;
        let server = params.signed_by(&server_key, issuer).unwrap();
        TestCertificates {
            ca_pem: ca.pem(),
            server_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// A Mosquitto with TLS, passwords and the ACL, killed when dropped.
pub struct SecureBroker {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// The PEM file of the CA that signed its certificate.
    pub ca_file: PathBuf,
    /// Holds the certificates, the password file, the ACL, the config and the log.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl SecureBroker {
    /// Starts Mosquitto with one account per `(user, password)`, and waits until it listens.
    /// `None` (after printing why) when Mosquitto is not installed, unless
    /// `LEDTEMP_REQUIRE_MOSQUITTO=1`, which makes that a panic.
    pub async fn start(accounts: &[(&str, &str)]) -> Option<SecureBroker> {
        let required = std::env::var("LEDTEMP_REQUIRE_MOSQUITTO").as_deref() == Ok("1");
        let mosquitto = find("mosquitto", &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]);
        let passwd = find("mosquitto_passwd", &["/usr/bin/mosquitto_passwd"]);
        let (Some(mosquitto), Some(passwd)) = (mosquitto, passwd) else {
            assert!(
                !required,
                "LEDTEMP_REQUIRE_MOSQUITTO=1 but mosquitto or mosquitto_passwd is not installed \
                 (apt-get install mosquitto mosquitto-clients)"
            );
            eprintln!(
                "skipped: this test needs mosquitto and mosquitto_passwd (apt-get install \
                 mosquitto); rumqttd cannot stand in, it has no ACLs"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let certificates = TestCertificates::generate("ledtemp test CA");
        std::fs::write(path("ca.pem"), &certificates.ca_pem).unwrap();
        std::fs::write(path("server.pem"), &certificates.server_pem).unwrap();
        std::fs::write(path("server.key"), &certificates.server_key_pem).unwrap();
        std::fs::write(path("acl"), ACL).unwrap();
        for (index, (user, password)) in accounts.iter().enumerate() {
            let mut command = Command::new(&passwd);
            if index == 0 {
                command.arg("-c");
            }
            let status = command
                .arg("-b")
                .arg(path("passwd"))
                .args([user, password])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_passwd failed for {user}");
        }
        let port = free_port();
        // `user root`: when the tests run as root, stay root so the files in this private
        // directory stay readable (Mosquitto would otherwise switch to the `mosquitto` user); as
        // any other user it has no effect.
        let config = format!(
            "user root\n\
             persistence false\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             acl_file {acl}\n\
             max_packet_size 4096\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             listener {port} 127.0.0.1\n\
             use_username_as_clientid true\n\
             certfile {cert}\n\
             keyfile {key}\n",
            passwd = path("passwd").display(),
            acl = path("acl").display(),
            cert = path("server.pem").display(),
            key = path("server.key").display(),
        );
        std::fs::write(path("mosquitto.conf"), config).unwrap();
        let log = std::fs::File::create(path("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(path("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut broker = SecureBroker { port, ca_file: path("ca.pem"), dir, child };
        broker.wait_listening().await;
        Some(broker)
    }

    async fn wait_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + BROKER_WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}): {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not open port {}: {}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What Mosquitto logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// TLS settings that trust this broker's CA and check its certificate for 127.0.0.1.
    pub fn tls(&self) -> BrokerTls {
        BrokerTls::from_ca_file(&self.ca_file, "127.0.0.1").unwrap()
    }

    /// rumqttc options for `user` (with `password`; none when `None`) over TLS.
    pub fn client_options(&self, client_id: &str, user: Option<(&str, &str)>) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = user {
            options.set_credentials(user, password);
        }
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(self.tls().client_config())));
        options
    }

    /// Writes `password` to a file of mode 0600 in the broker's directory and returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `127.0.0.1:target` that records every byte in both directions: what an
/// eavesdropper on the link sees.
pub struct RecordingProxy {
    pub port: u16,
    recorded: Arc<Mutex<Vec<u8>>>,
    accept: JoinHandle<()>,
}

impl RecordingProxy {
    pub async fn start(target: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&recorded);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, Arc::clone(&log)),
                        pump(server_read, client_write, log),
                    );
                });
            }
        });
        RecordingProxy { port, recorded, accept }
    }

    /// Everything that went through so far, both directions interleaved.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        log.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown().await;
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A file in `dir` (for a CA that is not the broker's).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
