//! The plain Linux path (`os: linux`, and `os: auto` when the node is not NixOS; the
//! "fallback" of the docs): Tailscale's install script if `tailscale` is missing, `tailscale up`
//! with the auth key in a 0600 file written from SSH stdin, the agent as a systemd unit with
//! the same arguments the NixOS module uses, and the role ports opened on `tailscale0` only
//! (nftables). Every step checks first and reports whether it changed anything.
//! [`program`] puts these steps in order.

use super::program::{Builder, Effect, Input, Limit, Op, OpKind, Program, Remote, Script, When};
use super::report::Step;
use super::{AuthKeySource, DeployOptions};
use crate::exec::quote::sh_quote;
use crate::exec::ssh::SshTarget;
use crate::model::Os;
use crate::spec::NodeSpec;

/// Tailscale's install script.
pub const DEFAULT_INSTALL_URL: &str = "https://tailscale.com/install.sh";

/// The agent's unit name.
pub const AGENT_UNIT: &str = "omp-agent.service";

/// The firewall unit's name; it loads the ruleset at boot.
pub const FIREWALL_UNIT: &str = "fleetnix-firewall.service";

/// Where units are installed.
pub const UNIT_DIR: &str = "/etc/systemd/system";

const MARK: &str = "@@fleetnix@@";

/// Script reporting `/etc/os-release`, whether `tailscale` exists, and its `status --json`.
pub fn probe_script() -> String {
    format!(
        "cat /etc/os-release 2>/dev/null || true\n\
         echo {MARK}\n\
         if command -v tailscale >/dev/null 2>&1; then echo yes; tailscale status --json 2>/dev/null || true; else echo no; fi"
    )
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `ID` from os-release (`ubuntu`, `nixos`, …), `unknown` if absent.
    pub os_id: String,
    /// Is `tailscale` on PATH?
    pub has_tailscale: bool,
    /// Is Tailscale already up as this node (Running, same hostname and tags)?
    pub up_as_planned: bool,
}

/// The value of `key` in an os-release text (quotes removed).
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// Parses the probe's output for `plan`'s node.
pub fn parse_probe(out: &str, plan: &NodeSpec) -> Probe {
    let (os, rest) = out.split_once(MARK).unwrap_or((out, ""));
    let os_id = os_release_value(os, "ID").unwrap_or_else(|| "unknown".into());
    let mut rest = rest.trim_start().splitn(2, '\n');
    let has_tailscale = rest.next().map(str::trim) == Some("yes");
    let json = rest.next().unwrap_or("");
    let up_as_planned = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .is_some_and(|v| {
            let tags: Vec<String> = v["Self"]["Tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut tags = tags;
            tags.sort();
            v["BackendState"] == "Running"
                && v["Self"]["HostName"] == plan.name.as_str()
                && tags == plan.tags
        });
    Probe {
        os_id,
        has_tailscale,
        up_as_planned,
    }
}

/// Script running the install script from `url` (downloaded first so a failed download is an
/// error, not an empty script), then checking `tailscale` is there.
pub fn install_script(url: &str) -> String {
    format!(
        "set -eu\n\
         f=$(mktemp)\n\
         trap 'rm -f \"$f\"' EXIT\n\
         curl -fsSL {url} -o \"$f\"\n\
         sh \"$f\"\n\
         command -v tailscale >/dev/null",
        url = sh_quote(url)
    )
}

/// The `tailscale up` arguments after `--auth-key=file:<path>`: the plan's flags.
pub fn up_flags(plan: &NodeSpec) -> Vec<String> {
    plan.up_flags.clone()
}

/// Script reading the auth key from stdin into a fresh 0600 file, running
/// `tailscale up --auth-key=file:<path> <flags>`, and deleting the file whatever happens.
pub fn up_script(plan: &NodeSpec) -> String {
    let flags: Vec<String> = up_flags(plan).iter().map(|f| sh_quote(f)).collect();
    format!(
        "set -eu\n\
         umask 077\n\
         f=$(mktemp \"${{TMPDIR:-/tmp}}/fleetnix-authkey.XXXXXXXX\")\n\
         trap 'rm -f \"$f\"' EXIT HUP INT TERM\n\
         cat > \"$f\"\n\
         chmod 600 \"$f\"\n\
         tailscale up --auth-key=\"file:$f\" {}",
        flags.join(" ")
    )
}

/// The agent's unit file (see [`crate::outputs::agent::unit`]): the same unit cloud-init installs.
pub fn agent_unit(plan: &NodeSpec) -> Result<String, crate::outputs::agent::UnitError> {
    crate::outputs::agent::unit(
        plan,
        crate::outputs::agent::DEFAULT_AGENT_BIN,
        "fleetnix deploy",
    )
}

/// The nftables ruleset: the node's role ports accepted on `tailscale0` and dropped on every
/// other interface. Loading it replaces the `inet fleetnix` table atomically.
pub fn ruleset(plan: &NodeSpec) -> String {
    let set = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    // The node's own processes (e.g. its agent reaching its own NATS over its tailnet address)
    // come in on `lo`: never drop those.
    let mut rules = vec!["iifname \"lo\" accept".to_string()];
    for (proto, ports) in [("tcp", &plan.tcp_ports), ("udp", &plan.udp_ports)] {
        if !ports.is_empty() {
            rules.push(format!(
                "iifname \"tailscale0\" {proto} dport {{ {} }} accept",
                set(ports)
            ));
            rules.push(format!("{proto} dport {{ {} }} drop", set(ports)));
        }
    }
    let mut out = String::from(
        "table inet fleetnix\ndelete table inet fleetnix\ntable inet fleetnix {\nchain input {\ntype filter hook input priority filter - 1; policy accept;\n",
    );
    for r in rules {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("}\n}\n");
    out
}

/// The firewall unit: loads [`ruleset`] (embedded as `StandardInputText=`) with `nft -f -` at boot.
pub fn firewall_unit(plan: &NodeSpec) -> String {
    let mut out = format!(
        "# Generated by fleetnix for {node}: role ports on tailscale0 only. Do not edit.\n\
         [Unit]\n\
         Description=fleetnix firewall ({node})\n\
         Before=network-pre.target\n\
         Wants=network-pre.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         StandardInput=data\n",
        node = plan.name
    );
    for line in ruleset(plan).lines() {
        out.push_str("StandardInputText=");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(
        "ExecStart=nft -f -\nExecStop=nft delete table inet fleetnix\n\n[Install]\nWantedBy=multi-user.target\n",
    );
    out
}

/// Script installing a unit from stdin if it differs (or is not enabled); `reload` runs after a
/// change. Prints `changed` or `unchanged`.
fn unit_script(unit: &str, after_change: &str, also_unchanged_if: &str) -> String {
    format!(
        "set -eu\n\
         dest={dir}/{unit}\n\
         tmp=$(mktemp)\n\
         trap 'rm -f \"$tmp\"' EXIT\n\
         cat > \"$tmp\"\n\
         if [ -f \"$dest\" ] && cmp -s \"$tmp\" \"$dest\" && systemctl is-enabled --quiet {unit} {also_unchanged_if}; then echo unchanged; exit 0; fi\n\
         install -m 0644 \"$tmp\" \"$dest\"\n\
         systemctl daemon-reload\n\
         systemctl enable {unit}\n\
         {after_change}\n\
         echo changed",
        dir = UNIT_DIR
    )
}

/// Script installing (stdin: [`agent_unit`]) and (re)starting the agent when its unit changed.
pub fn agent_script() -> String {
    unit_script(AGENT_UNIT, &format!("systemctl restart {AGENT_UNIT}"), "")
}

/// Script installing the agent's NATS password (stdin) as
/// [`crate::outputs::agent::NATS_PASSWORD_PATH`] (mode 0600) and restarting the agent when it
/// changed; prints `unchanged` otherwise.
pub fn nats_password_script() -> String {
    format!(
        "set -eu\n\
         f={f}\n\
         d=$(dirname \"$f\")\n\
         umask 077\n\
         mkdir -p \"$d\"\n\
         t=$(mktemp \"$d/.nats-password.XXXXXX\")\n\
         cat > \"$t\"\n\
         if [ -f \"$f\" ] && cmp -s \"$t\" \"$f\"; then rm -f \"$t\"; echo unchanged; exit 0; fi\n\
         mv -f \"$t\" \"$f\"\n\
         systemctl restart {unit}\n\
         echo changed\n",
        f = sh_quote(crate::outputs::agent::NATS_PASSWORD_PATH),
        unit = AGENT_UNIT,
    )
}

/// Script installing the firewall unit (stdin: [`firewall_unit`]) and loading its ruleset when the
/// unit changed or the table is missing.
pub fn firewall_script() -> String {
    unit_script(
        FIREWALL_UNIT,
        "sed -n 's/^StandardInputText=//p' \"$dest\" | nft -f -",
        "&& nft list table inet fleetnix >/dev/null 2>&1",
    )
}

/// The program of a node of `os: linux` or `os: auto`: the probe, then (for `auto` on a
/// NixOS node) the NixOS steps or the plain Linux steps.
pub fn program(
    plan: &NodeSpec,
    opts: &DeployOptions,
    target: SshTarget,
    authkeys: &dyn AuthKeySource,
) -> Program {
    let mut b = Builder::default();
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
        let nixos = super::nixos::ops(&mut b, plan, opts, &target);
        let otherwise = ops_after_probe(&mut b, plan, opts, authkeys);
        ops.push(b.op(OpKind::IfNixos { nixos, otherwise }));
    } else {
        ops.extend(ops_after_probe(&mut b, plan, opts, authkeys));
    }
    b.finish(target, ops)
}

/// The plain Linux steps after the probe.
fn ops_after_probe(
    b: &mut Builder,
    plan: &NodeSpec,
    opts: &DeployOptions,
    authkeys: &dyn AuthKeySource,
) -> Vec<Op> {
    let pw =
        crate::secrets::SecretId::new(plan.name.clone(), crate::secrets::SecretKind::NatsPassword)
            .file();
    let steps = [
        Remote {
            when: When::TailscaleMissing,
            limit: Limit::Long,
            effect: Effect::Changed("installed tailscale"),
            ..Remote::new(
                Step::Install,
                "if tailscale is missing: run the install script",
                Script::Fixed(install_script(&opts.install_url)),
            )
        },
        Remote {
            input: Input::AuthKey {
                source: authkeys.describe(&plan.name),
            },
            when: When::NotUpAsPlanned,
            limit: Limit::Long,
            effect: Effect::Changed("tailscale up"),
            ..Remote::new(
                Step::TailscaleUp,
                "if not up as this node: tailscale up, key in a 0600 file written from stdin, deleted afterwards",
                Script::Fixed(up_script(plan)),
            )
        },
        Remote {
            input: Input::Unit(agent_unit(plan)),
            effect: Effect::ChangedUnlessSaid("agent unit"),
            ..Remote::new(
                Step::Agent,
                format!("install {AGENT_UNIT} if it differs, enable, restart"),
                Script::Fixed(agent_script()),
            )
        },
        Remote {
            input: Input::NatsPassword,
            effect: Effect::ChangedUnlessSaid("agent NATS password"),
            ..Remote::new(
                Step::Agent,
                format!(
                    "install the agent's NATS password as {} if {pw} exists",
                    crate::outputs::agent::NATS_PASSWORD_PATH
                ),
                Script::Fixed(nats_password_script()),
            )
        },
        Remote {
            input: Input::Unit(Ok(firewall_unit(plan))),
            effect: Effect::ChangedUnlessSaid("firewall"),
            ..Remote::new(
                Step::Firewall,
                format!("install {FIREWALL_UNIT} if it differs, load its rules"),
                Script::Fixed(firewall_script()),
            )
        },
    ];
    steps.into_iter().map(|r| b.op(OpKind::Remote(r))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_ids() {
        let t = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(os_release_value(t, "ID").as_deref(), Some("ubuntu"));
        assert_eq!(
            os_release_value("ID=\"nixos\"", "ID").as_deref(),
            Some("nixos")
        );
        assert_eq!(os_release_value("", "ID"), None);
    }

    #[test]
    fn scripts_are_valid_sh() {
        for s in [
            probe_script(),
            install_script("file:///x y"),
            agent_script(),
            nats_password_script(),
            firewall_script(),
        ] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .expect("sh");
            assert!(st.success(), "{s}");
        }
    }
}
