//! `bootstrap` and `cloud-init`.

use super::{CliError, CmdResult, Ctx, Outcome};

/// Arguments of `bootstrap`. The auth key comes from `--authkey-file`, `TAILSCALE_AUTHKEY`,
/// the node's `.age` file (with `--identity`), or is minted when `TS_API_KEY`/`--token-file` is given.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The node (declared in nodes.yml, not yet in the tailnet).
    pub node: String,
    /// The VM's public SSH login [default: <ssh_user>@<public_address> from nodes.yml].
    #[arg(long, value_name = "USER@HOST")]
    pub ssh: Option<String>,
    /// The VM's host key fingerprint, read on its console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`).
    #[arg(long, value_name = "SHA256:…")]
    pub host_key_fingerprint: Option<String>,
    /// SSH identity file (default: ssh's own keys and agent).
    #[arg(long, value_name = "FILE")]
    pub ssh_identity: Option<std::path::PathBuf>,
    /// Read the Tailscale auth key from FILE.
    #[arg(long, value_name = "FILE")]
    pub authkey_file: Option<std::path::PathBuf>,
    /// Identity that decrypts the node's existing `.age` auth key (operator SSH or age key).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// Tailscale API token file (else `TS_API_KEY`): mints the auth key, sets the node's address.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Tailscale install script URL for non-NixOS VMs [env: FLEETNIX_TAILSCALE_INSTALL_URL].
    #[arg(long)]
    pub install_url: Option<String>,
    /// Seconds to wait for the node to appear in `tailscale status`.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub wait_timeout: u64,
    /// Do not arm the rollback guard for the first NixOS switch.
    #[arg(long)]
    pub no_rollback: bool,
    /// Seconds a NixOS VM waits for the post-activation confirmation before rolling back.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(5..))]
    pub rollback_grace: u64,
    /// Flake inputs (for the first nixos-rebuild of a NixOS VM).
    #[command(flatten)]
    pub flake: super::targets::FlakeArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cloud-init`. The auth key comes from `--mint`, `--identity` (the node's `.age`
/// file), `TAILSCALE_AUTHKEY`, piped stdin, or on a terminal the node's `.age` file with
/// `~/.ssh/id_ed25519` — never from an argument.
#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {
    /// The node.
    pub node: String,
    /// Decrypt the auth key from secrets/<node>/tailscale-authkey.age with this private key (an
    /// operator's SSH or age identity).
    #[arg(long, short, value_name = "FILE", conflicts_with = "mint")]
    pub identity: Option<std::path::PathBuf>,
    /// Mint a one-off, pre-authorised, tagged key through the Tailscale API for this user-data
    /// (API token from TS_API_KEY or --token-file); it is not stored.
    #[arg(long)]
    pub mint: bool,
    /// API access for --mint.
    #[command(flatten)]
    pub api: super::acl::ApiArgs,
    /// Lifetime of a minted key in seconds.
    #[arg(long, default_value_t = fleetnix::tailscale::authkey::AUTHKEY_EXPIRY_SECONDS, requires = "mint")]
    pub expiry_seconds: u64,
    /// Write the user-data to FILE (mode 0600, atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Also install and enable the agent's systemd unit.
    #[arg(long)]
    pub with_agent: bool,
    /// Tailscale install script URL (https).
    #[arg(long, default_value = fleetnix::outputs::cloudinit::DEFAULT_INSTALL_URL)]
    pub install_url: String,
    /// Path of the agent binary on the VM (with --with-agent).
    #[arg(long, default_value = fleetnix::outputs::agent::DEFAULT_AGENT_BIN)]
    pub agent_bin: String,
}

/// `fleetnix bootstrap NODE --ssh USER@HOST`: progress on stderr, the report on stdout.
pub fn bootstrap(ctx: &Ctx, a: BootstrapArgs) -> CmdResult {
    use fleetnix::bootstrap::{self as bs, authkey::KeySources, hostkey, Event, SshDest};
    use std::io::IsTerminal;
    /// Shows the VM's host keys on the terminal and asks whether to trust the first one.
    struct TerminalPrompt;

    impl fleetnix::bootstrap::HostKeyPrompt for TerminalPrompt {
        fn accept(
            &self,
            node: &str,
            address: &std::net::IpAddr,
            keys: &[fleetnix::bootstrap::hostkey::ScannedKey],
        ) -> Option<usize> {
            let i = keys.iter().position(|k| k.recordable())?;
            eprintln!("{address} offers these SSH host keys for {node}:");
            for k in keys {
                eprintln!("  {} {}", k.kind(), k.fingerprint);
            }
            eprintln!(
                "Compare with the VM's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)."
            );
            eprint!(
                "Type `yes` to trust {} {} for {node}: ",
                keys[i].kind(),
                keys[i].fingerprint
            );
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).ok()?;
            (line.trim() == "yes").then_some(i)
        }
    }
    let fleet = ctx.fleet()?;
    let node = super::node(&fleet, &a.node)?;
    let dest = match (&a.ssh, &node.public_address) {
        (Some(s), _) => s.parse::<SshDest>().map_err(|e| e.to_string()),
        (None, Some(p)) => format!("{}@{p}", node.ssh_user)
            .parse::<SshDest>()
            .map_err(|e| e.to_string()),
        (None, None) => Err(format!(
            "--ssh USER@HOST is needed: {} has no public_address in {}",
            node.name,
            fleet.sources.nodes.display()
        )),
    };
    let dest = match dest {
        Ok(d) => d,
        Err(e) => return Err(CliError::msg(e)),
    };
    let fingerprint = match a
        .host_key_fingerprint
        .as_deref()
        .map(str::parse::<hostkey::Fingerprint>)
    {
        Some(Err(e)) => return Err(CliError::msg(format_args!("--host-key-fingerprint: {e}"))),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let root = match std::fs::canonicalize(&ctx.root) {
        Ok(r) => r,
        Err(e) => {
            return Err(CliError::msg(format_args!(
                "repository root {}: {e}",
                ctx.root.display()
            )))
        }
    };
    let tailscale = match fleetnix::tailscale::Tailscale::locate() {
        Ok(t) => t,
        Err(e) => {
            return Err(CliError::msg(format_args!(
                "{e}: bootstrap waits for the node in this machine's `tailscale status`"
            )))
        }
    };
    let api = match fleetnix::tailscale::api::token_from(a.token_file.as_deref()) {
        Ok(token) => match fleetnix::tailscale::api::Client::new(
            &fleetnix::tailscale::api::base_url_from_env(),
            &fleet.settings.tailnet,
            token,
        ) {
            Ok(c) => Some(c),
            Err(e) => return Err(CliError::msg(e)),
        },
        Err(fleetnix::tailscale::api::ApiError::NoToken) => None,
        Err(e) => return Err(CliError::msg(e)),
    };
    let rt = super::runtime()?;
    let address = match rt.block_on(dest.resolve()) {
        Ok(ip) => ip,
        Err(e) => return Err(CliError::msg(e)),
    };
    let mut opts = bs::BootstrapOptions::new(
        &root,
        &ctx.fleet_dir,
        &fleet,
        &dest.user,
        address,
        tailscale,
    );
    opts.sources_label = ctx.sources_label(&fleet);
    opts.fingerprint = fingerprint;
    opts.deploy.ssh.identity = a.ssh_identity.clone();
    opts.deploy.rollback = !a.no_rollback;
    opts.deploy.rollback_grace = std::time::Duration::from_secs(a.rollback_grace);
    if let Some(u) = &a.install_url {
        opts.deploy.install_url = u.clone();
    }
    opts.deploy.override_inputs = a.flake.inputs()?;
    opts.keys = KeySources {
        file: a.authkey_file.clone(),
        env: true,
        identity: a.identity.clone(),
    };
    opts.api = api;
    opts.wait_timeout = std::time::Duration::from_secs(a.wait_timeout);
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let prompt = TerminalPrompt;
    let verbose = ctx.verbose;
    let node_name = node.name.to_string();
    let result = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                match e {
                    Event::Started(s) if verbose > 0 => {
                        eprintln!("step {} {}: …", s.number(), s.as_str())
                    }
                    Event::Started(_) => {}
                    Event::Finished(r) => eprintln!(
                        "step {} {}: {}: {}",
                        r.step.number(),
                        r.step.as_str(),
                        r.status.as_str(),
                        r.detail
                    ),
                    Event::Deploy(fleetnix::deploy::report::Event::Step { step, .. })
                        if verbose > 0 =>
                    {
                        eprintln!("  install: {}", step.as_str())
                    }
                    Event::Deploy(fleetnix::deploy::report::Event::Warning(w)) => {
                        eprintln!("warning: {w}")
                    }
                    Event::Deploy(_) => {}
                    Event::Note(n) => eprintln!("note: {n}"),
                }
            }
        });
        let p: Option<&dyn bs::HostKeyPrompt> = if interactive { Some(&prompt) } else { None };
        let r = bs::bootstrap(&node_name, &opts, p, Some(tx)).await;
        let _ = printer.await;
        r
    });
    match result {
        Ok(report) => {
            if a.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return Err(CliError::msg(e)),
                }
            } else if report.changed() {
                println!(
                    "{} bootstrapped: in the tailnet at {}",
                    report.node, report.tailscale_ip
                );
            } else {
                println!(
                    "{} was already bootstrapped (in the tailnet at {}): nothing to do",
                    report.node, report.tailscale_ip
                );
            }
            Ok(Outcome::Ok)
        }
        Err(e) => Err(CliError::msg(e)),
    }
}

/// `fleetnix cloud-init NODE [-o FILE]`: user-data on stdout or in FILE; notes on stderr.
pub fn cloud_init(ctx: &Ctx, a: CloudInitArgs) -> CmdResult {
    use fleetnix::bootstrap::cloudinit::{self as ci, Destination};
    use std::io::IsTerminal;
    let fleet = ctx.fleet()?;
    let node = super::node(&fleet, &a.node)?;
    let default_identity = fleetnix::secret::default_identity();
    let req = ci::Request {
        root: &ctx.root,
        mint: a.mint,
        identity: a.identity.as_deref(),
        default_identity: default_identity.as_deref(),
        env_set: std::env::var_os(fleetnix::secret::env::AUTHKEY).is_some(),
        stdin_is_terminal: std::io::stdin().is_terminal(),
        expiry_seconds: a.expiry_seconds,
        options: fleetnix::outputs::cloudinit::Options {
            install_url: a.install_url,
            with_agent: a.with_agent,
            agent_bin: a.agent_bin,
        },
    };
    let api = || fleetnix::acl::apply::api_client(&fleet, a.api.token_file.as_deref());
    let mut stdout = std::io::stdout().lock();
    let to = match &a.output {
        Some(path) => Destination::File(path),
        None => Destination::Stream(&mut stdout),
    };
    let mut note = |n: String| eprintln!("note: {n}");
    super::runtime()?
        .block_on(ci::make(&fleet, node, &req, api, to, &mut note))
        .map_err(CliError::msg)?;
    Ok(Outcome::Ok)
}
