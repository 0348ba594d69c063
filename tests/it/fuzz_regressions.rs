//! The fuzz targets' checks (tests/fuzz/checks.rs) on every input saved under
//! tests/fuzz/regressions/ — each one an input that once crashed, hung or over-allocated —
//! and on the fixture archives, the hostile cases that seed the fuzzing, and indexes and seek
//! tables of the fixtures damaged in many places, so that the checks always see inputs, saved
//! ones or not.

#[path = "../fuzz/checks.rs"]
mod checks;

use crate::common;
use crate::hostile::archives;

use crate::common::{fixture_archives, repo_root};
use imgfs::index::scan::SliceInput;
use imgfs::index::tree::BlobRef;

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

/// How many inputs tests/fuzz/regressions/ holds for each fuzz target: one lost, or a
/// directory misnamed, fails here instead of being passed over. Saving a new input means
/// counting it here.
const SAVED: [(&str, usize); 8] = [
    ("artifact", 0),
    ("index", 0),
    ("layers", 0),
    ("manifest", 0),
    ("scan", 0),
    ("seek", 8),
    ("seek-build", 6),
    ("toc", 0),
];

#[test]
fn every_saved_input_is_counted() {
    let dir = repo_root().join("tests/fuzz/regressions");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    targets.sort();
    let expected: Vec<&str> = SAVED.iter().map(|(t, _)| *t).collect();
    assert_eq!(targets, expected, "the fuzz targets with saved inputs");
    for (target, count) in SAVED {
        let names: Vec<String> = saved(target).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), count, "{target}: {names:?}");
    }
}

/// Every input the archive check sees here: the saved regressions, the fixture archives and
/// prefixes of them a truncation could leave, and the hostile cases.
#[test]
fn archive_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("scan") {
        eprintln!("scan: {name}");
        checks::scan_any(&data);
        checked += 1;
    }
    for data in fixture_tars() {
        checks::scan_any(&data);
        // Prefixes a truncation could leave: 64 of them, mostly off block boundaries.
        let step = (data.len() / 64).max(1);
        for cut in (0..data.len()).step_by(step) {
            checks::scan_any(&data[..cut.saturating_sub(cut % 7)]);
            checked += 1;
        }
    }
    for case in archives::cases() {
        checks::scan_any(&case.bytes);
        checked += 1;
    }
    assert!(checked > 64, "only {checked} archive inputs checked");
}

/// Every input the index check sees here: the saved regressions, and the index of every
/// fixture archive damaged at 256 places spread through it (each byte inverted in turn, the
/// checksum sealed again so that the damage reaches the reader) and cut short at 64.
#[test]
fn index_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("index") {
        eprintln!("index: {name}");
        checks::read_any(&data);
        checked += 1;
    }
    for data in fixture_tars() {
        let tree =
            imgfs::index::build_tree(&mut SliceInput::new(&data)).expect("a fixture archive scans");
        let index = tree
            .write_index(&[BlobRef::new(data.len() as u64, "archive")])
            .expect("a fixture archive's tree writes its index");
        checks::read_any(&index);
        let step = (index.len() / 256).max(1);
        for at in (0..index.len()).step_by(step) {
            let mut damaged = index.clone();
            damaged[at] ^= 0xff;
            checks::read_any(&damaged);
            checked += 1;
        }
        for cut in (0..index.len()).step_by((index.len() / 64).max(1)) {
            checks::read_any(&index[..cut]);
            checked += 1;
        }
    }
    assert!(checked > 256, "only {checked} index inputs checked");
}

/// Every input the layer-merge check sees here: the saved regressions, and each fixture
/// archive laid over every other one as two layers (and over itself).
#[test]
fn layer_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("layers") {
        eprintln!("layers: {name}");
        checks::layers_any(&data);
        checked += 1;
    }
    let tars = fixture_tars();
    for lower in &tars {
        for upper in &tars {
            let mut data = (lower.len() as u32).to_le_bytes().to_vec();
            data.extend_from_slice(lower);
            data.extend_from_slice(upper);
            checks::layers_any(&data);
            checked += 1;
        }
    }
    assert!(checked > 16, "only {checked} layer inputs checked");
}

/// Every input the manifest check sees here: the saved regressions, and the layered
/// fixtures' index.json files and JSON blobs (indexes, manifests, configs), each also damaged
/// at 32 places and cut short at 16.
#[test]
fn manifest_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("manifest") {
        eprintln!("manifest: {name}");
        checks::manifest_any(&data);
        checked += 1;
    }
    let mut docs = Vec::new();
    let layered = common::layered_fixtures();
    for key in ["OCI_GZIP", "MULTI_NESTED", "MULTI_FLAT"] {
        let dir = layered.path(key);
        docs.push(std::fs::read(dir.join("index.json")).unwrap());
        for blob in std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .flatten()
        {
            let data = std::fs::read(blob.path()).unwrap();
            if data.len() < 65536 && data.first() == Some(&b'{') {
                docs.push(data);
            }
        }
    }
    assert!(docs.len() > 8, "only {} documents found", docs.len());
    for doc in &docs {
        checks::manifest_any(doc);
        for at in (0..doc.len()).step_by((doc.len() / 32).max(1)) {
            let mut damaged = doc.clone();
            let alphabet = b"{}[]\":,0 ";
            damaged[at] = alphabet[at % alphabet.len()];
            checks::manifest_any(&damaged);
            checked += 1;
        }
        for cut in (0..doc.len()).step_by((doc.len() / 16).max(1)) {
            checks::manifest_any(&doc[..cut]);
            checked += 1;
        }
    }
    assert!(checked > 256, "only {checked} manifest inputs checked");
}

/// Every input the seek check sees here: the saved regressions, and the seek tables of the
/// fixture archives' first 256 KiB (compressed the ways [`checks::seek_seeds`] does), each
/// table damaged at 128 places (the checksum sealed again by the check), cut short at 32, and
/// what follows it (its windows blob and the layer's blob) damaged at 32.
#[test]
fn seek_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("seek") {
        eprintln!("seek: {name}");
        checks::seek_any(&data);
        checked += 1;
    }
    for tar in fixture_tars() {
        let data = &tar[..tar.len().min(256 << 10)];
        for (_, input) in checks::seek_seeds(data) {
            checks::seek_any(&input);
            let table_end = 4 + u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
            for at in (4..table_end).step_by((table_end / 128).max(1)) {
                let mut damaged = input.clone();
                damaged[at] ^= 0xff;
                checks::seek_any(&damaged);
                checked += 1;
            }
            for cut in (4..table_end).step_by((table_end / 32).max(1)) {
                let mut short = input[..cut].to_vec();
                short[..4].copy_from_slice(&(cut as u32 - 4).to_le_bytes());
                short.extend_from_slice(&input[table_end..]);
                checks::seek_any(&short);
                checked += 1;
            }
            let blob_len = input.len() - table_end;
            for at in (table_end..input.len()).step_by((blob_len / 32).max(1)) {
                let mut damaged = input.clone();
                damaged[at] ^= 0x5a;
                checks::seek_any(&damaged);
                checked += 1;
            }
        }
    }
    assert!(checked > 256, "only {checked} seek inputs checked");
}

/// Every input the seek-build check sees here: the saved regressions, and the fixture
/// archives' first 256 KiB and 256 KiB of [`checks::word_text`] compressed the ways
/// [`checks::build_seeds`] does, each whole and damaged at 64 places of its blob (a damaged
/// blob must fail to build, or decode the same both ways).
#[test]
fn build_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("seek-build") {
        eprintln!("seek-build: {name}");
        checks::build_any(&data);
        checked += 1;
    }
    let mut inputs = fixture_tars();
    inputs.push(checks::word_text(256 << 10));
    for tar in inputs {
        let data = &tar[..tar.len().min(256 << 10)];
        for (_, input) in checks::build_seeds(data) {
            checks::build_any(&input);
            checked += 1;
            for at in (2..input.len()).step_by((input.len() / 64).max(1)) {
                let mut damaged = input.clone();
                damaged[at] ^= 0x5a;
                checks::build_any(&damaged);
                checked += 1;
            }
        }
    }
    assert!(checked > 256, "only {checked} build inputs checked");
}

fn fixture_tars() -> Vec<Vec<u8>> {
    let dir = fixture_archives();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no fixture archives in {}",
        dir.display()
    );
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Every input the artifact check sees here: the saved regressions, and a whole artifact of
/// each fixture archive's first 256 KiB as a one-layer image — accepted whole (the check
/// must take it), then with its manifest, tree and seek table each damaged at 64 places and
/// cut short at 16.
#[test]
fn artifact_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("artifact") {
        eprintln!("artifact: {name}");
        checks::artifact_any(&data);
        checked += 1;
    }
    for tar in fixture_tars() {
        let data = &tar[..tar.len().min(256 << 10)];
        let seed = checks::artifact_seed(data, (data.len() as u64 / 5).max(1));
        assert!(checks::artifact_any(&seed), "a whole artifact was refused");
        for at in (8..seed.len()).step_by((seed.len() / 64).max(1)) {
            let mut damaged = seed.clone();
            damaged[at] ^= 0x21;
            checks::artifact_any(&damaged);
            checked += 1;
        }
        for cut in (0..seed.len()).step_by((seed.len() / 16).max(1)) {
            checks::artifact_any(&seed[..cut]);
            checked += 1;
        }
    }
    assert!(checked > 128, "only {checked} artifact inputs checked");
}

/// Every input the TOC check sees here: the saved regressions, and a TOC of each format —
/// accepted whole (the check must take it), then damaged at 96 places and cut short at 24.
#[test]
fn toc_inputs_pass_the_checks() {
    let mut checked = 0;
    for (name, data) in saved("toc") {
        eprintln!("toc: {name}");
        checks::toc_any(&data);
        checked += 1;
    }
    for format in [0, 1] {
        let seed = checks::toc_seed(format);
        assert!(checks::toc_any(&seed), "a whole TOC was refused");
        for at in (1..seed.len()).step_by((seed.len() / 96).max(1)) {
            for flip in [0x01, 0x10] {
                let mut damaged = seed.clone();
                damaged[at] ^= flip;
                checks::toc_any(&damaged);
                checked += 1;
            }
        }
        for cut in (0..seed.len()).step_by((seed.len() / 24).max(1)) {
            checks::toc_any(&seed[..cut]);
            checked += 1;
        }
    }
    assert!(checked > 128, "only {checked} TOC inputs checked");
}
