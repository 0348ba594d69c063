//! imgfs makes a container image usable as a directory in milliseconds, without unpacking it.
//!
//! Data flows one way through the stages; each module uses only the ones before it, and all
//! of them may use [`sys`], declared first:
//!
//! ```text
//! source ──config + layers──▶ cache ──blobs──▶ index ──▶ image ──▶ fs (FUSE) ──▶ runner
//! (daemon, OCI layouts,       (layers kept    (scanned    (reads at   (thin adapter)  (namespaces,
//!  archives, tar file)         once by digest) once,       offsets in                  overlay, exec)
//!                                              merged)     the blobs)
//! ══════════════ sys: the system calls of every stage, beneath them all ══════════════
//! ```
//!
//! - [`sys`], beneath every stage, is the one place imgfs makes system calls: safe wrappers
//!   over libc (mounts, processes, signals, terminals), the mount table, and files published
//!   whole or not at all. Only its files may hold `unsafe`.
//! - [`source`] resolves a reference: a daemon image's id, config and export stream, a tar
//!   file, or an image of layers (OCI layouts and archives, `docker save` output) with its
//!   config and verified layer streams.
//! - [`cache`] owns the image and layer entries, their locks and completion markers.
//! - [`index`] scans archives, merges layers (whiteouts, opaque directories) and lays out a
//!   compact, checksummed index with a blob table, memory-mapped and used in place.
//! - [`prepare`] gets an image ready: fills the cache from its source and indexes on the way.
//! - [`image`] reads a prepared image in place: resolve, attributes, directories, reads.
//! - [`fs`] serves it as a read-only FUSE filesystem, a thin adapter over [`image`].
//! - [`serve`] is the mount lifecycle: mounting, detached and shared servers, their
//!   announcements in the cache, linger, unmounting.
//! - [`runner`] starts a sandbox rooted in that filesystem, with a writable overlay, confined
//!   as docker confines a container.
//! - [`inspect`], beside the runner, answers `ls`, `cat`, `stat`, `find` and `inspect` from the
//!   same index and blobs without mounting anything.
#![deny(unsafe_code)]

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
