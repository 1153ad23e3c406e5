//! The agent's systemd unit for hosts that are not NixOS (deploy's fallback installer and
//! cloud-init): the same command line ([`crate::spec::AgentArgs::argv`]), ordering and
//! hardening as `nix/modules/omp-agent.nix` produces on NixOS.

use crate::spec::NodeSpec;

/// Where the agent's unit is installed.
/// The agent's unit name.
pub const AGENT_UNIT: &str = "omp-agent.service";
/// Where the agent's unit is installed on a plain Linux node.
pub const UNIT_PATH: &str = "/etc/systemd/system/omp-agent.service";
/// The node's NATS password on non-NixOS hosts; the unit hands it to the agent as a credential.
pub const NATS_PASSWORD_PATH: &str = "/etc/fleetnix/nats-password";
/// Default agent binary on non-NixOS hosts.
pub const DEFAULT_AGENT_BIN: &str = "/usr/local/bin/omp";

/// A value that cannot be written into a unit file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Control characters (a newline would start a new directive).
    #[error("{what} {value:?} cannot go into a systemd unit (control characters)")]
    Unsafe {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The agent binary is not an absolute path.
    #[error("agent binary {0:?}: expected an absolute path")]
    RelativeBinary(String),
}

/// Quotes one word of an `ExecStart=` line: double quotes, `\` and `"` escaped, `%` doubled
/// (specifiers) and `$` doubled (variable expansion). Control characters are refused.
pub fn systemd_quote(what: &'static str, word: &str) -> Result<String, UnitError> {
    if word.chars().any(char::is_control) {
        return Err(UnitError::Unsafe {
            what,
            value: word.to_string(),
        });
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// The unit file. `agent_bin` is the absolute path of `omp`; `origin` names what installs it
/// (for the header). The agent waits for its NATS password ([`NATS_PASSWORD_PATH`]).
pub fn unit(plan: &NodeSpec, agent_bin: &str, origin: &str) -> Result<String, UnitError> {
    if !agent_bin.starts_with('/') {
        return Err(UnitError::RelativeBinary(agent_bin.to_string()));
    }
    let mut words = vec![systemd_quote("agent binary", agent_bin)?];
    for arg in plan.agent.argv() {
        words.push(systemd_quote("agent argument", &arg)?);
    }
    let origin: String = origin.chars().filter(|c| !c.is_control()).collect();
    Ok(format!(
        "# Installed by {origin} for {node}. Do not edit: change the manifest and deploy again.\n\
         [Unit]\n\
         Description=OMP agent ({node})\n\
         Wants=network-online.target tailscaled.service\n\
         After=network-online.target tailscaled.service\n\
         # The agent authenticates to NATS with this node's password; without it, it is not started.\n\
         ConditionPathExists={pw}\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         LoadCredential=nats-creds:{pw}\n\
         Environment=NATS_CREDS_FILE=%d/nats-creds\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         DynamicUser=yes\n\
         StateDirectory=omp-agent\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         LockPersonality=yes\n\
         SystemCallArchitectures=native\n\
         CapabilityBoundingSet=\n\
         UMask=0077\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        node = plan.name,
        pw = NATS_PASSWORD_PATH,
        exec = words.join(" "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_specifiers_and_refuses_newlines() {
        assert_eq!(
            systemd_quote("x", "a%b$c\"d\\").unwrap(),
            r#""a%%b$$c\"d\\""#
        );
        assert!(systemd_quote("x", "a\nExecStartPre=/bin/evil").is_err());
        assert_eq!(systemd_quote("x", "a b").unwrap(), "\"a b\"");
    }
}
