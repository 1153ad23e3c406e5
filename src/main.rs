//! The `fleetnix` binary: parses arguments and hands over to the CLI layer.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::run(cli::Cli::parse())
}
