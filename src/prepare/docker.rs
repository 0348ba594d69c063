//! A Docker (or Podman) daemon's image: its export stream is written to the cache and
//! scanned in the same pass ([`TeeInput`]), so indexing costs no second read.
//!
//! Takes a reference the daemon resolves (pulling it first when asked); hands on the
//! [`Ready`] image, its entry keyed by the image id. A reference that is a full image id
//! with a complete entry needs no daemon at all.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::entry::{claim, usable};
use super::{Event, Options, PrepareError, Progress, Ready};
use crate::cache::key::EntryKey;
use crate::cache::{self, Cache, Entry};
use crate::index::build_tree_with;
use crate::index::scan::{ScanError, TeeInput};
use crate::index::tree::BlobRef;
use crate::source::docker::{Docker, DockerError};

/// The cache key of a reference that is a full image id (`sha256:` and 64 hex digits):
/// an id names immutable content, so a complete entry needs no daemon at all.
fn full_image_id(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(reference)
}

/// Rate-limits progress reports; shared by the archive writer and the scanner.
struct Reporter<'a> {
    report: Option<&'a mut dyn FnMut(Event)>,
    progress: Progress,
    start: Instant,
    last: Instant,
}

/// Time between two progress reports.
const REPORT_EVERY: Duration = Duration::from_millis(100);

impl Reporter<'_> {
    fn tick(&mut self) {
        if self.report.is_some() && self.last.elapsed() >= REPORT_EVERY {
            self.last = Instant::now();
            self.progress.elapsed = self.start.elapsed();
            if let Some(r) = self.report.as_mut() {
                r(Event::Exporting(self.progress));
            }
        }
    }

    fn finish(&mut self) {
        self.progress.elapsed = self.start.elapsed();
        let p = self.progress;
        if let Some(r) = self.report.as_mut() {
            r(Event::Exported(p));
        }
    }
}

pub(super) fn prepare_docker(
    reference: &str,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    let Options {
        pull, mut report, ..
    } = options;
    if let Some(id) = full_image_id(reference) {
        let entry = cache.entry(&EntryKey::Digest(id.to_string()));
        if entry.marker().is_some() && usable(&entry.index_path(), &[entry.archive_path()]) {
            return Ok(Ready {
                entry: entry.clone(),
                index_path: entry.index_path(),
                blobs: vec![entry.archive_path()],
                image_path: Some(entry.image_path()),
                id: id.to_string(),
                built: false,
                warnings: Vec::new(),
            });
        }
    }
    let mut docker = Docker::connect()?;
    let image = match docker.resolve(reference) {
        Err(DockerError::NotFound(_)) if pull => {
            docker.pull(reference, &mut |line| {
                if let Some(r) = report.as_mut() {
                    r(Event::Pulling(line));
                }
            })?;
            docker.resolve(reference)?
        }
        resolved => resolved?,
    };
    let entry = cache.entry(&EntryKey::Digest(image.id.clone()));
    let ready = |built, warnings| Ready {
        entry: entry.clone(),
        index_path: entry.index_path(),
        blobs: vec![entry.archive_path()],
        image_path: Some(entry.image_path()),
        id: image.id.clone(),
        built,
        warnings,
    };
    let complete = |e: &Entry| e.marker().is_some() && usable(&e.index_path(), &[e.archive_path()]);
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(ready(false, Vec::new()));
    };
    let archive_path = entry.archive_path();
    let file = File::create(&archive_path).map_err(|source| PrepareError::Io {
        path: archive_path.clone(),
        cause: source,
    })?;
    let leftovers = entry.dir().to_path_buf();
    let now = Instant::now();
    let reporter = RefCell::new(Reporter {
        report,
        progress: Progress {
            bytes: 0,
            entries: 0,
            elapsed: Duration::ZERO,
            layers_done: 0,
            layers_total: 0,
        },
        start: now,
        last: now,
    });
    let built = docker.export(
        &image,
        move || {
            let _ = std::fs::remove_dir_all(leftovers);
        },
        |stream| {
            let mut input = TeeInput::new(
                stream,
                CacheWriter {
                    file,
                    path: &archive_path,
                    reporter: &reporter,
                },
            );
            let tree = build_tree_with(&mut input, &mut || {
                let mut r = reporter.borrow_mut();
                r.progress.entries += 1;
                r.tick();
            });
            let (_, total) = input.finish()?;
            Ok(tree.map(|t| (t, total)))
        },
    );
    let describe = || format!("export of image '{reference}'");
    let (tree, total) = match built {
        Ok(Ok(Ok(done))) => done,
        Ok(Ok(Err(source))) => {
            entry.discard();
            return Err(PrepareError::Scan {
                path: describe(),
                cause: source,
            });
        }
        Ok(Err(source)) => {
            entry.discard();
            return Err(PrepareError::Scan {
                path: describe(),
                cause: ScanError::Io {
                    offset: 0,
                    cause: source,
                },
            });
        }
        Err(e) => {
            entry.discard();
            return Err(e.into());
        }
    };
    let result = (|| {
        let bytes = tree
            .write_index(&[BlobRef {
                size: total,
                key: cache::ARCHIVE_FILE.as_bytes().to_vec(),
            }])
            .map_err(|source| PrepareError::Format {
                path: describe(),
                cause: source,
            })?;
        entry.write_file(cache::INDEX_FILE, &bytes)?;
        entry.write_file(cache::IMAGE_FILE, &image.inspect_json)?;
        entry.commit(&lock, &image.id)?;
        Ok(())
    })();
    reporter.borrow_mut().finish();
    if let Err(e) = result {
        entry.discard();
        return Err(e);
    }
    Ok(ready(true, tree.warnings()))
}

/// The cache's archive file, naming itself in write errors (a full disk says where), and
/// counting what it writes for the progress line.
struct CacheWriter<'a, 'r> {
    file: File,
    path: &'a Path,
    reporter: &'a RefCell<Reporter<'r>>,
}

impl io::Write for CacheWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", self.path.display()),
            )
        })?;
        let mut r = self.reporter.borrow_mut();
        r.progress.bytes += n as u64;
        r.tick();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn full_image_ids() {
        let id = format!("sha256:{}", "ab01".repeat(16));
        assert_eq!(super::full_image_id(&id), Some(id.as_str()));
        for not in ["python:3.12", "sha256:abc", &id.to_uppercase(), &id[7..]] {
            assert_eq!(super::full_image_id(not), None, "{not}");
        }
    }
}
