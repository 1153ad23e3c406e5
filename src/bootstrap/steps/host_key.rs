//! Step 1, `host-key`: pin the VM's SSH host key by its fingerprint. The key comes from nodes.yml
//! when it is there already, else from the tailnet (when the node is in it) or `ssh-keyscan` of
//! the public address (nothing else is sent to the host), and must match the given fingerprint
//! or be accepted by the operator.

use crate::bootstrap::hostkey::{self, Fingerprint};
use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::Run;
use crate::bootstrap::HostKeyPrompt;
use crate::model::Fleet;
use crate::tailscale::PeerStatus;

/// The pinned host key.
pub(crate) struct Pinned {
    /// The public key line (`ssh-ed25519 AAAA…`).
    pub key: String,
    /// nodes.yml has it already.
    pub in_manifest: bool,
}

/// Pins the host key; `already` is the node's device when it is in the tailnet.
pub(crate) async fn run(
    run: &mut Run<'_>,
    fleet: &Fleet,
    already: Option<&PeerStatus>,
    prompt: Option<&dyn HostKeyPrompt>,
) -> Result<Pinned, BootstrapError> {
    let opts = run.opts;
    let name = run.name.clone();
    let nodes_yml = run.nodes_yml.clone();
    let resume = run.resume.clone();
    let resume_fp = run.resume_fp.clone();
    let setup = BootstrapError::Setup;
    let n = fleet
        .node(name.as_str())
        .cloned()
        .ok_or_else(|| setup("node vanished".into()))?;
    let pinned = match &n.host_key {
        Some(k) => {
            // Validated by the manifest, so it has a fingerprint.
            let fp = Fingerprint::of_key(k).ok_or_else(|| {
                fail(
                    Step::HostKey,
                    format!(
                        "host_key of {name} in {} is not a public key",
                        nodes_yml.display()
                    ),
                    "fix it in nodes.yml",
                )
            })?;
            if let Some(given) = &opts.fingerprint {
                if *given != fp {
                    return Err(fail(
                        Step::HostKey,
                        format!(
                            "{} already pins {name}'s host key, with fingerprint {fp}, not the given {given}; nothing was sent to the host",
                            nodes_yml.display()
                        ),
                        format!(
                            "if the VM was reinstalled, delete host_key of {name} from {} and {resume}; otherwise check the fingerprint",
                            nodes_yml.display()
                        ),
                    ));
                }
            }
            run.finish(
                Step::HostKey,
                Status::Unchanged,
                format!("pinned by {} ({fp})", nodes_yml.display()),
            );
            k.to_string()
        }
        None => {
            let (keys, from) = match already.filter(|p| !p.ssh_host_keys.is_empty()) {
                // Keys the tailnet publishes came over Tailscale's authenticated control plane.
                Some(p) => (
                    hostkey::parse_keyscan(
                        &p.ssh_host_keys
                            .iter()
                            .map(|k| format!("tailnet {k}\n"))
                            .collect::<String>(),
                    ),
                    "tailscale status".to_string(),
                ),
                None => {
                    let keys = hostkey::scan(
                        &opts.keyscan,
                        &opts.address,
                        opts.deploy.ssh.connect_timeout,
                        &run.log,
                    )
                    .await
                    .map_err(|e| {
                        fail(
                            Step::HostKey,
                            e.to_string(),
                            format!("check that the VM is up and {} is its public address, then {resume}", opts.address),
                        )
                    })?;
                    (keys, opts.address.to_string())
                }
            };
            let chosen = match &opts.fingerprint {
                Some(fp) => keys.iter().find(|k| k.fingerprint == *fp).ok_or_else(|| {
                    fail(
                        Step::HostKey,
                        format!(
                            "none of the host keys {from} offers ({}) has the fingerprint {fp}: a typo, the wrong VM, or someone in between; nothing was sent to the host",
                            hostkey::describe(&keys)
                        ),
                        format!(
                            "read the fingerprint on the VM's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and {resume_fp}"
                        ),
                    )
                })?,
                None => {
                    let refuse = |why: &str| {
                        fail(
                            Step::HostKey,
                            format!(
                                "{why}: refusing to trust the unverified host key {from} offers ({}); nothing was sent to the host",
                                hostkey::describe(&keys)
                            ),
                            format!(
                                "read the fingerprint on the VM's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and {resume_fp}"
                            ),
                        )
                    };
                    let Some(p) = prompt else {
                        return Err(refuse("no --host-key-fingerprint given and not interactive"));
                    };
                    let i = p
                        .accept(name.as_str(), &opts.address, &keys)
                        .ok_or_else(|| refuse("the key was not accepted"))?;
                    keys.get(i)
                        .ok_or_else(|| refuse("the key was not accepted"))?
                }
            };
            if !chosen.recordable() {
                return Err(fail(
                    Step::HostKey,
                    format!(
                        "the matching key is {} ({}), which secrets cannot be encrypted to",
                        chosen.kind(),
                        chosen.fingerprint
                    ),
                    format!("{resume_fp}, giving the fingerprint of the VM's ssh-ed25519 key"),
                ));
            }
            run.finish(
                Step::HostKey,
                Status::Done,
                format!(
                    "{} {} from {from} matches{}",
                    chosen.kind(),
                    chosen.fingerprint,
                    if opts.fingerprint.is_some() {
                        " the given fingerprint"
                    } else {
                        " (accepted interactively)"
                    }
                ),
            );
            chosen.key.clone()
        }
    };

    Ok(Pinned {
        key: pinned,
        in_manifest: n.host_key.is_some(),
    })
}
