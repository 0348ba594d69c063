//! Any bytes as a tar archive: entries or a clear error, never a panic, hang or unbounded
//! allocation; a tree that builds writes an index that reads back whole.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::scan_any(data));
