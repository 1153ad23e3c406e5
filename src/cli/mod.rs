//! Command-line layer: argument types and printing. Logic lives in the library.
//!
//! The binary's thin layer (not part of the library): parses arguments, calls the library,
//! prints. May import any stage.

pub mod acl;
pub mod authkey;
pub mod bootstrap;
pub mod bus;
pub mod completions;
pub mod deploy;
pub mod dispatch;
pub mod enrolment;
pub mod health;
pub mod nats_conf;
pub mod node;
pub mod plan;
pub mod render;
pub mod report;
pub mod route;
pub mod router;
pub mod secrets;
pub mod show;
pub mod status;
pub mod table;
pub mod targets;
pub mod validate;

use clap::{Parser, Subcommand};
use fleetnix::manifest;
use fleetnix::model::Fleet;
pub use report::{CliError, CmdResult, Outcome};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// fleetnix: put NixOS machines into a Tailscale fleet, correctly and safely.
#[derive(Debug, Parser)]
#[command(name = "fleetnix", version, about)]
pub struct Cli {
    /// Repository root (holds nix/, secrets/, flake.nix).
    #[arg(long, global = true, default_value = ".", env = "FLEETNIX_ROOT")]
    pub root: PathBuf,
    /// Directory of nodes.yml, fleet.yml and services.yml [default: <root>/fleet].
    #[arg(long, global = true, env = "FLEETNIX_FLEET_DIR")]
    pub fleet_dir: Option<PathBuf>,
    /// More output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// fleetnix's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check nodes.yml, fleet.yml and services.yml.
    Validate,
    /// Write nix/nodes/<node>.nix for every node.
    Render(render::RenderArgs),
    /// Show one node's plan: tags, ports, agent arguments, secrets, access.
    Show(show::ShowArgs),
    /// What a deploy would change, node by node (exit 0: nothing, 2: something, 1: error).
    Plan(plan::PlanArgs),
    /// Deploy nodes (nixos-rebuild over Tailscale SSH, or the non-NixOS installer).
    Deploy(deploy::DeployArgs),
    /// Bring a fresh VM into the fleet over its public address.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Print cloud-init user-data for a node.
    CloudInit(bootstrap::CloudInitArgs),
    /// Age-encrypted secrets (Tailscale auth keys, NATS passwords).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// The Tailscale policy file: render, check, matrix, get, diff, set.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Tailscale auth keys through the API.
    #[command(subcommand)]
    Authkey(authkey::AuthkeyCommand),
    /// Fleet nodes as the tailnet sees them, and drift from the manifest.
    Status(status::StatusArgs),
    /// Probe every node and its services.
    Health(health::HealthArgs),
    /// Pick the node for the next task of a role.
    Route(route::RouteArgs),
    /// Send a task to a role over NATS, through the control plane's router.
    Dispatch(dispatch::DispatchArgs),
    /// Register the fleet with the control plane (the `fleet-nodes` bucket).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// The control plane's task router: answers fleet.dispatch.<role> (a long-running service).
    Router(router::RouterArgs),
    /// Print the control plane's nats-server configuration (no secret in it).
    NatsConf(nats_conf::NatsConfArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(completions::CompletionsArgs),
    /// Print fleetnix's man page (roff) on stdout, or write one page per command into a directory.
    Man(completions::ManArgs),
}

/// What every command gets: where the repository and fleet files are.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Repository root.
    pub root: PathBuf,
    /// Fleet directory.
    pub fleet_dir: PathBuf,
    /// Verbosity.
    pub verbose: u8,
}

impl Ctx {
    /// Builds the context from parsed flags.
    pub fn new(cli: &Cli) -> Self {
        Ctx {
            fleet_dir: cli
                .fleet_dir
                .clone()
                .unwrap_or_else(|| cli.root.join("fleet")),
            root: cli.root.clone(),
            verbose: cli.verbose,
        }
    }

    /// Loads and validates the fleet (the reporter prints every problem with its source).
    pub fn fleet(&self) -> Result<Fleet, CliError> {
        Ok(manifest::load(&self.fleet_dir)?)
    }

    /// The manifest files relative to the root, for generated-file headers.
    pub fn sources_label(&self, fleet: &Fleet) -> String {
        let rel = |p: &Path| -> String {
            p.strip_prefix(&self.root)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        format!(
            "{}, {}, {}",
            rel(&fleet.sources.nodes),
            rel(&fleet.sources.fleet),
            rel(&fleet.sources.services)
        )
    }
}

/// The async runtime the executors run on (two worker threads: this is an I/O-bound CLI).
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format_args!("cannot start the async runtime: {e}")))
}

/// The node called `name`, or an error naming the known nodes.
pub fn node<'f>(fleet: &'f Fleet, name: &str) -> Result<&'f fleetnix::model::Node, CliError> {
    fleet.node(name).ok_or_else(|| {
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        CliError::msg(format_args!(
            "no node `{name}` in {} (nodes: {})",
            fleet.sources.nodes.display(),
            names.join(", ")
        ))
    })
}

/// Pretty (or one-line) JSON of `v`.
pub fn to_json<T: serde::Serialize>(v: &T, pretty: bool) -> Result<String, CliError> {
    let r = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    r.map_err(|e| CliError::msg(format_args!("cannot encode JSON: {e}")))
}

/// The command's name for the repository lock if it writes to the repository (`None` for
/// read-only commands, which never take the lock). Never includes arguments.
pub fn writer_name(command: &Command) -> Option<&'static str> {
    use acl::AclCommand as A;
    use secrets::SecretsCommand as S;
    match command {
        Command::Render(a) if !a.check => Some("render"),
        Command::Deploy(a) if !a.dry_run => Some("deploy"),
        Command::Bootstrap(_) => Some("bootstrap"),
        Command::Secrets(S::SetAuthkey(_)) => Some("secrets set-authkey"),
        Command::Secrets(S::SetNats(_)) => Some("secrets set-nats"),
        Command::Secrets(S::Rekey(_)) => Some("secrets rekey"),
        Command::Acl(A::Get(_)) => Some("acl get"),
        Command::Acl(A::Set { .. }) => Some("acl set"),
        Command::Acl(A::Render {
            output: Some(_), ..
        }) => Some("acl render -o"),
        Command::Authkey(_) => Some("authkey mint"),
        // The registry is written from the manifest of this repository: one sync at a time.
        Command::Node(node::NodeCommand::Sync(_)) => Some("node sync"),
        _ => None,
    }
}

/// Takes the repository lock for `name` (`fleetnix <name>` is shown to a second fleetnix).
/// Hold the result until the command is done.
pub fn lock(ctx: &Ctx, name: &str) -> Result<fleetnix::lock::RepoLock, CliError> {
    use fleetnix::lock::{wait_from_env, RepoLock};
    let wait = wait_from_env().map_err(CliError::msg)?;
    RepoLock::acquire_with(&ctx.root, &format!("fleetnix {name}"), wait, |holder| {
        eprintln!(
            "waiting for another fleetnix ({holder}) to finish (up to {})",
            humantime::format_duration(wait)
        )
    })
    .map_err(CliError::msg)
}

/// Runs the parsed command; the one place that prints a command's error and picks the exit code.
pub fn run(cli: Cli) -> ExitCode {
    match dispatch_command(cli) {
        Ok(outcome) => outcome.code(),
        Err(e) => {
            e.report();
            e.code()
        }
    }
}

fn dispatch_command(cli: Cli) -> CmdResult {
    let ctx = Ctx::new(&cli);
    // Writers hold the repository lock until they are done; the kernel frees it at exit.
    let _lock = writer_name(&cli.command)
        .map(|name| lock(&ctx, name))
        .transpose()?;
    match cli.command {
        Command::Validate => validate::run(&ctx),
        Command::Render(a) => render::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Plan(a) => plan::run(&ctx, a),
        Command::Deploy(a) => deploy::run(&ctx, a),
        Command::Bootstrap(a) => bootstrap::bootstrap(&ctx, a),
        Command::CloudInit(a) => bootstrap::cloud_init(&ctx, a),
        Command::Secrets(c) => secrets::run(&ctx, c),
        Command::Acl(c) => acl::run(&ctx, c),
        Command::Authkey(c) => authkey::run(&ctx, c),
        Command::Status(a) => status::run(&ctx, a),
        Command::Health(a) => health::run(&ctx, a),
        Command::Route(a) => route::run(&ctx, a),
        Command::Dispatch(a) => dispatch::run(&ctx, a),
        Command::Node(c) => node::run(&ctx, c),
        Command::Router(a) => router::run(&ctx, a),
        Command::NatsConf(a) => nats_conf::run(&ctx, a),
        Command::Completions(a) => completions::completions(a),
        Command::Man(a) => completions::man(a),
    }
}
