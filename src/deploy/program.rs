//! A node's deploy as data: a [`Program`] is the ordered list of [`Op`]s (a script run on the
//! node with its stdin, a local command, closing the shared connection, a branch on the OS the
//! probe found). [`super::build::build`] builds it;
//! `execute.rs` runs it and `--dry-run` ([`super::dryrun`]) prints it with
//! [`Program::listing`], so the steps shown are the steps run.
//!
//! Values known only while a deploy runs (the running generation, the built system, the guard's
//! id) are [`Vars`]; a listing shows placeholders for them.

use super::guard::{self, GuardId};
use super::report::Step;
use crate::exec::process::LocalCommand;
use crate::exec::quote::sh_quote;
use crate::exec::ssh::{SshConfig, SshTarget};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Stands for the generation the node runs (read by the connect step; dry runs connect nowhere).
pub const RUNNING: &str = "RUNNING_SYSTEM";
/// Stands for the store path `nixos-rebuild build` prints.
pub const BUILT: &str = "NEW_SYSTEM";

/// The values a program's scripts need that only the run itself learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    /// The rollback guard's id (a new one per attempt).
    pub guard: GuardId,
    /// The generation the node runs (the rollback target).
    pub running: String,
    /// The built system's store path.
    pub built: String,
}

impl Vars {
    /// The placeholders a listing shows: `ID`, [`RUNNING`], [`BUILT`].
    pub fn placeholders() -> Self {
        Vars {
            guard: GuardId::placeholder(),
            running: RUNNING.into(),
            built: BUILT.into(),
        }
    }

    /// Fresh values for a run: a new guard id, generation and system still unknown.
    pub fn fresh() -> Self {
        Vars {
            guard: GuardId::new(),
            ..Vars::placeholders()
        }
    }
}

/// A script run on the node, possibly depending on [`Vars`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// A script known when the program is built.
    Fixed(String),
    /// Take the node's lock and arm the rollback guard ([`guard::arm_script`]), then report
    /// the gate's units as they are before the switch ([`super::gate::gate_script`]).
    Arm {
        /// How long the node waits for the confirmation.
        grace: Duration,
        /// GPUs the node declares (the gate asks `nvidia-smi`).
        gpus: Option<u32>,
    },
    /// The health gate's look at the units (and GPUs) for the built system
    /// ([`super::gate::gate_script`]).
    Gate {
        /// GPUs the node declares.
        gpus: Option<u32>,
    },
    /// Does the built system need a reboot? ([`super::reboot::check_script`]).
    RebootCheck,
    /// Arm the node-side boot guard and make the built system the boot default
    /// ([`super::reboot::arm_boot_script`]).
    ArmBoot {
        /// How long after a boot the guard waits for the confirmation.
        bound: Duration,
        /// GPUs the node declares.
        gpus: Option<u32>,
    },
    /// Reboot ([`super::reboot::reboot_script`]).
    Reboot,
    /// Confirm the reboot ([`super::reboot::confirm_boot_script`]).
    ConfirmBoot,
    /// Activate the built system with `test` ([`guard::activate_script`]).
    Activate,
    /// Confirm, disarm, make the boot default ([`guard::confirm_script`]).
    Confirm,
}

impl Script {
    /// The script text with `vars` filled in.
    pub fn render(&self, vars: &Vars) -> String {
        match self {
            Script::Fixed(s) => s.clone(),
            Script::Arm { grace, gpus } => format!(
                "{}\n{}\n{}",
                guard::arm_script(&vars.guard, &vars.running, *grace),
                super::reboot::check_script(&vars.built),
                super::gate::gate_script(&vars.built, *gpus)
            ),
            Script::RebootCheck => super::reboot::check_script(&vars.built),
            Script::ArmBoot { bound, gpus } => super::reboot::arm_boot_script(
                &vars.guard,
                &vars.running,
                &vars.built,
                *bound,
                *gpus,
            ),
            Script::Reboot => super::reboot::reboot_script(&vars.guard),
            Script::ConfirmBoot => super::reboot::confirm_boot_script(&vars.guard, &vars.built),
            Script::Gate { gpus } => super::gate::gate_script(&vars.built, *gpus),
            Script::Activate => guard::activate_script(&vars.guard, &vars.built),
            Script::Confirm => guard::confirm_script(&vars.guard, &vars.built),
        }
    }
}

/// What a remote script gets on stdin. Secrets are named here, never held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing.
    Nothing,
    /// The node's Tailscale auth key; `source` says where it comes from (for listings).
    AuthKey {
        /// Where the key would come from.
        source: String,
    },
    /// The agent's NATS password, if one is stored (the step is skipped otherwise).
    NatsPassword,
    /// A unit file, shown in listings below the step (or why it cannot be made).
    Unit(Result<String, crate::outputs::agent::UnitError>),
}

/// When a step runs, decided from the probe of a plain Linux node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// Only if `tailscale` is not installed.
    TailscaleMissing,
    /// Only if Tailscale is not up as this node.
    NotUpAsPlanned,
    /// Only if Tailscale is up as this node (the complement of [`When::NotUpAsPlanned`]).
    UpAsPlanned,
    /// Only if the node reboots into the new generation (`--reboot`).
    Rebooting,
    /// Only if it does not (the guarded switch without a reboot).
    NotRebooting,
}

/// What a step's output means to the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond success.
    Plain,
    /// Stdout is the running generation.
    Generation,
    /// Stdout is the plain Linux probe (OS, Tailscale).
    Probe,
    /// Running it is a change named so.
    Changed(&'static str),
    /// A change named so, unless the script printed `unchanged`.
    ChangedUnlessSaid(&'static str),
    /// Arming the guard (a failure leaves the node as it was).
    Arm,
    /// Activation: a lost connection is left to the confirmation, a failure rolls back at once.
    Activate,
    /// The health gate over a new connection ([`super::gate`]), asked until it passes, fails
    /// (roll back at once) or the confirmation's deadline comes.
    HealthGate,
    /// The confirmation over a new connection, retried through the grace period.
    Confirm,
    /// Stdout says whether the built system needs a reboot; `--reboot` decides.
    RebootCheck,
    /// Arm the boot guard and make the new system the boot default.
    ArmBoot,
    /// Reboot, then wait for the node to answer again.
    Reboot,
    /// The confirmation of a reboot over a new connection.
    ConfirmBoot,
}

/// Which limit a remote step runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `node_timeout_seconds` plus a little.
    Short,
    /// The long step limit (`nixos-rebuild`, install script, `tailscale up`, activation).
    Long,
}

/// A script run on the node over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The step it belongs to (events, failures).
    pub step: Step,
    /// What it does, in words.
    pub what: String,
    /// The script.
    pub script: Script,
    /// Its stdin.
    pub input: Input,
    /// When it runs.
    pub when: When,
    /// Its time limit.
    pub limit: Limit,
    /// On a brand-new connection (never the shared one): the guard's confirmation.
    pub fresh: bool,
    /// What its output means.
    pub effect: Effect,
}

/// What a local command's success means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEffect {
    /// `nixos-rebuild <action>`: the node is deployed.
    Rebuilt {
        /// The action (`switch`, `boot`, `test`).
        verb: &'static str,
    },
    /// `nixos-rebuild build` in `dir`: stdout ends with the built system.
    Built {
        /// The working directory (its `result` link keeps the system from the collector).
        dir: PathBuf,
    },
}

/// A command run on the operator's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The step it belongs to.
    pub step: Step,
    /// What it does, in words.
    pub what: String,
    /// The command, exactly as run.
    pub cmd: LocalCommand,
    /// Why it cannot run (its program was not found), if so.
    pub missing: Option<String>,
    /// What its success means.
    pub effect: LocalEffect,
}

/// One operation of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A script on the node.
    Remote(Remote),
    /// A local command.
    Local(Local),
    /// Close the node's shared connection (nothing without one).
    Close {
        /// The step it is announced under, if any: the health gate when the gate is on, else the
        /// confirmation (either way, the next step must not use the shared connection).
        step: Option<Step>,
        /// What it is for, in words.
        what: &'static str,
    },
    /// Drain the node's tasks on the bus ([`super::drain`]): not a command on the node.
    Drain {
        /// What it does, in words.
        what: String,
    },
    /// Undrain the node after a successful deploy ([`super::drain`]); run after the
    /// program's result is known.
    Undrain {
        /// What it does, in words.
        what: String,
    },
    /// Branch on the OS the probe found (`os: auto`).
    IfNixos {
        /// When the probe found `ID=nixos`.
        nixos: Vec<Op>,
        /// Otherwise.
        otherwise: Vec<Op>,
    },
}

/// An operation with its place in the program (unique within it, in listing order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Its id.
    pub id: usize,
    /// What it does.
    pub kind: OpKind,
}

/// Hands out op ids in order while a program is built.
#[derive(Debug, Default)]
pub struct Builder {
    next: usize,
}

impl Builder {
    /// The next op.
    pub fn op(&mut self, kind: OpKind) -> Op {
        self.next += 1;
        Op {
            id: self.next,
            kind,
        }
    }

    /// The program of `ops` on `target`, ending (whatever happens) with closing the node's
    /// shared connection.
    pub fn finish(mut self, target: SshTarget, ops: Vec<Op>) -> Program {
        let finally = vec![self.op(OpKind::Close {
            step: None,
            what: "close the shared SSH connection",
        })];
        Program {
            target,
            ops,
            finally,
        }
    }
}

impl Remote {
    /// A script with no stdin, run always, on the shared connection, within the short limit.
    pub fn new(step: Step, what: impl Into<String>, script: Script) -> Remote {
        Remote {
            step,
            what: what.into(),
            script,
            input: Input::Nothing,
            when: When::Always,
            limit: Limit::Short,
            fresh: false,
            effect: Effect::Plain,
        }
    }
}

/// A node's deploy: its SSH target, the ops, and what always runs at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// How the node is reached.
    pub target: SshTarget,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// Run after the ops whatever happened (after a retry too).
    pub finally: Vec<Op>,
}

/// One piece of a listing: the text of an op (`Some(id)`) or a connecting line (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The op it shows, if any.
    pub op: Option<usize>,
    /// The text, whole lines.
    pub text: String,
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

struct Lister<'a> {
    ssh: &'a SshConfig,
    target: &'a SshTarget,
    vars: &'a Vars,
    n: usize,
    closed: bool,
    /// The `SSH_NEW = …` line has been printed (once, before the first fresh step).
    fresh_shown: bool,
    out: Vec<Entry>,
}

impl Lister<'_> {
    fn push(&mut self, op: Option<usize>, text: String) {
        self.out.push(Entry { op, text });
    }

    fn local_text(&mut self, what: &str, cmd: &LocalCommand) -> String {
        self.n += 1;
        format!("  {}. {what}\n     $ {}\n", self.n, cmd.display())
    }

    fn ops(&mut self, ops: &[Op]) {
        for op in ops {
            self.op(op);
        }
    }

    fn op(&mut self, op: &Op) {
        match &op.kind {
            OpKind::Local(l) => {
                let text = self.local_text(&l.what, &l.cmd);
                self.push(Some(op.id), text);
            }
            OpKind::Drain { what } | OpKind::Undrain { what } => {
                self.n += 1;
                let text = format!("  {}. {what}\n", self.n);
                self.push(Some(op.id), text);
            }
            OpKind::Close { what, .. } => {
                if self.closed {
                    return;
                }
                self.closed = true;
                if let Some(cmd) = self.ssh.close_command(self.target) {
                    let text = self.local_text(what, &cmd);
                    self.push(Some(op.id), text);
                }
            }
            OpKind::Remote(r) => {
                let mut text = String::new();
                let var = if r.fresh {
                    // The confirmation's connection: always a new one, printed once.
                    if !self.fresh_shown {
                        self.fresh_shown = true;
                        let mut cmd = self.ssh.command(&self.target.fresh(), "");
                        cmd.args.pop();
                        let _ = writeln!(text, "  SSH_NEW = {}", cmd.display());
                    }
                    "SSH_NEW"
                } else {
                    "SSH"
                };
                self.n += 1;
                let _ = writeln!(text, "  {}. {}", self.n, r.what);
                let sudo = if self.target.sudo { "sudo -n " } else { "" };
                let _ = writeln!(
                    text,
                    "     $ ${var} {}",
                    sh_quote(&format!("{sudo}sh -c <script>"))
                );
                text.push_str(&indent(&r.script.render(self.vars), "       | "));
                match &r.input {
                    Input::Nothing => {}
                    Input::AuthKey { source } => {
                        let _ = writeln!(text, "     stdin: the auth key from {source} (redacted)");
                    }
                    Input::NatsPassword => {
                        text.push_str("     stdin: the password, decrypted in memory (redacted)\n")
                    }
                    Input::Unit(unit) => {
                        text.push_str("     stdin: the unit file below\n");
                        let body = match unit {
                            Ok(u) => u.clone(),
                            Err(e) => format!("error: {e}\n"),
                        };
                        text.push_str(&indent(&body, "       | "));
                    }
                }
                self.push(Some(op.id), text);
            }
            OpKind::IfNixos { nixos, otherwise } => {
                self.push(
                    None,
                    "  if ID=nixos: the NixOS steps below; otherwise the fallback steps:\n".into(),
                );
                self.ops(nixos);
                // The other branch has its own close.
                self.closed = false;
                self.push(None, "  otherwise:\n".into());
                self.ops(otherwise);
            }
        }
    }
}

impl Program {
    /// The numbered listing of the program (what `--dry-run` prints after a node's header),
    /// with `vars` filled into the scripts. Closing the shared connection appears only when
    /// there is one, once per path.
    pub fn listing(&self, ssh: &SshConfig, vars: &Vars) -> Vec<Entry> {
        let mut l = Lister {
            ssh,
            target: &self.target,
            vars,
            n: 0,
            closed: false,
            fresh_shown: false,
            out: Vec::new(),
        };
        l.ops(&self.ops);
        l.ops(&self.finally);
        l.out
    }

    /// The listing's text for the op `id`, if it shows.
    pub fn entry(&self, ssh: &SshConfig, vars: &Vars, id: usize) -> Option<String> {
        self.listing(ssh, vars)
            .into_iter()
            .find(|e| e.op == Some(id))
            .map(|e| e.text)
    }
}

/// How `plan`'s node is reached: its SSH login, its pinned known_hosts file, `sudo -n` unless
/// the login is root, and the shared connection's control socket, if any.
pub fn node_target(
    opts: &super::DeployOptions,
    plan: &crate::spec::NodeSpec,
    control: Option<PathBuf>,
) -> SshTarget {
    SshTarget {
        destination: plan.access.ssh_target.clone(),
        known_hosts: opts.known_hosts_path(&plan.name),
        sudo: plan.access.needs_sudo(),
        control,
    }
}
