//! The `imgfs` command: parse, run one command, print the error chain, pick the exit code.

mod cli;
mod commands;
mod logger;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    logger::init(cli.verbose);
    match commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("imgfs: {}", commands::message(&e));
            std::process::exit(1);
        }
    }
}
