//! Any bytes as a seek table and the blob it indexes, with a valid checksum (so that the
//! checks behind it are what is tested): refused, or decoded and every span decompressed to
//! exactly its length or an error, never a panic, hang or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::seek_any(data));
