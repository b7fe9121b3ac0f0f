//! The MQTT subscriber: rumqttc's MQTT v5 client, subscribed to `ledtemp/+/#` (or a shared
//! subscription), handing every PUBLISH to the ingest pipeline; and the broker connection's
//! security settings: TLS (rustls with the ring provider, trusting a CA file) and the password
//! (from a file readable by its owner only).
//!
//! TLS and broker accounts are defence in depth: every frame is sealed end to end, so the server
//! accepts only authentic, fresh frames even through a broker that is not trusted. They keep the
//! topics (which devices exist, when they talk) off the network and strangers off the broker
//! (docs/broker.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ledtemp_tokio::BrokerTls;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::ingest::{IncomingFrame, WorkerInput};
use crate::live::LiveState;
use crate::model::UnixMillis;
use crate::{Error, RejectReason};

/// Largest MQTT packet the subscriber accepts (announced to the broker in CONNECT as the v5
/// maximum packet size, so a v5 broker drops bigger ones instead of sending them). A ledtemp frame
/// is at most 301 bytes and a topic 78: 4 KiB leaves room for MQTT overhead and still lets an
/// oversized frame of a few KiB reach the pipeline, where it is counted.
pub const MAX_PACKET_SIZE: u32 = 4 * 1024;

/// First and longest wait between reconnection attempts (doubling in between). The longest is
/// short: after a broker outage the server must be back before the nodes, which reconnect too,
/// flush their queues of LED changes into a broker with no subscriber (a 30 s cap lost them).
/// One connection attempt every 2 s to one broker costs nothing.
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));

/// Most QoS 1 frames the broker may send the server before it acknowledges them (MQTT v5's
/// Receive Maximum, which Mosquitto honours from 2.0.13 in place of its `max_inflight_messages`;
/// 2.0.11 and 2.0.12 ignore it once a backlog exists: docs/broker.md). The server acknowledges a
/// frame only after committing it, so this is the flow control between the broker and the
/// database: four batches ([`MAX_BATCH`](crate::MAX_BATCH)), so that frames keep arriving while
/// a commit waits for the disk (with two, a slow commit left the database idle and cost SQLite
/// up to 16 % of its flood rate: docs/performance.md). The ingest queue
/// ([`INGEST_QUEUE`](crate::INGEST_QUEUE)) holds more, so the subscriber never waits on QoS 1
/// frames alone.
pub const RECEIVE_MAXIMUM: u16 = 4 * crate::MAX_BATCH as u16;
const _: () = assert!(RECEIVE_MAXIMUM as usize + 64 <= crate::INGEST_QUEUE);

/// Room in the MQTT client's request queue for the acknowledgements owed at once: every frame
/// the pipeline can hold (the ingest queue and the batch being committed), even from a broker
/// that sends more than [`RECEIVE_MAXIMUM`], plus the subscription. An acknowledgement that finds
/// no room would leave its frame with the broker until the next connection.
const ACK_ROOM: usize = crate::INGEST_QUEUE + crate::MAX_BATCH + 16;

/// MQTT's port without TLS.
pub const MQTT_PORT: u16 = 1883;

/// MQTT's port over TLS.
pub const MQTT_TLS_PORT: u16 = 8883;

/// Longest broker password file read.
const MAX_PASSWORD_FILE_LEN: u64 = 4096;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id: the name of the server's session at the broker. Stable across restarts,
    /// unique per server on one broker.
    pub client_id: String,
    /// How long the broker keeps the session (subscription and queued QoS 1 frames) after the
    /// server disconnects; zero: a clean session on every connection.
    pub session_expiry: Duration,
    /// When QoS 1 frames are acknowledged to the broker: after commit (the default), or on
    /// receipt (the baseline of `benches/ingest.rs`; loses frames on a crash).
    pub acknowledge: Acknowledge,
    /// MQTT v5 shared subscription group: `$share/<group>/<filter>` for each filter, so several
    /// servers split the stream.
    pub shared_group: Option<String>,
    /// Broker user name and password.
    pub credentials: Option<(String, String)>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// TLS to the broker; `None` for plain TCP. The broker's certificate must be for `host`.
    pub tls: Option<BrokerTls>,
}

impl SubscriberConfig {
    /// The topic filters subscribed to: what devices publish
    /// ([`TOPIC_FILTERS_FROM_DEVICES`](ledtemp_core::TOPIC_FILTERS_FROM_DEVICES)), not the
    /// commands servers send them; each prefixed with the shared group, if any.
    pub fn filters(&self) -> Vec<String> {
        self.shared(&ledtemp_core::TOPIC_FILTERS_FROM_DEVICES)
    }

    /// `filters`, prefixed with the shared group, if any.
    fn shared(&self, filters: &[&str]) -> Vec<String> {
        filters
            .iter()
            .map(|filter| match &self.shared_group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => (*filter).to_owned(),
            })
            .collect()
    }
}

fn is_oversize(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
        ))
    )
}

/// The TLS settings for a broker at `host`: with `tls` on, trust the CA certificates of
/// `ca_file` (PEM) and check the broker's certificate against `host`.
///
/// # Errors
/// [`Error::Config`] naming the setting: `broker-ca` without `broker-tls` or the other way round,
/// a CA file that cannot be read or holds no valid certificate, a host that cannot be checked
/// against a certificate.
pub fn broker_tls(
    tls: bool,
    ca_file: Option<&Path>,
    host: &str,
) -> Result<Option<BrokerTls>, Error> {
    match (tls, ca_file) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(Error::Config(
            "broker-ca is set but broker-tls is not: turn TLS on, or drop broker-ca".into(),
        )),
        (true, None) => Err(Error::Config(
            "broker-tls needs broker-ca: the PEM file of the CA that signed the broker's \
             certificate"
                .into(),
        )),
        (true, Some(ca_file)) => BrokerTls::from_ca_file(ca_file, host)
            .map(Some)
            .map_err(|e| Error::Config(format!("broker-ca: {e}"))),
    }
}

/// The broker password, given directly (`password`) or as a file (`password_file`, one line;
/// a trailing newline is dropped). The file must be readable by its owner only, as key files.
///
/// # Errors
/// [`Error::Config`] naming the setting: both given, a file others may read, a file that cannot
/// be read, is not UTF-8, is over 4 KiB or is empty.
pub fn broker_password(
    password: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<Option<String>, Error> {
    let path = match (password, password_file) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "broker-password and broker-password-file are both set: give one".into(),
            ));
        }
        (password, None) => return Ok(password),
        (None, Some(path)) => path,
    };
    let bad =
        |what: String| Error::Config(format!("broker-password-file {}: {what}", path.display()));
    ledtemp_keys::check_private(&path).map_err(|e| bad(e.to_string()))?;
    let len = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?.len();
    if len > MAX_PASSWORD_FILE_LEN {
        return Err(bad("larger than 4 KiB: not a password file".into()));
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?);
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(Some(password.to_owned()))
}

/// When the subscriber acknowledges a QoS 1 frame to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acknowledge {
    /// Once the pipeline has committed or rejected it: a crash at any moment loses nothing the
    /// broker accepted (docs/reliability.md). The default, and the only setting `serve` offers.
    #[default]
    AfterCommit,
    /// As soon as it is received, before it is committed (what servers before this one did):
    /// frames received but not yet committed are lost when the server stops or crashes. Kept
    /// only as the baseline that `benches/ingest.rs` measures acknowledging after commit against.
    OnReceipt,
}

/// Acknowledges one QoS 1 frame to the broker. The subscriber hands it to the pipeline with the
/// frame, and the ingest worker sends it once the frame is committed or rejected, never before:
/// a frame the broker delivered stays the broker's to deliver again until the server's database
/// has it (docs/reliability.md).
pub struct DeliveryAck {
    link: Arc<AckLink>,
    pkid: u16,
    connection: u64,
}

/// What every [`DeliveryAck`] of one subscriber shares.
struct AckLink {
    client: AsyncClient,
    /// Counts the connections that ended. An acknowledgement belongs to the connection its frame
    /// came on: on a later one its packet id may name another frame.
    connection: AtomicU64,
    /// Whether an acknowledgement failed already (logged once).
    ack_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DeliveryAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryAck").field("pkid", &self.pkid).finish_non_exhaustive()
    }
}

impl DeliveryAck {
    /// Sends the acknowledgement (PUBACK). Does nothing if the connection the frame came on is
    /// gone: the broker sends the frame again on the next connection (flagged DUP), and that
    /// copy is acknowledged in turn, after the replay window refused it if it was stored.
    pub fn send(self) {
        if self.link.connection.load(Ordering::Acquire) != self.connection {
            return;
        }
        let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new(), None);
        publish.pkid = self.pkid;
        if let Err(error) = self.link.client.try_ack(&publish) {
            // The server stops (the client is gone), or, which ACK_ROOM rules out, the queue is
            // full: the broker keeps the frame and sends it again on the next connection.
            if !self.link.ack_failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    pkid = self.pkid,
                    "an acknowledgement could not be sent ({error}): the broker will send its \
                     frame again, counted as redelivered (logged once per subscriber)"
                );
            }
        }
    }
}

/// What the server asks of a running [`run_subscriber`], in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberControl {
    /// Subscribed, handing frames to the pipeline.
    Run,
    /// Stopping: hand the pipeline nothing more (frames that still arrive stay unacknowledged,
    /// and the broker sends them again to the next start), but keep the connection, so that the
    /// acknowledgements of the frames the pipeline still commits reach the broker.
    Drain,
    /// The pipeline is done: disconnect cleanly (the broker keeps the session) and return.
    Disconnect,
}

/// Longest wait for the DISCONNECT to be sent when the subscriber stops.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Runs the subscriber until `control` says [`SubscriberControl::Disconnect`] (or its sender is
/// gone), `frames` is closed (the pipeline stopped), or the task is dropped. Reconnects with
/// backoff after any error and subscribes again on every connection. The link state goes to
/// `live.stats` (connected means connected *and* subscribed).
///
/// The session is persistent unless `config.session_expiry` is zero: the broker keeps the
/// subscription and the QoS 1 frames that arrive while the server is away, and sends again what
/// was sent but not acknowledged. Acknowledgements are manual: each QoS 1 frame goes to the
/// pipeline with its [`DeliveryAck`]. Retained frames are asked for only when the subscription is
/// new, so a restart does not receive every device's retained frames again.
///
/// Cancellation: dropping the future drops the connection without DISCONNECT; nothing is lost
/// (the broker sends what was not acknowledged again), but frames the pipeline committed after
/// that are counted as redelivered at the next start. [`SubscriberControl`] stops it cleanly.
pub async fn run_subscriber(
    config: SubscriberConfig,
    live: Arc<LiveState>,
    frames: mpsc::Sender<WorkerInput>,
    mut control: watch::Receiver<SubscriberControl>,
    commands: crate::CommandLink,
) {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(config.keep_alive);
    let expiry = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX);
    options.set_clean_start(expiry == 0);
    if expiry > 0 {
        options.set_session_expiry_interval(Some(expiry));
    }
    options.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    let manual_acks = config.acknowledge == Acknowledge::AfterCommit;
    options.set_manual_acks(manual_acks);
    options.set_max_packet_size(Some(MAX_PACKET_SIZE));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.client_config())));
    }
    let filters = config.filters();
    let filter = filters.join(" ");
    // Before commands existed the server subscribed to everything under the root; a session
    // kept from then would still deliver the commands (and each frame twice) through it.
    let legacy = config.shared(&[ledtemp_core::TOPIC_FILTER_ALL]);
    // Room for every acknowledgement the broker can be owed at once, and the subscription.
    let (client, mut events) = AsyncClient::new(options, ACK_ROOM);
    commands.set(client.clone());
    let link = Arc::new(AckLink {
        client: client.clone(),
        connection: AtomicU64::new(0),
        ack_failed: std::sync::atomic::AtomicBool::new(false),
    });
    let (first, longest) = RECONNECT_BACKOFF;
    let mut backoff = first;
    let mut logged_down = false;
    // Whether a connection ever came up: a broker never reached is not a connection "lost".
    let mut ever_connected = false;
    // `None` once draining: the pipeline gets nothing more.
    let mut frames = Some(frames);
    let mut phase = SubscriberControl::Run;
    let mut connected = false;
    loop {
        let polled = tokio::select! {
            biased;
            next = next_control(&mut control, phase) => {
                if step_down(next, &mut phase, &mut frames) {
                    break;
                }
                continue;
            }
            polled = events.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                tracing::info!(
                    broker = %format!("{}:{}", config.host, config.port),
                    %filter,
                    client_id = %config.client_id,
                    session_resumed = connack.session_present,
                    "connected to the broker"
                );
                backoff = first;
                logged_down = false;
                ever_connected = true;
                connected = true;
                if connack.session_present {
                    for old in &legacy {
                        if let Err(error) = client.try_unsubscribe(old.clone()) {
                            tracing::error!("cannot unsubscribe {old}: {error}");
                        }
                    }
                }
                let subscriptions = filters.iter().map(|filter| {
                    let mut subscription = Filter::new(filter.clone(), QoS::AtLeastOnce);
                    subscription.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
                    subscription
                });
                if let Err(error) = client.try_subscribe_many(subscriptions) {
                    tracing::error!("cannot subscribe: {error}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|code| !matches!(code, SubscribeReasonCode::Success(_)));
                if refused {
                    tracing::error!(
                        %filter,
                        codes = ?ack.return_codes,
                        "the broker refused the subscription"
                    );
                } else {
                    live.stats.set_broker_connected(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Draining: not handed on, not acknowledged; the broker keeps it.
                let Some(sender) = &frames else { continue };
                let ack = (manual_acks && publish.qos != QoS::AtMostOnce).then(|| DeliveryAck {
                    link: Arc::clone(&link),
                    pkid: publish.pkid,
                    connection: link.connection.load(Ordering::Acquire),
                });
                let frame = IncomingFrame {
                    topic: publish.topic.to_vec(),
                    payload: publish.payload.to_vec(),
                    received: UnixMillis::now(),
                    retained: publish.retain,
                    duplicate: publish.dup,
                };
                // Bounded: when the pipeline falls behind, this waits, and the broker holds back.
                // A stop while waiting drops the frame (unacknowledged).
                let sent = tokio::select! {
                    biased;
                    next = next_control(&mut control, phase) => {
                        if step_down(next, &mut phase, &mut frames) {
                            break;
                        }
                        continue;
                    }
                    sent = sender.send(WorkerInput::Frame(frame, ack)) => sent,
                };
                if sent.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(_))) => {
                live.stats.set_broker_connected(false);
            }
            Ok(_) => {}
            Err(error) => {
                // Acknowledgements still owed on this connection must not reach the next.
                link.connection.fetch_add(1, Ordering::AcqRel);
                connected = false;
                live.stats.set_broker_connected(false);
                if is_oversize(&error) {
                    live.stats.add_rejected(RejectReason::Oversize);
                }
                let message = link_error(&config.host, config.port, &error, ever_connected);
                if !logged_down {
                    tracing::warn!("{message}; retrying with backoff");
                    logged_down = true;
                } else {
                    tracing::debug!("{message}");
                }
                // Stopping, or the pipeline is gone: the acknowledgements are lost with the
                // connection anyway.
                if frames.as_ref().is_none_or(mpsc::Sender::is_closed) {
                    break;
                }
                tokio::select! {
                    next = next_control(&mut control, phase) => {
                        if step_down(next, &mut phase, &mut frames) {
                            break;
                        }
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(longest);
            }
        }
    }
    live.stats.set_broker_connected(false);
    if connected && client.try_disconnect().is_ok() {
        // Sends what is queued (the last acknowledgements), then the DISCONNECT.
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// The server asked for the `next` step of a stop: the pipeline gets nothing more (the sender is
/// dropped, so the worker can finish); whether to disconnect now.
fn step_down(
    next: SubscriberControl,
    phase: &mut SubscriberControl,
    frames: &mut Option<mpsc::Sender<WorkerInput>>,
) -> bool {
    *phase = next;
    *frames = None;
    next == SubscriberControl::Disconnect
}

/// Resolves with the next step once `control` moves past `current`; a sender that is gone
/// counts as [`SubscriberControl::Disconnect`]. Cancel-safe.
async fn next_control(
    control: &mut watch::Receiver<SubscriberControl>,
    current: SubscriberControl,
) -> SubscriberControl {
    if current == SubscriberControl::Disconnect {
        return std::future::pending().await;
    }
    match control.wait_for(|now| *now != current).await {
        Ok(now) => *now,
        Err(_) => SubscriberControl::Disconnect,
    }
}

/// What went wrong with the broker link, naming the broker: "cannot reach" before the first
/// connection, "lost the connection" after it.
fn link_error(host: &str, port: u16, error: &ConnectionError, ever_connected: bool) -> String {
    let cause = match error {
        ConnectionError::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    if ever_connected {
        format!("lost the connection to the MQTT broker at {host}:{port}: {cause}")
    } else {
        format!("cannot reach the MQTT broker at {host}:{port}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ServeArgs;

    #[test]
    fn link_errors_name_the_broker_and_say_reached_or_lost() {
        let refused = || {
            ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            ))
        };
        assert_eq!(
            link_error("pi.local", 1883, &refused(), false),
            "cannot reach the MQTT broker at pi.local:1883: Connection refused (os error 111)"
        );
        assert_eq!(
            link_error("pi.local", 1883, &refused(), true),
            "lost the connection to the MQTT broker at pi.local:1883: Connection refused (os \
             error 111)"
        );
    }

    fn file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn config_error(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn the_password_file_must_be_private_and_hold_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = file(dir.path(), "good", "s3cret\n", 0o600);
        assert_eq!(broker_password(None, Some(good.clone())).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(broker_password(Some("x".into()), None).unwrap().as_deref(), Some("x"));
        assert_eq!(broker_password(None, None).unwrap(), None);

        let both = config_error(broker_password(Some("x".into()), Some(good)));
        assert!(both.contains("both"), "{both}");
        let open = config_error(broker_password(None, Some(file(dir.path(), "open", "x", 0o644))));
        assert!(open.contains("broker-password-file") && open.contains("chmod 600"), "{open}");
        let empty =
            config_error(broker_password(None, Some(file(dir.path(), "empty", "\n", 0o600))));
        assert!(empty.contains("empty"), "{empty}");
        let missing = config_error(broker_password(None, Some(dir.path().join("missing"))));
        assert!(missing.contains("missing"), "{missing}");
    }

    #[test]
    fn tls_needs_a_ca_file_that_holds_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        assert!(broker_tls(false, None, "broker").unwrap().is_none());
        let ca = file(dir.path(), "ca.pem", "not a certificate", 0o644);
        assert!(config_error(broker_tls(false, Some(&ca), "broker")).contains("broker-tls"));
        assert!(config_error(broker_tls(true, None, "broker")).contains("broker-ca"));
        let bad = config_error(broker_tls(true, Some(&ca), "broker"));
        assert!(bad.contains("broker-ca") && bad.contains("ca.pem"), "{bad}");
    }

    #[test]
    fn tls_settings_come_from_flags_or_the_file_and_move_the_default_port_to_8883() {
        let dir = tempfile::tempdir().unwrap();
        let password = file(dir.path(), "password", "s3cret\n", 0o600);
        let config = file(
            dir.path(),
            "ledtemp.toml",
            &format!(
                "broker = \"mqtt.local\"\nbroker_tls = true\nbroker_ca = \"ca.pem\"\n\
                 broker_user = \"ledtemp-web\"\nbroker_password_file = {password:?}\n"
            ),
            0o644,
        );
        // The file's CA is relative to the working directory, which has none: the error names it.
        let args = ServeArgs { config: Some(config), ..ServeArgs::default() };
        assert!(config_error(args.clone().resolve()).contains("broker-ca"));
        // A flag wins over the file.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let ca = file(dir.path(), "real-ca.pem", &ca_pem, 0o644);
        let resolved = ServeArgs { broker_ca: Some(ca.clone()), ..args }.resolve().unwrap();
        assert_eq!(
            (resolved.mqtt.host.as_str(), resolved.mqtt.port),
            ("mqtt.local", MQTT_TLS_PORT)
        );
        let tls = resolved.mqtt.tls.unwrap();
        assert_eq!((tls.ca_file(), tls.server_name().as_str()), (ca.as_path(), "mqtt.local"));
        assert_eq!(
            resolved.mqtt.credentials,
            Some(("ledtemp-web".to_owned(), "s3cret".to_owned()))
        );
        let plain = ServeArgs { broker: Some("mqtt.local".into()), ..ServeArgs::default() };
        let plain = plain.resolve().unwrap();
        assert_eq!(plain.mqtt.port, MQTT_PORT);
        assert!(plain.mqtt.tls.is_none());
        let embedded = ServeArgs {
            embedded_broker: Some("127.0.0.1:0".parse().unwrap()),
            broker_tls: true,
            ..ServeArgs::default()
        };
        assert!(config_error(embedded.resolve()).contains("embedded broker"));
    }
}
