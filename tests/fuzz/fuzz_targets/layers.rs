//! Any bytes as two layers of an image: merged with whiteouts and opaque directories applied,
//! or refused, never a panic, hang or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::layers_any(data));
