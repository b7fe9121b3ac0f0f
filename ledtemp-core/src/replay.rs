//! The receiver's replay window.

use serde::{Deserialize, Serialize};

use crate::{Error, SequenceNumber};

/// A sliding window over the sequence numbers of one (device, key id) stream: rejects any number
/// accepted before and any number too far below the highest accepted one, and accepts numbers that
/// arrive out of order inside the window.
///
/// The window is [`ReplayWindow::WIDTH`] (64) numbers wide, the DTLS and IPsec default: the newest
/// accepted number and the 63 below it are tracked one bit each. Its whole state is 16 bytes
/// ([`ReplayState`]); a server persists it in the same transaction as the data the frame carried,
/// so a frame captured before a restart is still rejected after it.
///
/// Check only frames that opened: a forged frame must never move the window.
///
/// ```
/// use ledtemp_core::{Error, ReplayWindow, SequenceNumber};
/// let seq = |n| SequenceNumber::new(n).unwrap();
/// let mut window = ReplayWindow::new();
/// window.accept(seq(10))?;
/// window.accept(seq(8))?; // late, but inside the window
/// assert_eq!(window.accept(seq(10)), Err(Error::Replayed));
/// window.accept(seq(200))?;
/// assert_eq!(window.accept(seq(100)), Err(Error::TooOld));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReplayWindow {
    state: ReplayState,
}

/// The exportable state of a [`ReplayWindow`]. Every value is valid, so a restored state can never
/// make the window misbehave, only (if tampered with) reject or accept the wrong numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ReplayState {
    /// One more than the highest accepted sequence number; 0 when nothing was accepted yet.
    pub top: u64,
    /// Bit `i` set: number `top - 1 - i` was accepted.
    pub seen: u64,
}

impl ReplayWindow {
    /// How many sequence numbers the window tracks.
    pub const WIDTH: u64 = 64;

    /// A window that has accepted nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A window restored from persisted state.
    pub fn restore(state: ReplayState) -> Self {
        ReplayWindow { state }
    }

    /// The state to persist.
    pub fn state(&self) -> ReplayState {
        self.state
    }

    /// Whether `sequence` would be accepted, without changing the window. A server checks, stores
    /// the frame's data together with the window's next state, and only then [`accept`]s.
    ///
    /// [`accept`]: Self::accept
    pub fn check(&self, sequence: SequenceNumber) -> Result<(), Error> {
        let s = sequence.get();
        let ReplayState { top, seen } = self.state;
        if s >= top {
            return Ok(());
        }
        let offset = top - 1 - s;
        if offset >= Self::WIDTH {
            Err(Error::TooOld)
        } else if seen & (1 << offset) != 0 {
            Err(Error::Replayed)
        } else {
            Ok(())
        }
    }

    /// The state after accepting `sequence`, or why it is refused; the window does not change.
    pub fn state_after(&self, sequence: SequenceNumber) -> Result<ReplayState, Error> {
        self.check(sequence)?;
        let s = sequence.get();
        let ReplayState { top, seen } = self.state;
        Ok(if s >= top {
            let shift = s + 1 - top;
            let seen = if shift >= Self::WIDTH { 0 } else { seen << shift };
            ReplayState { top: s + 1, seen: seen | 1 }
        } else {
            ReplayState { top, seen: seen | (1 << (top - 1 - s)) }
        })
    }

    /// Checks `sequence` and records it as seen.
    pub fn accept(&mut self, sequence: SequenceNumber) -> Result<(), Error> {
        self.state = self.state_after(sequence)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> SequenceNumber {
        SequenceNumber::new(n).unwrap()
    }

    #[test]
    fn accepts_first_frame_at_any_number_including_zero() {
        let mut window = ReplayWindow::new();
        assert_eq!(window.accept(seq(0)), Ok(()));
        assert_eq!(window.accept(seq(0)), Err(Error::Replayed));
    }

    #[test]
    fn reordering_inside_the_window_is_accepted_once() {
        let mut window = ReplayWindow::new();
        for n in [5, 3, 4, 1, 70, 7, 8] {
            assert_eq!(window.accept(seq(n)), Ok(()), "{n}");
        }
        for n in [70, 7, 8] {
            assert_eq!(window.accept(seq(n)), Err(Error::Replayed), "{n}");
        }
        assert_eq!(window.accept(seq(5)), Err(Error::TooOld));
        // 70 - 63 = 7 is the oldest number still inside the window.
        assert_eq!(window.accept(seq(6)), Err(Error::TooOld));
        assert_eq!(window.accept(seq(9)), Ok(()));
    }

    #[test]
    fn a_big_jump_clears_the_window() {
        let mut window = ReplayWindow::new();
        window.accept(seq(1)).unwrap();
        window.accept(seq(1_000_000)).unwrap();
        assert_eq!(window.state(), ReplayState { top: 1_000_001, seen: 1 });
        assert_eq!(window.accept(seq(999_999)), Ok(()));
        assert_eq!(window.accept(seq(1)), Err(Error::TooOld));
    }

    #[test]
    fn check_and_state_after_do_not_change_the_window() {
        let mut window = ReplayWindow::new();
        window.accept(seq(3)).unwrap();
        let before = window;
        assert!(window.check(seq(4)).is_ok());
        assert!(window.state_after(seq(4)).is_ok());
        assert_eq!(window, before);
    }

    #[test]
    fn restored_window_rejects_what_the_original_saw() {
        let mut window = ReplayWindow::new();
        for n in [10, 12, 11] {
            window.accept(seq(n)).unwrap();
        }
        let mut restored = ReplayWindow::restore(window.state());
        for n in [10, 11, 12] {
            assert_eq!(restored.accept(seq(n)), Err(Error::Replayed));
        }
        assert_eq!(restored.accept(seq(9)), Ok(()));
    }
}
