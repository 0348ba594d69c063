//! A minimal stderr logger: `-v` (info), `-vv` (debug), or `RUST_LOG=level`; warnings otherwise.

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // fuser reports every request it has no handler for as a warning; those are
        // answered ENOSYS on purpose, so its messages only show when debugging.
        let quiet = metadata.target().starts_with("fuser") && log::max_level() < LevelFilter::Debug;
        !quiet && metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            use std::io::Write;
            // A closed stderr (a detached server) must not take the process down.
            let _ = writeln!(
                std::io::stderr(),
                "imgfs[{}] {}: {}",
                std::process::id(),
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

pub fn init(verbose: u8) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok());
    let level = match verbose {
        0 => from_env.unwrap_or(LevelFilter::Warn),
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
