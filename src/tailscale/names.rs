//! Stable device names. A device that logs in with the host name of a device record that still
//! exists gets the MagicDNS name `<hostname>-1` (then `-2`, …), so a rebuilt `worker-01` comes
//! back as `worker-01-1` (shared reference tailscale-enrolment.md, "Names"). The fix used in
//! practice: delete the stale record before the new login — only a record that is offline and
//! is not the device being enrolled (compare `nodeId` and `addresses`).

use super::api::{ApiError, Client};
use super::devices::ApiDevice;
use super::parse_time;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// A record whose API answer lacks `connectedToControl` counts as offline only when it was last
/// seen longer ago than this.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15 * 60);

/// The device about to log in, as far as it is known (nothing, for a fresh machine).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrolling {
    /// Its `nodeId`, if it has one already.
    pub node_id: Option<String>,
    /// Its tailnet addresses, if any.
    pub addresses: Vec<IpAddr>,
}

/// Is `label` `node` or `node-<digits>` (the control server's renaming of duplicates)?
pub fn holds_name(label: &str, node: &str) -> bool {
    match label.strip_prefix(node) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// If `label` is `node-<digits>`, the suffix-renamed name (`worker-01-1`).
pub fn renamed(label: &str, node: &str) -> bool {
    label != node && holds_name(label, node)
}

/// Is the record offline (at `now`)? `connectedToControl` when given, else last seen long ago.
pub fn offline(d: &ApiDevice, now: SystemTime) -> bool {
    match d.online() {
        Some(online) => !online,
        None => parse_time(&d.last_seen).is_some_and(|t| t + OFFLINE_AFTER < now),
    }
}

/// The records to delete before `node` logs in: those holding its name (host name `node`, or
/// MagicDNS label `node` / `node-N`) that are offline and are not `enrolling` (neither its
/// `nodeId` nor any of its addresses). Sorted by `nodeId`.
pub fn stale_records<'a>(
    devices: &'a [ApiDevice],
    node: &str,
    enrolling: &Enrolling,
    now: SystemTime,
) -> Vec<&'a ApiDevice> {
    let mut out: Vec<&ApiDevice> = devices
        .iter()
        .filter(|d| d.hostname == node || holds_name(d.dns_label(), node))
        .filter(|d| offline(d, now))
        .filter(|d| {
            enrolling
                .node_id
                .as_deref()
                .is_none_or(|id| id != d.node_id && id != d.id)
        })
        .filter(|d| !d.addresses.iter().any(|a| enrolling.addresses.contains(a)))
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

/// Deletes the [`stale_records`] of `node` through the API; returns what was deleted.
pub async fn remove_stale_records(
    client: &Client,
    node: &str,
    enrolling: &Enrolling,
) -> Result<Vec<ApiDevice>, ApiError> {
    let devices = client.list_devices().await?;
    let stale: Vec<ApiDevice> = stale_records(&devices, node, enrolling, SystemTime::now())
        .into_iter()
        .cloned()
        .collect();
    for d in &stale {
        client.delete_device(d.path_id()).await?;
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(node_id: &str, host: &str, label: &str, ip: &str, online: bool) -> ApiDevice {
        ApiDevice {
            node_id: node_id.into(),
            hostname: host.into(),
            name: format!("{label}.tail0fake.ts.net"),
            addresses: vec![ip.parse().unwrap()],
            connected_to_control: Some(online),
            ..Default::default()
        }
    }

    #[test]
    fn only_offline_records_of_the_name_that_are_not_the_enrolling_device() {
        let devices = [
            dev("nOLD", "worker-01", "worker-01", "100.64.0.2", false),
            dev("nOLD2", "worker-01", "worker-01-1", "100.64.0.9", false),
            dev("nLIVE", "worker-01", "worker-01-2", "100.64.0.10", true),
            dev("nOTHER", "worker-011", "worker-011", "100.64.0.11", false),
            dev("nW2", "worker-02", "worker-02", "100.64.0.3", false),
            dev("nSELF", "worker-01", "worker-01-3", "100.64.0.12", false),
            dev("nADDR", "worker-01", "worker-01-4", "100.64.0.13", false),
        ];
        let enrolling = Enrolling {
            node_id: Some("nSELF".into()),
            addresses: vec!["100.64.0.13".parse().unwrap()],
        };
        let ids: Vec<&str> = stale_records(&devices, "worker-01", &enrolling, SystemTime::now())
            .iter()
            .map(|d| d.node_id.as_str())
            .collect();
        assert_eq!(ids, ["nOLD", "nOLD2"]);
        assert!(renamed("worker-01-1", "worker-01"));
        assert!(!renamed("worker-011", "worker-01"));
        assert!(!renamed("worker-01", "worker-01"));
        assert!(!holds_name("worker-01-x", "worker-01"));
    }

    #[test]
    fn without_connected_to_control_last_seen_decides() {
        let now = SystemTime::now();
        let mut d = dev("n1", "w", "w", "100.64.0.2", false);
        d.connected_to_control = None;
        d.last_seen = humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string();
        assert!(!offline(&d, now));
        d.last_seen =
            humantime::format_rfc3339_seconds(now - Duration::from_secs(3600)).to_string();
        assert!(offline(&d, now));
    }
}
