//! The frame header and the limits of the wire format (see `docs/protocol.md`).

use crate::message::MAX_LEDS;
use crate::{Direction, Error, MAX_NAME_LEN};

/// Version byte of frames this crate writes and accepts.
pub const FRAME_VERSION: u8 = 1;

/// Bytes of the clear-text header: version (1), key id (1), sequence number (5, big-endian).
pub const HEADER_LEN: usize = 7;

/// Bytes of the AEAD authentication tag at the end of every frame.
pub const TAG_LEN: usize = 16;

/// Bytes a frame adds to its postcard payload: header plus tag.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Largest payload (plaintext) of any message: a status report with [`MAX_LEDS`] LEDs whose names
/// are all [`MAX_NAME_LEN`] long. Uptime (4), variant (1), LED count (1), then per LED a name
/// length (1), the name and the state (1).
pub const MAX_PAYLOAD_LEN: usize = 4 + 1 + 1 + MAX_LEDS * (1 + MAX_NAME_LEN + 1);

/// Largest frame on the wire. Anything longer is rejected before any cryptography runs.
pub const MAX_FRAME_LEN: usize = FRAME_OVERHEAD + MAX_PAYLOAD_LEN;

/// Highest sequence number (2^40 - 1). A key that reaches it is used up and must be replaced.
pub const MAX_SEQUENCE: u64 = (1 << 40) - 1;

/// Identifies one of a device's keys, so keys can be rotated: a receiver may hold the old and the
/// new key of a device at once and picks by this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u8);

/// A frame's sequence number: 40 bits, unique per (device, key id); the nonce is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceNumber(u64);

impl SequenceNumber {
    /// `value` as a sequence number, or [`Error::SequenceExhausted`] above [`MAX_SEQUENCE`].
    pub fn new(value: u64) -> Result<Self, Error> {
        if value > MAX_SEQUENCE { Err(Error::SequenceExhausted) } else { Ok(SequenceNumber(value)) }
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    fn to_wire(self) -> [u8; 5] {
        let b = self.0.to_be_bytes();
        [b[3], b[4], b[5], b[6], b[7]]
    }

    fn from_wire(b: [u8; 5]) -> Self {
        SequenceNumber(u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]))
    }
}

/// The clear-text header at the start of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Which of the device's keys sealed the frame.
    pub key_id: KeyId,
    /// The frame's sequence number.
    pub sequence: SequenceNumber,
}

impl FrameHeader {
    /// Reads the header of `frame`, checking its length bounds and version. Nothing in it is
    /// authenticated yet: use it only to pick the key, then open the frame.
    pub fn parse(frame: &[u8]) -> Result<Self, Error> {
        Self::parse_with_min_len(frame, FRAME_OVERHEAD)
    }

    /// [`parse`](Self::parse) for frames at least `min_len` bytes long (a sealed frame also
    /// carries its tag; the teaching plaintext frame does not).
    pub(crate) fn parse_with_min_len(frame: &[u8], min_len: usize) -> Result<Self, Error> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(Error::Oversize);
        }
        let Some((&[version, key_id, s0, s1, s2, s3, s4], _)) = frame.split_first_chunk() else {
            return Err(Error::Truncated);
        };
        if frame.len() < min_len {
            return Err(Error::Truncated);
        }
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        Ok(FrameHeader {
            key_id: KeyId(key_id),
            sequence: SequenceNumber::from_wire([s0, s1, s2, s3, s4]),
        })
    }

    /// The header's bytes on the wire.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [s0, s1, s2, s3, s4] = self.sequence.to_wire();
        [FRAME_VERSION, self.key_id.0, s0, s1, s2, s3, s4]
    }

    /// The 96-bit AEAD nonce of a frame travelling in `direction`: version, key id, the
    /// direction ([`Direction::nonce_byte`]: `0x00` from the device, `0x01` to it), a zero byte,
    /// then the sequence number as 64-bit big-endian. Unique per key as long as each direction's
    /// sequence numbers are (NIST SP 800-38D, 8.2.1): the device and the server count
    /// separately, and the direction byte keeps their equal numbers apart.
    pub fn nonce(&self, direction: Direction) -> [u8; 12] {
        let s = self.sequence.0.to_be_bytes();
        let d = direction.nonce_byte();
        [FRAME_VERSION, self.key_id.0, d, 0, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_bytes() {
        let header =
            FrameHeader { key_id: KeyId(7), sequence: SequenceNumber::new(MAX_SEQUENCE).unwrap() };
        let mut frame = [0u8; FRAME_OVERHEAD];
        frame[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        assert_eq!(FrameHeader::parse(&frame), Ok(header));
        let nonce = [1, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(header.nonce(Direction::FromDevice), nonce);
        let nonce = [1, 7, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(header.nonce(Direction::ToDevice), nonce);
    }

    #[test]
    fn rejects_bad_lengths_and_versions() {
        assert_eq!(FrameHeader::parse(&[]), Err(Error::Truncated));
        assert_eq!(FrameHeader::parse(&[1; FRAME_OVERHEAD - 1]), Err(Error::Truncated));
        assert_eq!(FrameHeader::parse(&[1; MAX_FRAME_LEN + 1]), Err(Error::Oversize));
        assert_eq!(FrameHeader::parse(&[2; FRAME_OVERHEAD]), Err(Error::UnsupportedVersion(2)));
        assert_eq!(SequenceNumber::new(MAX_SEQUENCE + 1), Err(Error::SequenceExhausted));
    }
}
