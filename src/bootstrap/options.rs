//! What a bootstrap needs: the VM's login and address, the fleet, deploy's options, the key
//! sources, and how long to wait.

use super::authkey::KeySources;
use super::hostkey::{Fingerprint, ScannedKey};
use crate::deploy::DeployOptions;
use crate::model::{Fleet, NodeName};
use crate::tailscale::api::Client;
use crate::tailscale::Tailscale;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `USER@HOST` of `--ssh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDest {
    /// The login.
    pub user: String,
    /// An IP address (IPv6 optionally in brackets) or a DNS name.
    pub host: String,
}

/// A bad `--ssh USER@HOST`, or a host name that does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum SshDestError {
    /// No `@`.
    #[error("--ssh takes USER@HOST, e.g. root@203.0.113.7")]
    NoAt,
    /// The login is not a user name.
    #[error("{0:?} is not a login name (lowercase letters, digits, `_`, `-`, `.`)")]
    BadUser(String),
    /// The host is neither a host name nor an IP address.
    #[error("{0:?} is not a host name or IP address (a port is not accepted: use port 22)")]
    BadHost(String),
    /// The name lookup failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The name has no address.
    #[error("{0} has no address")]
    NoAddress(String),
}

impl std::str::FromStr for SshDest {
    type Err = SshDestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, host) = s.rsplit_once('@').ok_or(SshDestError::NoAt)?;
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
            && !user.starts_with(['-', '.']);
        if !user_ok {
            return Err(SshDestError::BadUser(user.to_string()));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host_ok = !bare.is_empty()
            && bare.len() <= 253
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            && !bare.starts_with('-')
            && (!bare.contains(':') || bare.parse::<std::net::Ipv6Addr>().is_ok());
        if !host_ok {
            return Err(SshDestError::BadHost(host.to_string()));
        }
        Ok(SshDest {
            user: user.to_string(),
            host: bare.to_string(),
        })
    }
}

impl SshDest {
    /// The address to connect to: the host if it is an IP, else its first DNS answer (resolved
    /// once; every later connection uses that address, so the pinned key stays tied to it).
    pub async fn resolve(&self) -> Result<IpAddr, SshDestError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), 22))
            .await
            .map_err(|source| SshDestError::Resolve {
                host: self.host.clone(),
                source,
            })?;
        addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| SshDestError::NoAddress(self.host.clone()))
    }
}

/// Asks the operator whether to trust a host key no fingerprint was given for.
pub trait HostKeyPrompt: Send + Sync {
    /// `keys` are what the VM offers (recordable ones first); the index of the accepted key, or
    /// `None` to abort.
    fn accept(&self, node: &str, address: &IpAddr, keys: &[ScannedKey]) -> Option<usize>;
}

/// Everything a bootstrap needs. Build with [`BootstrapOptions::new`], then adjust.
pub struct BootstrapOptions {
    /// Directory of nodes.yml, fleet.yml, services.yml.
    pub fleet_dir: PathBuf,
    /// The label of generated files' headers (as `fleetnix render` writes it).
    pub sources_label: String,
    /// Deploy's options (root, SSH, `nixos-rebuild`, install URL, guard); their state directory
    /// is replaced by `<root>/.fleetnix/bootstrap` and the tailnet is not asked for host keys.
    pub deploy: DeployOptions,
    /// Login on the VM's public address.
    pub ssh_user: String,
    /// The VM's public address.
    pub address: IpAddr,
    /// The expected host key fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// `ssh-keyscan`.
    pub keyscan: PathBuf,
    /// This machine's `tailscale` CLI.
    pub tailscale: Tailscale,
    /// Operator-supplied auth key sources.
    pub keys: KeySources,
    /// The Tailscale API (mints auth keys, sets the device's address), if a token was given.
    pub api: Option<Client>,
    /// Expiry of a minted auth key.
    pub mint_expiry: Duration,
    /// How long to wait for the node in `tailscale status` (and for an address change).
    pub wait_timeout: Duration,
    /// Pause between two `tailscale status` calls.
    pub poll_interval: Duration,
}

/// Environment variable overriding where `ssh-keyscan` is.
pub const KEYSCAN_ENV: &str = "FLEETNIX_SSH_KEYSCAN";

/// Default `--wait-timeout`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

impl BootstrapOptions {
    /// Defaults: deploy's options for `root`, `ssh-keyscan` from [`KEYSCAN_ENV`] or PATH, a 300 s
    /// wait polled every second, no key sources, no API.
    pub fn new(
        root: &Path,
        fleet_dir: &Path,
        fleet: &Fleet,
        ssh_user: &str,
        address: IpAddr,
        tailscale: Tailscale,
    ) -> Self {
        let deploy = DeployOptions::new(root, &fleet.settings);
        BootstrapOptions {
            fleet_dir: fleet_dir.to_path_buf(),
            sources_label: String::new(),
            deploy,
            ssh_user: ssh_user.to_string(),
            address,
            fingerprint: None,
            keyscan: crate::exec::process::locate(KEYSCAN_ENV, "ssh-keyscan")
                .unwrap_or_else(|| PathBuf::from("ssh-keyscan")),
            tailscale,
            keys: KeySources::default(),
            api: None,
            mint_expiry: Duration::from_secs(crate::tailscale::authkey::AUTHKEY_EXPIRY_SECONDS),
            wait_timeout: DEFAULT_WAIT,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// `<root>/.fleetnix/bootstrap`: the public-address pin, logs.
    pub fn state_dir(&self) -> PathBuf {
        self.deploy.root.join(".fleetnix").join("bootstrap")
    }

    /// The known_hosts file pinning the VM's key for its public address.
    pub fn public_pin(&self, node: &NodeName) -> PathBuf {
        self.state_dir().join("known_hosts").join(node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_destinations() {
        let d: SshDest = "root@203.0.113.7".parse().unwrap();
        assert_eq!((d.user.as_str(), d.host.as_str()), ("root", "203.0.113.7"));
        let d: SshDest = "admin@[2001:db8::1]".parse().unwrap();
        assert_eq!(d.host, "2001:db8::1");
        assert!("vm.example.com".parse::<SshDest>().is_err());
        assert!("-oProxyCommand=x@h".parse::<SshDest>().is_err());
        assert!("root@-oProxyCommand=x".parse::<SshDest>().is_err());
        assert!("root@h:2222".parse::<SshDest>().is_err());
        assert!("root@h;id".parse::<SshDest>().is_err());
        assert!("ro ot@h".parse::<SshDest>().is_err());
    }
}
