//! Does a node need a reboot to run its target system fully? (`shared/reference/nixos-boot-and-reboot.md`)
//!
//! A switch activates userspace but keeps the running kernel and its loaded modules. A reboot
//! is needed when any of these differ between `/run/booted-system` and the target system:
//! `kernel`, `initrd`, `kernel-modules` (out-of-tree modules such as NVIDIA's `nvidia.ko`
//! live there: a new driver with the old module loaded fails every CUDA job), `kernel-params`
//! (the file's content) and `systemd`. The links are compared by `readlink -f`. A node whose
//! running system (`/run/current-system`) already differs from the booted one in these has a
//! reboot *pending* from an earlier switch.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The links of a system's top level that only a reboot brings into effect, in report order.
/// `kernel-params` is a file (compared by content), the others links (`readlink -f`).
pub const COMPONENTS: [&str; 5] = [
    "kernel",
    "initrd",
    "kernel-modules",
    "kernel-params",
    "systemd",
];

/// The generation the machine booted (set once per boot, never by a switch).
pub const BOOTED_SYSTEM: &str = "/run/booted-system";

/// Why a node needs a reboot: a component that differs, or `pending` (the running system
/// already differs from the booted one).
pub const PENDING: &str = "pending";

/// A system's boot components: component name → `readlink -f` of the link (or the content of
/// `kernel-params`); a component the system does not have (a container has no kernel) is
/// absent from the map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSet {
    /// Component → resolved path or content.
    pub parts: BTreeMap<String, String>,
}

impl BootSet {
    /// Reads a system's components from its top level on this machine (`readlink -f`, or the
    /// content of `kernel-params`); `None` when `system` is not here (not built locally).
    pub fn local(system: &Path) -> Option<BootSet> {
        if !system.exists() {
            return None;
        }
        let mut parts = BTreeMap::new();
        for c in COMPONENTS {
            let p = system.join(c);
            let v = if c == "kernel-params" {
                std::fs::read_to_string(&p).ok()
            } else {
                std::fs::canonicalize(&p)
                    .ok()
                    .map(|p| p.display().to_string())
            };
            if let Some(v) = v {
                parts.insert(c.to_string(), v.trim().to_string());
            }
        }
        Some(BootSet { parts })
    }

    /// Parses `<component> <value>` lines ([`read_script`]'s output); an empty value means the
    /// system has no such component.
    pub fn parse(text: &str) -> BootSet {
        let mut parts = BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let (k, v) = (k.trim(), v.trim());
            if COMPONENTS.contains(&k) && !v.is_empty() {
                parts.insert(k.to_string(), v.to_string());
            }
        }
        BootSet { parts }
    }

    /// Does this set say anything at all (a system without any component is not a NixOS
    /// top level, or was not readable)?
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// A shell fragment printing `<component> <value>` for the system at `root` (a shell word,
/// e.g. `/run/booted-system` or `"$N"`): `readlink -e` of each link (`-f`, but a link to nothing is missing), the content of
/// `kernel-params`; an empty value for what is missing.
pub fn read_script(root: &str) -> String {
    let links: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| *c != "kernel-params")
        .collect();
    format!(
        "for l in {links}; do echo \"$l $(readlink -e {root}/$l 2>/dev/null)\"; done; \
         echo \"kernel-params $(cat {root}/kernel-params 2>/dev/null | tr '\\n' ' ')\"",
        links = links.join(" ")
    )
}

/// Components that differ between `booted` and `target` (both known), in [`COMPONENTS`] order.
pub fn differences(booted: &BootSet, target: &BootSet) -> Vec<String> {
    COMPONENTS
        .iter()
        .filter(|c| booted.parts.get(**c) != target.parts.get(**c))
        .map(|c| c.to_string())
        .collect()
}

/// Whether a node needs a reboot, and why (`plan`'s `"reboot"` per node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebootNeed {
    /// A reboot is needed for the target to take full effect (or is pending already).
    pub needed: bool,
    /// The components that differ between the booted system and the target (and `pending`
    /// when the running system already differs from the booted one).
    pub reasons: Vec<String>,
    /// Why it could not be told, if it could not (the target's components are unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl RebootNeed {
    /// From the booted and running systems' components (read on the node) and the target's
    /// (`None`: not known, e.g. neither built here nor evaluated).
    pub fn assess(booted: &BootSet, running: &BootSet, target: Option<&BootSet>) -> RebootNeed {
        if booted.is_empty() {
            return RebootNeed {
                needed: false,
                reasons: Vec::new(),
                unknown: Some(format!("{BOOTED_SYSTEM} has no kernel, initrd or systemd")),
            };
        }
        let mut reasons = match target {
            Some(t) => differences(booted, t),
            None => Vec::new(),
        };
        if !running.is_empty() && !differences(booted, running).is_empty() {
            reasons.push(PENDING.to_string());
        }
        RebootNeed {
            needed: !reasons.is_empty(),
            reasons,
            unknown: target
                .is_none()
                .then(|| "the target system's kernel, initrd and systemd are unknown".into()),
        }
    }

    /// `reboot needed (kernel, initrd)`, or `None` when none is.
    pub fn summary(&self) -> Option<String> {
        self.needed
            .then(|| format!("reboot needed ({})", self.reasons.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> BootSet {
        BootSet {
            parts: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_read_script_is_parsed_back() {
        let dir = tempfile::tempdir().expect("dir");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(dir.path().join("k")).expect("k");
        std::fs::write(dir.path().join("k/bzImage"), "").expect("kernel");
        std::fs::create_dir_all(&sys).expect("sys");
        std::os::unix::fs::symlink(dir.path().join("k/bzImage"), sys.join("kernel")).expect("ln");
        std::fs::write(sys.join("kernel-params"), "loglevel=4 quiet").expect("params");
        let out = std::process::Command::new("sh")
            .args(["-c", &read_script(&sys.display().to_string())])
            .output()
            .expect("sh");
        let read = BootSet::parse(&String::from_utf8_lossy(&out.stdout));
        let want = set(&[
            (
                "kernel",
                &dir.path().join("k/bzImage").display().to_string(),
            ),
            ("kernel-params", "loglevel=4 quiet"),
        ]);
        assert_eq!(read, want);
        let canon = BootSet::local(&sys).expect("here");
        assert_eq!(
            canon.parts["kernel"],
            std::fs::canonicalize(dir.path().join("k/bzImage"))
                .expect("canon")
                .display()
                .to_string()
        );
        assert_eq!(BootSet::local(&dir.path().join("absent")), None);
    }

    #[test]
    fn a_different_kernel_needs_a_reboot_and_the_same_does_not() {
        let booted = set(&[("kernel", "/k1"), ("systemd", "/s1")]);
        let same = RebootNeed::assess(&booted, &booted, Some(&booted.clone()));
        assert!(!same.needed && same.reasons.is_empty(), "{same:?}");
        assert_eq!(same.summary(), None);
        let target = set(&[("kernel", "/k2"), ("systemd", "/s1")]);
        let need = RebootNeed::assess(&booted, &booted, Some(&target));
        assert_eq!(need.reasons, ["kernel"]);
        assert_eq!(need.summary().as_deref(), Some("reboot needed (kernel)"));
        let gpu = set(&[
            ("kernel", "/k1"),
            ("kernel-modules", "/m2"),
            ("systemd", "/s2"),
        ]);
        assert_eq!(
            RebootNeed::assess(&booted, &booted, Some(&gpu)).reasons,
            ["kernel-modules", "systemd"]
        );
        // An earlier switch left a reboot pending, though the target is what runs.
        let pending = RebootNeed::assess(&booted, &target, Some(&target));
        assert_eq!(pending.reasons, ["kernel", PENDING]);
        let unknown = RebootNeed::assess(&booted, &booted, None);
        assert!(!unknown.needed && unknown.unknown.is_some());
    }
}
