//! Step 4, `join`: wait (bounded) until this machine's `tailscale status` shows the node online.

use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::{ips, joined, Run};
use crate::tailscale::PeerStatus;
use std::time::Instant;

/// Returns the node's device; `already` is it when the node was in the tailnet before.
pub(crate) async fn run(
    run: &mut Run<'_>,
    already: Option<PeerStatus>,
) -> Result<PeerStatus, BootstrapError> {
    let opts = run.opts;
    let name = run.name.clone();
    let resume = run.resume.clone();
    let device = match already {
        Some(p) => {
            run.finish(
                Step::Join,
                Status::Unchanged,
                format!(
                    "in the tailnet as {} ({})",
                    p.host_name,
                    ips(&p.tailscale_ips)
                ),
            );
            p
        }
        None => {
            let started = Instant::now();
            let p = run
                .wait_for(|s| joined(s, name.as_str()).cloned())
                .await
                .map_err(|last| {
                    fail(
                        Step::Join,
                        format!(
                            "{name} did not show up online in `tailscale status` within {}s{last}",
                            opts.wait_timeout.as_secs()
                        ),
                        format!(
                            "look at the VM (`journalctl -u tailscaled`, `tailscale status` there); once it is in the tailnet, {resume}"
                        ),
                    )
                })?;
            run.finish(
                Step::Join,
                Status::Done,
                format!(
                    "in the tailnet as {} ({}) after {:.1}s",
                    p.host_name,
                    ips(&p.tailscale_ips),
                    started.elapsed().as_secs_f64()
                ),
            );
            p
        }
    };
    Ok(device)
}
