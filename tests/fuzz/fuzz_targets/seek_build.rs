//! Any bytes as a gzip, zstd or uncompressed layer blob: when a seek table builds for it, every
//! span decompressed from its checkpoint and stored window is exactly what the whole-layer
//! decoder makes of the blob at that place; never a panic, hang or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::build_any(data));
