//! The rollback guard for `switch` (see `docs/deploy.md`).
//!
//! A guarded switch runs `nixos-rebuild boot` (build, copy, set the profile), so the guard's
//! clock does not run during a long build. Then, before activation, fleetnix arms, on the
//! node, a transient systemd timer (`systemd-run --on-active=<grace>`) that points the system
//! profile back at the generation that was current before the deploy and runs its `switch-to-configuration switch`. After
//! activation fleetnix opens a *new* SSH connection over the tailnet (retrying until the grace
//! period ends, so a tailscaled restart is survived) and stops the timer. If it cannot reconnect,
//! the node rolls itself back.

use super::shell::sh_quote;
use std::time::Duration;

/// The NixOS system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// Name of the transient unit (`.timer` and `.service`).
pub const GUARD_UNIT: &str = "fleetnix-rollback";

/// Default grace period: long enough for a tailscaled restart and re-login.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// Script printing the current generation link (e.g. `system-42-link`).
pub fn current_generation_script() -> String {
    format!("readlink {SYSTEM_PROFILE}")
}

/// Checks what `readlink` returned: a generation link name or a store path, nothing a shell could misread.
pub fn parse_generation(out: &str) -> Result<String, String> {
    let g = out.trim();
    let ok = !g.is_empty()
        && !g.starts_with('-')
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'+'));
    if ok {
        Ok(g.to_string())
    } else {
        Err(format!(
            "{SYSTEM_PROFILE} does not point at a generation (readlink gave {g:?}); is this NixOS?"
        ))
    }
}

/// Left by the rollback before it changes anything, so a late disarm can tell it fired (a fired
/// systemd timer may still look active). Beside the profile it concerns; cleared when arming.
pub const FIRED_MARKER: &str = "/nix/var/nix/profiles/.fleetnix-rollback-fired";

/// The command the timer runs: mark that it fired, re-point the profile at `prev` (atomically)
/// and activate it.
pub fn rollback_script(prev: &str) -> String {
    let p = SYSTEM_PROFILE;
    format!(
        "touch {FIRED_MARKER} && ln -sfn {prev} {p}.fleetnix-rollback && mv -T {p}.fleetnix-rollback {p} && exec {p}/bin/switch-to-configuration switch",
        prev = sh_quote(prev)
    )
}

/// Script arming the guard: refuses while an earlier rollback is still activating (stopping it
/// would leave the node half-switched), clears a stale timer and marker, then
/// `systemd-run --on-active=<grace>s`.
pub fn arm_script(prev: &str, grace: Duration) -> String {
    let u = GUARD_UNIT;
    format!(
        "if systemctl is-active --quiet {u}.service; then echo 'an earlier fleetnix rollback is still running on this node; deploy again once it is done' >&2; exit 1; fi\n\
         systemctl stop {u}.timer >/dev/null 2>&1 || true\n\
         systemctl reset-failed {u}.timer {u}.service >/dev/null 2>&1 || true\n\
         rm -f {FIRED_MARKER}\n\
         exec systemd-run --unit={u} --description={desc} --on-active={secs}s --timer-property=AccuracySec=1s /bin/sh -c {cmd}",
        desc = sh_quote(&format!("fleetnix: return to {prev} unless the deploy is confirmed")),
        secs = grace.as_secs(),
        cmd = sh_quote(&rollback_script(prev)),
    )
}

/// Script activating the profile's generation the way nixos-rebuild does: inside a transient
/// service (`systemd-run --wait --pipe`), so activation survives the SSH connection dropping.
pub fn activate_script() -> String {
    format!(
        "exec systemd-run --unit=fleetnix-activate --collect --no-ask-password --pipe --quiet --service-type=exec --wait {SYSTEM_PROFILE}/bin/switch-to-configuration switch"
    )
}

/// What the disarm script reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disarm {
    /// The timer was stopped in time: the new generation stays.
    Disarmed,
    /// The timer had already fired: the node went back to the previous generation.
    Fired,
}

/// Script disarming the guard; prints `disarmed` or `fired`. The timer is stopped first; then
/// the rollback counts as fired if it left its marker or its service is running, whatever the
/// timer's state says (a systemd timer that has elapsed can still be reported active).
pub fn disarm_script() -> String {
    let u = GUARD_UNIT;
    format!(
        "systemctl stop {u}.timer >/dev/null 2>&1 || true\n\
         if [ -e {FIRED_MARKER} ] || systemctl is-active --quiet {u}.service; then echo fired; else echo disarmed; fi"
    )
}

/// Reads the disarm script's answer.
pub fn parse_disarm(stdout: &str) -> Option<Disarm> {
    match stdout.trim() {
        "disarmed" => Some(Disarm::Disarmed),
        "fired" => Some(Disarm::Fired),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_checked() {
        assert_eq!(
            parse_generation("system-42-link\n"),
            Ok("system-42-link".into())
        );
        assert!(parse_generation("/nix/store/abc-nixos-system").is_ok());
        assert!(parse_generation("x; rm -rf /").is_err());
        assert!(parse_generation("").is_err());
    }

    #[test]
    fn arm_script_quotes_the_nested_command() {
        let s = arm_script("system-7-link", Duration::from_secs(90));
        assert!(s.contains("--on-active=90s"));
        assert!(s.contains("--unit=fleetnix-rollback"));
        assert!(s.contains("system-7-link"));
        // Runs in sh: syntax check the whole script.
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .status()
            .expect("sh");
        assert!(st.success());
    }
}
