//! Any bytes as an index file, with a valid checksum (so that the bounds checks behind it
//! are what is tested): refused or read, never a panic, hang or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::read_any(data));
