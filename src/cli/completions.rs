//! `completions` and `man`: shell completion scripts (clap_complete) and man pages
//! (clap_mangen), generated from the same argument definitions the binary parses.

use super::{CliError, CmdResult, Outcome};
use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShellArg {
    /// bash (e.g. `fleetnix completions bash > /etc/bash_completion.d/fleetnix`).
    Bash,
    /// zsh (a `_fleetnix` file on `$fpath`).
    Zsh,
    /// fish (`~/.config/fish/completions/fleetnix.fish`).
    Fish,
}

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: ShellArg,
}

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write `fleetnix.1` and one page per command (`fleetnix-deploy.1`, …) into DIR
    /// (created if missing) instead of printing `fleetnix.1` on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The EXIT STATUS section every page gets (also in docs/cli.md and the README).
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
0
Success: nothing to report.
.TP
1
A problem was found (drift, a failed check, a failed or unhealthy node) or the command failed.
.TP
2
plan: a deploy would change something. Also a usage error (bad flag or argument), as reported by the argument parser.
.TP
3
Could not run: what the command needs is not there (tailscaled unreachable or not connected, for status, health and route).
"#;

fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::msg(format_args!("cannot write to stdout: {e}")))
}

/// `fleetnix completions SHELL`: the script on stdout.
pub fn completions(a: CompletionsArgs) -> CmdResult {
    use clap_complete::Shell;
    let shell = match a.shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut cmd = super::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "fleetnix", &mut buf);
    write_out(&buf)?;
    Ok(Outcome::Ok)
}

/// One page (roff) for `cmd`, with the exit status section before VERSION.
fn page(cmd: clap::Command) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| CliError::msg(format_args!("cannot render the man page: {e}")))?;
    let text = String::from_utf8_lossy(&buf);
    let at = text.find("\n.SH VERSION").map_or(text.len(), |i| i + 1);
    Ok(format!("{}{EXIT_STATUS}{}", &text[..at], &text[at..]).into_bytes())
}

/// Every page: `fleetnix.1`, then one per (nested) command, as (file name, roff).
fn pages() -> Result<Vec<(String, Vec<u8>)>, CliError> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), CliError> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        out.push((format!("{name}.1"), page(cmd.clone())?));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut out)?;
    Ok(out)
}

fn write_pages(dir: &Path) -> Result<usize, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::msg(format_args!("cannot create {}: {e}", dir.display())))?;
    let pages = pages()?;
    for (name, text) in &pages {
        let path = dir.join(name);
        fleetnix::fsutil::write_atomic(&path, text, 0o644)
            .map_err(|e| CliError::msg(format_args!("cannot write {}: {e}", path.display())))?;
    }
    Ok(pages.len())
}

/// `fleetnix man [--dir DIR]`.
pub fn man(a: ManArgs) -> CmdResult {
    match a.dir {
        None => {
            let mut cmd = super::Cli::command().disable_help_subcommand(true);
            cmd.build();
            write_out(&page(cmd)?)?;
        }
        Some(dir) => {
            let n = write_pages(&dir)?;
            println!("wrote {n} man page(s) to {}", dir.display());
        }
    }
    Ok(Outcome::Ok)
}
