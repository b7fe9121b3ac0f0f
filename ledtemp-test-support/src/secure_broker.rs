//! A Mosquitto locked down as `docs/broker.md` describes: a TLS listener (a CA and a server
//! certificate made here with rcgen), no anonymous clients, a password file made with
//! `mosquitto_passwd -b`, an ACL (each device user may only write `ledtemp/<its user name>/#`,
//! the server user may only read `ledtemp/#`), and `use_username_as_clientid` (so nobody can
//! take over another client's session by its id).
//!
//! Only Mosquitto: rumqttd, the fallback of the plain broker, has no ACLs and cannot stand in.
//! Without Mosquitto [`SecureBroker::start`] prints why and returns `None`, and the test returns
//! early; `LEDTEMP_REQUIRE_MOSQUITTO=1` (CI) turns that into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ledtemp_tokio::BrokerTls;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use tempfile::TempDir;

use crate::mosquitto::{Mosquitto, MosquittoConfig, mosquitto_programs};

/// The server's broker user: it may read what devices publish and write commands.
pub const SERVER_USER: &str = "ledtemp-web";

/// The ACL of docs/broker.md: the server reads every device's frames and writes commands; each
/// device writes only its own frames and reads only its own commands (`%u` is the user name,
/// which is the device id); nobody else may do anything.
const ACL: &str = "\
# the server reads every device's frames and writes the commands to them
user ledtemp-web
topic read ledtemp/+/led/+
topic read ledtemp/+/temp/+
topic read ledtemp/+/status
topic write ledtemp/+/cmd/+

# a device (user name = device id) writes its own frames and reads its own commands, nothing else
pattern write ledtemp/%u/led/+
pattern write ledtemp/%u/temp/+
pattern write ledtemp/%u/status
pattern read ledtemp/%u/cmd/+
";

/// A CA, and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA's certificate.
    pub ca_pem: String,
    /// The server's certificate.
    pub server_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
}

impl TestCertificates {
    /// A new CA called `ca_name`, and a server certificate it signed.
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
#[derive(Debug)]
pub struct SecureBroker {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// The PEM file of the CA that signed its certificate.
    pub ca_file: PathBuf,
    mosquitto: Mosquitto,
}

impl SecureBroker {
    /// Starts Mosquitto with one account per `(user, password)`, and waits until it listens.
    /// `None` (after printing why) when Mosquitto is not installed, unless
    /// `LEDTEMP_REQUIRE_MOSQUITTO=1`, which makes that a panic.
    pub async fn start(accounts: &[(&str, &str)]) -> Option<SecureBroker> {
        let [mosquitto, passwd] = mosquitto_programs(
            "this test (a TLS broker with accounts and an ACL; rumqttd has neither)",
            ["mosquitto", "mosquitto_passwd"],
        )?;
        let dir = TempDir::new().unwrap();
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
        let config = MosquittoConfig {
            global: format!(
                "per_listener_settings false\n\
                 allow_anonymous false\n\
                 password_file {passwd}\n\
                 acl_file {acl}\n\
                 max_packet_size 4096\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                passwd = path("passwd").display(),
                acl = path("acl").display(),
            ),
            listener: format!(
                "use_username_as_clientid true\ncertfile {cert}\nkeyfile {key}\n",
                cert = path("server.pem").display(),
                key = path("server.key").display(),
            ),
            persistence: false,
        };
        let ca_file = path("ca.pem");
        let mosquitto = Mosquitto::start(&mosquitto, dir, &config).await;
        Some(SecureBroker { port: mosquitto.port(), ca_file, mosquitto })
    }

    /// Its directory: certificates, password file, ACL, configuration and log.
    pub fn dir(&self) -> &Path {
        self.mosquitto.dir()
    }

    /// What Mosquitto logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.mosquitto.log()
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

    /// Writes `contents` to the file `name` in the broker's directory and returns its path (a
    /// CA that is not the broker's, say).
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `password` to a file of mode 0600 in the broker's directory and returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write_file(name, &format!("{password}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}
