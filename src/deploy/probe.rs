//! The first look at a node that is not known to be NixOS (`os: linux` and `os: auto`): its
//! `/etc/os-release`, whether `tailscale` is installed, and whether Tailscale is up as this node.
//! The deploy program branches on it ([`super::build`]) and `plan` reads it.

use crate::spec::NodeSpec;

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
}
