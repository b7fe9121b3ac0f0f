//! The MQTT subscriber: rumqttc's MQTT v5 client, subscribed to `ledtemp/+/#` (or a shared
//! subscription), handing every PUBLISH to the ingest pipeline.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;

use crate::RejectReason;
use crate::ingest::IncomingFrame;
use crate::state::{LiveState, now_ms};

/// Largest MQTT packet the subscriber accepts (announced to the broker in CONNECT as the v5
/// maximum packet size, so a v5 broker drops bigger ones instead of sending them). A ledtemp frame
/// is at most 301 bytes and a topic 78: 4 KiB leaves room for MQTT overhead and still lets an
/// oversized frame of a few KiB reach the pipeline, where it is counted.
pub const MAX_PACKET_SIZE: u32 = 4 * 1024;

/// First and longest wait between reconnection attempts (doubling in between).
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(30));

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; must be unique per server instance.
    pub client_id: String,
    /// MQTT v5 shared subscription group: `$share/<group>/ledtemp/+/#`, so several servers split
    /// the stream.
    pub shared_group: Option<String>,
    /// Broker user name and password.
    pub credentials: Option<(String, String)>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

impl SubscriberConfig {
    /// The topic filter subscribed to.
    pub fn filter(&self) -> String {
        match &self.shared_group {
            Some(group) => format!("$share/{group}/{}", ledtemp_core::TOPIC_FILTER_ALL),
            None => ledtemp_core::TOPIC_FILTER_ALL.to_owned(),
        }
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

/// Runs the subscriber until `frames` is closed (the pipeline stopped) or the task is dropped.
/// Reconnects with backoff after any error and subscribes again on every connection. The link
/// state goes to `live.stats` (connected means connected *and* subscribed).
///
/// Cancellation: dropping the future drops the connection without DISCONNECT.
pub async fn run_subscriber(
    config: SubscriberConfig,
    live: Arc<LiveState>,
    frames: mpsc::Sender<IncomingFrame>,
) {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(config.keep_alive);
    options.set_clean_start(true);
    options.set_max_packet_size(Some(MAX_PACKET_SIZE));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    let filter = config.filter();
    let (client, mut events) = AsyncClient::new(options, 16);
    let (first, longest) = RECONNECT_BACKOFF;
    let mut backoff = first;
    let mut logged_down = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(
                    broker = %format!("{}:{}", config.host, config.port),
                    %filter,
                    "connected to the broker"
                );
                backoff = first;
                logged_down = false;
                if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
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
                let frame = IncomingFrame {
                    topic: publish.topic.to_vec(),
                    payload: publish.payload.to_vec(),
                    received_ms: now_ms(),
                };
                // Bounded: when the pipeline falls behind, this waits, and the broker holds back.
                if frames.send(frame).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(_))) => {
                live.stats.set_broker_connected(false);
            }
            Ok(_) => {}
            Err(error) => {
                live.stats.set_broker_connected(false);
                if is_oversize(&error) {
                    live.stats.add_rejected(RejectReason::Oversize);
                }
                if !logged_down {
                    tracing::warn!("broker connection lost: {error}; reconnecting with backoff");
                    logged_down = true;
                } else {
                    tracing::debug!("broker still unreachable: {error}");
                }
                if frames.is_closed() {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(longest);
            }
        }
    }
    live.stats.set_broker_connected(false);
    let _ = client.try_disconnect();
}
