//! The ingest worker's part of LED commands (`crate::command`): sealing them, since it owns the
//! store (the server's sequence counters), the replay windows (the node's session) and sees
//! every frame (the node's clock), and writing the command log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ledtemp_core::{
    DeviceId, InsecurePlaintextCodec, KeyId, LedCommand, Message, SequenceNumber, Uptime,
};

use super::{Ingest, Opener};
use crate::command::{
    COMMAND_LIFETIME, COMMAND_SEQUENCE_BLOCK, CommandRecord, CommandRefusal, CommandRequest,
    CommandSettlement, SealedCommand,
};
use crate::model::UnixMillis;
use crate::store::AcceptedFrame;

/// What the worker keeps for commands.
#[derive(Debug, Default)]
pub(super) struct CommandState {
    /// The unused rest of each key's reserved block: next number, end (exclusive).
    blocks: HashMap<(DeviceId, KeyId), (u64, u64)>,
    /// Per device, its newest live frame: the node's clock as last seen.
    clocks: HashMap<DeviceId, NodeClock>,
}

/// A node's clock, as its newest live frame showed it.
#[derive(Debug, Clone, Copy)]
struct NodeClock {
    key_id: KeyId,
    sequence: u64,
    uptime: Uptime,
    /// When that frame was received, on this server's monotonic clock.
    received: Instant,
}

impl NodeClock {
    /// The node's uptime now, at the latest: the frame's uptime plus the time since it was
    /// received. The frame left the node at or after its uptime, so this never runs ahead of
    /// the node's clock (an expiry computed from it errs early).
    fn estimate(&self) -> Uptime {
        let elapsed = u32::try_from(self.received.elapsed().as_millis()).unwrap_or(u32::MAX);
        Uptime(self.uptime.0.wrapping_add(elapsed))
    }
}

impl CommandState {
    /// Notes the node clocks the committed `frames` show (frames delivered from the broker's
    /// retained store are old and say nothing of the clock now).
    pub(super) fn note_frames(&mut self, frames: &[AcceptedFrame]) {
        let now_wall = UnixMillis::now();
        let now = Instant::now();
        for frame in frames.iter().filter(|f| !f.update.retained) {
            let queued = now_wall.as_millis().saturating_sub(frame.update.at.as_millis());
            let waited = Duration::from_millis(u64::try_from(queued).unwrap_or(0));
            let clock = NodeClock {
                key_id: frame.key_id,
                sequence: frame.sequence,
                uptime: frame.uptime,
                received: now.checked_sub(waited).unwrap_or(now),
            };
            let newer =
                |old: &NodeClock| old.key_id != clock.key_id || old.sequence < clock.sequence;
            let device = frame.device();
            if self.clocks.get(device).is_none_or(newer) {
                self.clocks.insert(device.clone(), clock);
            }
        }
    }
}

impl Ingest {
    /// Seals `request` (the [`Commander`](crate::Commander) describes each step), or says why
    /// not: with the key of the device's newest live frame, for the session of the online status
    /// its replay window expects a will for, to expire [`COMMAND_LIFETIME`] after the node's
    /// estimated uptime now. Reserves a new block of sequence numbers in the store when the
    /// current one is used up: no number is used before its block is stored.
    pub fn seal_command(
        &mut self,
        request: &CommandRequest,
    ) -> Result<SealedCommand, CommandRefusal> {
        let device = &request.device;
        let known_led =
            self.live.device(device).is_some_and(|state| state.leds.contains_key(&request.led));
        if !known_led {
            return Err(CommandRefusal::UnknownLed);
        }
        let keys = match &self.opener {
            Opener::Sealed(keys) => std::sync::Arc::clone(keys),
            Opener::InsecurePlaintext => return self.seal_plaintext_command(request),
        };
        let clock = *self.commands.clocks.get(device).ok_or(CommandRefusal::NoClock)?;
        let window = match self.store.stored_window(device, clock.key_id) {
            Ok(Some(stored)) => stored,
            Ok(None) => self
                .windows
                .get(&(device.clone(), clock.key_id))
                .map(|w| w.state())
                .unwrap_or_default(),
            Err(error) => return Err(CommandRefusal::Unavailable(error.to_string())),
        };
        if window.expected_will == 0 {
            return Err(CommandRefusal::Offline);
        }
        let session = window.expected_will - 1;
        if clock.sequence < session {
            return Err(CommandRefusal::NoClock);
        }
        let session = SequenceNumber::new(session).map_err(|_| CommandRefusal::Offline)?;
        let message = Message::Command(LedCommand {
            led: request.led.clone(),
            state: request.state,
            session,
            expires: lifetime_end(clock.estimate()),
        });
        let sequence = self.next_command_sequence(device, clock.key_id)?;
        let frame = keys
            .seal(device, clock.key_id, sequence, &message, UnixMillis::now().as_millis())
            .ok_or(CommandRefusal::UnknownDevice)?;
        Ok(SealedCommand {
            topic: message.topic(device).to_string(),
            frame,
            sequence: sequence.get(),
        })
    }

    /// **INSECURE teaching mode**: the command in the clear, as the original project would
    /// send it (a plaintext node obeys it whatever its session and expiry say).
    fn seal_plaintext_command(
        &mut self,
        request: &CommandRequest,
    ) -> Result<SealedCommand, CommandRefusal> {
        let key_id = KeyId(0);
        let sequence = self.next_command_sequence(&request.device, key_id)?;
        let estimate = self.commands.clocks.get(&request.device).map(NodeClock::estimate);
        let message = Message::Command(LedCommand {
            led: request.led.clone(),
            state: request.state,
            session: SequenceNumber::new(0).map_err(|_| CommandRefusal::Offline)?,
            expires: lifetime_end(estimate.unwrap_or_default()),
        });
        let mut out = [0u8; ledtemp_core::MAX_FRAME_LEN];
        let len = ledtemp_core::Codec::seal(
            &InsecurePlaintextCodec::new(key_id),
            &request.device,
            sequence,
            &message,
            &mut out,
        )
        .map_err(|e| CommandRefusal::Unavailable(e.to_string()))?;
        Ok(SealedCommand {
            topic: message.topic(&request.device).to_string(),
            frame: out.get(..len).map(<[u8]>::to_vec).unwrap_or_default(),
            sequence: sequence.get(),
        })
    }

    /// The next number of the server's counter for (`device`, `key_id`), reserving a block in
    /// the store first when none is left.
    fn next_command_sequence(
        &mut self,
        device: &DeviceId,
        key_id: KeyId,
    ) -> Result<SequenceNumber, CommandRefusal> {
        let key = (device.clone(), key_id);
        let (next, end) = match self.commands.blocks.get(&key) {
            Some(&(next, end)) if next < end => (next, end),
            _ => {
                let first = self
                    .store
                    .reserve_command_sequences(device, key_id, COMMAND_SEQUENCE_BLOCK)
                    .map_err(|e| CommandRefusal::Unavailable(e.to_string()))?;
                (first, first + COMMAND_SEQUENCE_BLOCK)
            }
        };
        let sequence = SequenceNumber::new(next)
            .map_err(|_| CommandRefusal::Unavailable("sequence numbers used up".into()))?;
        self.commands.blocks.insert(key, (next + 1, end));
        Ok(sequence)
    }

    /// Seals the command `record` asks for ([`seal_command`](Self::seal_command)) and stores
    /// `record`, with its sequence number, in the command log: the sealed command and its log
    /// entry's id. A command that cannot be logged is not sent. A refusal is logged with its
    /// outcome.
    pub fn seal_and_log_command(
        &mut self,
        record: CommandRecord,
    ) -> Result<(SealedCommand, i64), CommandRefusal> {
        let request = CommandRequest {
            device: record.device.clone(),
            led: record.led.clone(),
            state: record.state,
        };
        match self.seal_command(&request) {
            Ok(sealed) => {
                let entry = CommandRecord { sequence: Some(sealed.sequence), ..record };
                match self.store.log_command(&entry) {
                    Ok(id) => Ok((sealed, id)),
                    Err(error) => Err(CommandRefusal::Unavailable(format!(
                        "the command could not be logged, so it was not sent: {error}"
                    ))),
                }
            }
            Err(refusal) => {
                self.log_command(&CommandRecord { outcome: refusal.outcome(), ..record });
                Err(refusal)
            }
        }
    }

    /// Appends `record` to the stored command log and returns its id; a failure is logged.
    pub fn log_command(&mut self, record: &CommandRecord) -> Option<i64> {
        self.store
            .log_command(record)
            .inspect_err(|error| {
                tracing::error!(device = %record.device, "cannot store a command log entry: {error}");
            })
            .ok()
    }

    /// Fills in a sent command's outcome in its log entry; a failure is logged (the entry then
    /// keeps saying `sent`).
    pub fn settle_command(&mut self, settled: &CommandSettlement) {
        if let Err(error) = self.store.settle_command(settled) {
            tracing::error!(log_id = settled.log_id, "cannot store a command's outcome: {error}");
        }
    }
}

/// The node uptime a command sent when the node's clock showed `now` expires at.
fn lifetime_end(now: Uptime) -> Uptime {
    let lifetime = u32::try_from(COMMAND_LIFETIME.as_millis()).unwrap_or(u32::MAX);
    Uptime(now.0.wrapping_add(lifetime))
}
