//! A ledtemp node on a Cortex-M4F, runnable under QEMU:
//! `cargo run --release` (in this directory) runs it on the emulated Arm MPS2+ AN386 board.
//!
//! It runs the real `ledtemp_core::Node` with a simulated button and temperature sensor, seals
//! every frame with AES-128-GCM (ChaCha20-Poly1305 with `--features chacha`) and publishes through
//! minimq to an in-memory MQTT peer, which prints each frame as hex on the semihosting console.
//! The node subscribes to its commands; the peer sends it one (LED on, sealed in the peer with
//! the demo key for the node's session) after the online status, and replays it: the node
//! applies the first (`LED red on`, `COMMAND applied`, then the confirming LED frame) and refuses
//! the replay (`COMMAND refused`). After 3.5 s of board time it prints its counters and the RAM its parts take, and exits with
//! status 0 if it published, or 1 otherwise. The host test `tests/firmware_qemu.rs` opens every
//! printed frame with the host codec.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod broker;
mod clock;
mod console;

use core::cell::RefCell;
use core::mem::size_of;
use core::pin::pin;
use core::time::Duration;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use ledtemp_core::{
    AsyncIo, Clock, DeviceId, Driver, KeyId, LedName, LedState, MemorySequenceStore, MqttBuffers,
    MqttConfig, MqttMailbox, MqttPublisher, Node, NodeConfig, NodeIo, RunEvent, ScriptedButton,
    SensorName, SimulatedTemperature, Topic, block_on, mqtt_link,
};

use broker::{BrokerConnector, InMemoryBroker};
use clock::{SysTickClock, SysTickDelay};

#[cfg(not(feature = "chacha"))]
type Codec = ledtemp_core::AesGcmCodec;
#[cfg(feature = "chacha")]
type Codec = ledtemp_core::ChaChaCodec;

/// The demo key the host test opens frames with. A real device reads its own key from storage.
#[cfg(not(feature = "chacha"))]
const KEY: [u8; 16] = *b"ledtemp-firmware";
#[cfg(feature = "chacha")]
const KEY: [u8; 32] = *b"ledtemp-firmware-chacha20poly130";

/// How long the image runs, in board time.
const RUN_FOR: Duration = Duration::from_millis(3_500);

/// The node's outbound queue, in messages.
const QUEUE: usize = 16;

/// An LED that reports its state on the console (the board has no LED QEMU shows).
struct ConsoleLed;

impl ledtemp_core::Led for ConsoleLed {
    type Error = core::convert::Infallible;
    fn set(&mut self, state: LedState) -> Result<(), Self::Error> {
        console::line(if state.is_on() { b"LED red on" } else { b"LED red off" });
        Ok(())
    }
}

/// On a panic (none is expected: nothing here unwraps), say so and exit with failure, without
/// formatting the message (which would pull in `core::fmt`).
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    console::line(b"PANIC");
    debug::exit(EXIT_FAILURE);
    halt()
}

#[entry]
fn main() -> ! {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        debug::exit(EXIT_FAILURE);
        halt();
    };
    clock::start(peripherals.SYST);
    let app = run();
    // Everything the node keeps (node, queue, cipher, MQTT session and buffers, driver buffers)
    // lives in this future.
    console::number(b"RAM application", size_of_val(&app) as u64);
    let published = block_on(app);
    debug::exit(if published > 0 { EXIT_SUCCESS } else { EXIT_FAILURE });
    halt()
}

/// Where a run ends if the host did not stop the machine on exit.
fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

/// Runs the node; returns how many frames the broker received.
async fn run() -> u32 {
    let (Ok(device), Ok(led), Ok(sensor)) =
        (DeviceId::new("mcu-1"), LedName::new("red"), SensorName::new("board"))
    else {
        return 0;
    };
    let (Ok(codec), Ok(peer_codec)) =
        (Codec::from_key_bytes(KeyId(1), &KEY), Codec::from_key_bytes(KeyId(1), &KEY))
    else {
        return 0;
    };
    let commands = Topic::command_filter(&device);
    let start = SysTickClock.now();
    let node = Node::<_, _, QUEUE>::new(
        device,
        &[led],
        &[sensor],
        codec,
        MemorySequenceStore::new(),
        NodeConfig::default(),
        start,
    );
    let Ok(mut node) = node else { return 0 };

    let broker = RefCell::new(InMemoryBroker::new(peer_codec));
    let mailbox = MqttMailbox::new();
    let mut buffers: MqttBuffers = MqttBuffers::new();
    let mut config = MqttConfig::new("mcu-1");
    config.commands = Some(&commands);
    let link = pin!(mqtt_link(&mailbox, BrokerConnector(&broker), config, &mut buffers));
    let publisher = MqttPublisher::new(&mailbox, link);

    let mut buttons =
        [ScriptedButton::new(SysTickClock, Duration::from_millis(700), Duration::from_millis(150))];
    let mut leds = [ConsoleLed];
    let mut sensors = [SimulatedTemperature::new(SysTickClock, 7)];
    let mut io = AsyncIo {
        buttons: &mut buttons,
        leds: &mut leds,
        sensors: &mut sensors,
        publisher,
        clock: SysTickClock,
        delay: SysTickDelay,
    };
    let mut driver = Driver::default();
    let end = start + RUN_FOR;
    let mut failures = 0u64;
    let mut on_event = |event: RunEvent<'_>| match event {
        RunEvent::Published { .. } | RunEvent::Connected => {}
        RunEvent::CommandApplied { .. } => console::line(b"COMMAND applied"),
        RunEvent::CommandRefused { .. } => console::line(b"COMMAND refused"),
        _ => failures += 1,
    };
    while io.now() < end {
        match driver.step(&mut node, &mut io, &mut on_event).await {
            Ok(wake) => io.sleep_until(wake.min(end)).await,
            Err(_) => {
                console::line(b"ERROR node stopped");
                return 0;
            }
        }
    }

    let stats = node.stats();
    console::number(b"STAT frames_sent", stats.frames_sent);
    console::number(b"STAT frames_dropped", stats.frames_dropped);
    console::number(b"STAT sensor_errors", stats.sensor_errors);
    console::number(b"STAT driver_failures", failures);
    console::number(b"STAT commands_applied", stats.commands_applied);
    console::number(b"STAT commands_refused", stats.commands_refused);
    console::number(b"RAM node", size_of::<Node<Codec, MemorySequenceStore, QUEUE>>() as u64);
    console::number(b"RAM codec", size_of::<Codec>() as u64);
    console::number(b"RAM driver", size_of::<Driver>() as u64);
    console::number(b"RAM mqtt_buffers", size_of::<MqttBuffers>() as u64);
    console::number(b"RAM mqtt_mailbox", size_of_val(&mailbox) as u64);
    let frames = broker.borrow().frames;
    console::number(b"STAT broker_commands", u64::from(broker.borrow().commands));
    console::number(b"STAT broker_frames", u64::from(frames));
    frames
}
