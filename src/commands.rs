//! What each command does, in terms of the library's stages.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command as Process, Stdio};

use anyhow::{Context, Result, bail};

use imgfs::cache::Cache;
use imgfs::fs::ImageFs;
use imgfs::fs::serve::{self, ServeOptions};
use imgfs::index;
use imgfs::source::ImageRef;

use imgfs::runner::{self, exec, plan::Plan};

use crate::cli::{Cli, Command, MountArgs, Net, RunArgs, ServeArgs, UmountArgs};

/// What the background server prints on stdout once the mount answers.
const READY: &str = "ready";

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Mount(args) => mount(args),
        Command::Umount(args) => umount(args),
        Command::Serve(args) => serve_background(args),
        Command::Run(args) => run_sandbox(args),
        Command::Sandbox { plan } => Ok(exec::supervisor(&parse_plan(&plan)?)),
    }
}

fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(2, 8)
}

fn mount(args: MountArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    serve::check_mountpoint(&args.mountpoint)?;
    let image = ImageRef::parse(&args.image);
    let ready = index::prepare(&image, &cache)?;
    if !args.quiet {
        for w in &ready.warnings {
            eprintln!("imgfs: warning: {w}");
        }
    }
    let options = ServeOptions {
        fsname: format!("{}{}", serve::SOURCE_PREFIX, args.image),
        threads: args.threads.unwrap_or_else(default_threads),
    };
    if args.foreground {
        let fs = ImageFs::open(&ready.index_path, &ready.archive_path)?;
        let entry = ready.index_path.parent();
        serve::serve(fs, &args.mountpoint, &options, entry, || {})?;
        return Ok(0);
    }
    spawn_server(&ready, &args.mountpoint, &options)?;
    Ok(0)
}

/// Starts `imgfs __serve` detached (own process group, no terminal) and waits until it says
/// the mount is ready, or relays why it could not mount.
fn spawn_server(ready: &index::Ready, mountpoint: &Path, options: &ServeOptions) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the imgfs executable")?;
    let mut child = Process::new(exe)
        .arg("__serve")
        .arg("--index")
        .arg(&ready.index_path)
        .arg("--archive")
        .arg(&ready.archive_path)
        .arg("--fsname")
        .arg(&options.fsname)
        .arg("--threads")
        .arg(options.threads.to_string())
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the imgfs server")?;
    let stdout = child.stdout.take().context("no pipe to the imgfs server")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim_end() == READY {
        return Ok(()); // the server lives on; its stdout pipe closes when we exit
    }
    let status = child.wait().context("lost the imgfs server")?;
    let message = line
        .trim_end()
        .strip_prefix("error: ")
        .unwrap_or(line.trim_end());
    if message.is_empty() {
        bail!("the imgfs server exited ({status}) before the mount was ready");
    }
    bail!("{message}");
}

/// The detached server: reports readiness or the error on stdout, then serves.
fn serve_background(args: ServeArgs) -> Result<i32> {
    let options = ServeOptions {
        fsname: args.fsname,
        threads: args.threads,
    };
    let report = |text: &str| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    let result = ImageFs::open(&args.index, &args.archive)
        .map_err(anyhow::Error::from)
        .and_then(|fs| {
            let entry = args.index.parent();
            serve::serve(fs, &args.mountpoint, &options, entry, || report(READY))
                .map_err(anyhow::Error::from)
        });
    if let Err(e) = result {
        report(&format!("error: {}", message(&e)));
        return Ok(1);
    }
    Ok(0)
}

fn parse_plan(json: &str) -> Result<Plan> {
    serde_json::from_str(json).context("bad sandbox plan")
}

fn run_sandbox(args: RunArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let ready = index::prepare(&ImageRef::parse(&args.image), &cache)?;
    for w in &ready.warnings {
        log::warn!("{w}");
    }
    let request = runner::plan::Request {
        command: args.command,
        entrypoint: args.entrypoint,
        env: args.env,
        env_files: args.env_file,
        workdir: args.workdir,
        user: args.user,
        volumes: args.volume,
        hostname: args.hostname,
        interactive: args.interactive,
        tty: args.tty,
        read_only: args.read_only,
        net_host: args.net == Net::Host,
        rw_dir: args.rw_dir,
    };
    let fsname = format!("{}{}", serve::SOURCE_PREFIX, args.image);
    let plan = runner::make_plan(&ready, fsname, &request)?;
    Ok(runner::supervise(&plan)?)
}

fn umount(args: UmountArgs) -> Result<i32> {
    match serve::find_mount(&args.mountpoint) {
        Some(m) if m.is_imgfs() => {}
        Some(m) => bail!(
            "{}: not an imgfs mount (it is {})",
            args.mountpoint.display(),
            m.fstype
        ),
        None => bail!("{}: not mounted", args.mountpoint.display()),
    }
    serve::unmount(&args.mountpoint, args.lazy)?;
    Ok(0)
}

/// The error and its causes on one line, leaving out a cause the message already quotes.
pub fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
