//! The embedded MQTT broker: rumqttd in this process with one MQTT v5 listener, so the server (or
//! the demo) runs without Mosquitto. Nodes (minimq) and the server's subscriber (rumqttc) both
//! speak MQTT v5, so no v4 listener is opened; an MQTT 3.1.1 client such as a plain
//! `mosquitto_sub` cannot connect (`mosquitto_sub -V 5` can).
//!
//! The broker has no TLS and no passwords: anyone who reaches its port can publish and subscribe.
//! The server still accepts only sealed frames (`docs/security.md`), so nobody can read, forge or
//! replay a reading through it; it can be flooded, which is why it listens on loopback unless told
//! otherwise.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use tokio::sync::watch;

use crate::Error;
use crate::mqtt::MAX_PACKET_SIZE;

/// Most MQTT connections the embedded broker holds at once.
const MAX_CONNECTIONS: usize = 100;

/// A running rumqttd. It cannot be stopped: rumqttd 0.20 has no way to, so it keeps its port
/// until the process exits (dropping this handle leaves it running).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    /// Turns `true` (or closes) when the broker's thread has ended.
    stopped: watch::Receiver<bool>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on its own thread with one MQTT v5 listener on `listen`; port 0 picks a
    /// free port. Returns once the listener's address is known to be free; the broker binds it
    /// a moment later, and clients that come earlier retry.
    ///
    /// An address in use (another broker, such as a Mosquitto service) or not of this machine is
    /// [`Error::EmbeddedBroker`], naming the address.
    pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, Error> {
        // rumqttd reports a listener that cannot bind only in its log, so find out here, and
        // learn the port when 0 was asked for. If another program takes the port in the moment
        // between, rumqttd's listener fails, its thread ends and `stopped` resolves.
        let addr = TcpListener::bind(listen)
            .and_then(|probe| probe.local_addr())
            .map_err(|source| Error::EmbeddedBroker { addr: listen, source })?;
        let server = rumqttd::ServerSettings {
            name: "v5".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 5_000,
                max_payload_size: usize::try_from(MAX_PACKET_SIZE).unwrap_or(usize::MAX),
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections: MAX_CONNECTIONS,
                max_outgoing_packet_count: 200,
                max_segment_size: 1 << 20,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v5: Some(HashMap::from([("v5".to_owned(), server)])),
            ..Default::default()
        };
        let (stopped_tx, stopped) = watch::channel(false);
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                // `start` returns only when every listener has ended (rumqttd logs why).
                match rumqttd::Broker::new(config).start() {
                    Ok(()) => tracing::error!(%addr, "the embedded MQTT broker stopped"),
                    Err(error) => {
                        tracing::error!(%addr, "the embedded MQTT broker stopped: {error:?}");
                    }
                }
                let _ = stopped_tx.send(true);
            })
            .map_err(|e| Error::io("starting the embedded MQTT broker", e))?;
        tracing::info!(%addr, "embedded MQTT v5 broker started");
        Ok(EmbeddedBroker { addr, stopped })
    }

    /// The address it listens on (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves, with the error to report, once the broker has stopped: only when its listener
    /// failed, since nothing stops it otherwise. Cancel-safe, and may be awaited again.
    pub async fn stopped(&mut self) -> Error {
        // An error means the thread ended without saying so (a panic): stopped all the same.
        let _ = self.stopped.wait_for(|stopped| *stopped).await;
        Error::TaskFailed(format!(
            "the embedded MQTT broker on {} stopped (its log above says why)",
            self.addr
        ))
    }
}

/// The address a client on this machine uses to reach a listener on `listen`: the loopback
/// address of the same family when `listen` is a wildcard (`0.0.0.0`, `[::]`).
pub(crate) fn local_client_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_reach_a_wildcard_listener_on_loopback() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(local_client_addr(at("0.0.0.0:1883")), at("127.0.0.1:1883"));
        assert_eq!(local_client_addr(at("[::]:1884")), at("[::1]:1884"));
        assert_eq!(local_client_addr(at("192.168.1.5:1883")), at("192.168.1.5:1883"));
    }

    #[test]
    fn a_taken_address_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = EmbeddedBroker::start(addr).unwrap_err();
        assert!(matches!(&error, Error::EmbeddedBroker { addr: a, .. } if *a == addr));
        let message = error.to_string();
        assert!(message.contains(&addr.to_string()) && message.contains("--broker"), "{message}");
    }
}
