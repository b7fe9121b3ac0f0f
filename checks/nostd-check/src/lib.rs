//! Proof that `ledtemp-core` and its whole dependency tree are `no_std`.
//!
//! Built as a `staticlib` with `panic = "abort"`:
//! `cargo build --manifest-path checks/nostd-check/Cargo.toml -p nostd-check`. Every crate in the core's tree is named below, because rustc does not load a
//! dependency nothing names. If any of them pulls in `std`, linking fails with a duplicate
//! `panic_impl` lang item: `std`'s and the handler below.
#![no_std]

extern crate aead as _;
extern crate aes_gcm as _;
extern crate chacha20poly1305 as _;
extern crate embassy_time as _;
extern crate embedded_hal as _;
extern crate embedded_hal_async as _;
extern crate embedded_io_async as _;
extern crate heapless as _;
extern crate ledtemp_core as _;
extern crate minimq as _;
extern crate postcard as _;
extern crate serde as _;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
