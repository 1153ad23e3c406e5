//! Before the install step's login: an offline device record holding the node's name is
//! deleted through the API (never the device being enrolled), so the node logs in as `<node>`
//! and not `<node>-1` ([`crate::tailscale::names`]). Needs an API token; without one it is
//! skipped with a note. Part of step 3 (`install`): it reports through notes.

use crate::bootstrap::report::{fail, BootstrapError, Step};
use crate::bootstrap::run::Run;
use crate::tailscale::names::{remove_stale_records, Enrolling};

/// Deletes the stale records of the node (only called when it is not in the tailnet).
pub(crate) async fn run(run: &mut Run<'_>) -> Result<(), BootstrapError> {
    let name = run.name.to_string();
    let Some(api) = run.opts.api.as_ref() else {
        run.note(format!(
            "no Tailscale API token: an old, offline device record named {name} (if any) is kept, and the node may come back as {name}-1 (set TS_API_KEY or --token-file to remove it first)"
        ));
        return Ok(());
    };
    // The device being enrolled, if this machine's status already knows one by the name.
    let enrolling = match run.status().await {
        Ok(s) => s
            .find(&name)
            .map(|d| Enrolling {
                node_id: (!d.peer.id.is_empty()).then(|| d.peer.id.clone()),
                addresses: d.peer.tailscale_ips.clone(),
            })
            .unwrap_or_default(),
        Err(_) => Enrolling::default(),
    };
    let removed = remove_stale_records(api, &name, &enrolling)
        .await
        .map_err(|e| {
            fail(
                Step::Install,
                format!("removing the old, offline device record of {name} through the Tailscale API: {e}"),
                format!("fix the cause (or delete the record in the admin console), then {}", run.resume),
            )
        })?;
    for d in &removed {
        run.note(format!(
            "deleted the offline device record {} ({}, last seen {}) so that {name} keeps its name",
            d.path_id(),
            d.name,
            if d.last_seen.is_empty() {
                "never"
            } else {
                &d.last_seen
            }
        ));
    }
    Ok(())
}
