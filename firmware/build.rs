//! Puts the board's memory layout where cortex-m-rt's `link.x` looks for `memory.x`.
//!
//! The file is kept under `boards/` on purpose: a `memory.x` in the package root would silently
//! win over the copy written here.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("boards/mps2-an386.x", out.join("memory.x")).expect("copy memory layout");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=boards/mps2-an386.x");
    println!("cargo:rerun-if-changed=build.rs");
}
