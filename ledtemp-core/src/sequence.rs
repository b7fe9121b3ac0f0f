//! Sequence numbers that are never used twice, across reboots too.

use crate::frame::MAX_SEQUENCE;
use crate::{Error, SequenceNumber};

/// Where a node persists its sequence-number reservation.
///
/// The value is a high-water mark: every sequence number below it may already have been used.
/// [`SequenceCounter`] persists a new mark *before* it hands out any number below it, so after a
/// reboot (or a crash at any point) the node resumes at the stored mark and never reuses a number,
/// and with it a nonce. An implementation must make [`persist`](Self::persist) durable and atomic
/// (the old or the new value survives a crash, never a torn one) before it returns `Ok`.
///
/// ```
/// use ledtemp_core::SequenceStore;
///
/// /// A store in a battery-backed register of some microcontroller.
/// struct BackupRegister(u64);
///
/// impl SequenceStore for BackupRegister {
///     type Error = core::convert::Infallible;
///     fn load(&mut self) -> Result<Option<u64>, Self::Error> {
///         Ok(Some(self.0))
///     }
///     fn persist(&mut self, high_water: u64) -> Result<(), Self::Error> {
///         self.0 = high_water;
///         Ok(())
///     }
/// }
/// ```
pub trait SequenceStore {
    /// Why loading or persisting failed.
    type Error: core::fmt::Debug;

    /// The persisted high-water mark, or `None` if nothing was ever stored (a new key).
    fn load(&mut self) -> Result<Option<u64>, Self::Error>;

    /// Durably records `high_water`; returns only once it would survive a power cut.
    fn persist(&mut self, high_water: u64) -> Result<(), Self::Error>;
}

impl<S: SequenceStore + ?Sized> SequenceStore for &mut S {
    type Error = S::Error;
    fn load(&mut self) -> Result<Option<u64>, Self::Error> {
        (**self).load()
    }
    fn persist(&mut self, high_water: u64) -> Result<(), Self::Error> {
        (**self).persist(high_water)
    }
}

/// A [`SequenceStore`] in memory, for tests and for devices that get a fresh key at every boot.
/// It counts its writes so tests can check how often a real store would be written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySequenceStore {
    high_water: Option<u64>,
    writes: u64,
}

impl MemorySequenceStore {
    /// An empty store, as on a device that never sealed a frame with this key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored high-water mark.
    pub fn high_water(&self) -> Option<u64> {
        self.high_water
    }

    /// How many times [`persist`](SequenceStore::persist) was called.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl SequenceStore for MemorySequenceStore {
    type Error = core::convert::Infallible;
    fn load(&mut self) -> Result<Option<u64>, Self::Error> {
        Ok(self.high_water)
    }
    fn persist(&mut self, high_water: u64) -> Result<(), Self::Error> {
        self.high_water = Some(high_water);
        self.writes += 1;
        Ok(())
    }
}

/// Hands out sequence numbers, reserving them in blocks through a [`SequenceStore`].
///
/// One persisted write covers `block` frames: a node sending a temperature every second with the
/// default block of 1024 writes its store about every 17 minutes. A reboot skips the unused rest of
/// the block, so a larger block means fewer writes and faster exhaustion of the 40-bit space (at
/// one reboot a minute and a block of 1024, still over 2000 years).
///
/// ```
/// use ledtemp_core::{MemorySequenceStore, SequenceCounter};
///
/// let mut store = MemorySequenceStore::new();
/// let mut counter = SequenceCounter::resume(&mut store, 100)?;
/// assert_eq!(counter.next(&mut store)?.get(), 0);
/// assert_eq!(store.high_water(), Some(100)); // reserved before 0 was handed out
///
/// // Reboot: resume above the reservation, never reusing 1..100.
/// let mut counter = SequenceCounter::resume(&mut store, 100)?;
/// assert_eq!(counter.next(&mut store)?.get(), 100);
/// # Ok::<(), ledtemp_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceCounter {
    next: u64,
    reserved_until: u64,
    block: u64,
}

impl SequenceCounter {
    /// Default reservation block.
    pub const DEFAULT_BLOCK: u32 = 1024;

    /// Resumes from the store's high-water mark (0 for a new key). Nothing is reserved until the
    /// first [`next`](Self::next). A `block` of 0 is taken as 1.
    pub fn resume<S: SequenceStore>(store: &mut S, block: u32) -> Result<Self, Error> {
        let next = store.load().map_err(|_| Error::SequenceStore)?.unwrap_or(0);
        Ok(SequenceCounter { next, reserved_until: next, block: u64::from(block.max(1)) })
    }

    /// The next sequence number; persists a new reservation first when the current one is used
    /// up. [`Error::SequenceExhausted`] once [`MAX_SEQUENCE`] was handed out: the key must be
    /// replaced. On [`Error::SequenceStore`] nothing is handed out and a later call retries.
    pub fn next<S: SequenceStore>(&mut self, store: &mut S) -> Result<SequenceNumber, Error> {
        let number = SequenceNumber::new(self.next)?;
        if self.next >= self.reserved_until {
            let until = self.next.saturating_add(self.block).min(MAX_SEQUENCE + 1);
            store.persist(until).map_err(|_| Error::SequenceStore)?;
            self.reserved_until = until;
        }
        self.next += 1;
        Ok(number)
    }

    /// The number the next call to [`next`](Self::next) returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Numbers left before the key is used up.
    pub fn remaining(&self) -> u64 {
        (MAX_SEQUENCE + 1).saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn reserves_a_block_before_using_it() {
        let mut store = MemorySequenceStore::new();
        let mut counter = SequenceCounter::resume(&mut store, 4).unwrap();
        let got: Vec<u64> = (0..9).map(|_| counter.next(&mut store).unwrap().get()).collect();
        assert_eq!(got, (0..9).collect::<Vec<_>>());
        assert_eq!(store.high_water(), Some(12));
        assert_eq!(store.writes(), 3);
    }

    #[test]
    fn resumes_above_the_reservation_after_a_reboot() {
        let mut store = MemorySequenceStore::new();
        let mut used = std::collections::BTreeSet::new();
        for _boot in 0..5 {
            let mut counter = SequenceCounter::resume(&mut store, 8).unwrap();
            for _ in 0..3 {
                assert!(used.insert(counter.next(&mut store).unwrap().get()));
            }
        }
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 8, 9, 10, 16, 17, 18, 24, 25, 26, 32, 33, 34]
        );
    }

    struct FailingStore;
    impl SequenceStore for FailingStore {
        type Error = ();
        fn load(&mut self) -> Result<Option<u64>, ()> {
            Ok(Some(5))
        }
        fn persist(&mut self, _: u64) -> Result<(), ()> {
            Err(())
        }
    }

    #[test]
    fn a_failed_persist_hands_out_nothing() {
        let mut counter = SequenceCounter::resume(&mut FailingStore, 8).unwrap();
        assert_eq!(counter.next(&mut FailingStore), Err(Error::SequenceStore));
        assert_eq!(counter.peek(), 5);
    }

    #[test]
    fn refuses_once_the_space_is_exhausted() {
        let mut store = MemorySequenceStore::new();
        store.persist(MAX_SEQUENCE - 1).unwrap();
        let mut counter = SequenceCounter::resume(&mut store, 1024).unwrap();
        assert_eq!(counter.next(&mut store).unwrap().get(), MAX_SEQUENCE - 1);
        assert_eq!(counter.next(&mut store).unwrap().get(), MAX_SEQUENCE);
        assert_eq!(store.high_water(), Some(MAX_SEQUENCE + 1));
        assert_eq!(counter.next(&mut store), Err(Error::SequenceExhausted));
        assert_eq!(counter.remaining(), 0);
    }
}
