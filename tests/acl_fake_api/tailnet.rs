//! The fake API's devices and auth keys, following `shared/reference/tailscale-api.md`:
//! `GET /tailnet/-/devices` → `{"devices": [...]}` (device objects with `id`, `nodeId`,
//! `hostname`, `name` without a trailing dot, `addresses`, `tags`, `lastSeen`,
//! `connectedToControl`, `keyExpiryDisabled`, `expires`); `DELETE /device/{id}` (`{id}` = `nodeId`
//! or numeric `id`; unknown → 404); `POST /device/{id}/tags` (a tag not in `known_tags` → 400
//! `requested tags [tag:x] are invalid or not permitted`); `GET /tailnet/-/keys/{id}` → metadata
//! without the secret (`invalid` true once expired or revoked), 404 when unknown.

use std::time::{Duration, SystemTime};

/// Devices and keys of the fake tailnet.
#[derive(Debug, Default)]
pub struct Tailnet {
    /// Device objects, as the API returns them.
    pub devices: Vec<serde_json::Value>,
    /// Key metadata by id.
    pub keys: Vec<serde_json::Value>,
    /// Tags `POST /device/{id}/tags` accepts (tagOwners of the token's owner).
    pub known_tags: Vec<String>,
}

/// RFC 3339 (seconds) of `t`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Tailnet {
    /// Records a key minted now, valid for `lifetime` seconds; returns its metadata.
    pub fn add_key(
        &mut self,
        id: &str,
        lifetime: u64,
        capabilities: serde_json::Value,
    ) -> serde_json::Value {
        let now = SystemTime::now();
        let meta = serde_json::json!({
            "id": id,
            "created": rfc3339(now),
            "expires": rfc3339(now + Duration::from_secs(lifetime)),
            "capabilities": capabilities,
            "invalid": false,
        });
        self.keys.push(meta.clone());
        meta
    }

    /// Records a key that expired `ago` ago (so `invalid`).
    pub fn add_expired_key(&mut self, id: &str, ago: Duration) {
        let now = SystemTime::now();
        self.keys.push(serde_json::json!({
            "id": id,
            "created": rfc3339(now - ago - Duration::from_secs(90 * 24 * 3600)),
            "expires": rfc3339(now - ago),
            "capabilities": {"devices": {"create": {"reusable": false}}},
            "invalid": true,
        }));
    }

    /// Adds a device record (tagged: node key expiry disabled).
    pub fn add_device(
        &mut self,
        node_id: &str,
        hostname: &str,
        dns_label: &str,
        address: &str,
        online: bool,
        tags: &[&str],
    ) {
        let n = self.devices.len() + 1;
        let last_seen = if online {
            SystemTime::now()
        } else {
            SystemTime::now() - Duration::from_secs(3 * 24 * 3600)
        };
        self.devices.push(serde_json::json!({
            "addresses": [address],
            "id": format!("{}", 1000 + n),
            "nodeId": node_id,
            "user": "tagged-devices",
            "name": format!("{dns_label}.tail0fake.ts.net"),
            "hostname": hostname,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "lastSeen": rfc3339(last_seen),
            "connectedToControl": online,
            "keyExpiryDisabled": true,
            "expires": "0001-01-01T00:00:00Z",
            "authorized": true,
            "isExternal": false,
            "isEphemeral": false,
            "tags": tags,
        }));
    }

    fn device_index(&self, id: &str) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d["nodeId"] == id || d["id"] == id)
    }
}

/// Answers the devices and keys endpoints; `None` for any other path (the caller's 404).
pub fn handle(
    t: &mut Tailnet,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, serde_json::Value)> {
    let not_found = || (404, serde_json::json!({"message": "not found"}));
    if method == "GET" && path == "/api/v2/tailnet/-/devices" {
        return Some((200, serde_json::json!({ "devices": t.devices })));
    }
    if let Some(id) = path.strip_prefix("/api/v2/tailnet/-/keys/") {
        if method != "GET" {
            return None;
        }
        return Some(match t.keys.iter().find(|k| k["id"] == id) {
            Some(k) => (200, k.clone()),
            None => not_found(),
        });
    }
    let rest = path.strip_prefix("/api/v2/device/")?;
    match (method, rest.split_once('/')) {
        ("DELETE", None) => Some(match t.device_index(rest) {
            Some(i) => {
                t.devices.remove(i);
                (200, serde_json::json!({}))
            }
            None => not_found(),
        }),
        ("POST", Some((id, "tags"))) => {
            let Some(i) = t.device_index(id) else {
                return Some(not_found());
            };
            let v: serde_json::Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => return Some((400, serde_json::json!({"message": e.to_string()}))),
            };
            let Some(tags) = v["tags"].as_array() else {
                return Some((400, serde_json::json!({"message": "tags is required"})));
            };
            let bad: Vec<String> = tags
                .iter()
                .filter_map(|t| t.as_str())
                .filter(|tag| !t.known_tags.iter().any(|k| k == tag))
                .map(str::to_string)
                .collect();
            if !bad.is_empty() {
                return Some((
                    400,
                    serde_json::json!({"message": format!("requested tags [{}] are invalid or not permitted", bad.join(", "))}),
                ));
            }
            t.devices[i]["tags"] = serde_json::Value::Array(tags.clone());
            Some((200, serde_json::json!({})))
        }
        _ => None,
    }
}
