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

/// Any bytes as two layers of an image — a u32 (little-endian) saying where the first ends,
/// then the layers back to back: each that scans is merged over the one below with whiteouts
/// applied, and the merged index reads back whole.
pub fn layers_any(data: &[u8]) {
    let Some((head, data)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cut = (u32::from_le_bytes(*head) as usize).min(data.len());
    let mut tree = imgfs::index::tree::Tree::new();
    let mut blobs = Vec::new();
    for (i, part) in [&data[..cut], &data[cut..]].into_iter().enumerate() {
        let mut members = Vec::new();
        let scanned = imgfs::index::scan::scan(&mut SliceInput::new(part), &mut |_| {}, &mut |m| {
            members.push(m);
            Ok(())
        });
        if scanned.is_err() {
            continue;
        }
        tree.apply_layer(i as u32, members);
        blobs.push(BlobRef::new(part.len() as u64, format!("layer{i}")));
    }
    if blobs.is_empty() {
        return;
    }
    let bytes = tree
        .write_index(&blobs)
        .expect("merged layers write their index");
    let index = Index::new(bytes).expect("a freshly written index reads back");
    walk(&index, true);
}

/// Documents that are all the same bytes, whatever their digest says: the parsers see
/// hostile JSON at every level of an index, a manifest and a config.
struct Same<'a>(&'a [u8]);

impl imgfs::source::manifest::Documents for Same<'_> {
    fn document(
        &self,
        _: &oci_spec::image::Descriptor,
    ) -> Result<Vec<u8>, imgfs::source::SourceError> {
        Ok(self.0.to_vec())
    }
}

/// Any bytes as a manifest, an index or a config: an image or a clear error, never a panic
/// or a loop.
pub fn manifest_any(data: &[u8]) {
    use imgfs::source::{Platform, manifest};
    for media_type in [
        None,
        Some(manifest::OCI_INDEX),
        Some(manifest::DOCKER_MANIFEST),
    ] {
        let _ = manifest::resolve(
            &Same(data),
            "fuzz",
            media_type,
            data.to_vec(),
            String::new(),
            &Platform::host(),
        );
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
