//! Step 2, `secret`: make sure the node's `.age` auth key exists and is encrypted to its host
//! key. The key is the operator's (environment, file), the old one re-encrypted (with
//! `--identity`), or a one-off key minted through the Tailscale API.

use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::Run;
use crate::model::Fleet;
use crate::secret::Secret;
use crate::secrets::{self, State};
use crate::spec::authkey_file;
use crate::tailscale::api::TOKEN_ENV;
use crate::tailscale::authkey::mint_authkey;

/// Returns the key when this run holds it (for the installer). `in_tailnet`: the node is in the
/// tailnet already.
pub(crate) async fn run(
    run: &mut Run<'_>,
    fleet: &Fleet,
    in_tailnet: bool,
) -> Result<Option<Secret>, BootstrapError> {
    let opts = run.opts;
    let name = &run.name.clone();
    let resume = run.resume.clone();
    let root = &opts.deploy.root;
    let file = authkey_file(name);
    let err = |e: String| fail(Step::Secret, e, format!("fix the cause, then {resume}"));
    let state = secrets::status(fleet, root)
        .map_err(|e| err(e.to_string()))?
        .into_iter()
        .find(|s| s.node == name.as_str())
        .map(|s| s.state)
        .unwrap_or(State::Missing);
    let supplied = opts.keys.supplied(name).map_err(|e| err(e.to_string()))?;
    let reencryptable = matches!(state, State::Stale | State::Unrecorded);

    // A node that is about to log in gets a fresh one-off key when the API can mint one (and
    // the fleet enrols with pre-auth keys): a stored key may be spent or expired.
    let mint_fresh = !in_tailnet
        && opts.api.is_some()
        && fleet.settings.tailscale_auth == crate::model::TailscaleAuth::Preauth;
    // Which key, if any, is to be written, and where it came from.
    let (key, origin) = if let Some((k, from)) =
        supplied.filter(|_| !in_tailnet || state != State::UpToDate)
    {
        // The kind the fleet enrols with, named with where the key came from.
        fleet
            .settings
            .tailscale_auth
            .check(k.expose())
            .map_err(|reason| err(format!("the Tailscale credential from {from} {reason}")))?;
        (k, format!("the auth key from {from}"))
    } else if state == State::UpToDate && !mint_fresh {
        let why = if in_tailnet {
            "the node is in the tailnet; kept"
        } else {
            "kept"
        };
        run.finish(
            Step::Secret,
            Status::Unchanged,
            format!("{file} is encrypted to {name}'s host key ({why})"),
        );
        return Ok(None);
    } else if let Some(r) = opts
        .keys
        .decrypt(root, name)
        .filter(|_| reencryptable && !mint_fresh)
    {
        (
            r.map_err(|e| err(e.to_string()))?,
            format!("the key in {file} (decrypted with --identity)"),
        )
    } else if let (Some(api), false) = (&opts.api, in_tailnet) {
        let n = fleet
            .node(name.as_str())
            .ok_or_else(|| err("node vanished".into()))?;
        let minted = mint_authkey(api, fleet, n, opts.mint_expiry.as_secs())
            .await
            .map_err(|e| {
                fail(
                    Step::Secret,
                    format!("minting an auth key through the Tailscale API: {e}"),
                    format!("fix the token or pass a key (TAILSCALE_AUTHKEY / --authkey-file), then {resume}"),
                )
            })?;
        (
            minted.key,
            format!(
                "a one-off auth key minted through the API (id {}, expires in {}s)",
                minted.id,
                opts.mint_expiry.as_secs()
            ),
        )
    } else if in_tailnet {
        run.finish(
            Step::Secret,
            Status::Skipped,
            format!(
                "{file} is {}; the node is already in the tailnet, so no key was minted: `fleetnix secrets set-authkey {name}` or `fleetnix secrets rekey` when needed",
                state.label()
            ),
        );
        return Ok(None);
    } else {
        return Err(fail(
            Step::Secret,
            format!("no Tailscale auth key for {name} ({file} is {})", state.label()),
            format!(
                "set TAILSCALE_AUTHKEY, pass --authkey-file FILE, set {} (or --token-file) to mint one, or pass --identity FILE to re-use {file}; then {resume}",
                TOKEN_ENV
            ),
        ));
    };
    let report = secrets::set_authkey(fleet, root, std::slice::from_ref(name), &key)
        .map_err(|e| err(e.to_string()))?;
    for w in &report.warnings {
        run.note(w.clone());
    }
    if let Some(s) = report.skipped.first() {
        return Err(err(format!("{}: {} ({})", s.node, s.reason, s.fix)));
    }
    run.finish(
        Step::Secret,
        Status::Done,
        format!("{origin} encrypted to {file}"),
    );
    Ok(Some(key))
}
