//! The broker of a plain test: Mosquitto when it is installed, else rumqttd in this process.
//!
//! Mosquitto is started on a free port of 127.0.0.1 with a configuration of the test's own,
//! anonymous clients allowed ([`Mosquitto`]). Without it (or with `LEDTEMP_TEST_BROKER=rumqttd`)
//! rumqttd runs in-process behind a [`Proxy`], so that the test can still stop and resume it;
//! `LEDTEMP_REQUIRE_MOSQUITTO=1` makes a missing Mosquitto a failure instead.

use std::net::SocketAddr;

use ledtemp_tokio::BrokerAddress;
use tempfile::TempDir;

use crate::mosquitto::{Mosquitto, MosquittoConfig, REQUIRE_MOSQUITTO_ENV};
use crate::mosquitto::{find_program, mosquitto_required};
use crate::net::wait_for_port;
use crate::proxy::Proxy;

/// The environment variable that forces the fallback: `LEDTEMP_TEST_BROKER=rumqttd`.
pub const TEST_BROKER_ENV: &str = "LEDTEMP_TEST_BROKER";

/// Which broker a test got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A Mosquitto process of the test's own.
    Mosquitto,
    /// rumqttd in this process, behind a proxy that can be cut.
    Rumqttd,
}

/// A broker on `127.0.0.1:port` that a test can stop and start again on the same port; stopped
/// when dropped (rumqttd itself runs on until the test process exits: it cannot be stopped, so
/// its proxy is cut instead).
#[derive(Debug)]
pub struct TestBroker {
    /// Which broker it is.
    pub kind: BrokerKind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    process: Process,
}

#[derive(Debug)]
enum Process {
    Mosquitto(Mosquitto),
    Rumqttd(Proxy),
}

impl TestBroker {
    /// Starts Mosquitto, or rumqttd when Mosquitto is not installed (see the module docs), and
    /// waits until it accepts connections.
    pub async fn start() -> TestBroker {
        let forced_fallback = std::env::var(TEST_BROKER_ENV).as_deref() == Ok("rumqttd");
        match find_program("mosquitto") {
            Some(binary) if !forced_fallback => {
                let dir = TempDir::new().unwrap();
                let mosquitto = Mosquitto::start(&binary, dir, &MosquittoConfig::anonymous()).await;
                TestBroker {
                    kind: BrokerKind::Mosquitto,
                    port: mosquitto.port(),
                    process: Process::Mosquitto(mosquitto),
                }
            }
            _ => {
                assert!(
                    !mosquitto_required(),
                    "{REQUIRE_MOSQUITTO_ENV}=1 but mosquitto is not installed (apt-get install \
                     mosquitto)"
                );
                let proxy = Proxy::start(start_rumqttd().await).await;
                TestBroker {
                    kind: BrokerKind::Rumqttd,
                    port: proxy.port(),
                    process: Process::Rumqttd(proxy),
                }
            }
        }
    }

    /// Stops the broker abruptly: Mosquitto is killed; rumqttd's proxy closes its port and cuts
    /// every connection.
    pub fn stop(&mut self) {
        match &mut self.process {
            Process::Mosquitto(mosquitto) => mosquitto.stop(),
            Process::Rumqttd(proxy) => proxy.close(),
        }
    }

    /// Starts the broker again on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        match &mut self.process {
            Process::Mosquitto(mosquitto) => mosquitto.resume().await,
            Process::Rumqttd(proxy) => proxy.open().await,
        }
    }

    /// Where a node finds this broker, connecting as `client_id` without credentials.
    pub fn address(&self, client_id: &str) -> BrokerAddress {
        BrokerAddress::new("127.0.0.1", self.port, client_id)
    }
}

/// Starts the server's embedded broker (rumqttd, MQTT v5) on a free port and returns the port
/// once it accepts connections. It cannot be stopped: it runs until the test process exits.
async fn start_rumqttd() -> u16 {
    let broker = ledtemp_web::EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap_or_else(|e| panic!("starting rumqttd: {e}"));
    let port = broker.addr().port();
    wait_for_port(port).await;
    port
}
