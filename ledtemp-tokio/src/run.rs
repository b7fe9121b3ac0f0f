//! [`run_node`] and [`run_node_until`], and the one value they are configured with,
//! [`NodeWorld`].

use std::convert::Infallible;
use std::future::{Future, pending};
use std::io;
use std::pin::pin;

use ledtemp_core::{
    AsyncIo, AsyncPublisher, AsyncTempSensor, Backoff, Button, Codec, Connector, Driver, Led,
    LedState, MilliCelsius, MqttBuffers, MqttConfig, MqttError, MqttMailbox, MqttPublisher, Node,
    Outgoing, RunEvent, SequenceStore, Stopped, Topic, mqtt_link,
};

use crate::{BrokerAddress, Error, StdClock, TcpConnector, TlsConnector, TokioDelay};

/// Everything [`run_node`] drives a node with, besides the node itself: its buttons, LEDs and
/// sensors, the broker it publishes to, the clock it was created with, and how it retries a
/// failed connection.
///
/// [`NodeWorld::new`] starts with the two parts that have no default (the broker and the clock),
/// no hardware and [`Backoff::default`] (1 s doubling up to 60 s); the other methods add the rest.
/// The hardware stays borrowed: after `run_node` returns (or its future is dropped) the caller
/// can inspect it again.
///
/// A node without a broker to reach keeps trying; here against a port where nothing listens,
/// for 0.3 s:
///
/// ```
/// use std::time::Duration;
/// use ledtemp_core::{
///     AesGcmCodec, Backoff, Clock, DeviceId, KeyId, LedName, MemorySequenceStore, Node,
///     NodeConfig, RunEvent, ScriptedButton, SensorName, SimulatedTemperature,
/// };
/// use ledtemp_tokio::{BrokerAddress, LoggedLed, NodeWorld, StdClock, run_node};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut clock = StdClock::new();
/// let mut node: Node<_, _> = Node::new(
///     DeviceId::new("sim-1")?,
///     &[LedName::new("red")?],
///     &[SensorName::new("room")?],
///     AesGcmCodec::from_key_bytes(KeyId(1), &[0x42; 16])?,
///     MemorySequenceStore::new(),
///     NodeConfig::default(),
///     clock.now(),
/// )?;
/// let mut buttons = [ScriptedButton::new(clock, Duration::from_secs(5), Duration::from_millis(200))];
/// let mut leds = [LoggedLed::new("red")];
/// let mut sensors = [SimulatedTemperature::new(clock, 1)];
///
/// let world = NodeWorld::new(BrokerAddress::new("127.0.0.1", 1, "sim-1"), clock)
///     .buttons(&mut buttons)
///     .leds(&mut leds)
///     .sensors(&mut sensors)
///     .backoff(Backoff::new(Duration::from_millis(20), Duration::from_millis(40)));
/// let mut failed = 0;
/// let mut count_failures = |event: RunEvent<'_>| {
///     if let RunEvent::ConnectFailed { .. } = event {
///         failed += 1;
///     }
/// };
/// let run = run_node(&mut node, world, &mut count_failures);
/// // `run_node` returns only on a fatal error; dropping its future stops the node.
/// assert!(tokio::time::timeout(Duration::from_millis(300), run).await.is_err());
/// assert!(failed >= 2, "retried with the backoff given");
/// assert_eq!(leds[0].state(), Some(ledtemp_core::LedState::Off), "the LED was driven");
/// # Ok(()) }
/// ```
pub struct NodeWorld<'a, B = Absent, L = Absent, T = Absent> {
    buttons: &'a mut [B],
    leds: &'a mut [L],
    sensors: &'a mut [T],
    broker: BrokerAddress,
    clock: StdClock,
    backoff: Backoff,
}

impl<'a> NodeWorld<'a> {
    /// A node's world with the broker at `broker` and `clock`, which must be the clock the node
    /// was created with (and that any simulated hardware reads); no buttons, LEDs or sensors yet,
    /// and [`Backoff::default`].
    pub fn new(broker: BrokerAddress, clock: StdClock) -> Self {
        NodeWorld {
            buttons: &mut [],
            leds: &mut [],
            sensors: &mut [],
            broker,
            clock,
            backoff: Backoff::default(),
        }
    }
}

impl<'a, B, L, T> NodeWorld<'a, B, L, T> {
    /// The buttons, in the node's LED order: a press on `buttons[i]` toggles LED `i`. An LED
    /// without a button is never toggled.
    pub fn buttons<B2: Button>(self, buttons: &'a mut [B2]) -> NodeWorld<'a, B2, L, T> {
        let NodeWorld { leds, sensors, broker, clock, backoff, .. } = self;
        NodeWorld { buttons, leds, sensors, broker, clock, backoff }
    }

    /// The LEDs, in the node's LED order.
    pub fn leds<L2: Led>(self, leds: &'a mut [L2]) -> NodeWorld<'a, B, L2, T> {
        let NodeWorld { buttons, sensors, broker, clock, backoff, .. } = self;
        NodeWorld { buttons, leds, sensors, broker, clock, backoff }
    }

    /// The temperature sensors, in the node's sensor order. A blocking sensor goes in a
    /// [`BlockingSensor`](crate::BlockingSensor), so a slow read never stalls the MQTT link.
    pub fn sensors<T2: AsyncTempSensor>(self, sensors: &'a mut [T2]) -> NodeWorld<'a, B, L, T2> {
        let NodeWorld { buttons, leds, broker, clock, backoff, .. } = self;
        NodeWorld { buttons, leds, sensors, broker, clock, backoff }
    }

    /// How long to wait between failed connection attempts (default: [`Backoff::default`]).
    pub fn backoff(self, backoff: Backoff) -> Self {
        NodeWorld { backoff, ..self }
    }

    /// The clock the node runs on (to put the node's instants in a log, say).
    pub fn clock(&self) -> StdClock {
        self.clock
    }
}

/// Hardware a node does not have: the type of [`NodeWorld`]'s buttons, LEDs or sensors until
/// they are given. It has no values, so a slice of it is always empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {}

impl Button for Absent {
    type Error = Infallible;
    fn is_pressed(&mut self) -> Result<bool, Infallible> {
        match *self {}
    }
}

impl Led for Absent {
    type Error = Infallible;
    fn set(&mut self, _: LedState) -> Result<(), Infallible> {
        match *self {}
    }
}

impl AsyncTempSensor for Absent {
    type Error = Infallible;
    async fn read(&mut self) -> Result<MilliCelsius, Infallible> {
        match *self {}
    }
}

/// Runs `node` in `world` forever: connects to the world's broker over TCP, or TLS when its
/// [`BrokerAddress::tls`] is set (retrying with the world's backoff; an untrusted certificate is
/// a failed attempt like any other), publishes the node's frames through minimq, and drives the
/// world's hardware. Reports what happens through `on_event`; a broker failure's error is an
/// [`Error::Broker`] that names the broker.
///
/// Commands: after each connect the node subscribes to `ledtemp/<device>/cmd/+` (QoS 1), and
/// hands every command that arrives to [`Node::handle_command`]: an applied one drives the
/// world's LED and goes out confirmed as an LED frame ([`RunEvent::CommandApplied`]); a refused
/// one (forged, replayed, stale, expired) changes nothing and is reported
/// ([`RunEvent::CommandRefused`]), and the node goes on.
///
/// Returns only on an error the node cannot go on from (the sequence store failed, or the key is
/// used up). Dropping the future stops the node at once: its connection closes without an MQTT
/// DISCONNECT, so the broker publishes the node's sealed will (it is offline), and frames still
/// queued stay in `node`. To stop it cleanly, run it with [`run_node_until`].
pub async fn run_node<C, S, const Q: usize, B, L, T>(
    node: &mut Node<C, S, Q>,
    world: NodeWorld<'_, B, L, T>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Infallible, ledtemp_core::Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
{
    run_node_until(node, world, pending(), on_event).await?;
    // A stop that never comes cannot end the run; this is never reached.
    pending().await
}

/// Runs `node` in `world` as [`run_node`] does until `stop` completes (a signal: see
/// `examples/rpi_node.rs` for SIGTERM and Ctrl-C), then stops it cleanly
/// ([`Driver::run_until`]): the node takes no new input, publishes what is queued and then its
/// offline status (the sealed Last Will of the connection, sent as an ordinary retained
/// message), and ends the connection with MQTT DISCONNECT, so that the broker discards the will
/// ([`Stopped::Disconnected`]). If the offline status cannot go out within the node's
/// [`shutdown_timeout`](ledtemp_core::NodeConfig::shutdown_timeout) (2 s by default), the
/// connection closes without DISCONNECT and the broker publishes the will instead
/// ([`Stopped::Abandoned`]). Either way the broker ends up holding the offline status, and the
/// node's sequence store already holds a mark above every number it used.
///
/// `stop` is polled between the driver's passes. A stop takes at most the shutdown timeout plus
/// one publisher call (bounded by the MQTT timeout, 5 s) plus [`MQTT_CLOSE_WAIT`] (0.5 s).
///
/// Cancellation: dropping the future, before or during the stop, stops the node at once as with
/// [`run_node`]: no DISCONNECT, the broker publishes the will, queued frames stay in `node`.
///
/// [`MQTT_CLOSE_WAIT`]: ledtemp_core::MQTT_CLOSE_WAIT
pub async fn run_node_until<C, S, const Q: usize, B, L, T>(
    node: &mut Node<C, S, Q>,
    world: NodeWorld<'_, B, L, T>,
    stop: impl Future<Output = ()>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Stopped, ledtemp_core::Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
{
    let (host, port) = (world.broker.host.clone(), world.broker.port);
    match world.broker.tls.clone() {
        None => drive(node, world, TcpConnector::new(host, port), stop, on_event).await,
        Some(tls) => drive(node, world, TlsConnector::new(host, port, tls), stop, on_event).await,
    }
}

async fn drive<C, S, const Q: usize, B, L, T, K>(
    node: &mut Node<C, S, Q>,
    world: NodeWorld<'_, B, L, T>,
    connector: K,
    stop: impl Future<Output = ()>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Stopped, ledtemp_core::Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
    K: Connector<Error = io::Error>,
{
    let NodeWorld { buttons, leds, sensors, broker, clock, backoff } = world;
    let mailbox = MqttMailbox::new();
    let mut buffers: MqttBuffers = MqttBuffers::new();
    let commands = Topic::command_filter(node.device());
    let mut config = MqttConfig::new(&broker.client_id);
    config.commands = Some(&commands);
    config.credentials =
        broker.credentials.as_ref().map(|(user, password)| (user.as_str(), password.as_bytes()));
    let link = pin!(mqtt_link(&mailbox, connector, config, &mut buffers));
    let publisher = NamedPublisher {
        publisher: MqttPublisher::new(&mailbox, link),
        address: broker.to_string(),
    };
    let mut io = AsyncIo { buttons, leds, sensors, publisher, clock, delay: TokioDelay };
    Driver::new(backoff).run_until(node, &mut io, stop, on_event).await
}

/// The core's publisher, with errors that name the broker ([`Error::Broker`]).
struct NamedPublisher<P> {
    publisher: P,
    /// `host:port`.
    address: String,
}

impl<P> NamedPublisher<P> {
    fn named(&self, result: Result<(), MqttError<io::Error>>) -> Result<(), Error> {
        result.map_err(|source| Error::Broker { address: self.address.clone(), source })
    }
}

impl<P: AsyncPublisher<Error = MqttError<io::Error>>> AsyncPublisher for NamedPublisher<P> {
    type Error = Error;

    fn is_connected(&self) -> bool {
        self.publisher.is_connected()
    }

    async fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Error> {
        let result = self.publisher.connect(will).await;
        self.named(result)
    }

    async fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Error> {
        let result = self.publisher.publish(frame).await;
        self.named(result)
    }

    async fn poll(&mut self) -> Result<(), Error> {
        let result = self.publisher.poll().await;
        self.named(result)
    }

    async fn poll_commands(&mut self, on_command: impl FnMut(&str, &[u8])) -> Result<(), Error> {
        let result = self.publisher.poll_commands(on_command).await;
        self.named(result)
    }

    async fn disconnect(&mut self) -> Result<(), Error> {
        let result = self.publisher.disconnect().await;
        self.named(result)
    }
}
