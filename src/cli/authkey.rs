//! `authkey mint`: a one-off tagged auth key, straight into the node's encrypted secret. The//! logic is in `fleetnix::secrets::mint` (the API call in `fleetnix::tailscale::authkey`).

use super::acl::{client, ApiArgs};
use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::tailscale::authkey;

/// `authkey` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuthkeyCommand {
    /// Mint a one-off, pre-authorised, tagged auth key for a node and store it encrypted (never printed).
    Mint {
        /// The node.
        node: String,
        /// API access.
        #[command(flatten)]
        api: ApiArgs,
        /// Lifetime of the key in seconds.
        #[arg(long, default_value_t = authkey::AUTHKEY_EXPIRY_SECONDS)]
        expiry_seconds: u64,
    },
}

/// `fleetnix authkey …`.
pub fn run(ctx: &Ctx, cmd: AuthkeyCommand) -> CmdResult {
    let AuthkeyCommand::Mint {
        node,
        api,
        expiry_seconds,
    } = cmd;
    let fleet = ctx.fleet()?;
    let node = match fleetnix::secrets::select_nodes(&fleet, std::slice::from_ref(&node)) {
        Ok(mut n) if n.len() == 1 => n.remove(0),
        Ok(_) => return Err(CliError::msg("expected one node")),
        Err(e) => return Err(CliError::msg(e)),
    };
    {
        let c = client(&fleet, &api)?;
        let minted = runtime()?
            .block_on(fleetnix::secrets::mint::mint_and_store(
                &c,
                &fleet,
                &ctx.root,
                &node,
                expiry_seconds,
            ))
            .map_err(CliError::msg)?;
        println!(
            "minted auth key {} for {node} (one-off, pre-authorised, tags {}, expires {}); not shown",
            minted.id,
            minted.tags.join(","),
            minted.expires.as_deref().unwrap_or("as requested")
        );
        for w in &minted.report.written {
            let who: Vec<String> = w.recipients.iter().map(|r| r.owner.to_string()).collect();
            println!("wrote {} (recipients: {})", w.file, who.join(", "));
        }
        if minted.report.secrets_nix_changed {
            println!("updated {}", fleetnix::secrets::SECRETS_NIX);
        }
        for w in &minted.report.warnings {
            eprintln!("warning: {w}");
        }
        Ok(Outcome::Ok)
    }
}
