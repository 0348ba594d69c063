//! Any bytes as an imgfs index artifact (manifest, merged tree, seek table) of a one-layer
//! image: checked and accepted, or a clear error — never a panic or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::artifact_any(data);
});
