//! What a node touches: buttons, LEDs, temperature sensors and the link to the broker.
//!
//! Each trait is small on purpose: a team brings its own board by implementing one or two methods.
//! Any embedded-hal 1.x pin already is a [`Button`] or [`Led`] through the adapters in
//! `crate::hal`. Blocking forms serve a `loop {}` on a Pi or a bare-metal main; the `Async*`
//! forms serve any executor (tokio, embassy, a busy-poll `block_on`).
#![allow(async_fn_in_trait, reason = "node drivers run on one task; no Send bound is wanted")]

use crate::{LedState, MilliCelsius, TopicString};

/// A push button.
///
/// ```
/// use ledtemp_core::Button;
/// struct Gpio17;
/// impl Button for Gpio17 {
///     type Error = core::convert::Infallible;
///     fn is_pressed(&mut self) -> Result<bool, Self::Error> {
///         Ok(false) // read the pin here
///     }
/// }
/// ```
pub trait Button {
    /// Why the button could not be read.
    type Error: core::fmt::Debug;

    /// Whether the button is held down right now (raw, not debounced: the node debounces).
    fn is_pressed(&mut self) -> Result<bool, Self::Error>;
}

/// An LED (or any on/off output).
///
/// ```
/// use ledtemp_core::{Led, LedState};
/// struct StatusLed;
/// impl Led for StatusLed {
///     type Error = core::convert::Infallible;
///     fn set(&mut self, state: LedState) -> Result<(), Self::Error> {
///         let _ = state.is_on(); // drive the pin here
///         Ok(())
///     }
/// }
/// ```
pub trait Led {
    /// Why the output could not be driven.
    type Error: core::fmt::Debug;

    /// Turns the LED on or off.
    fn set(&mut self, state: LedState) -> Result<(), Self::Error>;
}

/// A temperature sensor that answers at once (or blocks until it has).
///
/// ```
/// use ledtemp_core::{MilliCelsius, TempSensor};
/// struct Fixed;
/// impl TempSensor for Fixed {
///     type Error = core::convert::Infallible;
///     fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
///         Ok(MilliCelsius(21_500))
///     }
/// }
/// ```
pub trait TempSensor {
    /// Why there is no reading (bus error, CRC error, missing device). Reported by the node, never
    /// fatal.
    type Error: core::fmt::Debug;

    /// Takes one reading.
    fn read(&mut self) -> Result<MilliCelsius, Self::Error>;
}

/// A temperature sensor read without blocking the executor (a DS18B20 conversion takes 750 ms).
pub trait AsyncTempSensor {
    /// Why there is no reading.
    type Error: core::fmt::Debug;

    /// Takes one reading. Cancel-safe: a dropped read is simply retried later.
    async fn read(&mut self) -> Result<MilliCelsius, Self::Error>;
}

/// MQTT delivery guarantee for one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QoS {
    /// Fire and forget: temperatures of a node that accepts losing some
    /// ([`NodeConfig::temperature_qos`](crate::NodeConfig::temperature_qos)).
    AtMostOnce,
    /// Delivered at least once (LED changes, status, and temperatures by default); duplicates
    /// are dropped by the receiver's replay window.
    AtLeastOnce,
}

/// A sealed frame ready to publish: the node's output, the publisher's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// Topic to publish on.
    pub topic: TopicString,
    /// The sealed frame.
    pub frame: &'a [u8],
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether the broker keeps it for later subscribers (LED and status frames: a server that
    /// starts later learns the current state at once).
    pub retain: bool,
}

/// The link to the broker, blocking form.
///
/// The driver connects (with a sealed Last Will from the node), publishes the node's frames and
/// polls the link in between; a stopping node's driver ends with [`disconnect`](Self::disconnect).
/// An implementation without Last Will support may ignore `will`.
///
/// Errors are reported to the user as they are displayed: say what happened in plain words, and
/// name the broker where the error knows it.
pub trait Publisher {
    /// Why connecting or publishing failed. Frames stay queued in the node and go out later.
    type Error: core::error::Error;

    /// Whether publishing can succeed now. While it is `false` the node queues frames.
    fn is_connected(&mut self) -> bool;

    /// (Re)connects, registering `will` as the Last Will. Called again after every failure, with a
    /// fresh will each time (its sequence number was reserved for this connection).
    fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Publishes one frame. `Ok` means handed to the transport; for [`QoS::AtLeastOnce`] the
    /// client retransmits until the broker acknowledges.
    fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Keeps the link alive (pings, acknowledgements). An error means the link is down.
    fn poll(&mut self) -> Result<(), Self::Error>;

    /// Ends the connection cleanly: MQTT DISCONNECT with reason "normal disconnection", so that
    /// the broker discards the Last Will, then closes the transport. Called once, when a stopping
    /// node has published its offline status. `Err` means the connection ended without it (the
    /// broker then publishes the will); either way the link is down afterwards.
    fn disconnect(&mut self) -> Result<(), Self::Error>;
}

/// The link to the broker, async form; same contract as [`Publisher`].
pub trait AsyncPublisher {
    /// Why connecting or publishing failed.
    type Error: core::error::Error;

    /// Whether publishing can succeed now.
    fn is_connected(&self) -> bool;

    /// (Re)connects with `will` as the Last Will.
    async fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Publishes one frame.
    async fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Keeps the link alive; must return promptly when there is nothing to do.
    async fn poll(&mut self) -> Result<(), Self::Error>;

    /// Ends the connection cleanly with MQTT DISCONNECT (the broker discards the will).
    async fn disconnect(&mut self) -> Result<(), Self::Error>;
}

macro_rules! forward_mut {
    ($($tr:ident { $($body:tt)* })*) => {
        $(impl<T: $tr + ?Sized> $tr for &mut T { $($body)* })*
    };
}

forward_mut! {
    Button {
        type Error = T::Error;
        fn is_pressed(&mut self) -> Result<bool, Self::Error> { (**self).is_pressed() }
    }
    Led {
        type Error = T::Error;
        fn set(&mut self, state: LedState) -> Result<(), Self::Error> { (**self).set(state) }
    }
    TempSensor {
        type Error = T::Error;
        fn read(&mut self) -> Result<MilliCelsius, Self::Error> { (**self).read() }
    }
    Publisher {
        type Error = T::Error;
        fn is_connected(&mut self) -> bool { (**self).is_connected() }
        fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error> { (**self).connect(will) }
        fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error> { (**self).publish(frame) }
        fn poll(&mut self) -> Result<(), Self::Error> { (**self).poll() }
        fn disconnect(&mut self) -> Result<(), Self::Error> { (**self).disconnect() }
    }
}

impl<T: AsyncTempSensor + ?Sized> AsyncTempSensor for &mut T {
    type Error = T::Error;
    async fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        (**self).read().await
    }
}

impl<T: AsyncPublisher + ?Sized> AsyncPublisher for &mut T {
    type Error = T::Error;
    fn is_connected(&self) -> bool {
        (**self).is_connected()
    }
    async fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error> {
        (**self).connect(will).await
    }
    async fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error> {
        (**self).publish(frame).await
    }
    async fn poll(&mut self) -> Result<(), Self::Error> {
        (**self).poll().await
    }
    async fn disconnect(&mut self) -> Result<(), Self::Error> {
        (**self).disconnect().await
    }
}
