//! Command-line layer: argument types and printing. Logic lives in the library.

pub mod acl;
pub mod bootstrap;
pub mod bus;
pub mod core;
pub mod deploy;
pub mod health;
pub mod plan;
pub mod secrets;

use clap::{Parser, Subcommand};
use fleetnix::manifest::{self, ManifestError};
use fleetnix::model::Fleet;
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
    Render(core::RenderArgs),
    /// Show one node's plan: tags, ports, agent arguments, secrets, access.
    Show(core::ShowArgs),
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
    Authkey(acl::AuthkeyCommand),
    /// Fleet nodes as the tailnet sees them, and drift from the manifest.
    Status(health::StatusArgs),
    /// Probe every node and its services.
    Health(health::HealthArgs),
    /// Pick the node for the next task of a role.
    Route(health::RouteArgs),
    /// Send a task to a role over NATS, through the control plane's router.
    Dispatch(bus::DispatchArgs),
    /// Register the fleet with the control plane (the `fleet-nodes` bucket).
    #[command(subcommand)]
    Node(bus::NodeCommand),
    /// The control plane's task router: answers fleet.dispatch.<role> (a long-running service).
    Router(bus::RouterArgs),
    /// Print the control plane's nats-server configuration (no secret in it).
    NatsConf(bus::NatsConfArgs),
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

    /// Loads and validates the fleet; on failure prints every problem with its source and returns exit code 1.
    pub fn fleet(&self) -> Result<Fleet, ExitCode> {
        manifest::load(&self.fleet_dir).map_err(|e| {
            report_manifest_error(&e);
            ExitCode::from(1)
        })
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

/// Prints `error: <msg>` on stderr; exit code 1.
pub fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// The async runtime the executors run on (two worker threads: this is an I/O-bound CLI).
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(format_args!("cannot start the async runtime: {e}")))
}

/// The node called `name`, or an error naming the known nodes (exit code 1).
pub fn node<'f>(fleet: &'f Fleet, name: &str) -> Result<&'f fleetnix::model::Node, ExitCode> {
    fleet.node(name).ok_or_else(|| {
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        fail(format_args!(
            "no node `{name}` in {} (nodes: {})",
            fleet.sources.nodes.display(),
            names.join(", ")
        ))
    })
}

/// Prints a manifest error with miette: one diagnostic per problem, each with its source line.
pub fn report_manifest_error(e: &ManifestError) {
    match e {
        ManifestError::Invalid { problems, sources } => {
            for p in problems {
                let text = sources
                    .iter()
                    .find(|(path, _)| *path == p.file)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                let offset = p.offset.min(text.len());
                let len = p.len.min(text.len() - offset);
                // One grep-friendly line, then the source snippet.
                eprintln!("error: {p}");
                let diag = miette::MietteDiagnostic::new(p.message.clone())
                    .with_code("fleetnix::manifest")
                    .with_label(miette::LabeledSpan::at(
                        offset..offset + len,
                        p.expected
                            .clone()
                            .map(|e| format!("expected {e}"))
                            .unwrap_or_else(|| p.message.clone()),
                    ));
                let report = miette::Report::new(diag)
                    .with_source_code(miette::NamedSource::new(p.file.display().to_string(), text));
                eprintln!("{report:?}");
            }
            eprintln!(
                "error: {} problem(s) in the fleet files; nothing was written",
                problems.len()
            );
        }
        other => eprintln!("error: {other}"),
    }
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
        Command::Node(bus::NodeCommand::Sync(_)) => Some("node sync"),
        _ => None,
    }
}

/// Takes the repository lock for `name` (`fleetnix <name>` is shown to a second fleetnix);
/// on failure prints why (exit code 1). Hold the result until the command is done.
pub fn lock(ctx: &Ctx, name: &str) -> Result<fleetnix::lock::RepoLock, ExitCode> {
    use fleetnix::lock::{wait_from_env, RepoLock};
    let wait = wait_from_env().map_err(fail)?;
    RepoLock::acquire_with(&ctx.root, &format!("fleetnix {name}"), wait, |holder| {
        eprintln!(
            "waiting for another fleetnix ({holder}) to finish (up to {})",
            humantime::format_duration(wait)
        )
    })
    .map_err(fail)
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> ExitCode {
    let ctx = Ctx::new(&cli);
    // Writers hold the repository lock until they are done; the kernel frees it at exit.
    let _lock = match writer_name(&cli.command).map(|name| lock(&ctx, name)) {
        Some(Err(code)) => return code,
        Some(Ok(l)) => Some(l),
        None => None,
    };
    match cli.command {
        Command::Validate => core::validate(&ctx),
        Command::Render(a) => core::render(&ctx, a),
        Command::Show(a) => core::show(&ctx, a),
        Command::Plan(a) => plan::run(&ctx, a),
        Command::Deploy(a) => deploy::run(&ctx, a),
        Command::Bootstrap(a) => bootstrap::bootstrap(&ctx, a),
        Command::CloudInit(a) => bootstrap::cloud_init(&ctx, a),
        Command::Secrets(c) => secrets::run(&ctx, c),
        Command::Acl(c) => acl::run(&ctx, c),
        Command::Authkey(c) => acl::authkey(&ctx, c),
        Command::Status(a) => health::status(&ctx, a),
        Command::Health(a) => health::health(&ctx, a),
        Command::Route(a) => health::route(&ctx, a),
        Command::Dispatch(a) => bus::dispatch(&ctx, a),
        Command::Node(c) => bus::node(&ctx, c),
        Command::Router(a) => bus::router(&ctx, a),
        Command::NatsConf(a) => bus::nats_conf(&ctx, a),
    }
}
