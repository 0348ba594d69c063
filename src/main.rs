//! The `imgfs` command: parse, run one command, print the error chain, pick the exit code.

mod cli;
mod commands;
mod logger;

use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match cli::mount_helper_args(&args) {
        None => args,
        Some(Ok(Some(mount))) => mount,
        Some(Ok(None)) => std::process::exit(0),
        Some(Err(e)) => {
            eprintln!("mount.imgfs: {e}");
            std::process::exit(1);
        }
    };
    let cli = cli::Cli::parse_from(cli::find_style_args(args));
    logger::init(cli.verbose);
    match commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("imgfs: {}", commands::message(&e));
            std::process::exit(commands::exit_code(&e));
        }
    }
}
