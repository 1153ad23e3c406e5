//! `acl`: argument parsing and printing; the logic is in `fleetnix::acl` and
//! `fleetnix::tailscale::api`.

use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::acl::{apply, check, matrix, policy};
use fleetnix::model::Fleet;
use fleetnix::outputs;
use fleetnix::tailscale::api::{base_url_from_env, token_from, Client};
use std::path::{Path, PathBuf};

/// Default policy file, relative to the fleet directory.
const POLICY_FILE: &str = "acl-policy.hujson";
/// Backup directory, relative to the fleet directory.
const BACKUP_DIR: &str = "acl-backups";

/// How to reach the Tailscale API. The token is never an argument.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// File holding the API access token [default: the TS_API_KEY environment variable].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `acl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Render the deny-by-default policy from the fleet (to stdout, or to a file).
    Render {
        /// Write it here (e.g. fleet/acl-policy.hujson) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a policy file against the fleet; exit 1 on any finding.
    Check {
        /// The policy (HuJSON) [default: <fleet-dir>/acl-policy.hujson].
        policy: Option<PathBuf>,
        /// Findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who can reach what: tags and groups against nodes.
    Matrix {
        /// Evaluate this policy instead of the rendered one.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// A Graphviz graph instead of a table.
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the tailnet's policy, back it up in <fleet-dir>/acl-backups/ and print it.
    Get(ApiArgs),
    /// Show how the tailnet's policy differs from the rendered one (exit 1 if it does).
    Diff {
        /// API access.
        #[command(flatten)]
        api: ApiArgs,
        /// Compare with this file instead of the rendered policy.
        policy: Option<PathBuf>,
    },
    /// Replace the tailnet's policy (validated first, old one backed up, If-Match guarded).
    Set {
        /// API access.
        #[command(flatten)]
        api: ApiArgs,
        /// Set this file instead of the rendered policy.
        policy: Option<PathBuf>,
        /// Apply even if the policy cuts the deploy or operator SSH.
        #[arg(long)]
        force: bool,
    },
}

/// The API client from `--token-file` or `TS_API_KEY`.
pub(super) fn client(fleet: &Fleet, api: &ApiArgs) -> Result<Client, CliError> {
    let token = token_from(api.token_file.as_deref()).map_err(CliError::msg)?;
    Client::new(&base_url_from_env(), &fleet.settings.tailnet, token).map_err(CliError::msg)
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::msg(format!("cannot read {}: {e}", path.display())))
}

/// The policy to diff/set: a file, or the one rendered from the fleet.
fn policy_text(
    ctx: &Ctx,
    fleet: &Fleet,
    file: Option<&Path>,
) -> Result<(String, String), CliError> {
    match file {
        Some(p) => Ok((read(p)?, p.display().to_string())),
        None => Ok((
            outputs::acl::render(fleet, &ctx.sources_label(fleet)).text,
            "rendered from the fleet".to_string(),
        )),
    }
}

/// `fleetnix acl …`.
pub fn run(ctx: &Ctx, cmd: AclCommand) -> CmdResult {
    let fleet = ctx.fleet()?;
    let backups = ctx.fleet_dir.join(BACKUP_DIR);
    match cmd {
        AclCommand::Render { output } => cmd_render(ctx, &fleet, output.as_deref()),
        AclCommand::Check { policy, json } => cmd_check(ctx, &fleet, policy, json),
        AclCommand::Matrix { policy, dot, json } => {
            cmd_matrix(ctx, &fleet, policy.as_deref(), dot, json)
        }
        AclCommand::Get(api) => cmd_get(&fleet, &api, &backups),
        AclCommand::Diff { api, policy } => {
            cmd_diff(ctx, &fleet, &api, policy.as_deref(), &backups)
        }
        AclCommand::Set { api, policy, force } => {
            cmd_set(ctx, &fleet, &api, policy.as_deref(), force, &backups)
        }
    }
}

fn cmd_render(ctx: &Ctx, fleet: &Fleet, output: Option<&Path>) -> CmdResult {
    let r = outputs::acl::render(fleet, &ctx.sources_label(fleet));
    match output {
        None => print!("{}", r.text),
        Some(p) => {
            fleetnix::fsutil::write_atomic(p, r.text.as_bytes(), 0o644)
                .map_err(|e| CliError::msg(format!("cannot write {}: {e}", p.display())))?;
            println!("wrote {}", p.display());
        }
    }
    Ok(Outcome::Ok)
}

fn cmd_check(ctx: &Ctx, fleet: &Fleet, file: Option<PathBuf>, json: bool) -> CmdResult {
    let path = file.unwrap_or_else(|| ctx.fleet_dir.join(POLICY_FILE));
    if !path.exists() {
        return Err(CliError::msg(format!(
            "no policy file {}: pass one (`fleetnix acl check FILE`) or write the rendered one with `fleetnix acl render -o {}`",
            path.display(),
            path.display()
        )));
    }
    let text = read(&path)?;
    let findings = check::check(fleet, &text)
        .map_err(|e| CliError::msg(format!("{}: {e}", path.display())))?;
    if json {
        let doc = serde_json::json!({
            "policy": path.display().to_string(),
            "ok": findings.is_empty(),
            "findings": findings,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(CliError::msg)?
        );
    } else {
        for f in &findings {
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            println!(
                "{}:{}:{}: {kind}: {}",
                path.display(),
                f.line,
                f.column,
                f.message
            );
            if let Some(h) = &f.hint {
                println!("    hint: {h}");
            }
        }
        if findings.is_empty() {
            println!("ok: {} agrees with the fleet", path.display());
        } else {
            eprintln!("{} finding(s) in {}", findings.len(), path.display());
        }
    }
    Ok(Outcome::ok_if(findings.is_empty()))
}

fn cmd_matrix(ctx: &Ctx, fleet: &Fleet, file: Option<&Path>, dot: bool, json: bool) -> CmdResult {
    let (text, name) = policy_text(ctx, fleet, file)?;
    let parsed = policy::parse(&text).map_err(|e| CliError::msg(format!("{name}: {e}")))?;
    let m = matrix::matrix(fleet, &parsed.policy);
    if dot {
        print!("{}", m.dot());
    } else if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&m).map_err(CliError::msg)?
        );
    } else {
        print!("{}", m.table());
    }
    Ok(Outcome::Ok)
}

fn cmd_get(fleet: &Fleet, api: &ApiArgs, backups: &Path) -> CmdResult {
    let c = client(fleet, api)?;
    let got = runtime()?
        .block_on(apply::get(&c, backups))
        .map_err(CliError::msg)?;
    print!("{}", got.remote.text);
    eprintln!(
        "backed up to {} (ETag {})",
        got.backup.display(),
        got.remote.etag
    );
    Ok(Outcome::Ok)
}

fn cmd_diff(
    ctx: &Ctx,
    fleet: &Fleet,
    api: &ApiArgs,
    file: Option<&Path>,
    backups: &Path,
) -> CmdResult {
    let (text, name) = policy_text(ctx, fleet, file)?;
    let c = client(fleet, api)?;
    let d = runtime()?
        .block_on(apply::diff(&c, backups, &text, &name))
        .map_err(CliError::msg)?;
    if d.is_empty() {
        println!("no difference: the tailnet policy is the {name} one");
        Ok(Outcome::Ok)
    } else {
        print!("{d}");
        Ok(Outcome::Problem)
    }
}

fn cmd_set(
    ctx: &Ctx,
    fleet: &Fleet,
    api: &ApiArgs,
    file: Option<&Path>,
    force: bool,
    backups: &Path,
) -> CmdResult {
    let (text, name) = policy_text(ctx, fleet, file)?;
    let c = client(fleet, api)?;
    let opts = apply::SetOptions { force };
    let out = runtime()?
        .block_on(apply::set(&c, fleet, backups, &text, &opts))
        .map_err(CliError::msg)?;
    for f in &out.forced {
        eprintln!("warning: --force: applied although it cuts {f}");
    }
    println!("backed up the previous policy to {}", out.backup.display());
    if out.unchanged {
        println!("the tailnet policy already is the {name} one; nothing sent");
    } else {
        println!("set the tailnet policy ({name}); new ETag {}", out.etag);
    }
    Ok(Outcome::Ok)
}
