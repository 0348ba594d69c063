//! imgfs makes a container image usable as a directory in milliseconds, without unpacking it.
//!
//! Data flows one way through the stages; each module uses only the ones before it, and all
//! of them may use [`sys`], declared first:
//!
//! ```text
//! source ──config + layers──▶ cache ──blobs──▶ index ──▶ prepare ──▶ image ──▶ fs (FUSE) ──▶ serve
//! (daemon, registry, OCI      (entries and     (scan,     (strategy:  (reads at   (thin       (mount
//!  layouts, archives,          layers by key;   merge,     cached,     offsets,    adapter)    lifecycle)
//!  tar file)                   sparse blobs)    seek and   artifact,   lazily or               runner,
//!                                               TOC        TOCs,       not)                    inspect
//!                                               tables)    whole)
//! ══════════════ sys: the system calls of every stage, beneath them all ══════════════
//! ```
//!
//! - [`sys`], beneath every stage, is the one place imgfs makes system calls: safe wrappers
//!   over libc (mounts, processes, signals, terminals), the mount table, and files published
//!   whole or not at all. Only its files may hold `unsafe`.
//! - [`source`] resolves a reference: a daemon image's id, config and export stream, a tar
//!   file, or an image of layers (OCI layouts and archives, `docker save` output, a registry)
//!   with its config and verified layer streams, whole or by byte ranges, under one retry
//!   policy.
//! - [`cache`] owns the image and layer entries (named by a typed key), their locks and
//!   completion markers, and the sparse blobs of layers read lazily.
//! - [`index`] scans archives, merges layers (whiteouts, opaque directories) and lays out a
//!   compact, checksummed index with a blob table, memory-mapped and used in place; for
//!   compressed layers it builds seek tables (gzip checkpoints, zstd frames) and reads
//!   eStargz and zstd:chunked TOCs, both behind one span table.
//! - [`prepare`] gets an image ready, choosing in one place how: the cached entry, lazily by
//!   imgfs's index artifact or the layers' TOCs, or a whole fetch indexed on the way; and
//!   publishes the index artifact (`imgfs index push`).
//! - [`image`] reads a prepared image in place: resolve, attributes, directories, reads, over
//!   blobs that are files or lazy layers fetching their spans on demand.
//! - [`fs`] serves it as a read-only FUSE filesystem, a thin adapter over [`image`].
//! - [`serve`] is the mount lifecycle: mounting, detached and shared servers, their
//!   announcements in the cache, linger, unmounting.
//! - [`runner`] starts a sandbox rooted in that filesystem, with a writable overlay, confined
//!   as docker confines a container.
//! - [`inspect`], beside the runner, answers `ls`, `cat`, `stat`, `find` and `inspect` from the
//!   same index and blobs without mounting anything.
//! - [`snapshotter`], beside them, is containerd's Snapshots service: it asks [`prepare`] for
//!   images it can serve lazily and [`serve`] for their mounts, and never serves FUSE itself.
#![deny(unsafe_code)]
// The library serves the `imgfs` binary and its tests; its docs are for the developers of
// imgfs (`cargo doc --document-private-items`), so they link to crate-private items freely.
#![allow(rustdoc::private_intra_doc_links)]

// The stages in pipeline order (kept apart so formatting does not sort them), after the
// system calls they all may use.
pub mod sys;

pub mod source;

pub mod cache;

pub mod index;

pub mod prepare;

pub mod image;

pub mod fs;

pub mod serve;

pub mod runner;

pub mod inspect;
pub mod snapshotter;
