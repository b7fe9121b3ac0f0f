//! Simulated hardware for demos, tests and boards without the real parts: a button that presses
//! itself on a script and a temperature that drifts along a slow sine.
//!
//! Both are deterministic functions of their clock (and, for the temperature, of a seed and the
//! number of reads), so a test on a fake clock sees the same levels and readings every run. They
//! use integer arithmetic only and hold no floats, so they run on an FPU-less Cortex-M as they do
//! on a Pi.

use core::convert::Infallible;
use core::fmt;
use core::time::Duration;

use crate::{AsyncTempSensor, Button, Clock, Instant, MilliCelsius, TempSensor};

/// Milliseconds in `duration`, saturating; sub-millisecond parts are dropped.
fn whole_millis(duration: Duration) -> u64 {
    // Adding to the epoch reuses `Instant`'s saturating conversion.
    (Instant::from_millis(0) + duration).as_millis()
}

/// Level changes within one bounce window: the contact flips back and forth `BOUNCE_SLOTS - 1`
/// times in equal steps, then rests at the new level.
const BOUNCE_SLOTS: u128 = 5;

/// Default length of the contact bounce after each edge.
const DEFAULT_BOUNCE: Duration = Duration::from_millis(10);

/// Default time a press from [`ScriptedButton::from_presses`] is held.
const DEFAULT_PRESS_HOLD: Duration = Duration::from_millis(100);

/// When the presses of a [`ScriptedButton`] start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Press `k` (k = 1, 2, ...) starts `k` periods after the clock's start; 0 means never.
    Every { period_ms: u64 },
    /// A press starts at each instant, in any order.
    At(&'static [Instant]),
}

/// A button that presses itself, with contact bounce, on a schedule read from its clock.
///
/// Two scripts:
/// - [`new`](Self::new): a press every `period`, the first one `period` after the clock's start
///   (so a node that boots at the start sees the button released first), each held for `hold`;
/// - [`from_presses`](Self::from_presses): a press at each listed instant, each held for 100 ms
///   (see [`with_hold`](Self::with_hold)).
///
/// After every edge (press and release) the level flips back and forth four times in equal
/// steps across the bounce window (10 ms by default, [`with_bounce`](Self::with_bounce)) before
/// it settles, as a worn contact does. With bounce shorter than the node's debounce time (20 ms)
/// and `hold` longer than bounce plus debounce, a node sees exactly one toggle per press; a
/// shorter hold is a press the debouncer rightly ignores.
///
/// A press that starts before the previous one ends takes over from it (its press edge wins).
///
/// ```
/// use core::time::Duration;
/// use ledtemp_core::{Button, Clock, Instant, ScriptedButton};
///
/// /// A clock that advances 1 ms per reading.
/// struct Ticks(u64);
/// impl Clock for Ticks {
///     fn now(&mut self) -> Instant {
///         self.0 += 1;
///         Instant::from_millis(self.0)
///     }
/// }
///
/// let mut button =
///     ScriptedButton::new(Ticks(0), Duration::from_secs(1), Duration::from_millis(200));
/// let samples: Vec<bool> = (0..2_000).map(|_| button.is_pressed().unwrap()).collect();
/// assert!(!samples[998]); // 999 ms: not yet
/// assert!(samples[1_100]); // 1101 ms: held, bounce over
/// assert!(!samples[1_300]); // 1301 ms: released
///
/// // Or press at given instants.
/// const PRESSES: [Instant; 2] = [Instant::from_millis(50), Instant::from_millis(500)];
/// let button = ScriptedButton::from_presses(Ticks(0), &PRESSES);
/// assert!(button.is_pressed_at(Instant::from_millis(120)));
/// assert!(!button.is_pressed_at(Instant::from_millis(200)));
/// ```
#[derive(Debug)]
pub struct ScriptedButton<K> {
    clock: K,
    script: Script,
    hold_ms: u64,
    bounce_ms: u64,
}

impl<K: Clock> ScriptedButton<K> {
    /// A button pressed every `period` (first press one `period` after the clock's start), held
    /// for `hold` each time, with the default 10 ms of bounce. A zero `period` or `hold` never
    /// presses; a `hold` of at least `period` keeps it pressed from the first press on.
    /// Durations are taken in whole milliseconds.
    pub fn new(clock: K, period: Duration, hold: Duration) -> Self {
        ScriptedButton {
            clock,
            script: Script::Every { period_ms: whole_millis(period) },
            hold_ms: whole_millis(hold),
            bounce_ms: whole_millis(DEFAULT_BOUNCE),
        }
    }

    /// A button pressed at each of `presses` (in any order; a `const` or `static` array), held
    /// for 100 ms each time, with the default 10 ms of bounce. Never pressed before the first.
    pub fn from_presses(clock: K, presses: &'static [Instant]) -> Self {
        ScriptedButton {
            clock,
            script: Script::At(presses),
            hold_ms: whole_millis(DEFAULT_PRESS_HOLD),
            bounce_ms: whole_millis(DEFAULT_BOUNCE),
        }
    }

    /// The same script with `bounce` of contact bounce after each edge; zero gives clean edges.
    #[must_use]
    pub fn with_bounce(mut self, bounce: Duration) -> Self {
        self.bounce_ms = whole_millis(bounce);
        self
    }

    /// The same script with each press held for `hold` (zero: never pressed).
    #[must_use]
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold_ms = whole_millis(hold);
        self
    }

    /// The raw (bouncing) level the script gives at `now`, without reading the clock.
    pub fn is_pressed_at(&self, now: Instant) -> bool {
        let now = now.as_millis();
        let Some(start) = self.last_press_start(now) else {
            return false;
        };
        if self.hold_ms == 0 {
            return false;
        }
        let since_press = now - start;
        match since_press.checked_sub(self.hold_ms) {
            None => !bounced_back(since_press, self.bounce_ms),
            Some(since_release) => bounced_back(since_release, self.bounce_ms),
        }
    }

    /// Gives the clock back.
    pub fn release(self) -> K {
        self.clock
    }

    /// Start (in ms) of the latest press that began at or before `now`.
    fn last_press_start(&self, now: u64) -> Option<u64> {
        match self.script {
            Script::Every { period_ms } => {
                let presses_so_far = now.checked_div(period_ms)?;
                (presses_so_far > 0).then(|| presses_so_far * period_ms)
            }
            Script::At(presses) => {
                presses.iter().map(|press| press.as_millis()).filter(|&at| at <= now).max()
            }
        }
    }
}

/// Whether the contact has sprung back to its old level `since_edge` ms after an edge, with a
/// bounce window of `bounce` ms.
fn bounced_back(since_edge: u64, bounce: u64) -> bool {
    // `since_edge < bounce` also keeps the division away from zero.
    since_edge < bounce && (u128::from(since_edge) * BOUNCE_SLOTS / u128::from(bounce)) % 2 == 1
}

impl<K: Clock> Button for ScriptedButton<K> {
    type Error = Infallible;

    /// Reads the clock and returns the script's level at that instant.
    fn is_pressed(&mut self) -> Result<bool, Self::Error> {
        let now = self.clock.now();
        Ok(self.is_pressed_at(now))
    }
}

/// One full period of the simulated wave in phase steps.
const PHASE_STEPS: u128 = 1 << 16;

/// Half a period in phase steps.
const HALF_TURN: i64 = 1 << 15;

/// sin(2π · `phase` / 65536) in millionths, by Bhaskara I's rational approximation
/// sin x ≈ 16x(π − x) / (5π² − 4x(π − x)) on each half wave. Exact at 0, ±1 and the zero
/// crossings; at most 1 700 millionths (0.17 % of the amplitude) off elsewhere.
fn sine_millionths(phase: u16) -> i64 {
    let phase = i64::from(phase);
    let (x, sign) = if phase < HALF_TURN { (phase, 1) } else { (phase - HALF_TURN, -1) };
    // Every term fits in i64 with room to spare: x(H − x) <= 2^28.
    let product = x * (HALF_TURN - x);
    sign * 16 * product * 1_000_000 / (5 * HALF_TURN * HALF_TURN - 4 * product)
}

/// The next value of a xorshift32 generator (Marsaglia, 2003); never zero for a nonzero state.
fn xorshift32(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

/// Stands in for seed 0, which xorshift would repeat forever.
const ZERO_SEED_REPLACEMENT: u32 = 0x9E37_79B9;

/// A simulated read failure, injected by [`SimulatedTemperature::failing_every`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedFault {
    read: u64,
}

impl SimulatedFault {
    /// Which read failed, counting from 1 since the sensor was made.
    pub fn read_number(&self) -> u64 {
        self.read
    }
}

impl fmt::Display for SimulatedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulated sensor fault on read {} (injected by failing_every; later reads go on)",
            self.read
        )
    }
}

impl core::error::Error for SimulatedFault {}

/// A temperature that drifts along a slow sine, with a little noise.
///
/// The reading at clock time `t` (in milli-degrees) is
/// `base + amplitude · sin(2π t / period) + noise`, where the sine is Bhaskara I's approximation
/// (at most 0.17 % of the amplitude off: 2.6 m°C at the default amplitude) and the noise is
/// uniform in `[-noise, +noise]`, drawn from a xorshift32 generator seeded by the constructor's
/// `seed`, one draw per successful read. Defaults: base 21.5 °C, amplitude 1.5 °C, period 10
/// minutes, noise ±50 m°C. Sums saturate at the `i32` range.
///
/// It never fails unless [`failing_every`](Self::failing_every) is set (its error type is
/// [`SimulatedFault`] either way).
///
/// ```
/// use ledtemp_core::{Clock, Instant, MilliCelsius, SimulatedTemperature, TempSensor};
///
/// struct Fixed(u64);
/// impl Clock for Fixed {
///     fn now(&mut self) -> Instant {
///         Instant::from_millis(self.0)
///     }
/// }
///
/// // A quarter period in: the top of the wave, 21.5 + 1.5 °C.
/// let mut sensor =
///     SimulatedTemperature::new(Fixed(150_000), 7).with_noise(MilliCelsius(0)).failing_every(2);
/// assert_eq!(sensor.read(), Ok(MilliCelsius(23_000)));
/// assert_eq!(sensor.read().unwrap_err().read_number(), 2);
/// ```
#[derive(Debug)]
pub struct SimulatedTemperature<K> {
    clock: K,
    base: MilliCelsius,
    amplitude: MilliCelsius,
    period_ms: u64,
    noise: u32,
    rng: u32,
    fail_every: u32,
    reads: u64,
}

impl<K: Clock> SimulatedTemperature<K> {
    /// The default wave on `clock`, with noise seeded by `seed` (the same seed gives the same
    /// noise; 0 is allowed).
    pub fn new(clock: K, seed: u32) -> Self {
        SimulatedTemperature {
            clock,
            base: MilliCelsius(21_500),
            amplitude: MilliCelsius(1_500),
            period_ms: 600_000,
            noise: 50,
            rng: if seed == 0 { ZERO_SEED_REPLACEMENT } else { seed },
            fail_every: 0,
            reads: 0,
        }
    }

    /// The same sensor centred on `base`.
    #[must_use]
    pub fn with_base(mut self, base: MilliCelsius) -> Self {
        self.base = base;
        self
    }

    /// The same sensor swinging `amplitude` above and below the base (a negative amplitude
    /// starts downwards).
    #[must_use]
    pub fn with_amplitude(mut self, amplitude: MilliCelsius) -> Self {
        self.amplitude = amplitude;
        self
    }

    /// The same sensor with one wave every `period` (whole milliseconds; zero: no wave, the
    /// reading stays at the base plus noise).
    #[must_use]
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period_ms = whole_millis(period);
        self
    }

    /// The same sensor with noise up to `noise` either side (its magnitude is used; zero: none).
    #[must_use]
    pub fn with_noise(mut self, noise: MilliCelsius) -> Self {
        self.noise = noise.0.unsigned_abs();
        self
    }

    /// The same sensor failing every `n`-th read (reads `n`, `2n`, ...) with [`SimulatedFault`];
    /// 0 never fails. A failed read draws no noise, so the readings around it are unchanged.
    #[must_use]
    pub fn failing_every(mut self, n: u32) -> Self {
        self.fail_every = n;
        self
    }

    /// Gives the clock back.
    pub fn release(self) -> K {
        self.clock
    }

    /// The wave without noise at `now`.
    fn wave_at(&self, now: Instant) -> MilliCelsius {
        let Some(into_period) = now.as_millis().checked_rem(self.period_ms) else {
            return self.base;
        };
        // `into_period < period`, so the phase is below PHASE_STEPS and fits in a u16.
        let phase = u128::from(into_period) * PHASE_STEPS / u128::from(self.period_ms);
        let sine = sine_millionths(u16::try_from(phase).unwrap_or(0));
        // |amplitude · sine| <= 2^31 · 10^6, well inside i64, and the quotient fits in i32.
        let swing = i64::from(self.amplitude.0) * sine / 1_000_000;
        let swing = i32::try_from(swing).unwrap_or(0);
        MilliCelsius(self.base.0.saturating_add(swing))
    }

    /// One noise draw, uniform in `[-noise, +noise]` (the modulo bias is below 10^-5 for any
    /// noise under 40 °C).
    fn next_noise(&mut self) -> i32 {
        let span = u64::from(self.noise) * 2 + 1;
        let draw = u64::from(xorshift32(&mut self.rng)) % span;
        // draw <= 2 · noise <= 2^32, so both sides fit in i64 and the result in i32's range.
        let centred = i64::try_from(draw).unwrap_or(0) - i64::from(self.noise);
        i32::try_from(centred).unwrap_or(0)
    }
}

impl<K: Clock> TempSensor for SimulatedTemperature<K> {
    type Error = SimulatedFault;

    /// Reads the clock and returns the wave there plus one noise draw, unless this read is due to
    /// fail.
    fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        self.reads += 1;
        if self.fail_every != 0 && self.reads.is_multiple_of(u64::from(self.fail_every)) {
            return Err(SimulatedFault { read: self.reads });
        }
        let now = self.clock.now();
        let wave = self.wave_at(now);
        let noise = self.next_noise();
        Ok(MilliCelsius(wave.0.saturating_add(noise)))
    }
}

impl<K: Clock> AsyncTempSensor for SimulatedTemperature<K> {
    type Error = SimulatedFault;

    /// Same as the blocking read; completes on its first poll, so cancelling it does nothing.
    async fn read(&mut self) -> Result<MilliCelsius, Self::Error> {
        TempSensor::read(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AesGcmCodec, DeviceId, KeyId, LedName, LedState, MemorySequenceStore, Node, NodeConfig,
        block_on,
    };
    use core::cell::Cell;
    use std::vec::Vec;

    /// A clock the test moves by hand; sim parts hold a reference to it.
    #[derive(Debug, Clone, Copy)]
    struct FakeClock<'a>(&'a Cell<u64>);

    impl Clock for FakeClock<'_> {
        fn now(&mut self) -> Instant {
            Instant::from_millis(self.0.get())
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Levels from `from` ms up to (not including) `to` ms, one sample per ms.
    fn levels<K: Clock>(button: &ScriptedButton<K>, from: u64, to: u64) -> Vec<bool> {
        (from..to).map(|t| button.is_pressed_at(at(t))).collect()
    }

    #[test]
    fn periodic_button_presses_every_period_for_hold() {
        let time = Cell::new(0);
        let button = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(200)).with_bounce(ms(0));
        assert!(levels(&button, 0, 1_000).iter().all(|&pressed| !pressed));
        assert!(levels(&button, 1_000, 1_200).iter().all(|&pressed| pressed));
        assert!(levels(&button, 1_200, 2_000).iter().all(|&pressed| !pressed));
        assert!(levels(&button, 2_000, 2_200).iter().all(|&pressed| pressed));
        assert!(button.is_pressed_at(at(1_000_000)));
    }

    #[test]
    fn button_bounces_after_each_edge_then_settles() {
        let time = Cell::new(0);
        let button = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(200));
        let (t, f) = (true, false);
        // Default bounce: 10 ms in five 2 ms steps.
        assert_eq!(levels(&button, 1_000, 1_012), [t, t, f, f, t, t, f, f, t, t, t, t]);
        assert_eq!(levels(&button, 1_200, 1_212), [f, f, t, t, f, f, t, t, f, f, f, f]);
        let longer = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(200)).with_bounce(ms(15));
        assert_eq!(
            levels(&longer, 998, 1_017),
            [f, f, t, t, t, f, f, f, t, t, t, f, f, f, t, t, t, t, t]
        );
    }

    #[test]
    fn button_reads_its_clock() {
        let time = Cell::new(0);
        let mut button = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(200));
        assert_eq!(button.is_pressed(), Ok(false));
        time.set(1_100);
        assert_eq!(button.is_pressed(), Ok(true));
        time.set(1_300);
        assert_eq!(button.is_pressed(), Ok(false));
        assert_eq!(button.release().now(), at(1_300));
    }

    #[test]
    fn zero_period_or_hold_never_presses() {
        let time = Cell::new(0);
        let never = ScriptedButton::new(FakeClock(&time), ms(0), ms(200));
        assert!(!levels(&never, 0, 3_000).contains(&true));
        let never = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(0));
        assert!(!levels(&never, 0, 3_000).contains(&true));
    }

    #[test]
    fn hold_of_a_period_or_more_stays_pressed() {
        let time = Cell::new(0);
        let stuck = ScriptedButton::new(FakeClock(&time), ms(100), ms(100)).with_bounce(ms(0));
        assert!(!levels(&stuck, 0, 100).contains(&true));
        assert!(!levels(&stuck, 100, 1_000).contains(&false));
    }

    #[test]
    fn listed_presses_are_held_for_100_ms_in_any_order() {
        const PRESSES: [Instant; 3] =
            [Instant::from_millis(2_000), Instant::from_millis(500), Instant::from_millis(560)];
        let time = Cell::new(0);
        let button = ScriptedButton::from_presses(FakeClock(&time), &PRESSES).with_bounce(ms(0));
        assert!(!levels(&button, 0, 500).contains(&true));
        // 560 starts before 500's press ends and takes over: held until 660.
        assert!(!levels(&button, 500, 660).contains(&false));
        assert!(!levels(&button, 660, 2_000).contains(&true));
        assert!(!levels(&button, 2_000, 2_100).contains(&false));
        assert!(!levels(&button, 2_100, 5_000).contains(&true));

        let long = ScriptedButton::from_presses(FakeClock(&time), &PRESSES[..1])
            .with_bounce(ms(0))
            .with_hold(ms(1_500));
        assert!(!levels(&long, 2_000, 3_500).contains(&false));
        assert!(!long.is_pressed_at(at(3_500)));
    }

    /// Feeds `button`, sampled every `step` ms for 10.5 s, to a real node's debouncer; returns
    /// (raw press edges seen, LED toggles).
    fn run_node(
        mut button: impl Button<Error = Infallible>,
        time: &Cell<u64>,
        step: u64,
    ) -> (usize, usize) {
        let mut node: Node<_, _> = Node::new(
            DeviceId::new("sim").unwrap(),
            &[LedName::new("red").unwrap()],
            &[],
            AesGcmCodec::from_key_bytes(KeyId(1), &[7; 16]).unwrap(),
            MemorySequenceStore::new(),
            NodeConfig::default(),
            at(0),
        )
        .unwrap();
        let (mut edges, mut toggles) = (0, 0);
        let (mut last_level, mut last_led) = (false, LedState::Off);
        for t in (0..10_500).step_by(usize::try_from(step).unwrap()) {
            time.set(t);
            let Ok(level) = button.is_pressed();
            edges += usize::from(level && !last_level);
            last_level = level;
            node.handle_button(at(t), 0, level);
            let led = node.led_state(0).unwrap();
            toggles += usize::from(led != last_led);
            last_led = led;
        }
        (edges, toggles)
    }

    #[test]
    fn node_debounces_the_scripted_button_to_one_toggle_per_press() {
        let time = Cell::new(0);
        for step in [1, 5] {
            let button = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(200));
            let (edges, toggles) = run_node(button, &time, step);
            assert_eq!(toggles, 10, "sampling every {step} ms");
            if step == 1 {
                // Three raw press edges per press (and two from each release): bounce is real.
                assert_eq!(edges, 50);
            }
        }
    }

    #[test]
    fn node_ignores_a_press_shorter_than_its_debounce() {
        let time = Cell::new(0);
        let button = ScriptedButton::new(FakeClock(&time), ms(1_000), ms(15)).with_bounce(ms(0));
        assert_eq!(run_node(button, &time, 1), (10, 0));
    }

    fn quiet(time: &Cell<u64>) -> SimulatedTemperature<FakeClock<'_>> {
        SimulatedTemperature::new(FakeClock(time), 1).with_noise(MilliCelsius(0))
    }

    fn read_at(sensor: &mut SimulatedTemperature<FakeClock<'_>>, time: &Cell<u64>, t: u64) -> i32 {
        time.set(t);
        TempSensor::read(sensor).unwrap().0
    }

    #[test]
    fn temperature_follows_the_default_wave() {
        let time = Cell::new(0);
        let mut sensor = quiet(&time);
        // 10 minute period: rise, top, back, bottom, back.
        let expected = [(0, 21_500), (150_000, 23_000), (300_000, 21_500), (450_000, 20_000)];
        for (t, value) in expected {
            assert_eq!(read_at(&mut sensor, &time, t), value, "at {t} ms");
            assert_eq!(read_at(&mut sensor, &time, t + 600_000), value, "at {t} ms + period");
        }
        // 30° into the wave: 21.5 + 1.5 · sin 30° = 22.25 °C. Bhaskara is exact at 30°, but the
        // phase grid lands a hair short of it, and the swing is truncated: 22.249 °C.
        assert_eq!(read_at(&mut sensor, &time, 50_000), 22_249);
    }

    #[test]
    fn temperature_settings_change_the_wave() {
        let time = Cell::new(0);
        let mut sensor = quiet(&time)
            .with_base(MilliCelsius(-5_000))
            .with_amplitude(MilliCelsius(-10_000))
            .with_period(Duration::from_secs(60));
        assert_eq!(read_at(&mut sensor, &time, 15_000), -15_000);
        assert_eq!(read_at(&mut sensor, &time, 45_000), 5_000);
        let mut flat = quiet(&time).with_period(Duration::ZERO);
        assert_eq!(read_at(&mut flat, &time, 150_000), 21_500);
        let mut extreme = quiet(&time).with_base(MilliCelsius(i32::MAX));
        assert_eq!(read_at(&mut extreme, &time, 150_000), i32::MAX);
    }

    #[test]
    fn bhaskara_sine_stays_within_its_documented_error() {
        let mut worst = 0.0f64;
        for phase in 0..=u16::MAX {
            let exact = (f64::from(phase) / 65_536.0 * core::f64::consts::TAU).sin() * 1e6;
            worst = worst.max((sine_millionths(phase) as f64 - exact).abs());
        }
        assert!(worst < 1_700.0, "worst error {worst} millionths");
        assert!(worst > 1_500.0, "the documented bound is tight: {worst}");
        assert_eq!(sine_millionths(0), 0);
        assert_eq!(sine_millionths(1 << 14), 1_000_000);
        assert_eq!(sine_millionths(1 << 15), 0);
        assert_eq!(sine_millionths(3 << 14), -1_000_000);
    }

    #[test]
    fn noise_is_small_and_deterministic() {
        let time = Cell::new(150_000);
        let sample = |seed: u32| -> Vec<i32> {
            let mut sensor = SimulatedTemperature::new(FakeClock(&time), seed);
            (0..1_000).map(|_| TempSensor::read(&mut sensor).unwrap().0 - 23_000).collect()
        };
        let noise = sample(42);
        assert!(noise.iter().all(|n| n.abs() <= 50));
        assert!(noise.iter().any(|&n| n < -40) && noise.iter().any(|&n| n > 40));
        assert_eq!(noise, sample(42));
        assert_ne!(noise, sample(43));
        let zero_seeded = sample(0);
        assert!(zero_seeded.iter().any(|&n| n != zero_seeded[0]), "seed 0 must not stick");
    }

    #[test]
    fn every_nth_read_fails_without_disturbing_the_others() {
        let time = Cell::new(0);
        let mut clean = SimulatedTemperature::new(FakeClock(&time), 9);
        let mut faulty = SimulatedTemperature::new(FakeClock(&time), 9).failing_every(3);
        let mut faults = Vec::new();
        for read in 1..=7u64 {
            match TempSensor::read(&mut faulty) {
                Ok(value) => assert_eq!(Ok(value), TempSensor::read(&mut clean)),
                Err(fault) => {
                    assert_eq!(fault.read_number(), read);
                    faults.push(read);
                }
            }
        }
        assert_eq!(faults, [3, 6]);
        let message = std::format!("{}", SimulatedFault { read: 3 });
        assert!(message.contains("read 3"), "{message}");
        let mut never = SimulatedTemperature::new(FakeClock(&time), 9).failing_every(0);
        assert!((0..100).all(|_| TempSensor::read(&mut never).is_ok()));
    }

    #[test]
    fn async_read_matches_the_blocking_read() {
        let time = Cell::new(75_000);
        let mut blocking = SimulatedTemperature::new(FakeClock(&time), 5).failing_every(2);
        let mut asynchronous = SimulatedTemperature::new(FakeClock(&time), 5).failing_every(2);
        for _ in 0..4 {
            assert_eq!(
                block_on(AsyncTempSensor::read(&mut asynchronous)),
                TempSensor::read(&mut blocking)
            );
        }
        assert_eq!(asynchronous.release().now(), at(75_000));
    }
}
