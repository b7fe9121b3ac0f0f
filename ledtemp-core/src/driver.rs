//! Drivers: the thin loops that carry a [`Node`]'s inputs and outputs to real hardware.
//!
//! The loop is written once, as async code over [`NodeIo`]; [`run_async`] binds it to async
//! hardware and [`run_blocking`] to blocking hardware (whose futures never wait, so a busy-poll
//! [`block_on`] drives them). Their `_until` forms ([`Driver::run_until`], [`run_async_until`],
//! [`run_blocking_until`]) also take a stop signal and end the node cleanly ([`Stopped`]).
#![allow(async_fn_in_trait, reason = "node drivers run on one task; no Send bound is wanted")]

use core::convert::Infallible;
use core::fmt::{self, Debug, Display};
use core::future::{Future, pending, poll_fn};
use core::pin::{Pin, pin};
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use crate::hardware::{
    AsyncPublisher, AsyncTempSensor, Button, Led, Outgoing, Publisher, TempSensor,
};
use crate::{
    AppliedCommand, Clock, Codec, Error, Instant, LedState, MAX_FRAME_LEN, MilliCelsius, Node,
    SequenceStore, Shutdown,
};

/// An error of the broker link, as [`RunEvent`] reports it: displayed, it says what happened.
pub type LinkError<'a> = &'a dyn core::error::Error;

/// Something a driver reports while it runs, for the caller to log.
///
/// Displayed, an event is a sentence for a log line, in plain words: `{event}` rather than
/// `{event:?}`. A broker error says itself where it happened if the publisher knows the broker
/// (`ledtemp-tokio`'s does: "cannot reach the MQTT broker at 10.0.0.2:1883: Connection refused
/// (os error 111); next attempt in 2 s").
#[derive(Debug)]
#[non_exhaustive]
pub enum RunEvent<'a> {
    /// Connected to the broker.
    Connected,
    /// A connection attempt failed; the next one is in `retry_in`.
    ConnectFailed {
        /// What the publisher said.
        error: LinkError<'a>,
        /// Delay before the next attempt (exponential backoff).
        retry_in: Duration,
    },
    /// Publishing or keeping the link failed; frames wait in the node's queue.
    LinkLost {
        /// What the publisher said.
        error: LinkError<'a>,
    },
    /// The node was asked to stop: it delivers `queued` messages and then its offline status,
    /// for at most its [`shutdown_timeout`](crate::NodeConfig::shutdown_timeout).
    Stopping {
        /// Messages waiting in the queue, besides the offline status.
        queued: usize,
    },
    /// A frame went out.
    Published {
        /// Its topic.
        topic: &'a str,
        /// Its length in bytes.
        len: usize,
    },
    /// Reading sensor `index` failed (no frame this period).
    SensorFailed {
        /// Which sensor.
        index: usize,
        /// What the sensor said.
        error: &'a dyn Debug,
    },
    /// Reading a button or driving an LED failed.
    PinFailed {
        /// Which button or LED.
        index: usize,
        /// What the pin said.
        error: &'a dyn Debug,
    },
    /// A command received on `topic` was applied ([`Node::handle_command`]): the LED is driven
    /// (when its state changed) and its state goes out as an LED frame, the confirmation.
    CommandApplied {
        /// Where it came from: `ledtemp/<device>/cmd/<led>`.
        topic: &'a str,
        /// Which LED, its state now, and whether the command changed it.
        applied: AppliedCommand,
    },
    /// A message received on the command subscription was refused and changed nothing:
    /// forged, altered, replayed, for an earlier session of the node, expired, for an LED the
    /// node does not have. Expected under attack and after a reconnection; the node goes on.
    CommandRefused {
        /// Where it came from, as the broker delivered it (anything under
        /// `ledtemp/<device>/cmd/`; displayed escaped).
        topic: &'a str,
        /// Why ([`Node::handle_command`] has the list).
        error: Error,
    },
}

impl Display for RunEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunEvent::Connected => f.write_str("connected to the MQTT broker"),
            RunEvent::ConnectFailed { error, retry_in } => {
                write!(f, "{error}; next attempt in {} s", Seconds(*retry_in))
            }
            RunEvent::LinkLost { error } => write!(f, "{error}; frames wait in the queue"),
            RunEvent::Stopping { queued } => write!(
                f,
                "stopping: sending {queued} queued message{} and the offline status",
                if *queued == 1 { "" } else { "s" }
            ),
            RunEvent::Published { topic, len } => write!(f, "published {len} bytes on {topic}"),
            // Hardware errors are `Debug` only (embedded-hal's convention).
            RunEvent::SensorFailed { index, error } => {
                write!(f, "reading sensor {index} failed: {error:?}")
            }
            RunEvent::PinFailed { index, error } => write!(f, "pin {index} failed: {error:?}"),
            RunEvent::CommandApplied { topic, applied } => write!(
                f,
                "command on {topic} applied: LED {} {}",
                if applied.state.is_on() { "on" } else { "off" },
                if applied.changed { "(changed)" } else { "(unchanged)" }
            ),
            // The topic is the sender's choice below the filter: escaped, it cannot forge a
            // log line.
            RunEvent::CommandRefused { topic, error } => {
                write!(f, "command on \"{}\" refused: {error}", topic.escape_debug())
            }
        }
    }
}

/// A duration in seconds as a person reads it: `2`, `0.5`, `1.25`.
struct Seconds(Duration);

impl Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let (whole, frac) = (millis / 1000, millis % 1000);
        match frac {
            0 => write!(f, "{whole}"),
            _ if frac % 100 == 0 => write!(f, "{whole}.{}", frac / 100),
            _ if frac % 10 == 0 => write!(f, "{whole}.{:02}", frac / 10),
            _ => write!(f, "{whole}.{frac:03}"),
        }
    }
}

/// How a node that was asked to stop ended: the value of [`Driver::run_until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// Clean: the queue and the offline status were published and acknowledged, and MQTT
    /// DISCONNECT was sent, so the broker discarded the Last Will.
    Disconnected,
    /// The offline status could not be published within the node's shutdown timeout (the broker
    /// was unreachable or slow), or DISCONNECT failed: the connection ended without DISCONNECT and
    /// the broker publishes the Last Will (the same offline status) instead.
    Abandoned {
        /// Messages that were still queued, besides the offline status; they are lost.
        unsent: usize,
    },
}

/// Exponential backoff between connection attempts: doubles from `min` up to `max`, back to `min`
/// after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    /// 1 s, doubling up to 60 s.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// How often a driver samples the buttons (a debounce of 20 ms needs a few samples).
pub const BUTTON_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The I/O one driver step needs. Implemented for blocking and for async hardware by this module;
/// implement it yourself to drive a [`Node`] from something else entirely.
pub trait NodeIo {
    /// The current time.
    fn now(&mut self) -> Instant;
    /// Number of buttons.
    fn button_count(&self) -> usize;
    /// Raw level of button `index`.
    fn read_button(&mut self, index: usize) -> Result<bool, &dyn Debug>;
    /// Drives LED `index`.
    fn set_led(&mut self, index: usize, state: LedState) -> Result<(), &dyn Debug>;
    /// Reads sensor `index`; the handler gets the reading or the error.
    async fn read_sensor(
        &mut self,
        index: usize,
        handle: impl FnOnce(Result<MilliCelsius, &dyn Debug>),
    );
    /// Whether the link is up.
    fn is_connected(&mut self) -> bool;
    /// Connects with `will` (and subscribes to the node's commands: [`Publisher`]'s
    /// [Commands](Publisher#commands)).
    async fn connect(
        &mut self,
        will: &Outgoing<'_>,
        handle: impl FnOnce(Result<(), LinkError<'_>>),
    );
    /// Publishes `frame`.
    async fn publish(
        &mut self,
        frame: &Outgoing<'_>,
        handle: impl FnOnce(Result<(), LinkError<'_>>),
    );
    /// Keeps the link alive, and hands each command received since the last call to `handle`
    /// as `Ok((topic, payload))`, in the order received; a failure of the link comes last, as
    /// `Err`.
    async fn poll_link(&mut self, handle: impl FnMut(Result<(&str, &[u8]), LinkError<'_>>));
    /// Ends the connection with MQTT DISCONNECT (the broker discards the will).
    async fn disconnect(&mut self, handle: impl FnOnce(Result<(), LinkError<'_>>));
    /// Waits until `deadline`.
    async fn sleep_until(&mut self, deadline: Instant);
}

/// The driver's own state: backoff and the two frame buffers (the will's and the current frame's).
pub struct Driver {
    backoff: Backoff,
    next_connect: Instant,
    will_buf: [u8; MAX_FRAME_LEN],
    frame_buf: [u8; MAX_FRAME_LEN],
}

impl Default for Driver {
    fn default() -> Self {
        Driver::new(Backoff::default())
    }
}

impl Driver {
    /// A driver that reconnects with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Driver {
            backoff,
            next_connect: Instant::from_millis(0),
            will_buf: [0; MAX_FRAME_LEN],
            frame_buf: [0; MAX_FRAME_LEN],
        }
    }

    /// One pass: (re)connect if due, poll the link and hand the commands received to the node
    /// ([`Node::handle_command`], reported as [`RunEvent::CommandApplied`] or
    /// [`RunEvent::CommandRefused`]), read buttons, advance timers, read due sensors, drive LEDs,
    /// send queued frames while the link is up. Returns when the next pass is due. Errors only
    /// on what the node cannot go on from ([`Error::SequenceStore`], [`Error::SequenceExhausted`]):
    /// a refused command is never one.
    pub async fn step<C: Codec, S: SequenceStore, const Q: usize>(
        &mut self,
        node: &mut Node<C, S, Q>,
        io: &mut impl NodeIo,
        on_event: &mut impl FnMut(RunEvent<'_>),
    ) -> Result<Instant, Error> {
        let now = io.now();
        if !io.is_connected() && now >= self.next_connect {
            let will = node.handle_connect(now, &mut self.will_buf)?;
            let mut failed = false;
            io.connect(&will, |result| match result {
                Ok(()) => on_event(RunEvent::Connected),
                Err(error) => {
                    failed = true;
                    let retry_in = self.backoff.next_delay();
                    self.next_connect = now + retry_in;
                    on_event(RunEvent::ConnectFailed { error, retry_in });
                }
            })
            .await;
            if !failed {
                self.backoff.reset();
            }
        }

        // Polled first, so that an applied command drives its LED and sends its confirmation in
        // this same pass. The time is read after the connect, which may have taken a while: a
        // command's expiry is checked against it.
        let now = io.now();
        if io.is_connected() {
            io.poll_link(|received| match received {
                Ok((topic, frame)) => apply_command(node, now, topic, frame, on_event),
                Err(error) => on_event(RunEvent::LinkLost { error }),
            })
            .await;
        }

        for index in 0..io.button_count() {
            match io.read_button(index) {
                Ok(pressed) => node.handle_button(now, index, pressed),
                Err(error) => on_event(RunEvent::PinFailed { index, error }),
            }
        }
        node.handle_timeout(now);
        while let Some(index) = node.poll_sample() {
            io.read_sensor(index, |result| match result {
                Ok(value) => node.handle_temperature(now, index, value),
                Err(error) => {
                    node.handle_sensor_error(index);
                    on_event(RunEvent::SensorFailed { index, error });
                }
            })
            .await;
        }
        while let Some((index, state)) = node.poll_led() {
            if let Err(error) = io.set_led(index, state) {
                on_event(RunEvent::PinFailed { index, error });
            }
        }

        if io.is_connected() {
            while let Some(frame) = node.poll_transmit(&mut self.frame_buf)? {
                let mut sent = false;
                io.publish(&frame, |result| match result {
                    Ok(()) => {
                        sent = true;
                        on_event(RunEvent::Published {
                            topic: &frame.topic,
                            len: frame.frame.len(),
                        });
                    }
                    Err(error) => on_event(RunEvent::LinkLost { error }),
                })
                .await;
                if !sent {
                    break;
                }
                node.handle_sent();
            }
        }
        let mut wake = node.poll_timeout().min(now + BUTTON_POLL_INTERVAL);
        if !io.is_connected() {
            wake = wake.min(self.next_connect.max(now));
        }
        Ok(wake)
    }

    /// Steps forever, sleeping between passes. Returns only on an error the node cannot go on
    /// from.
    pub async fn run<C: Codec, S: SequenceStore, const Q: usize>(
        &mut self,
        node: &mut Node<C, S, Q>,
        io: &mut impl NodeIo,
        on_event: &mut impl FnMut(RunEvent<'_>),
    ) -> Result<Infallible, Error> {
        self.run_until(node, io, pending(), on_event).await?;
        // A stop that never comes cannot end the run; this is never reached.
        pending().await
    }

    /// Steps, sleeping between passes, until `stop` completes; then stops the node cleanly
    /// ([`Node::handle_shutdown`]): it sends what is queued and its offline status, within the
    /// node's [`shutdown_timeout`](crate::NodeConfig::shutdown_timeout), and ends the connection
    /// with MQTT DISCONNECT ([`Stopped::Disconnected`]); or, if the offline status cannot go out
    /// in time, without it, so that the broker publishes the will ([`Stopped::Abandoned`]).
    ///
    /// `stop` is polled while the driver sleeps between passes (every few milliseconds at most,
    /// [`BUTTON_POLL_INTERVAL`]); a pass that is publishing or connecting finishes first, so the
    /// whole stop takes at most the shutdown timeout plus one publisher call, which the
    /// publisher's own timeout bounds. Errors as [`step`](Self::step).
    ///
    /// Cancellation: dropping the future stops the node at once, as with [`run`](Self::run): the
    /// connection closes without DISCONNECT (the broker publishes the will) and queued frames
    /// stay in `node`.
    pub async fn run_until<C: Codec, S: SequenceStore, const Q: usize>(
        &mut self,
        node: &mut Node<C, S, Q>,
        io: &mut impl NodeIo,
        stop: impl Future<Output = ()>,
        on_event: &mut impl FnMut(RunEvent<'_>),
    ) -> Result<Stopped, Error> {
        let mut stop = pin!(stop);
        loop {
            let wake = self.step(node, io, on_event).await?;
            match node.poll_shutdown(io.now()) {
                None => {
                    if sleep_or(io.sleep_until(wake), stop.as_mut()).await {
                        node.handle_shutdown(io.now());
                        let queued = node.stats().queued.saturating_sub(1);
                        on_event(RunEvent::Stopping { queued });
                    }
                }
                Some(Shutdown::Flushing { deadline }) => {
                    if !io.is_connected() && self.next_connect >= deadline {
                        // No connection before the deadline: nothing more can go out.
                        let unsent = node.stats().queued.saturating_sub(1);
                        return Ok(Stopped::Abandoned { unsent });
                    }
                    io.sleep_until(wake).await;
                }
                Some(Shutdown::Disconnect) => {
                    if !io.is_connected() {
                        // Lost right after the offline status: the broker publishes the will.
                        return Ok(Stopped::Abandoned { unsent: 0 });
                    }
                    let mut clean = false;
                    io.disconnect(|result| match result {
                        Ok(()) => clean = true,
                        Err(error) => on_event(RunEvent::LinkLost { error }),
                    })
                    .await;
                    return Ok(if clean {
                        Stopped::Disconnected
                    } else {
                        Stopped::Abandoned { unsent: 0 }
                    });
                }
                Some(Shutdown::Abandon { unsent }) => return Ok(Stopped::Abandoned { unsent }),
            }
        }
    }
}

/// Hands a received command to the node and reports what became of it.
///
/// Kept out of line on purpose: inlined, it makes the link's callback too big to inline in turn,
/// and a link error reported through a callback that is not inlined needs the error's
/// `dyn Error` vtable, which pulls `core::fmt` and minimq's `Debug` impls into a firmware image
/// that never formats (about 14 KB of flash on the Cortex-M4F).
#[inline(never)]
fn apply_command<C: Codec, S: SequenceStore, const Q: usize>(
    node: &mut Node<C, S, Q>,
    now: Instant,
    topic: &str,
    frame: &[u8],
    on_event: &mut impl FnMut(RunEvent<'_>),
) {
    match node.handle_command(now, topic, frame) {
        Ok(applied) => on_event(RunEvent::CommandApplied { topic, applied }),
        Err(error) => on_event(RunEvent::CommandRefused { topic, error }),
    }
}

/// Waits for `sleep`, or for `stop` if it completes first (then `true`; `sleep` is dropped).
async fn sleep_or(
    sleep: impl Future<Output = ()>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut sleep = pin!(sleep);
    poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        sleep.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// Blocking hardware: buttons, LEDs and sensors as slices (button `i` toggles LED `i`), a
/// [`Publisher`], a [`Clock`] and an embedded-hal delay.
pub struct BlockingIo<'a, B, L, T, P, K, D> {
    /// Buttons, in LED order.
    pub buttons: &'a mut [B],
    /// LEDs.
    pub leds: &'a mut [L],
    /// Temperature sensors, in the node's sensor order.
    pub sensors: &'a mut [T],
    /// The broker link.
    pub publisher: P,
    /// The monotonic clock.
    pub clock: K,
    /// The delay used to sleep between passes.
    pub delay: D,
}

/// The [`NodeIo`] of [`BlockingIo`] and [`AsyncIo`]: the same code, with `.await` after the
/// sensor, publisher and delay calls of the async form.
macro_rules! impl_node_io {
    ($io:ident where $($bound:tt)*) => {
        impl_node_io!(@impl $io [$($bound)*] []);
    };
    (async $io:ident where $($bound:tt)*) => {
        impl_node_io!(@impl $io [$($bound)*] [.await]);
    };
    (@impl $io:ident [$($bound:tt)*] [$($await:tt)*]) => {
        impl<B, L, T, P, K, D> NodeIo for $io<'_, B, L, T, P, K, D>
        where
            $($bound)*
        {
            fn now(&mut self) -> Instant {
                self.clock.now()
            }
            fn button_count(&self) -> usize {
                self.buttons.len()
            }
            fn read_button(&mut self, index: usize) -> Result<bool, &dyn Debug> {
                read_button(self.buttons, index)
            }
            fn set_led(&mut self, index: usize, state: LedState) -> Result<(), &dyn Debug> {
                set_led(self.leds, index, state)
            }
            async fn read_sensor(
                &mut self,
                index: usize,
                handle: impl FnOnce(Result<MilliCelsius, &dyn Debug>),
            ) {
                if let Some(sensor) = self.sensors.get_mut(index) {
                    match sensor.read()$($await)* {
                        Ok(value) => handle(Ok(value)),
                        Err(error) => handle(Err(&error)),
                    }
                }
            }
            fn is_connected(&mut self) -> bool {
                self.publisher.is_connected()
            }
            async fn connect(
                &mut self,
                will: &Outgoing<'_>,
                handle: impl FnOnce(Result<(), LinkError<'_>>),
            ) {
                report(self.publisher.connect(will)$($await)*, handle);
            }
            async fn publish(
                &mut self,
                frame: &Outgoing<'_>,
                handle: impl FnOnce(Result<(), LinkError<'_>>),
            ) {
                report(self.publisher.publish(frame)$($await)*, handle);
            }
            async fn poll_link(
                &mut self,
                mut handle: impl FnMut(Result<(&str, &[u8]), LinkError<'_>>),
            ) {
                let result = self
                    .publisher
                    .poll_commands(|topic, frame| handle(Ok((topic, frame))))$($await)*;
                if let Err(error) = result {
                    handle(Err(&error));
                }
            }
            async fn disconnect(&mut self, handle: impl FnOnce(Result<(), LinkError<'_>>)) {
                report(self.publisher.disconnect()$($await)*, handle);
            }
            async fn sleep_until(&mut self, deadline: Instant) {
                let now = self.clock.now();
                let millis = deadline.as_millis().saturating_sub(now.as_millis());
                self.delay.delay_ms(u32::try_from(millis).unwrap_or(u32::MAX))$($await)*;
            }
        }
    };
}

impl_node_io!(BlockingIo where
    B: Button,
    L: Led,
    T: TempSensor,
    P: Publisher,
    K: Clock,
    D: embedded_hal::delay::DelayNs,
);

/// Async hardware: blocking buttons and LEDs (a GPIO read never waits), async sensors, an
/// [`AsyncPublisher`], a [`Clock`] and an embedded-hal-async delay.
pub struct AsyncIo<'a, B, L, T, P, K, D> {
    /// Buttons, in LED order.
    pub buttons: &'a mut [B],
    /// LEDs.
    pub leds: &'a mut [L],
    /// Temperature sensors, in the node's sensor order.
    pub sensors: &'a mut [T],
    /// The broker link.
    pub publisher: P,
    /// The monotonic clock.
    pub clock: K,
    /// The delay used to sleep between passes.
    pub delay: D,
}

impl_node_io!(async AsyncIo where
    B: Button,
    L: Led,
    T: AsyncTempSensor,
    P: AsyncPublisher,
    K: Clock,
    D: embedded_hal_async::delay::DelayNs,
);

fn read_button<B: Button>(buttons: &mut [B], index: usize) -> Result<bool, &dyn Debug> {
    match buttons.get_mut(index).map(Button::is_pressed) {
        Some(Ok(pressed)) => Ok(pressed),
        // The error value lives in this frame only; report that the pin failed by its index.
        Some(Err(_)) => Err(&"button read failed"),
        None => Ok(false),
    }
}

fn set_led<L: Led>(leds: &mut [L], index: usize, state: LedState) -> Result<(), &dyn Debug> {
    match leds.get_mut(index).map(|led| led.set(state)) {
        Some(Err(_)) => Err(&"LED write failed"),
        _ => Ok(()),
    }
}

fn report<E: core::error::Error>(
    result: Result<(), E>,
    handle: impl FnOnce(Result<(), LinkError<'_>>),
) {
    match result {
        Ok(()) => handle(Ok(())),
        Err(error) => handle(Err(&error)),
    }
}

/// Runs a node on blocking hardware forever. Returns only on an error the node cannot go on from.
pub fn run_blocking<C, S, const Q: usize, B, L, T, P, K, D>(
    node: &mut Node<C, S, Q>,
    io: &mut BlockingIo<'_, B, L, T, P, K, D>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Infallible, Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: TempSensor,
    P: Publisher,
    K: Clock,
    D: embedded_hal::delay::DelayNs,
{
    block_on(Driver::default().run(node, io, on_event))
}

/// Runs a node on async hardware forever, on any executor. Returns only on an error the node
/// cannot go on from. Cancel-safe between passes: dropping the future loses no queued frame
/// (the node owns the queue).
pub async fn run_async<C, S, const Q: usize, B, L, T, P, K, D>(
    node: &mut Node<C, S, Q>,
    io: &mut AsyncIo<'_, B, L, T, P, K, D>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Infallible, Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
    P: AsyncPublisher,
    K: Clock,
    D: embedded_hal_async::delay::DelayNs,
{
    Driver::default().run(node, io, on_event).await
}

/// Runs a node on blocking hardware until `stop` returns `true`, then stops it cleanly (see
/// [`Driver::run_until`]). `stop` is asked between passes, every few milliseconds: have it read
/// a flag that a signal handler or an interrupt sets.
pub fn run_blocking_until<C, S, const Q: usize, B, L, T, P, K, D>(
    node: &mut Node<C, S, Q>,
    io: &mut BlockingIo<'_, B, L, T, P, K, D>,
    mut stop: impl FnMut() -> bool,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Stopped, Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: TempSensor,
    P: Publisher,
    K: Clock,
    D: embedded_hal::delay::DelayNs,
{
    let stop = poll_fn(move |_| if stop() { Poll::Ready(()) } else { Poll::Pending });
    block_on(Driver::default().run_until(node, io, stop, on_event))
}

/// Runs a node on async hardware until `stop` completes, then stops it cleanly: see
/// [`Driver::run_until`], also for cancellation.
pub async fn run_async_until<C, S, const Q: usize, B, L, T, P, K, D>(
    node: &mut Node<C, S, Q>,
    io: &mut AsyncIo<'_, B, L, T, P, K, D>,
    stop: impl Future<Output = ()>,
    on_event: &mut impl FnMut(RunEvent<'_>),
) -> Result<Stopped, Error>
where
    C: Codec,
    S: SequenceStore,
    B: Button,
    L: Led,
    T: AsyncTempSensor,
    P: AsyncPublisher,
    K: Clock,
    D: embedded_hal_async::delay::DelayNs,
{
    Driver::default().run_until(node, io, stop, on_event).await
}

/// Drives a future to completion by polling it in a loop: the executor for blocking hardware
/// (whose futures never wait) and for bare-metal images without one.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AesGcmCodec, DeviceId, KeyId, LedName, MemorySequenceStore, Message, NodeConfig,
        SensorName, Topic,
    };
    use std::cell::Cell;
    use std::rc::Rc;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[derive(Clone)]
    struct FakeClock(Rc<Cell<u64>>);
    impl Clock for FakeClock {
        fn now(&mut self) -> Instant {
            Instant::from_millis(self.0.get())
        }
    }
    impl embedded_hal::delay::DelayNs for FakeClock {
        fn delay_ns(&mut self, ns: u32) {
            self.0.set(self.0.get() + u64::from(ns.div_ceil(1_000_000)).max(1));
        }
    }

    /// Held down between 100 and 200 ms.
    struct FakeButton(FakeClock);
    impl Button for FakeButton {
        type Error = Infallible;
        fn is_pressed(&mut self) -> Result<bool, Infallible> {
            let now = self.0.now().as_millis();
            Ok((100..200).contains(&now))
        }
    }

    #[derive(Default)]
    struct FakeLed(Vec<LedState>);
    impl Led for FakeLed {
        type Error = Infallible;
        fn set(&mut self, state: LedState) -> Result<(), Infallible> {
            self.0.push(state);
            Ok(())
        }
    }

    /// Fails every second read.
    struct FakeSensor(u32);
    impl TempSensor for FakeSensor {
        type Error = &'static str;
        fn read(&mut self) -> Result<MilliCelsius, &'static str> {
            self.0 += 1;
            if self.0.is_multiple_of(2) { Err("bus error") } else { Ok(MilliCelsius(20_000)) }
        }
    }

    /// What the fake broker link says when it fails.
    #[derive(Debug)]
    struct Refused;
    impl Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot reach the fake broker: connection refused")
        }
    }
    impl core::error::Error for Refused {}

    /// Refuses the first connection attempt (or every one, when `down`); records what it
    /// publishes and when it disconnects; hands out the commands in `incoming` on the next poll.
    #[derive(Default)]
    struct FakePublisher {
        down: bool,
        attempts: u32,
        connected: bool,
        wills: Vec<Vec<u8>>,
        published: Vec<(String, Vec<u8>)>,
        disconnects: u32,
        incoming: Vec<(String, Vec<u8>)>,
    }
    impl Publisher for FakePublisher {
        type Error = Refused;
        fn is_connected(&mut self) -> bool {
            self.connected
        }
        fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Refused> {
            self.attempts += 1;
            self.wills.push(will.frame.to_vec());
            if self.attempts == 1 || self.down {
                return Err(Refused);
            }
            self.connected = true;
            Ok(())
        }
        fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Refused> {
            assert!(self.connected && self.disconnects == 0);
            self.published.push((frame.topic.to_string(), frame.frame.to_vec()));
            Ok(())
        }
        fn poll(&mut self) -> Result<(), Refused> {
            Ok(())
        }
        fn poll_commands(
            &mut self,
            mut on_command: impl FnMut(&str, &[u8]),
        ) -> Result<(), Refused> {
            for (topic, frame) in self.incoming.drain(..) {
                on_command(&topic, &frame);
            }
            Ok(())
        }
        fn disconnect(&mut self) -> Result<(), Refused> {
            self.disconnects += 1;
            self.connected = false;
            Ok(())
        }
    }

    #[test]
    fn the_blocking_driver_connects_with_backoff_and_publishes_sealed_frames() {
        let clock = FakeClock(Rc::new(Cell::new(0)));
        let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[1; 16]).unwrap();
        let mut node: Node<_, _, 16> = Node::new(
            DeviceId::new("pi").unwrap(),
            &[LedName::new("red").unwrap()],
            &[SensorName::new("cpu").unwrap()],
            codec,
            MemorySequenceStore::new(),
            NodeConfig::default(),
            Instant::from_millis(0),
        )
        .unwrap();
        let mut buttons = [FakeButton(clock.clone())];
        let mut leds = [FakeLed::default()];
        let mut sensors = [FakeSensor(0)];
        let mut io = BlockingIo {
            buttons: &mut buttons,
            leds: &mut leds,
            sensors: &mut sensors,
            publisher: FakePublisher::default(),
            clock: clock.clone(),
            delay: clock.clone(),
        };
        let mut driver = Driver::default();
        let mut events = Vec::new();
        while clock.0.get() < 3_500 {
            let wake = block_on(driver.step(&mut node, &mut io, &mut |event| {
                events.push(std::format!("{event}"));
            }))
            .unwrap();
            assert!(wake.as_millis() > clock.0.get() || wake.as_millis() == clock.0.get());
            block_on(io.sleep_until(wake));
        }

        // First attempt refused at 0 ms, second after the 1 s backoff.
        assert_eq!(io.publisher.attempts, 2);
        assert_eq!(
            events[0], "cannot reach the fake broker: connection refused; next attempt in 1 s",
            "{events:?}"
        );
        assert!(events.iter().any(|e| e.starts_with("reading sensor 0 failed")), "{events:?}");
        assert_eq!(io.leds[0].0, [LedState::Off, LedState::On]);

        let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[1; 16]).unwrap();
        let opened: Vec<(String, Message)> = io
            .publisher
            .published
            .iter()
            .map(|(topic, frame)| {
                (topic.clone(), codec.open(&Topic::parse(topic).unwrap(), frame).unwrap().message)
            })
            .collect();
        let topics: Vec<&str> = opened.iter().map(|(t, _)| t.as_str()).collect();
        // Queued while down: the reading at 0 ms and the press at 120 ms; then online first.
        assert_eq!(topics[0], "ledtemp/pi/status");
        assert!(topics.contains(&"ledtemp/pi/led/red"));
        let temperatures = topics.iter().filter(|t| **t == "ledtemp/pi/temp/cpu").count();
        assert_eq!(temperatures, 2, "4 samples at 0, 1, 2, 3 s; every second one failed");
        assert_eq!(node.stats().frames_sent as usize, opened.len());
        assert_eq!(node.stats().sensor_errors, 2);
    }

    fn blocking_node() -> Node<AesGcmCodec, MemorySequenceStore, 16> {
        Node::new(
            DeviceId::new("pi").unwrap(),
            &[LedName::new("red").unwrap()],
            &[SensorName::new("cpu").unwrap()],
            AesGcmCodec::from_key_bytes(KeyId(1), &[1; 16]).unwrap(),
            MemorySequenceStore::new(),
            NodeConfig::default(),
            Instant::from_millis(0),
        )
        .unwrap()
    }

    #[test]
    fn a_stopped_blocking_node_publishes_its_will_itself_then_disconnects() {
        let clock = FakeClock(Rc::new(Cell::new(0)));
        let mut node = blocking_node();
        let mut buttons = [FakeButton(clock.clone())];
        let mut leds = [FakeLed::default()];
        let mut sensors = [FakeSensor(0)];
        let mut io = BlockingIo {
            buttons: &mut buttons,
            leds: &mut leds,
            sensors: &mut sensors,
            publisher: FakePublisher::default(),
            clock: clock.clone(),
            delay: clock.clone(),
        };
        let mut events = Vec::new();
        let stop_at = 2_500;
        let stopped =
            run_blocking_until(&mut node, &mut io, || clock.0.get() >= stop_at, &mut |event| {
                events.push(std::format!("{event}"))
            })
            .unwrap();
        assert_eq!(stopped, Stopped::Disconnected);
        assert!(clock.0.get() < stop_at + 10, "stopped at once: {} ms", clock.0.get());
        assert!(
            events.contains(&"stopping: sending 0 queued messages and the offline status".into())
        );
        let publisher = &io.publisher;
        assert_eq!(publisher.disconnects, 1);
        let (topic, last) = publisher.published.last().unwrap();
        assert_eq!(topic, "ledtemp/pi/status");
        assert_eq!(last, publisher.wills.last().unwrap(), "the offline status is the will");
        assert_eq!(node.stats().queued, 0);
    }

    #[test]
    fn a_stopped_node_without_a_broker_gives_up_without_waiting_for_the_deadline() {
        let clock = FakeClock(Rc::new(Cell::new(0)));
        let mut node = blocking_node();
        let mut buttons = [FakeButton(clock.clone())];
        let mut leds = [FakeLed::default()];
        let mut sensors = [FakeSensor(0)];
        let mut io = BlockingIo {
            buttons: &mut buttons,
            leds: &mut leds,
            sensors: &mut sensors,
            publisher: FakePublisher { down: true, ..FakePublisher::default() },
            clock: clock.clone(),
            delay: clock.clone(),
        };
        // Attempts at 0, 1 and 3 s; the stop at 3.5 s; the next attempt (7 s) is past the 2 s
        // deadline, so the node stops at once.
        let stopped =
            run_blocking_until(&mut node, &mut io, || clock.0.get() >= 3_500, &mut |_| {}).unwrap();
        // Unsent: the online status, the LED change of the press at 100 ms, and the readings of
        // 0 and 2 s (those of 1 and 3 s failed).
        assert_eq!(stopped, Stopped::Abandoned { unsent: 4 });
        assert!(clock.0.get() < 3_510, "{} ms", clock.0.get());
        assert_eq!(io.publisher.disconnects, 0);
        assert!(io.publisher.published.is_empty());

        // A broker that comes back within the deadline gets everything, the will last.
        let clock = FakeClock(Rc::new(Cell::new(0)));
        let mut node = blocking_node();
        let mut buttons = [FakeButton(clock.clone())];
        let mut io = BlockingIo {
            buttons: &mut buttons,
            leds: &mut leds,
            sensors: &mut sensors,
            publisher: FakePublisher::default(),
            clock: clock.clone(),
            delay: clock.clone(),
        };
        // The first attempt (0 ms) fails, the second is at 1 s; the stop comes at 500 ms.
        let stopped =
            run_blocking_until(&mut node, &mut io, || clock.0.get() >= 500, &mut |_| {}).unwrap();
        assert_eq!(stopped, Stopped::Disconnected);
        assert_eq!(io.publisher.attempts, 2);
        let topics: Vec<&str> = io.publisher.published.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            ["ledtemp/pi/status", "ledtemp/pi/temp/cpu", "ledtemp/pi/led/red", "ledtemp/pi/status"]
        );
    }

    #[test]
    fn commands_received_are_applied_and_confirmed_and_refusals_are_reported_not_fatal() {
        use crate::{LedCommand, SequenceNumber, Uptime};
        let clock = FakeClock(Rc::new(Cell::new(0)));
        let mut node = blocking_node();
        let mut buttons = [FakeButton(clock.clone())];
        let mut leds = [FakeLed::default()];
        let mut sensors = [FakeSensor(0)];
        let mut io = BlockingIo {
            buttons: &mut buttons,
            leds: &mut leds,
            sensors: &mut sensors,
            publisher: FakePublisher::default(),
            clock: clock.clone(),
            delay: clock.clone(),
        };
        let mut driver = Driver::default();
        let mut events: Vec<String> = Vec::new();
        // One pass; returns its events.
        let mut step = |io: &mut BlockingIo<'_, _, _, _, FakePublisher, _, _>,
                        node: &mut Node<_, _, 16>| {
            let mut events = Vec::new();
            let wake = block_on(driver.step(node, io, &mut |event| {
                events.push(std::format!("{event}"));
            }))
            .unwrap();
            block_on(io.sleep_until(wake));
            events
        };
        // Connected at 1 s (the first attempt fails); the press at 100 ms turned the LED on.
        while io.publisher.published.is_empty() {
            events.extend(step(&mut io, &mut node));
        }
        let codec = AesGcmCodec::from_key_bytes(KeyId(1), &[1; 16]).unwrap();
        let (topic, frame) = &io.publisher.published[0];
        let online = codec.open(&Topic::parse(topic).unwrap(), frame).unwrap();
        assert!(matches!(online.message, Message::Status(_)));

        // The server's command: LED off, for the session of that online status.
        let device = DeviceId::new("pi").unwrap();
        let command = Message::Command(LedCommand {
            led: LedName::new("red").unwrap(),
            state: LedState::Off,
            session: online.header.sequence,
            expires: Uptime(60_000),
        });
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = codec.seal(&device, SequenceNumber::new(0).unwrap(), &command, &mut buf).unwrap();
        let command = (command.topic(&device).to_string(), buf[..len].to_vec());
        let sent = io.publisher.published.len();
        io.publisher.incoming.push(command.clone());
        events.extend(step(&mut io, &mut node));
        assert!(
            events.contains(&"command on ledtemp/pi/cmd/red applied: LED off (changed)".into()),
            "{events:?}"
        );
        assert_eq!(io.leds[0].0.last(), Some(&LedState::Off), "driven in the same pass");
        let (topic, frame) = io.publisher.published.last().unwrap();
        assert_eq!(io.publisher.published.len(), sent + 1, "the confirmation, in the same pass");
        let confirmation = codec.open(&Topic::parse(topic).unwrap(), frame).unwrap().message;
        assert!(matches!(confirmation, Message::Led(l) if l.state == LedState::Off));

        // A replay, and garbage with a line break in its topic: refused, reported, harmless.
        io.publisher.incoming.push(command);
        io.publisher.incoming.push(("ledtemp/pi/cmd/red\nforged".into(), std::vec![0; 36]));
        events.extend(step(&mut io, &mut node));
        assert!(
            events.iter().any(|e| e.starts_with("command on \"ledtemp/pi/cmd/red\" refused: ")),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("command on \"ledtemp/pi/cmd/red\\nforged\" refused")),
            "escaped: {events:?}"
        );
        assert_eq!(io.publisher.published.len(), sent + 1, "nothing more sent");
        assert_eq!(io.leds[0].0.last(), Some(&LedState::Off));
        assert_eq!((node.stats().commands_applied, node.stats().commands_refused), (1, 2));
        events.extend(step(&mut io, &mut node));
        assert!(io.publisher.connected, "the node goes on");
    }
}
