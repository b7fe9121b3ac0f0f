//! Validated names: devices, LEDs and sensors.

use core::fmt;
use core::ops::Deref;

use heapless::String;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Longest device, LED or sensor name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// A name that is safe as one MQTT topic level, in a file name and in HTML: 1 to
/// [`MAX_NAME_LEN`] characters from `A-Z a-z 0-9 - _`. It can never be a wildcard (`+`, `#`),
/// hold a `/`, start with `$` or be `.` / `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String<MAX_NAME_LEN, u8>);

impl Name {
    /// Validates `s` as a name.
    ///
    /// ```
    /// use ledtemp_core::Name;
    /// assert!(Name::new("kitchen-pi_2").is_ok());
    /// assert!(Name::new("a/b").is_err());
    /// assert!(Name::new("#").is_err());
    /// ```
    pub fn new(s: &str) -> Result<Self, Error> {
        let valid_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if s.is_empty() || !s.bytes().all(valid_char) {
            return Err(Error::InvalidName);
        }
        String::try_from(s).map(Name).map_err(|_| Error::InvalidName)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <&str>::deserialize(deserializer)?;
        Name::new(s).map_err(|_| serde::de::Error::custom("invalid name"))
    }
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(Name);

        impl $ty {
            /// Validates `s`; see [`Name::new`] for the rules.
            pub fn new(s: &str) -> Result<Self, Error> {
                Name::new(s).map($ty)
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl From<Name> for $ty {
            fn from(name: Name) -> Self {
                $ty(name)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                $ty::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_newtype!(
    /// The id of one device (node). Each device has its own keys; the id is the second level of
    /// every topic the device publishes on.
    DeviceId
);
name_newtype!(
    /// The name of one LED on a device, e.g. `red`.
    LedName
);
name_newtype!(
    /// The name of one temperature sensor on a device, e.g. `cpu` or `28-0316a2796eff`.
    SensorName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_safe_names_up_to_the_limit() {
        assert!(Name::new("a").is_ok());
        assert!(Name::new("Pi-4_kitchen").is_ok());
        let longest = "x".repeat(MAX_NAME_LEN);
        assert_eq!(Name::new(&longest).map(|n| n.len()), Ok(MAX_NAME_LEN));
    }

    #[test]
    fn rejects_wildcards_separators_and_oversize() {
        for bad in ["", "+", "#", "a/b", "$SYS", "..", "a b", "ü", "<script>", "a\0"] {
            assert_eq!(Name::new(bad), Err(Error::InvalidName), "{bad:?}");
        }
        assert_eq!(Name::new(&"x".repeat(MAX_NAME_LEN + 1)), Err(Error::InvalidName));
    }
}
