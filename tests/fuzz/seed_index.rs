//! `seed-index OUT_DIR TAR...`: writes the index imgfs builds for each tar file into OUT_DIR,
//! as seeds for the index fuzz target.

use imgfs::index::scan::SliceInput;
use imgfs::index::tree::BlobRef;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let out = std::path::PathBuf::from(args.next().expect("usage: seed-index OUT_DIR TAR..."));
    for tar in args {
        let data = std::fs::read(&tar).expect("read the tar file");
        let Ok(tree) = imgfs::index::build_tree(&mut SliceInput::new(&data)) else {
            continue;
        };
        let index = tree
            .write_index(&[BlobRef::new(data.len() as u64, "archive")])
            .expect("write the index");
        let name = std::path::Path::new(&tar).file_name().expect("a file name");
        std::fs::write(out.join(name).with_extension("index"), index).expect("write the seed");
    }
}
