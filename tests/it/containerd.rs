//! containerd on imgfs: a containerd 1.6 of the test's own (Debian's package; its root, state
//! and sockets in a temporary directory, dockerd's containerd untouched) with `imgfs
//! snapshotter` as its proxy snapshotter `imgfs`, pulling with `ctr-remote images rpull` from
//! a loopback registry behind a front that counts the bytes of each blob it sends. What a
//! container sees is compared with umoci's unpacking of the image; what containerd fetched,
//! with the image's size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::estargz_fixtures;
use crate::common::{
    CompareOptions, TempDir, assert_trees_equal, compare_trees_with, imgfs, require, run_within,
    text, wait_until,
};
use crate::lazy::{
    LazyImage, blob_bytes, diff_ids_of, estargz_entries, fx, lazy_image, registry_image,
};

/// How long a pull or a container may take.
const LIMIT: Duration = Duration::from_secs(300);

/// A containerd of the test's own with imgfs's snapshotter beside it; everything stopped,
/// unmounted and removed when dropped.
struct Node {
    dir: TempDir,
    /// containerd's namespace for the test's images and containers: its own, as runc keeps
    /// its state by namespace and container id machine-wide.
    namespace: String,
    containerd: Child,
    snapshotter: Option<Child>,
}

impl Node {
    #[track_caller]
    fn start() -> Node {
        for (bin, package) in [
            ("/usr/bin/containerd", "containerd"),
            ("/usr/bin/ctr", "containerd"),
            ("/usr/bin/ctr-remote", "stargz-snapshotter"),
            ("/usr/sbin/runc", "runc"),
        ] {
            require(
                Path::new(bin).exists(),
                &format!("{bin} (Debian's {package} package; contrib/setup.sh installs it)"),
            );
        }
        let dir = TempDir::new("imgfs-containerd");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[proxy_plugins.imgfs]
  type = "snapshot"
  address = "{imgfs}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            imgfs = d.join("imgfs.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let namespace = format!("imgfs-test-{}", d.file_name().unwrap().to_string_lossy());
        let mut node = Node {
            dir,
            namespace,
            containerd,
            snapshotter: None,
        };
        node.start_snapshotter();
        let start = Instant::now();
        loop {
            let out = node.ctr().args(["plugins", "ls"]).output().unwrap();
            if out.status.success()
                && text(&out.stdout)
                    .lines()
                    .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("imgfs"))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                node.log("containerd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The snapshotter's root.
    fn root(&self) -> PathBuf {
        self.path().join("snapshotter")
    }

    /// imgfs's store the snapshotter keeps layers in.
    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    /// Starts `imgfs snapshotter` and waits until its socket answers.
    #[track_caller]
    fn start_snapshotter(&mut self) {
        let sock = self.path().join("imgfs.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("snapshotter.log"))
            .unwrap();
        let child = imgfs()
            .args(["-v", "snapshotter", "--linger", "2", "--address"])
            .arg(&sock)
            .arg("--root")
            .arg(self.root())
            .arg("--cache-dir")
            .arg(self.cache())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start imgfs snapshotter");
        self.snapshotter = Some(child);
        wait_until("the snapshotter's socket answers", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// `kill -9` of the snapshotter.
    fn kill_snapshotter(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(self.path().join("containerd.sock"))
            .args(["--namespace", &self.namespace]);
        c
    }

    /// `ctr-remote images rpull` of `reference` onto imgfs's snapshotter.
    #[track_caller]
    fn rpull(&self, reference: &str) {
        let out = run_within(
            Command::new("/usr/bin/ctr-remote")
                .arg("--address")
                .arg(self.path().join("containerd.sock"))
                .args(["--namespace", &self.namespace])
                .args(["images", "rpull", "--plain-http", "--snapshotter", "imgfs"])
                .arg(reference),
            LIMIT,
        );
        assert!(
            out.status.success(),
            "rpull {reference}: {}\nsnapshotter: {}",
            text(&out.stderr),
            self.log("snapshotter.log")
        );
    }

    /// `ctr run --rm` of `reference` on imgfs's snapshotter: its output.
    #[track_caller]
    fn run(&self, reference: &str, id: &str, command: &[&str]) -> String {
        let out = run_within(&mut self.run_command(reference, id, command), LIMIT);
        assert!(
            out.status.success(),
            "ctr run {id}: {}\nsnapshotter: {}",
            text(&out.stderr),
            self.log("snapshotter.log")
        );
        text(&out.stdout)
    }

    fn run_command(&self, reference: &str, id: &str, command: &[&str]) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--rm", "--snapshotter", "imgfs", reference, id])
            .args(command);
        c
    }

    /// Mounts a read-only view of the committed snapshot `parent` at `at`, as the mounts
    /// containerd hands on for it say (`ctr snapshots view --mounts`: printed as the view is
    /// made, before containerd's garbage collection may take a snapshot no lease holds).
    #[track_caller]
    fn mount_view(&self, key: &str, parent: &str, at: &Path) {
        let out = self
            .ctr()
            .args([
                "snapshots",
                "--snapshotter",
                "imgfs",
                "view",
                "--mounts",
                key,
                parent,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "view: {}", text(&out.stderr));
        let mounts: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("view --mounts printed {:?}: {e}", text(&out.stdout)));
        let mounts = mounts.as_array().expect("a list of mounts");
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        // Go's field names, as ctr prints them.
        let m = &mounts[0];
        let field = |name: &str| m[name].as_str().unwrap_or_else(|| panic!("no {name}: {m}"));
        let options: Vec<&str> = m["Options"]
            .as_array()
            .map(|o| o.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        std::fs::create_dir_all(at).unwrap();
        let done = Command::new("mount")
            .args(["-t", field("Type"), field("Source")])
            .arg(at)
            .args(["-o", &options.join(",")])
            .output()
            .unwrap();
        assert!(done.status.success(), "mount {m}: {}", text(&done.stderr));
    }

    /// Waits until containerd reaches the snapshotter (again): after a restart its gRPC client
    /// reconnects on its own backoff.
    #[track_caller]
    fn wait_for_containerd(&self) {
        wait_until("containerd reaches the snapshotter", || {
            self.ctr()
                .args(["snapshots", "--snapshotter", "imgfs", "ls"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// What `imgfs snapshotter --status` says.
    fn status(&self) -> String {
        let out = imgfs()
            .args(["snapshotter", "--status", "--root"])
            .arg(self.root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    /// The imgfs mounts under the snapshotter's root (its views).
    fn views(&self) -> Vec<String> {
        mounts_under(&self.root())
    }
}

/// Mountpoints under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers outlive their shims: killed first, while containerd still answers.
        if let Ok(out) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for task in text(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-s", "SIGKILL", task])
                    .output();
            }
        }
        // The containers' shims outlive containerd: they are found by its socket's path.
        let sock = self.path().join("containerd.sock");
        let sock = sock.to_string_lossy();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*sock)
                    && let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>()
                {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        self.kill_snapshotter();
        for m in mounts_under(self.path()) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

/// The image's chain ids, bottom first: the names containerd gives its layers' snapshots.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest as _;
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(below) => {
                let h = sha2::Sha256::digest(format!("{below} {d}"));
                format!(
                    "sha256:{}",
                    h.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            }
        };
        out.push(id);
    }
    out
}

/// What rpull takes: `FRONT/NAME:TAG`.
fn reference(img: &LazyImage) -> String {
    img.source.trim_start_matches("docker://").to_string()
}

/// An image with imgfs's index: `ctr-remote images rpull` fetches none of its layers' bytes,
/// every layer is served remotely, a container prints what the image holds, `imgfs cat` with
/// the snapshotter's store reads it without fetching again, and a view of the image's top
/// snapshot (what a container stands on) equals umoci's unpacking, read through imgfs for a
/// fraction of the image's bytes.
#[test]
fn an_indexed_image_runs_without_being_pulled_and_matches_umoci() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let node = Node::start();
    let r = reference(&img);
    node.rpull(&r);
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        0,
        "rpull fetched layer bytes"
    );
    let status = node.status();
    let layers = fx().var("LAYERS_LAYER_COUNT");
    assert!(
        status.contains(&format!("layers served lazily: {layers}"))
            && status.contains("layers unpacked by containerd: 0"),
        "{status}"
    );
    let truth = fx().path("TRUTH_LAYERS");
    let printed = node.run(&r, "c1", &["cat", "/etc/os-release"]);
    assert_eq!(
        printed,
        std::fs::read_to_string(truth.join("etc/os-release")).unwrap()
    );
    let some = blob_bytes(&img.front, &img.layers);
    assert!(
        some * 5 <= img.total,
        "a container's start fetched {some} of {} bytes",
        img.total
    );
    // What the container fetched is in imgfs's store, for imgfs itself as well.
    let out = imgfs()
        .arg("cat")
        .arg("--cache-dir")
        .arg(node.cache())
        .arg(&img.source)
        .arg("/etc/os-release")
        .output()
        .unwrap();
    assert!(out.status.success(), "imgfs cat: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), printed);
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        some,
        "imgfs fetched again what the container had fetched"
    );
    // Each remote snapshot's usage is what its layer holds in the store: some, not the layer.
    let out = node
        .ctr()
        .args(["snapshots", "--snapshotter", "imgfs", "usage", "-b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "usage: {}", text(&out.stderr));
    let used: u64 = text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(
        used > 0 && used < img.total,
        "usage of the snapshots: {used} of {} bytes",
        img.total
    );
    let chains = chain_ids(&diff_ids_of(&fx().path("OCI_GZIP"), "layers"));
    let at = node.path().join("view");
    node.mount_view("v1", chains.last().unwrap(), &at);
    assert_trees_equal(&truth, &at, &CompareOptions::default());
}

/// eStargz (made by ctr-remote) and zstd:chunked (made by skopeo) images without an imgfs
/// index are served remotely from their layers' TOCs: rpull fetches a fraction of them (the
/// TOCs, and the tar headers of the names not UTF-8 that a TOC cannot say), and a
/// container's root equals umoci's unpacking (the eStargz format's own entries hidden).
#[test]
fn estargz_and_zstd_chunked_images_run_from_their_tocs() {
    let estargz = estargz_fixtures();
    for (layout, oci_ref, name, truth, compare, layers) in [
        (
            estargz.path("OCI_ESTARGZ"),
            "layers",
            "imgfs-test/layers:estargz",
            estargz.path("TRUTH_ESTARGZ"),
            estargz_entries(),
            fx().var("LAYERS_LAYER_COUNT"),
        ),
        (
            fx().path("OCI_ZSTD_CHUNKED"),
            "layers-app",
            "imgfs-test/layers-app:chunked",
            fx().path("TRUTH_APP"),
            CompareOptions::default(),
            fx().var("APP_LAYER_COUNT"),
        ),
    ] {
        let img = registry_image(&layout, oci_ref, name);
        let node = Node::start();
        let r = reference(&img);
        node.rpull(&r);
        let pulled = blob_bytes(&img.front, &img.layers);
        assert!(
            pulled * 5 <= img.total,
            "{name}: rpull fetched {pulled} of {} bytes",
            img.total
        );
        let status = node.status();
        assert!(
            status.contains(&format!("layers served lazily: {layers}")),
            "{name}: {status}"
        );
        let printed = node.run(&r, "c1", &["cat", "/etc/os-release"]);
        assert_eq!(
            printed,
            std::fs::read_to_string(truth.join("etc/os-release")).unwrap(),
            "{name}"
        );
        let chains = chain_ids(&diff_ids_of(&layout, oci_ref));
        let at = node.path().join("view");
        node.mount_view("v1", chains.last().unwrap(), &at);
        assert_trees_equal(&truth, &at, &compare);
    }
}

/// An image imgfs cannot read lazily (no index, no TOCs) is unpacked by containerd into the
/// snapshotter's directories: said once in the log with why, counted in the status, and the
/// container's root — overlay layers with containerd's whiteouts — equals umoci's but where
/// overlayfs itself cannot: the root directory's own attributes are the top layer
/// directory's, and a file keeps the link count its layer gave its inode when a later layer
/// replaced another link of it (in this image, `data/hl/a` of layer 2 replaces the one that
/// `b` and `c` of layer 1 are linked to). containerd's own overlayfs snapshotter shows the
/// same.
#[test]
fn an_image_without_an_index_is_unpacked_said_and_exact() {
    let img = registry_image(&fx().path("OCI_GZIP"), "layers", "imgfs-test/layers:1");
    let node = Node::start();
    let r = reference(&img);
    node.rpull(&r);
    assert!(
        blob_bytes(&img.front, &img.layers) >= img.total,
        "containerd did not fetch the layers it unpacked"
    );
    let status = node.status();
    let layers = fx().var("LAYERS_LAYER_COUNT");
    assert!(
        status.contains("layers served lazily: 0")
            && status.contains(&format!("layers unpacked by containerd: {layers}"))
            && status.contains("no imgfs index"),
        "{status}"
    );
    let log = node.log("snapshotter.log");
    assert_eq!(
        log.matches("unpacked by containerd, not served lazily")
            .count(),
        1,
        "the fallback is said once: {log}"
    );
    let truth = fx().path("TRUTH_LAYERS");
    let printed = node.run(&r, "c1", &["cat", "/etc/os-release"]);
    assert_eq!(
        printed,
        std::fs::read_to_string(truth.join("etc/os-release")).unwrap()
    );
    let chains = chain_ids(&diff_ids_of(&fx().path("OCI_GZIP"), "layers"));
    let at = node.path().join("view");
    node.mount_view("v1", chains.last().unwrap(), &at);
    let all = CompareOptions {
        skip_root_meta: true,
        max_lines: 10_000,
        ..CompareOptions::default()
    };
    let diffs = compare_trees_with(&truth, &at, &all);
    let overlayfs = |d: &&String| {
        ["\"data/hl/b\"", "\"data/hl/c\""]
            .iter()
            .any(|p| *d == &format!("{p}: nlink: expected 2, actual 3"))
    };
    let other: Vec<&String> = diffs.iter().filter(|d| !overlayfs(d)).collect();
    assert!(other.is_empty(), "differences from umoci's: {other:#?}");
    assert!(node.views().iter().all(|v| !v.contains("/views/")));
}

/// `kill -9` of the snapshotter while a container reads files: the container goes on and
/// exits 0. Started again with the registry gone, the snapshotter answers at once, and the
/// next container of the image starts from what is in the store.
#[test]
fn a_killed_snapshotter_leaves_containers_alone_and_restarts_without_its_registry() {
    let mut img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let mut node = Node::start();
    let r = reference(&img);
    node.rpull(&r);
    let script = "i=0; while [ $i -lt 40 ]; do ls -lR /usr/lib > /dev/null || exit 3; \
                  cat /etc/os-release > /dev/null || exit 4; i=$((i+1)); sleep 0.1; done";
    let mut reader = node
        .run_command(&r, "reader", &["sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the container runs", || {
        let out = node.ctr().args(["tasks", "ls"]).output().unwrap();
        text(&out.stdout).contains("reader") && text(&out.stdout).contains("RUNNING")
    });
    node.kill_snapshotter();
    let status = reader.wait().unwrap();
    let mut err = String::new();
    use std::io::Read as _;
    let _ = reader.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "the container failed: {status} {err}");

    let fetched = blob_bytes(&img.front, &img.layers);
    img.registry.kill();
    let start = Instant::now();
    node.start_snapshotter();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the snapshotter took {:?} to start with its registry gone",
        start.elapsed()
    );
    node.wait_for_containerd();
    let truth = fx().path("TRUTH_LAYERS");
    let printed = node.run(&r, "c2", &["cat", "/etc/os-release"]);
    assert_eq!(
        printed,
        std::fs::read_to_string(truth.join("etc/os-release")).unwrap()
    );
    assert_eq!(blob_bytes(&img.front, &img.layers), fetched);
}

/// Eight containers of one image at once stand on one view, served by one server; the view
/// stays for the next container once the last one is gone, and is retired after `--linger`
/// (2 s here) with nothing on it.
#[test]
fn eight_containers_share_one_view_and_one_server() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let node = Node::start();
    let r = reference(&img);
    node.rpull(&r);
    let mut children: Vec<Child> = (0..8)
        .map(|i| {
            node.run_command(
                &r,
                &format!("c{i}"),
                &["sh", "-c", "cat /etc/os-release >/dev/null && sleep 3"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    wait_until("the eight containers run", || {
        let out = node.ctr().args(["tasks", "ls"]).output().unwrap();
        text(&out.stdout).matches("RUNNING").count() == 8
    });
    let views = node.views();
    assert_eq!(views.len(), 1, "{views:?}");
    let servers = crate::common::servers_of(Path::new(&views[0]));
    assert_eq!(servers.len(), 1, "servers of the view: {servers:?}");
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        node.views(),
        views,
        "the view did not stay for the next container"
    );
    wait_until("the view is retired", || node.views().is_empty());
}

/// Removing the image (containerd's garbage collection removes its snapshots) leaves no
/// view mounted, no fetch going on, no snapshot directory and none of the image's bytes in
/// imgfs's store.
#[test]
fn removing_the_image_frees_its_views_and_store() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let node = Node::start();
    let r = reference(&img);
    node.rpull(&r);
    node.run(&r, "c1", &["cat", "/etc/os-release"]);
    let images = node.cache().join("images");
    assert!(
        std::fs::read_dir(&images).is_ok_and(|d| d.count() > 0),
        "the image is not in imgfs's store"
    );
    let out = node
        .ctr()
        .args(["images", "rm", "--sync", &r])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the snapshots are removed", || {
        let out = node
            .ctr()
            .args(["snapshots", "--snapshotter", "imgfs", "ls"])
            .output()
            .unwrap();
        text(&out.stdout).lines().count() <= 1
    });
    wait_until("the views are unmounted", || node.views().is_empty());
    // Nothing fetches for the image any more.
    let after = blob_bytes(&img.front, &img.layers);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        after,
        "fetches went on"
    );
    let dirs: Vec<_> = std::fs::read_dir(node.root().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "left behind: {dirs:?}");
    let kept: HashSet<String> = ["images", "layers"]
        .iter()
        .flat_map(|k| {
            std::fs::read_dir(node.cache().join(k))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(kept.is_empty(), "the store kept {kept:?}");
}

/// Requests that break the snapshot model get gRPC errors with their reasons, and the
/// snapshotter goes on serving; SIGTERM stops it cleanly.
#[test]
fn bad_requests_get_reasons_and_the_snapshotter_goes_on() {
    let mut node = Node::start();
    let snap = |args: &[&str]| {
        node.ctr()
            .args(["snapshots", "--snapshotter", "imgfs"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = snap(&["prepare", "k1", "no-such-parent"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let out = snap(&["prepare", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = snap(&["prepare", "k2", "k1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("committed"),
        "{}",
        text(&out.stderr)
    );
    let out = snap(&["commit", "c1", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = snap(&["commit", "c2", "k1"]);
    assert!(!out.status.success());
    let out = snap(&["prepare", "k2", "c1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = snap(&["rm", "c1"]);
    assert!(!out.status.success(), "a parent with a child was removed");
    let out = snap(&["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(listed.contains("c1") && listed.contains("k2"), "{listed}");
    // SIGTERM, with containerd connected: it stops, exit 0, and takes its socket away.
    let mut child = node.snapshotter.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the snapshotter did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status}: {}",
        node.log("snapshotter.log")
    );
    assert!(!node.path().join("imgfs.sock").exists());
}
