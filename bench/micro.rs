//! Micro-benchmarks of the hot paths, so a regression in one function shows: the header
//! scan, the index build, lookup, readdir and read.
//!
//! `cargo bench --bench micro` (criterion; reports under target/criterion).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use imgfs::image::ImageReader;
use imgfs::index::format::Index;
use imgfs::index::scan::SliceInput;
use imgfs::index::tree::BlobRef;
use imgfs::index::{FileInput, build_tree};

/// Files in the synthetic archive: 100 directories of 100 small files.
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;

/// An in-memory GNU tar like a small image: directories of small files.
fn archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in 0..DIRS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("usr/lib/d{d:03}/"), std::io::empty())
            .unwrap();
        for f in 0..FILES_PER_DIR {
            let data = vec![(f % 251) as u8; 100 + (f * 37) % 3000];
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("usr/lib/d{d:03}/file-{f:04}.py"), &data[..])
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// The archive and its index on disk, for the filesystem-level benchmarks.
fn on_disk(tar: &[u8]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("imgfs-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("archive.tar");
    let index = dir.join("index");
    std::fs::write(&archive, tar).unwrap();
    let tree = build_tree(&mut SliceInput::new(tar)).unwrap();
    std::fs::write(
        &index,
        tree.write_index(&[BlobRef::new(tar.len() as u64, "archive")])
            .unwrap(),
    )
    .unwrap();
    (index, archive)
}

fn bench(c: &mut Criterion) {
    let tar = archive();
    let entries = (DIRS * (FILES_PER_DIR + 1)) as u64;

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.bench_function("scan+tree (memory)", |b| {
        b.iter(|| build_tree(&mut SliceInput::new(black_box(&tar))).unwrap())
    });
    let (index_path, archive_path) = on_disk(&tar);
    let file = std::fs::File::open(&archive_path).unwrap();
    g.bench_function("scan+tree (file, headers only)", |b| {
        b.iter(|| build_tree(&mut FileInput::new(&file, tar.len() as u64)).unwrap())
    });
    let tree = build_tree(&mut SliceInput::new(&tar)).unwrap();
    g.throughput(Throughput::Elements(entries));
    g.bench_function("write_index", |b| {
        b.iter(|| {
            tree.write_index(&[BlobRef::new(tar.len() as u64, "archive")])
                .unwrap()
        })
    });
    let bytes = tree
        .write_index(&[BlobRef::new(tar.len() as u64, "archive")])
        .unwrap();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("open (validate + checksum)", |b| {
        b.iter(|| Index::new(black_box(&bytes[..])).unwrap().inode_count())
    });
    g.finish();

    let index = Index::new(&bytes[..]).unwrap();
    let root = index.inode(0).unwrap();
    let usr = index.inode(index.lookup(&root, b"usr").unwrap()).unwrap();
    let lib = index.inode(index.lookup(&usr, b"lib").unwrap()).unwrap();
    let dir = index.inode(index.lookup(&lib, b"d050").unwrap()).unwrap();
    let mut g = c.benchmark_group("fs");
    g.bench_function("lookup (hit, 100 names)", |b| {
        b.iter(|| {
            index
                .lookup(black_box(&dir), black_box(b"file-0077.py"))
                .unwrap()
        })
    });
    g.bench_function("lookup (miss)", |b| {
        b.iter(|| index.lookup(black_box(&dir), black_box(b"file-0077.pyc")))
    });
    g.throughput(Throughput::Elements(FILES_PER_DIR as u64));
    g.bench_function("readdir (100 entries)", |b| {
        b.iter(|| {
            let mut i = 0;
            while let Some(d) = index.child(black_box(&dir), i) {
                black_box(index.inode(d.record));
                i += 1;
            }
            i
        })
    });
    let fs = ImageReader::open(&index_path, std::slice::from_ref(&archive_path)).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_file (resolve + read ~2 KiB)", |b| {
        b.iter(|| {
            fs.read_file(black_box(b"/usr/lib/d050/file-0077.py"))
                .unwrap()
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(index_path.parent().unwrap());
}

criterion_group!(benches, bench);
criterion_main!(benches);
