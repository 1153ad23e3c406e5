//! Step 5, `handover`: drop the public-address pin; from now on the node is reached over
//! Tailscale.

use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::Run;
use std::net::IpAddr;

/// Removes the pin; `final_ip` is the node's Tailscale address.
pub(crate) fn run(run: &mut Run<'_>, final_ip: IpAddr) -> Result<(), BootstrapError> {
    let name = run.name.clone();
    let resume = run.resume.clone();
    let pin = run.opts.public_pin(&name);
    match std::fs::remove_file(&pin) {
        Ok(()) => run.finish(
            Step::Handover,
            Status::Done,
            format!(
                "public-address pin removed: from now on {name} is reached over Tailscale at {final_ip} (`fleetnix deploy {name}`)"
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => run.finish(
            Step::Handover,
            Status::Unchanged,
            format!("{name} is reached over Tailscale at {final_ip} (`fleetnix deploy {name}`)"),
        ),
        Err(e) => {
            return Err(fail(
                Step::Handover,
                format!("cannot remove {}: {e}", pin.display()),
                format!("remove it, then {resume}"),
            ))
        }
    }
    Ok(())
}
