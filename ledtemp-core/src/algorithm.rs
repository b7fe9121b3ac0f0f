//! Choosing the AEAD at run time, from a key entry.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{
    AesGcmCodec, Codec, DeviceId, Error, KeyId, Message, OpenedFrame, SequenceNumber, Topic,
};

/// The AEAD a key is for, as named in key files and keyrings (`docs/keys.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// AES-128-GCM, 16-byte keys.
    #[serde(rename = "AES-128-GCM")]
    Aes128Gcm,
    /// ChaCha20-Poly1305, 32-byte keys.
    #[serde(rename = "ChaCha20-Poly1305")]
    ChaCha20Poly1305,
}

impl Algorithm {
    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128Gcm => 16,
            Algorithm::ChaCha20Poly1305 => 32,
        }
    }

    /// The name used in files.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Aes128Gcm => "AES-128-GCM",
            Algorithm::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `AES-128-GCM` or `ChaCha20-Poly1305` (case-insensitive).
impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        [Algorithm::Aes128Gcm, Algorithm::ChaCha20Poly1305]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or(Error::UnknownAlgorithm)
    }
}

/// A codec whose AEAD is chosen at run time: what a server holding keys of both kinds, or a node
/// reading its key file, uses.
#[allow(clippy::large_enum_variant, reason = "no allocator to box into; one codec per key, kept")]
pub enum AnyCodec {
    /// AES-128-GCM.
    AesGcm(AesGcmCodec),
    /// ChaCha20-Poly1305.
    #[cfg(feature = "chacha20poly1305")]
    ChaCha(crate::ChaChaCodec),
}

impl AnyCodec {
    /// A codec for `key` under `algorithm`; [`Error::InvalidKeyLength`] if the length is wrong,
    /// [`Error::UnknownAlgorithm`] for ChaCha20-Poly1305 without the `chacha20poly1305` feature.
    pub fn new(algorithm: Algorithm, key_id: KeyId, key: &[u8]) -> Result<Self, Error> {
        match algorithm {
            Algorithm::Aes128Gcm => AesGcmCodec::from_key_bytes(key_id, key).map(AnyCodec::AesGcm),
            #[cfg(feature = "chacha20poly1305")]
            Algorithm::ChaCha20Poly1305 => {
                crate::ChaChaCodec::from_key_bytes(key_id, key).map(AnyCodec::ChaCha)
            }
            #[cfg(not(feature = "chacha20poly1305"))]
            Algorithm::ChaCha20Poly1305 => Err(Error::UnknownAlgorithm),
        }
    }

    /// The codec's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            AnyCodec::AesGcm(_) => Algorithm::Aes128Gcm,
            #[cfg(feature = "chacha20poly1305")]
            AnyCodec::ChaCha(_) => Algorithm::ChaCha20Poly1305,
        }
    }

    fn inner(&self) -> &dyn Codec {
        match self {
            AnyCodec::AesGcm(codec) => codec,
            #[cfg(feature = "chacha20poly1305")]
            AnyCodec::ChaCha(codec) => codec,
        }
    }
}

impl fmt::Debug for AnyCodec {
    /// Never shows key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyCodec")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl Codec for AnyCodec {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LedChange, LedName, LedState, MAX_FRAME_LEN, Uptime};

    #[test]
    fn names_parse_both_ways() {
        for a in [Algorithm::Aes128Gcm, Algorithm::ChaCha20Poly1305] {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert_eq!("aes-128-gcm".parse::<Algorithm>(), Ok(Algorithm::Aes128Gcm));
        assert_eq!("AES-256-GCM".parse::<Algorithm>(), Err(Error::UnknownAlgorithm));
    }

    #[test]
    fn any_codec_seals_like_the_concrete_one() {
        let key = [7u8; 32];
        let device = DeviceId::new("pi").unwrap();
        let message = Message::Led(LedChange {
            led: LedName::new("red").unwrap(),
            state: LedState::On,
            uptime: Uptime(1),
        });
        let sequence = SequenceNumber::new(3).unwrap();
        let any = AnyCodec::new(Algorithm::ChaCha20Poly1305, KeyId(2), &key).unwrap();
        let concrete = crate::ChaChaCodec::from_key_bytes(KeyId(2), &key).unwrap();
        let (mut a, mut b) = ([0u8; MAX_FRAME_LEN], [0u8; MAX_FRAME_LEN]);
        let n = any.seal(&device, sequence, &message, &mut a).unwrap();
        let m = concrete.seal(&device, sequence, &message, &mut b).unwrap();
        assert_eq!(a[..n], b[..m]);
        assert_eq!(
            AnyCodec::new(Algorithm::Aes128Gcm, KeyId(1), &key).err(),
            Some(Error::InvalidKeyLength)
        );
        assert!(!std::format!("{any:?}").contains("07"));
    }
}
