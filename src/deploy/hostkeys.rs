//! Pinned SSH host keys: a per-node known_hosts file built from the manifest's `host_key`
//! and the keys `tailscale status --json` reports for the peer (`sshHostKeys`). Never
//! trust-on-first-use: a node with no known key is not contacted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Key types accepted in a known_hosts file.
const KEY_TYPES: [&str; 6] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
];

/// `type base64` of a public key line (comment dropped), if it is one.
pub fn normalize_key(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let (t, b) = (words.next()?, words.next()?);
    let b64_ok = !b.is_empty()
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
    (KEY_TYPES.contains(&t) && b64_ok).then(|| format!("{t} {b}"))
}

/// The known_hosts text pinning `keys` for `address`: one sorted line per distinct key.
pub fn known_hosts(address: &IpAddr, keys: &[String]) -> String {
    let set: BTreeSet<String> = keys.iter().filter_map(|k| normalize_key(k)).collect();
    set.iter().map(|k| format!("{address} {k}\n")).collect()
}

/// The SSH host keys `tailscale status --json` reports, by Tailscale address. Malformed keys are dropped.
pub fn keys_from_status(
    json: &str,
) -> Result<BTreeMap<IpAddr, Vec<String>>, crate::tailscale::TailscaleError> {
    let status = crate::tailscale::TailscaleStatus::parse(json)?;
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for device in status.devices() {
        let keys: Vec<String> = device
            .peer
            .ssh_host_keys
            .iter()
            .filter_map(|k| normalize_key(k))
            .collect();
        if keys.is_empty() {
            continue;
        }
        for ip in &device.peer.tailscale_ips {
            out.entry(*ip).or_default().extend(keys.iter().cloned());
        }
    }
    Ok(out)
}

/// Does `s` hold whitespace? ssh splits a `UserKnownHostsFile` value on it, and Nix 2.8 splits
/// `NIX_SSHOPTS` on it with no quote removal, so no SSH option value may hold any.
pub fn has_whitespace(s: &str) -> bool {
    s.chars().any(char::is_whitespace)
}

/// Where the per-node known_hosts files go when the repository's state directory
/// (`<root>/.fleetnix`) holds whitespace: `$XDG_STATE_HOME/fleetnix/known_hosts` (an absolute
/// `XDG_STATE_HOME`), else `~/.local/state/fleetnix/known_hosts`. `Err`: why neither can be
/// used (no home, or whitespace there too).
pub fn state_known_hosts_dir() -> Result<std::path::PathBuf, crate::model::InvalidValue> {
    use std::path::PathBuf;
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(p) => p,
        None => match std::env::var_os("HOME").map(PathBuf::from) {
            Some(h) if h.is_absolute() => h.join(".local/state"),
            _ => return Err("neither XDG_STATE_HOME nor HOME is set to an absolute path".into()),
        },
    };
    let dir = base.join("fleetnix").join("known_hosts");
    let text = dir.to_string_lossy();
    if has_whitespace(&text) || text.contains(['\0', '"', '\'']) {
        return Err(format!(
            "{} holds whitespace or quotes too; set XDG_STATE_HOME to a directory without",
            dir.display()
        )
        .into());
    }
    Ok(dir)
}

/// The command an operator runs to learn a node's host key (to check it out of band and put it
/// in `nodes.yml` as `host_key`).
pub fn keyscan_hint(address: &IpAddr) -> String {
    format!("ssh-keyscan -t ed25519 {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_keys_are_found_by_address() {
        let json = include_str!("../../tests/fixtures/tailscale-status.json");
        let keys = keys_from_status(json).expect("fixture parses");
        let ip: IpAddr = "100.64.0.2".parse().expect("ip");
        let k = &keys[&ip];
        assert_eq!(k.len(), 1);
        assert!(k[0].starts_with("ssh-ed25519 AAAA"));
        // The same keys under the IPv6 address.
        let ip6: IpAddr = "fd7a:115c:a1e0::2".parse().expect("ip");
        assert_eq!(keys[&ip6], *k);
    }

    #[test]
    fn a_tailnet_without_peers_prints_null_and_still_parses() {
        let json = r#"{"BackendState": "Running", "Peer": null, "User": null,
            "Self": {"HostName": "control-01", "TailscaleIPs": ["100.64.0.1"],
                     "sshHostKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS"]}}"#;
        let keys = keys_from_status(json).expect("null peers parse");
        let ip: IpAddr = "100.64.0.1".parse().expect("ip");
        assert_eq!(keys[&ip].len(), 1);
    }

    #[test]
    fn known_hosts_lines_are_sorted_deduplicated_and_validated() {
        let ip: IpAddr = "100.64.0.2".parse().expect("ip");
        let text = known_hosts(
            &ip,
            &[
                "ssh-rsa BBBB comment".into(),
                "ssh-ed25519 AAAA".into(),
                "ssh-ed25519 AAAA other".into(),
                "bogus key".into(),
                "ssh-ed25519 bad\"quote".into(),
            ],
        );
        assert_eq!(
            text,
            "100.64.0.2 ssh-ed25519 AAAA\n100.64.0.2 ssh-rsa BBBB\n"
        );
    }
}
