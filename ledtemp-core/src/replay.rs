//! The receiver's replay window.

use serde::{Deserialize, Serialize};

use crate::{Error, Message, NodeStatus, OpenedFrame, SequenceNumber, StatusReport};

/// A sliding window over the sequence numbers of one (device, key id) stream: rejects any number
/// accepted before and any number too far below the highest accepted one, and accepts numbers that
/// arrive out of order inside the window.
///
/// The window is [`ReplayWindow::WIDTH`] (64) numbers wide, the DTLS and IPsec default: the newest
/// accepted number and the 63 below it are tracked one bit each. Its whole state is 24 bytes
/// ([`ReplayState`]); a server persists it in the same transaction as the data the frame carried,
/// so a frame captured before a restart is still rejected after it.
///
/// The MQTT Last Will needs one more rule. The node seals its will (an offline status) when it
/// connects, with the number right after that connection's online status, but the broker
/// publishes it much later, when it is far below the window. [`accept_frame`](Self::accept_frame)
/// therefore accepts an offline status exactly when its number is one above the last accepted
/// online status, once, and never otherwise: a will replayed later, or the will of an earlier
/// connection that arrives after a later connection's online status was accepted, is rejected.
/// (The will of the previous connection that arrives before the next online status is still
/// accepted: it is what happened, in order; see `docs/protocol.md`.)
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
    /// The sequence number of the offline status (Last Will) that may still be accepted: one above
    /// the last accepted online status. 0 when none is expected.
    pub expected_will: u64,
}

/// Which of the window's rules a frame is checked by: what a receiver that no longer holds the
/// frame (a store re-checking a batch against the stored window) needs to know of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplayRule {
    /// A reading, an LED change or a command (on the node): the plain window.
    Plain,
    /// An online status: the plain window, and it makes the next number the expected Last Will.
    Online,
    /// An offline status (the Last Will): accepted once, exactly when its number is the expected
    /// will (see [`ReplayWindow`]).
    Will,
}

impl ReplayRule {
    /// The rule `message` is checked by.
    pub fn of(message: &Message) -> ReplayRule {
        match message {
            Message::Status(StatusReport { status: NodeStatus::Offline, .. }) => ReplayRule::Will,
            Message::Status(StatusReport { status: NodeStatus::Online { .. }, .. }) => {
                ReplayRule::Online
            }
            Message::Led(_) | Message::Temperature(_) | Message::Command(_) => ReplayRule::Plain,
        }
    }
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
        let ReplayState { top, seen, .. } = self.state;
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
        let ReplayState { top, seen, .. } = self.state;
        Ok(if s >= top {
            let shift = s + 1 - top;
            let seen = if shift >= Self::WIDTH { 0 } else { seen << shift };
            ReplayState { top: s + 1, seen: seen | 1, ..self.state }
        } else {
            ReplayState { top, seen: seen | (1 << (top - 1 - s)), ..self.state }
        })
    }

    /// The state after accepting an opened frame, or why it is refused; the window does not
    /// change. Applies the Last Will rule (see the type's documentation) to offline statuses and
    /// the plain window to everything else.
    pub fn state_after_frame(&self, frame: &OpenedFrame) -> Result<ReplayState, Error> {
        self.state_after_rule(frame.header.sequence, ReplayRule::of(&frame.message))
    }

    /// The state after accepting a frame numbered `sequence` that is checked by `rule`, or why it
    /// is refused; the window does not change. [`state_after_frame`](Self::state_after_frame)
    /// for a frame known only by its number and kind.
    pub fn state_after_rule(
        &self,
        sequence: SequenceNumber,
        rule: ReplayRule,
    ) -> Result<ReplayState, Error> {
        match rule {
            ReplayRule::Will => {
                if self.state.expected_will == 0 || sequence.get() != self.state.expected_will {
                    return Err(Error::Replayed);
                }
                // Also mark it seen where the window still covers it.
                let state = self.state_after(sequence).unwrap_or(self.state);
                Ok(ReplayState { expected_will: 0, ..state })
            }
            ReplayRule::Online => {
                let state = self.state_after(sequence)?;
                Ok(ReplayState { expected_will: sequence.get() + 1, ..state })
            }
            ReplayRule::Plain => self.state_after(sequence),
        }
    }

    /// Checks an opened frame and records it: what a receiver calls for every frame it opened.
    pub fn accept_frame(&mut self, frame: &OpenedFrame) -> Result<(), Error> {
        self.state = self.state_after_frame(frame)?;
        Ok(())
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
    fn a_rule_checks_a_number_as_the_frame_it_stands_for() {
        let online = ReplayWindow::new().state_after_rule(seq(10), ReplayRule::Online).unwrap();
        assert_eq!((online.top, online.expected_will), (11, 11));
        let armed = ReplayWindow::restore(online);
        assert_eq!(armed.state_after_rule(seq(12), ReplayRule::Will), Err(Error::Replayed));
        let gone = armed.state_after_rule(seq(11), ReplayRule::Will).unwrap();
        assert_eq!((gone.top, gone.expected_will), (12, 0));
        let after = ReplayWindow::restore(gone);
        assert_eq!(after.state_after_rule(seq(11), ReplayRule::Plain), Err(Error::Replayed));
        assert_eq!(after.state_after_rule(seq(11), ReplayRule::Will), Err(Error::Replayed));
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
        assert_eq!(window.state(), ReplayState { top: 1_000_001, seen: 1, expected_will: 0 });
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

    fn status(sequence: u64, status: NodeStatus) -> OpenedFrame {
        OpenedFrame {
            header: crate::FrameHeader { key_id: crate::KeyId(1), sequence: seq(sequence) },
            message: Message::Status(StatusReport { status, uptime: crate::Uptime(0) }),
        }
    }

    fn online(sequence: u64) -> OpenedFrame {
        status(sequence, NodeStatus::Online { leds: heapless::Vec::new() })
    }

    fn offline(sequence: u64) -> OpenedFrame {
        status(sequence, NodeStatus::Offline)
    }

    #[test]
    fn the_will_of_the_current_connection_is_accepted_once_however_late() {
        let mut window = ReplayWindow::new();
        window.accept_frame(&online(10)).unwrap();
        for n in 12..5_000 {
            window.accept(seq(n)).unwrap();
        }
        assert_eq!(window.accept_frame(&offline(11)), Ok(()));
        assert_eq!(window.accept_frame(&offline(11)), Err(Error::Replayed));
    }

    #[test]
    fn a_stale_or_forged_number_will_is_rejected() {
        let mut window = ReplayWindow::new();
        assert_eq!(window.accept_frame(&offline(0)), Err(Error::Replayed), "no online yet");
        window.accept_frame(&online(10)).unwrap();
        // Reconnect: a new online status; the broker then publishes the old connection's will.
        window.accept_frame(&online(20)).unwrap();
        assert_eq!(window.accept_frame(&offline(11)), Err(Error::Replayed));
        assert_eq!(window.accept_frame(&offline(22)), Err(Error::Replayed));
        assert_eq!(window.accept_frame(&offline(21)), Ok(()));
        // The will number is not accepted again as anything else either.
        assert_eq!(window.accept(seq(21)), Err(Error::Replayed));
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
