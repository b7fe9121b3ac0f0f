//! `ledtemp-tokio`: runs a [`ledtemp_core::Node`] on tokio, publishing through the core's minimq
//! publisher over TCP or TLS.
//!
//! The node, the codec and the MQTT client are all `ledtemp-core`; this crate adds only what a
//! std runtime must provide: a clock ([`StdClock`]), a delay ([`TokioDelay`]), a TCP
//! [`TcpConnector`] and a TLS [`TlsConnector`] (rustls with the ring provider, checking the
//! broker's certificate against a CA file: [`BrokerTls`]), an adapter that reads a blocking sensor
//! off the executor ([`BlockingSensor`]), and [`run_node`], which wires them to the driver, or
//! [`run_node_until`], which also stops the node cleanly on a signal (offline status, then MQTT
//! DISCONNECT). What a node runs with (its hardware, [`BrokerAddress`], clock and backoff) is
//! one value, [`NodeWorld`]. The Raspberry Pi node (`examples/rpi_node.rs`) and the server's demo
//! nodes both run through it. Broker errors name the broker ([`Error::Broker`]).
//!
//! # Example
//!
//! ```no_run
//! use ledtemp_core::{
//!     AesGcmCodec, Clock, DeviceId, KeyId, LedName, MemorySequenceStore, Node, NodeConfig,
//!     ScriptedButton, SensorName, SimulatedTemperature,
//! };
//! use ledtemp_tokio::{BlockingSensor, BrokerAddress, LoggedLed, NodeWorld, StdClock, run_node_until};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut clock = StdClock::new();
//! let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[0x42; 16])?;
//! let mut node: Node<_, _> = Node::new(
//!     DeviceId::new("sim-1")?,
//!     &[LedName::new("red")?],
//!     &[SensorName::new("room")?],
//!     codec,
//!     MemorySequenceStore::new(),
//!     NodeConfig::default(),
//!     clock.now(),
//! )?;
//! let mut buttons = [ScriptedButton::new(clock, Duration::from_secs(5), Duration::from_millis(200))];
//! let mut leds = [LoggedLed::new("red")];
//! let mut sensors = [BlockingSensor::new(SimulatedTemperature::new(clock, 1))];
//! let mut broker = BrokerAddress::new("127.0.0.1", 1883, "sim-1");
//! // Over TLS on 8883, with the device's own broker account (user name = device id):
//! // broker.port = 8883;
//! // broker.tls = Some(ledtemp_tokio::BrokerTls::from_ca_file("ca.pem", "127.0.0.1")?);
//! // broker.credentials = Some(("sim-1".into(), "its password".into()));
//! let world = NodeWorld::new(broker, clock)
//!     .buttons(&mut buttons)
//!     .leds(&mut leds)
//!     .sensors(&mut sensors);
//! // For an hour (in real life until SIGTERM or Ctrl-C: examples/rpi_node.rs); then the queue
//! // and the offline status go out, and a clean MQTT DISCONNECT.
//! let stop = tokio::time::sleep(Duration::from_secs(3600));
//! run_node_until(&mut node, world, stop, &mut |event| println!("{event}")).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use ledtemp_core::{
    AsyncTempSensor, Clock, Connector, Instant, Led, LedState, MilliCelsius, TempSensor,
};
use tokio::net::TcpStream;

mod error;
mod run;
mod tls;

pub use error::Error;
pub use run::{Absent, NodeWorld, run_node, run_node_until};
pub use tls::{BrokerTls, MAX_CA_FILE_LEN, TlsConnector, TlsTransport};

/// Milliseconds since a start shared by every copy: give the same clock to the node and to any
/// simulated hardware.
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    start: std::time::Instant,
}

impl StdClock {
    /// A clock starting now.
    pub fn new() -> Self {
        StdClock { start: std::time::Instant::now() }
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now(&mut self) -> Instant {
        Instant::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// An `embedded-hal-async` delay on tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioDelay;

impl embedded_hal_async::delay::DelayNs for TokioDelay {
    async fn delay_ns(&mut self, ns: u32) {
        tokio::time::sleep(Duration::from_nanos(ns.into())).await;
    }
}

/// Where the broker is and who the node is to it.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// TCP port (1883 without TLS, 8883 with).
    pub port: u16,
    /// MQTT client id; the device id unless configured otherwise.
    pub client_id: String,
    /// Username and password, if the broker asks for them. By convention a device's broker user
    /// name is its device id, so a broker ACL can confine it to `ledtemp/<device id>/#`.
    pub credentials: Option<(String, String)>,
    /// TLS settings; `None` connects over plain TCP.
    pub tls: Option<BrokerTls>,
}

impl BrokerAddress {
    /// A broker at `host:port`, connecting as `client_id` without credentials.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        BrokerAddress {
            host: host.into(),
            port,
            client_id: client_id.into(),
            credentials: None,
            tls: None,
        }
    }
}

impl fmt::Display for BrokerAddress {
    /// `host:port` (an IPv6 address in brackets), as messages name the broker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for BrokerAddress {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerAddress")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Opens TCP connections to the broker, one per MQTT connection.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    host: String,
    port: u16,
}

impl TcpConnector {
    /// Connects to `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        TcpConnector { host: host.into(), port }
    }
}

impl Connector for TcpConnector {
    type Io = FromTokio<TcpStream>;
    type Error = io::Error;

    async fn connect(&mut self) -> Result<Self::Io, io::Error> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// A blocking [`TempSensor`] read on tokio's blocking pool, so a slow read (a DS18B20 conversion
/// takes 750 ms) never stalls the MQTT link.
pub struct BlockingSensor<T> {
    sensor: Arc<Mutex<T>>,
}

impl<T> BlockingSensor<T> {
    /// Wraps `sensor`.
    pub fn new(sensor: T) -> Self {
        BlockingSensor { sensor: Arc::new(Mutex::new(sensor)) }
    }
}

/// Why a [`BlockingSensor`] read failed.
#[derive(Debug)]
pub enum BlockingSensorError<E> {
    /// The sensor said so.
    Sensor(E),
    /// The read panicked or the runtime is shutting down.
    Aborted,
}

impl<T> AsyncTempSensor for BlockingSensor<T>
where
    T: TempSensor + Send + 'static,
    T::Error: Send + 'static,
{
    type Error = BlockingSensorError<T::Error>;

    async fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        let sensor = Arc::clone(&self.sensor);
        let read = tokio::task::spawn_blocking(move || match sensor.lock() {
            Ok(mut sensor) => sensor.read().map_err(BlockingSensorError::Sensor),
            Err(_) => Err(BlockingSensorError::Aborted),
        });
        read.await.unwrap_or(Err(BlockingSensorError::Aborted))
    }
}

/// An LED that exists only in the log (a simulated node, or a board without one): each change
/// of state is a line on standard output, `LED <name> on` or `LED <name> off`, whether a button
/// or a command changed it.
///
/// Clones share the LED: keep one to watch it while the node, which borrows the other, runs.
#[derive(Debug, Clone)]
pub struct LoggedLed {
    name: String,
    state: Arc<Mutex<Option<LedState>>>,
}

impl LoggedLed {
    /// An LED called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LoggedLed { name: name.into(), state: Arc::new(Mutex::new(None)) }
    }

    /// The state it was last set to (by this LED or a clone).
    pub fn state(&self) -> Option<LedState> {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Led for LoggedLed {
    type Error = Infallible;
    fn set(&mut self, state: LedState) -> Result<(), Infallible> {
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != Some(state) {
            println!("LED {} {}", self.name, if state.is_on() { "on" } else { "off" });
        }
        *current = Some(state);
        Ok(())
    }
}
