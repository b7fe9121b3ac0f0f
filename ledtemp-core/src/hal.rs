//! Adapters from embedded-hal 1.x pins to the core's [`Button`] and [`Led`].
//!
//! Which level means "pressed" or "lit" depends on the wiring, not on the pin, so each adapter is
//! built with its polarity: a button to ground with a pull-up is active low, an LED from the pin
//! through a resistor to ground is active high. Pin errors are passed through unchanged.

use embedded_hal::digital::{InputPin, OutputPin, PinState};

use crate::{Button, Led, LedState};

/// Which pin level means "active" (pressed, lit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// Any embedded-hal [`InputPin`] as a [`Button`].
///
/// ```
/// use embedded_hal::digital::{ErrorType, InputPin};
/// use ledtemp_core::{Button, PinButton};
///
/// /// A pin as a board support crate would hand it out (here: always low).
/// struct Gpio17;
/// impl ErrorType for Gpio17 {
///     type Error = core::convert::Infallible;
/// }
/// impl InputPin for Gpio17 {
///     fn is_high(&mut self) -> Result<bool, Self::Error> {
///         Ok(false)
///     }
///     fn is_low(&mut self) -> Result<bool, Self::Error> {
///         Ok(true)
///     }
/// }
///
/// // Button between the pin and ground, internal pull-up enabled: pressed pulls the pin low.
/// let mut button = PinButton::active_low(Gpio17);
/// assert_eq!(button.is_pressed(), Ok(true));
/// let _pin: Gpio17 = button.release();
/// ```
#[derive(Debug)]
pub struct PinButton<P> {
    pin: P,
    polarity: Polarity,
}

impl<P> PinButton<P> {
    /// A button that reads as pressed while the pin is low: the usual wiring, a switch to ground
    /// with a pull-up resistor. Does not configure the pin (pull-ups are the HAL's business).
    pub fn active_low(pin: P) -> Self {
        PinButton { pin, polarity: Polarity::ActiveLow }
    }

    /// A button that reads as pressed while the pin is high (a switch to the supply with a
    /// pull-down).
    pub fn active_high(pin: P) -> Self {
        PinButton { pin, polarity: Polarity::ActiveHigh }
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }
}

impl<P: InputPin> Button for PinButton<P> {
    type Error = P::Error;

    /// The raw level mapped through the polarity; one pin read, no debouncing.
    fn is_pressed(&mut self) -> Result<bool, Self::Error> {
        match self.polarity {
            Polarity::ActiveLow => self.pin.is_low(),
            Polarity::ActiveHigh => self.pin.is_high(),
        }
    }
}

/// Any embedded-hal [`OutputPin`] as an [`Led`].
///
/// The constructors do not touch the pin: the LED shows whatever the pin was left at until the
/// first [`set`](Led::set) (a [`Node`](crate::Node) drives every LED once at start).
///
/// ```
/// use embedded_hal::digital::{ErrorType, OutputPin};
/// use ledtemp_core::{Led, LedState, PinLed};
///
/// struct Gpio27 {
///     high: bool,
/// }
/// impl ErrorType for Gpio27 {
///     type Error = core::convert::Infallible;
/// }
/// impl OutputPin for Gpio27 {
///     fn set_low(&mut self) -> Result<(), Self::Error> {
///         self.high = false;
///         Ok(())
///     }
///     fn set_high(&mut self) -> Result<(), Self::Error> {
///         self.high = true;
///         Ok(())
///     }
/// }
///
/// // LED from the pin through a resistor to ground: lit while the pin is high.
/// let mut led = PinLed::active_high(Gpio27 { high: false });
/// led.set(LedState::On)?;
/// assert!(led.release().high);
/// # Ok::<(), core::convert::Infallible>(())
/// ```
#[derive(Debug)]
pub struct PinLed<P> {
    pin: P,
    polarity: Polarity,
}

impl<P> PinLed<P> {
    /// An LED that is lit while the pin is high (pin, resistor, LED, ground).
    pub fn active_high(pin: P) -> Self {
        PinLed { pin, polarity: Polarity::ActiveHigh }
    }

    /// An LED that is lit while the pin is low (supply, resistor, LED, pin): common on boards
    /// whose pins sink more current than they source.
    pub fn active_low(pin: P) -> Self {
        PinLed { pin, polarity: Polarity::ActiveLow }
    }

    /// Gives the pin back, at whatever level it was last driven to.
    pub fn release(self) -> P {
        self.pin
    }
}

impl<P: OutputPin> Led for PinLed<P> {
    type Error = P::Error;

    /// Drives the pin to the level that shows `state`; one pin write.
    fn set(&mut self, state: LedState) -> Result<(), Self::Error> {
        let high = match self.polarity {
            Polarity::ActiveHigh => state.is_on(),
            Polarity::ActiveLow => !state.is_on(),
        };
        self.pin.set_state(PinState::from(high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use std::io::ErrorKind;

    fn pin_error() -> MockError {
        MockError::Io(ErrorKind::Other)
    }

    #[test]
    fn active_low_button_is_pressed_while_the_pin_is_low() {
        let mut button = PinButton::active_low(Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::High),
        ]));
        assert_eq!(button.is_pressed(), Ok(true));
        assert_eq!(button.is_pressed(), Ok(false));
        button.release().done();
    }

    #[test]
    fn active_high_button_is_pressed_while_the_pin_is_high() {
        let mut button = PinButton::active_high(Mock::new(&[
            Transaction::get(State::High),
            Transaction::get(State::Low),
        ]));
        assert_eq!(button.is_pressed(), Ok(true));
        assert_eq!(button.is_pressed(), Ok(false));
        button.release().done();
    }

    #[test]
    fn button_passes_pin_errors_through() {
        let mut button = PinButton::active_low(Mock::new(&[
            Transaction::get(State::Low).with_error(pin_error()),
            Transaction::get(State::Low),
        ]));
        assert_eq!(button.is_pressed(), Err(pin_error()));
        // A failed read does not wedge the adapter.
        assert_eq!(button.is_pressed(), Ok(true));
        button.release().done();
    }

    #[test]
    fn active_high_led_is_lit_by_driving_high() {
        let mut led = PinLed::active_high(Mock::new(&[
            Transaction::set(State::High),
            Transaction::set(State::Low),
        ]));
        led.set(LedState::On).unwrap();
        led.set(LedState::Off).unwrap();
        led.release().done();
    }

    #[test]
    fn active_low_led_is_lit_by_driving_low() {
        let mut led = PinLed::active_low(Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High),
        ]));
        led.set(LedState::On).unwrap();
        led.set(LedState::Off).unwrap();
        led.release().done();
    }

    #[test]
    fn led_passes_pin_errors_through() {
        let mut led = PinLed::active_high(Mock::new(&[
            Transaction::set(State::High).with_error(pin_error()),
            Transaction::set(State::High),
        ]));
        assert_eq!(led.set(LedState::On), Err(pin_error()));
        assert_eq!(led.set(LedState::On), Ok(()));
        led.release().done();
    }

    #[test]
    fn adapters_work_through_mut_references() {
        // The blanket `&mut T` impls let a caller lend an adapter and keep it.
        fn press_count(mut button: impl Button) -> usize {
            (0..2).filter(|_| matches!(button.is_pressed(), Ok(true))).count()
        }
        let mut button = PinButton::active_low(Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::Low),
        ]));
        assert_eq!(press_count(&mut button), 2);
        button.release().done();
    }
}
