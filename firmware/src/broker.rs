//! An in-memory MQTT v5 peer: the transport the firmware image publishes through.
//!
//! It answers CONNECT with CONNACK, SUBSCRIBE with SUBACK, PUBLISH (QoS 1) with PUBACK and
//! PINGREQ with PINGRESP, and prints every frame it receives (and the Last Will from CONNECT) on
//! the semihosting console as `FRAME <topic> <hex>` / `WILL <topic> <hex>`, for the host test to
//! open with the host codec. Only what minimq sends is parsed; anything else ends the run with an
//! error line.
//!
//! It also plays the server's part for commands: when the node's first online status arrives,
//! and the node has subscribed to its command filter, the peer seals a command (LED `red` on)
//! with the demo key for the session that status opened (its sequence number) and sends it to the
//! node as an MQTT PUBLISH at QoS 1 on `ledtemp/<device>/cmd/red`, printed as
//! `COMMAND <topic> <hex>`; then the same frame once more, a replay the node must refuse. The
//! command is sealed here, in the image, rather than on the host: the host would have to
//! predict the session before the image runs, or pass the frame in through semihosting file
//! calls, which need `unsafe` in the image.

use core::cell::RefCell;
use core::convert::Infallible;
use core::future::poll_fn;
use core::task::Poll;

use heapless::Vec;
use ledtemp_core::{
    Codec, LedCommand, LedName, LedState, MAX_FRAME_LEN, Message, NodeStatus, SequenceNumber,
    Topic, TopicString, Uptime,
};

use crate::console;

/// Bytes the peer keeps of a packet being received: the largest PUBLISH minimq sends here.
const INBOUND: usize = 1024;
/// Bytes waiting to go to the node: acknowledgements, and the command PUBLISH twice.
const OUTBOUND: usize = 256;

/// How long after the node's online status the command may act, in node time (within
/// `ledtemp_core::MAX_COMMAND_LIFETIME`, beyond which the node refuses it).
const COMMAND_LIFETIME_MS: u32 = 30_000;

/// The in-memory broker.
pub struct InMemoryBroker<C> {
    inbound: Vec<u8, INBOUND>,
    outbound: Vec<u8, OUTBOUND>,
    /// Frames received on a ledtemp topic.
    pub frames: u32,
    /// The codec commands are sealed with (the device's demo key).
    codec: C,
    /// The node subscribed to its commands on this connection.
    subscribed: bool,
    /// Commands sent (the replay included).
    pub commands: u32,
}

impl<C: Codec> InMemoryBroker<C> {
    pub const fn new(codec: C) -> Self {
        InMemoryBroker {
            inbound: Vec::new(),
            outbound: Vec::new(),
            frames: 0,
            codec,
            subscribed: false,
            commands: 0,
        }
    }

    /// Sends `command` to the node, then its replay.
    fn send_command(&mut self, command: &SealedCommand) {
        console::frame(b"COMMAND ", command.topic.as_bytes(), &command.frame);
        for packet_id in [1u16, 2] {
            self.send_publish(command.topic.as_bytes(), &command.frame, packet_id);
            self.commands += 1;
        }
    }

    /// A PUBLISH at QoS 1 to the node, without properties.
    fn send_publish(&mut self, topic: &[u8], payload: &[u8], packet_id: u16) {
        let remaining = 2 + topic.len() + 2 + 1 + payload.len();
        let (Ok(remaining), Ok(topic_len)) = (u8::try_from(remaining), u16::try_from(topic.len()))
        else {
            return;
        };
        if remaining >= 0x80 {
            return; // a one-byte remaining length is all this peer writes
        }
        let [topic_hi, topic_lo] = topic_len.to_be_bytes();
        let [id_hi, id_lo] = packet_id.to_be_bytes();
        let _ = self.outbound.extend_from_slice(&[0x32, remaining, topic_hi, topic_lo]);
        let _ = self.outbound.extend_from_slice(topic);
        let _ = self.outbound.extend_from_slice(&[id_hi, id_lo, 0x00]);
        let _ = self.outbound.extend_from_slice(payload);
    }

    /// Parses and answers every complete packet in `inbound`.
    fn process(&mut self) {
        while let Some((header, body_start, len)) = packet_bounds(&self.inbound) {
            let mut command = None;
            let end = body_start + len;
            let Some(body) = self.inbound.get(body_start..end) else { return };
            let reply = match header >> 4 {
                1 => {
                    print_will(body);
                    Some(&[0x20, 0x03, 0x00, 0x00, 0x00][..])
                }
                3 => {
                    let qos = (header >> 1) & 0x03;
                    match parse_publish(body, qos) {
                        Some((topic, payload, id)) => {
                            console::frame(b"FRAME ", topic, payload);
                            self.frames += 1;
                            if qos == 1 {
                                let [hi, lo] = id.to_be_bytes();
                                let _ = self.outbound.extend_from_slice(&[0x40, 0x02, hi, lo]);
                            }
                            if self.commands == 0 && self.subscribed {
                                command = seal_command(&self.codec, topic, payload);
                            }
                        }
                        None => console::line(b"ERROR malformed PUBLISH"),
                    }
                    None
                }
                // PUBACK of a command.
                4 => None,
                // SUBSCRIBE: granted at QoS 1.
                8 => match body.first_chunk::<2>() {
                    Some(&[hi, lo]) => {
                        self.subscribed = true;
                        console::line(b"SUBSCRIBED");
                        let _ = self.outbound.extend_from_slice(&[0x90, 0x04, hi, lo, 0x00, 0x01]);
                        None
                    }
                    None => {
                        console::line(b"ERROR malformed SUBSCRIBE");
                        None
                    }
                },
                12 => Some(&[0xD0, 0x00][..]),
                14 => None,
                _ => {
                    console::line(b"ERROR unexpected packet type");
                    None
                }
            };
            if let Some(reply) = reply {
                let _ = self.outbound.extend_from_slice(reply);
            }
            if let Some(command) = command {
                self.send_command(&command);
            }
            let rest = self.inbound.len() - end;
            self.inbound.copy_within(end.., 0);
            self.inbound.truncate(rest);
        }
    }

    fn write_bytes(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(INBOUND - self.inbound.len());
        let _ = self.inbound.extend_from_slice(buf.get(..n).unwrap_or_default());
        self.process();
        n
    }

    fn read_bytes(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.outbound.len());
        buf[..n].copy_from_slice(&self.outbound[..n]);
        let rest = self.outbound.len() - n;
        self.outbound.copy_within(n.., 0);
        self.outbound.truncate(rest);
        n
    }

    /// A new connection: whatever the last one left half-sent is gone.
    fn reset(&mut self) {
        self.inbound.clear();
        self.outbound.clear();
        self.subscribed = false;
    }
}

/// A command sealed by the peer.
struct SealedCommand {
    topic: TopicString,
    frame: Vec<u8, MAX_FRAME_LEN>,
}

/// For the node's online status `frame` on `topic`: a command (LED `red` on) for the session the
/// status opened, sealed with `codec`. `None` for any other frame.
fn seal_command<C: Codec>(codec: &C, topic: &[u8], frame: &[u8]) -> Option<SealedCommand> {
    let topic = Topic::parse(core::str::from_utf8(topic).ok()?).ok()?;
    let opened = codec.open(&topic, frame).ok()?;
    let Message::Status(status) = &opened.message else { return None };
    if !matches!(status.status, NodeStatus::Online { .. }) {
        return None;
    }
    let command = Message::Command(LedCommand {
        led: LedName::new("red").ok()?,
        state: LedState::On,
        session: opened.header.sequence,
        expires: Uptime(status.uptime.0.wrapping_add(COMMAND_LIFETIME_MS)),
    });
    let device = topic.device();
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = codec.seal(device, SequenceNumber::new(0).ok()?, &command, &mut buf).ok()?;
    Some(SealedCommand {
        topic: command.topic(device).to_topic_string(),
        frame: Vec::from_slice(buf.get(..len)?).ok()?,
    })
}

/// Hands out connections to the in-memory broker.
pub struct BrokerConnector<'a, C>(pub &'a RefCell<InMemoryBroker<C>>);

/// One connection to the in-memory broker.
pub struct BrokerLink<'a, C>(&'a RefCell<InMemoryBroker<C>>);

impl<'a, C: Codec> ledtemp_core::Connector for BrokerConnector<'a, C> {
    type Io = BrokerLink<'a, C>;
    type Error = Infallible;
    async fn connect(&mut self) -> Result<BrokerLink<'a, C>, Infallible> {
        self.0.borrow_mut().reset();
        Ok(BrokerLink(self.0))
    }
}

impl<C> embedded_io_async::ErrorType for BrokerLink<'_, C> {
    type Error = Infallible;
}

impl<C: Codec> embedded_io_async::Write for BrokerLink<'_, C> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        Ok(self.0.borrow_mut().write_bytes(buf))
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl<C: Codec> embedded_io_async::Read for BrokerLink<'_, C> {
    /// Stays pending while there is nothing to read, like a socket.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        poll_fn(|_| match self.0.borrow_mut().read_bytes(buf) {
            0 if !buf.is_empty() => Poll::Pending,
            n => Poll::Ready(Ok(n)),
        })
        .await
    }
}

/// MQTT variable byte integer at the start of `bytes`: (value, length).
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A complete packet at the start of `buf`: (first byte, body offset, body length).
fn packet_bounds(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&header, rest) = buf.split_first()?;
    let (len, n) = varint(rest)?;
    (buf.len() >= 1 + n + len).then_some((header, 1 + n, len))
}

/// A length-prefixed string or binary field: (field, rest).
fn prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn skip_properties(bytes: &[u8]) -> Option<&[u8]> {
    let (len, n) = varint(bytes)?;
    bytes.get(n + len..)
}

fn parse_publish(body: &[u8], qos: u8) -> Option<(&[u8], &[u8], u16)> {
    let (topic, rest) = prefixed(body)?;
    let (id, rest) = if qos > 0 {
        let (id, rest) = rest.split_first_chunk::<2>()?;
        (u16::from_be_bytes(*id), rest)
    } else {
        (0, rest)
    };
    Some((topic, skip_properties(rest)?, id))
}

/// Prints the Last Will carried in a CONNECT packet.
fn print_will(body: &[u8]) {
    let will = (|| {
        let (_protocol, rest) = prefixed(body)?;
        let (&[_version, flags, _, _], rest) = rest.split_first_chunk::<4>()?;
        let rest = skip_properties(rest)?;
        let (_client_id, rest) = prefixed(rest)?;
        if flags & 0x04 == 0 {
            return None;
        }
        let rest = skip_properties(rest)?;
        let (topic, rest) = prefixed(rest)?;
        let (payload, _) = prefixed(rest)?;
        Some((topic, payload))
    })();
    match will {
        Some((topic, payload)) => console::frame(b"WILL ", topic, payload),
        None => console::line(b"ERROR CONNECT without a will"),
    }
}
