//! Running nodes in tests, always through `ledtemp_tokio::run_node` (or `run_node_until`, to stop
//! one cleanly): the way a Raspberry Pi node and the server's demo nodes run.
//!
//! minimq's mailbox is not `Sync`, so a running node cannot move between the workers of a
//! multi-threaded runtime: run it on the test's own task (a `LocalSet`, or `tokio::select!` with
//! what the test does meanwhile), or on a [`NodeThread`].

use std::convert::Infallible;
use std::future::pending;
use std::time::Duration;

use ledtemp_core::{
    AsyncTempSensor, Backoff, Button, Clock, Codec, Instant, Led, MemorySequenceStore,
    MilliCelsius, Node, NodeConfig, NodeStats, RunEvent, ScriptedButton, SequenceStore,
    SimulatedTemperature, Stopped,
};
use ledtemp_core::{DeviceId, LedName, SensorName};
use ledtemp_tokio::{BrokerAddress, LoggedLed, NodeWorld, StdClock, run_node};
use tokio::sync::oneshot;

/// A node with simulated hardware: one LED with a scripted button, one simulated temperature
/// sensor, sequence numbers in memory. It obeys commands as every node run by `run_node` does: it
/// subscribes to `ledtemp/<device>/cmd/+`, applies a command sealed for its session to its
/// (logged) LED and confirms it with an LED frame; `RunEvent::CommandApplied` and
/// `CommandRefused` reach [`run_until`](Self::run_until)'s `on_event`. Change what a test needs from [`new`](Self::new)'s
/// defaults with struct update syntax:
///
/// ```
/// # use std::time::Duration;
/// # use ledtemp_core::{AesGcmCodec, KeyId, NodeConfig};
/// # use ledtemp_test_support::node::SimulatedNode;
/// let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[0x11; 16]).unwrap();
/// let node = SimulatedNode {
///     sensor: "room".into(),
///     config: NodeConfig { temperature_period: Duration::from_millis(200), ..NodeConfig::default() },
///     press_every: Duration::from_millis(300),
///     ..SimulatedNode::new("kitchen-pi", codec)
/// };
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedNode<C> {
    /// Its device id.
    pub device: String,
    /// Its codec (its key).
    pub codec: C,
    /// Its LED (default `red`).
    pub led: String,
    /// Its sensor (default `cpu`).
    pub sensor: String,
    /// How it runs (default [`NodeConfig::default`]: a temperature a second).
    pub config: NodeConfig,
    /// How often its button is pressed, the first press one period after the start (default:
    /// zero, never).
    pub press_every: Duration,
    /// How long each press holds the button down (default 100 ms).
    pub press_for: Duration,
    /// The centre of its simulated temperature (default 21.5 °C, `SimulatedTemperature`'s).
    pub base: MilliCelsius,
    /// The seed of the temperature's noise (default 7).
    pub seed: u32,
    /// Waits between its connection attempts (default [`Backoff::default`]: 1 s doubling to
    /// 60 s).
    pub backoff: Backoff,
}

impl<C: Codec> SimulatedNode<C> {
    /// `device`, sealing with `codec`, with the defaults above.
    pub fn new(device: &str, codec: C) -> Self {
        SimulatedNode {
            device: device.to_owned(),
            codec,
            led: "red".to_owned(),
            sensor: "cpu".to_owned(),
            config: NodeConfig::default(),
            press_every: Duration::ZERO,
            press_for: Duration::from_millis(100),
            base: MilliCelsius(21_500),
            seed: 7,
            backoff: Backoff::default(),
        }
    }

    /// Runs the node against `broker` until its future is dropped; panics if the node stops.
    /// Dropping the future closes the node's connection without DISCONNECT.
    pub async fn run(self, broker: BrokerAddress) -> Infallible {
        let (stopped, _) = self.run_until(broker, pending(), &mut |_| {}).await;
        panic!("the node stopped unasked: {stopped:?}")
    }

    /// Runs the node against `broker`, reporting what happens to `on_event`, until `stop`
    /// completes; then stops it cleanly (`ledtemp_tokio::run_node_until`: it publishes its queue
    /// and its offline status, then disconnects) and returns how it ended and its counters.
    /// Panics if the node fails (its sequence store, its key used up). Dropping the future stops
    /// the node at once, without DISCONNECT.
    pub async fn run_until(
        self,
        broker: BrokerAddress,
        stop: impl Future<Output = ()>,
        on_event: &mut impl FnMut(RunEvent<'_>),
    ) -> (Stopped, NodeStats) {
        let mut clock = StdClock::new();
        let mut node: Node<C, MemorySequenceStore> = Node::new(
            DeviceId::new(&self.device).unwrap(),
            &[LedName::new(&self.led).unwrap()],
            &[SensorName::new(&self.sensor).unwrap()],
            self.codec,
            MemorySequenceStore::new(),
            self.config,
            clock.now(),
        )
        .unwrap();
        let mut buttons = [ScriptedButton::new(clock, self.press_every, self.press_for)];
        let mut leds = [LoggedLed::new(self.led)];
        let mut sensors = [SimulatedTemperature::new(clock, self.seed).with_base(self.base)];
        let world = NodeWorld::new(broker, clock)
            .buttons(&mut buttons)
            .leds(&mut leds)
            .sensors(&mut sensors)
            .backoff(self.backoff);
        match ledtemp_tokio::run_node_until(&mut node, world, stop, on_event).await {
            Ok(stopped) => (stopped, node.stats()),
            Err(error) => panic!("the node {} failed: {error}", self.device),
        }
    }
}

/// Runs `node` in `world` until `until` completes, and returns its output; then drops the node's
/// future, which closes its connection without DISCONNECT (the broker publishes its will). For a
/// clean stop (offline status, then DISCONNECT) use `ledtemp_tokio::run_node_until` instead.
/// Writes the node's events to stderr, timed on the node's clock. Panics if the node stops first.
pub async fn run_node_until<C, S, const Q: usize, B, L, T, O>(
    node: &mut Node<C, S, Q>,
    world: NodeWorld<'_, B, L, T>,
    until: impl Future<Output = O>,
) -> O
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
{
    let mut clock = world.clock();
    let mut log = |event: RunEvent<'_>| eprintln!("{:>6} ms {event:?}", clock.now().as_millis());
    tokio::select! {
        stopped = run_node(node, world, &mut log) => panic!("the node stopped: {stopped:?}"),
        output = until => output,
    }
}

/// Sleeps until `clock` (the node's clock) reads `at`; returns at once if it is past.
pub async fn sleep_until(clock: StdClock, at: Instant) {
    let now = { clock }.now();
    tokio::time::sleep(at.saturating_duration_since(now)).await;
}

/// A node running on a thread of its own, on a current-thread runtime: for a test whose other
/// parts run on a multi-threaded runtime. [`stop`](Self::stop) it to see whether it panicked;
/// dropped, it stops without waiting.
#[derive(Debug)]
pub struct NodeThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeThread {
    /// Runs the future `start` makes (a [`SimulatedNode::run`], say) on a new thread until
    /// stopped. The future is made on that thread, so the node in it need not be `Send`.
    pub fn spawn<F, Fut>(start: F) -> NodeThread
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                tokio::select! {
                    _ = start() => panic!("the node's future ended"),
                    _ = stopped => {}
                }
            });
        });
        NodeThread { stop: Some(stop), thread: Some(thread) }
    }

    /// Stops the node and waits for its thread; panics if the node panicked (it stopped).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await.unwrap();
            if let Err(panic) = joined {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
