//! A millisecond clock on SysTick, serving both the node (`ledtemp_core::Clock`) and minimq
//! (through an `embassy-time` driver), and an async delay for the busy-poll executor.

use core::future::poll_fn;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Poll, Waker};

use cortex_m::peripheral::{SYST, syst::SystClkSource};
use cortex_m_rt::exception;
use ledtemp_core::Instant;

/// The MPS2 AN386 core clock, as QEMU emulates it.
const CORE_CLOCK_HZ: u32 = 25_000_000;

static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Starts the 1 kHz tick.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_CLOCK_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

fn now_ms() -> u64 {
    u64::from(MILLIS.load(Ordering::Relaxed))
}

/// The node's clock.
#[derive(Clone, Copy)]
pub struct SysTickClock;

impl ledtemp_core::Clock for SysTickClock {
    fn now(&mut self) -> Instant {
        Instant::from_millis(now_ms())
    }
}

/// Async delay that completes once the tick count reaches the deadline.
pub struct SysTickDelay;

impl embedded_hal_async::delay::DelayNs for SysTickDelay {
    async fn delay_ns(&mut self, ns: u32) {
        let deadline = now_ms() + u64::from(ns).div_ceil(1_000_000);
        poll_fn(|_| if now_ms() >= deadline { Poll::Ready(()) } else { Poll::Pending }).await;
    }
}

/// minimq keeps time with `embassy-time`; this driver answers from the same tick.
struct EmbassyDriver;

impl embassy_time_driver::Driver for EmbassyDriver {
    fn now(&self) -> u64 {
        now_ms()
    }
    fn schedule_wake(&self, _at: u64, waker: &Waker) {
        // The busy-poll executor polls again anyway.
        waker.wake_by_ref();
    }
}

#[allow(unsafe_code, reason = "the driver macro exports #[no_mangle] symbols")]
mod driver {
    embassy_time_driver::time_driver_impl!(static DRIVER: super::EmbassyDriver = super::EmbassyDriver);
}
