//! `seed-seek [--artifact|--build] OUT_DIR FILE...`: writes seek inputs for the first 16 KiB
//! of each file (its seek tables, compressed several ways, with the blobs they index) into
//! OUT_DIR, as seeds for the seek fuzz target; with `--artifact`, a whole imgfs index artifact
//! of each file as a one-layer image, for the artifact target; with `--build`, the compressed
//! blobs alone (and those of a generated text), for the seek-build target. `seed-seek --toc
//! OUT_DIR` writes a TOC of each format for the toc target.

#[path = "checks.rs"]
mod checks;

/// Bytes of each file used: the seeds stay well under the fuzzer's input length limit.
const SEED_BYTES: usize = 16 << 10;

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.next_if(|a| a == "--toc").is_some() {
        let out = std::path::PathBuf::from(args.next().expect("usage: seed-seek --toc OUT_DIR"));
        for (name, format) in [("estargz", 0), ("zstd-chunked", 1)] {
            std::fs::write(out.join(name), checks::toc_seed(format)).expect("write the seed");
        }
        return;
    }
    let artifact = args.next_if(|a| a == "--artifact").is_some();
    let build = !artifact && args.next_if(|a| a == "--build").is_some();
    let out = std::path::PathBuf::from(
        args.next()
            .expect("usage: seed-seek [--artifact|--build] OUT_DIR FILE..."),
    );
    if build {
        for (kind, input) in checks::build_seeds(&checks::word_text(SEED_BYTES)) {
            std::fs::write(out.join(format!("words-build-{kind}")), input).expect("write the seed");
        }
    }
    for file in args {
        let data = std::fs::read(&file).expect("read the file");
        let data = &data[..data.len().min(SEED_BYTES)];
        let stem = std::path::Path::new(&file)
            .file_stem()
            .expect("a file name");
        if artifact {
            let name = format!("{}-artifact", stem.to_string_lossy());
            let seed = checks::artifact_seed(data, (data.len() as u64 / 4).max(1));
            std::fs::write(out.join(name), seed).expect("write the seed");
            continue;
        }
        if build {
            for (kind, input) in checks::build_seeds(data) {
                let name = format!("{}-build-{kind}", stem.to_string_lossy());
                std::fs::write(out.join(name), input).expect("write the seed");
            }
            continue;
        }
        for (kind, input) in checks::seek_seeds(data) {
            let name = format!("{}-{kind}", stem.to_string_lossy());
            std::fs::write(out.join(name), input).expect("write the seed");
        }
    }
}
