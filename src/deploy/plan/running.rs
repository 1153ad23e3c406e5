//! What each node runs now: its current system over the pinned SSH of deploy, and for `os: linux`
//! nodes what the installer would change (probed read-only).

use super::*;
use crate::deploy::reboot::{BootSet, RebootNeed};

pub(super) const MARK: &str = "@@fleetnix-plan@@";

/// The read-only script probing a node: `readlink /run/current-system`, and for nodes that may
/// not be NixOS (`linux`, `auto`) also the installer's probe (os-release, `tailscale status`)
/// and the installed agent and firewall units. Sections are separated by marker lines.
pub fn probe_script(os: Os) -> String {
    let mut s = format!(
        "echo\necho {MARK}current\nreadlink /run/current-system 2>/dev/null || true\n\
         echo\necho {MARK}profile\n[ -e /nix/var/nix/profiles/system ] && echo yes || echo no\n"
    );
    if os != Os::Linux {
        // What only a reboot brings into effect, for the booted and the running system.
        for (name, root) in [
            ("booted", super::super::reboot::BOOTED_SYSTEM),
            ("running", "/run/current-system"),
        ] {
            let _ = write!(
                s,
                "echo\necho {MARK}boot-{name}\n{}\n",
                super::super::reboot::read_script(root)
            );
        }
    }
    if os != Os::Nixos {
        let unit = |name: &str, extra: &str| {
            format!(
                "echo\necho {MARK}{name}\ncat {dir}/{name} 2>/dev/null || true\n\
                 echo\necho {MARK}{name}-enabled\n\
                 if systemctl is-enabled --quiet {name} 2>/dev/null{extra}; then echo yes; else echo no; fi\n",
                dir = linux::UNIT_DIR
            )
        };
        let _ = write!(
            s,
            "echo\necho {MARK}probe\n{}\n{}{}",
            probe::probe_script(),
            unit(AGENT_UNIT, ""),
            unit(
                linux::FIREWALL_UNIT,
                " && nft list table inet fleetnix >/dev/null 2>&1"
            ),
        );
    }
    let _ = write!(s, "echo\necho {MARK}end\n");
    s
}

/// The sections of [`probe_script`]'s output by name, each exactly as its command printed it.
pub fn probe_sections(out: &str) -> BTreeMap<String, String> {
    let text = format!("\n{out}");
    let mut sections = BTreeMap::new();
    for piece in text.split(&format!("\n{MARK}")).skip(1) {
        // The `echo` before each marker ends the previous section's last line, and the split
        // consumes exactly that newline: `body` is the output as it was.
        let (name, body) = piece.split_once('\n').unwrap_or((piece, ""));
        sections.insert(name.trim().to_string(), body.to_string());
    }
    sections
}

/// What the installer would change on a non-NixOS node, from the probe (empty: nothing).
pub fn installer_changes(
    plan: &NodeSpec,
    probe: &Probe,
    sections: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !probe.has_tailscale {
        out.push("install Tailscale (install script)".to_string());
    }
    if !probe.up_as_planned {
        out.push("tailscale up (not up as this node with its tags)".to_string());
    }
    let get = |k: &str| sections.get(k).map(String::as_str).unwrap_or("");
    let mut unit = |label: &str, name: &str, want: Result<String, String>| {
        let enabled = get(&format!("{name}-enabled")).trim() == "yes";
        match want {
            Err(e) => out.push(format!("{label}: cannot be written: {e}")),
            Ok(_) if get(name).is_empty() => out.push(format!("{label}: install {name}")),
            Ok(w) if get(name) != w => out.push(format!("{label}: update {name}")),
            Ok(_) if !enabled => out.push(format!("{label}: enable and start {name}")),
            Ok(_) => {}
        }
    };
    unit(
        "agent",
        AGENT_UNIT,
        linux::agent_unit(plan).map_err(|e| e.to_string()),
    );
    unit(
        "firewall",
        linux::FIREWALL_UNIT,
        Ok(linux::firewall_unit(plan)),
    );
    out
}

/// Writes the node's pinned known_hosts file (manifest key + the tailnet's keys for its
/// address) and returns its SSH target (a fresh connection per command).
pub fn pin(
    opts: &DeployOptions,
    plan: &NodeSpec,
    tailnet_keys: &BTreeMap<IpAddr, Vec<String>>,
) -> Result<SshTarget, crate::model::InvalidValue> {
    let mut keys: Vec<String> = plan.access.host_key.iter().map(|k| k.to_string()).collect();
    if let Some(k) = tailnet_keys.get(&plan.access.address) {
        keys.extend(k.iter().cloned());
    }
    let text = hostkeys::known_hosts(&plan.access.address, &keys);
    if text.is_empty() {
        return Err(format!(
            "no pinned host key (not in the manifest, not reported by tailscale status): check it out of band, e.g. `{}`, and set host_key in nodes.yml",
            hostkeys::keyscan_hint(&plan.access.address)
        ).into());
    }
    let path = opts.known_hosts_path(&plan.name);
    // The same pin as last time is left alone: an atomic write costs two fsyncs per node, on the
    // runtime's threads, and the file would come out byte-identical.
    if std::fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
        write_atomic_in_repo(&opts.root, &path, text.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(SshTarget {
        destination: plan.access.ssh_target.clone(),
        known_hosts: path,
        sudo: plan.access.needs_sudo(),
        control: None,
    })
}

/// Runs the probe on one node: its sections, or the node's state and reason.
pub(super) async fn probe<T: Transport>(
    transport: &T,
    opts: &DeployOptions,
    plan: &NodeSpec,
    tailnet_keys: &BTreeMap<IpAddr, Vec<String>>,
) -> Result<BTreeMap<String, String>, (State, String)> {
    let target = pin(opts, plan, tailnet_keys).map_err(|e| (State::Error, e.to_string()))?;
    let limit = opts.node_timeout + Duration::from_secs(5);
    let log = NodeLog::discard();
    match transport
        .run(&target, &probe_script(plan.access.os), None, limit, &log)
        .await
    {
        Ok(out) if out.success() => Ok(probe_sections(&out.stdout)),
        Ok(out) if out.code == Some(255) => {
            let err = out.stderr.to_ascii_lowercase();
            Err(
                if err.contains("host key verification failed")
                    || err.contains("remote host identification has changed")
                {
                    (
                        State::Error,
                        format!("host key verification failed: the node's key does not match the pinned host_key ({})", out.last_line()),
                    )
                } else if err.contains("permission denied") {
                    (
                        State::Error,
                        format!("SSH login refused ({})", out.last_line()),
                    )
                } else {
                    (State::Unreachable, out.last_line())
                },
            )
        }
        Ok(out) => Err((State::Error, format!("probe failed: {}", out.last_line()))),
        Err(e @ ProcError::Timeout { .. }) => Err((
            State::Unreachable,
            format!("no answer within {}s ({e})", limit.as_secs()),
        )),
        Err(e) => Err((State::Error, e.to_string())),
    }
}

/// The state of one node from its probe and its evaluated target.
pub(super) fn node_state(
    plan: &NodeSpec,
    probed: Result<BTreeMap<String, String>, (State, String)>,
    target: Option<&Evaluated>,
    target_boot: Option<&BootSet>,
) -> SystemState {
    let target_system = target.and_then(|t| t.as_ref().ok().cloned());
    let mut s = SystemState {
        name: plan.name.clone(),
        os: match plan.access.os {
            Os::Nixos => "nixos",
            Os::Linux => "linux",
            Os::Auto => "auto",
        }
        .to_string(),
        state: State::Error,
        reason: None,
        current_system: None,
        target_system: None,
        target_from: None,
        installer: Vec::new(),
        reboot: None,
    };
    let sections = match probed {
        Ok(s) => s,
        Err((state, reason)) => {
            s.state = state;
            s.reason = Some(reason);
            if plan.access.os == Os::Nixos {
                s.target_system = target_system;
            }
            return s;
        }
    };
    let nixos = match plan.access.os {
        Os::Nixos => true,
        Os::Linux => false,
        Os::Auto => {
            let probe = probe::parse_probe(
                sections.get("probe").map(String::as_str).unwrap_or(""),
                plan,
            );
            probe.os_id == "nixos"
        }
    };
    if !nixos {
        s.os = "linux".into();
        let probe = probe::parse_probe(
            sections.get("probe").map(String::as_str).unwrap_or(""),
            plan,
        );
        s.installer = installer_changes(plan, &probe, &sections);
        s.state = if s.installer.is_empty() {
            State::Unchanged
        } else {
            State::Changed
        };
        return s;
    }
    s.os = "nixos".into();
    s.target_system = target_system;
    let current = sections
        .get("current")
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(flake::check_store_path);
    let has_profile = sections.get("profile").map(|p| p.trim()) == Some("yes");
    match (current, target) {
        (None, _) => {
            s.reason = Some(format!(
                "no /run/current-system{}: the host does not look like NixOS; if it is not, set `os: auto` or `os: linux` for {} in nodes.yml",
                if has_profile { "" } else { " and no /nix/var/nix/profiles/system" },
                plan.name
            ));
        }
        (Some(Err(e)), _) => s.reason = Some(format!("/run/current-system: {e}")),
        (Some(Ok(cur)), t) => {
            s.current_system = Some(cur.clone());
            match t {
                None => s.reason = Some("the target system was not evaluated".into()),
                Some(Err(e)) => s.reason = Some(format!("evaluating the target system: {e}")),
                Some(Ok(t)) if *t == cur => s.state = State::Unchanged,
                Some(Ok(_)) => s.state = State::Changed,
            }
            // The target's components: read here if it is built here (exact), else as evaluated.
            let local = s
                .target_system
                .as_deref()
                .and_then(|t| BootSet::local(Path::new(t)))
                .filter(|b| !b.is_empty());
            let target = local.as_ref().or(target_boot.filter(|b| !b.is_empty()));
            let booted = BootSet::parse(sections.get("boot-booted").map_or("", |v| v.as_str()));
            let running = BootSet::parse(sections.get("boot-running").map_or("", |v| v.as_str()));
            s.reboot = Some(RebootNeed::assess(&booted, &running, target));
        }
    }
    s
}

/// Where every node of `plans` stands: the targets evaluated (or taken from the evaluation
/// cache, [`super::super::evalcache`]) while all nodes
/// are probed over SSH (at most [`MAX_PROBES`] at once). Returned in `plans` order, with
/// warnings that concern no single node.
pub async fn systems<T: Transport + Clone>(
    plans: &[NodeSpec],
    opts: &DeployOptions,
    tools: &PlanTools,
    transport: T,
) -> (Vec<SystemState>, Vec<String>) {
    let mut warnings = Vec::new();
    let to_eval: Vec<NodeName> = plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| p.name.clone())
        .collect();
    // The evaluation starts at once, while the tailnet's host keys are read and the probes
    // that need them run.
    let settings = tools.eval_settings();
    let eval = super::super::evalcache::eval_targets(
        &settings,
        &opts.root,
        &to_eval,
        &opts.override_inputs,
    );
    let probes = async {
        let (tailnet_keys, w) = tailnet_host_keys(opts).await;
        if let Some(w) = w {
            warnings.push(format!("host keys from the tailnet unavailable: {w}"));
        }
        let keys = Arc::new(tailnet_keys);
        let sem = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES));
        let mut set = tokio::task::JoinSet::new();
        for (i, plan) in plans.iter().enumerate() {
            let (t, o, p, k, sem) = (
                transport.clone(),
                opts.clone(),
                plan.clone(),
                keys.clone(),
                sem.clone(),
            );
            set.spawn(async move {
                // The semaphore is never closed, so acquiring only waits.
                let _permit = sem.acquire_owned().await.ok();
                (i, probe(&t, &o, &p, &k).await)
            });
        }
        let mut out: BTreeMap<usize, _> = BTreeMap::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((i, r)) => {
                    out.insert(i, r);
                }
                Err(e) => warnings.push(format!("a probe task failed: {e}")),
            }
        }
        out
    };
    let (targets, mut probed) = tokio::join!(eval, probes);
    let super::super::evalcache::Targets {
        nodes: targets,
        boot,
        warnings: eval_warnings,
    } = targets;
    warnings.extend(eval_warnings);
    let states = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = probed
                .remove(&i)
                .unwrap_or_else(|| Err((State::Error, "the probe did not finish".into())));
            let target = targets.get(&p.name);
            let mut s = node_state(p, r, target.map(|(t, _)| t), boot.get(&p.name));
            if s.target_system.is_some() {
                s.target_from = target.map(|(_, from)| *from);
            }
            s
        })
        .collect();
    (states, warnings)
}
