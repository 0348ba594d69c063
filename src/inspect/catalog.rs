//! What the cache holds, for `imgfs images`, `rm` and `prune`: each complete entry with the
//! references it was exported under, its size on disk, entries, last use and users. An image
//! of layers counts the layers it lists: those no other image lists are its unique bytes,
//! the others shared.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache::{self, Cache, Entry, Removal};
use crate::index::format::Index;

/// One image in the cache.
pub struct CachedImage {
    pub entry: Entry,
    /// The image id (`sha256:…`), or the tar file's identity.
    pub id: String,
    /// Tags the daemon knew the image by at export time.
    pub references: Vec<String>,
    /// For an indexed tar file: its path.
    pub source: Option<PathBuf>,
    /// Its layers' store keys, for an image of layers.
    pub layers: Vec<String>,
    /// Bytes its own entry takes on disk (index, config; an export's archive).
    pub own_bytes: u64,
    /// Bytes its entry and all its layers take on disk.
    pub disk_bytes: u64,
    /// Of those, what no other image shares: what removing it frees.
    pub unique_bytes: u64,
    pub inodes: Option<u32>,
    pub last_used: Option<SystemTime>,
}

impl CachedImage {
    fn read(entry: Entry) -> CachedImage {
        let json: serde_json::Value = std::fs::read(entry.image_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let references = json["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let source = std::fs::read(entry.dir().join(cache::SOURCE_FILE))
            .ok()
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)));
        let id = json["Id"]
            .as_str()
            .map(str::to_string)
            .or_else(|| entry.marker().filter(|m| m.starts_with("sha256:")))
            .unwrap_or_else(|| entry.name());
        let layers = std::fs::read_to_string(entry.dir().join(cache::LAYERS_FILE))
            .map(|l| l.lines().map(str::to_string).collect())
            .unwrap_or_default();
        let inodes = std::fs::File::open(entry.index_path())
            .and_then(|f| crate::sys::map(&f))
            .ok()
            .and_then(|m| Index::unchecked(&m[..]).ok().map(|i| i.inode_count()));
        let own = entry.disk_usage();
        CachedImage {
            own_bytes: own,
            disk_bytes: own,
            unique_bytes: own,
            layers,
            last_used: entry.last_used(),
            entry,
            id,
            references,
            source,
            inodes,
        }
    }

    /// Whether `wanted` names this image: a reference (a missing tag meaning `latest`), an
    /// id or a prefix of one (at least 4 hex digits, with or without `sha256:`), or the path
    /// of the tar file it was indexed from.
    pub fn matches(&self, wanted: &str) -> bool {
        let tagged = |r: &str| {
            let last = r.rsplit('/').next().unwrap_or(r);
            if last.contains(':') || r.contains('@') {
                r.to_string()
            } else {
                format!("{r}:latest")
            }
        };
        if self.references.iter().any(|r| *r == tagged(wanted)) {
            return true;
        }
        let hex = wanted.strip_prefix("sha256:").unwrap_or(wanted);
        if hex.len() >= 4
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && self
                .id
                .strip_prefix("sha256:")
                .is_some_and(|id| id.starts_with(&hex.to_ascii_lowercase()))
        {
            return true;
        }
        let path = wanted.strip_prefix("tar:").unwrap_or(wanted);
        match (&self.source, std::fs::canonicalize(Path::new(path))) {
            (Some(source), Ok(p)) => *source == p,
            _ => false,
        }
    }

    /// The short id as docker prints it, or `tar` for a tar file.
    pub fn short_id(&self) -> String {
        match self.id.strip_prefix("sha256:") {
            Some(hex) => hex.chars().take(12).collect(),
            None => "tar".into(),
        }
    }

    /// References, or the tar file's path, for people.
    pub fn names(&self) -> String {
        if let Some(s) = &self.source {
            return s.display().to_string();
        }
        if !self.id.starts_with("sha256:") {
            "(a tar file indexed before its path was recorded)".into()
        } else if self.references.is_empty() {
            "<none>".into()
        } else {
            self.references.join(", ")
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        serde_json::json!({
            "Id": self.id,
            "RepoTags": self.references,
            "Source": self.source.as_ref().map(|s| s.display().to_string()),
            "DiskBytes": self.disk_bytes,
            "UniqueBytes": self.unique_bytes,
            "SharedBytes": self.disk_bytes - self.unique_bytes,
            "Layers": self.layers,
            "Inodes": self.inodes,
            "LastUsed": self.last_used.map(secs),
            "Directory": self.entry.dir().display().to_string(),
        })
    }
}

/// Every complete image in the cache, most recently used first.
pub fn images(cache: &Cache) -> Vec<CachedImage> {
    let mut all: Vec<_> = cache.entries().into_iter().map(CachedImage::read).collect();
    let mut listed: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for key in all.iter().flat_map(|i| &i.layers) {
        *listed.entry(key.as_str()).or_default() += 1;
    }
    let sizes: std::collections::HashMap<String, u64> = listed
        .keys()
        .map(|k| (k.to_string(), cache.layer(k).disk_usage()))
        .collect();
    let counts: std::collections::HashMap<String, u32> = listed
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    for image in &mut all {
        for key in &image.layers {
            let size = sizes.get(key).copied().unwrap_or(0);
            image.disk_bytes += size;
            if counts.get(key) == Some(&1) {
                image.unique_bytes += size;
            }
        }
    }
    all.sort_by_key(|i| std::cmp::Reverse(i.last_used));
    all
}

/// What `prune` decided for one image.
pub struct Pruned<'a> {
    pub image: &'a CachedImage,
    pub outcome: Removal,
}

/// Removes unused images: those unused for `older_than` when given, then, with `max_size`,
/// the least recently used of the rest until the cache is that small; with neither, every
/// unused one. `dry_run` decides without removing (the outcome then says what would be
/// freed).
pub fn prune<'a>(
    cache: &Cache,
    images: &'a [CachedImage],
    older_than: Option<Duration>,
    max_size: Option<u64>,
    dry_run: bool,
) -> Vec<Pruned<'a>> {
    let now = SystemTime::now();
    let layers: u64 = cache.layers().iter().map(Entry::disk_usage).sum();
    let mut total: u64 = images.iter().map(|i| i.own_bytes).sum::<u64>() + layers;
    let mut done = Vec::new();
    // Least recently used first.
    let mut order: Vec<&CachedImage> = images.iter().collect();
    order.sort_by_key(|i| i.last_used);
    for image in order {
        let stale = older_than.is_some_and(|age| {
            image
                .last_used
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= age)
        });
        let over = max_size.is_some_and(|max| total > max);
        let chosen = match (older_than, max_size) {
            (None, None) => true,
            _ => stale || over,
        };
        if !chosen {
            continue;
        }
        let outcome = if dry_run {
            let users = image.entry.users();
            if users.is_empty() {
                Removal::Removed(image.unique_bytes)
            } else {
                Removal::InUse(users)
            }
        } else {
            match image.entry.remove() {
                Ok(Removal::Removed(bytes)) => Removal::Removed(bytes + cache.collect_layers()),
                Ok(r) => r,
                Err(e) => {
                    log::warn!("{e}");
                    continue;
                }
            }
        };
        if let Removal::Removed(bytes) = outcome {
            total = total.saturating_sub(bytes);
        }
        done.push(Pruned { image, outcome });
    }
    done
}
