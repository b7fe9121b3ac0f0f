//! Drivers: the thin loops that carry a [`Node`]'s inputs and outputs to real hardware.
//!
//! The loop is written once, as async code over [`NodeIo`]; [`run_async`] binds it to async
//! hardware and [`run_blocking`] to blocking hardware (whose futures never wait, so a busy-poll
//! [`block_on`] drives them).
#![allow(async_fn_in_trait, reason = "node drivers run on one task; no Send bound is wanted")]

use core::convert::Infallible;
use core::fmt::Debug;
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use crate::hardware::{
    AsyncPublisher, AsyncTempSensor, Button, Led, Outgoing, Publisher, TempSensor,
};
use crate::{
    Clock, Codec, Error, Instant, LedState, MAX_FRAME_LEN, MilliCelsius, Node, SequenceStore,
};

/// Something a driver reports while it runs, for the caller to log.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunEvent<'a> {
    /// Connected to the broker.
    Connected,
    /// A connection attempt failed; the next one is in `retry_in`.
    ConnectFailed {
        /// What the publisher said.
        error: &'a dyn Debug,
        /// Delay before the next attempt (exponential backoff).
        retry_in: Duration,
    },
    /// Publishing or keeping the link failed; frames wait in the node's queue.
    LinkLost {
        /// What the publisher said.
        error: &'a dyn Debug,
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
    /// Connects with `will`.
    async fn connect(&mut self, will: &Outgoing<'_>, handle: impl FnOnce(Result<(), &dyn Debug>));
    /// Publishes `frame`.
    async fn publish(&mut self, frame: &Outgoing<'_>, handle: impl FnOnce(Result<(), &dyn Debug>));
    /// Keeps the link alive.
    async fn poll_link(&mut self, handle: impl FnOnce(Result<(), &dyn Debug>));
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

    /// One pass: (re)connect if due, read buttons, advance timers, read due sensors, drive LEDs,
    /// send queued frames while the link is up. Returns when the next pass is due. Errors only
    /// on what the node cannot go on from ([`Error::SequenceStore`], [`Error::SequenceExhausted`]).
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
            io.poll_link(|result| {
                if let Err(error) = result {
                    on_event(RunEvent::LinkLost { error });
                }
            })
            .await;
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
        loop {
            let wake = self.step(node, io, on_event).await?;
            io.sleep_until(wake).await;
        }
    }
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
                handle: impl FnOnce(Result<(), &dyn Debug>),
            ) {
                report(self.publisher.connect(will)$($await)*, handle);
            }
            async fn publish(
                &mut self,
                frame: &Outgoing<'_>,
                handle: impl FnOnce(Result<(), &dyn Debug>),
            ) {
                report(self.publisher.publish(frame)$($await)*, handle);
            }
            async fn poll_link(&mut self, handle: impl FnOnce(Result<(), &dyn Debug>)) {
                report(self.publisher.poll()$($await)*, handle);
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

fn report<E: Debug>(result: Result<(), E>, handle: impl FnOnce(Result<(), &dyn Debug>)) {
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

    /// Refuses the first connection attempt; records what it publishes.
    #[derive(Default)]
    struct FakePublisher {
        attempts: u32,
        connected: bool,
        wills: Vec<Vec<u8>>,
        published: Vec<(String, Vec<u8>)>,
    }
    impl Publisher for FakePublisher {
        type Error = &'static str;
        fn is_connected(&mut self) -> bool {
            self.connected
        }
        fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), &'static str> {
            self.attempts += 1;
            self.wills.push(will.frame.to_vec());
            if self.attempts == 1 {
                return Err("connection refused");
            }
            self.connected = true;
            Ok(())
        }
        fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), &'static str> {
            self.published.push((frame.topic.to_string(), frame.frame.to_vec()));
            Ok(())
        }
        fn poll(&mut self) -> Result<(), &'static str> {
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
                events.push(std::format!("{event:?}"));
            }))
            .unwrap();
            assert!(wake.as_millis() > clock.0.get() || wake.as_millis() == clock.0.get());
            block_on(io.sleep_until(wake));
        }

        // First attempt refused at 0 ms, second after the 1 s backoff.
        assert_eq!(io.publisher.attempts, 2);
        assert!(events[0].starts_with("ConnectFailed"), "{events:?}");
        assert!(events.iter().any(|e| e.contains("SensorFailed")));
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
}
