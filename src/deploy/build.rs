//! Where a node's deploy program is built, and so where its OS is chosen: `os: nixos` gets the
//! NixOS steps ([`super::nixos::ops`]); `os: linux` the probe ([`super::probe`]) and the plain
//! Linux steps ([`super::linux::ops`]); `os: auto` the probe, then either, as the probe finds the
//! node. The two paths are siblings: neither calls the other.

use super::linux;
use super::nixos;
use super::probe::probe_script;
use super::program::{Effect, OpKind, Program, Remote, Script};
use super::report::Step;
use super::{AuthKeySource, DeployOptions};
use crate::exec::ssh::SshTarget;
use crate::model::Os;
use crate::spec::NodeSpec;

/// The program of `plan`'s node, reached through `target`.
pub fn build(
    plan: &NodeSpec,
    opts: &DeployOptions,
    target: SshTarget,
    authkeys: &dyn AuthKeySource,
) -> Program {
    let mut b = super::program::Builder::default();
    let ops = match plan.access.os {
        Os::Nixos => nixos::ops(&mut b, plan, opts, &target),
        Os::Linux | Os::Auto => {
            let probe = Remote {
                effect: Effect::Probe,
                ..Remote::new(
                    Step::Connect,
                    "probe: /etc/os-release, is tailscale installed, tailscale status",
                    Script::Fixed(probe_script()),
                )
            };
            let mut ops = vec![b.op(OpKind::Remote(probe))];
            if plan.access.os == Os::Auto {
                let nixos = nixos::ops(&mut b, plan, opts, &target);
                let otherwise = linux::ops(&mut b, plan, opts, authkeys);
                ops.push(b.op(OpKind::IfNixos { nixos, otherwise }));
            } else {
                ops.extend(linux::ops(&mut b, plan, opts, authkeys));
            }
            ops
        }
    };
    b.finish(target, ops)
}
