//! **INSECURE, for teaching only**: the plain MQTT the teaching project started from, in the
//! ledtemp frame layout, so that an attack suite can show what sealing stops.

use crate::codec::{decode_payload, encode_payload};
use crate::frame::HEADER_LEN;
use crate::{
    Codec, DeviceId, Error, FrameHeader, KeyId, Message, OpenedFrame, SequenceNumber, Topic,
};

/// **INSECURE: no encryption, no authentication, no replay protection. For teaching only.**
///
/// The "before" of ledtemp's before/after lesson: the frame header (version, key id, sequence
/// number) followed by the postcard payload *in the clear*, and no tag. Anyone on the network
/// reads every LED state and temperature; anyone who can publish forges, alters, moves or
/// replays readings, and the receiver cannot tell. The sequence number is only a label: a
/// receiver of these frames has no basis for a replay window, since anybody can write any number.
///
/// It exists so that `examples/attack.rs` can run the same attacks against a server that
/// accepts these frames (`ledtemp-web serve --insecure-plaintext`) and against one that accepts
/// only sealed frames, and a student sees the difference. Never use it for anything else: it is
/// behind the `insecure-plaintext` feature (off by default), the firmware never enables it, and
/// every program that uses it says so loudly when it starts.
///
/// Frame: `version (1) | key id (1) | sequence (5, big-endian) | postcard payload`, at most
/// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) bytes. `open` accepts any key id (there is no key to pick) and decodes the
/// payload exactly as the sealed codecs do, without panicking on any input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsecurePlaintextCodec {
    key_id: KeyId,
}

impl InsecurePlaintextCodec {
    /// A plaintext "codec" that writes `key_id` into its headers (the id means nothing here).
    pub const fn new(key_id: KeyId) -> Self {
        InsecurePlaintextCodec { key_id }
    }

    /// Reads the header of a plaintext frame: at least [`HEADER_LEN`] and at most
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) bytes, version [`FRAME_VERSION`](crate::FRAME_VERSION).
    pub fn parse_header(frame: &[u8]) -> Result<FrameHeader, Error> {
        FrameHeader::parse_with_min_len(frame, HEADER_LEN)
    }
}

impl Codec for InsecurePlaintextCodec {
    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn seal(
        &self,
        _device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let header = FrameHeader { key_id: self.key_id, sequence };
        let (head, rest) = out.split_at_mut_checked(HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        head.copy_from_slice(&header.to_bytes());
        Ok(HEADER_LEN + encode_payload(message, rest)?)
    }

    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error> {
        let header = Self::parse_header(frame)?;
        let payload = frame.get(HEADER_LEN..).ok_or(Error::Truncated)?;
        let message = decode_payload(topic, payload)?;
        Ok(OpenedFrame { header, message })
    }

    fn authenticates(&self) -> bool {
        false
    }
}

/// A sealed codec, or, **for teaching only**, the [`InsecurePlaintextCodec`]: what a node or
/// demo that can run either way holds, chosen once at start.
#[derive(Debug, Clone)]
pub enum SealedOrPlaintext<C> {
    /// The normal case: every frame sealed with the device's key.
    Sealed(C),
    /// **INSECURE**: frames in the clear, unauthenticated.
    InsecurePlaintext(InsecurePlaintextCodec),
}

impl<C> SealedOrPlaintext<C> {
    /// Whether this is the insecure plaintext codec.
    pub fn is_insecure(&self) -> bool {
        matches!(self, SealedOrPlaintext::InsecurePlaintext(_))
    }
}

impl<C: Codec> SealedOrPlaintext<C> {
    fn inner(&self) -> &dyn Codec {
        match self {
            SealedOrPlaintext::Sealed(c) => c,
            SealedOrPlaintext::InsecurePlaintext(c) => c,
        }
    }
}

impl<C: Codec> Codec for SealedOrPlaintext<C> {
    fn key_id(&self) -> KeyId {
        self.inner().key_id()
    }

    fn seal(
        &self,
        device: &DeviceId,
        sequence: SequenceNumber,
        message: &Message,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        self.inner().seal(device, sequence, message, out)
    }

    fn open(&self, topic: &Topic, frame: &[u8]) -> Result<OpenedFrame, Error> {
        self.inner().open(topic, frame)
    }

    fn authenticates(&self) -> bool {
        self.inner().authenticates()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        LedChange, LedName, LedState, MAX_FRAME_LEN, MilliCelsius, SensorName, TemperatureReading,
        Uptime,
    };

    #[test]
    fn plaintext_frames_carry_the_reading_in_the_clear_and_round_trip() {
        let codec = InsecurePlaintextCodec::new(KeyId(3));
        let device = DeviceId::new("kitchen-pi").unwrap();
        let message = Message::Temperature(TemperatureReading {
            sensor: SensorName::new("cpu").unwrap(),
            temperature: MilliCelsius(21_375),
            uptime: Uptime(1_000),
        });
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = codec.seal(&device, SequenceNumber::new(9).unwrap(), &message, &mut out).unwrap();
        // Header, then the payload anyone can read: 21375 and 1000 as little-endian. No tag.
        assert_eq!(&out[..len], &[1, 3, 0, 0, 0, 0, 9, 0x7f, 0x53, 0, 0, 0xe8, 0x03, 0, 0]);
        let opened = codec.open(&message.topic(&device), &out[..len]).unwrap();
        assert_eq!(opened.message, message);
        assert_eq!(opened.header.sequence.get(), 9);
        // Any key id is taken: there is no key.
        let other = InsecurePlaintextCodec::new(KeyId(200));
        assert_eq!(other.open(&message.topic(&device), &out[..len]).unwrap().message, message);
    }

    #[test]
    fn anybody_can_forge_a_plaintext_frame_and_bad_ones_are_errors_not_panics() {
        let device = DeviceId::new("garage").unwrap();
        let led = Message::Led(LedChange {
            led: LedName::new("door").unwrap(),
            state: LedState::On,
            uptime: Uptime(5),
        });
        let topic = led.topic(&device);
        let forged = [1, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0];
        let codec = InsecurePlaintextCodec::new(KeyId(1));
        assert_eq!(codec.open(&topic, &forged).unwrap().message, led);
        assert_eq!(codec.open(&topic, &forged[..6]), Err(Error::Truncated));
        assert_eq!(
            codec.open(&topic, &[2, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0]),
            Err(Error::UnsupportedVersion(2))
        );
        assert_eq!(
            codec.open(&topic, &[1, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0, 0]),
            Err(Error::MalformedPayload)
        );
        assert_eq!(codec.open(&topic, &[1; MAX_FRAME_LEN + 1]), Err(Error::Oversize));
    }
}
