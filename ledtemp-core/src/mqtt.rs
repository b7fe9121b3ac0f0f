//! [`MqttPublisher`]: an [`AsyncPublisher`] over minimq (MQTT v5, `no_std`, no allocator).
//!
//! The design, an example and the RAM it takes are on [`MqttPublisher`].
#![allow(async_fn_in_trait, reason = "node drivers run on one task; no Send bound is wanted")]

use core::cell::{Cell, RefCell};
use core::convert::Infallible;
use core::fmt;
use core::future::{Future, poll_fn};
use core::pin::{Pin, pin};
use core::task::Poll;
use core::time::Duration;

use embassy_time::with_timeout;
use embedded_io_async::{ErrorKind, Read, Write};
use heapless::Vec;
use minimq::{
    Buffers, ConfigBuilder, InboundPublish, Publication, RetainHandling, Session,
    SubscriptionOptions, TopicFilter, Will,
};

use crate::hardware::{AsyncPublisher, Outgoing, QoS};
use crate::{FRAME_OVERHEAD, MAX_FRAME_LEN, MAX_TOPIC_LEN, TopicString};

/// Length of a sealed command frame: header and tag ([`FRAME_OVERHEAD`], 23 bytes), then the
/// payload: the LED state (1), the session (8) and the expiry (4).
const COMMAND_FRAME_LEN: usize = FRAME_OVERHEAD + 1 + 8 + 4;

/// Room for the properties a broker forwards with a command: the sender's message expiry
/// interval (5 bytes, counted down by the broker) and payload format indicator (2), with room to
/// spare. The link asks for no subscription identifier and allows no topic alias, so the broker
/// adds none of its own.
const COMMAND_PROPERTIES_LEN: usize = 16;

/// Largest PUBLISH of a command: fixed header (1, and 2 for a remaining length up to 16,383),
/// topic (2 + [`MAX_TOPIC_LEN`]; a command topic `ledtemp/<device>/cmd/<led>` is at most 77),
/// packet id (2), properties (1 + [`COMMAND_PROPERTIES_LEN`]) and the frame
/// ([`COMMAND_FRAME_LEN`]): 3 + 80 + 2 + 17 + 36 = 138 bytes.
const MAX_COMMAND_PUBLISH_LEN: usize =
    3 + (2 + MAX_TOPIC_LEN) + 2 + (1 + COMMAND_PROPERTIES_LEN) + COMMAND_FRAME_LEN;

/// Size of the MQTT receive buffer in [`MqttBuffers`], in bytes: 138, the largest command
/// PUBLISH. minimq holds one whole packet in it at a time. What the link receives besides
/// commands (CONNACK with the broker's properties, SUBACK, PUBACK, PINGRESP, DISCONNECT) took
/// 128 bytes before commands and fits too. CONNECT tells the broker (Maximum Packet Size) never
/// to send more: a command PUBLISH that does not fit (a sender's extra properties, say) is
/// dropped by the broker, and could not be a command the node accepts anyway.
pub const MQTT_RX_LEN: usize = MAX_COMMAND_PUBLISH_LEN;

// The receive buffer still holds everything it held before commands.
const _: () = assert!(MQTT_RX_LEN >= 128);

/// Commands the [`MqttMailbox`] keeps between two polls: those that arrive while a publish waits
/// for its PUBACK, and those one poll reads. More in that time are dropped (acknowledged to the
/// broker, never handed to the node); a sender sees no confirmation and may send again.
const INBOX_LEN: usize = 2;

/// Longest client id minimq stores, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Largest CONNECT: fixed header (5), variable header (10), properties (15), client id, an empty
/// will property list, and a will of [`MAX_FRAME_LEN`] on a topic of [`MAX_TOPIC_LEN`]. minimq
/// keeps this much of the transmit buffer for the whole connection.
const MAX_CONNECT_LEN: usize =
    5 + 10 + 15 + (2 + MAX_CLIENT_ID_LEN) + 1 + (2 + MAX_TOPIC_LEN) + (2 + MAX_FRAME_LEN);

/// Largest PUBLISH: fixed header, topic, packet id, empty properties, frame.
const MAX_PUBLISH_LEN: usize = 5 + (2 + MAX_TOPIC_LEN) + 2 + 1 + MAX_FRAME_LEN;

/// Size of the MQTT transmit buffer in [`MqttBuffers`], in bytes: the largest CONNECT (kept for
/// the connection) plus one QoS 1 PUBLISH kept until its PUBACK, plus minimq's header scratch.
/// With a username and password, add their lengths plus 4 (use
/// `MqttBuffers::<MQTT_RX_LEN, { MQTT_TX_LEN + n }>::with_sizes()`).
pub const MQTT_TX_LEN: usize = MAX_CONNECT_LEN + MAX_PUBLISH_LEN + 16;

/// The publisher's packet buffers: `RX + TX` bytes ([`MQTT_RX_LEN`] + [`MQTT_TX_LEN`] = 1023 by
/// default). Put them in a `static` cell or on the stack of the task that runs the node.
///
/// RAM of the whole publisher: these buffers, an [`MqttMailbox`] (about 660 bytes: one frame and
/// topic in flight, and two received commands) and the [`mqtt_link`] future (about 400 bytes for its copy of the will, plus
/// minimq's session state and the transport).
#[derive(Debug)]
pub struct MqttBuffers<const RX: usize = MQTT_RX_LEN, const TX: usize = MQTT_TX_LEN> {
    rx: [u8; RX],
    tx: [u8; TX],
}

impl MqttBuffers {
    /// Zeroed buffers of the default sizes.
    pub const fn new() -> Self {
        Self::with_sizes()
    }
}

impl<const RX: usize, const TX: usize> MqttBuffers<RX, TX> {
    /// Zeroed buffers of `RX` and `TX` bytes: `MqttBuffers::<128, 1024>::with_sizes()`.
    pub const fn with_sizes() -> Self {
        MqttBuffers { rx: [0; RX], tx: [0; TX] }
    }
}

impl<const RX: usize, const TX: usize> Default for MqttBuffers<RX, TX> {
    fn default() -> Self {
        Self::with_sizes()
    }
}

/// Opens a new transport to the broker, once per connection attempt.
///
/// ```
/// # #[derive(Debug)] struct NetError;
/// # impl core::fmt::Display for NetError {
/// #     fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result { f.write_str("no route") }
/// # }
/// # struct TcpSocket;
/// # impl embedded_io_async::ErrorType for TcpSocket { type Error = embedded_io_async::ErrorKind; }
/// # impl embedded_io_async::Read for TcpSocket {
/// #     async fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> { Ok(0) }
/// # }
/// # impl embedded_io_async::Write for TcpSocket {
/// #     async fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> { Ok(b.len()) }
/// #     async fn flush(&mut self) -> Result<(), Self::Error> { Ok(()) }
/// # }
/// # async fn open_socket(_: [u8; 4], _: u16) -> Result<TcpSocket, NetError> { Ok(TcpSocket) }
/// use ledtemp_core::Connector;
///
/// struct Broker {
///     address: [u8; 4],
///     port: u16,
/// }
///
/// impl Connector for Broker {
///     type Io = TcpSocket;
///     type Error = NetError;
///     async fn connect(&mut self) -> Result<TcpSocket, NetError> {
///         open_socket(self.address, self.port).await
///     }
/// }
/// ```
///
/// On tokio: `TcpStream::connect(addr)` wrapped in `embedded_io_adapters::tokio_1::FromTokio`.
/// A read of the transport must stay pending while no data is there: minimq treats an error,
/// `TimedOut` included, as a dead connection.
pub trait Connector {
    /// The open transport.
    type Io: Read + Write;
    /// Why no transport could be opened, in words a user can act on ("Connection refused", "no
    /// route to host"); [`MqttError`] shows it after "cannot reach the MQTT broker".
    type Error: fmt::Debug + fmt::Display;

    /// Opens a transport (a TCP connection, say) to the broker. Cancel-safe: a dropped attempt
    /// leaves nothing behind.
    async fn connect(&mut self) -> Result<Self::Io, Self::Error>;
}

impl<T: Connector + ?Sized> Connector for &mut T {
    type Io = T::Io;
    type Error = T::Error;
    async fn connect(&mut self) -> Result<Self::Io, Self::Error> {
        (**self).connect().await
    }
}

/// How the publisher connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig<'a> {
    /// MQTT client id, at most [`MAX_CLIENT_ID_LEN`] bytes; usually the device id. The broker
    /// disconnects an older connection with the same id.
    pub client_id: &'a str,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(&'a str, &'a [u8])>,
    /// Keep-alive interval in seconds (the broker drops the connection after 1.5 times this without
    /// a packet; minimq pings before). Default 30.
    pub keep_alive_secs: u16,
    /// How long opening the transport, the CONNECT handshake, or one publish (for QoS 1: until
    /// the PUBACK) may take before the connection is given up. Default 5 s.
    pub timeout: Duration,
    /// The command filter to subscribe to after each connect, at QoS 1: the node's
    /// [`Topic::command_filter`](crate::Topic::command_filter), `ledtemp/<device>/cmd/+`. What
    /// arrives on it goes to [`AsyncPublisher::poll_commands`]. Default `None`: no subscription,
    /// no commands.
    pub commands: Option<&'a str>,
}

impl<'a> MqttConfig<'a> {
    /// Defaults for `client_id`: no credentials, keep-alive 30 s, timeout 5 s.
    pub const fn new(client_id: &'a str) -> Self {
        MqttConfig {
            client_id,
            credentials: None,
            keep_alive_secs: 30,
            timeout: Duration::from_secs(5),
            commands: None,
        }
    }
}

/// Why the MQTT link failed. After any of these but [`NotConnected`](Self::NotConnected) the
/// connection is closed; the driver connects again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttError<E> {
    /// The [`Connector`] could not open a transport (broker down or unreachable).
    Connect(E),
    /// Reading or writing the open transport failed.
    Transport(ErrorKind),
    /// The broker closed the connection, sent DISCONNECT, or stopped answering pings.
    Closed,
    /// The broker refused (a reason code in CONNACK or PUBACK) or sent an invalid packet.
    Broker(minimq::PeerError),
    /// The configuration does not fit minimq (client id or topic too long).
    Config(minimq::ConfigError),
    /// A packet does not fit the buffers ([`MqttBuffers`] too small for the credentials, or a
    /// frame longer than [`MAX_FRAME_LEN`]).
    Resource(minimq::ResourceError),
    /// minimq refused the request (QoS above the broker's maximum, say).
    Refused,
    /// The transport, the CONNACK or a PUBACK did not come within [`MqttConfig::timeout`].
    Timeout,
    /// Publish or poll while not connected.
    NotConnected,
}

impl<E: fmt::Display> MqttError<E> {
    /// The error as a sentence that names the broker: `cannot reach the MQTT broker at
    /// 10.0.0.2:1883: Connection refused (os error 111)`. Plain `{error}` says the same
    /// without the address (the error itself does not know it).
    pub fn at<'a>(&'a self, broker: &'a str) -> impl fmt::Display + 'a {
        MqttErrorAt { error: self, broker: Some(broker) }
    }
}

/// An [`MqttError`] displayed with (or without) the broker's address.
struct MqttErrorAt<'a, E> {
    error: &'a MqttError<E>,
    broker: Option<&'a str>,
}

impl<E: fmt::Display> fmt::Display for MqttErrorAt<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let broker = Broker(self.broker);
        match self.error {
            // Never connected: the transport could not be opened.
            MqttError::Connect(e) => write!(f, "cannot reach {broker}: {e}"),
            // Connected, then the transport failed or the broker went away.
            MqttError::Transport(kind) => {
                write!(f, "lost the connection to {broker}: {}", kind_in_words(*kind))
            }
            MqttError::Closed => {
                write!(f, "lost the connection to {broker}: it closed the connection")
            }
            MqttError::Broker(minimq::PeerError::Rejected(code)) => {
                write!(f, "{broker} refused: {code:?}")
            }
            MqttError::Broker(e) => write!(f, "{broker} failed: {e}"),
            MqttError::Config(e) => write!(f, "invalid MQTT configuration: {e}"),
            MqttError::Resource(e) => write!(f, "MQTT buffers too small: {e}"),
            MqttError::Refused => write!(f, "{broker} does not allow this request"),
            MqttError::Timeout => write!(f, "{broker} did not answer in time"),
            MqttError::NotConnected => write!(f, "not connected to {broker}"),
        }
    }
}

/// "the MQTT broker", with its address when known.
struct Broker<'a>(Option<&'a str>);

impl fmt::Display for Broker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(address) => write!(f, "the MQTT broker at {address}"),
            None => f.write_str("the MQTT broker"),
        }
    }
}

fn kind_in_words(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ConnectionReset => "the connection was reset",
        ErrorKind::ConnectionAborted => "the connection was aborted",
        ErrorKind::BrokenPipe | ErrorKind::NotConnected => "the connection is gone",
        ErrorKind::TimedOut => "the connection timed out",
        ErrorKind::WriteZero => "could not write to the connection",
        ErrorKind::Interrupted => "interrupted",
        ErrorKind::OutOfMemory => "out of memory",
        _ => "input/output error",
    }
}

impl<E: fmt::Display> fmt::Display for MqttError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        MqttErrorAt { error: self, broker: None }.fmt(f)
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for MqttError<E> {}

impl<E, T: embedded_io_async::Error> From<minimq::Error<T>> for MqttError<E> {
    fn from(error: minimq::Error<T>) -> Self {
        match error {
            minimq::Error::Transport(e) => MqttError::Transport(e.kind()),
            minimq::Error::WriteZero => MqttError::Transport(ErrorKind::WriteZero),
            minimq::Error::Disconnected => MqttError::Closed,
            minimq::Error::Peer(e) => MqttError::Broker(e),
            minimq::Error::Resource(e) => MqttError::Resource(e),
            _ => MqttError::Refused,
        }
    }
}

impl<E, P, T: embedded_io_async::Error> From<minimq::PubError<P, T>> for MqttError<E> {
    fn from(error: minimq::PubError<P, T>) -> Self {
        match error {
            minimq::PubError::Session(e) => e.into(),
            // Copying a frame into the packet failed: it does not fit the buffer.
            minimq::PubError::Payload(_) => {
                MqttError::Resource(minimq::ResourceError::BufferTooSmall)
            }
        }
    }
}

/// A frame copied out of an [`Outgoing`], so it can wait in the mailbox.
#[derive(Debug, Clone)]
struct OwnedFrame {
    topic: TopicString,
    frame: Vec<u8, MAX_FRAME_LEN>,
    qos: QoS,
    retain: bool,
}

impl OwnedFrame {
    fn copy<E>(outgoing: &Outgoing<'_>) -> Result<Self, MqttError<E>> {
        let frame = Vec::from_slice(outgoing.frame)
            .map_err(|_| MqttError::Resource(minimq::ResourceError::PacketTooLarge))?;
        Ok(OwnedFrame {
            topic: outgoing.topic.clone(),
            frame,
            qos: outgoing.qos,
            retain: outgoing.retain,
        })
    }

    fn minimq_qos(&self) -> minimq::QoS {
        match self.qos {
            QoS::AtMostOnce => minimq::QoS::AtMostOnce,
            QoS::AtLeastOnce => minimq::QoS::AtLeastOnce,
        }
    }
}

/// A command as it arrived, copied out of minimq's receive buffer to wait in the mailbox.
#[derive(Debug, Clone)]
struct Received {
    topic: TopicString,
    frame: Vec<u8, COMMAND_FRAME_LEN>,
}

impl Received {
    /// `None` for a message longer than any command (topic or payload): the node would refuse
    /// it unread.
    fn copy(publish: &InboundPublish<'_>) -> Option<Self> {
        let mut topic = TopicString::new();
        topic.push_str(publish.topic()).ok()?;
        Some(Received { topic, frame: Vec::from_slice(publish.payload()).ok()? })
    }
}

#[derive(Debug)]
enum Request {
    Connect(OwnedFrame),
    Publish(OwnedFrame),
    Poll,
    Disconnect,
}

/// Where an [`MqttPublisher`] hands requests to its [`mqtt_link`] and gets the answers. Create
/// one, give it to both, and keep it alive as long as they are.
///
/// Not `Sync`: publisher and link run on one task (on tokio: `block_on`, a current-thread
/// runtime, or a `LocalSet`).
pub struct MqttMailbox<E> {
    request: Cell<Option<Request>>,
    response: Cell<Option<Result<(), MqttError<E>>>>,
    /// A request was handed over and its answer not taken yet (a call was cancelled).
    outstanding: Cell<bool>,
    connected: Cell<bool>,
    /// Commands received and not yet handed out by [`AsyncPublisher::poll_commands`].
    inbox: RefCell<Vec<Received, INBOX_LEN>>,
}

impl<E> MqttMailbox<E> {
    /// An empty mailbox.
    pub const fn new() -> Self {
        MqttMailbox {
            request: Cell::new(None),
            response: Cell::new(None),
            outstanding: Cell::new(false),
            connected: Cell::new(false),
            inbox: RefCell::new(Vec::new()),
        }
    }

    /// The next request. Registers no waker: only the publisher polls the link, and only after
    /// it has put a request in.
    async fn next_request(&self) -> Request {
        poll_fn(|_| match self.request.take() {
            Some(request) => Poll::Ready(request),
            None => Poll::Pending,
        })
        .await
    }

    fn answer(&self, result: Result<(), MqttError<E>>) {
        self.response.set(Some(result));
    }

    /// Keeps a received command for the next [`AsyncPublisher::poll_commands`]; drops it when
    /// the inbox is full or it is no command ([`Received::copy`]).
    fn keep(&self, publish: &InboundPublish<'_>) {
        if let (Ok(mut inbox), Some(received)) =
            (self.inbox.try_borrow_mut(), Received::copy(publish))
        {
            let _ = inbox.push(received);
        }
    }

    fn inbox_is_full(&self) -> bool {
        self.inbox.try_borrow().map_or(true, |inbox| inbox.is_full())
    }

    /// Empties the inbox, handing back what it held.
    fn take_inbox(&self) -> Vec<Received, INBOX_LEN> {
        self.inbox
            .try_borrow_mut()
            .map(|mut inbox| core::mem::take(&mut *inbox))
            .unwrap_or_default()
    }
}

impl<E> Default for MqttMailbox<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> fmt::Debug for MqttMailbox<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttMailbox").field("connected", &self.connected.get()).finish()
    }
}

/// Polls `future` once: `Some(output)` if it finished, `None` (and the future dropped) if it would
/// wait.
async fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// How many packets one [`AsyncPublisher::poll`] handles at most before it returns.
const MAX_PACKETS_PER_POLL: usize = 8;

/// After DISCONNECT, how long the link waits for the broker to close the connection (MQTT 5:
/// the server closes it) before closing it itself. Closing first with bytes unread (a PINGRESP,
/// say) would make TCP reset the connection, and a reset may lose the DISCONNECT, and with it
/// the broker's knowledge that the will is to be discarded.
pub const MQTT_CLOSE_WAIT: Duration = Duration::from_millis(500);

fn embassy_duration(duration: Duration) -> embassy_time::Duration {
    embassy_time::Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The MQTT connection as a future: owns the minimq session and connection and carries out the
/// requests of the [`MqttPublisher`] that shares `mailbox`. It never finishes; the publisher polls
/// it, nothing else should.
///
/// Each connect opens a fresh transport with `connector`, then sends CONNECT with clean start
/// and the will from the request, then, when [`MqttConfig::commands`] names a filter,
/// SUBSCRIBE to it at QoS 1 (retained messages never sent: a command retained before this
/// connection is for an earlier session of the node, which it would refuse) and waits for the
/// SUBACK. A broker that refuses the subscription (an ACL that does not let the device read its
/// commands) leaves the connection up: the node publishes as before and receives no commands.
/// Any failure drops the connection (without DISCONNECT, so the
/// broker publishes the will) and is answered as an error; the next connect starts afresh.
/// Dropping the future drops the connection the same way. Only a disconnect request ends it with
/// DISCONNECT (then waits up to [`MQTT_CLOSE_WAIT`] for the broker to close the connection).
pub async fn mqtt_link<C: Connector, const RX: usize, const TX: usize>(
    mailbox: &MqttMailbox<C::Error>,
    mut connector: C,
    config: MqttConfig<'_>,
    buffers: &mut MqttBuffers<RX, TX>,
) -> Infallible {
    let timeout = embassy_duration(config.timeout);
    let mut next = None;
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => mailbox.next_request().await,
        };
        let will = match request {
            Request::Connect(will) => will,
            Request::Publish(_) | Request::Poll | Request::Disconnect => {
                mailbox.answer(Err(MqttError::NotConnected));
                continue;
            }
        };
        let io = match with_timeout(timeout, connector.connect()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                mailbox.answer(Err(MqttError::Connect(e)));
                continue;
            }
            Err(_) => {
                mailbox.answer(Err(MqttError::Timeout));
                continue;
            }
        };
        let session_config = match session_config(&will, &config, &mut buffers.rx, &mut buffers.tx)
        {
            Ok(session_config) => session_config,
            Err(e) => {
                mailbox.answer(Err(MqttError::Config(e)));
                continue;
            }
        };
        let mut session = Session::new(session_config);
        let mut connection = match with_timeout(timeout, session.connect(io)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                mailbox.answer(Err(e.into()));
                continue;
            }
            Err(_) => {
                mailbox.answer(Err(MqttError::Timeout));
                continue;
            }
        };
        // Commands of the connection before are for the node's session before: stale.
        let _ = mailbox.take_inbox();
        if let Some(filter) = config.commands {
            let subscribed = with_timeout(timeout, subscribe(&mut connection, filter, mailbox));
            if let Err(e) = subscribed.await.unwrap_or(Err(MqttError::Timeout)) {
                mailbox.answer(Err(e));
                continue;
            }
        }
        mailbox.connected.set(true);
        mailbox.answer(Ok(()));

        let disconnected = loop {
            let result = match mailbox.next_request().await {
                Request::Connect(will) => {
                    // Asked to reconnect while connected: start over with the new will.
                    next = Some(Request::Connect(will));
                    break None;
                }
                Request::Publish(frame) => {
                    match with_timeout(timeout, publish(&mut connection, &frame, mailbox)).await {
                        Ok(result) => result,
                        Err(_) => Err(MqttError::Timeout),
                    }
                }
                Request::Poll => poll(&mut connection, mailbox).await,
                Request::Disconnect => {
                    break Some(match with_timeout(timeout, connection.disconnect()).await {
                        Ok(result) => result.map_err(MqttError::from),
                        Err(_) => Err(MqttError::Timeout),
                    });
                }
            };
            let failed = result.is_err();
            mailbox.answer(result);
            if failed {
                break None;
            }
        };
        mailbox.connected.set(false);
        if let Some(result) = disconnected {
            if result.is_ok() {
                let mut io = connection.into_inner();
                let _ =
                    with_timeout(embassy_duration(MQTT_CLOSE_WAIT), until_closed(&mut io)).await;
            }
            mailbox.answer(result);
        }
    }
}

/// Reads (and discards) until the peer closes the transport or it fails.
async fn until_closed<IO: Read>(io: &mut IO) {
    let mut scratch = [0u8; 32];
    while let Ok(1..) = io.read(&mut scratch).await {}
}

fn session_config<'b>(
    will: &'b OwnedFrame,
    config: &MqttConfig<'b>,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
) -> Result<ConfigBuilder<'b>, minimq::ConfigError> {
    let mut minimq_will = Will::new(&will.topic, &will.frame, &[])?.qos(will.minimq_qos());
    if will.retain {
        minimq_will = minimq_will.retained();
    }
    let mut builder = ConfigBuilder::new(Buffers::new(rx, tx))
        .client_id(config.client_id)?
        .keepalive_interval(config.keep_alive_secs)
        .will(minimq_will)?;
    if let Some((username, password)) = config.credentials {
        builder = builder.auth(username, password)?;
    }
    Ok(builder)
}

/// Subscribes to `filter` at QoS 1 and drives the connection until the SUBACK; a refused
/// subscription is no error ([`mqtt_link`]).
async fn subscribe<E, IO: minimq::Io>(
    connection: &mut minimq::Connection<'_, '_, IO>,
    filter: &str,
    mailbox: &MqttMailbox<E>,
) -> Result<(), MqttError<E>> {
    let options = SubscriptionOptions::default()
        .maximum_qos(minimq::QoS::AtLeastOnce)
        .retain_behavior(RetainHandling::Never);
    let op = connection.subscribe(&[TopicFilter::new(filter).options(options)], &[]).await?;
    loop {
        if connection.is_complete(&op) {
            return Ok(());
        }
        if connection.is_invalidated(&op) || !connection.is_connected() {
            return Err(MqttError::Closed);
        }
        let result = match connection.poll().await {
            Ok(Some(publish)) => {
                mailbox.keep(&publish);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            // A failure code in the SUBACK (minimq has completed the request).
            Err(minimq::Error::Peer(minimq::PeerError::Rejected(_)))
                if connection.is_complete(&op) && connection.is_connected() =>
            {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Publishes one frame; for QoS 1, drives the connection until the broker's PUBACK, keeping
/// the commands that arrive meanwhile in `mailbox`.
async fn publish<E, IO: minimq::Io>(
    connection: &mut minimq::Connection<'_, '_, IO>,
    frame: &OwnedFrame,
    mailbox: &MqttMailbox<E>,
) -> Result<(), MqttError<E>> {
    let mut publication = Publication::bytes(&frame.topic, &frame.frame).qos(frame.minimq_qos());
    if frame.retain {
        publication = publication.retain();
    }
    let Some(op) = connection.publish(publication).await? else {
        return Ok(());
    };
    loop {
        if connection.is_complete(&op) {
            return Ok(());
        }
        if connection.is_invalidated(&op) || !connection.is_connected() {
            return Err(MqttError::Closed);
        }
        if let Some(publish) = connection.poll().await? {
            mailbox.keep(&publish);
        }
    }
}

/// Handles what has arrived (acknowledgements, PINGRESP, commands into `mailbox`) and sends a
/// ping when due; returns as soon as reading would wait, or the mailbox is full of commands
/// (the rest waits in the transport for the next poll).
async fn poll<E, IO: minimq::Io>(
    connection: &mut minimq::Connection<'_, '_, IO>,
    mailbox: &MqttMailbox<E>,
) -> Result<(), MqttError<E>> {
    for _ in 0..MAX_PACKETS_PER_POLL {
        if mailbox.inbox_is_full() {
            return Ok(());
        }
        // `Connection::poll` is cancel-safe when the transport's futures are.
        match poll_once(connection.poll()).await {
            None => return Ok(()),
            Some(Ok(Some(publish))) => mailbox.keep(&publish),
            Some(Ok(None)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// An [`AsyncPublisher`] over minimq.
///
/// # Why a publisher and a link
///
/// A minimq `Connection` borrows its `Session`, and the session holds the Last Will for its whole
/// life. Every connection needs a fresh will (its sequence number is reserved for that connection,
/// see [`Node::handle_connect`](crate::Node::handle_connect)), so every connection needs a fresh
/// session, built on buffers that must be borrowed again for the next one. Safe Rust cannot keep
/// such a session and its connection in one struct between calls, but an `async fn` can keep them
/// in its own frame. So the work is split in two:
///
/// - [`mqtt_link`] is that `async fn`: it owns the session and the connection, and carries out one
///   request at a time (connect, publish, poll) handed to it through an [`MqttMailbox`];
/// - [`MqttPublisher`] implements [`AsyncPublisher`]: each call puts a request into the mailbox and
///   polls the (pinned) link future until the answer is there. Nothing else polls the link, so
///   nothing needs to be spawned or joined, and it works on any executor, including
///   [`block_on`](crate::block_on).
///
/// # Example
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use core::pin::pin;
/// use ledtemp_core::{
///     AsyncPublisher, Connector, MqttBuffers, MqttConfig, MqttMailbox, MqttPublisher, Outgoing,
///     mqtt_link,
/// };
/// # struct Tcp;
/// # impl embedded_io_async::ErrorType for Tcp { type Error = embedded_io_async::ErrorKind; }
/// # impl embedded_io_async::Read for Tcp {
/// #     async fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> { Ok(0) }
/// # }
/// # impl embedded_io_async::Write for Tcp {
/// #     async fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> { Ok(b.len()) }
/// #     async fn flush(&mut self) -> Result<(), Self::Error> { Ok(()) }
/// # }
/// /// Opens a TCP connection to the broker (a socket of your network stack).
/// struct Broker;
/// impl Connector for Broker {
///     type Io = Tcp;
///     type Error = core::convert::Infallible;
///     async fn connect(&mut self) -> Result<Tcp, Self::Error> {
///         Ok(Tcp) // connect the socket to the broker's address and port here
///     }
/// }
///
/// let mailbox = MqttMailbox::new();
/// let mut buffers = MqttBuffers::new();
/// let mut config = MqttConfig::new("kitchen-pi");
/// let commands = ledtemp_core::Topic::command_filter(&ledtemp_core::DeviceId::new("kitchen-pi")?);
/// config.commands = Some(&commands); // ledtemp/kitchen-pi/cmd/+
/// let link = pin!(mqtt_link(&mailbox, Broker, config, &mut buffers));
/// let mut publisher = MqttPublisher::new(&mailbox, link);
/// # let (will, frame): (Outgoing<'_>, Outgoing<'_>) = todo!();
/// // The driver (`run_async`) makes these calls; shown here for the order.
/// publisher.connect(&will).await?; // will: from `Node::handle_connect`
/// publisher.publish(&frame).await?; // QoS 1: returns once the broker acknowledged it
/// // Between frames: pings, acknowledgements, and the commands received, for `Node::handle_command`.
/// publisher.poll_commands(|topic, frame| { /* node.handle_command(now, topic, frame) */ }).await?;
/// # Ok(()) }
/// ```
///
/// # Time
///
/// minimq keeps time with `embassy-time`, and so do the timeouts here: a program needs an
/// embassy-time driver (on std, embassy-time's `std` feature; on bare metal, a
/// `time_driver_impl!` over a hardware timer).
///
/// # RAM
///
/// [`MqttBuffers`] (about 1 KB), an [`MqttMailbox`] and the [`mqtt_link`] future: see
/// [`MqttBuffers`]. Publisher and link are not `Send`: run them on the node's task.
///
/// # Contract
///
/// - [`connect`](AsyncPublisher::connect): a fresh transport, CONNECT with clean start and the
///   node's sealed offline frame as Last Will, then SUBSCRIBE to [`MqttConfig::commands`] at
///   QoS 1 (when set) and its SUBACK.
/// - [`publish`](AsyncPublisher::publish): for [`QoS::AtLeastOnce`], `Ok` only once the broker's
///   PUBACK arrived, so a frame the node then drops from its queue is with the broker; for
///   [`QoS::AtMostOnce`], once written.
/// - [`poll`](AsyncPublisher::poll): handles what has arrived and pings when due; returns at once
///   when nothing is there.
/// - [`poll_commands`](AsyncPublisher::poll_commands): as `poll`, then hands out the commands
///   received since the last call (those that arrived during a publish included), at most
///   two per call; more arriving within one publish are dropped. `poll` drops them.
/// - [`disconnect`](AsyncPublisher::disconnect): MQTT DISCONNECT (reason 0, normal disconnection:
///   the broker discards the will), then waits up to [`MQTT_CLOSE_WAIT`] for the broker to close
///   the connection.
///
/// Each call is bounded by [`MqttConfig::timeout`]; any failure closes the connection and returns
/// `Err`, and the node keeps the frame. Cancelling a call is safe: the next call first finishes
/// the cancelled request (a cancelled publish may still reach the broker).
pub struct MqttPublisher<'a, E, L> {
    mailbox: &'a MqttMailbox<E>,
    link: Pin<&'a mut L>,
}

impl<'a, E, L: Future<Output = Infallible>> MqttPublisher<'a, E, L> {
    /// A publisher over `link`, the pinned [`mqtt_link`] future created with the same `mailbox`.
    pub fn new(mailbox: &'a MqttMailbox<E>, link: Pin<&'a mut L>) -> Self {
        MqttPublisher { mailbox, link }
    }

    /// Hands `request` to the link and drives it until the answer is there.
    async fn call(&mut self, request: Request) -> Result<(), MqttError<E>> {
        if self.mailbox.outstanding.get() {
            // A cancelled call left its request behind: finish it first; its answer is stale.
            let _ = self.answer().await;
        }
        self.mailbox.request.set(Some(request));
        self.mailbox.outstanding.set(true);
        self.answer().await
    }

    async fn answer(&mut self) -> Result<(), MqttError<E>> {
        let mailbox = self.mailbox;
        let link = &mut self.link;
        let result = poll_fn(|cx| {
            if let Some(result) = mailbox.response.take() {
                return Poll::Ready(result);
            }
            if let Poll::Ready(never) = link.as_mut().poll(cx) {
                match never {}
            }
            // Pending with an answer: the link has moved on to wait for the next request.
            // Pending without one: it waits for the transport, which will wake this task.
            mailbox.response.take().map_or(Poll::Pending, Poll::Ready)
        })
        .await;
        mailbox.outstanding.set(false);
        result
    }
}

impl<E, L> fmt::Debug for MqttPublisher<'_, E, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttPublisher").field("mailbox", self.mailbox).finish_non_exhaustive()
    }
}

impl<E, L> AsyncPublisher for MqttPublisher<'_, E, L>
where
    E: fmt::Debug + fmt::Display,
    L: Future<Output = Infallible>,
{
    type Error = MqttError<E>;

    fn is_connected(&self) -> bool {
        self.mailbox.connected.get()
    }

    async fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error> {
        self.call(Request::Connect(OwnedFrame::copy(will)?)).await
    }

    async fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error> {
        if !self.is_connected() {
            return Err(MqttError::NotConnected);
        }
        self.call(Request::Publish(OwnedFrame::copy(frame)?)).await
    }

    /// Polls and drops the commands received (use
    /// [`poll_commands`](AsyncPublisher::poll_commands) to get them).
    async fn poll(&mut self) -> Result<(), Self::Error> {
        self.poll_commands(|_, _| {}).await
    }

    async fn poll_commands(
        &mut self,
        mut on_command: impl FnMut(&str, &[u8]),
    ) -> Result<(), Self::Error> {
        let result = match self.is_connected() {
            true => self.call(Request::Poll).await,
            false => Err(MqttError::NotConnected),
        };
        // Also after a failure: these were acknowledged to the broker, and the node's session
        // they are for is still current.
        for received in self.mailbox.take_inbox() {
            on_command(&received.topic, &received.frame);
        }
        result
    }

    async fn disconnect(&mut self) -> Result<(), Self::Error> {
        if !self.is_connected() {
            return Err(MqttError::NotConnected);
        }
        self.call(Request::Disconnect).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AesGcmCodec, Codec, DeviceId, KeyId, LedCommand, LedName, LedState, MAX_NAME_LEN, Message,
        SequenceNumber, Topic, Uptime,
    };

    #[test]
    fn the_receive_buffer_holds_the_largest_command_publish() {
        let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[1; 16]).unwrap();
        let name = "n".repeat(MAX_NAME_LEN);
        let device = DeviceId::new(&name).unwrap();
        let command = Message::Command(LedCommand {
            led: LedName::new(&name).unwrap(),
            state: LedState::On,
            session: SequenceNumber::new(crate::MAX_SEQUENCE).unwrap(),
            expires: Uptime(u32::MAX),
        });
        let mut buf = [0u8; MAX_FRAME_LEN];
        let sequence = SequenceNumber::new(crate::MAX_SEQUENCE).unwrap();
        let len = codec.seal(&device, sequence, &command, &mut buf).unwrap();
        assert_eq!(len, COMMAND_FRAME_LEN);
        let topic = command.topic(&device).to_topic_string();
        assert!(topic.len() < MAX_TOPIC_LEN);
        assert!(Topic::command_filter(&device).len() <= MAX_TOPIC_LEN);
        // Fixed header with a two-byte length, topic, packet id, properties, frame.
        let body = 2 + topic.len() + 2 + 1 + COMMAND_PROPERTIES_LEN + len;
        assert!((128..16_384).contains(&body));
        assert!(1 + 2 + body <= MQTT_RX_LEN);
    }
}
