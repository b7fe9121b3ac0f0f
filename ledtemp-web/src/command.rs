//! LED commands from the dashboard (or a script) to a device: sealed, sent, confirmed, logged.
//!
//! The path of one command (`docs/security.md`, "Commands", has why each step is there):
//!
//! 1. `POST /api/devices/{id}/leds/{led}` with `{"on": true}` reaches the [`Commander`] (after
//!    the login, CSRF and same-origin checks of every POST).
//! 2. The ingest worker, the one owner of the store and the replay windows, seals it
//!    ([`SealedCommand`]): with the device's current key (the one its last online status came
//!    with), for the node's current session (that online status's sequence number, from the
//!    replay window's expected will: none when the device is offline), numbered by the server's
//!    own counter for that key (reserved in blocks in the store before use, so no number is
//!    used twice, across restarts and across the servers of a group), to expire on the node's
//!    clock [`COMMAND_LIFETIME`] after it was sent (the node's clock estimated from its last
//!    frame of that session).
//! 3. The commander publishes it with QoS 1 on `ledtemp/<device>/cmd/<led>` and waits, at most
//!    [`CONFIRM_TIMEOUT`], for the device's LED frame showing the asked state (the node answers
//!    every command it applied with one): the answer is the state the device confirmed, never a
//!    guess. After a time-out the command can no longer act: its expiry on the node has passed.
//! 4. The outcome goes to the log ([`CommandRecord`]: who, what, when, outcome) in the store,
//!    and to the server's log.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ledtemp_core::{DeviceId, LedName, LedState};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::ingest::WorkerInput;
use crate::live::{LiveEvent, LiveState};
use crate::model::{Reading, UnixMillis};

/// How long a command may take to act on the node: its expiry is the node's estimated uptime
/// when it was sent plus this. 5 s: a LAN or a nearby broker delivers in milliseconds; a node
/// that has not applied a command after 5 s is not going to in a way a user still expects.
pub const COMMAND_LIFETIME: Duration = Duration::from_secs(5);

/// How long the server waits for the device's confirmation: the command's lifetime and one
/// second for the confirmation's way back. A command reported timed out has expired on the
/// node, so it can no longer act later.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(6);

/// Sequence numbers the server reserves per store write for one device key's commands. A
/// restart skips what was left of the block; 64 commands per write keeps writes rare without
/// skipping much.
pub const COMMAND_SEQUENCE_BLOCK: u64 = 64;

/// What a user asked: set one LED of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// The device.
    pub device: DeviceId,
    /// Its LED.
    pub led: LedName,
    /// The state asked for.
    pub state: LedState,
}

/// A command sealed by the ingest worker, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCommand {
    /// `ledtemp/<device>/cmd/<led>`.
    pub topic: String,
    /// The sealed frame.
    pub frame: Vec<u8>,
    /// The server's sequence number it carries.
    pub sequence: u64,
}

/// Why a command was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRefusal {
    /// The device has no usable key (not in the keyring, revoked, or retired).
    UnknownDevice,
    /// The device never reported this LED.
    UnknownLed,
    /// The device is offline: no online status of a connection that is still up (its Last Will
    /// or clean offline status came last, or none was seen).
    Offline,
    /// No frame of the device's current session has reached this server yet, so its clock,
    /// and with it the command's expiry, cannot be estimated. Normally a second after the
    /// device came online.
    NoClock,
    /// This server takes no frames in the clear (`--insecure-plaintext`): it has no keys to
    /// seal with.
    InsecurePlaintext,
    /// The broker is not connected: the command is not queued for later.
    BrokerDown,
    /// The database failed (reserving sequence numbers), or the server is stopping.
    Unavailable(String),
}

impl fmt::Display for CommandRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandRefusal::UnknownDevice => "no usable key for this device",
            CommandRefusal::UnknownLed => "the device never reported this LED",
            CommandRefusal::Offline => "the device is offline",
            CommandRefusal::NoClock => {
                "no frame of the device's current connection yet: try again in a second"
            }
            CommandRefusal::InsecurePlaintext => {
                "commands need sealed frames; this server runs in insecure plaintext mode"
            }
            CommandRefusal::BrokerDown => "the broker is not connected",
            CommandRefusal::Unavailable(why) => why,
        })
    }
}

impl CommandRefusal {
    /// The outcome logged for a command refused this way.
    pub(crate) fn outcome(&self) -> CommandOutcome {
        match self {
            CommandRefusal::Offline => CommandOutcome::Offline,
            _ => CommandOutcome::NotSent,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Sent, outcome not known: what the log shows while the server waits, and for ever when
    /// the server stopped (or was killed) before the answer.
    Sent,
    /// The device reported the asked state within [`CONFIRM_TIMEOUT`].
    Confirmed,
    /// No confirmation within [`CONFIRM_TIMEOUT`]; the command has expired on the node.
    TimedOut,
    /// Not sent: the device is offline.
    Offline,
    /// Not sent: the broker, the database or the server could not, no frame of the device's
    /// current connection had arrived yet, or the device never reported the LED.
    NotSent,
}

impl CommandOutcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [CommandOutcome; 5] = [
        CommandOutcome::Sent,
        CommandOutcome::Confirmed,
        CommandOutcome::TimedOut,
        CommandOutcome::Offline,
        CommandOutcome::NotSent,
    ];

    /// The label stored and shown: `sent`, `confirmed`, `timed_out`, `offline`, `not_sent`.
    pub const fn label(self) -> &'static str {
        match self {
            CommandOutcome::Sent => "sent",
            CommandOutcome::Confirmed => "confirmed",
            CommandOutcome::TimedOut => "timed_out",
            CommandOutcome::Offline => "offline",
            CommandOutcome::NotSent => "not_sent",
        }
    }

    /// The outcome of `label`.
    pub fn from_label(label: &str) -> Option<CommandOutcome> {
        CommandOutcome::ALL.into_iter().find(|outcome| outcome.label() == label)
    }
}

/// One entry of the command log. JSON: `{"at", "by", "device", "led", "on", "outcome",
/// "sequence", "confirmed_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRecord {
    /// When it was asked.
    pub at: UnixMillis,
    /// Who asked: `session <id>` (a dashboard login, by an abbreviated hash of its session),
    /// `token <id>` (a bearer token, by an abbreviated hash), or `open` (no login configured).
    pub by: String,
    /// The device.
    pub device: DeviceId,
    /// The LED.
    pub led: LedName,
    /// The state asked for.
    #[serde(rename = "on", serialize_with = "serialize_on")]
    pub state: LedState,
    /// How it ended.
    pub outcome: CommandOutcome,
    /// The server's sequence number it was sealed with (none if it was not sent).
    pub sequence: Option<u64>,
    /// When the device's confirmation arrived.
    pub confirmed_at: Option<UnixMillis>,
}

fn serialize_on<S: serde::Serializer>(state: &LedState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bool(state.is_on())
}

/// The rumqttc client of the server's MQTT connection, once the subscriber made it: what
/// commands are published through (the same session as the subscription).
#[derive(Debug, Clone, Default)]
pub struct CommandLink(Arc<OnceLock<AsyncClient>>);

impl CommandLink {
    /// A link without a client yet.
    pub fn new() -> CommandLink {
        CommandLink::default()
    }

    /// Hands over the client (the subscriber does, once).
    pub(crate) fn set(&self, client: AsyncClient) {
        let _ = self.0.set(client);
    }

    fn client(&self) -> Option<&AsyncClient> {
        self.0.get()
    }
}

/// Sends commands: seals them through the ingest worker, publishes them on the server's MQTT
/// connection, waits for the device's confirmation and logs the outcome. One per server; the
/// HTTP handlers share it.
#[derive(Debug, Clone)]
pub struct Commander {
    /// Weak: the worker stops when the server's own senders are gone, whoever holds a
    /// commander (the HTTP handlers' state lives until the last connection closes).
    worker: mpsc::WeakSender<WorkerInput>,
    link: CommandLink,
    live: Arc<LiveState>,
}

impl Commander {
    /// A commander over the ingest worker's queue, the MQTT link and the live state (whose
    /// events carry the confirmations).
    pub fn new(
        worker: mpsc::Sender<WorkerInput>,
        link: CommandLink,
        live: Arc<LiveState>,
    ) -> Commander {
        Commander { worker: worker.downgrade(), link, live }
    }

    /// Sends `request` for `by` and waits for the outcome (at most about [`CONFIRM_TIMEOUT`]):
    /// the record, [`Confirmed`](CommandOutcome::Confirmed) or
    /// [`TimedOut`](CommandOutcome::TimedOut), or why it was not sent. Every command asked is
    /// logged: one that goes out is stored (as [`Sent`](CommandOutcome::Sent)) before it is
    /// published, and its outcome filled in when known; one refused is stored with its reason.
    pub async fn send(
        &self,
        request: CommandRequest,
        by: String,
    ) -> Result<CommandRecord, CommandRefusal> {
        let mut record = CommandRecord {
            at: UnixMillis::now(),
            by,
            device: request.device.clone(),
            led: request.led.clone(),
            state: request.state,
            outcome: CommandOutcome::Sent,
            sequence: None,
            confirmed_at: None,
        };
        let (sealed, log_id, confirmation) = match self.seal_and_publish(&record).await {
            Ok(sent) => sent,
            Err(refusal) => {
                tracing::warn!(
                    device = %record.device,
                    led = %record.led,
                    on = record.state.is_on(),
                    by = %record.by,
                    "LED command not sent: {refusal}"
                );
                self.live.stats.add_command(refusal.outcome());
                return Err(refusal);
            }
        };
        record.sequence = Some(sealed.sequence);
        match confirmation.await {
            Some(confirmed_at) => {
                record.outcome = CommandOutcome::Confirmed;
                record.confirmed_at = Some(confirmed_at);
            }
            None => record.outcome = CommandOutcome::TimedOut,
        }
        tracing::info!(
            device = %record.device,
            led = %record.led,
            on = record.state.is_on(),
            by = %record.by,
            sequence = record.sequence,
            outcome = record.outcome.label(),
            "LED command"
        );
        self.live.stats.add_command(record.outcome);
        self.tell_worker(WorkerInput::CommandSettled(CommandSettlement {
            log_id,
            outcome: record.outcome,
            confirmed_at: record.confirmed_at,
        }))
        .await;
        Ok(record)
    }

    /// Has the worker seal and log `record`'s command, and publishes it; returns the sealed
    /// command, its log entry and the wait for its confirmation (listening since before the
    /// publish). A refusal is logged (by the worker, or here when the worker never saw it).
    async fn seal_and_publish(
        &self,
        record: &CommandRecord,
    ) -> Result<
        (SealedCommand, i64, impl Future<Output = Option<UnixMillis>> + use<>),
        CommandRefusal,
    > {
        let refused = |refusal: CommandRefusal| async {
            let outcome = refusal.outcome();
            let entry = CommandRecord { outcome, ..record.clone() };
            self.tell_worker(WorkerInput::CommandLog(entry)).await;
            Err(refusal)
        };
        let Some(client) = self.link.client().filter(|_| self.live.stats.broker_connected()) else {
            return refused(CommandRefusal::BrokerDown).await;
        };
        let client = client.clone();
        let (reply, sealed) = oneshot::channel();
        let stopping = || CommandRefusal::Unavailable("the server is stopping".into());
        let Some(worker) = self.worker.upgrade() else { return Err(stopping()) };
        if worker.send(WorkerInput::Command(record.clone(), reply)).await.is_err() {
            return Err(stopping());
        }
        drop(worker);
        // The worker logged a refusal itself; a worker gone meanwhile logged nothing.
        let (sealed, log_id) = sealed.await.map_err(|_| stopping())??;
        let request = CommandRequest {
            device: record.device.clone(),
            led: record.led.clone(),
            state: record.state,
        };
        let confirmation = wait_for_confirmation(&self.live, request);
        let published = client
            .publish(sealed.topic.clone(), QoS::AtLeastOnce, false, sealed.frame.clone())
            .await;
        if published.is_err() {
            let outcome = CommandOutcome::NotSent;
            let settled = CommandSettlement { log_id, outcome, confirmed_at: None };
            self.tell_worker(WorkerInput::CommandSettled(settled)).await;
            return Err(CommandRefusal::BrokerDown);
        }
        Ok((sealed, log_id, confirmation))
    }

    /// Hands a log entry or an outcome to the worker, waiting for room in its queue; only a
    /// stopped worker loses it (logged).
    async fn tell_worker(&self, input: WorkerInput) {
        let Some(worker) = self.worker.upgrade() else {
            tracing::warn!("a command log entry was dropped: the server is stopping");
            return;
        };
        if worker.send(input).await.is_err() {
            tracing::warn!("a command log entry was dropped: the server is stopping");
        }
    }
}

/// A sent command's outcome, for its log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSettlement {
    /// The entry written when it was sent.
    pub log_id: i64,
    /// How it ended.
    pub outcome: CommandOutcome,
    /// When the device confirmed it.
    pub confirmed_at: Option<UnixMillis>,
}

/// Resolves with the time the device's LED frame showing the asked state arrived, or `None`
/// after [`CONFIRM_TIMEOUT`]. Subscribes at once, so a confirmation that arrives before the
/// future is first polled is not missed.
fn wait_for_confirmation(
    live: &LiveState,
    request: CommandRequest,
) -> impl Future<Output = Option<UnixMillis>> + use<> {
    let mut events = live.subscribe();
    async move {
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(LiveEvent::Reading(device, Reading::Led(point)))
                        if device == request.device
                            && point.led == request.led
                            && point.state == request.state =>
                    {
                        return Some(point.at);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, wait).await.ok().flatten()
    }
}
