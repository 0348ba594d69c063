//! The snapshotter's metadata: every snapshot containerd asked for (its kind, parent, labels
//! and directory id) and, for a remote one, the image that serves it. One JSON document in the
//! snapshotter's root, published whole after each change (temporary file, fsync, rename), so
//! a kill at any instant leaves the last change or the one before it; the operations are the
//! rules of containerd's snapshot model, on data alone.
//!
//! Takes containerd's keys, names and labels; hands on [`Snapshot`]s. Directories, mounts and
//! servers are the caller's: an id whose directory exists without a snapshot is a leftover for
//! `Cleanup`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::sys::publish::{Durability, Publish};

/// Why a change of the metadata was refused, in containerd's terms (gRPC codes).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("snapshot {0}: not found")]
    NotFound(String),
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    #[error("snapshot {key}: {why}")]
    FailedPrecondition { key: String, why: &'static str },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not snapshotter metadata: {cause}")]
    Damaged {
        path: PathBuf,
        cause: serde_json::Error,
    },
}

/// What a snapshot is, as containerd says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, of its parent (`View`).
    View,
    /// Writable, being filled or a container's root (`Prepare`).
    Active,
    /// Read-only for good, a parent of others (`Commit`, or a remote layer).
    Committed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A committed snapshot served from an image instead of a directory: the merged view of the
/// image's first `layers` layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The image, by digest: `HOST/REPO@sha256:…`.
    pub image: String,
    /// Its entry in imgfs's store, freed with the last snapshot served from it.
    pub entry: String,
    /// How many of its layers, from the bottom, the snapshot holds.
    pub layers: usize,
    /// How many layers the image has.
    pub total: usize,
}

/// One snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Names its directory (`snapshots/ID`), never reused.
    pub id: u64,
    pub kind: Kind,
    /// The parent's key, empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Served from an image rather than a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    /// Bytes and inodes of its directory, counted once it was committed.
    #[serde(default)]
    pub usage: (i64, i64),
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snapshots: BTreeMap<String, Snapshot>,
}

/// The metadata, loaded from and published to one file.
pub struct Meta {
    path: PathBuf,
    state: State,
}

/// File of the metadata in the snapshotter's root.
pub const META_FILE: &str = "metadata.json";

impl Meta {
    /// Loads the metadata of the root `root` (empty when there is none yet).
    pub fn load(root: &Path) -> Result<Meta, MetaError> {
        let path = root.join(META_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|cause| MetaError::Damaged {
                path: path.clone(),
                cause,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(cause) => return Err(MetaError::Io { path, cause }),
        };
        Ok(Meta { path, state })
    }

    /// Applies `change` to a copy and publishes it; the metadata is unchanged when either
    /// fails.
    fn change<T>(
        &mut self,
        change: impl FnOnce(&mut State) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let mut next = State {
            next_id: self.state.next_id,
            snapshots: self.state.snapshots.clone(),
        };
        let out = change(&mut next)?;
        let bytes =
            serde_json::to_vec(&next).map_err(|e| MetaError::InvalidArgument(e.to_string()))?;
        Publish::new(Durability::Synced)
            .mode(0o600)
            .bytes(&self.path, &bytes)
            .map_err(|cause| MetaError::Io {
                path: self.path.clone(),
                cause,
            })?;
        self.state = next;
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Result<&Snapshot, MetaError> {
        self.state
            .snapshots
            .get(key)
            .ok_or_else(|| MetaError::NotFound(key.to_string()))
    }

    /// Every snapshot, by key.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Snapshot)> {
        self.state.snapshots.iter()
    }

    /// Makes snapshot `key` of `kind` on `parent` (a committed snapshot, or empty).
    pub fn create(
        &mut self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: HashMap<String, String>,
        remote: Option<Remote>,
    ) -> Result<Snapshot, MetaError> {
        if key.is_empty() {
            return Err(MetaError::InvalidArgument("a snapshot needs a key".into()));
        }
        self.change(|s| {
            if s.snapshots.contains_key(key) {
                return Err(MetaError::AlreadyExists(key.to_string()));
            }
            if !parent.is_empty() {
                let p = s
                    .snapshots
                    .get(parent)
                    .ok_or_else(|| MetaError::NotFound(parent.to_string()))?;
                if p.kind != Kind::Committed {
                    return Err(MetaError::FailedPrecondition {
                        key: parent.to_string(),
                        why: "a parent must be a committed snapshot",
                    });
                }
            }
            s.next_id += 1;
            let now = SystemTime::now();
            let snap = Snapshot {
                id: s.next_id,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                remote,
                usage: (0, 0),
            };
            s.snapshots.insert(key.to_string(), snap.clone());
            Ok(snap)
        })
    }

    /// Commits the active snapshot `key` as `name`, with `labels` and its directory's `usage`.
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        usage: (i64, i64),
    ) -> Result<Snapshot, MetaError> {
        if name.is_empty() {
            return Err(MetaError::InvalidArgument("a commit needs a name".into()));
        }
        self.change(|s| {
            let active = s
                .snapshots
                .get(key)
                .ok_or_else(|| MetaError::NotFound(key.to_string()))?;
            if active.kind != Kind::Active {
                return Err(MetaError::FailedPrecondition {
                    key: key.to_string(),
                    why: "only an active snapshot can be committed",
                });
            }
            if s.snapshots.contains_key(name) {
                return Err(MetaError::AlreadyExists(name.to_string()));
            }
            let mut snap = s.snapshots.remove(key).expect("looked up above");
            snap.kind = Kind::Committed;
            snap.labels = labels;
            snap.usage = usage;
            snap.updated = SystemTime::now();
            s.snapshots.insert(name.to_string(), snap.clone());
            Ok(snap)
        })
    }

    /// Removes snapshot `key`, which no other has as parent; returns it.
    pub fn remove(&mut self, key: &str) -> Result<Snapshot, MetaError> {
        self.change(|s| {
            if !s.snapshots.contains_key(key) {
                return Err(MetaError::NotFound(key.to_string()));
            }
            if s.snapshots.values().any(|c| c.parent == key) {
                return Err(MetaError::FailedPrecondition {
                    key: key.to_string(),
                    why: "other snapshots have it as their parent",
                });
            }
            Ok(s.snapshots.remove(key).expect("looked up above"))
        })
    }

    /// Changes the labels of snapshot `key` as containerd's `Update` says: every label
    /// (`paths` empty, or `labels`), or one (`labels.NAME`, removed when `labels` lacks it).
    /// Nothing else of a snapshot can change.
    pub fn update(
        &mut self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot, MetaError> {
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(MetaError::InvalidArgument(format!(
                    "snapshot {key}: cannot update {p:?}: only labels can change"
                )));
            }
        }
        self.change(|s| {
            let snap = s
                .snapshots
                .get_mut(key)
                .ok_or_else(|| MetaError::NotFound(key.to_string()))?;
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                snap.labels = labels;
            } else {
                for p in paths {
                    let name = &p["labels.".len()..];
                    match labels.get(name) {
                        Some(v) => snap.labels.insert(name.to_string(), v.clone()),
                        None => snap.labels.remove(name),
                    };
                }
            }
            snap.updated = SystemTime::now();
            Ok(snap.clone())
        })
    }

    /// The chain below `key`: its parent, the parent's parent, … to the bottom.
    pub fn parents(&self, key: &str) -> Vec<(&String, &Snapshot)> {
        let mut out = Vec::new();
        let mut next = self.state.snapshots.get(key).map(|s| s.parent.as_str());
        while let Some(p) = next.filter(|p| !p.is_empty()) {
            let Some((k, s)) = self.state.snapshots.get_key_value(p) else {
                break;
            };
            // A chain is a path down to the bottom: a loop would be damage.
            if out.len() > self.state.snapshots.len() {
                break;
            }
            out.push((k, s));
            next = Some(s.parent.as_str());
        }
        out
    }
}

/// A filter of containerd's `List`: conjunctions of `FIELD==VALUE`, `FIELD!=VALUE` or a bare
/// `FIELD` (present), on `name`, `parent`, `kind` and `labels.NAME` (NAME and VALUE may be
/// quoted); a snapshot passes a list of filters when it passes any of them (or the list is
/// empty).
pub struct Filters(Vec<Vec<Term>>);

struct Term {
    field: Field,
    test: Test,
}

enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

enum Test {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters, MetaError> {
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            let bad = |why: &str| MetaError::InvalidArgument(format!("filter {f:?}: {why}"));
            let mut terms = Vec::new();
            for part in split_unquoted(f, ',') {
                let part = part.trim();
                let (field, test) = match find_unquoted(part, &["==", "!=", "~="]) {
                    Some((_, "~=")) => {
                        return Err(bad("regular expressions (~=) are not supported"));
                    }
                    Some((i, op)) => {
                        let value = unquote(part[i + op.len()..].trim()).map_err(bad)?;
                        let test = if op == "==" {
                            Test::Equal(value)
                        } else {
                            Test::NotEqual(value)
                        };
                        (part[..i].trim(), test)
                    }
                    None => (part, Test::Present),
                };
                let field = match field {
                    "name" => Field::Name,
                    "parent" => Field::Parent,
                    "kind" => Field::Kind,
                    f => match f.strip_prefix("labels.") {
                        Some(name) => Field::Label(unquote(name).map_err(bad)?),
                        None => return Err(bad("fields are name, parent, kind and labels.NAME")),
                    },
                };
                terms.push(Term { field, test });
            }
            out.push(terms);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, name: &str, snap: &Snapshot) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|terms| {
                terms.iter().all(|t| {
                    let value = match &t.field {
                        Field::Name => Some(name),
                        Field::Parent => Some(snap.parent.as_str()),
                        Field::Kind => Some(snap.kind.name()),
                        Field::Label(l) => snap.labels.get(l).map(String::as_str),
                    };
                    match &t.test {
                        Test::Present => value.is_some_and(|v| !v.is_empty()),
                        Test::Equal(want) => value == Some(want.as_str()),
                        Test::NotEqual(want) => value != Some(want.as_str()),
                    }
                })
            })
    }
}

/// `text` cut at each `sep` outside double quotes.
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The first of `ops` in `text` outside double quotes, and where.
fn find_unquoted<'a>(text: &str, ops: &[&'a str]) -> Option<(usize, &'a str)> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted => {
                if let Some(op) = ops.iter().find(|op| text[i..].starts_with(**op)) {
                    return Some((i, *op));
                }
            }
            _ => {}
        }
    }
    None
}

/// `"a\"b"` → `a"b`; an unquoted text as it is.
fn unquote(text: &str) -> Result<String, &'static str> {
    let Some(inner) = text.strip_prefix('"') else {
        return Ok(text.to_string());
    };
    let inner = inner.strip_suffix('"').ok_or("a quote is not closed")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next().ok_or("a quoted text ends in a backslash")?);
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn meta() -> (Meta, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "imgfs-meta-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (Meta::load(&dir).unwrap(), dir)
    }

    /// Labels from pairs, for the snapshotter's tests.
    pub(in crate::snapshotter) fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// containerd's rules: keys are unique, parents are committed, a commit moves an active
    /// snapshot to its name, a parent with children stays; and it all survives a reload.
    #[test]
    fn the_snapshot_model_holds_and_survives_a_reload() {
        let (mut m, dir) = meta();
        let a = m
            .create("a", "", Kind::Active, HashMap::new(), None)
            .unwrap();
        assert!(matches!(
            m.create("a", "", Kind::Active, HashMap::new(), None),
            Err(MetaError::AlreadyExists(_))
        ));
        assert!(matches!(
            m.create("b", "a", Kind::Active, HashMap::new(), None),
            Err(MetaError::FailedPrecondition { .. })
        ));
        assert!(matches!(
            m.create("b", "nope", Kind::Active, HashMap::new(), None),
            Err(MetaError::NotFound(_))
        ));
        let c = m.commit("l1", "a", labels(&[("x", "1")]), (10, 2)).unwrap();
        assert_eq!(c.id, a.id);
        assert!(matches!(m.get("a"), Err(MetaError::NotFound(_))));
        assert!(matches!(
            m.commit("l2", "l1", HashMap::new(), (0, 0)),
            Err(MetaError::FailedPrecondition { .. })
        ));
        let v = m
            .create("v", "l1", Kind::View, HashMap::new(), None)
            .unwrap();
        assert!(v.id > a.id);
        assert!(matches!(
            m.remove("l1"),
            Err(MetaError::FailedPrecondition { .. })
        ));
        assert_eq!(m.parents("v").len(), 1);

        let m2 = Meta::load(&dir).unwrap();
        assert_eq!(m2.get("l1").unwrap().labels, labels(&[("x", "1")]));
        assert_eq!(m2.get("l1").unwrap().usage, (10, 2));
        assert_eq!(m2.get("v").unwrap().kind, Kind::View);
        m.remove("v").unwrap();
        m.remove("l1").unwrap();
        assert_eq!(Meta::load(&dir).unwrap().all().count(), 0);
        // Ids are never reused.
        let d = m
            .create("d", "", Kind::Active, HashMap::new(), None)
            .unwrap();
        assert!(d.id > v.id);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn updates_change_labels_only() {
        let (mut m, dir) = meta();
        m.create(
            "a",
            "",
            Kind::Active,
            labels(&[("x", "1"), ("y", "2")]),
            None,
        )
        .unwrap();
        let s = m
            .update(
                "a",
                labels(&[("x", "9")]),
                &["labels.x".into(), "labels.y".into()],
            )
            .unwrap();
        assert_eq!(s.labels, labels(&[("x", "9")]));
        let s = m.update("a", labels(&[("z", "3")]), &[]).unwrap();
        assert_eq!(s.labels, labels(&[("z", "3")]));
        assert!(matches!(
            m.update("a", HashMap::new(), &["parent".into()]),
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            m.update("b", HashMap::new(), &[]),
            Err(MetaError::NotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The filter containerd sends after a remote Prepare answered AlreadyExists.
    #[test]
    fn filters_as_containerd_writes_them() {
        let (mut m, dir) = meta();
        m.create("p", "", Kind::Active, HashMap::new(), None)
            .unwrap();
        m.commit("p1", "p", HashMap::new(), (0, 0)).unwrap();
        let ref_label = "containerd.io/snapshot.ref";
        m.create(
            "sha256:abc",
            "p1",
            Kind::Committed,
            labels(&[(ref_label, "sha256:abc")]),
            None,
        )
        .unwrap();
        let f =
            Filters::parse(&[format!(r#"labels."{ref_label}"==sha256:abc,parent=="p1""#)]).unwrap();
        let names: Vec<_> = m
            .all()
            .filter(|(k, s)| f.matches(k, s))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(names, ["sha256:abc"]);
        let f = Filters::parse(&["kind==committed".into(), "name==nothing".into()]).unwrap();
        assert_eq!(m.all().filter(|(k, s)| f.matches(k, s)).count(), 2);
        let f = Filters::parse(&[format!("labels.\"{ref_label}\"")]).unwrap();
        assert_eq!(m.all().filter(|(k, s)| f.matches(k, s)).count(), 1);
        assert!(Filters::parse(&["name~=a.*".into()]).is_err());
        assert!(Filters::parse(&["size==1".into()]).is_err());
        assert!(Filters::parse(&[r#"labels."x==1"#.into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
