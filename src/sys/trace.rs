//! A timeline to see where a cold start's time goes: with `IMGFS_TRACE=FILE` in its
//! environment, every imgfs process (`imgfs run`, the server it starts) appends one JSON line
//! per event to FILE — each exchange with a registry and each read the filesystem answers —
//! with its process, its kind, when it began and ended (microseconds since the epoch) and
//! what it moved. Without the variable nothing is written and an event costs one check.
//! `bench/run.sh --lazy` draws a cold start from it.

use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable naming the file.
pub const VARIABLE: &str = "IMGFS_TRACE";

static FILE: OnceLock<Option<File>> = OnceLock::new();

fn file() -> Option<&'static File> {
    FILE.get_or_init(|| {
        let path = std::env::var_os(VARIABLE)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    })
    .as_ref()
}

/// Whether events are recorded.
pub fn on() -> bool {
    file().is_some()
}

/// Now, in microseconds since the epoch: an event's start, to hand to [`event`]. Without a
/// trace, 0 and no clock read: it is called on every filesystem read.
pub fn now() -> u64 {
    if !on() {
        return 0;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Records an event of `kind` that began at `start` ([`now`]) and ends now; `fields` are
/// more `"name":value` pairs of JSON, joined by commas.
pub fn event(kind: &str, start: u64, fields: &str) {
    let Some(mut f) = file() else {
        return;
    };
    let line = format!(
        "{{\"pid\":{},\"kind\":\"{kind}\",\"t0\":{start},\"t1\":{},{fields}}}\n",
        std::process::id(),
        now()
    );
    // One write of a whole line to a file opened for appending: lines of several
    // processes do not mix.
    let _ = f.write_all(line.as_bytes());
}
