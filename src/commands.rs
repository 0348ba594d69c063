//! What each command does, in terms of the library's stages.

use std::path::Path;

mod mounts;
mod snapshotter;

use anyhow::{Context, Result, bail};

use imgfs::cache::Cache;
use imgfs::cache::Removal;
use imgfs::fs::ImageFs;
use imgfs::image::{ImageReader, Owners};
use imgfs::inspect::{self, Image, catalog};
use imgfs::prepare;
use imgfs::serve::{self, ServeOptions};
use imgfs::source::ImageRef;

use imgfs::runner::{self, exec, plan::Plan};

use crate::cli::{
    CacheArgs, CatArgs, Cli, Command, FindArgs, ImagesArgs, IndexCommand, IndexPushArgs,
    InspectArgs, LsArgs, MountArgs, Net, PruneArgs, RmArgs, RunArgs, ServeArgs, StatArgs,
    UmountArgs,
};

pub fn run(cli: Cli) -> Result<i32> {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Mount(args) => mount(args),
        Command::Umount(args) => umount(args),
        Command::Serve(args) => serve_background(args),
        Command::Run(args) => run_sandbox(*args),
        Command::Ls(args) => ls(args),
        Command::Cat(args) => cat(args),
        Command::Stat(args) => stat(args),
        Command::Find(args) => find(args),
        Command::Inspect(args) => inspect_image(args),
        Command::Images(args) => images(args),
        Command::Rm(args) => rm(args),
        Command::Prune(args) => prune(args),
        Command::Mounts(args) => mounts::mounts(args),
        Command::Snapshotter(args) => snapshotter::snapshotter(args),
        Command::Index(IndexCommand::Push(args)) => index_push(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            with_output(|out, _| {
                clap_complete::generate(shell, &mut cmd, "imgfs", out);
                Ok(0)
            })
        }
        Command::Manpage { dir } => manpage(dir.as_deref()),
        Command::Sandbox { plan } => Ok(exec::supervisor(&parse_plan(&plan)?, None)),
    }
}

/// `-q`: no progress line, no warnings about the archive.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A progress line on stderr while an image is pulled or exported, when stderr is a
/// terminal and not `-q`; cleared if the work fails, so that the error line stands alone.
struct ProgressLine {
    label: String,
    shown: bool,
}

impl ProgressLine {
    fn new(label: &str) -> Option<ProgressLine> {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        (tty && !quiet()).then(|| ProgressLine {
            label: label.to_string(),
            shown: false,
        })
    }

    fn show(&mut self, text: &str, done: bool) {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        // Keep to one line of a narrow terminal: the line is redrawn in place.
        let line: String = format!("imgfs: {text}").chars().take(150).collect();
        let _ = write!(err, "\r\x1b[K{line}{}", if done { "\n" } else { "" });
        let _ = err.flush();
        self.shown = !done;
    }

    fn event(&mut self, e: prepare::Event) {
        let mb = |b: u64| b as f64 / 1e6;
        match e {
            prepare::Event::Pulling(status) => {
                self.show(&format!("pulling {}: {status}", self.label), false)
            }
            prepare::Event::Exporting(p) if p.layers_total > 0 => {
                let rate = mb(p.bytes) / p.elapsed.as_secs_f64().max(1e-3);
                self.show(
                    &format!(
                        "fetching {}: {}/{} layers, {:.1} MB, {rate:.1} MB/s, {} entries",
                        self.label,
                        p.layers_done,
                        p.layers_total,
                        mb(p.bytes),
                        p.entries
                    ),
                    false,
                );
            }
            prepare::Event::Exporting(p) => {
                let rate = mb(p.bytes) / p.elapsed.as_secs_f64().max(1e-3);
                self.show(
                    &format!(
                        "exporting {}: {:.1} MB, {rate:.1} MB/s, {} entries",
                        self.label,
                        mb(p.bytes),
                        p.entries
                    ),
                    false,
                );
            }
            prepare::Event::Exported(p) if p.layers_total > 0 => self.show(
                &format!(
                    "fetched {}: {} layers, {:.1} MB, {} entries in {:.1} s",
                    self.label,
                    p.layers_total,
                    mb(p.bytes),
                    p.entries,
                    p.elapsed.as_secs_f64()
                ),
                true,
            ),
            prepare::Event::Exported(p) => self.show(
                &format!(
                    "exported {}: {:.1} MB, {} entries in {:.1} s",
                    self.label,
                    mb(p.bytes),
                    p.entries,
                    p.elapsed.as_secs_f64()
                ),
                true,
            ),
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if self.shown {
            use std::io::Write;
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

fn prefetch_of(arg: Option<crate::cli::PrefetchArg>) -> imgfs::image::lazy::Prefetch {
    match arg {
        Some(crate::cli::PrefetchArg::All) => imgfs::image::lazy::Prefetch::All,
        Some(crate::cli::PrefetchArg::None) => imgfs::image::lazy::Prefetch::None,
        _ => imgfs::image::lazy::Prefetch::Recorded,
    }
}

/// How lazily read layers wait for their registry and what they fetch ahead, as the options
/// say.
fn lazy_settings(args: &CacheArgs) -> imgfs::image::lazy::LazyOptions {
    let mut lazy = imgfs::image::lazy::LazyOptions::default();
    if let Some(secs) = args.fetch_timeout
        && secs.is_finite()
        && secs >= 0.0
    {
        lazy.fetch_timeout = std::time::Duration::from_secs_f64(secs.min(1e6));
    }
    lazy.prefetch = prefetch_of(args.prefetch);
    lazy
}

/// [`lazy_settings`], and where the prepared image's lazy layers are made whole.
fn lazy_options(
    args: &CacheArgs,
    cache: &Cache,
    ready: &prepare::Ready,
) -> imgfs::image::lazy::LazyOptions {
    imgfs::image::lazy::LazyOptions {
        store: Some(prepare::layer_store(cache, &ready.entry)),
        ..lazy_settings(args)
    }
}

/// `--platform`, parsed.
fn platform_of(args: &CacheArgs) -> Result<Option<imgfs::source::Platform>> {
    Ok(args
        .platform
        .as_deref()
        .map(imgfs::source::Platform::parse)
        .transpose()?)
}

/// Resolves `image` and fills its cache entry if needed, with a progress line.
fn prepare(image: &str, cache: &Cache, pull: bool, args: &CacheArgs) -> Result<prepare::Ready> {
    let platform = platform_of(args)?;
    let mut line = ProgressLine::new(image);
    let mut report = |e: prepare::Event| {
        if let Some(l) = line.as_mut() {
            l.event(e);
        }
    };
    let options = prepare::Options {
        pull,
        platform,
        insecure: args.tls_verify == Some(false),
        auth_file: args.authfile.clone(),
        hosts_dir: args.hosts_dir.clone(),
        report: Some(&mut report),
    };
    let reference = ImageRef::parse(image);
    let ready = match prepare::prepare_with(&reference, cache, options) {
        Err(e @ prepare::PrepareError::Docker(_)) => match reference.file_hint() {
            Some(hint) => return Err(anyhow::anyhow!("{e}; {hint}")),
            None => return Err(e.into()),
        },
        r => r?,
    };
    if !quiet() {
        for w in &ready.warnings {
            eprintln!("imgfs: warning: {w}");
        }
    }
    Ok(ready)
}

fn index_push(args: IndexPushArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let ImageRef::Registry(reference) = ImageRef::parse(&args.image) else {
        bail!(
            "{}: only a registry image (docker://HOST/NAME[:TAG]) can have an imgfs index pushed",
            args.image
        );
    };
    let platform = platform_of(&args.cache)?;
    let mut line = ProgressLine::new(&args.image);
    let mut report = |e: prepare::Event| {
        if let Some(l) = line.as_mut() {
            l.event(e);
        }
    };
    let options = prepare::Options {
        platform,
        insecure: args.cache.tls_verify == Some(false),
        auth_file: args.cache.authfile.clone(),
        hosts_dir: args.cache.hosts_dir.clone(),
        report: Some(&mut report),
        ..Default::default()
    };
    if !args.command.is_empty() && !args.record {
        bail!("a COMMAND is only taken with --record");
    }
    let mut record = |config: &str| record_run(&args, config);
    let mut recorded = |config: &str| {
        let path = cache
            .entry(&imgfs::cache::key::EntryKey::Lazy(config.to_string()))
            .dir()
            .join(imgfs::image::lazy::RECORD_FILE);
        std::fs::read_to_string(&path).map_err(|source| prepare::PrepareError::Io {
            path,
            cause: source,
        })
    };
    let recorder: Option<&mut prepare::lazy::Record<'_>> = if args.record {
        Some(&mut record)
    } else if args.recorded {
        Some(&mut recorded)
    } else {
        None
    };
    let pushed = prepare::lazy::push(&reference, &cache, options, args.span, recorder)?;
    drop(line);
    if !quiet() {
        // What a mount fetches up front, then the windows it fetches only as reads need them.
        let total = pushed.tree_bytes + pushed.seek_bytes;
        let share = |n: u64| n as f64 * 100.0 / pushed.image_bytes.max(1) as f64;
        eprintln!(
            "imgfs: pushed the index of {} as {}: {} bytes ({:.2}% of the image's {} compressed bytes; tree {}, {} spans, {} to prefetch), and {} bytes of deflate windows ({:.2}%), fetched by range as reads need them",
            args.image,
            pushed.digest,
            total,
            share(total),
            pushed.image_bytes,
            pushed.tree_bytes,
            pushed.spans,
            pushed.prefetch_spans,
            pushed.window_bytes,
            share(pushed.window_bytes),
        );
    }
    println!("{}", pushed.digest);
    Ok(0)
}

/// `imgfs index push --record`: runs the command over a lazy mount of the image (just pushed)
/// with a cache of its own, and returns the spans it read.
fn record_run(args: &IndexPushArgs, config: &str) -> Result<String, prepare::PrepareError> {
    let failed = |why: String| {
        prepare::PrepareError::Source(imgfs::source::SourceError::Invalid {
            what: args.image.clone(),
            why,
        })
    };
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find imgfs: {e}")))?;
    let dir = std::env::temp_dir().join(format!("imgfs-record-{}", std::process::id()));
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run")
        .arg("--cache-dir")
        .arg(&dir)
        .args(["--linger", "0", "--prefetch", "none"]);
    if let Some(p) = &args.cache.platform {
        cmd.args(["--platform", p]);
    }
    if args.cache.tls_verify == Some(false) {
        cmd.arg("--tls-verify=false");
    }
    if let Some(f) = &args.cache.authfile {
        cmd.arg("--authfile").arg(f);
    }
    if let Some(e) = &args.entrypoint {
        cmd.arg("--entrypoint").arg(e);
    }
    cmd.arg(&args.image);
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    // What the command prints is the user's to see, not part of push's output (the digest).
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        cmd.stdout(std::process::Stdio::from(fd));
    }
    let status = cmd.status();
    let recorded = Cache::locate(Some(dir.clone()))
        .map_err(|e| failed(e.to_string()))?
        .entry(&imgfs::cache::key::EntryKey::Lazy(config.to_string()))
        .dir()
        .join(imgfs::image::lazy::RECORD_FILE);
    let text = std::fs::read_to_string(&recorded);
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) if !s.success() && !quiet() => {
            eprintln!("imgfs: warning: the recorded command exited with {s}");
        }
        Err(e) => return Err(failed(format!("cannot run the command to record: {e}"))),
        _ => {}
    }
    text.map_err(|e| {
        failed(format!(
            "no record of the run ({}): {e}",
            recorded.display()
        ))
    })
}

fn mount(args: MountArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    serve::check_mountpoint(&args.mountpoint)?;
    let ready = prepare(&args.image, &cache, args.pull, &args.cache)?;
    let options = ServeOptions {
        fsname: format!("{}{}", serve::SOURCE_PREFIX, args.image),
        threads: args.threads.unwrap_or_else(serve::default_threads),
        idle_exit: None,
        lazy: lazy_options(&args.cache, &cache, &ready),
    };
    let served = serve::Served {
        index: &ready.index_path,
        blobs: &ready.blobs,
        mountpoint: &args.mountpoint,
        options: &options,
        owners: Owners::Recorded,
    };
    if args.foreground {
        // The server and its keeper in this process's place: preparing the image may have
        // started threads, and only a process with one thread may fork the keeper's server.
        let e = serve::exec_foreground(&served);
        log::warn!("serving without a keeper: {e}");
        serve::block_stop_signals();
        let fs = ImageFs::open_with(&ready.index_path, &ready.blobs, &options.lazy)?;
        let connection = serve::Connection::Mount { handover: None };
        serve::serve(
            fs,
            &ready.index_path,
            &args.mountpoint,
            &options,
            connection,
            || {},
        )?;
        return Ok(0);
    }
    serve::spawn_detached(&served)?;
    Ok(0)
}

/// The detached server: reports readiness or the error on stdout, then serves.
fn serve_background(args: ServeArgs) -> Result<i32> {
    let options = ServeOptions {
        fsname: args.fsname,
        threads: args.threads,
        idle_exit: args.idle_exit_ms.map(std::time::Duration::from_millis),
        lazy: imgfs::image::lazy::LazyOptions {
            fetch_timeout: std::time::Duration::from_millis(
                args.fetch_timeout_ms.unwrap_or(
                    imgfs::image::lazy::LazyOptions::default()
                        .fetch_timeout
                        .as_millis() as u64,
                ),
            ),
            prefetch: prefetch_of(args.prefetch),
            store: match (args.cache_dir, args.entry) {
                (Some(root), Some(name)) => {
                    let cache = Cache::locate(Some(root))?;
                    let entry = cache.entry(&name);
                    Some(prepare::layer_store(&cache, &entry))
                }
                _ => None,
            },
            program: args.program,
            ..imgfs::image::lazy::LazyOptions::default()
        },
    };
    let owners = match args.root_as {
        Some((uid, gid)) => Owners::RootAs { uid, gid },
        None => Owners::Recorded,
    };
    let held = match (args.held_fd, args.server_pid) {
        (Some(fd), Some(pid)) => Some(
            serve::Held::inherited(fd, pid)
                .with_context(|| format!("the descriptor {fd} a restart passed on"))?,
        ),
        _ => None,
    };
    // The keeper forks servers; each opens the image (its own threads) and serves.
    Ok(serve::keep(&args.mountpoint, held, &|connection| {
        let fresh = matches!(connection, serve::Connection::Mount { .. });
        let report = fresh && !args.foreground;
        serve::block_stop_signals();
        let result = ImageFs::open_with(&args.index, &args.blobs, &options.lazy)
            .map_err(anyhow::Error::from)
            .and_then(|fs| {
                let on_ready = || {
                    if report {
                        serve::report_ready()
                    }
                };
                serve::serve(
                    fs.with_owners(owners),
                    &args.index,
                    &args.mountpoint,
                    &options,
                    connection,
                    on_ready,
                )
                .map_err(anyhow::Error::from)
            });
        match result {
            Ok(()) => 0,
            Err(e) if report => {
                serve::report(&format!("error: {}", message(&e)));
                1
            }
            Err(e) if fresh => {
                eprintln!("imgfs: {}", message(&e));
                1
            }
            Err(e) => {
                log::error!("{}", message(&e));
                1
            }
        }
    }))
}

fn parse_plan(json: &str) -> Result<Plan> {
    serde_json::from_str(json).context("bad sandbox plan")
}

/// `imgfs run`: as with docker run, any failure before the command starts is one line and
/// exit status 125.
fn run_sandbox(args: RunArgs) -> Result<i32> {
    start_sandbox(args).or_else(|e| {
        eprintln!("imgfs: {}", message(&e));
        Ok(own_exit_code(&e).unwrap_or(imgfs::sys::EXIT_SETUP))
    })
}

fn start_sandbox(args: RunArgs) -> Result<i32> {
    let network = match args.network {
        Net::Bridge => runner::network::Mode::Bridge,
        Net::None => runner::network::Mode::None,
        Net::Host => runner::network::Mode::Host,
    };
    let network_flags = runner::network::NetworkFlags {
        publish: args.publish,
        dns: args.dns,
        add_host: args.add_host,
    };
    // First, while this process is single-threaded: pasta comes up while the image is
    // resolved.
    let early = runner::network::start_early(network, &network_flags);
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let start = imgfs::sys::trace::now();
    let ready = prepare(&args.image, &cache, args.pull, &args.cache)?;
    imgfs::sys::trace::event("prepare", start, "\"bytes\":0");
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
        network,
        network_flags,
        rw_dir: args.rw_dir,
        confine: runner::confine::Request {
            cap_add: args.cap_add,
            cap_drop: args.cap_drop,
            privileged: args.privileged,
            security_opt: args.security_opt,
        },
        limits: runner::plan::LimitFlags {
            memory: args.memory,
            memory_swap: args.memory_swap,
            pids_limit: args.pids_limit,
            cpus: args.cpus,
        },
    };
    let fsname = format!("{}{}", serve::SOURCE_PREFIX, args.image);
    let seccomp_cache = cache.root().join("seccomp");
    let plan = runner::make_plan(
        &ready,
        fsname,
        &request,
        args.linger,
        &seccomp_cache,
        &lazy_options(&args.cache, &cache, &ready),
    )?;
    Ok(runner::supervise(&plan, early)?)
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

/// The status to exit with after `e`: its own when a cause calls for one (an export a
/// signal interrupted: 128 plus the signal, as a shell reports it), else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    own_exit_code(e).unwrap_or(1)
}

fn own_exit_code(e: &anyhow::Error) -> Option<i32> {
    use imgfs::source::docker::DockerError;
    // A transparent wrapper hands on its inner error's source, not the inner error itself:
    // look through the preparation's error as well as for a docker error in the chain.
    e.chain()
        .find_map(
            |cause| match cause.downcast_ref::<prepare::PrepareError>() {
                Some(prepare::PrepareError::Docker(d)) => Some(d),
                _ => cause.downcast_ref::<DockerError>(),
            },
        )
        .and_then(DockerError::exit_code)
}

/// The error and its causes on one line. Each cause is said once: an error either quotes its
/// cause in its message or returns it as its source, never both.
pub fn message(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Resolves and prepares an image for the inspection commands, and opens its index.
/// Without access to the daemon, a reference the cache holds the image under is enough:
/// what is cached by its id needs no daemon.
fn open_image(image: &str, args: &CacheArgs) -> Result<(prepare::Ready, ImageReader)> {
    let cache = Cache::locate(args.cache_dir.clone())?;
    let ready = match prepare(image, &cache, false, args) {
        Err(e) if unreachable_daemon(&e) => {
            let all = catalog::images(&cache);
            let found: Vec<_> = all.iter().filter(|i| i.matches(image)).collect();
            match found.as_slice() {
                [one] if one.id.starts_with("sha256:") => {
                    log::info!("{e}; using the cached {}", one.id);
                    prepare(&one.id, &cache, false, args)?
                }
                _ => return Err(e),
            }
        }
        r => r?,
    };
    let fs = ImageReader::open(&ready.index_path, &ready.blobs)?;
    Ok((ready, fs))
}

fn unreachable_daemon(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<prepare::PrepareError>(),
        Some(prepare::PrepareError::Docker(
            imgfs::source::docker::DockerError::Unreachable { .. }
        ))
    )
}

/// Runs an inspection command with buffered stdout; a closed pipe (`| head`) ends it
/// quietly with 141, as SIGPIPE ends the coreutils.
fn with_output(
    body: impl FnOnce(&mut dyn std::io::Write, &mut dyn std::io::Write) -> std::io::Result<i32>,
) -> Result<i32> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = std::io::stderr();
    let result = body(&mut out, &mut err).and_then(|code| out.flush().map(|()| code));
    match result {
        Ok(code) => Ok(code),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(141),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write the output")),
    }
}

fn ls(args: LsArgs) -> Result<i32> {
    let (_, fs) = open_image(&args.image, &args.cache)?;
    let img = Image::new(&fs);
    let opts = inspect::LsOptions {
        long: args.long,
        all: args.all,
        recursive: args.recursive,
        directory: args.directory,
    };
    with_output(|out, err| inspect::ls(&img, &args.paths, &opts, out, err))
}

fn cat(args: CatArgs) -> Result<i32> {
    let (_, fs) = open_image(&args.image, &args.cache)?;
    let img = Image::new(&fs);
    with_output(|out, err| inspect::cat(&img, &args.paths, out, err))
}

fn stat(args: StatArgs) -> Result<i32> {
    let (_, fs) = open_image(&args.image, &args.cache)?;
    let img = Image::new(&fs);
    with_output(|out, err| {
        inspect::stat(
            &img,
            &args.paths,
            args.dereference,
            args.format.as_deref(),
            out,
            err,
        )
    })
}

fn find(args: FindArgs) -> Result<i32> {
    let (_, fs) = open_image(&args.image, &args.cache)?;
    let img = Image::new(&fs);
    let opts = inspect::FindOptions {
        name: args.name,
        kind: args.kind.and_then(|k| k.chars().next()),
    };
    with_output(|out, err| inspect::find(&img, &args.paths, &opts, out, err))
}

fn inspect_image(args: InspectArgs) -> Result<i32> {
    let (ready, fs) = open_image(&args.image, &args.cache)?;
    let config: serde_json::Value = match &ready.image_path {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{}: not JSON", p.display()))?,
        None => serde_json::Value::Null,
    };
    let counts = inspect::counts(&fs);
    // A lazily read layer takes what has been fetched of it: its sparse blob's blocks.
    let size = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        if p.ends_with(imgfs::cache::sparse::REMOTE_FILE) {
            let blob = p.with_file_name(imgfs::cache::sparse::SPARSE_FILE);
            return std::fs::metadata(blob)
                .map(|m| m.blocks() * 512)
                .unwrap_or(0);
        }
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    };
    let c = &config["Config"];
    let summary = serde_json::json!({
        "Id": ready.id,
        "RepoTags": config["RepoTags"],
        "RepoDigests": config["RepoDigests"],
        "Created": config["Created"],
        "Config": {
            "Env": c["Env"],
            "Cmd": c["Cmd"],
            "Entrypoint": c["Entrypoint"],
            "WorkingDir": c["WorkingDir"],
            "User": c["User"],
            "Labels": c["Labels"],
        },
        "Entries": counts,
        "Cache": {
            "Blobs": ready.blobs.iter().map(|b| b.display().to_string()).collect::<Vec<_>>(),
            "BlobBytes": ready.blobs.iter().map(|b| size(b)).sum::<u64>(),
            "Index": ready.index_path.display().to_string(),
            "IndexBytes": size(&ready.index_path),
        },
    });
    with_output(|out, _| {
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &summary)?;
            writeln!(out)?;
        } else {
            out.write_all(inspect::describe_summary(&summary).as_bytes())?;
        }
        Ok(0)
    })
}

/// The manual from the command-line definition: imgfs.1 on stdout, or every page in `dir`.
fn manpage(dir: Option<&Path>) -> Result<i32> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the pages to {}", dir.display()))?;
            Ok(0)
        }
        None => with_output(|out, _| {
            clap_mangen::Man::new(cmd).render(out)?;
            Ok(0)
        }),
    }
}

/// How long ago, for people: `just now`, `5 minutes ago`, `3 days ago`.
fn ago(t: Option<std::time::SystemTime>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let s = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (n, unit) = match s {
        0..60 => return "just now".into(),
        60..3600 => (s / 60, "minute"),
        3600..86400 => (s / 3600, "hour"),
        _ => (s / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Prints rows as left-aligned columns under a header.
fn table(out: &mut dyn std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn images(args: ImagesArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let all = catalog::images(&cache);
    with_output(|out, _| {
        if args.json {
            let list: Vec<_> = all.iter().map(catalog::CachedImage::to_json).collect();
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
            return Ok(0);
        }
        let mut rows = vec![vec![
            "IMAGE ID".to_string(),
            "SIZE".into(),
            "SHARED".into(),
            "UNIQUE".into(),
            "ENTRIES".into(),
            "LAST USED".into(),
            "REFERENCES".into(),
        ]];
        for i in &all {
            rows.push(vec![
                i.short_id(),
                inspect::bytes(i.disk_bytes),
                inspect::bytes(i.disk_bytes - i.unique_bytes),
                inspect::bytes(i.unique_bytes),
                i.inodes.map_or_else(|| "-".into(), |n| n.to_string()),
                ago(i.last_used),
                i.names(),
            ]);
        }
        table(out, &rows)?;
        Ok(0)
    })
}

/// Why an image stays, in words.
fn in_use(pids: &[u32]) -> String {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!("in use by pid {}", list.join(", "))
}

fn rm(args: RmArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let all = catalog::images(&cache);
    let mut status = 0;
    for wanted in &args.images {
        let found: Vec<_> = all.iter().filter(|i| i.matches(wanted)).collect();
        let image = match found.as_slice() {
            [one] => *one,
            [] => {
                eprintln!(
                    "imgfs: rm: {wanted}: no such image in the cache {}",
                    cache.root().display()
                );
                status = 1;
                continue;
            }
            many => {
                let ids: Vec<String> = many.iter().map(|i| i.short_id()).collect();
                eprintln!("imgfs: rm: {wanted} is ambiguous: {}", ids.join(", "));
                status = 1;
                continue;
            }
        };
        match image.entry.remove()? {
            Removal::Removed(bytes) => {
                let bytes = bytes + cache.collect_layers();
                println!(
                    "removed {} ({}, {})",
                    image.short_id(),
                    image.names(),
                    inspect::bytes(bytes)
                );
            }
            Removal::InUse(pids) => {
                eprintln!(
                    "imgfs: rm: {wanted}: {} (a mount, a sandbox or an inspection); not removed",
                    in_use(&pids)
                );
                status = 1;
            }
            Removal::Filling => {
                eprintln!("imgfs: rm: {wanted}: being exported right now; not removed");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn prune(args: PruneArgs) -> Result<i32> {
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    cache.sweep_leftovers();
    let all = catalog::images(&cache);
    let done = catalog::prune(&cache, &all, args.older_than, args.max_size, args.dry_run);
    let mut freed = 0;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for p in &done {
        match &p.outcome {
            Removal::Removed(bytes) => {
                freed += bytes;
                println!(
                    "{verb} {} ({}, {})",
                    p.image.short_id(),
                    p.image.names(),
                    inspect::bytes(*bytes)
                );
            }
            Removal::InUse(pids) => {
                println!(
                    "kept {} ({}): {}",
                    p.image.short_id(),
                    p.image.names(),
                    in_use(pids)
                );
            }
            Removal::Filling => {
                println!(
                    "kept {} ({}): being exported",
                    p.image.short_id(),
                    p.image.names()
                );
            }
        }
    }
    println!(
        "{} {}",
        if args.dry_run { "would free" } else { "freed" },
        inspect::bytes(freed)
    );
    Ok(0)
}
