//! `seed-seek OUT_DIR FILE...`: writes seek inputs for the first 16 KiB of each file (its
//! seek tables, compressed several ways, with the blobs they index) into OUT_DIR, as seeds
//! for the seek fuzz target.

#[path = "checks.rs"]
mod checks;

/// Bytes of each file used: the seeds stay well under the fuzzer's input length limit.
const SEED_BYTES: usize = 16 << 10;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let out = std::path::PathBuf::from(args.next().expect("usage: seed-seek OUT_DIR FILE..."));
    for file in args {
        let data = std::fs::read(&file).expect("read the file");
        let data = &data[..data.len().min(SEED_BYTES)];
        let stem = std::path::Path::new(&file).file_stem().expect("a file name");
        for (kind, input) in checks::seek_seeds(data) {
            let name = format!("{}-{kind}", stem.to_string_lossy());
            std::fs::write(out.join(name), input).expect("write the seed");
        }
    }
}
