//! A fresh VM's SSH host key: fetched with `ssh-keyscan` over its public address (which sends
//! nothing but the key exchange), and trusted only if its SHA256 fingerprint — as
//! `ssh-keygen -l` prints it — is the one the operator got out of band (the provider's console,
//! or the VM's boot log).

use crate::deploy::hostkeys::normalize_key;
use crate::exec::process::{run_process, LocalCommand, NodeLog};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// A host key fingerprint, `SHA256:<base64 without padding>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a public key line `type base64 [comment]`; `None` if it is not one.
    pub fn of_key(line: &str) -> Option<Self> {
        let key = normalize_key(line)?;
        let b64 = key.split_whitespace().nth(1)?;
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let digest = Sha256::digest(&blob);
        Some(Fingerprint(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )))
    }

    /// The text, `SHA256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bad fingerprint, or a host that offered no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    /// Not `SHA256:…`.
    #[error("a host key fingerprint looks like SHA256:… (from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`); MD5 fingerprints are not accepted")]
    NotSha256,
    /// `SHA256:` and not a SHA-256 digest.
    #[error("the part after SHA256: must be 43 base64 characters (a SHA-256 digest)")]
    BadDigest,
    /// `ssh-keyscan` could not be run.
    #[error("{0}")]
    Keyscan(String),
    /// The host offered no key.
    #[error(
        "{address} offered no SSH host key (ssh-keyscan: {last}): is sshd listening on port 22?"
    )]
    NoKeys {
        /// The address scanned.
        address: IpAddr,
        /// ssh-keyscan's last line of output.
        last: String,
    },
}

impl std::str::FromStr for Fingerprint {
    type Err = HostKeyError;

    /// Accepts `SHA256:` followed by 43 base64 characters (as `ssh-keygen -l` prints it; a
    /// trailing `=` is tolerated).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s
            .strip_prefix("SHA256:")
            .or_else(|| s.strip_prefix("sha256:"))
            .ok_or(HostKeyError::NotSha256)?
            .trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(body);
        match decoded {
            Ok(d) if d.len() == 32 => Ok(Fingerprint(format!("SHA256:{body}"))),
            _ => Err(HostKeyError::BadDigest),
        }
    }
}

/// A key the host offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedKey {
    /// `type base64`.
    pub key: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
}

impl ScannedKey {
    /// The key type (`ssh-ed25519`, …).
    pub fn kind(&self) -> &str {
        self.key.split_whitespace().next().unwrap_or("")
    }

    /// Can secrets be encrypted to it (age takes ssh-ed25519 and ssh-rsa)?
    pub fn recordable(&self) -> bool {
        matches!(self.kind(), "ssh-ed25519" | "ssh-rsa")
    }
}

/// The keys in `ssh-keyscan` output (`host type base64` lines; `#` lines are comments), ed25519
/// first, then by type; duplicates dropped.
pub fn parse_keyscan(out: &str) -> Vec<ScannedKey> {
    let rank = |k: &ScannedKey| match k.kind() {
        "ssh-ed25519" => 0,
        "ssh-rsa" => 1,
        _ => 2,
    };
    let mut keys: Vec<ScannedKey> = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (_, rest) = l.trim().split_once(char::is_whitespace)?;
            let key = normalize_key(rest)?;
            let fingerprint = Fingerprint::of_key(&key)?;
            Some(ScannedKey { key, fingerprint })
        })
        .collect();
    keys.sort_by(|a, b| (rank(a), &a.key).cmp(&(rank(b), &b.key)));
    keys.dedup();
    keys
}

/// `ssh-keyscan -T <secs> -t ed25519,rsa,ecdsa <address>`.
pub fn keyscan_command(program: &Path, address: &IpAddr, timeout_secs: u32) -> LocalCommand {
    LocalCommand {
        program: program.to_path_buf(),
        args: vec![
            "-T".into(),
            timeout_secs.max(1).to_string(),
            "-t".into(),
            "ed25519,rsa,ecdsa".into(),
            address.to_string(),
        ],
        env: Vec::new(),
    }
}

/// Fetches the host keys `address` offers. An empty answer is an error.
pub async fn scan(
    program: &Path,
    address: &IpAddr,
    timeout_secs: u32,
    log: &NodeLog,
) -> Result<Vec<ScannedKey>, HostKeyError> {
    let cmd = keyscan_command(program, address, timeout_secs);
    let limit = Duration::from_secs(u64::from(timeout_secs.max(1)) + 10);
    let out = run_process(&cmd, None, limit, log)
        .await
        .map_err(|e| HostKeyError::Keyscan(e.to_string()))?;
    let keys = parse_keyscan(&out.stdout);
    if keys.is_empty() {
        return Err(HostKeyError::NoKeys {
            address: *address,
            last: out.last_line(),
        });
    }
    Ok(keys)
}

/// One line per key: `ssh-ed25519 SHA256:…`.
pub fn describe(keys: &[ScannedKey]) -> String {
    keys.iter()
        .map(|k| format!("{} {}", k.kind(), k.fingerprint))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_syntax() {
        let ok = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        assert_eq!(ok.parse::<Fingerprint>().unwrap().as_str(), ok);
        assert!("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
            .parse::<Fingerprint>()
            .is_err());
        assert!("SHA256:short".parse::<Fingerprint>().is_err());
        assert!("MD5:aa:bb".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn keyscan_output_is_parsed_sorted_and_fingerprinted() {
        let out =
            "# 1.2.3.4:22 SSH-2.0-OpenSSH\n1.2.3.4 ssh-rsa AAAA\n1.2.3.4 ssh-ed25519 AAAB\nbogus\n";
        let keys = parse_keyscan(out);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kind(), "ssh-ed25519");
        assert!(keys[0].recordable());
        assert_eq!(
            keys[1].fingerprint,
            Fingerprint::of_key("ssh-rsa AAAA").unwrap()
        );
    }
}
