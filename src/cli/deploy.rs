//! `deploy`: parses arguments, prints progress and the summary. The work is in `fleetnix::deploy`.

use super::targets::{selected_plans, Selected};
use super::{CliError, CmdResult, Ctx};
use fleetnix::deploy::plan::{self as deploy_plan, PlanTools};
use fleetnix::deploy::report::{Cancel, Event, Outcome, Summary};
use fleetnix::deploy::rollout::{self, Batch, Rollout};
use fleetnix::deploy::{
    drain, dryrun, ensure_rendered, Action, BuildOn, DeployOptions, RenderMode, RenderState,
    SecretsAuthKey, DEFAULT_PARALLEL,
};
use fleetnix::exec::ssh::SshTransport;
use fleetnix::spec;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `--action`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ActionArg {
    /// Activate and make it the boot default (rollback-guarded).
    Switch,
    /// Boot default only.
    Boot,
    /// Activate, not for the next boot.
    Test,
}

/// `--build-on`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BuildOnArg {
    /// Build here, copy the closure.
    Local,
    /// Build on the node.
    Target,
}

/// Arguments of `deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Node names or `@role` (e.g. `worker-01 @glm-worker`).
    pub targets: Vec<String>,
    /// Every node.
    #[arg(long)]
    pub all: bool,
    /// Print per node the commands and environment that would run; connect nowhere, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Nodes deployed at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// What nixos-rebuild does.
    #[arg(long, value_enum, default_value = "switch")]
    pub action: ActionArg,
    /// Where the system is built.
    #[arg(long, value_enum, default_value = "local")]
    pub build_on: BuildOnArg,
    /// Refuse to deploy if nix/nodes/*.nix are stale instead of rendering them first.
    #[arg(long)]
    pub no_render: bool,
    /// Stop starting nodes after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Do not arm the rollback guard for `switch`.
    #[arg(long)]
    pub no_rollback: bool,
    /// Do not check tailscaled, the agent and the hosted services after a guarded switch's
    /// activation (the health gate, see docs/deploy.md).
    #[arg(long)]
    pub no_health_gate: bool,
    /// Share one SSH connection per node for the steps before the guard's confirmation
    /// (faster; an unreachable node is then detected by keep-alives, see docs/deploy.md).
    #[arg(long)]
    pub ssh_multiplex: bool,
    /// Seconds the node waits for the post-activation confirmation before rolling back (with a
    /// reboot: after it boots the new generation, before its boot guard restores the previous one).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(5..))]
    pub rollback_grace: u64,
    /// Reboot into the new generation: `never` (the summary says which nodes need one), `auto`
    /// (where its kernel, initrd, modules, kernel parameters or systemd differ from the booted
    /// system) or `always`; guarded by a boot guard on the node (see docs/deploy.md).
    #[arg(long, default_value = "never", value_parser = ["never", "auto", "always"])]
    pub reboot: String,
    /// Seconds a rebooting node may take until SSH answers again.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(5..))]
    pub reboot_timeout: u64,
    /// SSH identity file (default: ssh's own keys and agent).
    #[arg(long)]
    pub ssh_identity: Option<PathBuf>,
    /// Private key that decrypts non-NixOS nodes' auth keys (secrets/<node>/tailscale-authkey.age)
    /// when TAILSCALE_AUTHKEY is not set, and the `_registry` NATS password for draining when
    /// FLEETNIX_NATS_PASSWORD is not set: an operator's SSH or age identity [default: ~/.ssh/id_ed25519].
    #[arg(long, short, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Tailscale install script URL for non-NixOS nodes [env: FLEETNIX_TAILSCALE_INSTALL_URL].
    #[arg(long)]
    pub install_url: Option<String>,
    /// Deploy the first N selected nodes alone first; the rest only if all of them succeed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: usize,
    /// After the canaries, deploy in waves of at most N nodes (or P% of the selected nodes),
    /// each wave finishing before the next starts.
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<Batch>,
    /// Start no more nodes once more than K have failed (the rest: `skipped (halted)`).
    #[arg(long, value_name = "K")]
    pub max_failures: Option<usize>,
    /// Deploy nodes that already run their target system too (by default they are skipped
    /// and reported `unchanged`, see `fleetnix plan`).
    #[arg(long)]
    pub force: bool,
    /// Flake inputs.
    #[command(flatten)]
    pub flake: super::targets::FlakeArgs,
    /// Evaluator processes (for skipping unchanged nodes).
    #[command(flatten)]
    pub eval: super::targets::EvalArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// After the deploy, make the tags of the deployed nodes' devices follow their roles through
    /// the Tailscale API (`POST /device/{id}/tags`; a running node never re-reads
    /// `--advertise-tags`). Needs TS_API_KEY or --token-file.
    #[arg(long)]
    pub retag: bool,
    /// With --retag: file holding the API access token [default: TS_API_KEY].
    #[arg(long, value_name = "FILE", requires = "retag")]
    pub token_file: Option<std::path::PathBuf>,
    /// How long draining a node that runs an agent waits for its running tasks before the
    /// deploy goes on anyway (e.g. 90s, 5m) [default: the fleet's task_timeout_seconds].
    #[arg(long, value_name = "DURATION", value_parser = fleetnix::bus::dispatch::parse_timeout)]
    pub drain_timeout: Option<Duration>,
    /// Do not drain nodes on the bus before activating them (nor undrain them after).
    #[arg(long, conflicts_with = "drain_timeout")]
    pub no_drain: bool,
    /// The NATS server draining goes through [default: nats_url from fleet.yml]. The
    /// `_registry` user's password: FLEETNIX_NATS_PASSWORD, else decrypted with --identity.
    #[arg(long, env = "FLEETNIX_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
}

/// `--retag`: the deployed (or unchanged) nodes' device tags made to follow their roles.
fn retag(
    fleet: &fleetnix::model::Fleet,
    summary: &fleetnix::deploy::report::Summary,
    client: &fleetnix::tailscale::api::Client,
) -> Result<bool, CliError> {
    let nodes: Vec<fleetnix::model::NodeName> = summary
        .nodes
        .iter()
        .filter(|n| n.outcome.is_success())
        .filter_map(|n| fleetnix::model::NodeName::parse(&n.node).ok())
        .collect();
    match super::runtime()?.block_on(fleetnix::tailscale::prefs::reconcile_tags(
        client, fleet, &nodes,
    )) {
        Ok(changes) => {
            for c in &changes {
                eprintln!(
                    "retagged {} ({}): {} -> {}",
                    c.node,
                    c.device_id,
                    if c.from.is_empty() {
                        "none".to_string()
                    } else {
                        c.from.join(",")
                    },
                    c.to.join(",")
                );
            }
            if changes.is_empty() {
                eprintln!("tags: every deployed node's device already carries its roles' tags");
            }
            Ok(true)
        }
        Err(e) => {
            eprintln!("error: retagging through the Tailscale API: {e}");
            Ok(false)
        }
    }
}

/// `fleetnix deploy`.
pub fn run(ctx: &Ctx, args: DeployArgs) -> CmdResult {
    let Selected {
        fleet,
        root,
        all_plans,
        plans,
    } = selected_plans(ctx, &args.targets, args.all)?;
    // --retag: the token is checked before anything is rendered or deployed.
    let retag_client = if args.retag {
        Some(super::acl::client(
            &fleet,
            &super::acl::ApiArgs {
                token_file: args.token_file.clone(),
            },
        )?)
    } else {
        None
    };
    let mode = if args.dry_run {
        RenderMode::Report
    } else if args.no_render {
        RenderMode::Refuse
    } else {
        RenderMode::Write
    };
    let render = ensure_rendered(&fleet, &root, &all_plans, &ctx.sources_label(&fleet), mode)
        .map_err(CliError::msg)?;
    if let RenderState::Rendered(files) = &render {
        eprintln!("rendered {} stale file(s) before deploying", files.len());
    }
    let mut opts = DeployOptions::new(&root, &fleet.settings);
    opts.action = match args.action {
        ActionArg::Switch => Action::Switch,
        ActionArg::Boot => Action::Boot,
        ActionArg::Test => Action::Test,
    };
    opts.build_on = match args.build_on {
        BuildOnArg::Local => BuildOn::Local,
        BuildOnArg::Target => BuildOn::Target,
    };
    opts.parallel = usize::from(args.parallel);
    opts.fail_fast = args.fail_fast;
    opts.rollback = !args.no_rollback;
    opts.health_gate = !args.no_health_gate;
    opts.multiplex = args.ssh_multiplex;
    opts.rollback_grace = Duration::from_secs(args.rollback_grace);
    opts.reboot = fleetnix::deploy::reboot::RebootMode::parse(&args.reboot).ok_or_else(|| {
        CliError::msg(format!(
            "--reboot {}: expected never, auto or always",
            args.reboot
        ))
    })?;
    if opts.reboot != fleetnix::deploy::reboot::RebootMode::Never && !opts.guarded() {
        return Err(CliError::msg(format!(
            "--reboot {} needs the guarded switch: it cannot be used with --no-rollback or --action boot|test",
            args.reboot
        )));
    }
    opts.reboot_timeout = Duration::from_secs(args.reboot_timeout);
    opts.ssh.identity = args.ssh_identity;
    if let Some(u) = args.install_url {
        opts.install_url = u;
    }
    opts.override_inputs = args.flake.inputs()?;
    opts.drain_enabled = !args.no_drain;
    if let Some(t) = args.drain_timeout {
        opts.drain_timeout = t;
    }
    opts.check().map_err(CliError::msg)?;
    // Only read if a node needs `tailscale up` and TAILSCALE_AUTHKEY is not set.
    let identity_arg = args.identity.clone();
    let identity = identity_for(args.identity, &plans)?;
    let authkeys = Arc::new(SecretsAuthKey::new(&root, &identity));
    if args.dry_run {
        print!(
            "{}",
            dryrun::dry_run(&plans, &opts, authkeys.as_ref(), &render)
        );
        return Ok(super::Outcome::Ok);
    }
    if plans.iter().any(|p| drain::applies(&opts, p)) {
        opts.drain = Some(bus_drain(ctx, &fleet, &args.nats_url, &identity_arg));
    }
    let rt = super::runtime()?;
    let transport = SshTransport {
        config: opts.ssh.clone(),
    };
    let verbose = ctx.verbose;
    let force = args.force;
    let eval_args = args.eval.clone();
    let rollout_plan = Rollout {
        canary: args.canary,
        batch: args.batch,
        max_failures: args.max_failures,
    };
    let summary = rt.block_on(async move {
        let mut opts = opts;
        // Nodes already running their target system are left out (same code as `plan`).
        let (plans, unchanged) = if force {
            (plans, Vec::new())
        } else if rollout_plan == Rollout::default() {
            // No rollout: each node's connect step compares its running system with the target.
            let mut tools = PlanTools::locate(opts.step_timeout);
            eval_args.apply(&mut tools);
            opts.skip_if_running =
                Arc::new(deploy_plan::targets_to_skip(&plans, &opts, &tools).await);
            (plans, Vec::new())
        } else {
            let mut tools = PlanTools::locate(opts.step_timeout);
            eval_args.apply(&mut tools);
            let (plans, unchanged, warnings) =
                deploy_plan::skip_unchanged(plans, &opts, &tools, transport.clone()).await;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            for r in &unchanged {
                print_event(&Event::Finished(r.clone()), verbose);
            }
            (plans, unchanged)
        };
        let cancel = Cancel::default();
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: no new nodes start; waiting for running nodes to finish");
                c.cancel();
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            // A live line per node on a terminal; plain lines otherwise (logs, CI, -v).
            let mut bars = (verbose == 0 && std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .then(Bars::default);
            while let Some(e) = rx.recv().await {
                match bars.as_mut() {
                    Some(b) => b.show(&e),
                    None => print_event(&e, verbose),
                }
            }
        });
        let s = rollout::deploy(
            plans,
            opts,
            rollout_plan,
            transport,
            authkeys,
            Some(tx),
            cancel,
        )
        .await;
        let _ = printer.await;
        (s, unchanged)
    });
    let (mut summary, unchanged) = summary;
    deploy_plan::merge_skipped(&mut summary, unchanged);
    let retagged = match &retag_client {
        Some(c) => retag(&fleet, &summary, c)?,
        None => true,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(CliError::msg)?
        );
    } else {
        print!("\n{}", summary_table(&summary));
    }
    Ok(super::Outcome::ok_if(summary.success() && retagged))
}

/// `--identity`, else [`fleetnix::secret::default_identity`]. Without `$HOME` there is no
/// default: an error if a selected node may need its auth key decrypted (not declared NixOS
/// and `TAILSCALE_AUTHKEY` unset), else a path that is never read.
fn identity_for(identity: Option<PathBuf>, plans: &[spec::NodeSpec]) -> Result<PathBuf, CliError> {
    if let Some(p) = identity.or_else(fleetnix::secret::default_identity) {
        return Ok(p);
    }
    let needs_key = std::env::var_os(fleetnix::deploy::env::AUTHKEY).is_none()
        && plans
            .iter()
            .any(|p| p.access.os != fleetnix::model::Os::Nixos);
    if needs_key {
        return Err(CliError::msg(
            "$HOME is not set, so there is no default identity (~/.ssh/id_ed25519) to decrypt auth keys with: pass --identity or set TAILSCALE_AUTHKEY",
        ));
    }
    Ok(PathBuf::new())
}

/// One spinner line per node (indicatif), updated from the runner's events.
#[derive(Default)]
struct Bars {
    multi: indicatif::MultiProgress,
    lines: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Bars {
    fn line(&mut self, node: &str) -> &indicatif::ProgressBar {
        let multi = &self.multi;
        self.lines.entry(node.to_string()).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {prefix:<16} {elapsed:>4} {msg}")
            {
                bar.set_style(style);
            }
            bar.set_prefix(node.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    fn show(&mut self, e: &Event) {
        match e {
            Event::Started { node } => self.line(node).set_message("started"),
            Event::Step { node, step } => self.line(node).set_message(step.as_str()),
            Event::Retrying { node, reason } => self
                .line(node)
                .set_message(format!("{reason}; retrying once")),
            Event::Finished(r) => {
                let msg = match r.outcome {
                    Outcome::Failed => format!(
                        "FAILED at {}: {}",
                        r.step.map(|s| s.as_str()).unwrap_or("-"),
                        r.detail
                    ),
                    o => format!("{} {}", o.as_str(), r.detail),
                };
                self.line(&r.node).finish_with_message(msg);
            }
            Event::Warning(w) => {
                let _ = self.multi.println(format!("warning: {w}"));
            }
        }
    }
}

fn print_event(e: &Event, verbose: u8) {
    match e {
        Event::Started { node } => eprintln!("{node}: started"),
        Event::Step { node, step } if verbose > 0 => eprintln!("{node}: {}", step.as_str()),
        Event::Step { .. } => {}
        Event::Retrying { node, reason } => eprintln!("{node}: {reason}; retrying once"),
        Event::Finished(r) => {
            let d = format!("{:.1}s", r.duration.as_secs_f64());
            match r.outcome {
                Outcome::Failed => eprintln!(
                    "{}: FAILED at {} after {d}: {}",
                    r.node,
                    r.step.map(|s| s.as_str()).unwrap_or("-"),
                    r.detail
                ),
                o => eprintln!("{}: {} ({d}) {}", r.node, o.as_str(), r.detail),
            }
        }
        Event::Warning(w) => eprintln!("warning: {w}"),
    }
}

/// The summary as a table: node, action, result, duration, detail.
pub fn summary_table(s: &Summary) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "ACTION".to_string(),
        "RESULT".to_string(),
        "DURATION".to_string(),
        "DETAIL".to_string(),
    ]];
    for n in &s.nodes {
        let detail = match n.step {
            Some(step) => format!("[{}] {}", step.as_str(), n.detail),
            None => n.detail.clone(),
        };
        let detail = if n.attempts > 1 {
            format!("{detail} (after {} attempts)", n.attempts)
        } else {
            detail
        };
        rows.push([
            n.node.clone(),
            n.action.clone(),
            n.outcome.as_str().to_string(),
            format!("{:.1}s", n.duration.as_secs_f64()),
            detail,
        ]);
    }
    let mut w = [0usize; 4];
    for r in &rows {
        for i in 0..4 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        ));
    }
    let ok = s.nodes.iter().filter(|n| n.outcome.is_success()).count();
    out.push_str(&format!("{ok}/{} node(s) succeeded", s.nodes.len()));
    if s.interrupted {
        out.push_str(" (interrupted)");
    }
    out.push('\n');
    out
}

/// The bus's side of draining ([`drain::Drain`]): `fleet-drain` written as the control plane's
/// `_registry` user (as `fleetnix node drain` does), the router's `fleet-health` view read for
/// the node's running tasks. Each call connects anew, bounded by `node_timeout_seconds`.
#[derive(Debug)]
struct BusDrain {
    url: String,
    password: fleetnix::secret::Secret,
    timeout: Duration,
}

/// Why a drain record is ours: a deploy left it (a failed deploy keeps the node drained; the
/// next successful one undrains it).
const DRAIN_REASON: &str = "fleetnix deploy";

/// The drain hook of this deploy: the bus, or a note saying why it cannot be reached.
fn bus_drain(
    ctx: &Ctx,
    fleet: &fleetnix::model::Fleet,
    nats_url: &Option<String>,
    identity: &Option<PathBuf>,
) -> Arc<dyn drain::Drain> {
    let conn = super::bus::Conn {
        // An empty FLEETNIX_NATS_URL counts as unset.
        nats_url: nats_url.clone().filter(|u| !u.trim().is_empty()),
        password_file: None,
        identity: identity.clone(),
    };
    match super::bus::registry_password(ctx, fleet, &conn) {
        Ok(password) => Arc::new(BusDrain {
            url: super::bus::url(fleet, &conn),
            password,
            timeout: Duration::from_secs(u64::from(
                fleet.settings.failure.node_timeout_seconds.max(1),
            )),
        }),
        // deploy has no --password-file: the password comes from the environment or --identity.
        Err(e) => Arc::new(drain::Unavailable(
            e.to_string().replace("pass --password-file, or ", "or "),
        )),
    }
}

impl BusDrain {
    async fn connect(&self) -> Result<async_nats::jetstream::Context, String> {
        let user = fleetnix::bus::users::Service::Registry.user();
        let client =
            fleetnix::bus::dispatch::connect_as(&self.url, user, &self.password, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
        Ok(async_nats::jetstream::new(client))
    }
}

fn node_name(node: &str) -> Result<fleetnix::model::NodeName, String> {
    fleetnix::model::NodeName::parse(node).map_err(|e| e.to_string())
}

impl drain::Drain for BusDrain {
    fn drain<'a>(
        &'a self,
        node: &'a str,
        limit: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<drain::Drained, String>> {
        Box::pin(async move {
            let name = node_name(node)?;
            let js = self.connect().await?;
            let d = fleetnix::bus::drain::drain_owned(&js, &name, DRAIN_REASON, limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok(drain::Drained {
                already: d.already,
                in_flight: d.entry.map(|e| e.in_flight),
            })
        })
    }

    fn undrain<'a>(
        &'a self,
        node: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>> {
        use fleetnix::bus::drain::{undrain_owned, Undrained};
        Box::pin(async move {
            let name = node_name(node)?;
            let js = self.connect().await?;
            match undrain_owned(&js, &name, DRAIN_REASON)
                .await
                .map_err(|e| e.to_string())?
            {
                Undrained::NotDrained | Undrained::Undrained => Ok(()),
                Undrained::DrainedByOther(reason) => Err(format!(
                    "drained again meanwhile ({}), left as it is",
                    reason.unwrap_or_else(|| "unreadable record".into())
                )),
            }
        })
    }
}
