//! The rollback guard for `switch` (see `docs/deploy.md`).
//!
//! A guarded switch never makes an unconfirmed generation the boot default:
//!
//! 1. *connect* reads the generation that actually runs (`/run/current-system`);
//! 2. `nixos-rebuild build` builds the new system and copies it to the node (nothing changes
//!    there), so the guard's clock does not run during a long build;
//! 3. *arm* takes the node's lock (`/run/fleetnix/lock`, one deploy at a time) and starts a
//!    transient timer with a name of its own (`fleetnix-rollback-<id>`) that re-activates the
//!    running generation (`switch-to-configuration test`) unless the deploy is confirmed;
//! 4. *activate* runs the new system's `switch-to-configuration test` in a transient service:
//!    profile and boot loader are untouched, so a reboot before confirmation boots the old
//!    generation (the timer, living in `/run`, is gone with the reboot, and so is the need for it);
//! 5. *confirm*, over a NEW SSH connection, decides the race with the timer, and only then sets
//!    the system profile to the new generation and makes it the boot default
//!    (`nix-env --set` + `switch-to-configuration boot`), and releases the lock.
//!
//! A unit started by `systemd-run` gets the service manager's environment, whose `PATH` on
//! NixOS holds only systemd's own `bin/`: the rollback calls every program by absolute path,
//! from the restored generation's `sw/bin`.

use crate::exec::quote::sh_quote;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The NixOS system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// The generation that runs (set by activation; after a boot, the boot default).
pub const CURRENT_SYSTEM: &str = "/run/current-system";

/// The guard's state on the node: lock and per-deploy markers. In `/run`, so a reboot clears it
/// together with the transient timers it describes.
pub const RUN_DIR: &str = "/run/fleetnix";

/// The node's deploy lock (a directory; `owner` holds `<deploy id> <expiry, epoch seconds>`).
pub const LOCK_DIR: &str = "/run/fleetnix/lock";

/// Prefix of the transient units (`<prefix>-<deploy id>.timer` / `.service`).
pub const UNIT_PREFIX: &str = "fleetnix-rollback";

/// Default grace period: long enough for a tailscaled restart and re-login.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// How long past its grace period a lock stays valid when its deploy vanished (fleetnix was
/// killed between confirmation and release): another deploy may then take it over.
pub const LOCK_SLACK: Duration = Duration::from_secs(600);

/// One deploy's identity on a node: names its units, its markers and its lock. Only
/// `[0-9a-z-]`, so it is safe in unit names, paths and scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardId(String);

impl GuardId {
    /// A new id, unique across processes and calls: time, process id and a counter.
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        GuardId(format!(
            "{:x}-{:x}-{}",
            nanos,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// A fixed id for listings (`--dry-run`), where each run makes its own.
    pub fn placeholder() -> Self {
        GuardId("ID".into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `fleetnix-rollback-<id>`: the timer (`.timer`) and the rollback (`.service`).
    pub fn unit(&self) -> String {
        format!("{UNIT_PREFIX}-{}", self.0)
    }
}

impl Default for GuardId {
    fn default() -> Self {
        Self::new()
    }
}

/// An absolute path made only of characters no shell misreads.
fn plain_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("/../")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'+'))
}

/// A node answered something that is not a system's store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// `readlink /run/current-system` gave no plain absolute path.
    #[error("{CURRENT_SYSTEM} does not point at a system (readlink gave {0:?}); is this NixOS?")]
    NotASystem(String),
    /// `nixos-rebuild build` did not end its stdout with a plain absolute path.
    #[error("nixos-rebuild build did not print the built system's store path (last line {0:?})")]
    NoBuiltPath(String),
}

/// Checks what `readlink /run/current-system` returned: an absolute store path, nothing a
/// shell could misread.
pub fn parse_generation(out: &str) -> Result<String, GuardError> {
    let g = out.trim();
    if plain_path(g) {
        Ok(g.to_string())
    } else {
        Err(GuardError::NotASystem(g.to_string()))
    }
}

/// The new system's store path from `nixos-rebuild build`'s standard output (its last line;
/// progress goes to standard error).
pub fn parse_built(stdout: &str) -> Result<String, GuardError> {
    let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    let p = last.trim();
    if plain_path(p) {
        Ok(p.to_string())
    } else {
        Err(GuardError::NoBuiltPath(p.to_string()))
    }
}

/// The command the timer runs (as `/bin/sh -c`), in a unit whose `PATH` holds no coreutils:
/// every program by absolute path, from `prev/sw/bin`. It first claims the deploy's decision
/// (`mkdir <id>.decided`, atomic: a confirmation that got there first wins and the rollback
/// does nothing), marks that it fired, re-activates `prev` with `switch-to-configuration test`
/// (profile and boot default were never moved), marks that it is done and releases the lock.
/// A failure leaves the service `failed`, a `failed` marker and no `done` marker (and the lock
/// held: nobody deploys over a node in an unknown state).
pub fn rollback_script(id: &GuardId, prev: &str) -> String {
    format!(
        "R={RUN_DIR}; I={id}; P={prev}; B=\"$P/sw/bin\"\n\
         if ! \"$B/mkdir\" \"$R/$I.decided\"; then [ -d \"$R/$I.decided\" ] && exit 0; : > \"$R/$I.failed\"; exit 1; fi\n\
         : > \"$R/$I.fired\" || exit 1\n\
         \"$P/bin/switch-to-configuration\" test || {{ : > \"$R/$I.failed\"; exit 1; }}\n\
         : > \"$R/$I.done\"\n\
         {release}\n\
         release\n\
         exit 0",
        id = sh_quote(id.as_str()),
        prev = sh_quote(prev),
        release = release_fn("$B/"),
    )
}

/// Where the node-side boot guard keeps its state: on the disk, so it survives the reboot
/// (`id`, `prev`, `new`, `guard.sh`, and the markers `decided`, `confirmed`, `fired`,
/// `restored`, `failed`).
pub const BOOT_GUARD_DIR: &str = "/var/lib/fleetnix/boot-guard";

/// Where its units live: systemd's persistent control directory, outside the part of `/etc`
/// NixOS generates (`/etc/systemd/system` is a link into the store), read at every boot.
pub const BOOT_GUARD_UNIT_DIR: &str = "/etc/systemd/system.control";

/// The boot guard's units (`.timer`, `.service`).
pub const BOOT_GUARD_UNIT: &str = "fleetnix-boot-guard";

/// Script arming the guard. Takes the node's lock and checks the node ([`lock_and_check_script`]),
/// then starts the timer `fleetnix-rollback-<id>` (`systemd-run --on-active=<grace>s`). Any
/// failure releases the lock and leaves the node as it was: nothing was activated and profile
/// and boot default were never touched.
pub fn arm_script(id: &GuardId, prev: &str, grace: Duration) -> String {
    format!(
        "{lock}\n\
         : > \"$R/$I.armed\"\n\
         if ! systemd-run --unit={unit} --description={desc} --on-active={secs}s --timer-property=AccuracySec=1s /bin/sh -c {cmd}; then\n\
         \x20 release; echo \"arming the rollback timer failed: nothing was activated\" >&2; exit 1\n\
         fi",
        lock = lock_and_check_script(id, prev, grace),
        unit = sh_quote(&id.unit()),
        desc = sh_quote(&format!("fleetnix: back to {prev} unless the deploy is confirmed")),
        secs = grace.as_secs(),
        cmd = sh_quote(&rollback_script(id, prev)),
    )
}

/// The first part of [`arm_script`] (and of the reboot path's arming): takes the node's lock
/// ([`lock_script`]), defines `release`, checks that `prev` still runs, and refuses while an
/// earlier deploy's boot guard is armed or has failed (each refusal releases the lock). Sets
/// `R`, `L`, `I` and `P`.
pub fn lock_and_check_script(id: &GuardId, prev: &str, grace: Duration) -> String {
    format!(
        "{lock}\n\
         P={prev}\n\
         release() {{ rm -rf \"$L\" \"$R/$I.armed\"; }}\n\
         cur=$(readlink {CURRENT_SYSTEM})\n\
         if [ \"$cur\" != \"$P\" ]; then release; echo \"the node now runs $cur, not $P (read when fleetnix connected): deploy again\" >&2; exit 1; fi\n\
         G={boot_guard}; if [ -e \"$G/failed\" ]; then release; echo \"the reboot guard of an earlier deploy ($(cat \"$G/id\")) FAILED to restore its previous generation ($(cat \"$G/prev\")); see journalctl -u {unit}.service; once the node runs the generation it should, remove $G and deploy again\" >&2; exit 1; fi\n\
         if [ -e \"$G/id\" ] && [ ! -d \"$G/decided\" ]; then release; echo \"the reboot guard of an earlier deploy ($(cat \"$G/id\")) is still armed in $G: it was not confirmed after a reboot; let it decide (it acts at its bound after each start) or remove $G and its units in {units}\" >&2; exit 1; fi",
        lock = lock_script(id, grace),
        prev = sh_quote(prev),
        boot_guard = BOOT_GUARD_DIR,
        units = BOOT_GUARD_UNIT_DIR,
        unit = BOOT_GUARD_UNIT,
    )
}

/// The part of [`arm_script`] that takes the node's lock `$L` for deploy `$I` (it sets `R`, `L`
/// and `I`), or exits 1 saying who holds it. A lock whose deploy vanished (expired, its
/// rollback not running) is taken over; of several deploys taking over the same expired lock
/// exactly one wins: each first claims that lock's takeover with `mkdir
/// $R/takeover-<owner>-<expiry>` (atomic), and the winner's `mkdir $L` still races a deploy that
/// found no lock at all. The markers stay in `/run` until the next boot. The owner line is
/// checked to be written.
pub fn lock_script(id: &GuardId, grace: Duration) -> String {
    let expiry = (grace + LOCK_SLACK).as_secs();
    format!(
        "R={RUN_DIR}; L={LOCK_DIR}; I={id}\n\
         mkdir -p \"$R\" || exit 1\n\
         if ! mkdir \"$L\" 2>/dev/null; then\n\
         \x20 o=; e=; read -r o e 2>/dev/null < \"$L/owner\"\n\
         \x20 if [ -n \"$o\" ] && {{ [ -e \"$R/$o.failed\" ] || systemctl is-failed --quiet \"{UNIT_PREFIX}-$o.service\"; }}; then\n\
         \x20   echo \"the rollback of an earlier fleetnix deploy FAILED on this node ({UNIT_PREFIX}-$o.service; see journalctl -u {UNIT_PREFIX}-$o): once the node runs the generation it should, remove $L and deploy again\" >&2; exit 1\n\
         \x20 fi\n\
         \x20 case $e in ''|*[!0-9]*) e=0; o=${{o:-unknown}}; known= ;; *) known=1 ;; esac\n\
         \x20 case $o in ''|*[!0-9a-z-]*) known= ;; esac\n\
         \x20 if [ -z \"$known\" ] || [ \"$(date +%s)\" -lt \"$e\" ] || systemctl is-active --quiet \"{UNIT_PREFIX}-$o.service\"; then\n\
         \x20   echo \"another fleetnix deploy ($o) holds the lock $L on this node; deploy again once it is done (a lock whose deploy died expires {expiry}s after it was taken)\" >&2; exit 1\n\
         \x20 fi\n\
         \x20 if ! mkdir \"$R/takeover-$o-$e\" 2>/dev/null; then\n\
         \x20   echo \"another fleetnix deploy is taking over the expired lock $L of $o on this node; deploy again once it is done\" >&2; exit 1\n\
         \x20 fi\n\
         \x20 rm -rf \"$L\" && mkdir \"$L\" 2>/dev/null || {{ echo \"cannot take the lock $L (another fleetnix deploy took it first)\" >&2; exit 1; }}\n\
         fi\n\
         echo \"$I $(( $(date +%s) + {expiry} ))\" > \"$L/owner\" || {{ rm -rf \"$L\"; echo \"cannot write the lock's owner $L/owner\" >&2; exit 1; }}",
        id = sh_quote(id.as_str()),
    )
}

/// Shell function `release`: removes the node's lock if this deploy (`$I`) holds it. It first
/// claims the lock's takeover (`mkdir <run dir>/takeover-<owner>-<expiry>`, the claim a deploy
/// taking over an expired lock makes, [`lock_script`]), so a release and a takeover of the same
/// lock never both act: a deploy that outlived its lock's expiry either releases it before the
/// taker claims it (the taker then refuses and is retried) or finds it claimed and leaves the
/// taker's lock alone. `bin` prefixes `mkdir` and `rm` inside their quotes (e.g. `$B/` in a unit
/// without coreutils on its `PATH`; empty otherwise).
pub fn release_fn(bin: &str) -> String {
    format!(
        "release() {{ o=; e=; read -r o e 2>/dev/null < {LOCK_DIR}/owner; if [ \"$o\" = \"$I\" ] && \"{bin}mkdir\" \"{RUN_DIR}/takeover-$o-$e\" 2>/dev/null; then \"{bin}rm\" -rf {LOCK_DIR}; fi; }}"
    )
}

/// Script activating `new` without making it the default: its `switch-to-configuration test`
/// inside a transient service (`systemd-run --wait --pipe`, as nixos-rebuild does), so
/// activation survives the SSH connection dropping.
pub fn activate_script(id: &GuardId, new: &str) -> String {
    format!(
        "exec systemd-run --unit=fleetnix-activate-{id} --collect --no-ask-password --pipe --quiet --service-type=exec --wait {stc} test",
        id = id.as_str(),
        stc = sh_quote(&format!("{new}/bin/switch-to-configuration")),
    )
}

/// Script rolling back at once, over the deploy's connection, after activation failed: stops
/// this deploy's timer and runs the rollback ([`rollback_script`]) right away; prints `fired`
/// when it is done, `rolling-back` while the timer's own rollback still runs, else
/// `rollback-failed` (see [`parse_confirm`]). Safe to repeat.
pub fn rollback_now_script(id: &GuardId, prev: &str) -> String {
    format!(
        "R={RUN_DIR}; I={id}; U={unit}\n\
         systemctl stop \"$U.timer\" >/dev/null 2>&1\n\
         /bin/sh -c {cmd} >&2\n\
         if [ -e \"$R/$I.done\" ]; then echo fired\n\
         elif systemctl is-active --quiet \"$U.service\"; then echo rolling-back\n\
         else echo rollback-failed; fi",
        id = sh_quote(id.as_str()),
        unit = sh_quote(&id.unit()),
        cmd = sh_quote(&rollback_script(id, prev)),
    )
}

/// What the confirmation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Confirmed before the timer fired; `new` is now the profile and the boot default.
    Confirmed,
    /// Confirmed (the guard will not fire), but setting the profile or boot default failed:
    /// the node runs the new generation and would boot the old one.
    BootDefaultFailed,
    /// The timer fired and the rollback completed: the node runs the previous generation.
    Fired,
    /// The rollback is still running.
    RollingBack,
    /// The rollback started and failed (or died): the node's state is unknown.
    RollbackFailed,
    /// The guard's state is gone (the node restarted): it now runs this generation.
    Gone(String),
}

/// Script confirming over a new connection; prints one line (see [`parse_confirm`]). Stops
/// this deploy's timer, then claims the decision (`mkdir <id>.decided`, the same claim the
/// rollback makes first, so exactly one of them acts). If it wins, it sets the profile to
/// `new` (`nix-env --set`), makes it the boot default (`switch-to-configuration boot`) and
/// releases the lock (also when that fails: the guard is done either way). Safe to repeat
/// after a dropped connection.
pub fn confirm_script(id: &GuardId, new: &str) -> String {
    format!(
        "R={RUN_DIR}; I={id}; U={unit}; N={new}\n\
         {release}\n\
         systemctl stop \"$U.timer\" >/dev/null 2>&1\n\
         if [ ! -e \"$R/$I.armed\" ]; then echo \"gone $(readlink {CURRENT_SYSTEM})\"; exit 0; fi\n\
         if [ ! -e \"$R/$I.decided/confirmed\" ]; then\n\
         \x20 if systemctl is-failed --quiet \"$U.service\"; then echo rollback-failed; exit 0; fi\n\
         \x20 if mkdir \"$R/$I.decided\" 2>/dev/null; then : > \"$R/$I.decided/confirmed\"\n\
         \x20 elif [ -e \"$R/$I.done\" ]; then echo fired; exit 0\n\
         \x20 elif systemctl is-active --quiet \"$U.service\"; then echo rolling-back; exit 0\n\
         \x20 else echo rollback-failed; exit 0; fi\n\
         fi\n\
         if [ ! -e \"$R/$I.default\" ]; then\n\
         \x20 nix_env=\"$N/sw/bin/nix-env\"; [ -x \"$nix_env\" ] || nix_env=nix-env\n\
         \x20 if ! {{ \"$nix_env\" -p {SYSTEM_PROFILE} --set \"$N\" && \"$N/bin/switch-to-configuration\" boot; }} >&2; then\n\
         \x20   release; echo boot-default-failed; exit 0\n\
         \x20 fi\n\
         \x20 : > \"$R/$I.default\"\n\
         fi\n\
         release\n\
         echo confirmed",
        id = sh_quote(id.as_str()),
        unit = sh_quote(&id.unit()),
        new = sh_quote(new),
        release = release_fn(""),
    )
}

/// Reads the confirmation script's answer.
pub fn parse_confirm(stdout: &str) -> Option<Confirm> {
    let line = stdout.lines().rfind(|l| !l.trim().is_empty())?.trim();
    Some(match line {
        "confirmed" => Confirm::Confirmed,
        "boot-default-failed" => Confirm::BootDefaultFailed,
        "fired" => Confirm::Fired,
        "rolling-back" => Confirm::RollingBack,
        "rollback-failed" => Confirm::RollbackFailed,
        _ => Confirm::Gone(line.strip_prefix("gone")?.trim().to_string()),
    })
}

/// What to do after a failed rollback, for the report.
pub fn rollback_failed_help(id: &GuardId, prev: &str) -> String {
    format!(
        "the guard fired and its rollback failed: the node may run neither generation cleanly; on its console run `{prev}/bin/switch-to-configuration test` (see `journalctl -u {unit}`), then remove {LOCK_DIR}",
        unit = id.unit()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_ok(script: &str) {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .status()
            .expect("sh");
        assert!(st.success(), "{script}");
    }

    #[test]
    fn generations_are_checked() {
        assert_eq!(
            parse_generation("/nix/store/abc-nixos-system-x\n"),
            Ok("/nix/store/abc-nixos-system-x".into())
        );
        assert!(parse_generation("system-42-link").is_err(), "not absolute");
        assert!(parse_generation("/x; rm -rf /").is_err());
        assert!(parse_generation("/nix/store/../etc").is_err());
        assert!(parse_generation("").is_err());
        assert_eq!(
            parse_built("/nix/store/abc-nixos-system\n"),
            Ok("/nix/store/abc-nixos-system".into())
        );
        assert!(parse_built("Done.\n").is_err());
    }

    #[test]
    fn ids_are_unique_and_plain() {
        let (a, b) = (GuardId::new(), GuardId::new());
        assert_ne!(a, b);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
        assert_eq!(a.unit(), format!("fleetnix-rollback-{}", a.as_str()));
    }

    #[test]
    fn scripts_parse_and_name_this_deploy() {
        let id = GuardId::new();
        let prev = "/nix/store/aaa-nixos-system-1";
        let new = "/nix/store/bbb-nixos-system-2";
        let arm = arm_script(&id, prev, Duration::from_secs(90));
        assert!(arm.contains("--on-active=90s"));
        assert!(arm.contains(&format!("--unit={}", id.unit())));
        // The rollback calls no program by name: only its generation's sw/bin and switch-to-configuration.
        let rb = rollback_script(&id, prev);
        for tool in ["mkdir", "rm"] {
            assert!(rb.contains(&format!("\"$B/{tool}\"")), "{rb}");
        }
        assert!(!rb.contains("touch") && !rb.contains("ln ") && !rb.contains("mv "));
        for s in [
            arm,
            rb,
            activate_script(&id, new),
            confirm_script(&id, new),
            super::super::preflight::current_generation_script(),
        ] {
            syntax_ok(&s);
        }
        assert!(activate_script(&id, new).ends_with("/bin/switch-to-configuration test"));
    }

    #[test]
    fn confirm_answers() {
        assert_eq!(parse_confirm("confirmed\n"), Some(Confirm::Confirmed));
        assert_eq!(parse_confirm("fired"), Some(Confirm::Fired));
        assert_eq!(
            parse_confirm("rollback-failed"),
            Some(Confirm::RollbackFailed)
        );
        assert_eq!(
            parse_confirm("gone /nix/store/x"),
            Some(Confirm::Gone("/nix/store/x".into()))
        );
        assert_eq!(parse_confirm("disarmed"), None);
        assert_eq!(parse_confirm(""), None);
    }
}
