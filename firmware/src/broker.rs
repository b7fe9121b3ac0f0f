//! An in-memory MQTT v5 peer: the transport the firmware image publishes through.
//!
//! It answers CONNECT with CONNACK, PUBLISH (QoS 1) with PUBACK and PINGREQ with PINGRESP, and
//! prints every frame it receives (and the Last Will from CONNECT) on the semihosting console as
//! `FRAME <topic> <hex>` / `WILL <topic> <hex>`, for the host test to open with the host codec.
//! Only what minimq sends is parsed; anything else ends the run with an error line.

use core::cell::RefCell;
use core::convert::Infallible;
use core::future::poll_fn;
use core::task::Poll;

use heapless::Vec;

use crate::console;

/// Bytes the peer keeps of a packet being received: the largest PUBLISH minimq sends here.
const INBOUND: usize = 1024;
const OUTBOUND: usize = 64;

/// The in-memory broker.
pub struct InMemoryBroker {
    inbound: Vec<u8, INBOUND>,
    outbound: Vec<u8, OUTBOUND>,
    /// Frames received on a ledtemp topic.
    pub frames: u32,
}

impl InMemoryBroker {
    pub const fn new() -> Self {
        InMemoryBroker { inbound: Vec::new(), outbound: Vec::new(), frames: 0 }
    }

    /// Parses and answers every complete packet in `inbound`.
    fn process(&mut self) {
        while let Some((header, body_start, len)) = packet_bounds(&self.inbound) {
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
                        }
                        None => console::line(b"ERROR malformed PUBLISH"),
                    }
                    None
                }
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
    }
}

/// Hands out connections to the in-memory broker.
pub struct BrokerConnector<'a>(pub &'a RefCell<InMemoryBroker>);

/// One connection to the in-memory broker.
pub struct BrokerLink<'a>(&'a RefCell<InMemoryBroker>);

impl<'a> ledtemp_core::Connector for BrokerConnector<'a> {
    type Io = BrokerLink<'a>;
    type Error = Infallible;
    async fn connect(&mut self) -> Result<BrokerLink<'a>, Infallible> {
        self.0.borrow_mut().reset();
        Ok(BrokerLink(self.0))
    }
}

impl embedded_io_async::ErrorType for BrokerLink<'_> {
    type Error = Infallible;
}

impl embedded_io_async::Write for BrokerLink<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        Ok(self.0.borrow_mut().write_bytes(buf))
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl embedded_io_async::Read for BrokerLink<'_> {
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
