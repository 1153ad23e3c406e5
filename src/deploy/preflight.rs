//! Preflight: before anything is copied to a NixOS node, is there room for it?
//! (`shared/reference/nixos-boot-and-reboot.md`, "Space": a `/boot` without room for one more
//! kernel+initrd makes `switch-to-configuration boot|switch` fail after the closure was copied.)
//!
//! The connect step also reports free bytes on the file systems holding `/boot` and the Nix
//! store (`df -B1`) and the size of the running system's kernel and initrd (`du -sLb`), the
//! estimate of what one more generation puts on `/boot`. A node without that room is refused
//! before `nixos-rebuild` runs, naming the node, the file system and the numbers. The store is
//! checked against the closure's size when that is known.

use super::guard::{CURRENT_SYSTEM, SYSTEM_PROFILE};

/// The shell fragment printing the space lines (`space <path> <free bytes> <mount point>` for
/// `/boot` and `/nix/store`, and `need-boot <bytes>`); missing paths print nothing.
pub fn space_script() -> String {
    "for p in /boot /nix/store; do [ -e \"$p\" ] || continue; \
     df -B1 --output=avail,target \"$p\" 2>/dev/null | tail -n 1 | { read -r a t && echo \"space $p $a $t\"; }; done; \
     echo \"need-boot $(du -sLb /run/current-system/kernel /run/current-system/initrd 2>/dev/null | awk '{s+=$1} END {print s+0}')\""
        .to_string()
}

/// What [`space_script`] reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Space {
    /// Path → (free bytes, mount point).
    pub free: std::collections::BTreeMap<String, (u64, String)>,
    /// What one more kernel+initrd needs on `/boot` (the running ones' size), if known.
    pub need_boot: Option<u64>,
}

/// Reads the space lines out of a script's output (other lines are ignored).
pub fn parse_space(stdout: &str) -> Space {
    let mut s = Space::default();
    for l in stdout.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["space", p, a, t] => {
                if let Ok(a) = a.parse() {
                    s.free.insert(p.to_string(), (a, t.to_string()));
                }
            }
            ["need-boot", n] => s.need_boot = n.parse().ok().filter(|n| *n > 0),
            _ => {}
        }
    }
    s
}

/// Bytes as MiB with one decimal, for messages.
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Checks `space` for `node`: `/boot` must hold one more kernel+initrd (when `boot` is true:
/// the deploy makes a boot entry) and the store the closure (`closure`: its size, when known).
/// `Err` names the node, the file system and the numbers.
pub fn check(node: &str, space: &Space, boot: bool, closure: Option<u64>) -> Result<(), String> {
    let mut wrong = Vec::new();
    if boot {
        if let (Some((free, mount)), Some(need)) = (space.free.get("/boot"), space.need_boot) {
            if *free < need {
                wrong.push(format!(
                    "/boot (file system mounted at {mount}) has {} free, one more kernel+initrd needs {} ({free} < {need} bytes)",
                    mib(*free),
                    mib(need)
                ));
            }
        }
    }
    if let (Some((free, mount)), Some(need)) = (space.free.get("/nix/store"), closure) {
        if *free < need {
            wrong.push(format!(
                "/nix/store (file system mounted at {mount}) has {} free, the closure needs {} ({free} < {need} bytes)",
                mib(*free),
                mib(need)
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not enough space on {node}, nothing copied: {}; free some (e.g. `nix-collect-garbage --delete-older-than 30d` and `/run/current-system/bin/switch-to-configuration boot` on the node)",
            wrong.join("; ")
        ))
    }
}

/// Script printing the running generation (the target of `/run/current-system`) on its first
/// line, then the preflight's space lines ([`super::preflight::space_script`]) and the booted
/// and running systems' boot components ([`super::reboot::pending`]). On a host
/// without it or without the system profile it fails saying the host does not look like
/// NixOS (and what to set instead), not with a bare exit code.
pub fn current_generation_script() -> String {
    format!(
        "if [ -e {profile} ] && readlink {current}; then {space}; echo @booted; {booted}; echo @running; {running}; exit 0; fi\n\
         m=; [ -e {current} ] || m=\" no {current}\"; [ -e {profile} ] || m=\"$m, no {profile}\"\n\
         echo \"{NOT_NIXOS_PREFIX}:${{m#,}}\" >&2\nexit 1",
        space = space_script(),
        booted = super::reboot::read_script(super::reboot::BOOTED_SYSTEM),
        running = super::reboot::read_script(CURRENT_SYSTEM),
        current = CURRENT_SYSTEM,
        profile = SYSTEM_PROFILE,
    )
}

/// How [`current_generation_script`] starts its answer on a host that is not NixOS.
pub const NOT_NIXOS_PREFIX: &str = "this host does not look like NixOS";

/// The connect step's reason for a host that is not NixOS: what is missing and what to set.
pub fn not_nixos_help(node: &str, answer: &str) -> String {
    format!(
        "{answer}; if it is not NixOS, set `os: auto` (detect it) or `os: linux` (install Tailscale and the agent without Nix) for {node} in nodes.yml"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_space_script_runs_and_is_read() {
        let out = std::process::Command::new("sh")
            .args(["-c", &space_script()])
            .output()
            .expect("sh");
        assert!(out.status.success());
        let s = parse_space(&String::from_utf8_lossy(&out.stdout));
        assert!(s.free.contains_key("/boot") || !std::path::Path::new("/boot").exists());
    }

    #[test]
    fn a_full_boot_is_refused_with_the_numbers() {
        let s = parse_space(
            "/nix/store/x-system\nspace /boot 1048576 /boot\nspace /nix/store 900000000 /\nneed-boot 52428800\n",
        );
        assert_eq!(s.free["/boot"], (1048576, "/boot".into()));
        let e = check("worker-01", &s, true, None).expect_err("full");
        assert!(e.contains("worker-01"), "{e}");
        assert!(e.contains("/boot (file system mounted at /boot) has 1.0 MiB free, one more kernel+initrd needs 50.0 MiB"), "{e}");
        // No boot entry (`--action test`): /boot is not asked.
        assert!(check("worker-01", &s, false, None).is_ok());
        // The store against a known closure.
        let e = check("worker-01", &s, false, Some(1_000_000_000)).expect_err("store");
        assert!(
            e.contains("/nix/store (file system mounted at /) has"),
            "{e}"
        );
        assert!(check("worker-01", &s, false, Some(1000)).is_ok());
        // Nothing known: nothing refused.
        assert!(check("w", &Space::default(), true, Some(1)).is_ok());
    }
}
