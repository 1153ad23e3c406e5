//! `bootstrap` and `cloud-init`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The node.
    pub node: String,
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
    #[arg(long, default_value_t = fleetnix::acl::apply::AUTHKEY_EXPIRY_SECONDS, requires = "mint")]
    pub expiry_seconds: u64,
    /// Write the user-data to FILE (mode 0600, atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Also install and enable the agent's systemd unit.
    #[arg(long)]
    pub with_agent: bool,
    /// Tailscale install script URL (https).
    #[arg(long, default_value = fleetnix::cloudinit::DEFAULT_INSTALL_URL)]
    pub install_url: String,
    /// Path of the agent binary on the VM (with --with-agent).
    #[arg(long, default_value = fleetnix::cloudinit::DEFAULT_AGENT_BIN)]
    pub agent_bin: String,
}

/// `fleetnix bootstrap`.
pub fn bootstrap(_ctx: &Ctx, _a: BootstrapArgs) -> ExitCode {
    super::not_yet("bootstrap")
}

/// `fleetnix cloud-init NODE [-o FILE]`: user-data on stdout or in FILE; notes on stderr.
pub fn cloud_init(ctx: &Ctx, a: CloudInitArgs) -> ExitCode {
    use fleetnix::cloudinit::{self as ci, AuthKey};
    use std::io::{IsTerminal, Read, Write};
    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("error: {msg}");
        ExitCode::from(1)
    };
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let Some(node) = fleet.node(&a.node) else {
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        return fail(&format_args!(
            "no node `{}` in {} (nodes: {})",
            a.node,
            fleet.sources.nodes.display(),
            names.join(", ")
        ));
    };
    let plan = fleetnix::plan::plan_node(&fleet, node);
    let secret_file = fleetnix::secrets::SecretId::new(
        node.name.clone(),
        fleetnix::secrets::SecretKind::TailscaleAuthkey,
    )
    .file();
    let default_identity = super::secrets::identity_or_default(None).ok();
    let source = ci::key_source(&ci::KeyInputs {
        node: node.name.as_str(),
        mint: a.mint,
        identity: a.identity.as_deref(),
        default_identity: default_identity.as_deref(),
        env_set: std::env::var_os("TAILSCALE_AUTHKEY").is_some(),
        stdin_is_terminal: std::io::stdin().is_terminal(),
        secret_file: &secret_file,
        secret_exists: ctx.root.join(&secret_file).is_file(),
    });
    let raw: secrecy::SecretString = match source {
        Err(e) => return fail(&e),
        Ok(ci::KeySource::Mint) => {
            let minted = super::acl::client(&fleet, &a.api).and_then(|c| {
                super::acl::runtime()?
                    .block_on(fleetnix::acl::apply::mint_authkey(
                        &c,
                        &fleet,
                        node,
                        a.expiry_seconds,
                    ))
                    .map_err(|e| fail(&e))
            });
            match minted {
                Ok(k) => {
                    eprintln!(
                        "note: minted auth key {} for {} (one-off, pre-authorised, expires {}); it is only in this user-data",
                        k.id,
                        plan.name,
                        k.expires.as_deref().unwrap_or("as requested")
                    );
                    k.key
                }
                Err(code) => return code,
            }
        }
        Ok(ci::KeySource::Secret(identity)) => {
            match fleetnix::secrets::decrypt_authkey(&ctx.root, &node.name, &identity) {
                Ok(k) => {
                    eprintln!(
                        "note: auth key from {secret_file} (decrypted with {})",
                        identity.display()
                    );
                    k
                }
                Err(e) => return fail(&e),
            }
        }
        Ok(ci::KeySource::Env) => match std::env::var("TAILSCALE_AUTHKEY") {
            Ok(k) => k.into(),
            Err(_) => return fail(&"TAILSCALE_AUTHKEY is not valid UTF-8"),
        },
        Ok(ci::KeySource::Stdin) => {
            let mut k = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut k) {
                return fail(&format_args!("reading the auth key from stdin: {e}"));
            }
            k.into()
        }
    };
    let key = {
        use secrecy::ExposeSecret;
        match AuthKey::parse(raw.expose_secret()) {
            Ok(k) => k,
            Err(e) => return fail(&e),
        }
    };
    drop(raw);
    let opts = ci::Options {
        install_url: a.install_url.clone(),
        with_agent: a.with_agent,
        agent_bin: a.agent_bin.clone(),
    };
    let text = match ci::user_data(&plan, &key, &opts) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let written = match &a.output {
        Some(path) => fleetnix::fsutil::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        return fail(&e);
    }
    eprintln!(
        "note: this user-data contains {}'s Tailscale auth key, its only secret{}; the VM deletes the key file after `tailscale up`, but the provider keeps the user-data: prefer a single-use key with a short expiry",
        plan.name,
        a.output
            .as_ref()
            .map(|p| format!(" ({} is mode 0600)", p.display()))
            .unwrap_or_default()
    );
    if plan.access.os == fleetnix::model::Os::Nixos {
        eprintln!(
            "note: {} is declared os: nixos; this user-data is for the provider's non-NixOS image (Tailscale's install script refuses NixOS)",
            plan.name
        );
    }
    ExitCode::SUCCESS
}
