//! Step 4, `address`: the node's Tailscale address against `tailscale_ip` in nodes.yml. With an
//! API token the device's address is set to the manifest's; without one the assigned address is
//! recorded in nodes.yml.

use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::Run;
use crate::manifest::edit;
use crate::model::Fleet;
use crate::tailscale::PeerStatus;
use std::net::IpAddr;

/// Reconciles the address of `device`; returns the address in force.
pub(crate) async fn run(
    run: &mut Run<'_>,
    fleet: &Fleet,
    device: &PeerStatus,
) -> Result<IpAddr, BootstrapError> {
    let want = fleet
        .node(run.name.as_str())
        .map(|n| n.tailscale_ip)
        .ok_or_else(|| BootstrapError::Setup("node vanished".into()))?;
    let opts = run.opts;
    let name = run.name.clone();
    let resume = run.resume.clone();
    if device.tailscale_ips.contains(&want) {
        run.finish(
            Step::Address,
            Status::Unchanged,
            format!("{want}, as tailscale_ip in nodes.yml says"),
        );
        return Ok(want);
    }
    let Some(got) = device
        .tailscale_ips
        .iter()
        .find(|ip| ip.is_ipv4() == want.is_ipv4())
        .copied()
    else {
        return Err(fail(
            Step::Address,
            format!(
                "`tailscale status` shows no {} address for {name}",
                if want.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            format!("check the node in the admin console, then {resume}"),
        ));
    };
    match (&opts.api, want) {
        (Some(api), IpAddr::V4(v4)) if !device.id.is_empty() => {
            api.set_device_ipv4(&device.id, v4).await.map_err(|e| {
                fail(
                    Step::Address,
                    format!("setting {name}'s address to {want} through the Tailscale API: {e}"),
                    format!("fix the cause, then {resume}; or run without an API token to record the assigned {got} in nodes.yml instead"),
                )
            })?;
            // The same device (by its node ID) now shows the address.
            let id = device.id.clone();
            run.wait_for(|s| {
                s.find_id(&id)
                    .filter(|d| d.peer.tailscale_ips.contains(&want))
                    .map(|_| ())
            })
            .await
            .map_err(|last| {
                fail(
                    Step::Address,
                    format!(
                        "the API accepted {want} for {name}, but `tailscale status` still does not show it after {}s{last}",
                        opts.wait_timeout.as_secs()
                    ),
                    resume.to_string(),
                )
            })?;
            run.finish(
                Step::Address,
                Status::Done,
                format!("the tailnet gave {got}; set to {want} (tailscale_ip in nodes.yml) through the Tailscale API"),
            );
            Ok(want)
        }
        _ => {
            let (_, _) = edit::set_tailscale_ip(&opts.fleet_dir, name.as_str(), got).map_err(|e| {
                fail(
                    Step::Address,
                    e.to_string(),
                    format!(
                        "set tailscale_ip of {name} to {got} by hand (or give an API token to change the device's address to {want}), then {resume}"
                    ),
                )
            })?;
            run.finish(
                Step::Address,
                Status::Done,
                format!(
                    "the tailnet gave {got}, not {want}; no API token to change it, so tailscale_ip in nodes.yml is now {got}: run `fleetnix render` and redeploy the nodes that use it"
                ),
            );
            Ok(got)
        }
    }
}
