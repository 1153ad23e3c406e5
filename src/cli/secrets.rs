//! `secrets set-authkey | set-nats | rekey | list`: argument parsing and printing; the logic is
//! in [`fleetnix::secrets`]. No secret is ever an argument or printed.

use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::model::NodeName;
use fleetnix::secret::Secret;
use fleetnix::secrets::source::{KeyContext, KeyError, KeySource};
use fleetnix::secrets::{self, identity_or_default, Report, SecretsError};
use std::path::PathBuf;

/// `secrets` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Encrypt a Tailscale auth key to nodes' host keys and the operators' keys.
    ///
    /// The key is read from --from-file, else from $TAILSCALE_AUTHKEY, else from standard input
    /// (prompted without echo on a terminal). It is never taken as an argument.
    SetAuthkey(SetAuthkeyArgs),
    /// Generate NATS passwords for nodes that have none and encrypt every node's password and
    /// the control plane's nats-server environment file and router password (existing passwords
    /// are kept).
    SetNats(SetNatsArgs),
    /// Re-encrypt secrets whose recipients changed (nodes or operator keys edited).
    Rekey(RekeyArgs),
    /// List secrets, their recipients, and whether they are up to date with the manifest.
    List(ListArgs),
}

/// Arguments of `secrets set-authkey`.
#[derive(Debug, clap::Args)]
pub struct SetAuthkeyArgs {
    /// Nodes to write the key for.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub nodes: Vec<String>,
    /// Every node of the manifest.
    #[arg(long)]
    pub all: bool,
    /// Read the key from this file instead of $TAILSCALE_AUTHKEY or standard input.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
}

/// Arguments of `secrets set-nats`.
#[derive(Debug, clap::Args)]
pub struct SetNatsArgs {
    /// Private key that decrypts the existing nats-server environment file, to keep the
    /// passwords in it: an operator's SSH or age identity [default: ~/.ssh/id_ed25519].
    #[arg(long, short, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// Arguments of `secrets rekey`.
#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    /// Private key to decrypt with: an operator's SSH or age identity [default: ~/.ssh/id_ed25519].
    #[arg(long, short, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Rewrite every secret, also those already up to date.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `secrets list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `fleetnix secrets …`.
pub fn run(ctx: &Ctx, cmd: SecretsCommand) -> CmdResult {
    let fleet = ctx.fleet()?;
    match cmd {
        SecretsCommand::SetAuthkey(a) => set_authkey(ctx, &fleet, a),
        SecretsCommand::SetNats(a) => set_nats(ctx, &fleet, a),
        SecretsCommand::Rekey(a) => rekey(ctx, &fleet, a),
        SecretsCommand::List(a) => list(ctx, &fleet, a),
    }
}

/// The key from --from-file, $TAILSCALE_AUTHKEY or standard input, in that order, resolved
/// for `node` (any of the selected nodes: the source reads nothing of the node's).
fn read_key(
    ctx: &Ctx,
    node: &NodeName,
    from_file: Option<&PathBuf>,
) -> Result<(Secret, String), SecretsError> {
    let source = match from_file {
        Some(path) => KeySource::File(path.clone()),
        None if std::env::var_os(fleetnix::secret::env::AUTHKEY).is_some() => KeySource::Env,
        None => KeySource::Stdin,
    };
    let id = secrets::SecretId::new(node.clone(), secrets::SecretKind::TailscaleAuthkey);
    match source.resolve_local(&KeyContext::new(&id, &ctx.root)) {
        Ok(r) => Ok((r.key, r.origin)),
        Err(KeyError::Secrets(e)) => Err(e),
        // File, environment and stdin fail only with `Secrets` for an auth key.
        Err(e) => Err(SecretsError::ReadKey {
            origin: "the key source".into(),
            error: std::io::Error::other(e.to_string()),
        }),
    }
}

fn set_authkey(ctx: &Ctx, fleet: &fleetnix::model::Fleet, args: SetAuthkeyArgs) -> CmdResult {
    // Node names first, so a typo fails before the key is asked for.
    let nodes: Vec<NodeName> = if args.all {
        fleet.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        secrets::select_nodes(fleet, &args.nodes)?
    };
    let Some(first) = nodes.first() else {
        // `--all` on a fleet without nodes (the manifest requires one): nothing to write.
        return Ok(Outcome::Ok);
    };
    let (key, origin) = read_key(ctx, first, args.from_file.as_ref())?;
    // The kind the fleet enrols with (`tailscale_auth`), named with where the key came from.
    if let Err(reason) = fleet.settings.tailscale_auth.check(key.expose()) {
        return Err(SecretsError::WrongCredential { origin, reason }.into());
    }
    let report = secrets::set_authkey(fleet, &ctx.root, &nodes, &key)?;
    drop(key);
    print_report(ctx, &report);
    if report.skipped.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Err(CliError::msg(format_args!(
            "{} node(s) skipped; nothing was encrypted for them",
            report.skipped.len()
        )))
    }
}

fn set_nats(ctx: &Ctx, fleet: &fleetnix::model::Fleet, args: SetNatsArgs) -> CmdResult {
    let identity = identity_or_default(args.identity)?;
    let out = secrets::set_nats(fleet, &ctx.root, &identity)?;
    print_report(ctx, &out.report);
    if ctx.verbose > 0 {
        for f in &out.report.unchanged {
            println!("up to date {f}");
        }
    }
    println!(
        "NATS passwords: {} new ({}), {} kept; {} file(s) written, {} already up to date",
        out.generated.len(),
        if out.generated.is_empty() {
            "-".to_string()
        } else {
            out.generated.join(", ")
        },
        out.kept.len(),
        out.report.written.len(),
        out.report.unchanged.len()
    );
    if !out.services_generated.is_empty() {
        println!(
            "new service password(s): {}",
            out.services_generated.join(", ")
        );
    }
    if out.report.skipped.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Err(CliError::msg(format_args!(
            "{} node(s) skipped; their NATS password is kept in the server environment and written once they have a host key",
            out.report.skipped.len()
        )))
    }
}

fn rekey(ctx: &Ctx, fleet: &fleetnix::model::Fleet, args: RekeyArgs) -> CmdResult {
    let identity = identity_or_default(args.identity)?;
    let report = secrets::rekey(
        fleet,
        &ctx.root,
        &identity,
        &secrets::RekeyOptions { force: args.force },
    )?;
    print_report(ctx, &report);
    if ctx.verbose > 0 {
        for f in &report.unchanged {
            println!("up to date {f}");
        }
    }
    if report.written.is_empty() {
        println!("{} secret(s) already up to date", report.unchanged.len());
    }
    // A secret that exists but cannot be brought up to date is a failure.
    if report.stuck.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Err(CliError::msg(format_args!(
            "{} secret(s) could not be rekeyed",
            report.stuck.len()
        )))
    }
}

fn print_report(ctx: &Ctx, report: &Report) {
    for w in &report.written {
        let who: Vec<String> = w.recipients.iter().map(|r| r.owner.to_string()).collect();
        println!("wrote {} (recipients: {})", w.file, who.join(", "));
        if ctx.verbose > 0 {
            for r in &w.recipients {
                println!("  {}  {}", r.owner, r.key);
            }
        }
    }
    if report.secrets_nix_changed {
        println!("updated {}", secrets::SECRETS_NIX);
    }
    for s in report.skipped.iter().chain(&report.stuck) {
        eprintln!("skipped {}: {}; fix: {}", s.node, s.reason, s.fix);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

fn list(ctx: &Ctx, fleet: &fleetnix::model::Fleet, args: ListArgs) -> CmdResult {
    let statuses = secrets::status(fleet, &ctx.root)?;
    if args.json {
        // Invariant: these types always serialize.
        println!(
            "{}",
            serde_json::to_string_pretty(&statuses).unwrap_or_default()
        );
        return Ok(Outcome::Ok);
    }
    let width = statuses
        .iter()
        .map(|s| s.file.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!("{:width$}  {:11}  RECIPIENTS", "SECRET", "STATUS");
    for s in &statuses {
        let shown = if s.recipients.is_empty() {
            &s.desired
        } else {
            &s.recipients
        };
        let who: Vec<&str> = shown.iter().map(|k| k.owner.as_str()).collect();
        let who = if who.is_empty() {
            "-".to_string()
        } else {
            who.join(", ")
        };
        println!("{:width$}  {:11}  {who}", s.file, s.state.label());
        if let Some(h) = &s.hint {
            println!("{:width$}  {:11}  -> {h}", "", "");
        }
        if ctx.verbose > 0 {
            for k in shown {
                println!("{:width$}  {:11}     {}  {}", "", "", k.owner, k.key);
            }
        }
    }
    Ok(Outcome::Ok)
}
