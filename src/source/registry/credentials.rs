//! Registry credentials: what proves who we are to one registry ([`Secret`]), found for a
//! host when its registry asks. They come from the files `docker login` and `podman login`
//! write — `auths[HOST].auth` (base64 `user:password`) or an `identitytoken` — or from the
//! credential helper such a file names (`credHelpers[HOST]`, `credsStore`), run as
//! `docker-credential-NAME get`. Parsing ([`lookup`], [`helper_output`]) is kept apart from
//! reading files and running helpers. A secret is never part of a message or a `Debug` print.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{HelperError, RegistryError, printable};

/// Largest credentials file or helper answer read: real ones are a few kB.
const MAX_CREDENTIALS_FILE: u64 = 1 << 20;
/// The name `docker login` files Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// What a credential helper prints when it has nothing for a host.
const HELPER_NOT_FOUND: &str = "credentials not found";
/// The user name a helper gives with an identity token instead of a password.
const HELPER_TOKEN_USER: &str = "<token>";

/// What proves who we are to one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), traded for access tokens.
    IdentityToken(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Secret {
    /// The `Authorization` value of HTTP basic authentication.
    pub(crate) fn basic_header(username: &str, password: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
    }
}

/// The parts of a `docker login` / `podman login` file imgfs reads.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    pub cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    pub creds_store: Option<String>,
}

#[derive(Default, serde::Deserialize)]
pub(crate) struct AuthEntry {
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub identitytoken: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// What a credentials file says about one registry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Secret(Secret),
    /// Ask `docker-credential-NAME`.
    Helper(String),
    Nothing,
}

/// Why an `auths` entry cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryError {
    NotBase64,
    NoColon,
}

/// A registry as credentials files name it: without a scheme or path, with Docker Hub's many
/// names made one.
pub(crate) fn normalize_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// What a credential helper is told the registry is called (`docker login` files Docker Hub
/// under its old index address).
pub(crate) fn helper_server(host: &str) -> String {
    if normalize_host(host) == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// What `config` holds for `host`: a helper named for the host, then the store for all hosts,
/// then an `auths` entry.
pub(crate) fn lookup(config: &ConfigFile, host: &str) -> Result<Found, EntryError> {
    let host = normalize_host(host);
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, v)| normalize_host(k) == host && !v.is_empty())
    {
        return Ok(Found::Helper(helper.clone()));
    }
    if let Some(store) = config.creds_store.as_ref().filter(|s| !s.is_empty()) {
        return Ok(Found::Helper(store.clone()));
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| normalize_host(k) == host)
        .map(|(_, v)| v)
    else {
        return Ok(Found::Nothing);
    };
    entry_secret(entry)
}

fn entry_secret(entry: &AuthEntry) -> Result<Found, EntryError> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Found::Secret(Secret::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let decoded = BASE64
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(EntryError::NotBase64)?;
        let (username, password) = decoded.split_once(':').ok_or(EntryError::NoColon)?;
        return Ok(Found::Secret(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Found::Secret(Secret::Basic {
                username: username.clone(),
                password: password.clone(),
            }))
        }
        _ => Ok(Found::Nothing),
    }
}

/// A credential helper's answer to `get`: `None` when it has nothing for the host.
pub(crate) fn helper_output(status_ok: bool, stdout: &[u8]) -> Result<Option<Secret>, HelperError> {
    let text = String::from_utf8_lossy(stdout);
    if !status_ok {
        if text.contains(HELPER_NOT_FOUND) {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            output: printable(text.trim()),
        });
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let answer: Answer =
        serde_json::from_slice(stdout).map_err(|cause| HelperError::NotJson { cause })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    if answer.username == HELPER_TOKEN_USER {
        return Ok(Some(Secret::IdentityToken(answer.secret)));
    }
    Ok(Some(Secret::Basic {
        username: answer.username,
        password: answer.secret,
    }))
}

/// The files credentials are looked for in, in order: the one given, `$REGISTRY_AUTH_FILE`,
/// podman's (`$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/UID/auth.json`
/// without that variable; then `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`), then
/// docker's `${DOCKER_CONFIG:-~/.docker}/config.json`, as podman and skopeo look. `env`
/// reads an environment variable; `uid` is the caller's.
pub(crate) fn credential_files(
    given: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    uid: u32,
) -> Vec<PathBuf> {
    if let Some(path) = given {
        return vec![path.to_path_buf()];
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut files = Vec::new();
    if let Some(f) = var("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    match var("XDG_RUNTIME_DIR") {
        Some(dir) => files.push(Path::new(&dir).join("containers/auth.json")),
        None => files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json"))),
    }
    match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(dir), _) => files.push(Path::new(&dir).join("containers/auth.json")),
        (None, Some(home)) => files.push(Path::new(&home).join(".config/containers/auth.json")),
        (None, None) => {}
    }
    match var("DOCKER_CONFIG") {
        Some(dir) => files.push(Path::new(&dir).join("config.json")),
        None => {
            if let Some(home) = var("HOME") {
                files.push(Path::new(&home).join(".docker/config.json"));
            }
        }
    }
    files
}

/// The credentials for `host`: from the first file that names it (a file given explicitly
/// must exist; the usual places may not).
pub(crate) fn credentials(
    host: &str,
    given: Option<&Path>,
) -> Result<Option<Secret>, RegistryError> {
    for path in credential_files(given, |v| std::env::var(v).ok(), crate::sys::euid()) {
        let config = match read_config(&path) {
            Ok(config) => config,
            Err(RegistryError::AuthFile { cause, .. })
                if cause.kind() == io::ErrorKind::NotFound && given.is_none() =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let found = lookup(&config, host).map_err(|e| RegistryError::AuthEntry {
            path: path.clone(),
            host: host.to_string(),
            why: match e {
                EntryError::NotBase64 => "its auth is not base64 text",
                EntryError::NoColon => "its auth is not user:password",
            },
        })?;
        let secret = match found {
            Found::Nothing => continue,
            Found::Secret(s) => Some(s),
            Found::Helper(name) => match run_helper(&name, host)? {
                Some(s) => Some(s),
                // The helper has nothing: a plain `auths` entry may still.
                None => config
                    .auths
                    .iter()
                    .find(|(k, _)| normalize_host(k) == normalize_host(host))
                    .and_then(|(_, e)| match entry_secret(e) {
                        Ok(Found::Secret(s)) => Some(s),
                        _ => None,
                    }),
            },
        };
        if secret.is_some() {
            log::debug!("credentials for {host} from {}", path.display());
            return Ok(secret);
        }
    }
    Ok(None)
}

fn read_config(path: &Path) -> Result<ConfigFile, RegistryError> {
    let io_err = |cause| RegistryError::AuthFile {
        path: path.to_path_buf(),
        cause,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io_err)?
        .take(MAX_CREDENTIALS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_CREDENTIALS_FILE {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_CREDENTIALS_FILE} bytes"),
        )));
    }
    serde_json::from_slice(&bytes).map_err(|cause| RegistryError::AuthJson {
        path: path.to_path_buf(),
        cause,
    })
}

/// Runs `docker-credential-NAME get` for `host`.
fn run_helper(name: &str, host: &str) -> Result<Option<Secret>, RegistryError> {
    run_helper_program(Path::new(&format!("docker-credential-{name}")), host)
}

fn run_helper_program(program: &Path, host: &str) -> Result<Option<Secret>, RegistryError> {
    let failed = |why: HelperError| RegistryError::Helper {
        helper: program.display().to_string(),
        host: host.to_string(),
        why,
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|cause| failed(HelperError::Run { cause }))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer, not by this write.
        let _ = stdin.write_all(helper_server(host).as_bytes());
    }
    let mut stdout = Vec::new();
    if let Some(out) = child.stdout.take() {
        out.take(MAX_CREDENTIALS_FILE)
            .read_to_end(&mut stdout)
            .map_err(|cause| failed(HelperError::Read { cause }))?;
    }
    let status = child
        .wait()
        .map_err(|cause| failed(HelperError::Wait { cause }))?;
    helper_output(status.success(), &stdout).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn decodes_auth_files() {
        // "alice:s3cr:et" — the password may hold a colon.
        let file = config(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="},
                "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjpldA=="},
                "http://reg.example:8443/v2/": {"identitytoken": "tok"},
                "plain.example": {"username": "u", "password": "p"},
                "empty.example": {},
                "bad.example": {"auth": "%%%"},
                "nocolon.example": {"auth": "YWxpY2U="}
            }}"#,
        );
        let basic = |u: &str, p: &str| {
            Ok(Found::Secret(Secret::Basic {
                username: u.into(),
                password: p.into(),
            }))
        };
        assert_eq!(lookup(&file, "registry-1.docker.io"), basic("hub", "hub"));
        assert_eq!(lookup(&file, "127.0.0.1:5000"), basic("alice", "s3cr:et"));
        assert_eq!(
            lookup(&file, "reg.example:8443"),
            Ok(Found::Secret(Secret::IdentityToken("tok".into())))
        );
        assert_eq!(lookup(&file, "plain.example"), basic("u", "p"));
        assert_eq!(lookup(&file, "empty.example"), Ok(Found::Nothing));
        assert_eq!(lookup(&file, "127.0.0.1:5001"), Ok(Found::Nothing));
        assert_eq!(lookup(&file, "bad.example"), Err(EntryError::NotBase64));
        assert_eq!(lookup(&file, "nocolon.example"), Err(EntryError::NoColon));
    }

    #[test]
    fn helpers_come_first() {
        let file = config(
            r#"{"auths": {"a.example": {"auth": "dTpw"}},
                "credHelpers": {"b.example": "pass"},
                "credsStore": "secretservice"}"#,
        );
        assert_eq!(lookup(&file, "b.example"), Ok(Found::Helper("pass".into())));
        assert_eq!(
            lookup(&file, "a.example"),
            Ok(Found::Helper("secretservice".into()))
        );
        assert_eq!(helper_server("registry-1.docker.io"), DOCKER_HUB_KEY);
        assert_eq!(helper_server("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn reads_helper_answers() {
        assert_eq!(
            helper_output(true, br#"{"ServerURL":"h","Username":"u","Secret":"p"}"#).unwrap(),
            Some(Secret::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            helper_output(true, br#"{"Username":"<token>","Secret":"t"}"#).unwrap(),
            Some(Secret::IdentityToken("t".into()))
        );
        assert_eq!(
            helper_output(false, b"credentials not found in native keychain\n").unwrap(),
            None
        );
        let failed = helper_output(false, b"boom").unwrap_err().to_string();
        assert_eq!(failed, "failed: boom");
        assert!(helper_output(true, b"nope").is_err());
    }

    #[test]
    fn runs_helpers() {
        let dir = std::env::temp_dir().join(format!("imgfs-helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let helper = dir.join("docker-credential-test");
        // Answers for the host it is told, so the test sees what went to stdin.
        std::fs::write(
            &helper,
            "#!/bin/sh\nread host\n[ \"$1\" = get ] || exit 2\ncase \"$host\" in\n\
             known.example) echo '{\"Username\":\"u\",\"Secret\":\"p\"}';;\n\
             *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let got = run_helper_program(&helper, "known.example").unwrap();
        assert!(matches!(got, Some(Secret::Basic { ref username, .. }) if username == "u"));
        assert_eq!(run_helper_program(&helper, "other.example").unwrap(), None);
        let missing = run_helper_program(&dir.join("docker-credential-none"), "x").unwrap_err();
        assert!(missing.to_string().contains("cannot run it"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_credential_files() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            credential_files(None, env(&[("HOME", "/h")]), 0),
            [
                PathBuf::from("/run/containers/0/auth.json"),
                PathBuf::from("/h/.config/containers/auth.json"),
                PathBuf::from("/h/.docker/config.json")
            ]
        );
        assert_eq!(
            credential_files(
                None,
                env(&[
                    ("HOME", "/h"),
                    ("DOCKER_CONFIG", "/d"),
                    ("REGISTRY_AUTH_FILE", "/a.json"),
                    ("XDG_RUNTIME_DIR", "/run/user/1000"),
                    ("XDG_CONFIG_HOME", "/c")
                ]),
                1000
            ),
            [
                PathBuf::from("/a.json"),
                PathBuf::from("/run/user/1000/containers/auth.json"),
                PathBuf::from("/c/containers/auth.json"),
                PathBuf::from("/d/config.json")
            ]
        );
        assert_eq!(
            credential_files(Some(Path::new("/given")), env(&[("HOME", "/h")]), 0),
            [PathBuf::from("/given")]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Secret::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?}", Secret::IdentityToken("hunter2".into())).contains("hunter2"));
        assert_eq!(
            Secret::basic_header("alice", "secret"),
            "Basic YWxpY2U6c2VjcmV0"
        );
    }
}
