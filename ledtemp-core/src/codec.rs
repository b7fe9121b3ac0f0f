//! The `Codec` trait and its AEAD implementation.

use aead::array::typenum::{U12, U16};
use aead::inout::InOutBuf;
use aead::{AeadCore, AeadInOut, Key, KeyInit, Nonce, Tag};
use serde::{Deserialize, Serialize};

use crate::frame::{FRAME_OVERHEAD, HEADER_LEN, MAX_PAYLOAD_LEN, TAG_LEN};
use crate::message::{LedState, MilliCelsius, NodeStatus, Uptime};
use crate::topic::{MAX_TOPIC_LEN, write_topic_bytes};
use crate::{
    DeviceId, Error, FrameHeader, KeyId, LedChange, LedCommand, Message, SequenceNumber,
    StatusReport, TemperatureReading, Topic,
};

/// Turns messages into frames and back, without allocating.
///
/// A codec holds one key of one device. Implement it to carry ledtemp messages some other way;
/// [`AeadCodec`] is the implementation every ledtemp component uses.
pub trait Codec {
    /// The key id this codec seals with and accepts.
    fn key_id(&self) -> KeyId;

    /// Seals `message`, sent by `device` as frame number `sequence`, into `out`; returns the
    /// frame's length. The frame is published on `message.topic(device)`.
    ///
    /// The caller must never pass the same `sequence` twice for one key: use a
    /// [`SequenceCounter`](crate::SequenceCounter). [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) bytes
    /// of `out` always suffice.
    fn seal(
        &self,
        device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error>;

    /// Opens `frame`, received on `topic`, and decodes its message. Never panics, whatever the
    /// bytes. The frame is authentic but may be a replay: check its sequence number against the
    /// device's [`ReplayWindow`](crate::ReplayWindow) before acting on it.
    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error>;

    /// Whether an opened frame proves who sealed it (true for every real codec). Only the
    /// teaching [`InsecurePlaintextCodec`](crate::InsecurePlaintextCodec) says `false`; a node
    /// holding it then acts on every command as the original project did, with no session,
    /// expiry or replay check, because a sequence number or session anyone can write proves
    /// nothing.
    fn authenticates(&self) -> bool {
        true
    }
}

impl<C: Codec + ?Sized> Codec for &C {
    fn key_id(&self) -> KeyId {
        (**self).key_id()
    }
    fn seal(
        &self,
        device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        (**self).seal(device, sequence, message, out)
    }
    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error> {
        (**self).open(topic, frame)
    }
    fn authenticates(&self) -> bool {
        (**self).authenticates()
    }
}

/// An authentic frame, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedFrame {
    /// Key id and sequence number (now authenticated).
    pub header: FrameHeader,
    /// The message.
    pub message: Message,
}

/// The ledtemp wire format: a postcard payload sealed by any 96-bit-nonce, 128-bit-tag AEAD
/// (`docs/protocol.md` has it byte by byte).
///
/// Holds one initialised cipher: create it once per key and keep it, since key setup costs about
/// as much as sealing a small frame.
pub struct AeadCodec<A> {
    cipher: A,
    key_id: KeyId,
}

/// AES-128-GCM: fast wherever the CPU has AES instructions (the firmware's cipher). A key entry
/// always names its algorithm; neither is a protocol default.
pub type AesGcmCodec = AeadCodec<aes_gcm::Aes128Gcm>;

/// ChaCha20-Poly1305: faster than AES-GCM on CPUs without AES instructions (Raspberry Pi 3/4).
#[cfg(feature = "chacha20poly1305")]
pub type ChaChaCodec = AeadCodec<chacha20poly1305::ChaCha20Poly1305>;

impl<A> AeadCodec<A>
where
    A: AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    /// A codec around an initialised cipher.
    pub fn from_cipher(key_id: KeyId, cipher: A) -> Self {
        AeadCodec { cipher, key_id }
    }

    /// A codec for `key`.
    pub fn new(key_id: KeyId, key: &Key<A>) -> Self
    where
        A: KeyInit,
    {
        Self::from_cipher(key_id, A::new(key))
    }

    /// A codec for a key given as bytes; [`Error::InvalidKeyLength`] if the length is wrong for
    /// the cipher (16 bytes for AES-128-GCM, 32 for ChaCha20-Poly1305).
    pub fn from_key_bytes(key_id: KeyId, key: &[u8]) -> Result<Self, Error>
    where
        A: KeyInit,
    {
        A::new_from_slice(key)
            .map(|cipher| Self::from_cipher(key_id, cipher))
            .map_err(|_| Error::InvalidKeyLength)
    }
}

/// Room for the associated data: the frame header followed by the topic's bytes.
type AssociatedData = [u8; HEADER_LEN + MAX_TOPIC_LEN];

/// Fills `aad` with the header and the topic `ledtemp/<device>/<kind>[/<name>]`; returns the
/// filled part.
fn associated_data<'a>(
    aad: &'a mut AssociatedData,
    header: &FrameHeader,
    device: &DeviceId,
    (kind, name): (&str, Option<&str>),
) -> Result<&'a [u8], Error> {
    let (head, rest) = aad.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header.to_bytes());
    let topic_len = write_topic_bytes(device, kind, name, rest)?;
    aad.get(..HEADER_LEN + topic_len).ok_or(Error::BufferTooSmall)
}

impl<A> Codec for AeadCodec<A>
where
    A: AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn seal(
        &self,
        device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let header = FrameHeader { key_id: self.key_id, sequence };
        let mut aad = [0; HEADER_LEN + MAX_TOPIC_LEN];
        let aad = associated_data(&mut aad, &header, device, message.topic_kind_and_name())?;
        let (head, rest) = out.split_at_mut_checked(HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        head.copy_from_slice(&header.to_bytes());
        let payload_len = encode_payload(message, rest)?;
        let (payload, rest) = rest.split_at_mut(payload_len);
        let tag_out = rest.get_mut(..TAG_LEN).ok_or(Error::BufferTooSmall)?;
        let nonce = Nonce::<A>::from(header.nonce(message.direction()));
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, payload.into())
            .map_err(|_| Error::SealFailed)?;
        tag_out.copy_from_slice(&tag);
        Ok(payload_len + FRAME_OVERHEAD)
    }

    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error> {
        let header = FrameHeader::parse(frame)?;
        if header.key_id != self.key_id {
            return Err(Error::UnknownKey(header.key_id.0));
        }
        // FrameHeader::parse checked FRAME_OVERHEAD <= len <= MAX_FRAME_LEN.
        let ciphertext = frame.get(HEADER_LEN..frame.len() - TAG_LEN).ok_or(Error::Truncated)?;
        let tag = frame.get(frame.len() - TAG_LEN..).ok_or(Error::Truncated)?;
        let tag = Tag::<A>::try_from(tag).map_err(|_| Error::Truncated)?;
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        let payload = payload.get_mut(..ciphertext.len()).ok_or(Error::Oversize)?;
        let mut aad = [0; HEADER_LEN + MAX_TOPIC_LEN];
        let aad = associated_data(&mut aad, &header, topic.device(), topic.kind_and_name())?;
        let nonce = Nonce::<A>::from(header.nonce(topic.direction()));
        let buffer = InOutBuf::new(ciphertext, payload).map_err(|_| Error::Truncated)?;
        self.cipher
            .decrypt_inout_detached(&nonce, aad, buffer, &tag)
            .map_err(|_| Error::Unauthentic)?;
        let message = decode_payload(topic, payload)?;
        Ok(OpenedFrame { header, message })
    }
}

// The payloads on the wire. Names travel in the topic; only what the topic does not say is here.
// Every field has a fixed length except LED names in a status report, so a frame's length does
// not leak an LED state or a temperature's magnitude.

#[derive(Serialize, Deserialize)]
struct LedPayload {
    state: LedState,
    uptime: Uptime,
}

#[derive(Serialize, Deserialize)]
struct TemperaturePayload {
    temperature: MilliCelsius,
    uptime: Uptime,
}

#[derive(Serialize, Deserialize)]
struct StatusPayload {
    uptime: Uptime,
    status: NodeStatus,
}

#[derive(Serialize, Deserialize)]
struct CommandPayload {
    state: LedState,
    #[serde(with = "postcard::fixint::le")]
    session: u64,
    expires: Uptime,
}

pub(crate) fn encode_payload(message: &Message, out: &mut [u8]) -> Result<usize, Error> {
    let written = match message {
        Message::Led(m) => {
            postcard::to_slice(&LedPayload { state: m.state, uptime: m.uptime }, out)
        }
        Message::Temperature(m) => postcard::to_slice(
            &TemperaturePayload { temperature: m.temperature, uptime: m.uptime },
            out,
        ),
        Message::Status(m) => {
            postcard::to_slice(&StatusPayload { uptime: m.uptime, status: m.status.clone() }, out)
        }
        Message::Command(m) => postcard::to_slice(
            &CommandPayload { state: m.state, session: m.session.get(), expires: m.expires },
            out,
        ),
    };
    written.map(|w| w.len()).map_err(|_| Error::BufferTooSmall)
}

/// Decodes exactly `bytes` as `T`: trailing bytes are an error.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(Error::MalformedPayload),
    }
}

pub(crate) fn decode_payload(topic: &Topic, bytes: &[u8]) -> Result<Message, Error> {
    Ok(match topic {
        Topic::Led { led, .. } => {
            let p: LedPayload = decode_exact(bytes)?;
            Message::Led(LedChange { led: led.clone(), state: p.state, uptime: p.uptime })
        }
        Topic::Temperature { sensor, .. } => {
            let p: TemperaturePayload = decode_exact(bytes)?;
            Message::Temperature(TemperatureReading {
                sensor: sensor.clone(),
                temperature: p.temperature,
                uptime: p.uptime,
            })
        }
        Topic::Status { .. } => {
            let p: StatusPayload = decode_exact(bytes)?;
            Message::Status(StatusReport { status: p.status, uptime: p.uptime })
        }
        Topic::Command { led, .. } => {
            let p: CommandPayload = decode_exact(bytes)?;
            Message::Command(LedCommand {
                led: led.clone(),
                state: p.state,
                session: SequenceNumber::new(p.session).map_err(|_| Error::MalformedPayload)?,
                expires: p.expires,
            })
        }
    })
}
