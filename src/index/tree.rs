//! The tree builder: applies scanned [`Entry`] records in archive order the way `tar -x`
//! would, and lays the result out as an index.
//!
//! Rules: paths are normalized (`./` prefixes, duplicate slashes and `.` components removed,
//! a leading `/` stripped as tar does); a path with a `..` component, a NUL byte or a name
//! longer than `NAME_MAX` is dropped with a warning, so no name can leave the tree. Later
//! entries for the same path win; a directory entry over an existing directory keeps its
//! children and takes the new metadata. Missing parents are synthesized (0755, root, mtime 0);
//! a non-directory standing where a parent must be is replaced by one. A hard link shares the
//! inode its target has at that point of the archive; a link to a missing target or to a
//! directory is dropped with a warning. Only nodes still reachable at the end are laid out.
//!
//! An image of layers is applied a layer at a time ([`Tree::apply_layer`]), bottom first, as
//! the OCI image spec says: a layer's whiteouts (`.wh.NAME`) and opaque markers
//! (`.wh..wh..opq`) remove what the layers below put there — never what the same layer
//! adds, so they are applied before the layer's other entries — and are not themselves in
//! the tree; other `.wh..wh.` names are AUFS bookkeeping and are skipped. A hard link may
//! name a file of a lower layer. Every file remembers which layer (blob) holds its bytes.

use std::collections::HashMap;

use super::format::{self, InodeRecord, Writer};
use super::scan::{Entry, Kind, Segment};

/// Why a member's path, or the target of its hard link, cannot be in the tree (said in the
/// warning that skips it).
#[derive(Debug, thiserror::Error, PartialEq)]
enum Skipped {
    #[error("the path contains '..'")]
    DotDot,
    #[error("the name contains a NUL byte")]
    Nul,
    #[error("a name is longer than {NAME_MAX} bytes")]
    LongName,
    #[error("the target does not exist")]
    NoTarget,
    #[error("the target is a directory")]
    TargetIsDirectory,
}

/// Longest file name the kernel accepts (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Mode and owner of a directory the archive never listed, as `tar -x` run by root makes it.
const SYNTH_DIR_MODE: u32 = 0o755;
/// Warnings kept in full; past this only a count is kept, so a hostile archive cannot
/// fill memory with messages.
const MAX_WARNINGS: usize = 100;
/// A layer entry with this name prefix deletes the rest of its name from the layers below.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// A layer entry with this name makes its directory opaque: nothing below shows through.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Whiteout names with this prefix are metadata of the layer format, never files.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// A blob named in the index's blob table: the length it must have and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub size: u64,
    pub key: Vec<u8>,
}

impl BlobRef {
    pub fn new(size: u64, key: impl Into<Vec<u8>>) -> BlobRef {
        BlobRef {
            size,
            key: key.into(),
        }
    }
}

struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    data_offset: u64,
    /// The blob holding the data.
    blob: u32,
    sparse: Option<Vec<Segment>>,
    link: Vec<u8>,
    rdev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    children: HashMap<Box<[u8]>, u32>,
}

impl Node {
    fn synthesized_dir() -> Node {
        Node {
            kind: Kind::Directory,
            mode: SYNTH_DIR_MODE,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            data_offset: 0,
            blob: 0,
            sparse: None,
            link: Vec::new(),
            rdev: (0, 0),
            xattrs: Vec::new(),
            children: HashMap::new(),
        }
    }

    fn from_entry(e: Entry, blob: u32) -> Node {
        let kind = e.kind();
        Node {
            kind,
            // Linux gives every symlink rwxrwxrwx, whatever the archive stored (as tar -x).
            mode: if kind == Kind::Symlink { 0o777 } else { e.mode },
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            size: e.size,
            data_offset: e.data_offset,
            blob,
            sparse: e.sparse,
            link: if kind == Kind::Symlink {
                e.link
            } else {
                Vec::new()
            },
            rdev: (e.dev_major, e.dev_minor),
            xattrs: e.xattrs,
            children: HashMap::new(),
        }
    }
}

/// The archive's tree as `tar -x` would leave it, built one entry at a time.
pub struct Tree {
    nodes: Vec<Node>,
    warnings: Vec<String>,
    dropped_warnings: usize,
    stripped_absolute: bool,
    /// The parent directory of the previous entry: archives list siblings together, so most
    /// entries skip the walk from the root. Dropped whenever a name is replaced.
    last_parent: Option<(Vec<Vec<u8>>, u32)>,
    /// The blob the entries being inserted come from.
    blob: u32,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node::synthesized_dir()],
            warnings: Vec::new(),
            dropped_warnings: 0,
            stripped_absolute: false,
            last_parent: None,
            blob: 0,
        }
    }

    /// Applies one layer of an image, whose data is in blob `blob`: its whiteouts and opaque
    /// markers first, then its other entries in archive order.
    pub fn apply_layer(&mut self, blob: u32, entries: Vec<Entry>) {
        self.blob = blob;
        self.last_parent = None;
        let mut rest = Vec::with_capacity(entries.len());
        for entry in entries {
            let name = entry.path.rsplit(|&b| b == b'/').find(|c| !c.is_empty());
            match name {
                Some(name) if name.starts_with(WHITEOUT_PREFIX) => self.whiteout(&entry),
                _ => rest.push(entry),
            }
        }
        for entry in rest {
            self.insert(entry);
        }
    }

    /// Removes from the layers below what a whiteout or an opaque marker names.
    fn whiteout(&mut self, entry: &Entry) {
        let at = entry.header_offset;
        let comps = match self.components(&entry.path) {
            Ok(c) => c,
            Err(why) => {
                let path = lossy(&entry.path);
                self.warn(format!("skipped whiteout '{path}' at byte {at}: {why}"));
                return;
            }
        };
        let Some((name, parents)) = comps.split_last() else {
            return;
        };
        // A whiteout in a directory the layers below lack removes nothing.
        let Some(dir) = self.find_dir(parents) else {
            return;
        };
        self.last_parent = None;
        let children = &mut self.nodes[dir as usize].children;
        if *name == OPAQUE_MARKER {
            children.clear();
        } else if !name.starts_with(WHITEOUT_META_PREFIX) {
            children.remove(&name[WHITEOUT_PREFIX.len()..]);
        }
    }

    /// The directory `comps` names, if the tree has it.
    fn find_dir(&self, comps: &[&[u8]]) -> Option<u32> {
        let mut id = 0u32;
        for comp in comps {
            id = *self.nodes[id as usize].children.get(*comp)?;
            if self.nodes[id as usize].kind != Kind::Directory {
                return None;
            }
        }
        Some(id)
    }

    pub(crate) fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(message);
        } else {
            self.dropped_warnings += 1;
        }
    }

    /// Messages about entries that were dropped or changed, then a count of any left out.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut w = self.warnings.clone();
        if self.dropped_warnings > 0 {
            w.push(format!("... and {} more warnings", self.dropped_warnings));
        }
        w
    }

    /// Splits a raw path into its components, or says why it cannot be in the tree.
    fn components<'p>(&mut self, path: &'p [u8]) -> Result<Vec<&'p [u8]>, Skipped> {
        if path.first() == Some(&b'/') && !self.stripped_absolute {
            self.stripped_absolute = true;
            self.warn("removing leading '/' from member names".into());
        }
        let mut out = Vec::new();
        for c in path.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(Skipped::DotDot),
                c if c.contains(&0) => return Err(Skipped::Nul),
                c if c.len() > NAME_MAX => return Err(Skipped::LongName),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn add_node(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    /// Applies one archive member.
    pub(crate) fn insert(&mut self, entry: Entry) {
        let path = entry.path.clone();
        let at = entry.header_offset;
        let comps = match self.components(&path) {
            Ok(c) => c,
            Err(why) => {
                self.warn(format!("skipped '{}' at byte {at}: {why}", lossy(&path)));
                return;
            }
        };
        let Some((name, parents)) = comps.split_last() else {
            // The archive's root ("./"): only a directory can describe it.
            if entry.kind() == Kind::Directory {
                let root = &mut self.nodes[0];
                let children = std::mem::take(&mut root.children);
                *root = Node::from_entry(entry, self.blob);
                root.children = children;
            } else {
                self.warn(format!(
                    "skipped '{}' at byte {at}: not a directory",
                    lossy(&path)
                ));
            }
            return;
        };
        let cached = self.last_parent.as_ref().and_then(|(names, id)| {
            let same = names.len() == parents.len()
                && names.iter().zip(parents).all(|(a, b)| a.as_slice() == *b);
            same.then_some(*id)
        });
        let dir = match cached {
            Some(id) => id,
            None => {
                let id = self.walk_parents(parents, &path, at);
                self.last_parent = Some((parents.iter().map(|c| c.to_vec()).collect(), id));
                id
            }
        };
        self.insert_in(dir, name, entry, &path, at);
    }

    /// Finds or makes the directory `parents` names, from the root.
    fn walk_parents(&mut self, parents: &[&[u8]], path: &[u8], at: u64) -> u32 {
        let mut dir = 0u32;
        for (i, comp) in parents.iter().enumerate() {
            dir = match self.nodes[dir as usize].children.get(*comp).copied() {
                Some(id) if self.nodes[id as usize].kind == Kind::Directory => id,
                existing => {
                    if existing.is_some() {
                        self.warn(format!(
                            "'{}' at byte {at}: '{}' was not a directory; replaced by one",
                            lossy(path),
                            lossy(&parents[..=i].join(&b'/'))
                        ));
                    }
                    let id = self.add_node(Node::synthesized_dir());
                    self.nodes[dir as usize].children.insert((*comp).into(), id);
                    id
                }
            };
        }
        dir
    }

    /// Applies `entry` as `name` in directory `dir`.
    fn insert_in(&mut self, dir: u32, name: &[u8], entry: Entry, path: &[u8], at: u64) {
        let existing = self.nodes[dir as usize].children.get(name).copied();
        let id = match entry.kind() {
            Kind::HardLink => match self.resolve_link(&entry.link) {
                Ok(target) => target,
                Err(why) => {
                    self.warn(format!(
                        "skipped hard link '{}' -> '{}' at byte {at}: {why}",
                        lossy(path),
                        lossy(&entry.link)
                    ));
                    return;
                }
            },
            Kind::Directory => match existing {
                Some(id) if self.nodes[id as usize].kind == Kind::Directory => {
                    let node = &mut self.nodes[id as usize];
                    let children = std::mem::take(&mut node.children);
                    *node = Node::from_entry(entry, self.blob);
                    node.children = children;
                    return;
                }
                _ => self.add_node(Node::from_entry(entry, self.blob)),
            },
            _ => self.add_node(Node::from_entry(entry, self.blob)),
        };
        if existing.is_some_and(|old| old != id) {
            // A replaced name may have been a directory the cache points into.
            self.last_parent = None;
        }
        self.nodes[dir as usize].children.insert(name.into(), id);
    }

    /// Finds the node a hard link names, as it stands now.
    fn resolve_link(&mut self, target: &[u8]) -> Result<u32, Skipped> {
        let comps = self.components(target)?;
        let mut id = 0u32;
        for comp in &comps {
            let node = &self.nodes[id as usize];
            if node.kind != Kind::Directory {
                return Err(Skipped::NoTarget);
            }
            id = *node.children.get(*comp).ok_or(Skipped::NoTarget)?;
        }
        if self.nodes[id as usize].kind == Kind::Directory {
            return Err(Skipped::TargetIsDirectory);
        }
        Ok(id)
    }

    /// Lays the reachable tree out as an index: records in breadth-first order (root first,
    /// so inode number = record number + 1), each directory's children contiguous and sorted
    /// by name, hard links sharing one record.
    pub fn write_index(&self, blobs: &[BlobRef]) -> Result<Vec<u8>, format::FormatError> {
        const UNASSIGNED: u32 = u32::MAX;
        let mut record_of = vec![UNASSIGNED; self.nodes.len()];
        let mut order: Vec<u32> = vec![0]; // node ids in record order
        let mut parent_rec: Vec<u32> = vec![0];
        record_of[0] = 0;
        let mut nlink: Vec<u32> = vec![2];
        // Pass 1: number the records and count links.
        let mut i = 0;
        while i < order.len() {
            let node = &self.nodes[order[i] as usize];
            let mut names: Vec<(&[u8], u32)> =
                node.children.iter().map(|(k, &v)| (&**k, v)).collect();
            names.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (_, child) in names {
                let c = child as usize;
                if record_of[c] == UNASSIGNED {
                    record_of[c] = order.len() as u32;
                    order.push(child);
                    parent_rec.push(i as u32);
                    let is_dir = self.nodes[c].kind == Kind::Directory;
                    nlink.push(if is_dir { 2 } else { 1 });
                    if is_dir {
                        nlink[i] += 1;
                    }
                } else {
                    nlink[record_of[c] as usize] += 1;
                }
            }
            i += 1;
        }
        if order.len() > u32::MAX as usize - 1 {
            return Err(format::FormatError::TooLarge("inodes"));
        }
        // Pass 2: write records, each directory's dirents in one run.
        let mut w = Writer::default();
        let mut next_dirent: u64 = 0;
        for (rec, &id) in order.iter().enumerate() {
            let node = &self.nodes[id as usize];
            let (xattr_off, xattr_len) = w.push_xattrs(&node.xattrs)?;
            let mut r = InodeRecord {
                mode: format::type_bits(node.kind) | (node.mode & 0o7777),
                uid: node.uid,
                gid: node.gid,
                nlink: nlink[rec],
                size: node.size,
                mtime: node.mtime,
                mtime_nsec: node.mtime_nsec,
                parent: parent_rec[rec],
                data: 0,
                extra_off: 0,
                extra_len: 0,
                xattr_off,
                xattr_len,
                blocks: node.size.div_ceil(512),
                blob: 0,
            };
            match node.kind {
                Kind::File => {
                    r.data = node.data_offset;
                    r.blob = node.blob;
                    if let Some(segments) = &node.sparse {
                        // A file that is all hole still needs a map to be read as sparse.
                        let hole = [Segment {
                            offset: node.size,
                            len: 0,
                        }];
                        let map = if segments.is_empty() {
                            &hole[..]
                        } else {
                            segments
                        };
                        let (off, n) = w.push_segments(map)?;
                        r.extra_off = off;
                        r.extra_len = n;
                        r.blocks = segments.iter().map(|s| s.len.div_ceil(512)).sum();
                    }
                }
                Kind::Symlink => {
                    r.extra_off = w.push_extra(&node.link)?;
                    r.extra_len = u32::try_from(node.link.len())
                        .map_err(|_| format::FormatError::TooLarge("symlink target"))?;
                    r.size = node.link.len() as u64;
                    r.blocks = 0;
                }
                Kind::CharDevice | Kind::BlockDevice => {
                    r.data = (u64::from(node.rdev.0) << 32) | u64::from(node.rdev.1);
                    r.blocks = 0;
                }
                Kind::Directory => {
                    r.data = next_dirent;
                    r.extra_len = u32::try_from(node.children.len())
                        .map_err(|_| format::FormatError::TooLarge("directory"))?;
                    next_dirent += node.children.len() as u64;
                    r.size = format::DIR_SIZE;
                    r.blocks = format::DIR_SIZE / 512;
                }
                Kind::Fifo | Kind::HardLink => r.blocks = 0,
            }
            w.push_inode(&r)?;
        }
        for &id in &order {
            let node = &self.nodes[id as usize];
            if node.kind != Kind::Directory {
                continue;
            }
            let mut names: Vec<(&[u8], u32)> =
                node.children.iter().map(|(k, &v)| (&**k, v)).collect();
            names.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (name, child) in names {
                w.push_dirent(record_of[child as usize], name)?;
            }
        }
        for blob in blobs {
            w.push_blob_ref(blob.size, &blob.key)?;
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::format::Index;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: Some(kind),
            mode: 0o644,
            ..Default::default()
        }
    }

    fn file(path: &str, data_offset: u64) -> Entry {
        Entry {
            data_offset,
            size: 1,
            ..entry(path, Kind::File)
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..entry(path, Kind::HardLink)
        }
    }

    /// (path, record, mode, nlink, data) of one inode.
    type Row = (String, u32, u32, u32, u64);

    /// Walks the index from the root, rows sorted by path, and the build's warnings.
    fn listing(entries: Vec<Entry>) -> (Vec<Row>, Vec<String>) {
        let mut t = Tree::new();
        for e in entries {
            t.insert(e);
        }
        let blob = BlobRef {
            size: 0,
            key: b"archive".to_vec(),
        };
        let idx = Index::new(t.write_index(&[blob]).unwrap()).unwrap();
        let mut out: Vec<Row> = walk(&idx)
            .into_iter()
            .map(|(path, rec, r)| (path, rec, r.mode, r.nlink, r.data))
            .collect();
        out.sort();
        (out, t.warnings())
    }

    /// Every entry reachable from the root: its path, record number and record.
    fn walk(idx: &Index<Vec<u8>>) -> Vec<(String, u32, InodeRecord)> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), 0u32)];
        while let Some((path, rec)) = stack.pop() {
            let r = idx.inode(rec).unwrap();
            if r.is_dir() {
                let mut i = 0;
                while let Some(d) = idx.child(&r, i) {
                    let name = String::from_utf8(d.name.to_vec()).unwrap();
                    stack.push((format!("{path}/{name}"), d.record));
                    i += 1;
                }
            }
            out.push((path, rec, r));
        }
        out
    }

    fn paths(entries: Vec<Entry>) -> Vec<String> {
        listing(entries).0.into_iter().map(|(p, ..)| p).collect()
    }

    #[test]
    fn normalizes_and_confines_paths() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["./a", "a//b/", "./a/./c"], &["", "/a", "/a/b", "/a/c"]),
            (&["/abs/x"], &["", "/abs", "/abs/x"]),
            (&["../evil", "a/../../evil", "ok/.."], &[""]),
            (
                &["deep/er/file"],
                &["", "/deep", "/deep/er", "/deep/er/file"],
            ),
        ];
        for (input, want) in cases {
            let got = paths(input.iter().map(|p| file(p, 0)).collect());
            assert_eq!(&got, want, "{input:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(paths(vec![file(&long, 0)]), vec![""]);
        let (_, warnings) = listing(vec![file("../evil", 0)]);
        assert!(warnings[0].contains("'..'"), "{warnings:?}");
    }

    #[test]
    fn later_entries_win() {
        // A file replaced by a file: the second one's data.
        let (l, _) = listing(vec![file("f", 100), file("f", 200)]);
        assert_eq!(l[1].4, 200);
        // A directory over a directory keeps its children and takes the new mode.
        let mut d2 = entry("d", Kind::Directory);
        d2.mode = 0o700;
        let (l, _) = listing(vec![entry("d", Kind::Directory), file("d/x", 0), d2]);
        assert_eq!(l[1].0, "/d");
        assert_eq!(l[1].2, libc::S_IFDIR | 0o700);
        assert_eq!(l[2].0, "/d/x");
        // A file over a directory replaces the whole subtree.
        assert_eq!(paths(vec![file("d/x", 0), file("d", 0)]), vec!["", "/d"]);
        // A file standing where a parent must be becomes a directory.
        assert_eq!(
            paths(vec![file("p", 0), file("p/q", 0)]),
            vec!["", "/p", "/p/q"]
        );
    }

    #[test]
    fn hard_links_share_an_inode() {
        let (l, _) = listing(vec![file("a", 7), link("b", "a"), link("c", "./a")]);
        let recs: Vec<u32> = l[1..].iter().map(|x| x.1).collect();
        assert_eq!(recs, vec![recs[0]; 3]);
        assert!(l[1..].iter().all(|x| x.3 == 3), "{l:?}");
        // Replacing a name drops one link; the others keep the old inode.
        let (l, _) = listing(vec![file("a", 7), link("b", "a"), file("a", 9)]);
        assert_eq!((l[1].3, l[1].4), (1, 9));
        assert_eq!((l[2].3, l[2].4), (1, 7));
        // Links to nothing, to a directory, or out of the tree are dropped with a warning.
        let (l, w) = listing(vec![
            entry("d", Kind::Directory),
            link("x", "missing"),
            link("y", "d"),
            link("z", "../etc/passwd"),
        ]);
        assert_eq!(l.len(), 2);
        assert_eq!(w.len(), 3, "{w:?}");
        // A link to itself that already exists is a no-op.
        let (l, _) = listing(vec![file("s", 1), link("s", "s")]);
        assert_eq!(l[1].3, 1);
    }

    #[test]
    fn directory_link_counts_and_root_entry() {
        let mut root = entry("./", Kind::Directory);
        root.mode = 0o700;
        let (l, _) = listing(vec![
            root,
            entry("a", Kind::Directory),
            entry("a/b", Kind::Directory),
            file("a/f", 0),
        ]);
        assert_eq!(l[0].2, libc::S_IFDIR | 0o700);
        assert_eq!(l[0].3, 3); // root: ".", its entry in itself, and a/..
        assert_eq!(l[1].3, 3);
        assert_eq!(l[2].3, 2);
    }

    /// Applies layers bottom first; rows as [`listing`], data as (blob, offset).
    fn layered(layers: Vec<Vec<Entry>>) -> Vec<(String, u32, u64)> {
        let mut t = Tree::new();
        let mut blobs = Vec::new();
        for (i, entries) in layers.into_iter().enumerate() {
            t.apply_layer(i as u32, entries);
            blobs.push(BlobRef {
                size: 0,
                key: format!("layer{i}").into_bytes(),
            });
        }
        let idx = Index::new(t.write_index(&blobs).unwrap()).unwrap();
        assert_eq!(idx.blob_count() as usize, blobs.len());
        let mut out: Vec<_> = walk(&idx)
            .into_iter()
            .map(|(path, _, r)| (path, r.blob, r.data))
            .collect();
        out.sort();
        out
    }

    fn names(rows: &[(String, u32, u64)]) -> Vec<&str> {
        rows.iter().map(|r| r.0.as_str()).collect()
    }

    #[test]
    fn layers_merge_with_whiteouts_and_opaque_directories() {
        let base = vec![
            entry("d", Kind::Directory),
            file("d/a", 1),
            file("d/b", 2),
            entry("o", Kind::Directory),
            file("o/old", 3),
            file("keep", 4),
            file("gone", 5),
        ];
        let upper = vec![
            file("d/b", 10),           // later layers win
            file("o/new", 11),         // comes before the marker: same layer, stays
            file("o/.wh..wh..opq", 0), // hides o/old only
            file(".wh.gone", 0),
            file(".wh.nothing", 0),  // names nothing: harmless
            file("x/.wh.y", 0),      // in a directory nobody made: harmless
            file(".wh..wh.plnk", 0), // AUFS bookkeeping
        ];
        let rows = layered(vec![base, upper]);
        assert_eq!(
            names(&rows),
            ["", "/d", "/d/a", "/d/b", "/keep", "/o", "/o/new"]
        );
        let data = |p: &str| rows.iter().find(|r| r.0 == p).map(|r| (r.1, r.2));
        assert_eq!(data("/d/a"), Some((0, 1)));
        assert_eq!(data("/d/b"), Some((1, 10)));
        assert_eq!(data("/o/new"), Some((1, 11)));
        assert_eq!(data("/keep"), Some((0, 4)));
    }

    #[test]
    fn a_whiteout_hides_only_lower_layers() {
        // The same layer deletes and re-creates a name: the new one stays, in either order.
        for upper in [
            vec![file(".wh.f", 0), file("f", 9)],
            vec![file("f", 9), file(".wh.f", 0)],
        ] {
            let rows = layered(vec![vec![file("f", 1)], upper]);
            assert_eq!(rows[1], ("/f".to_string(), 1, 9));
        }
        // A directory removed and re-created holds only what its new layer puts in it.
        let rows = layered(vec![
            vec![entry("d", Kind::Directory), file("d/old", 1)],
            vec![
                file(".wh.d", 0),
                entry("d", Kind::Directory),
                file("d/new", 2),
            ],
        ]);
        assert_eq!(names(&rows), ["", "/d", "/d/new"]);
        // A whiteout in a third layer removes what the second added.
        let rows = layered(vec![
            vec![file("a", 1)],
            vec![file("b", 2)],
            vec![file(".wh.b", 0), file(".wh.a", 0)],
        ]);
        assert_eq!(names(&rows), [""]);
    }

    #[test]
    fn hard_links_reach_lower_layers() {
        let rows = layered(vec![vec![file("a", 7)], vec![link("b", "a")]]);
        assert_eq!(rows[1..], [("/a".into(), 0, 7), ("/b".into(), 0, 7)]);
        // A flat archive keeps whiteout names as the files they are.
        assert_eq!(paths(vec![file(".wh.x", 0)]), ["", "/.wh.x"]);
    }
}
