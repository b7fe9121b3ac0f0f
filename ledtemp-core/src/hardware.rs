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
/// # Commands
///
/// A node also receives commands (LED on or off) from the server, on
/// `ledtemp/<device>/cmd/<led>`. A publisher that carries them subscribes, after every
/// successful [`connect`](Self::connect), to the node's command filter,
/// [`Topic::command_filter`](crate::Topic::command_filter) (`ledtemp/<device>/cmd/+`), at QoS 1,
/// and hands every message that arrives on it to the callback of
/// [`poll_commands`](Self::poll_commands), which the driver calls instead of
/// [`poll`](Self::poll). The payload goes to the node as it came: the node opens, checks and
/// refuses what it must ([`Node::handle_command`](crate::Node::handle_command)), so the publisher
/// checks nothing. A message that arrives while [`publish`](Self::publish) waits for its
/// acknowledgement is kept for the next `poll_commands`. A publisher without commands implements
/// only `poll`: the default `poll_commands` polls and receives nothing.
///
/// ```
/// use ledtemp_core::{DeviceId, Outgoing, Publisher, Topic, TopicString};
///
/// # #[derive(Debug)] struct LinkDown;
/// # impl core::fmt::Display for LinkDown {
/// #     fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result { f.write_str("down") }
/// # }
/// # impl core::error::Error for LinkDown {}
/// # struct Client;
/// # impl Client {
/// #     fn connect(&mut self, _will: (&str, &[u8])) -> Result<(), LinkDown> { Ok(()) }
/// #     fn subscribe_qos1(&mut self, _filter: &str) -> Result<(), LinkDown> { Ok(()) }
/// #     fn publish(&mut self, _topic: &str, _payload: &[u8], _qos1: bool, _retain: bool) -> Result<(), LinkDown> { Ok(()) }
/// #     /// The next message received on a subscription, if one is there.
/// #     fn try_receive(&mut self) -> Result<Option<(TopicString, heapless::Vec<u8, 64>)>, LinkDown> { Ok(None) }
/// #     fn disconnect(&mut self) -> Result<(), LinkDown> { Ok(()) }
/// # }
/// /// Your MQTT client, which knows the device it speaks for.
/// struct MyPublisher {
///     client: Client,
///     commands: TopicString,
///     connected: bool,
/// }
///
/// impl MyPublisher {
///     fn new(client: Client, device: &DeviceId) -> Self {
///         MyPublisher { client, commands: Topic::command_filter(device), connected: false }
///     }
/// }
///
/// impl Publisher for MyPublisher {
///     type Error = LinkDown;
///     fn is_connected(&mut self) -> bool {
///         self.connected
///     }
///     fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), LinkDown> {
///         self.client.connect((&will.topic, will.frame))?;
///         self.client.subscribe_qos1(&self.commands)?; // ledtemp/<device>/cmd/+
///         self.connected = true;
///         Ok(())
///     }
///     fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), LinkDown> {
///         let qos1 = frame.qos == ledtemp_core::QoS::AtLeastOnce;
///         self.client.publish(&frame.topic, frame.frame, qos1, frame.retain)
///     }
///     fn poll(&mut self) -> Result<(), LinkDown> {
///         self.poll_commands(|_, _| {})
///     }
///     fn poll_commands(&mut self, mut on_command: impl FnMut(&str, &[u8])) -> Result<(), LinkDown> {
///         while let Some((topic, payload)) = self.client.try_receive()? {
///             on_command(&topic, &payload); // the node checks it
///         }
///         Ok(())
///     }
///     fn disconnect(&mut self) -> Result<(), LinkDown> {
///         self.connected = false;
///         self.client.disconnect()
///     }
/// }
/// ```
///
/// Errors are reported to the user as they are displayed: say what happened in plain words, and
/// name the broker where the error knows it.
pub trait Publisher {
    /// Why connecting or publishing failed. Frames stay queued in the node and go out later.
    type Error: core::error::Error;

    /// Whether publishing can succeed now. While it is `false` the node queues frames.
    fn is_connected(&mut self) -> bool;

    /// (Re)connects, registering `will` as the Last Will, and subscribes to the node's commands
    /// (see [Commands](#commands)). Called again after every failure, with a fresh will each time
    /// (its sequence number was reserved for this connection).
    fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Publishes one frame. `Ok` means handed to the transport; for [`QoS::AtLeastOnce`] the
    /// client retransmits until the broker acknowledges.
    fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Keeps the link alive (pings, acknowledgements). An error means the link is down.
    fn poll(&mut self) -> Result<(), Self::Error>;

    /// As [`poll`](Self::poll), and hands each message received on the command subscription
    /// since the last call to `on_command(topic, payload)`, in the order received (see
    /// [Commands](#commands)). The default receives nothing: it calls `poll`.
    fn poll_commands(&mut self, on_command: impl FnMut(&str, &[u8])) -> Result<(), Self::Error> {
        let _ = on_command;
        self.poll()
    }

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

    /// (Re)connects with `will` as the Last Will, and subscribes to the node's commands
    /// ([`Publisher`]'s [Commands](Publisher#commands)).
    async fn connect(&mut self, will: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Publishes one frame.
    async fn publish(&mut self, frame: &Outgoing<'_>) -> Result<(), Self::Error>;

    /// Keeps the link alive; must return promptly when there is nothing to do.
    async fn poll(&mut self) -> Result<(), Self::Error>;

    /// As [`poll`](Self::poll), and hands each command received since the last call to
    /// `on_command(topic, payload)`, in the order received. The default receives nothing.
    async fn poll_commands(
        &mut self,
        on_command: impl FnMut(&str, &[u8]),
    ) -> Result<(), Self::Error> {
        let _ = on_command;
        self.poll().await
    }

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
        fn poll_commands(&mut self, on_command: impl FnMut(&str, &[u8])) -> Result<(), Self::Error> {
            (**self).poll_commands(on_command)
        }
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
    async fn poll_commands(
        &mut self,
        on_command: impl FnMut(&str, &[u8]),
    ) -> Result<(), Self::Error> {
        (**self).poll_commands(on_command).await
    }
    async fn disconnect(&mut self) -> Result<(), Self::Error> {
        (**self).disconnect().await
    }
}
