//! The local Tailscale CLI: `tailscale status --json`, run as a child process with a
//! timeout and parsed into typed values.
//!
//! Field names and shapes follow `ipnstate.Status` (Go names are the JSON keys). The JSON
//! is documented upstream as "subject to change", so only the fields fleetnix uses are
//! typed, and every one of them tolerates being absent or `null`.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Env var naming the `tailscale` binary (tests point it at a fake).
pub const TAILSCALE_ENV: &str = "FLEETNIX_TAILSCALE";

/// Default bound on one `tailscale status --json` call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the tailnet state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TailscaleError {
    /// No binary on PATH and no override.
    #[error("cannot find the `tailscale` binary on PATH (set {TAILSCALE_ENV} to its path): {0}")]
    NotFound(which::Error),
    /// The process could not be started.
    #[error("cannot run {}: {source}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It did not finish in time (it was killed).
    #[error("`{} status --json` did not finish within {}s", bin.display(), timeout.as_secs_f64())]
    Timeout {
        /// The binary.
        bin: PathBuf,
        /// The bound.
        timeout: Duration,
    },
    /// It exited non-zero (e.g. tailscaled not running).
    #[error("`{} status --json` exited with {code}: {stderr}", bin.display())]
    Failed {
        /// The binary.
        bin: PathBuf,
        /// Exit status.
        code: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// The output is not the documented JSON.
    #[error("cannot parse `tailscale status --json` output: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Null, absent, or a value: all become the value's default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `CurrentTailnet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CurrentTailnet {
    /// Tailnet name (e.g. `example.com`).
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// MagicDNS suffix, without dots at either end.
    #[serde(rename = "MagicDNSSuffix", default, deserialize_with = "null_default")]
    pub magic_dns_suffix: String,
}

/// One device as `tailscale status --json` shows it (`Self` or a peer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Stable node ID (`n…CNTRL`).
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    /// OS hostname, which `tailscale up --hostname` sets to the node name.
    #[serde(default, deserialize_with = "null_default")]
    pub host_name: String,
    /// MagicDNS name, with a trailing dot.
    #[serde(rename = "DNSName", default, deserialize_with = "null_default")]
    pub dns_name: String,
    /// `linux`, …
    #[serde(rename = "OS", default, deserialize_with = "null_default")]
    pub os: String,
    /// Tailnet addresses, IPv4 first.
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_default")]
    pub tailscale_ips: Vec<IpAddr>,
    /// ACL tags (`tag:…`); absent when untagged.
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// `ip:port` of the direct path, or empty.
    #[serde(default, deserialize_with = "null_default")]
    pub cur_addr: String,
    /// Home DERP region code (set even when the path is direct).
    #[serde(default, deserialize_with = "null_default")]
    pub relay: String,
    /// `ip:port:vni:N` when the path goes through a peer relay.
    #[serde(default, deserialize_with = "null_default")]
    pub peer_relay: String,
    /// Bytes received.
    #[serde(default, deserialize_with = "null_default")]
    pub rx_bytes: u64,
    /// Bytes sent.
    #[serde(default, deserialize_with = "null_default")]
    pub tx_bytes: u64,
    /// RFC 3339; the zero time while online.
    #[serde(default, deserialize_with = "null_default")]
    pub last_seen: String,
    /// RFC 3339 time of the last WireGuard handshake, zero if none.
    #[serde(default, deserialize_with = "null_default")]
    pub last_handshake: String,
    /// Connected to the control server.
    #[serde(default, deserialize_with = "null_default")]
    pub online: bool,
    /// A packet went to it within the last 45 s.
    #[serde(default, deserialize_with = "null_default")]
    pub active: bool,
    /// The device's SSH host keys (`ssh-ed25519 AAAA…`); note the lower-camel JSON key.
    #[serde(rename = "sshHostKeys", default, deserialize_with = "null_default")]
    pub ssh_host_keys: Vec<String>,
}

/// How traffic reaches a device, as the CLI's table would say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Connection {
    /// This machine.
    #[serde(rename = "self")]
    Local,
    /// Not connected to the control server.
    Offline,
    /// Online, but no packet in the last 45 s: the path is unknown
    /// (`tailscale status` shows direct/relay only for active peers).
    Idle,
    /// Active over a direct UDP path.
    Direct {
        /// `ip:port` of the path.
        endpoint: String,
    },
    /// Active through a DERP relay.
    Relay {
        /// The DERP region code (e.g. `fra`).
        region: String,
    },
    /// Active through a peer relay.
    PeerRelay {
        /// `ip:port:vni:N`.
        endpoint: String,
    },
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Local => f.write_str("self"),
            Connection::Offline => f.write_str("offline"),
            Connection::Idle => f.write_str("idle"),
            Connection::Direct { endpoint } => write!(f, "direct {endpoint}"),
            Connection::Relay { region } => write!(f, "relay \"{region}\""),
            Connection::PeerRelay { endpoint } => write!(f, "peer-relay {endpoint}"),
        }
    }
}

impl PeerStatus {
    /// The first label of the MagicDNS name (`worker-01` for `worker-01.tail….ts.net.`).
    pub fn dns_label(&self) -> &str {
        self.dns_name.split('.').next().unwrap_or("")
    }

    /// The path to this peer, following the CLI's rules: offline first, then
    /// direct/relay only while active.
    pub fn connection(&self) -> Connection {
        if !self.online {
            Connection::Offline
        } else if !self.active {
            Connection::Idle
        } else if !self.peer_relay.is_empty() {
            Connection::PeerRelay {
                endpoint: self.peer_relay.clone(),
            }
        } else if !self.cur_addr.is_empty() {
            Connection::Direct {
                endpoint: self.cur_addr.clone(),
            }
        } else if !self.relay.is_empty() {
            Connection::Relay {
                region: self.relay.clone(),
            }
        } else {
            Connection::Idle
        }
    }

    /// When it was last seen, if offline and known (the zero time means "online" or "never").
    pub fn last_seen_time(&self) -> Option<SystemTime> {
        parse_time(&self.last_seen)
    }
}

/// Parses an RFC 3339 timestamp; the Go zero time and garbage give `None`.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    if s.is_empty() || s.starts_with("0001-01-01") {
        return None;
    }
    humantime::parse_rfc3339_weak(s).ok()
}

/// `ipnstate.Status`: the whole `tailscale status --json` output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TailscaleStatus {
    /// Client version.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// `NoState`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`, `Starting` or `Running`.
    #[serde(default, deserialize_with = "null_default")]
    pub backend_state: String,
    /// This machine's tailnet addresses.
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_default")]
    pub tailscale_ips: Vec<IpAddr>,
    /// This machine.
    #[serde(rename = "Self", default, deserialize_with = "null_default")]
    pub self_: PeerStatus,
    /// Health warnings (`[]` when healthy).
    #[serde(default, deserialize_with = "null_default")]
    pub health: Vec<String>,
    /// The tailnet, if logged in.
    #[serde(default)]
    pub current_tailnet: Option<CurrentTailnet>,
    /// Peers by `nodekey:…` (sorted by key, so iteration is deterministic).
    #[serde(default, deserialize_with = "null_default")]
    pub peer: BTreeMap<String, PeerStatus>,
}

/// A device of the tailnet with whether it is this machine.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// Its status.
    pub peer: &'a PeerStatus,
    /// Is it `Self`?
    pub is_self: bool,
}

impl<'a> Device<'a> {
    /// Its connection; `Self` is [`Connection::Local`].
    pub fn connection(&self) -> Connection {
        if self.is_self {
            Connection::Local
        } else {
            self.peer.connection()
        }
    }
}

impl TailscaleStatus {
    /// Parses `tailscale status --json` output.
    pub fn parse(json: &str) -> Result<Self, TailscaleError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Is the backend up (`Running`)?
    pub fn is_running(&self) -> bool {
        self.backend_state == "Running"
    }

    /// Every device: `Self` first (when logged in), then peers sorted by host name, then DNS name.
    pub fn devices(&self) -> Vec<Device<'_>> {
        let mut out = Vec::with_capacity(self.peer.len() + 1);
        if !self.self_.host_name.is_empty() || !self.self_.tailscale_ips.is_empty() {
            out.push(Device {
                peer: &self.self_,
                is_self: true,
            });
        }
        let mut peers: Vec<&PeerStatus> = self.peer.values().collect();
        peers.sort_by(|a, b| {
            (a.host_name.as_str(), a.dns_name.as_str())
                .cmp(&(b.host_name.as_str(), b.dns_name.as_str()))
        });
        out.extend(peers.into_iter().map(|peer| Device {
            peer,
            is_self: false,
        }));
        out
    }

    /// The device a fleet node named `name` is: the one whose host name is `name`, else
    /// the one whose MagicDNS label is `name` (the control server may rename duplicates).
    pub fn find(&self, name: &str) -> Option<Device<'_>> {
        let devices = self.devices();
        devices
            .iter()
            .find(|d| d.peer.host_name == name)
            .or_else(|| devices.iter().find(|d| d.peer.dns_label() == name))
            .copied()
    }

    /// The device the control server named `name`: the first label of its MagicDNS name, which
    /// the control server assigns (and de-duplicates: a second device asking for `worker-03`
    /// becomes `worker-03-1`), not its self-reported `HostName`, which any device may set.
    pub fn find_assigned(&self, name: &str) -> Option<Device<'_>> {
        self.devices()
            .into_iter()
            .find(|d| !name.is_empty() && d.peer.dns_label() == name)
    }

    /// The device whose stable node ID (`ID`, `n…CNTRL`) is `id`.
    pub fn find_id(&self, id: &str) -> Option<Device<'_>> {
        self.devices()
            .into_iter()
            .find(|d| !id.is_empty() && d.peer.id == id)
    }

    /// SSH host keys the tailnet publishes for the device `name` (for `known_hosts`).
    pub fn ssh_host_keys(&self, name: &str) -> Vec<String> {
        self.find(name)
            .map(|d| d.peer.ssh_host_keys.clone())
            .unwrap_or_default()
    }
}

/// The `tailscale` CLI.
#[derive(Debug, Clone)]
pub struct Tailscale {
    /// The binary.
    pub bin: PathBuf,
    /// Bound on one call; the child is killed past it.
    pub timeout: Duration,
}

impl Tailscale {
    /// `$FLEETNIX_TAILSCALE` if set, else `tailscale` from PATH; [`DEFAULT_TIMEOUT`].
    pub fn locate() -> Result<Self, TailscaleError> {
        let bin = match std::env::var_os(TAILSCALE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => which::which("tailscale").map_err(TailscaleError::NotFound)?,
        };
        Ok(Tailscale {
            bin,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Runs `tailscale status --json` and parses it.
    pub async fn status(&self) -> Result<TailscaleStatus, TailscaleError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["status", "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // The CLI needs no secret; it gets none.
        for var in crate::secret::child_env_removals() {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().map_err(|source| TailscaleError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| TailscaleError::Timeout {
                bin: self.bin.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| TailscaleError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(TailscaleError::Failed {
                bin: self.bin.clone(),
                code: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        TailscaleStatus::parse(&String::from_utf8_lossy(&out.stdout))
    }
}
