//! The post-activation health gate of a guarded `switch` (see `docs/deploy.md`).
//!
//! After the new generation is activated and before the rollback guard is disarmed, the node
//! must show, within `node_timeout_seconds`:
//!
//! - `tailscaled.service` and the agent unit (`omp-agent.service`) active (`systemctl
//!   is-active`, over SSH);
//! - every TCP service its roles host accepting a connection on its tailnet address (the same
//!   probe as `fleetnix health`: [`crate::health::probe_port`]).
//!
//! The gate asks again (every half second, with the guard's confirmation loop) until it passes
//! or the node has answered unhealthy for `node_timeout_seconds`; a node that does not pass is
//! rolled back by the guard at once and counts as failed, with the gate's reason. While SSH
//! does not get through at all (tailscaled restarting), the gate waits like the confirmation:
//! the guard's deadline bounds it, and the confirmation is never tried before the gate passed.

use crate::exec::process::NodeLog;
use crate::exec::quote::sh_quote;
use crate::exec::ssh::{SshTarget, Transport};
use crate::health::{probe_port, PortOutcome};
use crate::model::Protocol;
use crate::spec::NodeSpec;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tailscale's daemon unit.
pub const TAILSCALED_UNIT: &str = "tailscaled.service";

/// The units that must be active after activation, in the order they are reported.
pub const UNITS: [&str; 2] = [TAILSCALED_UNIT, crate::outputs::agent::AGENT_UNIT];

/// Pause between two looks at a node that has not passed yet.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Where a NixOS system's top level keeps its units (`<system>/etc/systemd/system/<unit>`).
pub const SYSTEM_UNITS_DIR: &str = "etc/systemd/system";

/// The script asking the node about the gate's units for the system `new` (a store path; on
/// the node): one `unit <name> <expected yes|no> <state>` line per unit of [`UNITS`], where
/// `tailscaled.service` is always expected and the others only when `new` has them in
/// [`SYSTEM_UNITS_DIR`] (or, for a system without that folder, when systemd knows the unit);
/// with `gpus`, one `gpu <exit code of nvidia-smi|missing> <GPUs listed> <first line>` line.
/// Always exits 0 when it ran.
pub fn gate_script(new: &str, gpus: Option<u32>) -> String {
    let units: Vec<String> = UNITS.iter().map(|u| sh_quote(u)).collect();
    let mut s = format!(
        "N={new}; D=\"$N/{SYSTEM_UNITS_DIR}\"\n\
         for u in {units}; do\n\
         \x20 e=yes\n\
         \x20 if [ \"$u\" != {TAILSCALED_UNIT} ]; then\n\
         \x20   if [ -d \"$D\" ]; then [ -e \"$D/$u\" ] || e=no; else systemctl cat \"$u\" >/dev/null 2>&1 || e=no; fi\n\
         \x20 fi\n\
         \x20 s=$(systemctl is-active \"$u\" 2>/dev/null); echo \"unit $u $e ${{s:-inactive}}\"\n\
         done\n",
        new = sh_quote(new),
        units = units.join(" "),
    );
    if gpus.is_some() {
        s.push_str(
            "if command -v nvidia-smi >/dev/null 2>&1; then\n\
             \x20 o=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1); c=$?\n\
             \x20 n=$(printf '%s\\n' \"$o\" | grep -c .); echo \"gpu $c $n $(printf '%s\\n' \"$o\" | head -n 1)\"\n\
             else echo \"gpu missing 0 nvidia-smi not found\"; fi\n",
        );
    }
    s.push_str("exit 0");
    s
}

/// What [`gate_script`] reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitsSeen {
    /// Unit → (expected in the new generation, `systemctl is-active` state).
    pub units: BTreeMap<String, (bool, String)>,
    /// `nvidia-smi`: `(exit code or "missing", GPUs listed, first line)`, when asked.
    pub gpu: Option<(String, u32, String)>,
}

/// Reads [`gate_script`]'s lines (other lines are ignored).
pub fn parse_gate(stdout: &str) -> UnitsSeen {
    let mut seen = UnitsSeen::default();
    for l in stdout.lines() {
        let mut w = l.splitn(4, ' ');
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("unit"), Some(u), Some(e), s) if UNITS.contains(&u) => {
                seen.units.insert(
                    u.to_string(),
                    (e == "yes", s.unwrap_or("inactive").trim().to_string()),
                );
            }
            (Some("gpu"), Some(c), Some(n), first) => {
                seen.gpu = Some((
                    c.to_string(),
                    n.parse().unwrap_or(0),
                    first.unwrap_or("").trim().to_string(),
                ))
            }
            _ => {}
        }
    }
    seen
}

/// What the node looked like before the switch: its units and its services' ports. What was
/// already down then is a warning after the switch, not a regression.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    /// The units as [`gate_script`] saw them.
    pub units: UnitsSeen,
    /// Port → accepted a connection.
    pub ports: BTreeMap<u16, bool>,
}

/// The TCP ports of `plan`'s services, probed at once: port → accepted a connection.
pub async fn probe_ports(plan: &NodeSpec, timeout: Duration) -> BTreeMap<u16, PortOutcome> {
    let mut set = tokio::task::JoinSet::new();
    for (_, port) in tcp_services(plan) {
        let addr = SocketAddr::new(plan.access.address, port);
        set.spawn(async move { (port, probe_port(addr, timeout).await) });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((port, o)) = joined {
            out.insert(port, o);
        }
    }
    out
}

/// The baseline from the units seen before the switch and a probe of the ports.
pub async fn baseline(plan: &NodeSpec, units: UnitsSeen, timeout: Duration) -> Baseline {
    let ports = probe_ports(plan, timeout)
        .await
        .into_iter()
        .map(|(p, o)| (p, o == PortOutcome::Open))
        .collect();
    Baseline { units, ports }
}

/// What the gate checks on `plan`'s node, for `--dry-run`.
pub fn describe(plan: &NodeSpec, limit: Duration) -> String {
    let ports: Vec<String> = tcp_services(plan)
        .iter()
        .map(|(name, port)| format!("{name} {}:{port}", plan.access.address))
        .collect();
    format!(
        "health gate (before the confirmation, within {}s): {} active, and TCP connects to {}{}; each as healthy as before the switch (what was already down then is a warning; the agent only where the new generation has its unit); else roll back at once",
        limit.as_secs(),
        UNITS.join(" and "),
        if ports.is_empty() {
            "no service".to_string()
        } else {
            ports.join(", ")
        },
        match plan.gpus {
            Some(n) => format!(", and nvidia-smi lists {n} GPU(s)"),
            None => String::new(),
        }
    )
}

/// The TCP services a node hosts: `(service, port)`, in catalog order.
pub fn tcp_services(plan: &NodeSpec) -> Vec<(String, u16)> {
    plan.services
        .iter()
        .filter(|s| s.protocol == Protocol::Tcp)
        .map(|s| (s.name.clone(), s.port))
        .collect()
}

/// What one look at a node found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    /// Nothing regressed (what it checked, and warnings).
    Healthy(Verdict),
    /// The node answered over SSH, and this is wrong.
    Unhealthy(String),
    /// SSH did not get through (e.g. tailscaled is still restarting).
    Unreachable(String),
}

/// A passing look: what was checked and what was only warned about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What the gate checked and found healthy.
    pub checked: Vec<String>,
    /// What it did not check (a unit the new generation does not have).
    pub skipped: Vec<String>,
    /// Down after the switch, but already down before it.
    pub warnings: Vec<String>,
}

impl Verdict {
    /// One line for the log and the summary.
    pub fn summary(&self) -> String {
        let mut s = format!("checked {}", self.checked.join(", "));
        if !self.skipped.is_empty() {
            s.push_str(&format!("; not checked: {}", self.skipped.join(", ")));
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!("; warnings: {}", self.warnings.join(", ")));
        }
        s
    }
}

/// Judges the units, GPUs and ports seen after the switch against `before`: `Ok` with what
/// was checked and warned about, or `Err` naming what regressed.
pub fn judge(
    plan: &NodeSpec,
    after: &UnitsSeen,
    ports: &BTreeMap<u16, PortOutcome>,
    before: Option<&Baseline>,
) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut wrong = Vec::new();
    for u in UNITS {
        let Some((expected, state)) = after.units.get(u) else {
            wrong.push(format!("{u}: no answer"));
            continue;
        };
        if !expected {
            v.skipped.push(format!("{u} (not in the new generation)"));
            continue;
        }
        if state == "active" {
            v.checked.push(format!("{u} active"));
            continue;
        }
        match before.and_then(|b| b.units.units.get(u)) {
            Some((_, was)) if was != "active" => v
                .warnings
                .push(format!("{u} is {state} (already {was} before the switch)")),
            _ => wrong.push(format!("{u} is {state}")),
        }
    }
    if let Some(n) = plan.gpus {
        match &after.gpu {
            Some((c, listed, _)) if c == "0" && *listed == n => {
                v.checked.push(format!("GPUs: nvidia-smi lists {n} of {n}"))
            }
            Some((c, listed, _)) if c == "0" => wrong.push(format!(
                "GPUs: nvidia-smi lists {listed}, the node declares {n}"
            )),
            Some((c, _, first)) => wrong.push(format!(
                "GPUs: nvidia-smi failed ({}): {first}",
                if c == "missing" {
                    "not found".to_string()
                } else {
                    format!("exit {c}")
                }
            )),
            None => wrong.push("GPUs: no answer from nvidia-smi".to_string()),
        }
    }
    let mut open = 0;
    for (name, port) in tcp_services(plan) {
        let how = match ports.get(&port) {
            Some(PortOutcome::Open) => {
                open += 1;
                continue;
            }
            Some(PortOutcome::Refused) => "refused".to_string(),
            Some(PortOutcome::TimedOut) => "timed out".to_string(),
            Some(PortOutcome::Error(e)) => e.clone(),
            None => "not probed".to_string(),
        };
        let what = format!("{name} ({}:{port}) {how}", plan.access.address);
        match before.and_then(|b| b.ports.get(&port)) {
            Some(false) => v
                .warnings
                .push(format!("{what} (already closed before the switch)")),
            _ => wrong.push(what),
        }
    }
    v.checked.push(format!("{open} service port(s) open"));
    if wrong.is_empty() {
        Ok(v)
    } else {
        Err(wrong.join(", "))
    }
}

/// One look at a node: its units over SSH (`script`, [`gate_script`]) and its service ports
/// over TCP, at once.
async fn look<T: Transport>(
    transport: &T,
    target: &SshTarget,
    plan: &NodeSpec,
    script: &str,
    before: Option<&Baseline>,
    timeout: Duration,
    log: &NodeLog,
) -> Look {
    let (units, ports) = tokio::join!(
        transport.run(target, script, None, timeout, log),
        probe_ports(plan, timeout)
    );
    let seen = match units {
        Ok(out) if out.success() => parse_gate(&out.stdout),
        Ok(out) if out.code == Some(255) => return Look::Unreachable(out.last_line()),
        Ok(out) => return Look::Unhealthy(format!("cannot ask systemd: {}", out.last_line())),
        Err(e) => return Look::Unreachable(e.to_string()),
    };
    match judge(plan, &seen, &ports, before) {
        Ok(v) => Look::Healthy(v),
        Err(why) => Look::Unhealthy(why),
    }
}

/// The verdict of one [`Gate::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The node passed: what was checked (and warned about).
    Passed(Verdict),
    /// Not yet: ask again (why, for the log). The node is unreachable, or unhealthy for less
    /// than the gate's limit.
    Wait(String),
    /// The node stayed unhealthy for the gate's whole limit: roll it back (why, for the summary).
    Failed(String),
}

/// One node's gate: unhealthy for `limit` (`node_timeout_seconds`) from the first time it
/// answered, it fails. While SSH does not get through (a tailscaled restart), it waits: the
/// guard's own deadline bounds that, and the guard's timer rolls the node back meanwhile.
#[derive(Debug, Clone)]
pub struct Gate {
    limit: Duration,
    since: Option<Instant>,
    /// What the node looked like before the switch, if it was seen.
    pub before: Option<Baseline>,
}

impl Gate {
    /// A gate allowing `limit` from the node's first answer, judging against `before`.
    pub fn new(limit: Duration, before: Option<Baseline>) -> Self {
        Gate {
            limit,
            since: None,
            before,
        }
    }

    /// Looks at the node once (each probe bounded by `timeout`), with `script` ([`gate_script`]).
    pub async fn check<T: Transport>(
        &mut self,
        transport: &T,
        target: &SshTarget,
        plan: &NodeSpec,
        script: &str,
        timeout: Duration,
        log: &NodeLog,
    ) -> Check {
        match look(
            transport,
            target,
            plan,
            script,
            self.before.as_ref(),
            timeout,
            log,
        )
        .await
        {
            Look::Healthy(v) => Check::Passed(v),
            Look::Unreachable(why) => Check::Wait(format!("health gate: unreachable ({why})")),
            Look::Unhealthy(why) => {
                let since = *self.since.get_or_insert_with(Instant::now);
                if since.elapsed() + RETRY_EVERY >= self.limit {
                    Check::Failed(format!(
                        "health gate failed for {}s after activation: {why}",
                        self.limit.as_secs()
                    ))
                } else {
                    Check::Wait(format!("health gate: {why}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lines: &str) -> UnitsSeen {
        parse_gate(lines)
    }

    #[test]
    fn gate_scripts_parse() {
        for g in [None, Some(2)] {
            let s = gate_script("/nix/store/abc-nixos-system-x", g);
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .expect("sh");
            assert!(st.success(), "{s}");
        }
    }

    #[test]
    fn the_gate_script_checks_the_agent_only_where_the_new_generation_has_it() {
        // A stand-in systemctl on PATH: tailscaled active, everything else inactive; a fake
        // nvidia-smi listing two GPUs.
        let dir = tempfile::tempdir().expect("dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let write = |name: &str, text: &str| {
            let p = bin.join(name);
            std::fs::write(&p, text).expect("fake");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        write(
            "systemctl",
            "#!/bin/sh\n[ \"$1\" = cat ] && exit 0\n[ \"$2\" = tailscaled.service ] && { echo active; exit 0; }\necho inactive; exit 3\n",
        );
        write(
            "nvidia-smi",
            "#!/bin/sh\necho 'NVIDIA A100'\necho 'NVIDIA A100'\n",
        );
        let new = dir.path().join("sys");
        std::fs::create_dir_all(new.join(SYSTEM_UNITS_DIR)).expect("units");
        std::fs::write(new.join(SYSTEM_UNITS_DIR).join(TAILSCALED_UNIT), "").expect("unit");
        let run = |gpus| {
            let out = std::process::Command::new("sh")
                .args(["-c", &gate_script(&new.display().to_string(), gpus)])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .expect("sh");
            assert!(out.status.success());
            parse_gate(&String::from_utf8_lossy(&out.stdout))
        };
        let s = run(Some(2));
        assert_eq!(s.units[TAILSCALED_UNIT], (true, "active".to_string()));
        assert_eq!(
            s.units["omp-agent.service"],
            (false, "inactive".to_string()),
            "not in the new generation"
        );
        assert_eq!(s.gpu, Some(("0".into(), 2, "NVIDIA A100".into())));
        // With the agent's unit in the new generation, it is expected.
        std::fs::write(new.join(SYSTEM_UNITS_DIR).join("omp-agent.service"), "").expect("unit");
        assert!(run(None).units["omp-agent.service"].0);
        assert_eq!(run(None).gpu, None);
    }

    /// The example fleet's control plane (it hosts TCP services), with `gpus` declared.
    fn plan(gpus: Option<u32>) -> NodeSpec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
        let fleet = crate::manifest::load(&dir).expect("example fleet");
        let mut p = crate::spec::node_specs(&fleet)
            .into_iter()
            .find(|p| p.is_control_plane)
            .expect("control plane");
        p.gpus = gpus;
        p
    }

    fn all_open(p: &NodeSpec) -> BTreeMap<u16, PortOutcome> {
        tcp_services(p)
            .into_iter()
            .map(|(_, port)| (port, PortOutcome::Open))
            .collect()
    }

    #[test]
    fn regressions_fail_and_what_was_already_down_warns() {
        let p = plan(None);
        let (_, port) = tcp_services(&p)[0];
        let healthy =
            seen("unit tailscaled.service yes active\nunit omp-agent.service yes active\n");
        let agent_down =
            seen("unit tailscaled.service yes active\nunit omp-agent.service yes inactive\n");
        let v = judge(&p, &healthy, &all_open(&p), None).expect("healthy");
        assert_eq!(v.checked[0], "tailscaled.service active");
        assert!(v.warnings.is_empty());
        // Healthy before, down after: fails.
        let before = Baseline {
            units: healthy.clone(),
            ports: all_open(&p).keys().map(|k| (*k, true)).collect(),
        };
        let e = judge(&p, &agent_down, &all_open(&p), Some(&before)).expect_err("regressed");
        assert_eq!(e, "omp-agent.service is inactive");
        // Already down before (a fleet set up networking-first): a warning, not a failure.
        let mut closed = all_open(&p);
        closed.insert(port, PortOutcome::Refused);
        let before_down = Baseline {
            units: agent_down.clone(),
            ports: closed
                .iter()
                .map(|(k, o)| (*k, *o == PortOutcome::Open))
                .collect(),
        };
        let v = judge(&p, &agent_down, &closed, Some(&before_down)).expect("only warnings");
        assert_eq!(v.warnings.len(), 2, "{v:?}");
        assert!(
            v.summary().contains("already inactive before the switch"),
            "{}",
            v.summary()
        );
        assert!(v.summary().contains("already closed before the switch"));
        // The port closed by the switch fails.
        assert!(judge(&p, &healthy, &closed, Some(&before)).is_err());
        // A unit the new generation does not have is not checked.
        let no_agent =
            seen("unit tailscaled.service yes active\nunit omp-agent.service no inactive\n");
        let v = judge(&p, &no_agent, &all_open(&p), Some(&before)).expect("not checked");
        assert_eq!(v.skipped, ["omp-agent.service (not in the new generation)"]);
    }

    #[test]
    fn gpu_nodes_pass_only_when_nvidia_smi_lists_the_declared_count() {
        let p = plan(Some(2));
        let units = "unit tailscaled.service yes active\nunit omp-agent.service yes active\n";
        let ok = seen(&format!("{units}gpu 0 2 NVIDIA A100\n"));
        let v = judge(&p, &ok, &all_open(&p), None).expect("gpus");
        assert!(
            v.summary().contains("GPUs: nvidia-smi lists 2 of 2"),
            "{}",
            v.summary()
        );
        let one = seen(&format!("{units}gpu 0 1 NVIDIA A100\n"));
        assert_eq!(
            judge(&p, &one, &all_open(&p), None).expect_err("count"),
            "GPUs: nvidia-smi lists 1, the node declares 2"
        );
        let mismatch = seen(&format!(
            "{units}gpu 18 1 Failed to initialize NVML: Driver/library version mismatch\n"
        ));
        assert_eq!(
            judge(&p, &mismatch, &all_open(&p), None).expect_err("mismatch"),
            "GPUs: nvidia-smi failed (exit 18): Failed to initialize NVML: Driver/library version mismatch"
        );
        // A node without GPUs is not asked.
        assert!(judge(&plan(None), &seen(units), &all_open(&p), None).is_ok());
    }
}
