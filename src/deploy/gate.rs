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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tailscale's daemon unit.
pub const TAILSCALED_UNIT: &str = "tailscaled.service";

/// The units that must be active after activation, in the order they are reported.
pub const UNITS: [&str; 2] = [TAILSCALED_UNIT, crate::outputs::agent::AGENT_UNIT];

/// Pause between two looks at a node that has not passed yet.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The script asking systemd for the gate's units: prints one `<unit> <state>` line per unit
/// that is not active (nothing when all are), and always exits 0 when it ran.
pub fn units_script() -> String {
    let units: Vec<String> = UNITS.iter().map(|u| sh_quote(u)).collect();
    format!(
        "for u in {}; do s=$(systemctl is-active \"$u\" 2>/dev/null) || echo \"$u ${{s:-inactive}}\"; done; exit 0",
        units.join(" ")
    )
}

/// What the gate checks on `plan`'s node, for `--dry-run`.
pub fn describe(plan: &NodeSpec, limit: Duration) -> String {
    let ports: Vec<String> = tcp_services(plan)
        .iter()
        .map(|(name, port)| format!("{name} {}:{port}", plan.access.address))
        .collect();
    format!(
        "health gate (before the confirmation, within {}s): {} active{}; else roll back at once",
        limit.as_secs(),
        UNITS.join(" and "),
        if ports.is_empty() {
            String::new()
        } else {
            format!(", and TCP connects to {}", ports.join(", "))
        }
    )
}

/// The units the script reported as not active: `(unit, state)` pairs.
pub fn parse_units(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let unit = w.next()?;
            UNITS
                .contains(&unit)
                .then(|| (unit.to_string(), w.next().unwrap_or("inactive").to_string()))
        })
        .collect()
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
    /// Every unit active, every port open.
    Healthy,
    /// The node answered over SSH, and this is wrong.
    Unhealthy(String),
    /// SSH did not get through (e.g. tailscaled is still restarting).
    Unreachable(String),
}

/// One look at a node: its units over SSH and its service ports over TCP, at once.
async fn look<T: Transport>(
    transport: &T,
    target: &SshTarget,
    plan: &NodeSpec,
    timeout: Duration,
    log: &NodeLog,
) -> Look {
    let mut set = tokio::task::JoinSet::new();
    for (i, (name, port)) in tcp_services(plan).into_iter().enumerate() {
        let addr = SocketAddr::new(plan.access.address, port);
        set.spawn(async move { (i, name, port, probe_port(addr, timeout).await) });
    }
    let script = units_script();
    let units = transport.run(target, &script, None, timeout, log).await;
    let mut ports = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(p) => ports.push(p),
            Err(e) => ports.push((
                usize::MAX,
                "probe".into(),
                0,
                PortOutcome::Error(e.to_string()),
            )),
        }
    }
    ports.sort_by_key(|p| p.0);
    let mut wrong = Vec::new();
    match units {
        Ok(out) if out.success() => wrong.extend(
            parse_units(&out.stdout)
                .into_iter()
                .map(|(u, s)| format!("{u} is {s}")),
        ),
        Ok(out) if out.code == Some(255) => return Look::Unreachable(out.last_line()),
        Ok(out) => wrong.push(format!("cannot ask systemd: {}", out.last_line())),
        Err(e) => return Look::Unreachable(e.to_string()),
    }
    for (_, name, port, outcome) in ports {
        let how = match outcome {
            PortOutcome::Open => continue,
            PortOutcome::Refused => "refused".to_string(),
            PortOutcome::TimedOut => "timed out".to_string(),
            PortOutcome::Error(e) => e,
        };
        wrong.push(format!("{name} ({}:{port}) {how}", plan.access.address));
    }
    if wrong.is_empty() {
        Look::Healthy
    } else {
        Look::Unhealthy(wrong.join(", "))
    }
}

/// The verdict of one [`Gate::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The node passed (for the log).
    Passed(String),
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
}

impl Gate {
    /// A gate allowing `limit` from the node's first answer.
    pub fn new(limit: Duration) -> Self {
        Gate { limit, since: None }
    }

    /// Looks at the node once (each probe bounded by `timeout`).
    pub async fn check<T: Transport>(
        &mut self,
        transport: &T,
        target: &SshTarget,
        plan: &NodeSpec,
        timeout: Duration,
        log: &NodeLog,
    ) -> Check {
        match look(transport, target, plan, timeout, log).await {
            Look::Healthy => Check::Passed(format!(
                "health gate passed: {} active, {} service port(s) open",
                UNITS.join(" and "),
                tcp_services(plan).len()
            )),
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

    #[test]
    fn units_script_parses_and_names_both_units() {
        let s = units_script();
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .status()
            .expect("sh");
        assert!(st.success(), "{s}");
        assert!(s.contains("tailscaled.service") && s.contains("omp-agent.service"));
    }

    #[test]
    fn inactive_units_are_read_and_noise_ignored() {
        assert_eq!(parse_units(""), vec![]);
        assert_eq!(
            parse_units("omp-agent.service failed\nsomething else\ntailscaled.service\n"),
            vec![
                ("omp-agent.service".to_string(), "failed".to_string()),
                ("tailscaled.service".to_string(), "inactive".to_string())
            ]
        );
    }

    #[test]
    fn the_units_script_reports_what_systemctl_says() {
        // A stand-in systemctl on PATH: tailscaled active, the agent failed.
        let dir = tempfile::tempdir().expect("dir");
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\n[ \"$2\" = tailscaled.service ] && { echo active; exit 0; }\necho failed; exit 3\n",
        )
        .expect("fake");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = std::process::Command::new("sh")
            .args(["-c", &units_script()])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .expect("sh");
        assert!(out.status.success());
        assert_eq!(
            parse_units(&String::from_utf8_lossy(&out.stdout)),
            vec![("omp-agent.service".to_string(), "failed".to_string())]
        );
    }
}
