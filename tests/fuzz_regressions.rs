//! The fuzz targets' checks (tests/fuzz/checks.rs) on every input saved under
//! tests/fuzz/regressions/ — each one an input that once crashed, hung or over-allocated —
//! and on the fixture archives and the hostile cases that seed the fuzzing.

#[path = "hostile/archives.rs"]
mod archives;
#[path = "fuzz/checks.rs"]
mod checks;
mod common;

use common::{fixture_archives, repo_root};

fn saved(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("tests/fuzz/regressions").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name() != ".gitkeep")
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn saved_scan_inputs_stay_fixed() {
    for (name, data) in saved("scan") {
        eprintln!("scan: {name}");
        checks::scan_any(&data);
    }
}

#[test]
fn saved_index_inputs_stay_fixed() {
    for (name, data) in saved("index") {
        eprintln!("index: {name}");
        checks::read_any(&data);
    }
}

#[test]
fn seeds_pass_the_checks() {
    let dir = fixture_archives();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "tar") {
            let data = std::fs::read(e.path()).unwrap();
            checks::scan_any(&data);
            // Prefixes a truncation could leave: 64 of them, mostly off block boundaries.
            let step = (data.len() / 64).max(1);
            for cut in (0..data.len()).step_by(step) {
                checks::scan_any(&data[..cut.saturating_sub(cut % 7)]);
            }
        }
    }
    for case in archives::cases() {
        checks::scan_any(&case.bytes);
    }
}
