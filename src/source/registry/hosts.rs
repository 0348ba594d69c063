//! Where a registry is reached and how, as containerd and docker configure it: a directory
//! per registry host (`HOST[:PORT]`, `docker.io` for Docker Hub, `_default` for any other) in
//! containerd's hosts directory (`/etc/containerd/certs.d`, or `--hosts-dir`), holding a
//! `hosts.toml` — mirrors tried before the registry itself, each with its capabilities, CA
//! certificates, client certificates, `skip_verify`, and plain HTTP by an `http://` URL — or,
//! as docker's `/etc/docker/certs.d/HOST/` does, certificate files alone (`*.crt` CAs,
//! `*.cert` with its `*.key`).
//!
//! Parsing is apart from the file system ([`parse`]); [`endpoints`] finds the file. A client
//! takes the first endpoint that can both resolve and pull (one client reads manifests and
//! blobs alike); `override_path` and headers are not supported, and a host that asks for
//! them is skipped with a warning.

use std::path::{Path, PathBuf};

/// containerd's directory of registry host configurations.
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// docker's directory of registry certificates.
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";
const HOSTS_FILE: &str = "hosts.toml";
/// Largest hosts.toml read.
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// Why a registry's host configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// One place a registry is reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `SCHEME://HOST[:PORT][/PATH]`, to which `/v2/…` is appended.
    pub url: String,
    pub pull: bool,
    pub resolve: bool,
    /// CA certificates to trust (PEM files), besides the usual roots.
    pub ca: Vec<PathBuf>,
    /// Client certificates: a certificate and its key (`None` when both are in one file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Accept any certificate.
    pub skip_verify: bool,
}

impl Endpoint {
    /// The registry itself, as a client reaches it without configuration.
    fn server(host: &str) -> Endpoint {
        Endpoint {
            url: format!("https://{host}"),
            pull: true,
            resolve: true,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: false,
        }
    }

    /// Whether it is reached over plain HTTP.
    pub fn plain_http(&self) -> bool {
        self.url.starts_with("http://")
    }
}

/// The directory name of registry `host` (as references spell it) in a hosts directory.
fn dir_name(host: &str) -> &str {
    match host {
        "registry-1.docker.io" | "index.docker.io" => "docker.io",
        h => h,
    }
}

/// The endpoints of registry `host` in the order they are tried, as `hosts_dir` (else
/// containerd's, then docker's directory) configures them; `None` when nothing does.
pub fn endpoints(
    host: &str,
    hosts_dir: Option<&Path>,
) -> Result<Option<Vec<Endpoint>>, HostsError> {
    let roots: Vec<PathBuf> = match hosts_dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec![CONTAINERD_HOSTS_DIR.into(), DOCKER_CERTS_DIR.into()],
    };
    for root in roots {
        for name in [dir_name(host), "_default"] {
            let dir = root.join(name);
            if !dir.is_dir() {
                continue;
            }
            let file = dir.join(HOSTS_FILE);
            return match read_small(&file) {
                Ok(text) => parse(host, &file, &text).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    certificates(host, &dir).map(|e| Some(vec![e]))
                }
                Err(cause) => Err(HostsError::Io { path: file, cause }),
            };
        }
    }
    Ok(None)
}

fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_HOSTS_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// A `hosts.toml` at `file` for registry `host`: its `[host."URL"]` tables in order, then
/// the registry itself (`server`, else `https://HOST`) with the top-level fields.
pub fn parse(host: &str, file: &Path, text: &str) -> Result<Vec<Endpoint>, HostsError> {
    let bad = |why: String| HostsError::Invalid {
        path: file.to_path_buf(),
        why,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| bad("`host` is not a table".into()))?;
        for (url, fields) in hosts {
            let fields = fields
                .as_table()
                .ok_or_else(|| bad(format!("host {url:?} is not a table")))?;
            if let Some(e) = endpoint(url, fields, file)? {
                out.push(e);
            }
        }
    }
    let server = match table.get("server") {
        Some(s) => s
            .as_str()
            .ok_or_else(|| bad("`server` is not a string".into()))?
            .to_string(),
        None => Endpoint::server(host).url,
    };
    if let Some(e) = endpoint(&server, &table, file)? {
        out.push(e);
    }
    Ok(out)
}

/// The endpoint at `url` with `fields`; `None` for one imgfs cannot use as configured.
fn endpoint(url: &str, fields: &toml::Table, file: &Path) -> Result<Option<Endpoint>, HostsError> {
    let bad = |why: String| HostsError::Invalid {
        path: file.to_path_buf(),
        why,
    };
    let dir = file.parent().unwrap_or(Path::new("/"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad(format!("{url:?} is not an http:// or https:// URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad(format!("{url:?} names no host")));
    }
    let flag = |name: &str| match fields.get(name) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad(format!("{url}: `{name}` is not true or false"))),
    };
    if flag("override_path")? {
        log::warn!("registry host {url}: override_path is not supported; skipped");
        return Ok(None);
    }
    let strings = |name: &str| -> Result<Vec<String>, HostsError> {
        match fields.get(name) {
            None => Ok(Vec::new()),
            Some(toml::Value::String(s)) => Ok(vec![s.clone()]),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        bad(format!(
                            "{url}: `{name}` holds a value that is not a string"
                        ))
                    })
                })
                .collect(),
            Some(_) => Err(bad(format!(
                "{url}: `{name}` is not a string or a list of them"
            ))),
        }
    };
    let capabilities = match fields.get("capabilities") {
        None => vec![
            "pull".to_string(),
            "resolve".to_string(),
            "push".to_string(),
        ],
        Some(_) => strings("capabilities")?,
    };
    if let Some(c) = capabilities
        .iter()
        .find(|c| !["pull", "resolve", "push"].contains(&c.as_str()))
    {
        return Err(bad(format!("{url}: unknown capability {c:?}")));
    }
    let ca = strings("ca")?.iter().map(|p| dir.join(p)).collect();
    let client = match fields.get("client") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![(dir.join(s), None)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok((dir.join(s), None)),
                toml::Value::Array(pair) => match pair.as_slice() {
                    [toml::Value::String(c)] => Ok((dir.join(c), None)),
                    [toml::Value::String(c), toml::Value::String(k)] => {
                        Ok((dir.join(c), Some(dir.join(k))))
                    }
                    _ => Err(bad(format!("{url}: a `client` pair is not [CERT, KEY]"))),
                },
                _ => Err(bad(format!(
                    "{url}: `client` holds a value that is not a path"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(format!(
                "{url}: `client` is not a path or a list of them"
            )));
        }
    };
    if fields.contains_key("header") {
        log::warn!("registry host {url}: headers are not supported; sent without them");
    }
    let trimmed = url.trim_end_matches('/');
    let url = trimmed.strip_suffix("/v2").unwrap_or(trimmed).to_string();
    Ok(Some(Endpoint {
        url,
        pull: capabilities.iter().any(|c| c == "pull"),
        resolve: capabilities.iter().any(|c| c == "resolve"),
        ca,
        client,
        skip_verify: flag("skip_verify")?,
    }))
}

/// The registry itself with the certificates of a docker-style directory: `*.crt` CAs,
/// each `NAME.cert` with its `NAME.key`.
fn certificates(host: &str, dir: &Path) -> Result<Endpoint, HostsError> {
    let io = |cause| HostsError::Io {
        path: dir.to_path_buf(),
        cause,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut e = Endpoint::server(host);
    for p in names {
        match p.extension().and_then(|x| x.to_str()) {
            Some("crt") => e.ca.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(HostsError::Invalid {
                        path: p,
                        why: "a client certificate without its .key".into(),
                    });
                }
                e.client.push((p, Some(key)));
            }
            _ => {}
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/containerd/certs.d/reg.example:5000/hosts.toml";

    fn parsed(text: &str) -> Result<Vec<Endpoint>, HostsError> {
        parse("reg.example:5000", Path::new(FILE), text)
    }

    #[test]
    fn mirrors_come_first_with_their_settings() {
        let got = parsed(
            r#"
server = "https://reg.example:5000"
ca = "ca.pem"

[host."http://mirror.local:5001/v2"]
  capabilities = ["pull", "resolve"]

[host."https://pull-only.example"]
  capabilities = ["pull"]
  client = [["/c/client.cert", "/c/client.key"]]
  skip_verify = true
"#,
        )
        .unwrap();
        let dir = Path::new("/etc/containerd/certs.d/reg.example:5000");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].url, "http://mirror.local:5001");
        assert!(got[0].plain_http() && got[0].pull && got[0].resolve);
        assert_eq!(got[1].url, "https://pull-only.example");
        assert!(got[1].pull && !got[1].resolve && got[1].skip_verify);
        assert_eq!(
            got[1].client,
            [(
                PathBuf::from("/c/client.cert"),
                Some(PathBuf::from("/c/client.key"))
            )]
        );
        assert_eq!(got[2].url, "https://reg.example:5000");
        assert_eq!(got[2].ca, [dir.join("ca.pem")]);
        assert!(got[2].pull && got[2].resolve && !got[2].skip_verify);
    }

    #[test]
    fn no_server_means_the_registry_itself() {
        let got = parsed("").unwrap();
        assert_eq!(got, [Endpoint::server("reg.example:5000")]);
        assert_eq!(dir_name("registry-1.docker.io"), "docker.io");
    }

    #[test]
    fn bad_files_say_why() {
        for (text, why) in [
            ("server = 5", "`server` is not a string"),
            ("[host.\"ftp://x\"]", "not an http:// or https:// URL"),
            (
                "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
                "unknown capability",
            ),
            (
                "[host.\"https://x\"]\nskip_verify = \"yes\"",
                "not true or false",
            ),
            ("[host.\"https://x\"]\nclient = [[1]]", "not [CERT, KEY]"),
            ("host = [", ""),
        ] {
            match parsed(text) {
                Err(HostsError::Invalid { path, why: got }) => {
                    assert_eq!(path, Path::new(FILE));
                    assert!(got.contains(why), "{text:?}: {got}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // A host asking for what is not supported is skipped, not an error.
        let got = parsed("[host.\"https://x/p\"]\noverride_path = true").unwrap();
        assert_eq!(got.len(), 1);
    }
}
