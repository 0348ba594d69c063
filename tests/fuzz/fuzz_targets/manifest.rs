//! Any bytes as an image index, manifest or config: an image or a clear error, never a
//! panic, hang or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::manifest_any(data));
