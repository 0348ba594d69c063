//! Registries for the tests: Debian's docker-registry on a free loopback port with storage of
//! its own (plain, htpasswd or TLS), filled by skopeo, and tests/fixtures/registry-front.py in
//! front of one (token authentication, slowness, a death mid-blob, ranges answered in odd
//! ways, counted bytes). Each is a child process killed when its handle is dropped.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{TempDir, fixtures_dir, free_port, lock, repo_root, require, run, sha256_file, text};

/// An HTTP response: status, headers (lowercase names) and body.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.0 GET of `path` from `addr` (HOST:PORT); None when nothing answers.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpReply> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpReply {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

/// Base64 (standard alphabet, padded), for the `auth` field of credential files.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A credentials file naming `user:password` for `registry` (HOST:PORT): the format of both
/// `~/.docker/config.json` and containers' `$REGISTRY_AUTH_FILE`.
pub fn write_auth_file(path: &Path, registry: &str, user: &str, password: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    let auth = base64(format!("{user}:{password}").as_bytes());
    fs::write(
        path,
        format!("{{\"auths\":{{\"{registry}\":{{\"auth\":\"{auth}\"}}}}}}\n"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `skopeo copy` with `args`; fails the test with skopeo's error.
#[track_caller]
pub fn skopeo_copy(args: &[&str]) {
    require(
        Path::new("/usr/bin/skopeo").exists(),
        "Debian's skopeo package (contrib/setup.sh installs it)",
    );
    let out = run(Command::new("skopeo").args(["copy", "-q"]).args(args));
    assert!(
        out.status.success(),
        "skopeo copy {args:?}: {}",
        text(&out.stderr)
    );
}

/// Debian's docker-registry (2.8) on a free loopback port with its own storage directory;
/// killed when dropped.
pub struct Registry {
    child: std::process::Child,
    /// HOST:PORT it listens on.
    pub addr: String,
    dir: TempDir,
    creds: Option<(String, String)>,
    tls: bool,
}

/// How a [`Registry`] is started.
#[derive(Default)]
pub struct RegistryConfig {
    /// Asks for `user:password` (HTTP basic, checked against an htpasswd file: registry 2.8
    /// takes bcrypt entries only).
    pub htpasswd: Option<(String, String)>,
    /// Speaks HTTPS only, with a self-signed certificate for 127.0.0.1.
    pub tls: bool,
    /// Starts on a copy of this storage tree (another registry's [`Registry::storage`]).
    pub storage_from: Option<PathBuf>,
    /// Speaks HTTPS only and asks clients for a certificate signed by its CA
    /// ([`Registry::client_cert`]).
    pub client_certs: bool,
}

impl Registry {
    /// A registry anyone may read and write.
    #[track_caller]
    pub fn start() -> Registry {
        Registry::launch(RegistryConfig::default())
    }

    /// A registry that asks for `user:password`.
    #[track_caller]
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::launch(RegistryConfig {
            htpasswd: Some((user.to_string(), password.to_string())),
            ..RegistryConfig::default()
        })
    }

    /// A registry as `config` says.
    #[track_caller]
    pub fn launch(config: RegistryConfig) -> Registry {
        require(
            Path::new("/usr/bin/docker-registry").exists(),
            "Debian's docker-registry package (contrib/setup.sh installs it)",
        );
        let dir = TempDir::new("imgfs-registry");
        let mut extra = String::new();
        if let Some((user, password)) = &config.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output();
            let out = match out {
                Ok(o) if o.status.success() => o.stdout,
                _ => panic!(
                    "REQUIREMENT NOT MET: htpasswd -B (apache2-utils; contrib/setup.sh installs it)"
                ),
            };
            let file = dir.path().join("htpasswd");
            fs::write(&file, out).expect("write htpasswd");
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imgfs-test\n    path: {}\n",
                file.display()
            ));
        }
        let mut tls = String::new();
        if config.tls || config.client_certs {
            // A CA of the test's own, the registry's certificate signed by it (for 127.0.0.1),
            // and a client certificate the registry asks for with `client_certs`.
            let d = dir.path();
            openssl(
                &[
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ],
                &[
                    "-subj",
                    "/CN=imgfs-test-ca",
                    "-keyout",
                    &p(d, "ca.key"),
                    "-out",
                    &p(d, "ca.pem"),
                ],
            );
            for (name, ext) in [
                (
                    "cert",
                    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
                ),
                (
                    "client",
                    "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
                ),
            ] {
                fs::write(d.join(format!("{name}.ext")), ext).unwrap();
                openssl(
                    &["req", "-newkey", "rsa:2048", "-nodes"],
                    &[
                        "-subj",
                        &format!("/CN=imgfs-test-{name}"),
                        "-keyout",
                        &p(d, &format!("{name}.key")),
                        "-out",
                        &p(d, &format!("{name}.csr")),
                    ],
                );
                openssl(
                    &["x509", "-req", "-days", "1", "-CAcreateserial"],
                    &[
                        "-in",
                        &p(d, &format!("{name}.csr")),
                        "-CA",
                        &p(d, "ca.pem"),
                        "-CAkey",
                        &p(d, "ca.key"),
                        "-extfile",
                        &p(d, &format!("{name}.ext")),
                        "-out",
                        &p(d, &format!("{name}.pem")),
                    ],
                );
            }
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                p(d, "cert.pem"),
                p(d, "cert.key")
            );
            if config.client_certs {
                tls.push_str(&format!("    clientcas:\n      - {}\n", p(d, "ca.pem")));
            }
        }
        if let Some(from) = &config.storage_from {
            copy_tree(from, &dir.path().join("data"));
        }
        // A port found free may be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            fs::write(
                dir.path().join("config.yml"),
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: {addr}\n{tls}{extra}",
                    dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let mut child = spawn_registry(dir.path());
            if wait_ready(
                &mut child,
                &addr,
                config.tls || config.client_certs,
                dir.path(),
            ) {
                return Registry {
                    child,
                    addr,
                    dir,
                    creds: config.htpasswd,
                    tls: config.tls || config.client_certs,
                };
            }
        }
        panic!(
            "docker-registry did not start: {}",
            fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `docker://HOST:PORT/NAME` for `name` (NAME[:TAG|@DIGEST]).
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// Pushes a skopeo source (`oci:DIR:REF`, `oci-archive:FILE`, ...) as `name` (NAME:TAG),
    /// every platform of an index included; returns [`Registry::reference`] of it.
    #[track_caller]
    pub fn push(&self, source: &str, name: &str) -> String {
        let dest = self.reference(name);
        // --preserve-digests: skopeo would otherwise reuse a blob of the same content in
        // another compression that this registry already holds (say zstd:chunked for gzip).
        let mut args = vec!["--all", "--preserve-digests", "--dest-tls-verify=false"];
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        if let Some(c) = &creds {
            args.extend(["--dest-creds", c.as_str()]);
        }
        args.extend([source, dest.as_str()]);
        skopeo_copy(&args);
        dest
    }

    /// The CA that signed the certificate of a registry speaking HTTPS (and its clients').
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client certificate and its key, signed by [`Registry::ca_cert`].
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }

    /// The storage root (its `docker/registry/v2/...` tree).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding the blob `digest` (sha256:HEX) in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// What the registry logged so far (its access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Starts the registry again after [`kill`](Self::kill), on the same port with the same
    /// storage.
    #[track_caller]
    pub fn restart(&mut self) {
        let start = std::time::Instant::now();
        loop {
            self.child = spawn_registry(self.dir.path());
            if wait_ready(&mut self.child, &self.addr, self.tls, self.dir.path()) {
                return;
            }
            // The port is not free yet: try again.
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "the registry did not come back on {}",
                self.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Stops the registry now (as if it died).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a seeded registry's storage holds, as a name: the storage is made again when any of
/// what it was made from changes (the layout pushed, what the caller says, and for a seed
/// that imgfs fills, the imgfs build).
pub struct Seed {
    /// Seeds of a family are filled by the same code.
    family: String,
    /// The imgfs build, for a family whose seeds imgfs fills: the family's seeds of other
    /// builds are of no more use.
    build: Option<String>,
    /// What the caller gave, hashed.
    what: String,
}

impl Seed {
    /// A seed of `family` made from the OCI layout `layout` (its index.json) and `what`.
    #[track_caller]
    pub fn of_layout(family: &str, layout: &Path, what: &str) -> Seed {
        use sha2::Digest as _;
        let index = fs::read(layout.join("index.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", layout.join("index.json").display()));
        let mut h = sha2::Sha256::new();
        h.update(&index);
        h.update(what.as_bytes());
        let hex: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Seed {
            family: family.to_string(),
            build: None,
            what: hex,
        }
    }

    /// The same, for a seed that the imgfs under test fills (an index it pushes).
    pub fn of_this_build(self) -> Seed {
        Seed {
            build: Some(imgfs_build()),
            ..self
        }
    }

    fn name(&self) -> String {
        match &self.build {
            Some(b) => format!("{}-{b}-{}", self.family, self.what),
            None => format!("{}-{}", self.family, self.what),
        }
    }
}

/// The first 16 hex digits of the sha256 of the imgfs binary under test.
fn imgfs_build() -> String {
    static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILD
        .get_or_init(|| {
            let digest = sha256_file(Path::new(env!("CARGO_BIN_EXE_imgfs")));
            digest["sha256:".len().."sha256:".len() + 16].to_string()
        })
        .clone()
}

impl Registry {
    /// A registry of its own (as `config` says) whose storage starts as a copy of the seed
    /// `seed`, and what `fill` said when it filled the seed: the first test to need a seed
    /// starts a registry, lets `fill` push to it, and keeps its storage under
    /// `$IMGFS_FIXTURES/registry-seeds` while tests use it (a week unused, it goes). Pushes
    /// take seconds that the tests do not test.
    #[track_caller]
    pub fn seeded(
        seed: &Seed,
        config: RegistryConfig,
        fill: impl FnOnce(&Registry) -> String,
    ) -> (Registry, String) {
        let seeds = fixtures_dir().join("registry-seeds");
        let dir = seeds.join(seed.name());
        {
            let _filling = lock::exclusive(&format!("seed-{}", seed.name()));
            if !dir.join("complete").exists() {
                fs::create_dir_all(&seeds).unwrap();
                remove_unused_seeds(&seeds);
                if let Some(build) = &seed.build {
                    // The family's seeds of other builds are of no more use.
                    let family = format!("{}-", seed.family);
                    let ours = format!("{family}{build}-");
                    for e in fs::read_dir(&seeds).unwrap().flatten() {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if n.starts_with(&family) && !n.starts_with(&ours) {
                            let _ = fs::remove_dir_all(e.path());
                        }
                    }
                }
                let mut registry = Registry::start();
                let note = fill(&registry);
                registry.kill();
                let partial = seeds.join(format!("{}.partial", seed.name()));
                let _ = fs::remove_dir_all(&partial);
                fs::create_dir_all(&partial).unwrap();
                fs::write(partial.join("note"), note).unwrap();
                copy_tree(&registry.storage(), &partial.join("data"));
                let _ = fs::remove_dir_all(&dir);
                fs::rename(&partial, &dir).unwrap();
                fs::write(dir.join("complete"), b"").unwrap();
            }
        }
        // Its last use, for [`remove_unused_seeds`].
        let _ = File::options()
            .append(true)
            .open(dir.join("complete"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        let registry = Registry::launch(RegistryConfig {
            storage_from: Some(dir.join("data")),
            ..config
        });
        let note = fs::read_to_string(dir.join("note")).unwrap();
        (registry, note)
    }
}

/// How long a seed no test used is kept (the layouts it was pushed from have changed since,
/// most likely).
const SEED_UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Removes the seeds under `seeds` that no test used for [`SEED_UNUSED_FOR`].
fn remove_unused_seeds(seeds: &Path) {
    let Ok(entries) = fs::read_dir(seeds) else {
        return;
    };
    for e in entries.flatten() {
        let used = fs::metadata(e.path().join("complete")).and_then(|m| m.modified());
        if used.is_ok_and(|t| t.elapsed().is_ok_and(|age| age > SEED_UNUSED_FOR)) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl Registry {
    /// A registry of its own, as `config` starts it, holding `reference` of the OCI layout
    /// `layout` as `name` (NAME:TAG, pushed by skopeo into a seed: see [`Registry::seeded`]);
    /// the image's [`Registry::reference`].
    #[track_caller]
    pub fn with_image(
        layout: &Path,
        reference: &str,
        name: &str,
        config: RegistryConfig,
    ) -> (Registry, String) {
        let seed = Seed::of_layout("image", layout, &format!("{reference} {name}"));
        let (registry, _) = Registry::seeded(&seed, config, |r| {
            r.push(&format!("oci:{}:{reference}", layout.display()), name);
            String::new()
        });
        let source = registry.reference(name);
        (registry, source)
    }
}

/// `cp -a FROM TO`.
#[track_caller]
fn copy_tree(from: &Path, to: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(
        out.status.success(),
        "cp -a {}: {}",
        from.display(),
        text(&out.stderr)
    );
}

/// Waits until the registry `child` answers on `addr`, or ends (its port was taken): whether
/// it answers.
#[track_caller]
fn wait_ready(child: &mut std::process::Child, addr: &str, tls: bool, dir: &Path) -> bool {
    let start = std::time::Instant::now();
    loop {
        if tls {
            if std::net::TcpStream::connect(addr).is_ok() {
                return true;
            }
        } else if let Some(reply) = http_get(addr, "/v2/", &[]) {
            assert!(
                reply.status == 200 || reply.status == 401,
                "the registry on {addr} answers /v2/ with {}",
                reply.status
            );
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the registry does not answer on {addr}: {}",
            fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// docker-registry serving `dir/config.yml`, logging to `dir/registry.log`.
fn spawn_registry(dir: &Path) -> std::process::Child {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("registry log");
    Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        // Each blob request reads through a fresh 4 MiB buffer: with Go's default GC pace the
        // registry spends more time collecting than serving the many small ranges lazy
        // mounts ask for.
        .env("GOGC", "400")
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("start docker-registry")
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`Front`] adds in front of a registry (see tests/fixtures/registry-front.py).
#[derive(Clone, Debug, Default)]
pub struct FrontOptions {
    /// Token authentication with these basic credentials at `/token`.
    pub credentials: Option<(String, String)>,
    /// Seconds a token stays valid.
    pub token_ttl: Option<f64>,
    /// Wait between checking a manifest request's token and answering it.
    pub manifest_delay_ms: u64,
    /// Most bytes per second of a response body (0: no limit).
    pub rate: u64,
    /// Exit abruptly once this many bytes of blob bodies were sent in all (0: never).
    pub die_after: u64,
    /// How ranged blob requests are answered: `ignore`, `single-only`, `shuffle`, `coalesce`
    /// or `outside` (see the script).
    pub ranges: Option<String>,
    /// Redirect blobs to a second port with signed links that expire.
    pub storage: bool,
    /// The first this many storage links have expired already.
    pub expired_links: u32,
}

/// tests/fixtures/registry-front.py in front of a registry: token authentication, slowness
/// or a death mid-blob; killed when dropped.
pub struct Front {
    child: std::process::Child,
    /// HOST:PORT it listens on.
    pub addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Front {
    #[track_caller]
    pub fn start(backend: &str, opts: &FrontOptions) -> Front {
        let python = ["/usr/bin/python3", "/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let dir = TempDir::new("imgfs-front");
        let port_file = dir.path().join("port");
        let log = dir.path().join("front.log");
        let mut cmd = Command::new(python);
        cmd.arg(repo_root().join("tests/fixtures/registry-front.py"))
            .args(["--backend", backend, "--port-file"])
            .arg(&port_file)
            .arg("--log")
            .arg(&log);
        if let Some((user, password)) = &opts.credentials {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some(ttl) = opts.token_ttl {
            cmd.args(["--token-ttl", &ttl.to_string()]);
        }
        cmd.args(["--manifest-delay-ms", &opts.manifest_delay_ms.to_string()])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--die-after", &opts.die_after.to_string()]);
        if let Some(mode) = &opts.ranges {
            cmd.args(["--ranges", mode]);
        }
        if opts.storage {
            cmd.args([
                "--storage",
                "--expired-links",
                &opts.expired_links.to_string(),
            ]);
        }
        let stderr = File::create(dir.path().join("front.err")).expect("front stderr");
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("REQUIREMENT NOT MET: python3 for the registry front: {e}"));
        let start = std::time::Instant::now();
        let port = loop {
            if let Ok(p) = fs::read_to_string(&port_file) {
                break p.trim().to_string();
            }
            if child.try_wait().ok().flatten().is_some() || start.elapsed().as_secs() > 20 {
                panic!(
                    "the registry front did not start: {}",
                    fs::read_to_string(dir.path().join("front.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Front {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// The lines it logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many logged lines start with `prefix` (`token `, `401 `, `blob-start `, `die `).
    pub fn count(&self, prefix: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path` in `dir`, as text for a command line.
fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Runs `openssl` with `args` then `more`; fails the test when it fails.
#[track_caller]
fn openssl(args: &[&str], more: &[&str]) {
    let out = Command::new("openssl").args(args).args(more).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("REQUIREMENT NOT MET: openssl (Debian's openssl package): {e}"),
    }
}
