//! Time as the core sees it: a millisecond count passed in by the caller.

use core::ops::{Add, Sub};
use core::time::Duration;

use crate::Uptime;

/// A point on the node's monotonic clock, in milliseconds since an arbitrary start (usually boot).
///
/// The core never reads a clock: drivers pass `Instant`s in. 64 bits of milliseconds do not wrap
/// in the lifetime of any device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The instant `millis` milliseconds after the clock's start.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis)
    }

    /// Milliseconds since the clock's start.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The instant as carried on the wire: milliseconds modulo 2^32.
    pub fn uptime(self) -> Uptime {
        // Truncation is the documented wire behaviour: uptime wraps after 49.7 days.
        Uptime(self.0 as u32)
    }
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates instead of overflowing.
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(millis_of(rhs)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// A monotonic clock, for drivers (never for the core itself).
///
/// ```
/// use ledtemp_core::{Clock, Instant};
/// struct Ticks(u64);
/// impl Clock for Ticks {
///     fn now(&mut self) -> Instant {
///         Instant::from_millis(self.0)
///     }
/// }
/// ```
pub trait Clock {
    /// The current instant. Must never go backwards.
    fn now(&mut self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for &mut C {
    fn now(&mut self) -> Instant {
        (**self).now()
    }
}
