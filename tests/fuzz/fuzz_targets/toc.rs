//! Any bytes as a layer's TOC (eStargz or zstd:chunked): a checked table of spans, or a clear
//! error — never a panic or unbounded allocation.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::toc_any(data);
});
