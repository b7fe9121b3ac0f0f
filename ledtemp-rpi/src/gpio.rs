//! A push button and an LED on GPIO pins, through rppal.

use core::convert::Infallible;

use ledtemp_core::{Button, Led, LedState};
use rppal::gpio::{Gpio, InputPin, OutputPin, Pin};

use crate::Error;

/// Opens BCM GPIO `bcm`, turning rppal's "unknown model" into [`Error::NotARaspberryPi`].
fn open_pin(bcm: u8) -> Result<Pin, Error> {
    let to_error = |source| match source {
        rppal::gpio::Error::UnknownModel => Error::NotARaspberryPi,
        source => Error::Gpio { pin: bcm, source },
    };
    Gpio::new().map_err(to_error)?.get(bcm).map_err(to_error)
}

/// A push button between a GPIO pin and ground: the pin's internal pull-up holds it high, a
/// press pulls it low (active low). Raw level; the node debounces.
#[derive(Debug)]
pub struct GpioButton {
    pin: InputPin,
}

impl GpioButton {
    /// Opens BCM GPIO `bcm` as an input with the pull-up enabled. [`Error::NotARaspberryPi`]
    /// on any other machine; [`Error::Gpio`] if the pin is in use, missing or not permitted.
    pub fn open(bcm: u8) -> Result<Self, Error> {
        Ok(GpioButton { pin: open_pin(bcm)?.into_input_pullup() })
    }

    /// The BCM GPIO number.
    pub fn bcm_pin(&self) -> u8 {
        self.pin.pin()
    }
}

impl Button for GpioButton {
    type Error = Infallible;

    /// Whether the pin is low right now, i.e. the button is held down.
    fn is_pressed(&mut self) -> Result<bool, Infallible> {
        Ok(self.pin.is_low())
    }
}

/// An LED (through a resistor) from a GPIO pin to ground: high is on.
///
/// Dropping it returns the pin to the input mode it had before, so the LED goes dark.
#[derive(Debug)]
pub struct GpioLed {
    pin: OutputPin,
}

impl GpioLed {
    /// Opens BCM GPIO `bcm` as an output, driven low (LED off). Errors as for
    /// [`GpioButton::open`].
    pub fn open(bcm: u8) -> Result<Self, Error> {
        Ok(GpioLed { pin: open_pin(bcm)?.into_output_low() })
    }

    /// The BCM GPIO number.
    pub fn bcm_pin(&self) -> u8 {
        self.pin.pin()
    }
}

impl Led for GpioLed {
    type Error = Infallible;

    fn set(&mut self, state: LedState) -> Result<(), Infallible> {
        if state.is_on() {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine rppal does not recognize as a Pi (CI, a laptop), opening a pin is a clear
    /// error, never a panic. On a real Pi the test checks nothing about the hardware.
    #[test]
    fn opening_a_pin_off_a_pi_says_so() {
        let model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default();
        if model.contains("Raspberry Pi") {
            return;
        }
        let err = GpioButton::open(17).unwrap_err();
        assert!(matches!(err, Error::NotARaspberryPi), "{err:?}");
        assert!(err.to_string().contains("not a Raspberry Pi"), "{err}");
        assert!(matches!(GpioLed::open(27), Err(Error::NotARaspberryPi)));
    }
}
