//! What each command does, in terms of the library's stages.

use anyhow::{Context, Result, bail};

use imgfs::cache::Cache;
use imgfs::fs::ImageFs;
use imgfs::fs::serve::{self, ServeOptions};
use imgfs::index;
use imgfs::source::ImageRef;

use imgfs::runner::{self, exec, plan::Plan};

use crate::cli::{Cli, Command, MountArgs, Net, RunArgs, ServeArgs, UmountArgs};

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Mount(args) => mount(args),
        Command::Umount(args) => umount(args),
        Command::Serve(args) => serve_background(args),
        Command::Run(args) => run_sandbox(args),
        Command::Sandbox { plan } => Ok(exec::supervisor(&parse_plan(&plan)?)),
    }
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
        threads: args.threads.unwrap_or_else(serve::default_threads),
        idle_exit: None,
    };
    if args.foreground {
        let fs = ImageFs::open(&ready.index_path, &ready.archive_path)?;
        serve::serve(fs, &ready.index_path, &args.mountpoint, &options, || {})?;
        return Ok(0);
    }
    serve::spawn_detached(&serve::Served {
        index: &ready.index_path,
        archive: &ready.archive_path,
        mountpoint: &args.mountpoint,
        options: &options,
    })
    .map_err(anyhow::Error::msg)?;
    Ok(0)
}

/// The detached server: reports readiness or the error on stdout, then serves.
fn serve_background(args: ServeArgs) -> Result<i32> {
    let options = ServeOptions {
        fsname: args.fsname,
        threads: args.threads,
        idle_exit: args.idle_exit_ms.map(std::time::Duration::from_millis),
    };
    let result = ImageFs::open(&args.index, &args.archive)
        .map_err(anyhow::Error::from)
        .and_then(|fs| {
            serve::serve(
                fs,
                &args.index,
                &args.mountpoint,
                &options,
                serve::report_ready,
            )
            .map_err(anyhow::Error::from)
        });
    if let Err(e) = result {
        serve::report(&format!("error: {}", message(&e)));
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
    let plan = runner::make_plan(&ready, fsname, &request, args.linger)?;
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
