//! The sandbox plan: everything `imgfs run` will do, as plain data, decided before any
//! namespace exists — argv, environment, user, working directory, hostname, volumes, network
//! and writable layer — from the image config and the command line, with docker run's rules.
//! Unit-tested without root; [`super::exec`] carries it out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use crate::image::DEFAULT_PATH;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no command specified: the image has no Entrypoint or Cmd; give one after the image")]
    NoCommand,
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    UnknownGroup(String),
    #[error("bad volume '{spec}': {reason}")]
    Volume { spec: String, reason: String },
    #[error("bad environment entry '{0}': the name is empty")]
    Env(String),
    #[error("cannot read env file {path}: {reason}")]
    EnvFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Confine(#[from] super::confine::ConfineError),
    #[error(transparent)]
    Limits(#[from] super::confine::cgroup::LimitError),
    #[error(transparent)]
    Network(#[from] super::network::NetworkError),
}

/// The parts of an image config the runner applies (docker's `Config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
}

impl ImageConfig {
    /// Reads the config from the daemon's image inspect document.
    pub(crate) fn from_inspect_json(json: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        let config = &v["Config"];
        let strings = |key: &str| -> Vec<String> {
            config[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |key: &str| config[key].as_str().unwrap_or_default().to_string();
        Ok(ImageConfig {
            env: strings("Env"),
            cmd: strings("Cmd"),
            entrypoint: strings("Entrypoint"),
            working_dir: string("WorkingDir"),
            user: string("User"),
            hostname: string("Hostname"),
        })
    }
}

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub command: Vec<String>,
    /// `--entrypoint`: `Some("")` clears the image's.
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub hostname: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub read_only: bool,
    /// `--network`, and `--publish`, `--dns` and `--add-host` as given.
    pub network: super::network::Mode,
    pub network_flags: super::network::NetworkFlags,
    pub rw_dir: Option<PathBuf>,
    /// `--cap-add`, `--cap-drop`, `--privileged`, `--security-opt`.
    pub confine: super::confine::Request,
    /// `--memory`, `--memory-swap`, `--pids-limit`, `--cpus`, as given.
    pub limits: LimitFlags,
}

/// The resource limit flags as the user typed them.
#[derive(Clone, Debug, Default)]
pub struct LimitFlags {
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub pids_limit: Option<String>,
    pub cpus: Option<String>,
}

/// A host path bound into the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Canonical host path, resolved on the host before entering.
    pub host: PathBuf,
    /// Absolute path inside the sandbox, resolved inside the image root.
    pub guest: String,
    pub read_only: bool,
}

/// Everything the sandbox does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub index_path: PathBuf,
    /// The image's blobs, in the index's table order.
    pub blobs: Vec<PathBuf>,
    pub fsname: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub hostname: String,
    pub volumes: Vec<Volume>,
    pub read_only: bool,
    pub network: super::network::Network,
    pub rw_dir: Option<PathBuf>,
    pub interactive: bool,
    pub tty: bool,
    /// Set when the caller is not root: a user namespace maps root inside to this uid/gid.
    pub unprivileged: Option<(u32, u32)>,
    /// A live mount of the image to use as the lower layer instead of a new server.
    pub live_mount: Option<crate::serve::LiveMount>,
    pub confine: super::confine::Confinement,
    pub limits: super::confine::cgroup::Limits,
    /// Where compiled seccomp filters are kept between runs.
    pub seccomp_cache: PathBuf,
}

/// One `/etc/passwd` line.
struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some(Passwd {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or("/"),
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect());
        Some((
            *f.first()?,
            f.get(2)?.parse().ok()?,
            members.unwrap_or_default(),
        ))
    })
}

/// Resolved identity: uid, gid, supplementary groups, home.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `user[:group]` (names or numbers) against the image's passwd and group files,
/// as docker does: a numeric uid need not exist; a name must.
pub(crate) fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Identity, PlanError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| PlanError::UnknownUser(user.to_string()))?,
        ),
    };
    let uid = user
        .parse::<u32>()
        .unwrap_or_else(|_| entry.as_ref().map_or(0, |e| e.uid));
    let mut gid = entry.as_ref().map_or(0, |e| e.gid);
    let home = entry.as_ref().map_or("/", |e| e.home).to_string();
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(name, ..)| *name == g)
                .map(|(_, n, _)| n)
                .ok_or_else(|| PlanError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier KEY.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or_default().to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(entry);
}

/// `-e KEY=VALUE` sets; `-e KEY` copies the caller's value, or nothing when it has none.
fn apply_env_arg(
    env: &mut Vec<String>,
    arg: &str,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PlanError> {
    if arg.is_empty() || arg.starts_with('=') {
        return Err(PlanError::Env(arg.to_string()));
    }
    if arg.contains('=') {
        set_env(env, arg.to_string());
    } else if let Some(v) = host(arg) {
        set_env(env, format!("{arg}={v}"));
    }
    Ok(())
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter().any(|e| e.split('=').next() == Some(key))
}

/// Parses `HOST:GUEST[:ro|:rw]`, resolving HOST on the host now.
pub(crate) fn parse_volume(spec: &str) -> Result<Volume, PlanError> {
    let bad = |reason: &str| PlanError::Volume {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        [_, _, o] => return Err(bad(&format!("unknown option '{o}' (use ro or rw)"))),
        _ => return Err(bad("expected HOST:GUEST[:ro]")),
    };
    if !host.starts_with('/') {
        return Err(bad("the host path must be absolute"));
    }
    if !guest.starts_with('/') {
        return Err(bad("the path inside must be absolute"));
    }
    let host = std::fs::canonicalize(host).map_err(|e| bad(&format!("{host}: {e}")))?;
    Ok(Volume {
        host,
        guest: guest.to_string(),
        read_only,
    })
}

/// Inputs about the image that the plan needs.
pub(crate) struct ImageFacts<'a> {
    pub index_path: &'a Path,
    pub blobs: &'a [PathBuf],
    pub fsname: String,
    pub id: &'a str,
    pub config: &'a ImageConfig,
    pub passwd: &'a str,
    pub group: &'a str,
    /// The cache's own directory for compiled seccomp filters.
    pub seccomp_cache: &'a Path,
}

/// Decides everything, the way docker run would.
pub(crate) fn build(
    image: &ImageFacts<'_>,
    req: &Request,
    caller: (u32, u32),
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanError> {
    let config = image.config;
    let (entrypoint, image_cmd) = match &req.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (config.entrypoint.clone(), config.cmd.clone()),
    };
    let cmd = if req.command.is_empty() {
        image_cmd
    } else {
        req.command.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(PlanError::NoCommand);
    }

    let user_spec = req.user.clone().unwrap_or_else(|| config.user.clone());
    let id = resolve_user(&user_spec, image.passwd, image.group)?;
    let unprivileged = (caller.0 != 0).then_some(caller);
    if unprivileged.is_some() && (id.uid != 0 || id.gid != 0) {
        return Err(PlanError::Unsupported(format!(
            "user '{user_spec}' needs imgfs run as root: without root only root exists in the sandbox (mapped to you)"
        )));
    }

    let hostname = req
        .hostname
        .clone()
        .or_else(|| (!config.hostname.is_empty()).then(|| config.hostname.clone()))
        .unwrap_or_else(|| {
            let hex = image.id.strip_prefix("sha256:").unwrap_or("");
            if hex.len() >= 12 {
                hex[..12].to_string()
            } else {
                "imgfs".to_string()
            }
        });

    let mut env: Vec<String> = Vec::new();
    for e in &config.env {
        set_env(&mut env, e.clone());
    }
    if !has_env(&env, "PATH") {
        set_env(&mut env, format!("PATH={DEFAULT_PATH}"));
    }
    set_env(&mut env, format!("HOSTNAME={hostname}"));
    for path in &req.env_files {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::EnvFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            apply_env_arg(&mut env, line, host_env)?;
        }
    }
    for e in &req.env {
        apply_env_arg(&mut env, e, host_env)?;
    }
    if !has_env(&env, "HOME") {
        set_env(&mut env, format!("HOME={}", id.home));
    }
    if req.tty && !has_env(&env, "TERM") {
        set_env(&mut env, "TERM=xterm".into());
    }

    let cwd = req
        .workdir
        .clone()
        .or_else(|| (!config.working_dir.is_empty()).then(|| config.working_dir.clone()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(PlanError::Unsupported(format!(
            "the working directory '{cwd}' is not absolute"
        )));
    }
    let volumes = req
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<_, _>>()?;

    Ok(Plan {
        index_path: image.index_path.to_path_buf(),
        blobs: image.blobs.to_vec(),
        fsname: image.fsname.clone(),
        argv,
        env,
        cwd,
        uid: id.uid,
        gid: id.gid,
        groups: id.groups,
        hostname,
        volumes,
        read_only: req.read_only,
        network: super::network::Network::build(req.network, &req.network_flags)?,
        rw_dir: req.rw_dir.clone(),
        interactive: req.interactive,
        tty: req.tty,
        unprivileged,
        live_mount: None,
        confine: super::confine::build(&req.confine)?,
        limits: super::confine::cgroup::Limits::from_flags(
            req.limits.memory.as_deref(),
            req.limits.memory_swap.as_deref(),
            req.limits.pids_limit.as_deref(),
            req.limits.cpus.as_deref(),
        )?,
        seccomp_cache: image.seccomp_cache.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:app\nstaff:x:50:app,daemon\napp:x:1000:\n";

    fn facts(config: &ImageConfig) -> ImageFacts<'_> {
        ImageFacts {
            index_path: Path::new("/c/index"),
            blobs: &[],
            fsname: "imgfs:test".into(),
            id: "sha256:0123456789abcdef",
            config,
            passwd: PASSWD,
            group: GROUP,
            seccomp_cache: Path::new("/c/seccomp"),
        }
    }

    fn no_host(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn users_resolve_like_docker() {
        type Want = Result<(u32, u32, &'static [u32], &'static str), PlanError>;
        let cases: &[(&str, Want)] = &[
            ("", Ok((0, 0, &[0], "/root"))),
            ("app", Ok((1000, 1000, &[1000, 4, 50], "/home/app"))),
            ("1000", Ok((1000, 1000, &[1000, 4, 50], "/home/app"))),
            ("4242", Ok((4242, 0, &[0], "/"))),
            ("app:staff", Ok((1000, 50, &[50, 4], "/home/app"))),
            ("app:77", Ok((1000, 77, &[77, 4, 50], "/home/app"))),
            ("nobody", Err(PlanError::UnknownUser("nobody".into()))),
            (
                "app:nogroup",
                Err(PlanError::UnknownGroup("nogroup".into())),
            ),
        ];
        for (spec, want) in cases {
            let got = resolve_user(spec, PASSWD, GROUP)
                .map(|i| (i.uid, i.gid, i.groups.clone(), i.home.clone()));
            let want = match want {
                Ok((u, g, gs, h)) => Ok((*u, *g, gs.to_vec(), h.to_string())),
                Err(e) => Err(e.clone()),
            };
            assert_eq!(got, want, "{spec}");
        }
    }

    #[test]
    fn command_and_entrypoint_combine_like_docker() {
        let config = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let argv = |command: &[&str], entrypoint: Option<&str>| {
            let req = Request {
                command: command.iter().map(|s| s.to_string()).collect(),
                entrypoint: entrypoint.map(str::to_string),
                ..Default::default()
            };
            build(&facts(&config), &req, (0, 0), &no_host).map(|p| p.argv)
        };
        assert_eq!(argv(&[], None).unwrap(), ["/ep", "default"]);
        assert_eq!(argv(&["x", "y"], None).unwrap(), ["/ep", "x", "y"]);
        assert_eq!(argv(&[], Some("/other")).unwrap(), ["/other"]);
        assert_eq!(argv(&["a"], Some("")).unwrap(), ["a"]);
        assert_eq!(argv(&[], Some("")), Err(PlanError::NoCommand));
    }

    #[test]
    fn environment_layers() {
        let config = ImageConfig {
            env: vec!["A=image".into(), "B=image".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        let req = Request {
            env: vec!["B=cli".into(), "FROM_HOST".into(), "UNSET_ON_HOST".into()],
            tty: true,
            ..Default::default()
        };
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        let plan = build(&facts(&config), &req, (0, 0), &host).unwrap();
        let mut env = plan.env.clone();
        env.sort();
        assert_eq!(
            env,
            [
                "A=image",
                "B=cli",
                "FROM_HOST=h",
                "HOME=/home/app",
                "HOSTNAME=0123456789ab",
                &format!("PATH={DEFAULT_PATH}"),
                "TERM=xterm",
            ]
        );
        assert_eq!(
            (plan.cwd.as_str(), plan.uid, plan.gid),
            ("/srv", 1000, 1000)
        );
    }

    #[test]
    fn volumes_are_checked_on_the_host() {
        let v = parse_volume("/tmp:/work:ro").unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/work", true));
        for bad in [
            "rel:/x",
            "/tmp:rel",
            "/tmp:/x:maybe",
            "/nonexistent-imgfs:/x",
            "/tmp",
        ] {
            assert!(
                matches!(parse_volume(bad), Err(PlanError::Volume { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn unprivileged_callers_are_root_inside_only() {
        let config = ImageConfig {
            cmd: vec!["id".into()],
            ..Default::default()
        };
        let req = Request {
            user: Some("app".into()),
            ..Default::default()
        };
        assert!(matches!(
            build(&facts(&config), &req, (1000, 1000), &no_host),
            Err(PlanError::Unsupported(_))
        ));
        let plan = build(&facts(&config), &Request::default(), (1000, 1000), &no_host).unwrap();
        assert_eq!(plan.unprivileged, Some((1000, 1000)));
    }
}
