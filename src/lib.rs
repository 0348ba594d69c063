//! imgfs makes a container image usable as a directory in milliseconds, without unpacking it.
//!
//! Data flows one way through five stages; each module uses only the ones before it:
//!
//! ```text
//! source ──tar stream──▶ cache ──archive file──▶ index ──▶ fs (FUSE) ──▶ runner
//! (docker, tar file)     (one copy per image,    (scanned    (serves reads    (namespaces,
//!                         keyed by image id)      once)       from offsets)    overlay, exec)
//! ```
//!
//! - [`source`] resolves a reference to an image id, its config and an export stream.
//! - [`cache`] owns the per-image directories, their locks and completion markers.
//! - [`index`] scans the stream while it is written to the cache and lays out a compact,
//!   checksummed index that is memory-mapped and used in place.
//! - [`prepare`] gets an image ready: fills the cache from its source and indexes it on the way.
//! - [`image`] reads a prepared image in place: resolve, attributes, directories, reads.
//! - [`fs`] serves it as a read-only FUSE filesystem, a thin adapter over [`image`].
//! - [`serve`] is the mount lifecycle: mounting, detached and shared servers, their
//!   announcements in the cache, linger, unmounting.
//! - [`runner`] starts a sandbox rooted in that filesystem, with a writable overlay, confined
//!   as docker confines a container.
//! - [`inspect`], beside the runner, answers `ls`, `cat`, `stat`, `find` and `inspect` from the
//!   same index and archive without mounting anything.
#![deny(unsafe_code)]

// The stages in pipeline order (kept apart so formatting does not sort them).
pub mod source;

pub mod cache;

pub mod index;

pub mod prepare;

pub mod image;

pub mod fs;

pub mod serve;

pub mod runner;

pub mod inspect;
