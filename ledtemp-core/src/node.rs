//! The node: a sans-IO state machine that turns button levels, sensor readings and time into LED
//! outputs and sealed frames.

use core::time::Duration;

use heapless::Vec;

use crate::hardware::{Outgoing, QoS};
use crate::message::MAX_LEDS;
use crate::{
    Codec, DeviceId, Error, Instant, LedChange, LedCommand, LedName, LedState, LedStatus, Message,
    MilliCelsius, NodeStatus, ReplayWindow, SensorName, SequenceCounter, SequenceNumber,
    SequenceStore, StatusReport, TemperatureReading, Topic, Uptime,
};

/// Most temperature sensors one node samples.
pub const MAX_SENSORS: usize = 4;

/// The longest a command may be valid, on the node's clock: a node refuses one whose expiry is
/// past or more than this far ahead ([`Node::handle_command`]). A sender gives its commands at
/// most this long (the reference server gives them 5 s). The 32-bit uptime a command's expiry is
/// written in wraps every 49.7 days; bounding the expiry's distance shrinks what a wrapped clock
/// could let through to a command held back a multiple of 49.7 days, to within this much, and in
/// a connection that lasted that long (`docs/security.md`, "Commands").
pub const MAX_COMMAND_LIFETIME: Duration = Duration::from_secs(60);

/// Default capacity of the store-and-forward queue, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 32;

/// How long a stopping node may take, by default, to deliver its queue and its offline status
/// before it gives up ([`NodeConfig::shutdown_timeout`], [`Node::handle_shutdown`]): 2 s.
///
/// Long enough for a broker on a LAN or a nearby cloud region to acknowledge a full queue
/// ([`DEFAULT_QUEUE_CAPACITY`] QoS 1 publishes, each a round trip), short enough that a stop
/// (systemd's SIGTERM, Ctrl-C) feels prompt. A driver may overrun it by one publisher call, whose
/// own timeout bounds it; a service manager's stop timeout must cover both.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How a node behaves; [`NodeConfig::default`] is what the original project did, except that
/// temperatures go out at QoS 1 ([`temperature_qos`](Self::temperature_qos)), so that a server
/// restart loses none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// A button level must hold this long before it counts (contact bounce). Default 20 ms.
    pub debounce: Duration,
    /// Time between temperature samples. Default 1 s.
    pub temperature_period: Duration,
    /// Time between re-announcements of every LED's state, so a server that restarted (or missed
    /// a frame) learns them. Default 30 s.
    pub announce_period: Duration,
    /// Sequence numbers reserved per write to the [`SequenceStore`]. Default 1024.
    pub sequence_block: u32,
    /// How long a stopping node may take to deliver its queue and its offline status
    /// ([`Node::handle_shutdown`]). Default [`SHUTDOWN_TIMEOUT`], 2 s.
    pub shutdown_timeout: Duration,
    /// How temperatures are published. Default [`QoS::AtLeastOnce`]. LED changes and status
    /// frames are always QoS 1 and retained; temperatures are never retained.
    ///
    /// - [`QoS::AtLeastOnce`]: the broker queues readings for a server that is away (restarting,
    ///   upgrading) in its persistent session, so a server restart loses no reading. Each
    ///   reading costs a round trip: the publish waits for the broker's PUBACK before the next
    ///   frame goes out, and a reading stays in the node's queue until then.
    /// - [`QoS::AtMostOnce`]: fire and forget, for a node on a metered or slow link that
    ///   accepts losing readings: a broker does not queue QoS 0 messages for an absent
    ///   subscriber (Mosquitto's `queue_qos0_messages false`), so readings published while the
    ///   server is away are lost, and so is a reading in flight when the link drops.
    pub temperature_qos: QoS,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            debounce: Duration::from_millis(20),
            temperature_period: Duration::from_secs(1),
            announce_period: Duration::from_secs(30),
            sequence_block: SequenceCounter::DEFAULT_BLOCK,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            temperature_qos: QoS::AtLeastOnce,
        }
    }
}

/// Counters a driver can log or export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Frames sealed (including Last Wills and frames sealed again after a failed publish).
    pub frames_sealed: u64,
    /// Frames the publisher accepted.
    pub frames_sent: u64,
    /// Messages dropped because the queue was full while the broker was unreachable.
    pub frames_dropped: u64,
    /// Sensor reads that failed.
    pub sensor_errors: u64,
    /// Messages waiting in the queue now.
    pub queued: usize,
    /// Commands applied ([`Node::handle_command`]).
    pub commands_applied: u64,
    /// Commands refused: not authentic, replayed, for another session, expired, for an LED the
    /// node does not have, or malformed.
    pub commands_refused: u64,
}

/// A command the node applied: the answer of [`Node::handle_command`]. The LED is driven by the
/// next [`Node::poll_led`] (when its state changed), and its state goes out as an LED frame,
/// changed or not: the confirmation the sender waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedCommand {
    /// Which LED.
    pub index: usize,
    /// Its state now.
    pub state: LedState,
    /// Whether the command changed it.
    pub changed: bool,
}

/// A message waiting to be sealed and sent. Kept compact (names are looked up by index when the
/// frame is sealed), so a deep queue costs little RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Led {
        index: u8,
        state: LedState,
        at: Uptime,
    },
    Temperature {
        index: u8,
        value: MilliCelsius,
        at: Uptime,
    },
    /// Online status, with the LED states at the time (bit i: LED i on). The announcement of a
    /// connection is sealed with `Node::online_reserved`, the number next to its will.
    Online {
        leds: u8,
        at: Uptime,
    },
    /// The offline status of a stopping node, always the last entry: the current connection's
    /// Last Will, sealed again from `Node::will` into the identical frame.
    Offline,
}

impl Pending {
    /// Which entry to drop when the queue is full: temperatures first (the next one is a period
    /// away), then online announcements, LED changes last; the offline status never
    /// ([`Node::drop_one`] stops below its rank).
    fn drop_rank(&self) -> u8 {
        match self {
            Pending::Temperature { .. } => 0,
            Pending::Online { .. } => 1,
            Pending::Led { .. } => 2,
            Pending::Offline => 3,
        }
    }
}

/// What a stopping node asks of its driver: the answer of [`Node::poll_shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Still delivering the queue, the offline status last: go on publishing what
    /// [`Node::poll_transmit`] gives (and connecting, if the link is down) until `deadline`.
    Flushing {
        /// When the node gives up ([`NodeConfig::shutdown_timeout`] after the stop request).
        deadline: Instant,
    },
    /// The offline status was published: end the connection with MQTT DISCONNECT, so that the
    /// broker discards the Last Will (the same frame, already delivered), and stop.
    Disconnect,
    /// The deadline passed before the offline status went out (the broker is unreachable or too
    /// slow): close the connection *without* DISCONNECT, so that the broker publishes the Last
    /// Will itself, and stop. `unsent` messages besides the offline status are lost.
    Abandon {
        /// Messages still queued, not counting the offline status.
        unsent: usize,
    },
}

/// Debounces one button: a new level counts once it has held for the debounce time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Debouncer {
    stable: bool,
    candidate: Option<(bool, Instant)>,
}

impl Debouncer {
    fn input(&mut self, now: Instant, level: bool) {
        if level == self.stable {
            self.candidate = None;
        } else if self.candidate.map(|(l, _)| l) != Some(level) {
            self.candidate = Some((level, now));
        }
    }

    /// The new stable level, if the candidate has held long enough by `now`.
    fn settle(&mut self, now: Instant, debounce: Duration) -> Option<bool> {
        let (level, since) = self.candidate?;
        if now - since >= debounce {
            self.stable = level;
            self.candidate = None;
            Some(level)
        } else {
            None
        }
    }

    fn deadline(&self, debounce: Duration) -> Option<Instant> {
        self.candidate.map(|(_, since)| since + debounce)
    }
}

#[derive(Debug, Clone)]
struct LedSlot {
    name: LedName,
    state: LedState,
    button: Debouncer,
}

/// A ledtemp node, without I/O.
///
/// It owns the LED states, the sequence counter (with its store) and the outbound queue. Drivers
/// ([`run_blocking`](crate::run_blocking), [`run_async`](crate::run_async), or your own loop) feed
/// it inputs and carry out its outputs. Button `i` toggles LED `i`.
///
/// # Call order
///
/// 1. [`new`](Self::new) at boot.
/// 2. Whenever the publisher is down and it is time to (re)connect: [`handle_connect`] gives the
///    sealed Last Will to connect with (and queues an online status at the front).
/// 3. In a loop, with `now` from a monotonic clock:
///    - [`handle_button`] with each button's raw level (poll every few ms, or on each edge);
///    - [`handle_timeout`] once `now` reaches [`poll_timeout`];
///    - [`poll_sample`] until `None`, answering each with [`handle_temperature`] or
///      [`handle_sensor_error`];
///    - [`poll_led`] until `None`, driving each LED;
///    - while the publisher is up: [`poll_transmit`], publish, then [`handle_sent`];
///    - sleep until [`poll_timeout`] (or the next button poll).
/// 4. To stop (SIGTERM, Ctrl-C): [`handle_shutdown`] once, then go on with the loop of step 3
///    (the node takes no new input but still gives frames, reconnecting if need be) and after
///    each pass ask [`poll_shutdown`]:
///    - [`Shutdown::Flushing`]: keep going;
///    - [`Shutdown::Disconnect`]: the queue and then the offline status were published; send
///      MQTT DISCONNECT (the broker discards the will) and stop;
///    - [`Shutdown::Abandon`]: the deadline passed first; drop the connection without
///      DISCONNECT (the broker publishes the will) and stop.
///
///    The sequence store needs nothing at a stop: it already holds a mark above every number
///    the node used (see [`SequenceStore`]).
///
/// While the publisher is down, messages wait in a queue of `QUEUE` entries. When it is full the
/// oldest temperature is dropped first, then the oldest online announcement, and an LED change
/// only when nothing else is left; [`NodeStats::frames_dropped`] counts them.
///
/// [`handle_connect`]: Self::handle_connect
/// [`handle_button`]: Self::handle_button
/// [`handle_timeout`]: Self::handle_timeout
/// [`poll_timeout`]: Self::poll_timeout
/// [`poll_sample`]: Self::poll_sample
/// [`handle_temperature`]: Self::handle_temperature
/// [`handle_sensor_error`]: Self::handle_sensor_error
/// [`poll_led`]: Self::poll_led
/// [`poll_transmit`]: Self::poll_transmit
/// [`handle_sent`]: Self::handle_sent
/// [`handle_shutdown`]: Self::handle_shutdown
/// [`poll_shutdown`]: Self::poll_shutdown
pub struct Node<C, S, const QUEUE: usize = DEFAULT_QUEUE_CAPACITY> {
    device: DeviceId,
    codec: C,
    store: S,
    counter: SequenceCounter,
    config: NodeConfig,
    leds: Vec<LedSlot, MAX_LEDS, u8>,
    sensors: Vec<SensorName, MAX_SENSORS, u8>,
    queue: Vec<Pending, QUEUE>,
    /// Bit i: LED i must be driven to its state.
    leds_to_drive: u8,
    /// Bit i: sensor i is due for a sample.
    samples_due: u8,
    next_sample: Instant,
    next_announce: Instant,
    /// The sequence number reserved for the online status of the current connection (kept out of
    /// the queue entries so that each stays 12 bytes).
    online_reserved: Option<SequenceNumber>,
    /// The current connection's Last Will: its sequence number and uptime, from which
    /// [`Pending::Offline`] seals the identical frame.
    will: Option<(SequenceNumber, Uptime)>,
    /// Set by `handle_shutdown`: when a stopping node gives up.
    shutdown_deadline: Option<Instant>,
    /// A stopping node's offline status was published.
    offline_sent: bool,
    /// The current session: the sequence number of the current connection's online status, set
    /// by `handle_connect`. Commands must name it.
    session: Option<SequenceNumber>,
    /// The sequence numbers of the commands accepted in the current session (the server's
    /// counter); reset with every new session.
    commands: ReplayWindow,
    stats: NodeStats,
}

impl<C: Codec, S: SequenceStore, const QUEUE: usize> Node<C, S, QUEUE> {
    /// A node for `device` with the given LEDs (all start off) and sensors, sealing with `codec`
    /// and reserving sequence numbers through `store`. The first temperature sample is due at
    /// `now`. Errors: more than [`MAX_LEDS`] LEDs or [`MAX_SENSORS`] sensors
    /// ([`Error::Capacity`]), or the store failing to load ([`Error::SequenceStore`]).
    pub fn new(
        device: DeviceId,
        leds: &[LedName],
        sensors: &[SensorName],
        codec: C,
        mut store: S,
        config: NodeConfig,
        now: Instant,
    ) -> Result<Self, Error> {
        let counter = SequenceCounter::resume(&mut store, config.sequence_block)?;
        let mut led_slots = Vec::new();
        for name in leds {
            led_slots
                .push(LedSlot {
                    name: name.clone(),
                    state: LedState::Off,
                    button: Debouncer::default(),
                })
                .map_err(|_| Error::Capacity)?;
        }
        let sensors = Vec::from_slice(sensors).map_err(|_| Error::Capacity)?;
        Ok(Node {
            device,
            codec,
            store,
            counter,
            config,
            leds_to_drive: all_bits(led_slots.len()),
            leds: led_slots,
            sensors,
            queue: Vec::new(),
            samples_due: 0,
            next_sample: now,
            next_announce: now + config.announce_period,
            online_reserved: None,
            will: None,
            shutdown_deadline: None,
            offline_sent: false,
            session: None,
            commands: ReplayWindow::new(),
            stats: NodeStats::default(),
        })
    }

    /// The device this node speaks for.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The state of LED `index`.
    pub fn led_state(&self, index: usize) -> Option<LedState> {
        self.leds.get(index).map(|led| led.state)
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats { queued: self.queue.len(), ..self.stats }
    }

    /// Feeds the raw level of button `index` (`true` = pressed). A press that survives the
    /// debounce time toggles LED `index`. Unknown indices are ignored.
    pub fn handle_button(&mut self, now: Instant, index: usize, pressed: bool) {
        if self.is_stopping() {
            return;
        }
        if let Some(led) = self.leds.get_mut(index) {
            led.button.input(now, pressed);
        }
        self.settle_buttons(now);
    }

    /// Sets LED `index` directly (a command, a schedule), reported like a button toggle.
    pub fn set_led(&mut self, now: Instant, index: usize, state: LedState) {
        if self.is_stopping() {
            return;
        }
        if self.leds.get(index).is_some_and(|led| led.state != state) {
            self.change_led(now, index, state);
        }
    }

    /// A command frame received on `topic` at `now`: opened with the node's key (direction to the
    /// device), checked, and applied. The LED's state then goes out as an LED frame whether it
    /// changed or not, so the sender sees the state the device confirmed.
    ///
    /// Refused, changing nothing (counted in [`NodeStats::commands_refused`]):
    /// - a topic that is not `ledtemp/<this device>/cmd/<led>` ([`Error::InvalidTopic`]), or an
    ///   LED the node does not have ([`Error::UnknownLed`]), before any cryptography;
    /// - whatever [`Codec::open`] refuses: forged, altered, moved to another LED or device,
    ///   sealed with another key, a frame from the device itself replayed on the command topic
    ///   ([`Error::Unauthentic`] and the frame errors);
    /// - a command for another session than the current connection's (the one of the last
    ///   [`handle_connect`](Self::handle_connect)), before the first connection, or while the
    ///   node is stopping ([`Error::StaleCommand`]): a command recorded before a reconnection or
    ///   a reboot;
    /// - a command past its expiry on the node's clock, or whose expiry is more than
    ///   [`MAX_COMMAND_LIFETIME`] ahead of it ([`Error::CommandExpired`]);
    /// - a copy of a command already accepted in this session ([`Error::Replayed`],
    ///   [`Error::TooOld`]).
    ///
    /// Nothing is written to the sequence store: the node's own counter moves only by the LED
    /// frame it sends in answer. `docs/security.md` ("Commands") has the argument.
    pub fn handle_command(
        &mut self,
        now: Instant,
        topic: &str,
        frame: &[u8],
    ) -> Result<AppliedCommand, Error> {
        let result = self.check_command(now, topic, frame);
        match &result {
            Ok(applied) => {
                self.stats.commands_applied += 1;
                if applied.changed {
                    self.change_led(now, applied.index, applied.state);
                } else {
                    let state = applied.state;
                    self.enqueue(Pending::Led {
                        index: applied.index as u8,
                        state,
                        at: now.uptime(),
                    });
                }
            }
            Err(_) => self.stats.commands_refused += 1,
        }
        result
    }

    /// Every check of [`handle_command`](Self::handle_command); accepts the command's number in
    /// the window (the only change) when all pass.
    fn check_command(
        &mut self,
        now: Instant,
        topic: &str,
        frame: &[u8],
    ) -> Result<AppliedCommand, Error> {
        let topic = Topic::parse(topic)?;
        let Topic::Command { device, led } = &topic else {
            return Err(Error::InvalidTopic);
        };
        if *device != self.device {
            return Err(Error::InvalidTopic);
        }
        let index = self.leds.iter().position(|slot| slot.name == *led).ok_or(Error::UnknownLed)?;
        let opened = self.codec.open(&topic, frame)?;
        let Message::Command(LedCommand { state, session, expires, .. }) = opened.message else {
            return Err(Error::MalformedPayload);
        };
        let changed = self.leds.get(index).is_some_and(|slot| slot.state != state);
        if !self.codec.authenticates() {
            // INSECURE teaching codec: the original project's node, which obeys every message.
            return Ok(AppliedCommand { index, state, changed });
        }
        if self.is_stopping() || self.session != Some(session) {
            return Err(Error::StaleCommand);
        }
        // Valid from `expires - MAX_COMMAND_LIFETIME` to `expires` on the node's clock, compared
        // on the wrapping 32-bit uptime. An expiry further ahead is no expiry a sender computes:
        // read on a clock that wrapped, it is a command held back for weeks.
        let ahead = expires.0.wrapping_sub(now.uptime().0);
        if u64::from(ahead) > MAX_COMMAND_LIFETIME.as_millis() as u64 {
            return Err(Error::CommandExpired);
        }
        let window = self.commands.state_after(opened.header.sequence)?;
        self.commands = ReplayWindow::restore(window);
        Ok(AppliedCommand { index, state, changed })
    }

    /// Advances timers: settles buttons, marks sensors due, queues the periodic LED announcement.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_stopping() {
            return;
        }
        self.settle_buttons(now);
        if now >= self.next_sample {
            self.samples_due = all_bits(self.sensors.len());
            self.next_sample = next_on_grid(self.next_sample, self.config.temperature_period, now);
        }
        if now >= self.next_announce {
            for index in 0..self.leds.len() {
                if let Some(led) = self.leds.get(index) {
                    let state = led.state;
                    self.enqueue(Pending::Led { index: index as u8, state, at: now.uptime() });
                }
            }
            self.next_announce = next_on_grid(self.next_announce, self.config.announce_period, now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) (or, for a stopping node,
    /// [`poll_shutdown`](Self::poll_shutdown)) must be called next.
    pub fn poll_timeout(&self) -> Instant {
        if let Some(deadline) = self.shutdown_deadline {
            return deadline;
        }
        let debounce = self.config.debounce;
        self.leds
            .iter()
            .filter_map(|led| led.button.deadline(debounce))
            .fold(self.next_sample.min(self.next_announce), Instant::min)
    }

    /// The next sensor to read, if one is due.
    pub fn poll_sample(&mut self) -> Option<usize> {
        let index = take_lowest_bit(&mut self.samples_due)?;
        Some(index)
    }

    /// A reading of sensor `index`, taken at `now`; queues a temperature frame.
    pub fn handle_temperature(&mut self, now: Instant, index: usize, value: MilliCelsius) {
        if index < self.sensors.len() && !self.is_stopping() {
            self.enqueue(Pending::Temperature { index: index as u8, value, at: now.uptime() });
        }
    }

    /// Sensor `index` failed to read. Counted; no frame is sent for this period.
    pub fn handle_sensor_error(&mut self, _index: usize) {
        self.stats.sensor_errors += 1;
    }

    /// The next LED to drive and the state to drive it to.
    pub fn poll_led(&mut self) -> Option<(usize, LedState)> {
        let index = take_lowest_bit(&mut self.leds_to_drive)?;
        self.leds.get(index).map(|led| (index, led.state))
    }

    /// Prepares a connection: reserves two sequence numbers, seals the Last Will (offline status)
    /// with the second into `buf`, and queues, at the front, an online status with the current LED
    /// states that will be sealed with the first. A receiver accepts an offline frame only if its
    /// number directly follows the last online status it accepted, so a replayed or stale will is
    /// rejected. Call before every connection attempt.
    ///
    /// A stopping node publishes this same frame itself, last, before it disconnects
    /// ([`handle_shutdown`](Self::handle_shutdown)).
    pub fn handle_connect<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Result<Outgoing<'b>, Error> {
        let online = self.counter.next(&mut self.store)?;
        let will = self.counter.next(&mut self.store)?;
        let message =
            Message::Status(StatusReport { status: NodeStatus::Offline, uptime: now.uptime() });
        let len = self.codec.seal(&self.device, will, &message, buf)?;
        self.stats.frames_sealed += 1;
        self.queue.retain(|p| !matches!(p, Pending::Online { .. }));
        self.online_reserved = Some(online);
        // A new session: commands for the one before are stale from now on, so its window
        // has nothing left to guard.
        self.session = Some(online);
        self.commands = ReplayWindow::new();
        self.will = Some((will, now.uptime()));
        let entry = Pending::Online { leds: self.led_bits(), at: now.uptime() };
        if self.queue.is_full() {
            self.drop_one();
        }
        // Cannot fail: there is room now.
        let _ = self.queue.insert(0, entry);
        let frame = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        Ok(Outgoing {
            topic: message.topic(&self.device).to_topic_string(),
            frame,
            qos: QoS::AtLeastOnce,
            retain: true,
        })
    }

    /// Seals the oldest queued message into `buf` (at least
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) bytes). It stays queued until
    /// [`handle_sent`](Self::handle_sent); if publishing fails, the next call seals it again
    /// with a new sequence number (a number is never used for two different frames).
    pub fn poll_transmit<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<Outgoing<'b>>, Error> {
        let Some(&pending) = self.queue.first() else {
            return Ok(None);
        };
        let reserved = match pending {
            Pending::Online { .. } => self.online_reserved,
            // Nothing to send before a connection was prepared (not in the documented order).
            Pending::Offline => match self.will {
                Some((sequence, _)) => Some(sequence),
                None => return Ok(None),
            },
            _ => None,
        };
        let message = self.message_of(pending)?;
        // A retry of the connection's online status keeps its reserved number: the message is
        // identical, so the frame is byte for byte the same one and no nonce is reused with a
        // different plaintext. Its will names exactly that number. The offline status of a
        // stopping node is the will itself: same number, same message, the identical frame.
        let sequence = match reserved {
            Some(sequence) => sequence,
            None => self.counter.next(&mut self.store)?,
        };
        let len = self.codec.seal(&self.device, sequence, &message, buf)?;
        self.stats.frames_sealed += 1;
        let (qos, retain) = match message {
            Message::Temperature(_) => (self.config.temperature_qos, false),
            Message::Led(_) | Message::Status(_) | Message::Command(_) => (QoS::AtLeastOnce, true),
        };
        let frame = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        Ok(Some(Outgoing {
            topic: message.topic(&self.device).to_topic_string(),
            frame,
            qos,
            retain,
        }))
    }

    /// The frame from the last [`poll_transmit`](Self::poll_transmit) was published.
    pub fn handle_sent(&mut self) {
        if !self.queue.is_empty() {
            match self.queue.remove(0) {
                Pending::Online { .. } => self.online_reserved = None,
                Pending::Offline => self.offline_sent = true,
                Pending::Led { .. } | Pending::Temperature { .. } => {}
            }
            self.stats.frames_sent += 1;
        }
    }

    /// Asks the node to stop, at `now`. It takes no new input from then on (buttons, LED
    /// commands, samples and announcements are ignored), queues its offline status behind
    /// everything already queued, and gives itself [`NodeConfig::shutdown_timeout`] to deliver
    /// them; follow [`poll_shutdown`](Self::poll_shutdown). Calling it again changes nothing.
    ///
    /// The offline status is the current connection's Last Will, the frame
    /// [`handle_connect`](Self::handle_connect) sealed, published as an ordinary retained QoS 1
    /// message: a receiver accepts it by the will's rule (its number follows the online status
    /// it accepted last), and the broker, told DISCONNECT afterwards, discards the will instead
    /// of publishing it again. Should the connection drop before that, the broker publishes the
    /// identical frame, which the receiver refuses as a duplicate. Nothing new is sealed with
    /// the will's number, so no nonce is reused; a reconnection while stopping makes a new will,
    /// and the offline status follows it.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.is_stopping() {
            return;
        }
        self.shutdown_deadline = Some(now + self.config.shutdown_timeout);
        self.samples_due = 0;
        if self.queue.is_full() {
            self.drop_one();
        }
        if self.queue.push(Pending::Offline).is_err() {
            // Only with a zero-capacity queue: the broker publishes the will.
            self.stats.frames_dropped += 1;
        }
    }

    /// Where a stop stands at `now`: `None` while the node runs (no
    /// [`handle_shutdown`](Self::handle_shutdown) yet), else what the driver must do next.
    pub fn poll_shutdown(&self, now: Instant) -> Option<Shutdown> {
        let deadline = self.shutdown_deadline?;
        Some(if self.offline_sent {
            Shutdown::Disconnect
        } else if now >= deadline {
            let unsent = self.queue.iter().filter(|p| !matches!(p, Pending::Offline)).count();
            Shutdown::Abandon { unsent }
        } else {
            Shutdown::Flushing { deadline }
        })
    }

    fn is_stopping(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    fn settle_buttons(&mut self, now: Instant) {
        let debounce = self.config.debounce;
        for index in 0..self.leds.len() {
            let Some(led) = self.leds.get_mut(index) else { continue };
            if led.button.settle(now, debounce) == Some(true) {
                let state = led.state.toggled();
                self.change_led(now, index, state);
            }
        }
    }

    fn change_led(&mut self, now: Instant, index: usize, state: LedState) {
        if let Some(led) = self.leds.get_mut(index) {
            led.state = state;
            self.leds_to_drive |= 1 << index;
            self.enqueue(Pending::Led { index: index as u8, state, at: now.uptime() });
        }
    }

    fn led_bits(&self) -> u8 {
        self.leds
            .iter()
            .enumerate()
            .fold(0, |bits, (i, led)| bits | (u8::from(led.state.is_on()) << i))
    }

    fn enqueue(&mut self, entry: Pending) {
        if self.queue.is_full() {
            self.drop_one();
        }
        if self.queue.push(entry).is_err() {
            // Only with a zero-capacity queue.
            self.stats.frames_dropped += 1;
        }
    }

    /// Drops the oldest entry of the lowest rank.
    fn drop_one(&mut self) {
        let victim =
            (0..=2u8).find_map(|rank| self.queue.iter().position(|p| p.drop_rank() == rank));
        if let Some(index) = victim {
            self.queue.remove(index);
            self.stats.frames_dropped += 1;
        }
    }

    fn message_of(&self, pending: Pending) -> Result<Message, Error> {
        Ok(match pending {
            Pending::Led { index, state, at } => {
                let led = self.leds.get(usize::from(index)).ok_or(Error::Capacity)?;
                Message::Led(LedChange { led: led.name.clone(), state, uptime: at })
            }
            Pending::Temperature { index, value, at } => {
                let sensor = self.sensors.get(usize::from(index)).ok_or(Error::Capacity)?;
                let reading =
                    TemperatureReading { sensor: sensor.clone(), temperature: value, uptime: at };
                Message::Temperature(reading)
            }
            Pending::Online { leds, at } => {
                let mut statuses = Vec::new();
                for (i, led) in self.leds.iter().enumerate() {
                    let state = LedState::from(leds & (1 << i) != 0);
                    // Cannot fail: as many LEDs as the node has, at most MAX_LEDS.
                    let _ = statuses.push(LedStatus { led: led.name.clone(), state });
                }
                let status = NodeStatus::Online { leds: statuses };
                Message::Status(StatusReport { status, uptime: at })
            }
            Pending::Offline => {
                let (_, uptime) = self.will.ok_or(Error::Capacity)?;
                Message::Status(StatusReport { status: NodeStatus::Offline, uptime })
            }
        })
    }
}

fn all_bits(count: usize) -> u8 {
    if count >= 8 { u8::MAX } else { (1u8 << count) - 1 }
}

fn take_lowest_bit(bits: &mut u8) -> Option<usize> {
    if *bits == 0 {
        return None;
    }
    let index = bits.trailing_zeros() as usize;
    *bits &= *bits - 1;
    Some(index)
}

/// The first deadline after `now` on the grid `previous + k * period`: a late wake-up does not
/// shift the schedule (no drift), and missed periods are skipped, not bunched.
fn next_on_grid(previous: Instant, period: Duration, now: Instant) -> Instant {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    let behind = now.as_millis().saturating_sub(previous.as_millis());
    let steps = behind / period_ms + 1;
    Instant::from_millis(previous.as_millis().saturating_add(steps.saturating_mul(period_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AesGcmCodec, KeyId, MAX_FRAME_LEN, MemorySequenceStore, Topic};
    use std::string::{String, ToString};
    use std::vec::Vec as StdVec;

    const KEY: [u8; 16] = [9; 16];

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn codec() -> AesGcmCodec {
        AesGcmCodec::from_key_bytes(KeyId(1), &KEY).unwrap()
    }

    fn node<const Q: usize>(
        store: &mut MemorySequenceStore,
    ) -> Node<AesGcmCodec, &mut MemorySequenceStore, Q> {
        Node::new(
            DeviceId::new("pi").unwrap(),
            &[LedName::new("red").unwrap(), LedName::new("green").unwrap()],
            &[SensorName::new("cpu").unwrap()],
            codec(),
            store,
            NodeConfig::default(),
            at(0),
        )
        .unwrap()
    }

    /// Everything the node would publish now, opened with the receiver's codec.
    fn drain<C: Codec, S: SequenceStore, const Q: usize>(
        node: &mut Node<C, S, Q>,
    ) -> StdVec<(String, u64, Message)> {
        let mut out = StdVec::new();
        let mut buf = [0u8; MAX_FRAME_LEN];
        while let Some(frame) = node.poll_transmit(&mut buf).unwrap() {
            let topic = Topic::parse(&frame.topic).unwrap();
            let opened = codec().open(&topic, frame.frame).unwrap();
            out.push((frame.topic.to_string(), opened.header.sequence.get(), opened.message));
            node.handle_sent();
        }
        out
    }

    fn led_change(name: &str, state: LedState, ms: u32) -> Message {
        Message::Led(LedChange { led: LedName::new(name).unwrap(), state, uptime: Uptime(ms) })
    }

    #[test]
    fn a_bouncy_press_toggles_once_and_emits_one_led_frame() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let mut buf = [0u8; MAX_FRAME_LEN];
        let will = node.handle_connect(at(0), &mut buf).unwrap();
        assert_eq!(will.topic.as_str(), "ledtemp/pi/status");
        node.handle_timeout(at(0));
        while node.poll_sample().is_some() {} // sensor readings are another test's business
        // Initial LED outputs are driven.
        assert_eq!(node.poll_led(), Some((0, LedState::Off)));
        assert_eq!(node.poll_led(), Some((1, LedState::Off)));
        assert_eq!(node.poll_led(), None);

        // Press with bounce: 100 down, 102 up, 104 down, held; release at 300 with bounce.
        for (ms, level) in [(100, true), (102, false), (104, true), (110, true), (123, true)] {
            node.handle_button(at(ms), 0, level);
        }
        assert_eq!(node.led_state(0), Some(LedState::Off), "not yet stable for 20 ms");
        assert_eq!(node.poll_timeout(), at(124));
        node.handle_timeout(at(124));
        assert_eq!(node.led_state(0), Some(LedState::On));
        assert_eq!(node.poll_led(), Some((0, LedState::On)));
        for (ms, level) in [(300, false), (301, true), (303, false), (330, false)] {
            node.handle_button(at(ms), 0, level);
        }
        // Second press.
        for (ms, level) in [(500, true), (525, true)] {
            node.handle_button(at(ms), 0, level);
        }
        assert_eq!(node.led_state(0), Some(LedState::Off));

        let frames = drain(&mut node);
        let got: StdVec<_> = frames.iter().map(|(t, s, m)| (t.as_str(), *s, m.clone())).collect();
        let online = Message::Status(StatusReport {
            status: NodeStatus::Online {
                leds: Vec::from_slice(&[
                    LedStatus { led: LedName::new("red").unwrap(), state: LedState::Off },
                    LedStatus { led: LedName::new("green").unwrap(), state: LedState::Off },
                ])
                .unwrap(),
            },
            uptime: Uptime(0),
        });
        assert_eq!(
            got,
            [
                ("ledtemp/pi/status", 0, online),
                ("ledtemp/pi/led/red", 2, led_change("red", LedState::On, 124)),
                ("ledtemp/pi/led/red", 3, led_change("red", LedState::Off, 525)),
            ]
        );
    }

    #[test]
    fn the_will_is_sealed_with_the_number_after_the_online_status() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let mut buf = [0u8; MAX_FRAME_LEN];
        let will = node.handle_connect(at(5), &mut buf).unwrap();
        let topic = Topic::parse(&will.topic).unwrap();
        let opened = codec().open(&topic, will.frame).unwrap();
        assert_eq!(opened.header.sequence.get(), 1);
        assert!(matches!(
            opened.message,
            Message::Status(StatusReport { status: NodeStatus::Offline, .. })
        ));
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        let frames = drain(&mut node);
        assert_eq!(frames[0].1, 0, "online status takes the reserved number below the will");

        // A failed attempt and a reconnect: one online status, new numbers, no reuse.
        node.handle_connect(at(10), &mut buf).unwrap();
        node.handle_connect(at(20), &mut buf).unwrap();
        let frames = drain(&mut node);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, 4);
    }

    #[test]
    fn a_failed_publish_of_the_online_status_resends_the_identical_frame() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let mut buf = [0u8; MAX_FRAME_LEN];
        node.handle_connect(at(0), &mut buf).unwrap();
        let first = node.poll_transmit(&mut buf).unwrap().unwrap().frame.to_vec();
        let again = node.poll_transmit(&mut buf).unwrap().unwrap().frame.to_vec();
        assert_eq!(first, again);
        node.handle_sent();
        // Other frames get a fresh number per attempt.
        node.set_led(at(1), 1, LedState::On);
        let a = node.poll_transmit(&mut buf).unwrap().unwrap().frame.to_vec();
        let b = node.poll_transmit(&mut buf).unwrap().unwrap().frame.to_vec();
        assert_ne!(a[..7], b[..7]);
    }

    #[test]
    fn temperatures_follow_the_period_without_drift() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<64>(&mut store);
        let mut samples = StdVec::new();
        // Wake-ups arrive late by varying amounts; samples stay on the 1 s grid.
        for ms in [0, 1_013, 2_250, 2_400, 3_001, 5_700, 6_000] {
            node.handle_timeout(at(ms));
            while let Some(index) = node.poll_sample() {
                node.handle_temperature(at(ms), index, MilliCelsius(20_000 + ms as i32));
                samples.push(ms);
            }
            assert!(node.poll_timeout() > at(ms));
            assert_eq!(node.poll_timeout().as_millis() % 1_000, 0, "on the grid after {ms}");
        }
        // 2_400 is inside the 2 s period already sampled at 2_250; 4 s was missed (not bunched).
        assert_eq!(samples, [0, 1_013, 2_250, 3_001, 5_700, 6_000]);
        let frames = drain(&mut node);
        let temps: StdVec<_> = frames
            .iter()
            .filter_map(|(_, _, m)| match m {
                Message::Temperature(t) => Some((t.temperature.0, t.uptime.0)),
                _ => None,
            })
            .collect();
        assert_eq!(temps[1], (21_013, 1_013));
        assert_eq!(temps.len(), 6);
    }

    #[test]
    fn temperatures_go_out_at_the_configured_qos_never_retained() {
        for (config, expected) in [
            (NodeConfig::default(), QoS::AtLeastOnce),
            (
                NodeConfig { temperature_qos: QoS::AtMostOnce, ..NodeConfig::default() },
                QoS::AtMostOnce,
            ),
        ] {
            let mut node = Node::<_, _, 8>::new(
                DeviceId::new("pi").unwrap(),
                &[LedName::new("red").unwrap()],
                &[SensorName::new("cpu").unwrap()],
                codec(),
                MemorySequenceStore::new(),
                config,
                at(0),
            )
            .unwrap();
            node.handle_temperature(at(0), 0, MilliCelsius(21_000));
            node.set_led(at(1), 0, LedState::On);
            let mut buf = [0u8; MAX_FRAME_LEN];
            let reading = node.poll_transmit(&mut buf).unwrap().unwrap();
            assert_eq!(reading.topic.as_str(), "ledtemp/pi/temp/cpu");
            assert_eq!((reading.qos, reading.retain), (expected, false));
            node.handle_sent();
            // LED changes stay QoS 1 and retained whatever the temperatures do.
            let change = node.poll_transmit(&mut buf).unwrap().unwrap();
            assert_eq!(change.topic.as_str(), "ledtemp/pi/led/red");
            assert_eq!((change.qos, change.retain), (QoS::AtLeastOnce, true));
        }
    }

    #[test]
    fn a_sensor_error_is_counted_and_sends_nothing() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        node.handle_timeout(at(0));
        let index = node.poll_sample().unwrap();
        node.handle_sensor_error(index);
        assert_eq!(node.stats().sensor_errors, 1);
        assert!(drain(&mut node).is_empty());
        node.handle_timeout(at(1_000));
        let index = node.poll_sample().unwrap();
        node.handle_temperature(at(1_000), index, MilliCelsius(21_000));
        assert_eq!(drain(&mut node).len(), 1);
    }

    #[test]
    fn a_full_queue_drops_temperatures_first_and_keeps_led_changes_in_order() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<4>(&mut store);
        node.handle_temperature(at(0), 0, MilliCelsius(1));
        node.set_led(at(1), 0, LedState::On);
        node.handle_temperature(at(2), 0, MilliCelsius(2));
        node.set_led(at(3), 1, LedState::On);
        node.handle_temperature(at(4), 0, MilliCelsius(3)); // full: drops temperature 1
        node.set_led(at(5), 0, LedState::Off); // drops temperature 2
        node.set_led(at(6), 1, LedState::Off); // drops temperature 3
        node.set_led(at(7), 0, LedState::On); // only LED changes left: drops the oldest
        assert_eq!(node.stats().frames_dropped, 4);
        assert_eq!(node.stats().queued, 4);
        let frames: StdVec<_> = drain(&mut node).into_iter().map(|(_, _, m)| m).collect();
        assert_eq!(
            frames,
            [
                led_change("green", LedState::On, 3),
                led_change("red", LedState::Off, 5),
                led_change("green", LedState::Off, 6),
                led_change("red", LedState::On, 7),
            ]
        );
    }

    #[test]
    fn led_states_are_reannounced_periodically() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        node.set_led(at(10), 1, LedState::On);
        drain(&mut node);
        node.handle_timeout(at(30_000));
        while node.poll_sample().is_some() {}
        let frames: StdVec<_> = drain(&mut node).into_iter().map(|(_, _, m)| m).collect();
        assert_eq!(
            frames,
            [led_change("red", LedState::Off, 30_000), led_change("green", LedState::On, 30_000)]
        );
    }

    #[test]
    fn a_rebooted_node_never_reuses_a_sequence_number() {
        let mut store = MemorySequenceStore::new();
        let mut seen = std::collections::BTreeSet::new();
        for boot in 0..3u64 {
            let mut node = node::<8>(&mut store);
            for i in 0..5 {
                node.set_led(at(boot * 100 + i), 0, LedState::from(i % 2 == 0));
            }
            for (_, sequence, _) in drain(&mut node) {
                assert!(seen.insert(sequence), "sequence {sequence} reused");
            }
        }
        assert_eq!(seen.len(), 15);
    }

    /// Opens `frame` as the server does: the codec, then the replay window with the will rule.
    fn accept_as_server(window: &mut ReplayWindow, topic: &str, frame: &[u8]) -> Message {
        let opened = codec().open(&Topic::parse(topic).unwrap(), frame).unwrap();
        window.accept_frame(&opened).unwrap_or_else(|e| panic!("{opened:?}: {e}"));
        opened.message
    }

    #[test]
    fn a_stopping_node_sends_its_queue_then_its_own_will_and_asks_to_disconnect() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let mut window = ReplayWindow::new();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let will = node.handle_connect(at(0), &mut buf).unwrap();
        let (will_topic, will_frame) = (will.topic.to_string(), will.frame.to_vec());
        assert_eq!(node.poll_shutdown(at(0)), None, "running");
        let online = node.poll_transmit(&mut buf).unwrap().unwrap();
        accept_as_server(&mut window, &online.topic, online.frame);
        node.handle_sent();
        // Two LED changes wait in the queue when the stop comes.
        node.set_led(at(100), 0, LedState::On);
        node.set_led(at(110), 1, LedState::On);
        node.handle_shutdown(at(200));
        let deadline = at(200) + SHUTDOWN_TIMEOUT;
        assert_eq!(node.poll_shutdown(at(200)), Some(Shutdown::Flushing { deadline }));
        assert_eq!(node.poll_timeout(), deadline);

        // No new input once stopping: no toggles, samples or announcements.
        node.set_led(at(300), 0, LedState::Off);
        for (ms, level) in [(300, true), (400, true)] {
            node.handle_button(at(ms), 1, level);
        }
        node.handle_timeout(at(60_000));
        assert_eq!(node.poll_sample(), None);
        node.handle_temperature(at(300), 0, MilliCelsius(1));
        assert_eq!(node.led_state(0), Some(LedState::On));

        let mut sent = StdVec::new();
        while let Some(frame) = node.poll_transmit(&mut buf).unwrap() {
            let message = accept_as_server(&mut window, &frame.topic, frame.frame);
            sent.push((frame.topic.to_string(), frame.frame.to_vec(), message, frame.qos));
            node.handle_sent();
        }
        let messages: StdVec<&Message> = sent.iter().map(|(_, _, m, _)| m).collect();
        assert_eq!(
            messages,
            [
                &led_change("red", LedState::On, 100),
                &led_change("green", LedState::On, 110),
                &Message::Status(StatusReport { status: NodeStatus::Offline, uptime: Uptime(0) }),
            ]
        );
        let (topic, frame, _, qos) = sent.last().unwrap();
        assert_eq!((topic, frame), (&will_topic, &will_frame), "the offline status is the will");
        assert_eq!(*qos, QoS::AtLeastOnce);
        assert_eq!(window.state().expected_will, 0, "the server took it as this connection's will");
        assert_eq!(node.poll_shutdown(at(300)), Some(Shutdown::Disconnect));
        assert_eq!(node.poll_shutdown(deadline), Some(Shutdown::Disconnect));
        // The broker's copy of the will, should it publish it after all, is a duplicate.
        let duplicate = codec().open(&Topic::parse(&will_topic).unwrap(), &will_frame).unwrap();
        assert_eq!(window.accept_frame(&duplicate), Err(Error::Replayed));
    }

    #[test]
    fn a_stop_that_cannot_deliver_gives_up_at_the_deadline() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let mut buf = [0u8; MAX_FRAME_LEN];
        node.handle_connect(at(0), &mut buf).unwrap();
        node.set_led(at(10), 0, LedState::On);
        node.handle_shutdown(at(1_000));
        node.handle_shutdown(at(1_500)); // a second request moves nothing
        let deadline = at(1_000) + SHUTDOWN_TIMEOUT;
        assert_eq!(node.poll_shutdown(at(2_999)), Some(Shutdown::Flushing { deadline }));
        // Unsent: the online status and the LED change; the offline status is the broker's will.
        assert_eq!(node.poll_shutdown(deadline), Some(Shutdown::Abandon { unsent: 2 }));
    }

    #[test]
    fn a_stopping_node_that_reconnects_sends_the_new_will_and_never_drops_it() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<3>(&mut store);
        let mut window = ReplayWindow::new();
        let mut buf = [0u8; MAX_FRAME_LEN];
        node.handle_connect(at(0), &mut buf).unwrap();
        let online = node.poll_transmit(&mut buf).unwrap().unwrap();
        accept_as_server(&mut window, &online.topic, online.frame);
        node.handle_sent();
        // The link drops; three changes fill the queue; then the stop and a reconnection.
        for (i, ms) in [10, 20, 30].into_iter().enumerate() {
            node.set_led(at(ms), i % 2, LedState::from(i < 2));
        }
        node.handle_shutdown(at(40));
        let will = node.handle_connect(at(50), &mut buf).unwrap().frame.to_vec();
        let mut messages = StdVec::new();
        let mut last = StdVec::new();
        while let Some(frame) = node.poll_transmit(&mut buf).unwrap() {
            messages.push(accept_as_server(&mut window, &frame.topic, frame.frame));
            last = frame.frame.to_vec();
            node.handle_sent();
        }
        assert_eq!(last, will, "the offline status is the new connection's will");
        assert!(matches!(&messages[0], Message::Status(s) if s.status != NodeStatus::Offline));
        assert!(matches!(
            messages.last(),
            Some(Message::Status(StatusReport { status: NodeStatus::Offline, .. }))
        ));
        assert_eq!(node.poll_shutdown(at(60)), Some(Shutdown::Disconnect));
        assert_eq!(
            node.stats().frames_dropped,
            2,
            "LED changes made room; the offline status stayed"
        );
    }

    #[test]
    fn too_many_leds_or_sensors_is_an_error() {
        let names: StdVec<LedName> =
            (0..9).map(|i| LedName::new(&std::format!("l{i}")).unwrap()).collect();
        let result = Node::<_, _, 4>::new(
            DeviceId::new("pi").unwrap(),
            &names,
            &[],
            codec(),
            MemorySequenceStore::new(),
            NodeConfig::default(),
            at(0),
        );
        assert!(matches!(result, Err(Error::Capacity)));
    }

    /// The server's side of a command: sealed with the device's key, numbered by the server's
    /// own counter.
    fn command(
        codec: &impl Codec,
        device: &str,
        led: &str,
        state: LedState,
        session: SequenceNumber,
        expires_ms: u32,
        sequence: u64,
    ) -> (String, StdVec<u8>) {
        let message = Message::Command(LedCommand {
            led: LedName::new(led).unwrap(),
            state,
            session,
            expires: Uptime(expires_ms),
        });
        let device = DeviceId::new(device).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let sequence = SequenceNumber::new(sequence).unwrap();
        let len = codec.seal(&device, sequence, &message, &mut buf).unwrap();
        (message.topic(&device).to_string(), buf[..len].to_vec())
    }

    /// A node connected at 0 ms, its online status sent; returns its session.
    fn connected<C: Codec, S: SequenceStore, const Q: usize>(
        node: &mut Node<C, S, Q>,
    ) -> SequenceNumber {
        let mut will = [0u8; MAX_FRAME_LEN];
        node.handle_connect(at(0), &mut will).unwrap();
        let session = node.session.unwrap();
        drain(node);
        session
    }

    #[test]
    fn a_command_of_the_current_session_sets_the_led_and_the_node_confirms_it() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let session = connected(&mut node);
        while node.poll_led().is_some() {}
        let (topic, frame) = command(&codec(), "pi", "green", LedState::On, session, 5_000, 0);
        assert_eq!(topic, "ledtemp/pi/cmd/green");
        let applied = node.handle_command(at(1_000), &topic, &frame).unwrap();
        assert_eq!(applied, AppliedCommand { index: 1, state: LedState::On, changed: true });
        assert_eq!(node.poll_led(), Some((1, LedState::On)));
        assert_eq!(node.led_state(1), Some(LedState::On));
        let sent = drain(&mut node);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "ledtemp/pi/led/green");
        assert_eq!(sent[0].2, led_change("green", LedState::On, 1_000));

        // The same state again: nothing to drive, but the state is confirmed all the same.
        let (topic, frame) = command(&codec(), "pi", "green", LedState::On, session, 5_000, 1);
        let applied = node.handle_command(at(1_100), &topic, &frame).unwrap();
        assert!(!applied.changed);
        assert_eq!(node.poll_led(), None);
        assert_eq!(drain(&mut node)[0].2, led_change("green", LedState::On, 1_100));
        assert_eq!(node.stats().commands_applied, 2);
    }

    #[test]
    fn a_copy_of_a_command_is_refused_in_its_session_and_changes_nothing() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let session = connected(&mut node);
        let (topic, on) = command(&codec(), "pi", "red", LedState::On, session, 60_000, 7);
        let (_, off) = command(&codec(), "pi", "red", LedState::Off, session, 60_000, 8);
        node.handle_command(at(10), &topic, &on).unwrap();
        node.handle_command(at(20), &topic, &off).unwrap();
        drain(&mut node);
        // Replaying "on" would switch the LED back: refused.
        assert_eq!(node.handle_command(at(30), &topic, &on), Err(Error::Replayed));
        assert_eq!(node.led_state(0), Some(LedState::Off));
        assert!(drain(&mut node).is_empty(), "a refused command sends nothing");
        // Late but unseen commands inside the window are fine; far below it they are not.
        let (_, late) = command(&codec(), "pi", "red", LedState::On, session, 60_000, 5);
        node.handle_command(at(40), &topic, &late).unwrap();
        let (_, far) = command(&codec(), "pi", "red", LedState::Off, session, 60_000, 500);
        node.handle_command(at(50), &topic, &far).unwrap();
        let (_, old) = command(&codec(), "pi", "red", LedState::On, session, 60_000, 6);
        assert_eq!(node.handle_command(at(60), &topic, &old), Err(Error::TooOld));
        assert_eq!(node.led_state(0), Some(LedState::Off));
        assert_eq!(node.stats().commands_refused, 2);
    }

    #[test]
    fn a_command_of_an_earlier_session_is_refused_after_a_reconnect_and_a_reboot() {
        let mut store = MemorySequenceStore::new();
        let (topic, frame) = {
            let mut node = node::<8>(&mut store);
            let session = connected(&mut node);
            let recorded = command(&codec(), "pi", "red", LedState::On, session, 60_000, 0);
            // Reconnected: a new session, the recorded command is stale, unused or not.
            let mut will = [0u8; MAX_FRAME_LEN];
            node.handle_connect(at(100), &mut will).unwrap();
            assert_eq!(
                node.handle_command(at(200), &recorded.0, &recorded.1),
                Err(Error::StaleCommand)
            );
            recorded
        };
        // Rebooted (the store keeps only the sequence block; nothing was written per command):
        // the new node's session is a number it never used before, so the command is stale too,
        // and stays so however often it is replayed.
        let writes = store.writes();
        let mut node = node::<8>(&mut store);
        assert_eq!(node.handle_command(at(10), &topic, &frame), Err(Error::StaleCommand));
        connected(&mut node);
        assert_eq!(node.handle_command(at(20), &topic, &frame), Err(Error::StaleCommand));
        assert_eq!(node.led_state(0), Some(LedState::Off));
        assert!(drain(&mut node).is_empty());
        assert_eq!(store.writes(), writes + 1, "one block reservation at boot, none per command");
    }

    #[test]
    fn a_command_past_its_expiry_is_refused_also_across_the_uptime_wrap() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let session = connected(&mut node);
        let (topic, frame) = command(&codec(), "pi", "red", LedState::On, session, 5_000, 0);
        assert_eq!(node.handle_command(at(5_001), &topic, &frame), Err(Error::CommandExpired));
        node.handle_command(at(5_000), &topic, &frame).unwrap();
        // Uptime wraps after 2^32 ms: an expiry just after the wrap is still ahead of a node
        // just before it, and one just before is behind a node just after.
        let wrap = 1u64 << 32;
        let (_, ahead) = command(&codec(), "pi", "red", LedState::Off, session, 100, 1);
        node.handle_command(at(wrap - 100), &topic, &ahead).unwrap();
        let (_, behind) = command(&codec(), "pi", "red", LedState::On, session, u32::MAX - 50, 2);
        assert_eq!(node.handle_command(at(wrap + 10), &topic, &behind), Err(Error::CommandExpired));
        // An expiry more than MAX_COMMAND_LIFETIME ahead is refused: held back 25 days, a
        // command's expiry looks 24.7 days ahead on the wrapped clock.
        let lifetime = MAX_COMMAND_LIFETIME.as_millis() as u64;
        let (_, far) = command(&codec(), "pi", "red", LedState::On, session, 70_000, 3);
        assert_eq!(node.handle_command(at(9_999), &topic, &far), Err(Error::CommandExpired));
        let held = 25 * 24 * 3_600_000;
        let (_, late) = command(&codec(), "pi", "red", LedState::On, session, 5_000, 4);
        assert_eq!(node.handle_command(at(held), &topic, &late), Err(Error::CommandExpired));
        let (_, longest) = command(&codec(), "pi", "red", LedState::On, session, 70_000, 5);
        node.handle_command(at(70_000 - lifetime), &topic, &longest).unwrap();
    }

    #[test]
    fn forged_moved_and_foreign_commands_are_refused_before_they_act() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let session = connected(&mut node);
        let (topic, frame) = command(&codec(), "pi", "red", LedState::On, session, 60_000, 0);
        let mut tampered = frame.clone();
        tampered[9] ^= 1;
        assert_eq!(node.handle_command(at(1), &topic, &tampered), Err(Error::Unauthentic));
        // Moved to the other LED, or arriving for another device.
        assert_eq!(
            node.handle_command(at(1), "ledtemp/pi/cmd/green", &frame),
            Err(Error::Unauthentic)
        );
        assert_eq!(
            node.handle_command(at(1), "ledtemp/other/cmd/red", &frame),
            Err(Error::InvalidTopic)
        );
        assert_eq!(
            node.handle_command(at(1), "ledtemp/pi/cmd/blue", &frame),
            Err(Error::UnknownLed)
        );
        assert_eq!(
            node.handle_command(at(1), "ledtemp/pi/led/red", &frame),
            Err(Error::InvalidTopic)
        );
        // Sealed with another key (another device's, with the same key id).
        let other = AesGcmCodec::from_key_bytes(KeyId(1), &[7; 16]).unwrap();
        let (_, foreign) = command(&other, "pi", "red", LedState::On, session, 60_000, 1);
        assert_eq!(node.handle_command(at(1), &topic, &foreign), Err(Error::Unauthentic));
        // The device's own LED frame (same key, uplink direction) posted on the command topic.
        let mut buf = [0u8; MAX_FRAME_LEN];
        let led = led_change("red", LedState::On, 1);
        let device = DeviceId::new("pi").unwrap();
        let len = codec().seal(&device, SequenceNumber::new(3).unwrap(), &led, &mut buf).unwrap();
        assert_eq!(node.handle_command(at(1), &topic, &buf[..len]), Err(Error::Unauthentic));
        assert_eq!(node.led_state(0), Some(LedState::Off));
        assert!(drain(&mut node).is_empty());
        assert_eq!(node.stats().commands_refused, 7);
        // The genuine command still works: nothing above moved the window.
        node.handle_command(at(2), &topic, &frame).unwrap();
        assert_eq!(node.led_state(0), Some(LedState::On));
    }

    #[test]
    fn a_node_not_connected_or_stopping_refuses_commands() {
        let mut store = MemorySequenceStore::new();
        let mut node = node::<8>(&mut store);
        let session = SequenceNumber::new(0).unwrap();
        let (topic, frame) = command(&codec(), "pi", "red", LedState::On, session, 60_000, 0);
        assert_eq!(node.handle_command(at(1), &topic, &frame), Err(Error::StaleCommand));
        assert_eq!(connected(&mut node), session);
        node.handle_shutdown(at(2));
        assert_eq!(node.handle_command(at(3), &topic, &frame), Err(Error::StaleCommand));
        assert_eq!(node.led_state(0), Some(LedState::Off));
    }

    #[test]
    fn the_insecure_plaintext_node_obeys_every_command_as_the_original_project_did() {
        use crate::InsecurePlaintextCodec;
        let plain = InsecurePlaintextCodec::new(KeyId(1));
        let mut node: Node<_, _, 8> = Node::new(
            DeviceId::new("pi").unwrap(),
            &[LedName::new("red").unwrap()],
            &[],
            plain,
            MemorySequenceStore::new(),
            NodeConfig::default(),
            at(0),
        )
        .unwrap();
        // No connection, a made-up session, long expired, and the same frame twice: all obeyed.
        let session = SequenceNumber::new(999).unwrap();
        let (topic, frame) = command(&plain, "pi", "red", LedState::On, session, 0, 0);
        node.handle_command(at(10_000), &topic, &frame).unwrap();
        node.handle_command(at(10_001), &topic, &frame).unwrap();
        assert_eq!(node.led_state(0), Some(LedState::On));
    }
}
