//! Step 2, `record`: write the pinned host key into nodes.yml as `host_key` (comments and order
//! kept), unless it is there already.

use super::host_key::Pinned;
use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::Run;
use crate::manifest::edit;
use crate::model::Fleet;

/// Records the key; returns the fleet as read again after the edit.
pub(crate) fn run(
    run: &mut Run<'_>,
    fleet: Fleet,
    pinned: &Pinned,
) -> Result<Fleet, BootstrapError> {
    let opts = run.opts;
    let name = run.name.clone();
    let nodes_yml = run.nodes_yml.clone();
    let resume = run.resume.clone();
    let mut fleet = fleet;
    if !pinned.in_manifest {
        let (_, f) =
            edit::set_host_key(&opts.fleet_dir, name.as_str(), &pinned.key).map_err(|e| {
                fail(
                    Step::Record,
                    e.to_string(),
                    format!(
                        "add `host_key: \"{}\"` to {name} in {} by hand, then {resume}",
                        pinned.key,
                        nodes_yml.display()
                    ),
                )
            })?;
        fleet = f;
        run.finish(
            Step::Record,
            Status::Done,
            format!("host_key of {name} written to {}", nodes_yml.display()),
        );
    } else {
        run.finish(
            Step::Record,
            Status::Unchanged,
            format!("already in {}", nodes_yml.display()),
        );
    }
    Ok(fleet)
}
