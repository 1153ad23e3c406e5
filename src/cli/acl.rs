//! `acl`: argument parsing and printing; the logic is in `fleetnix::acl` ([`files`] for the
//! policy files, [`apply`] for the API).

use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::acl::apply;
use fleetnix::acl::files::{self, PolicyText};
use fleetnix::model::Fleet;
use fleetnix::tailscale::api::Client;
use std::path::{Path, PathBuf};

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
    /// The blast radius of a policy change: per principal, the node:port pairs and SSH logins it
    /// gains and loses (exit 1 if the policies differ).
    Diff {
        /// API access (not needed with two files).
        #[command(flatten)]
        api: ApiArgs,
        /// OLD NEW: two files. One file: the tailnet's policy against it. None: the tailnet's
        /// policy against the rendered one.
        #[arg(value_name = "POLICY", num_args = 0..=2)]
        policies: Vec<PathBuf>,
        /// The blast radius as JSON.
        #[arg(long, conflicts_with = "text")]
        json: bool,
        /// Also print the unified diff of the texts.
        #[arg(long)]
        text: bool,
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
        /// Apply even if some principal loses access (the blast radius is shown first).
        #[arg(long)]
        yes: bool,
    },
}

/// The API client from `--token-file` or `TS_API_KEY`.
pub(super) fn client(fleet: &Fleet, api: &ApiArgs) -> Result<Client, CliError> {
    apply::api_client(fleet, api.token_file.as_deref()).map_err(CliError::msg)
}

/// The policy to work on: a file, or the one rendered from the fleet.
fn policy_text(ctx: &Ctx, fleet: &Fleet, file: Option<&Path>) -> Result<PolicyText, CliError> {
    files::policy_text(fleet, &ctx.sources_label(fleet), file).map_err(CliError::msg)
}

/// `fleetnix acl …`.
pub fn run(ctx: &Ctx, cmd: AclCommand) -> CmdResult {
    let fleet = ctx.fleet()?;
    let backups = files::backup_dir(&ctx.fleet_dir);
    match cmd {
        AclCommand::Render { output } => cmd_render(ctx, &fleet, output.as_deref()),
        AclCommand::Check { policy, json } => cmd_check(ctx, &fleet, policy.as_deref(), json),
        AclCommand::Matrix { policy, dot, json } => {
            cmd_matrix(ctx, &fleet, policy.as_deref(), dot, json)
        }
        AclCommand::Get(api) => cmd_get(&fleet, &api, &backups),
        AclCommand::Diff {
            api,
            policies,
            json,
            text,
        } => cmd_diff(ctx, &fleet, &api, &policies, json, text, &backups),
        AclCommand::Set {
            api,
            policy,
            force,
            yes,
        } => {
            let opts = apply::SetOptions { force, yes };
            cmd_set(ctx, &fleet, &api, policy.as_deref(), &opts, &backups)
        }
    }
}

fn cmd_render(ctx: &Ctx, fleet: &Fleet, output: Option<&Path>) -> CmdResult {
    match output {
        None => print!(
            "{}",
            fleetnix::acl::render::render(fleet, &ctx.sources_label(fleet)).text
        ),
        Some(p) => {
            files::write_rendered(fleet, &ctx.sources_label(fleet), p).map_err(CliError::msg)?;
            println!("wrote {}", p.display());
        }
    }
    Ok(Outcome::Ok)
}

fn cmd_check(ctx: &Ctx, fleet: &Fleet, file: Option<&Path>, json: bool) -> CmdResult {
    let path = files::policy_path(&ctx.fleet_dir, file);
    let report = files::check_file(fleet, &path).map_err(CliError::msg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).map_err(CliError::msg)?
        );
    } else {
        for line in report.lines() {
            println!("{line}");
        }
        if let Some(summary) = report.summary() {
            eprintln!("{summary}");
        }
    }
    Ok(Outcome::ok_if(report.ok()))
}

fn cmd_matrix(ctx: &Ctx, fleet: &Fleet, file: Option<&Path>, dot: bool, json: bool) -> CmdResult {
    let policy = policy_text(ctx, fleet, file)?;
    let m = files::matrix_of(fleet, &policy).map_err(CliError::msg)?;
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
    policies: &[PathBuf],
    json: bool,
    text: bool,
    backups: &Path,
) -> CmdResult {
    let (old, new) = match policies {
        [old, new] => (
            policy_text(ctx, fleet, Some(old))?,
            policy_text(ctx, fleet, Some(new))?,
        ),
        _ => {
            let new = policy_text(ctx, fleet, policies.first().map(PathBuf::as_path))?;
            let c = client(fleet, api)?;
            let remote = runtime()?
                .block_on(apply::remote(&c, backups))
                .map_err(CliError::msg)?;
            let old = PolicyText {
                text: remote.text,
                name: "tailnet (remote)".to_string(),
            };
            (old, new)
        }
    };
    let d = files::blast_radius(fleet, &old, &new).map_err(CliError::msg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d.json()).map_err(CliError::msg)?
        );
    } else {
        print!("{}", d.text());
        if text {
            print!(
                "{}",
                apply::unified_diff(&old.text, &new.text, &old.name, &new.name)
            );
        }
    }
    Ok(Outcome::ok_if(old.text == new.text))
}

fn cmd_set(
    ctx: &Ctx,
    fleet: &Fleet,
    api: &ApiArgs,
    file: Option<&Path>,
    opts: &apply::SetOptions,
    backups: &Path,
) -> CmdResult {
    let PolicyText { text, name } = policy_text(ctx, fleet, file)?;
    let c = client(fleet, api)?;
    let out = runtime()?
        .block_on(apply::set(&c, fleet, backups, &text, opts))
        .map_err(CliError::msg)?;
    if let Some(d) = &out.blast {
        print!("{}", d.text());
    }
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
