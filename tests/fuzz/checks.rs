//! What the fuzz targets check, shared with tests/fuzz_regressions.rs.
#![allow(dead_code)] // each target uses one of the checks

use imgfs::index::format::{self, HEADER_LEN, Index, MAGIC, VERSION};
use imgfs::index::scan::SliceInput;
use imgfs::index::tree::BlobRef;

/// Any bytes as a tar archive. Whatever the scan makes of them, a tree that builds must write
/// an index that reads back, and every record of it must be reachable without a panic.
pub fn scan_any(data: &[u8]) {
    let Ok(tree) = imgfs::index::build_tree(&mut SliceInput::new(data)) else {
        return;
    };
    let bytes = tree
        .write_index(&[BlobRef::new(data.len() as u64, "archive")])
        .expect("a tree built from an archive writes its index");
    let index = Index::new(bytes).expect("a freshly written index reads back");
    walk(&index, true);
}

/// Any bytes as an index: the magic, version and header length are set and the checksum
/// sealed, so that what follows the checksum is tested, not the checksum.
pub fn read_any(data: &[u8]) {
    let mut b = data.to_vec();
    if b.len() >= HEADER_LEN {
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        format::seal(&mut b);
    }
    if let Ok(index) = Index::new(b) {
        walk(&index, false);
    }
}

/// Visits every directory reachable from the root once, and every accessor of every entry.
/// An index imgfs wrote (`written`) must also find each listed name by lookup; a forged one
/// may have unsorted names, which only makes lookups miss.
pub fn walk<B: AsRef<[u8]>>(index: &Index<B>, written: bool) {
    let mut seen = vec![false; index.inode_count() as usize];
    let mut stack = vec![0u32];
    while let Some(rec) = stack.pop() {
        let Some(seen_it) = seen.get_mut(rec as usize) else {
            continue;
        };
        if std::mem::replace(seen_it, true) {
            continue;
        }
        let Some(r) = index.inode(rec) else {
            continue;
        };
        let _ = index.symlink_target(&r);
        if let Some(segments) = index.segments(&r) {
            segments.take(1 << 16).for_each(drop);
        }
        index.xattrs(&r).take(1 << 16).for_each(drop);
        if !r.is_dir() {
            continue;
        }
        let mut i = 0;
        while let Some(d) = index.child(&r, i) {
            let found = index.lookup(&r, d.name);
            if written {
                assert_eq!(found, Some(d.record), "lookup of a listed name");
            }
            stack.push(d.record);
            i += 1;
        }
    }
}
