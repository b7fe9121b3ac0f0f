//! `ledtemp-rpi` will hold the Raspberry Pi side of ledtemp: rppal-backed button, LED and I2C,
//! the 1-Wire and thermal-zone sensors and a file-backed sequence store.
//!
//! It is empty today and exports nothing; it is a workspace member so that the layout is fixed
//! before its code lands. Do not depend on it yet.
#![forbid(unsafe_code)]
