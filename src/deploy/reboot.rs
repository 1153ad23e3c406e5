//! Does a node need a reboot to run its target system fully? (`shared/reference/nixos-boot-and-reboot.md`)
//!
//! A switch activates userspace but keeps the running kernel and its loaded modules. A reboot
//! is needed when any of these differ between `/run/booted-system` and the target system:
//! `kernel`, `initrd`, `kernel-modules` (out-of-tree modules such as NVIDIA's `nvidia.ko`
//! live there: a new driver with the old module loaded fails every CUDA job), `kernel-params`
//! (the file's content) and `systemd`. The links are compared by `readlink -f`. A node whose
//! running system (`/run/current-system`) already differs from the booted one in these has a
//! reboot *pending* from an earlier switch.

use super::guard::{BOOT_GUARD_DIR, BOOT_GUARD_UNIT, BOOT_GUARD_UNIT_DIR};
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

/// `deploy --reboot`: when a guarded switch reboots the node into the new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootMode {
    /// Never reboot (the default); the summary says which nodes need one.
    #[default]
    Never,
    /// Reboot the nodes whose new generation needs it ([`COMPONENTS`] differ from the booted system).
    Auto,
    /// Reboot every node.
    Always,
}

impl RebootMode {
    /// `never`, `auto` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            RebootMode::Never => "never",
            RebootMode::Auto => "auto",
            RebootMode::Always => "always",
        }
    }

    /// Parses `never`, `auto` or `always`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "never" => Some(RebootMode::Never),
            "auto" => Some(RebootMode::Auto),
            "always" => Some(RebootMode::Always),
            _ => None,
        }
    }
}

/// Script reading the booted system's and `new`'s components: `@booted` then `@new`, each
/// followed by [`read_script`]'s lines.
pub fn check_script(new: &str) -> String {
    format!(
        "N={new}\necho @booted\n{}\necho @new\n{}",
        read_script(BOOTED_SYSTEM),
        read_script("\"$N\""),
        new = crate::exec::quote::sh_quote(new)
    )
}

/// Reads [`check_script`]'s answer: what a reboot into the new system would change.
pub fn parse_check(stdout: &str) -> RebootNeed {
    let booted = stdout
        .split("@new")
        .next()
        .unwrap_or("")
        .split("@booted")
        .nth(1)
        .unwrap_or("");
    let new = stdout.split("@new").nth(1).unwrap_or("");
    let (booted, new) = (BootSet::parse(booted), BootSet::parse(new));
    RebootNeed::assess(
        &booted,
        &BootSet::default(),
        (!new.is_empty()).then_some(&new),
    )
}

/// Does the connect step's output (`@booted` and `@running` sections of [`read_script`] lines)
/// show a reboot pending from an earlier switch (the running system's components differ from
/// the booted one's)? `false` when the booted system says nothing.
pub fn pending(stdout: &str) -> bool {
    let after = |mark: &str| stdout.split(mark).nth(1).unwrap_or("");
    let booted = BootSet::parse(after("@booted").split("@running").next().unwrap_or(""));
    let running = BootSet::parse(after("@running"));
    !booted.is_empty() && !differences(&booted, &running).is_empty()
}

/// The guard's script, run by `fleetnix-boot-guard.service` `bound` after a boot unless the
/// deploy was confirmed. Its unit gets NixOS's `PATH` (systemd's own programs only), so every
/// other program is called by absolute path from `prev`'s `sw/bin`. It claims the decision
/// (`mkdir decided`: exactly one of it and the confirmation acts), makes `prev` the profile and
/// boot default again (`nix-env --set`, `switch-to-configuration boot`), removes its units and,
/// if the machine did not boot `prev`, reboots it into `prev`.
pub fn boot_guard_script(prev: &str) -> String {
    format!(
        "D={BOOT_GUARD_DIR}; U={BOOT_GUARD_UNIT_DIR}; P={prev}; B=\"$P/sw/bin\"\n\
         \"$B/mkdir\" \"$D/decided\" 2>/dev/null || exit 0\n\
         : > \"$D/fired\"\n\
         if ! {{ \"$B/nix-env\" -p {profile} --set \"$P\" && \"$P/bin/switch-to-configuration\" boot; }}; then : > \"$D/failed\"; exit 1; fi\n\
         \"$B/rm\" -f \"$U/{BOOT_GUARD_UNIT}.timer\" \"$U/{BOOT_GUARD_UNIT}.service\" \"$U/timers.target.wants/{BOOT_GUARD_UNIT}.timer\"\n\
         : > \"$D/restored\"\n\
         if [ \"$(\"$B/readlink\" {BOOTED_SYSTEM})\" != \"$P\" ]; then systemctl reboot; fi\n\
         exit 0",
        prev = crate::exec::quote::sh_quote(prev),
        profile = super::guard::SYSTEM_PROFILE,
    )
}

/// Script arming the boot guard and making `new` the boot default (over SSH, before the
/// reboot). Takes the node's lock and checks that `prev` still runs
/// ([`super::guard::lock_and_check_script`], which also refuses while an earlier deploy's boot guard is
/// armed), writes the guard's state and units ([`BOOT_GUARD_DIR`], [`BOOT_GUARD_UNIT_DIR`]: a timer
/// `OnBootSec=<bound>` wanted by `timers.target`), then sets the profile to `new` and makes it
/// the boot default. If that fails, the guard is removed, the profile set back, the lock
/// released: the node is as before. Then the gate's units before the reboot.
pub fn arm_boot_script(
    id: &super::guard::GuardId,
    prev: &str,
    new: &str,
    bound: std::time::Duration,
    gpus: Option<u32>,
) -> String {
    use crate::exec::quote::sh_quote;
    let service = format!(
        "[Unit]\nDescription=fleetnix: {prev} as boot default again unless the deploy is confirmed\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh {BOOT_GUARD_DIR}/guard.sh\n"
    );
    let timer = format!(
        "[Unit]\nDescription=fleetnix: the boot guard of deploy {id}\n\
         [Timer]\nOnBootSec={secs}s\nAccuracySec=1s\n[Install]\nWantedBy=timers.target\n",
        id = id.as_str(),
        secs = bound.as_secs()
    );
    format!(
        "{lock}\n\
         N={new}; D={BOOT_GUARD_DIR}; U={BOOT_GUARD_UNIT_DIR}\n\
         unguard() {{ rm -rf \"$D\" \"$U/{BOOT_GUARD_UNIT}.timer\" \"$U/{BOOT_GUARD_UNIT}.service\" \"$U/timers.target.wants/{BOOT_GUARD_UNIT}.timer\"; systemctl daemon-reload; }}\n\
         rm -rf \"$D\" && mkdir -p \"$D\" \"$U/timers.target.wants\" || {{ release; echo \"cannot write $D\" >&2; exit 1; }}\n\
         printf '%s\\n' \"$I\" > \"$D/id\" && printf '%s\\n' \"$P\" > \"$D/prev\" && printf '%s\\n' \"$N\" > \"$D/new\" \\\n\
         \x20 && printf '%s\\n' {guard} > \"$D/guard.sh\" \\\n\
         \x20 && printf '%s' {service} > \"$U/{BOOT_GUARD_UNIT}.service\" \\\n\
         \x20 && printf '%s' {timer} > \"$U/{BOOT_GUARD_UNIT}.timer\" \\\n\
         \x20 && ln -sfn ../{BOOT_GUARD_UNIT}.timer \"$U/timers.target.wants/{BOOT_GUARD_UNIT}.timer\" \\\n\
         \x20 && systemctl daemon-reload || {{ unguard; release; echo \"arming the boot guard failed: nothing changed\" >&2; exit 1; }}\n\
         nix_env=\"$N/sw/bin/nix-env\"; [ -x \"$nix_env\" ] || nix_env=nix-env\n\
         if ! {{ \"$nix_env\" -p {profile} --set \"$N\" && \"$N/bin/switch-to-configuration\" boot; }} >&2; then\n\
         \x20 \"$P/sw/bin/nix-env\" -p {profile} --set \"$P\" >&2; \"$P/bin/switch-to-configuration\" boot >&2\n\
         \x20 unguard; release; echo \"making $N the boot default failed: the boot guard was removed, $P is the boot default\" >&2; exit 1\n\
         fi\n\
         : > \"$R/$I.armed\"\n\
         {gate}",
        lock = super::guard::lock_and_check_script(id, prev, bound),
        new = sh_quote(new),
        guard = sh_quote(&boot_guard_script(prev)),
        service = sh_quote(&service),
        timer = sh_quote(&timer),
        profile = super::guard::SYSTEM_PROFILE,
        gate = super::gate::gate_script(new, gpus),
    )
}

/// Script starting the reboot: marks the boot in `/run` (gone once the node booted again) and
/// asks systemd to reboot a second later, so that the SSH command returns first.
pub fn reboot_script(id: &super::guard::GuardId) -> String {
    format!(
        "R={run}; I={id}\nmkdir -p \"$R\" && : > \"$R/$I.before-reboot\" || exit 1\n\
         exec systemd-run --unit=fleetnix-reboot-{id} --collect --quiet --on-active=1 --timer-property=AccuracySec=100ms \"$(command -v systemctl)\" reboot",
        run = super::guard::RUN_DIR,
        id = id.as_str(),
    )
}

/// Script asking whether the node booted again since [`reboot_script`]: prints `same` before,
/// `booted <path>` after (the `/run` marker is gone).
pub fn back_script(id: &super::guard::GuardId) -> String {
    format!(
        "if [ -e {run}/{id}.before-reboot ]; then echo same; else echo \"booted $(readlink {BOOTED_SYSTEM})\"; fi",
        run = super::guard::RUN_DIR,
        id = id.as_str(),
    )
}

/// What the confirmation of a reboot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootConfirm {
    /// Confirmed: the node booted the new generation; the guard is removed.
    Confirmed,
    /// The node booted something else (the path): not confirmed; its guard decides.
    Booted(String),
    /// The guard already acted: the previous generation is the boot default again.
    Fired,
    /// The guard failed to restore the previous generation.
    Failed,
    /// No boot guard of this deploy on the node.
    Gone,
}

/// Script confirming a reboot over a new connection: only if the node booted `new`, claims the
/// decision (`mkdir decided`, as the guard does first), stops and removes the guard's units and
/// releases the lock. Prints one line ([`parse_boot_confirm`]). Safe to repeat.
pub fn confirm_boot_script(id: &super::guard::GuardId, new: &str) -> String {
    format!(
        "D={BOOT_GUARD_DIR}; U={BOOT_GUARD_UNIT_DIR}; I={id}; N={new}\n\
         i=; read -r i 2>/dev/null < \"$D/id\"; [ \"$i\" = \"$I\" ] || {{ echo gone; exit 0; }}\n\
         {release}\n\
         if [ ! -e \"$D/confirmed\" ]; then\n\
         \x20 b=$(readlink {BOOTED_SYSTEM}); [ \"$b\" = \"$N\" ] || {{ echo \"booted $b\"; exit 0; }}\n\
         \x20 if mkdir \"$D/decided\" 2>/dev/null; then : > \"$D/confirmed\"\n\
         \x20 elif [ -e \"$D/failed\" ]; then echo failed; exit 0\n\
         \x20 else echo fired; exit 0; fi\n\
         fi\n\
         systemctl stop {unit}.timer >/dev/null 2>&1\n\
         rm -f \"$U/{unit}.timer\" \"$U/{unit}.service\" \"$U/timers.target.wants/{unit}.timer\" && systemctl daemon-reload\n\
         release\n\
         echo confirmed",
        id = crate::exec::quote::sh_quote(id.as_str()),
        new = crate::exec::quote::sh_quote(new),
        release = super::guard::release_fn(""),
        unit = BOOT_GUARD_UNIT,
    )
}

/// Script running the boot guard at once (after a failed gate): it makes the previous
/// generation the boot default again and reboots into it.
pub fn roll_back_boot_now_script() -> String {
    format!("systemctl start --no-block {BOOT_GUARD_UNIT}.service && echo started")
}

/// Reads [`confirm_boot_script`]'s answer.
pub fn parse_boot_confirm(stdout: &str) -> Option<BootConfirm> {
    let line = stdout.lines().rfind(|l| !l.trim().is_empty())?.trim();
    Some(match line {
        "confirmed" => BootConfirm::Confirmed,
        "fired" => BootConfirm::Fired,
        "failed" => BootConfirm::Failed,
        "gone" => BootConfirm::Gone,
        _ => BootConfirm::Booted(line.strip_prefix("booted")?.trim().to_string()),
    })
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
    fn reboot_scripts_parse() {
        let id = crate::deploy::guard::GuardId::new();
        let (p, n) = (
            "/nix/store/aaa-nixos-system-1",
            "/nix/store/bbb-nixos-system-2",
        );
        for s in [
            check_script(n),
            boot_guard_script(p),
            arm_boot_script(&id, p, n, std::time::Duration::from_secs(300), Some(1)),
            reboot_script(&id),
            back_script(&id),
            confirm_boot_script(&id, n),
            roll_back_boot_now_script(),
        ] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .expect("sh");
            assert!(st.success(), "{s}");
        }
        // The guard runs under systemd's PATH only: every other program by absolute path.
        let g = boot_guard_script(p);
        for tool in ["mkdir", "rm", "readlink", "nix-env"] {
            assert!(g.contains(&format!("\"$B/{tool}\"")), "{g}");
        }
        assert!(
            arm_boot_script(&id, p, n, std::time::Duration::from_secs(300), None)
                .contains("OnBootSec=300s")
        );
        assert_eq!(
            parse_boot_confirm("confirmed\n"),
            Some(BootConfirm::Confirmed)
        );
        assert_eq!(
            parse_boot_confirm("booted /x"),
            Some(BootConfirm::Booted("/x".into()))
        );
        assert!(pending(
            "/nix/store/x\n@booted\nkernel /k1\n@running\nkernel /k2\n"
        ));
        assert!(!pending(
            "/nix/store/x\n@booted\nkernel /k1\n@running\nkernel /k1\n"
        ));
        assert!(!pending("/nix/store/x\n@booted\n@running\nkernel /k1\n"));
        let need = parse_check("@booted\nkernel /k1\n@new\nkernel /k2\n");
        assert_eq!(need.reasons, ["kernel"]);
        assert_eq!(RebootMode::parse("auto"), Some(RebootMode::Auto));
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
