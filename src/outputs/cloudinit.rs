//! `#cloud-config` user-data that makes a fresh cloud VM a fleet node on first boot (the steps
//! are listed in [`crate::bootstrap::cloudinit`]).
//!
//! The YAML is produced by serde serialisation, so every value is escaped by the YAML emitter;
//! commands are argv lists, which cloud-init quotes itself — no shell text is assembled here.

use super::agent::{DEFAULT_AGENT_BIN, UNIT_PATH as AGENT_UNIT_PATH};
use crate::spec::NodeSpec;
use serde::Serialize;
use std::fmt;

/// Tailscale's install script.
pub const DEFAULT_INSTALL_URL: &str = "https://tailscale.com/install.sh";
/// Where the auth key is written on the VM (tmpfs; deleted after `tailscale up`).
pub const AUTHKEY_PATH: &str = "/run/fleetnix/tailscale-authkey";
/// Where the install script is downloaded to.
pub const INSTALLER_PATH: &str = "/run/fleetnix/install-tailscale.sh";

/// Errors of rendering user-data. None of them contains the auth key.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// The auth key is not a plausible Tailscale key.
    #[error("the Tailscale auth key is not usable: {0}")]
    BadAuthKey(&'static str),
    /// The install script URL is not an https URL.
    #[error("install URL {0:?}: expected an https:// URL without spaces or quotes")]
    BadInstallUrl(String),
    /// The agent's unit cannot be written.
    #[error(transparent)]
    Unit(#[from] super::agent::UnitError),
    /// The YAML emitter failed (a bug).
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// A Tailscale auth key, checked; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(crate::secret::Secret);

impl AuthKey {
    /// Checks a key as read from the environment, a file or stdin (surrounding whitespace is
    /// dropped): `tskey-` followed by letters, digits and `-_?=&.:/` (OAuth client secrets carry
    /// `?ephemeral=…&preauthorized=…`), one line, at most 512 characters.
    pub fn parse(raw: &str) -> Result<Self, UserDataError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(UserDataError::BadAuthKey("it is empty"));
        }
        if key.len() > 512 {
            return Err(UserDataError::BadAuthKey(
                "it is longer than 512 characters",
            ));
        }
        if !key.starts_with("tskey-") {
            return Err(UserDataError::BadAuthKey(
                "it does not start with \"tskey-\" (expected an auth key or OAuth client secret)",
            ));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_?=&.:/".contains(c))
        {
            return Err(UserDataError::BadAuthKey(
                "it contains characters other than letters, digits and -_?=&.:/",
            ));
        }
        Ok(AuthKey(crate::secret::Secret::new(key)))
    }

    /// The key itself: only for the file content.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// Options of the user-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Tailscale install script URL (https only).
    pub install_url: String,
    /// Also install and enable the agent's systemd unit.
    pub with_agent: bool,
    /// Path of the agent binary on the VM.
    pub agent_bin: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            install_url: DEFAULT_INSTALL_URL.to_string(),
            with_agent: false,
            agent_bin: DEFAULT_AGENT_BIN.to_string(),
        }
    }
}

#[derive(Serialize)]
struct CloudConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    users: Vec<User>,
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum User {
    /// The image's default user.
    Default(&'static str),
    Named {
        name: String,
        sudo: &'static str,
        shell: &'static str,
        lock_passwd: bool,
    },
}

#[derive(Serialize)]
struct WriteFile {
    path: &'static str,
    content: String,
    owner: &'static str,
    permissions: &'static str,
}

fn check_url(url: &str) -> Result<(), UserDataError> {
    let ok = url.starts_with("https://")
        && url.len() > "https://".len()
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'`\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UserDataError::BadInstallUrl(url.to_string()))
    }
}

/// The `tailscale up` argv: the auth key by file, then the plan's flags.
pub fn up_argv(plan: &NodeSpec) -> Vec<String> {
    let mut argv = vec![
        "tailscale".to_string(),
        "up".to_string(),
        format!("--auth-key=file:{AUTHKEY_PATH}"),
    ];
    argv.extend(plan.up_flags.iter().cloned());
    argv
}

/// The user-data for `plan`'s node. The auth key is its only secret and appears exactly once.
pub fn user_data(plan: &NodeSpec, key: &AuthKey, opts: &Options) -> Result<String, UserDataError> {
    check_url(&opts.install_url)?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let mut write_files = vec![WriteFile {
        path: AUTHKEY_PATH,
        content: format!("{}\n", key.expose()),
        owner: "root:root",
        permissions: "0600",
    }];
    let mut runcmd = vec![
        s(&[
            "curl",
            "-fsSL",
            "--retry",
            "5",
            "-o",
            INSTALLER_PATH,
            &opts.install_url,
        ]),
        s(&["sh", INSTALLER_PATH]),
        s(&["systemctl", "enable", "--now", "tailscaled"]),
        up_argv(plan),
        s(&["rm", "-f", AUTHKEY_PATH, INSTALLER_PATH]),
    ];
    if opts.with_agent {
        write_files.push(WriteFile {
            path: AGENT_UNIT_PATH,
            content: super::agent::unit(plan, &opts.agent_bin, "fleetnix cloud-init")?,
            owner: "root:root",
            permissions: "0644",
        });
        runcmd.push(s(&["systemctl", "daemon-reload"]));
        runcmd.push(s(&["systemctl", "enable", "--now", "omp-agent.service"]));
    }
    // Tailscale SSH logs in as the node's ssh_user, which must exist.
    let users = if plan.access.ssh_user == "root" {
        Vec::new()
    } else {
        vec![
            User::Default("default"),
            User::Named {
                name: plan.access.ssh_user.to_string(),
                sudo: "ALL=(ALL) NOPASSWD:ALL",
                shell: "/bin/bash",
                lock_passwd: true,
            },
        ]
    };
    let body = serde_yaml::to_string(&CloudConfig {
        users,
        write_files,
        runcmd,
    })?;
    Ok(format!(
        "#cloud-config\n\
         # Generated by fleetnix for node {node} (tags {tags}).\n\
         # SECRET: contains the node's Tailscale auth key (write_files, {AUTHKEY_PATH}).\n\
         {body}",
        node = plan.name,
        tags = plan.tags.join(","),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_urls_are_https() {
        assert!(check_url(DEFAULT_INSTALL_URL).is_ok());
        assert!(check_url("http://example.com/install.sh").is_err());
        assert!(check_url("https://x/ y").is_err());
        assert!(check_url("https://").is_err());
    }

    #[test]
    fn auth_keys_are_checked_without_echoing_them() {
        let good = format!("tskey-auth-{}", "kFAKE1CNTRL-FAKEFAKEFAKE");
        assert_eq!(
            AuthKey::parse(&format!("  {good}\n")).unwrap().expose(),
            good
        );
        let oauth = format!("tskey-client-{}?ephemeral=false&preauthorized=true", "FAKE");
        assert!(AuthKey::parse(&oauth).is_ok());
        for bad in [
            String::new(),
            "notakey".to_string(),
            format!("tskey-auth-{}\ninjected: yes", "FAKE"),
            format!("tskey-auth-{}'", "FAKE"),
            format!("tskey-{}", "x".repeat(600)),
        ] {
            let e = AuthKey::parse(&bad).unwrap_err().to_string();
            assert!(bad.len() < 8 || !e.contains(&bad), "{e}");
        }
        assert!(!format!("{:?}", AuthKey::parse(&good).unwrap()).contains(&good));
    }
}
