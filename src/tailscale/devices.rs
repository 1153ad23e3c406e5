//! The Tailscale API's devices and auth-key metadata (shared reference tailscale-api.md):
//! `GET /tailnet/{t}/devices`, `DELETE /device/{id}`, `POST /device/{id}/tags`,
//! `GET /tailnet/{t}/keys/{id}`. Errors are the client's [`ApiError`]s (401/403/429/5xx named).

use super::api::{ApiError, Client};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::IpAddr;

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One device record of `GET /tailnet/{t}/devices` (the fields fleetnix uses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiDevice {
    /// Legacy numeric id (a string).
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// Stable node id (`n…CNTRL`), the preferred `{id}` in paths.
    #[serde(default, deserialize_with = "null_default")]
    pub node_id: String,
    /// Host name the device chose.
    #[serde(default, deserialize_with = "null_default")]
    pub hostname: String,
    /// MagicDNS FQDN without a trailing dot (`worker-01.tail1a2b3c.ts.net`).
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Tailnet addresses.
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<IpAddr>,
    /// ACL tags.
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// Last seen (RFC 3339).
    #[serde(default, deserialize_with = "null_default")]
    pub last_seen: String,
    /// Connected to the control server now (newer API versions).
    #[serde(default)]
    pub connected_to_control: Option<bool>,
    /// Node key expiry disabled.
    #[serde(default, deserialize_with = "null_default")]
    pub key_expiry_disabled: bool,
    /// Node key expiry (RFC 3339).
    #[serde(default, deserialize_with = "null_default")]
    pub expires: String,
    /// Removed once offline.
    #[serde(default)]
    pub is_ephemeral: Option<bool>,
}

impl ApiDevice {
    /// The id to use in `/device/{id}` paths: `nodeId`, else the numeric `id`.
    pub fn path_id(&self) -> &str {
        if self.node_id.is_empty() {
            &self.id
        } else {
            &self.node_id
        }
    }

    /// The first label of its MagicDNS name (`worker-01-1` for `worker-01-1.tail….ts.net`).
    pub fn dns_label(&self) -> &str {
        self.name.split('.').next().unwrap_or("")
    }

    /// Is it online? `connectedToControl` when the API gives it; otherwise unknown (`None`).
    pub fn online(&self) -> Option<bool> {
        self.connected_to_control
    }
}

/// Metadata of a pre-auth key (`GET /tailnet/{t}/keys/{id}`); the secret is never returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Key id.
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// Expiry (RFC 3339).
    #[serde(default, deserialize_with = "null_default")]
    pub expires: String,
    /// True once expired, revoked, or used when single-use.
    #[serde(default, deserialize_with = "null_default")]
    pub invalid: bool,
}

impl Client {
    /// `/device/{id}/{rest…}`.
    fn device_url(&self, id: &str, rest: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().push("device").push(id);
            for r in rest {
                segs.push(r);
            }
        }
        url
    }

    /// `GET /tailnet/{t}/devices`: every device of the tailnet.
    pub async fn list_devices(&self) -> Result<Vec<ApiDevice>, ApiError> {
        let url = self.url(&["devices"]);
        let req = self.request(reqwest::Method::GET, url.clone());
        let (status, _, body) = self.send(req, &url).await?;
        if status != 200 {
            return Err(Self::rejected(status, &body));
        }
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            devices: Vec<ApiDevice>,
        }
        let l: List = serde_json::from_str(&body).map_err(|e| ApiError::Unexpected {
            status,
            url: url.to_string(),
            message: format!("the device list is not the documented JSON: {e}"),
        })?;
        Ok(l.devices)
    }

    /// `DELETE /device/{id}`: removes a device record.
    pub async fn delete_device(&self, id: &str) -> Result<(), ApiError> {
        let url = self.device_url(id, &[]);
        let req = self.request(reqwest::Method::DELETE, url.clone());
        let (status, _, body) = self.send(req, &url).await?;
        if !(200..300).contains(&status) {
            return Err(Self::rejected(status, &body));
        }
        Ok(())
    }

    /// `POST /device/{id}/tags` with `{"tags": […]}`: replaces a device's tags (the way to
    /// retag a running node).
    pub async fn set_device_tags(&self, id: &str, tags: &[String]) -> Result<(), ApiError> {
        let url = self.device_url(id, &["tags"]);
        let body = serde_json::json!({ "tags": tags });
        let req = self
            .request(reqwest::Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, _, text) = self.send(req, &url).await?;
        if !(200..300).contains(&status) {
            return Err(Self::rejected(status, &text));
        }
        Ok(())
    }

    /// `GET /tailnet/{t}/keys/{id}`: a key's metadata. `Ok(None)` when the server no longer
    /// knows it (404: revoked or expired long ago).
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyInfo>, ApiError> {
        let url = self.url(&["keys", id]);
        let req = self.request(reqwest::Method::GET, url.clone());
        let (status, _, body) = self.send(req, &url).await?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(Self::rejected(status, &body));
        }
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|_| ApiError::Unexpected {
                status,
                url: url.to_string(),
                message: "the key metadata lacks the documented fields".into(),
            })
    }
}
