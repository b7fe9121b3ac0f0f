//! The one error type of `ledtemp-core`.

use core::fmt;

/// Everything that can go wrong in `ledtemp-core`.
///
/// Failures to open a frame that an attacker could learn from (wrong key, tampered bytes, frame
/// moved to another topic or device) are all one variant, [`Error::Unauthentic`], on purpose: a
/// receiver must not act as an oracle that tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// A device, LED or sensor name is empty, longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)
    /// bytes or holds a character outside `A-Z a-z 0-9 - _`.
    InvalidName,
    /// An MQTT topic does not follow the `ledtemp/<device>/...` scheme.
    InvalidTopic,
    /// The caller's output buffer cannot hold the frame; [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN)
    /// bytes always suffice.
    BufferTooSmall,
    /// The frame is shorter than a header and a tag: it was cut off or is not a ledtemp frame.
    Truncated,
    /// The frame is longer than [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN); it is rejected before any
    /// cryptography runs.
    Oversize,
    /// The frame's version byte is not [`FRAME_VERSION`](crate::FRAME_VERSION).
    UnsupportedVersion(u8),
    /// The frame names a key id this codec does not hold.
    UnknownKey(u8),
    /// The frame failed authentication: wrong key, altered bytes, or a frame replayed on another
    /// topic or for another device. Deliberately says nothing more.
    Unauthentic,
    /// The frame authenticated but its payload does not decode as the message its topic names
    /// (or has trailing bytes). Only a sender with the key can cause this: a bug or a stolen key.
    MalformedPayload,
    /// The sequence number was already accepted by this replay window.
    Replayed,
    /// The sequence number is older than the replay window can vouch for.
    TooOld,
    /// The 40-bit sequence space of this key is used up: provision a new key (new key id).
    SequenceExhausted,
    /// The sequence-number store failed to load or persist a reservation; nothing was sealed.
    SequenceStore,
    /// A key has the wrong length for its cipher (16 bytes for AES-128-GCM, 32 for
    /// ChaCha20-Poly1305).
    InvalidKeyLength,
    /// An algorithm name that is neither `AES-128-GCM` nor `ChaCha20-Poly1305` (or ChaCha without
    /// the `chacha20poly1305` feature).
    UnknownAlgorithm,
    /// More LEDs, sensors or queue entries than the fixed capacity allows
    /// ([`MAX_LEDS`](crate::MAX_LEDS), [`MAX_SENSORS`](crate::MAX_SENSORS)).
    Capacity,
    /// The AEAD refused to seal (input too long for the cipher); nothing was sent.
    SealFailed,
    /// A command names another session of the node than its current connection (one recorded
    /// before the node reconnected or rebooted, or sent before its online status), or reached a
    /// node that is not connected or is stopping. Refused; nothing changed.
    StaleCommand,
    /// A command arrived after the moment, on the node's clock, until which its sender allowed
    /// it to act. Refused; nothing changed.
    CommandExpired,
    /// A command names an LED the node does not have. Refused before any cryptography.
    UnknownLed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName => {
                f.write_str("invalid name: use 1 to 32 characters from A-Z, a-z, 0-9, '-' and '_'")
            }
            Error::InvalidTopic => {
                f.write_str("topic does not follow the ledtemp/<device>/<kind>[/<name>] scheme")
            }
            Error::BufferTooSmall => f.write_str("output buffer too small for the frame"),
            Error::Truncated => f.write_str("frame shorter than header plus tag"),
            Error::Oversize => f.write_str("frame longer than the protocol allows"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported frame version {v}"),
            Error::UnknownKey(k) => write!(f, "no key with key id {k} for this device"),
            Error::Unauthentic => f.write_str("frame failed authentication"),
            Error::MalformedPayload => f.write_str("authenticated payload does not decode"),
            Error::Replayed => f.write_str("sequence number already seen (replay)"),
            Error::TooOld => f.write_str("sequence number below the replay window (replay)"),
            Error::SequenceExhausted => {
                f.write_str("sequence numbers of this key are used up: provision a new key id")
            }
            Error::SequenceStore => f.write_str("sequence-number store failed to persist"),
            Error::InvalidKeyLength => f.write_str("key has the wrong length for its cipher"),
            Error::UnknownAlgorithm => {
                f.write_str("unknown algorithm: use AES-128-GCM or ChaCha20-Poly1305")
            }
            Error::Capacity => f.write_str("more LEDs or sensors than a node supports"),
            Error::SealFailed => f.write_str("AEAD refused to seal the frame"),
            Error::StaleCommand => {
                f.write_str("command for another session of the node (replayed or outdated)")
            }
            Error::CommandExpired => f.write_str("command arrived after its expiry"),
            Error::UnknownLed => f.write_str("command for an LED the node does not have"),
        }
    }
}

impl core::error::Error for Error {}
