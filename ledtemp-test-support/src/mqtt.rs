//! Reading what reaches the broker: a [`Subscriber`] on every ledtemp topic, and a
//! [`FrameChecker`] that opens each frame as the server does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ledtemp_core::{Codec, Message, OpenedFrame, ReplayWindow, TOPIC_FILTER_ALL, Topic};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::WAIT;

/// One message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload: a sealed frame, if all is well.
    pub payload: Vec<u8>,
    /// Delivered from the broker's retained store (on subscribing), not as it was published.
    pub retained: bool,
}

/// A rumqttc subscriber (MQTT v5, QoS 1) on every ledtemp topic of the broker on
/// `127.0.0.1:port`, forwarding every PUBLISH. It reconnects and subscribes again after a broker
/// restart. Stops when dropped.
#[derive(Debug)]
pub struct Subscriber {
    /// Every message received, in order.
    pub frames: mpsc::UnboundedReceiver<Received>,
    /// SUBACKs received so far (one per (re)subscription).
    pub subscriptions: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects with a clean session and waits for the first SUBACK.
    pub async fn start(port: u16) -> Subscriber {
        let mut options = MqttOptions::new("ledtemp-test-subscriber", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        Subscriber::connect(options).await
    }

    /// Connects as `client_id` with a persistent session (clean start off, session expiry a
    /// day), as the server does, and waits for the first SUBACK. The broker keeps its
    /// subscription and queues the QoS 1 messages published while it is away, and, with
    /// persistence, across a clean broker restart: it sees every QoS 1 message the broker
    /// accepted. It acknowledges each on receipt.
    pub async fn start_persistent(port: u16, client_id: &str) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(86_400));
        Subscriber::connect(options).await
    }

    async fn connect(options: MqttOptions) -> Subscriber {
        let (client, mut events) = AsyncClient::new(options, 64);
        let (tx, frames) = mpsc::unbounded_channel();
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&subscriptions);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.try_subscribe(TOPIC_FILTER_ALL, QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
                        let payload = publish.payload.to_vec();
                        let _ = tx.send(Received { topic, payload, retained: publish.retain });
                    }
                    Ok(_) => {}
                    // The broker is down: try again shortly (rumqttc reconnects on the next poll).
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let subscriber = Subscriber { frames, subscriptions, task };
        subscriber.wait_subscribed(1).await;
        subscriber
    }

    /// Waits until `count` SUBACKs have arrived in total; panics after [`WAIT`].
    pub async fn wait_subscribed(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.subscriptions.load(Ordering::SeqCst) < count {
            assert!(tokio::time::Instant::now() < deadline, "subscriber did not (re)subscribe");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.frames.recv()).await.ok().flatten()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A frame as the server sees it: opened with the device's key and checked for replay.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its topic.
    pub topic: String,
    /// Delivered from the broker's retained store.
    pub retained: bool,
    /// Its sequence number.
    pub sequence: u64,
    /// What it says.
    pub message: Message,
}

/// Opens frames like the server: parse the topic, open with the key, then the replay window.
#[derive(Debug)]
pub struct FrameChecker<C> {
    /// The device's codec (its key).
    pub codec: C,
    /// The replay window so far.
    pub window: ReplayWindow,
    /// Frames the window refused (a retained frame delivered again on resubscription).
    pub duplicates: usize,
}

impl<C: Codec> FrameChecker<C> {
    /// A checker holding `codec`, with an empty replay window.
    pub fn new(codec: C) -> Self {
        FrameChecker { codec, window: ReplayWindow::new(), duplicates: 0 }
    }

    /// The opened frame, or `None` for a replay. Panics on anything that does not open.
    pub fn check(&mut self, received: &Received) -> Option<Checked> {
        let topic = Topic::parse(&received.topic).unwrap();
        let opened: OpenedFrame = self
            .codec
            .open(&topic, &received.payload)
            .unwrap_or_else(|e| panic!("frame on {} does not open: {e}", received.topic));
        if self.window.accept(opened.header.sequence).is_err() {
            self.duplicates += 1;
            return None;
        }
        Some(Checked {
            topic: received.topic.clone(),
            retained: received.retained,
            sequence: opened.header.sequence.get(),
            message: opened.message,
        })
    }
}
