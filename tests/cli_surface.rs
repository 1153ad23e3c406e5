//! The CLI surface: shell completions, the man page, and exit codes that tell "problem found"
//! (1) from "could not run" (3).

mod common;

use common::{fake_tailscale, fleetnix_bin, repo, status_fixture};
use std::process::Command;

fn fleetnix(args: &[&str]) -> std::process::Output {
    Command::new(fleetnix_bin())
        .arg("--root")
        .arg(repo())
        .args(args)
        .env_remove("FLEETNIX_FLEET_DIR")
        .output()
        .unwrap()
}

/// Every top-level command, from the parser itself.
fn commands() -> Vec<String> {
    let out = fleetnix(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = text
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() > 15, "{names:?}");
    names
}

#[test]
fn completions_name_every_command() {
    let cmds = commands();
    for shell in ["bash", "zsh", "fish"] {
        let out = fleetnix(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for c in &cmds {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    let bash = String::from_utf8(fleetnix(&["completions", "bash"]).stdout).unwrap();
    assert!(bash.contains("complete -F _fleetnix"), "{bash}");
    // The script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleetnix.bash");
    std::fs::write(&f, &bash).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success());
    // An unknown shell is a usage error (clap's exit 2).
    assert_eq!(fleetnix(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_is_roff_that_groff_reads() {
    let out = fleetnix(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(
        roff.starts_with(".ie \\n(.g .ds Aq") || roff.contains(".TH fleetnix 1"),
        "{roff}"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(roff.contains(section), "no {section}");
    }
    for c in commands() {
        let escaped = c.replace('-', "\\-");
        assert!(
            roff.contains(&format!("fleetnix\\-{escaped}(1)")),
            "man page lacks {c}"
        );
    }
    // groff renders it without a warning, and the text says what exit 3 means.
    let Some(groff) = common::required_tool("groff", "apt-get install groff-base") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("fleetnix.1");
    std::fs::write(&page, &roff).unwrap();
    let out = Command::new(&groff)
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = Command::new(&groff)
        .args(["-man", "-Tascii"])
        .arg(&page)
        .output()
        .unwrap();
    // Drop the overstrike (`X\bX`, `_\bX`) and SGR sequences of bold and underline.
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
        } else if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            text.push(c);
        }
    }
    assert!(text.contains("EXIT STATUS"), "{text}");
    assert!(text.contains("Could not run"), "{text}");

    // --dir: one page per command, each valid roff.
    let mandir = dir.path().join("man1");
    let out = fleetnix(&["man", "--dir", mandir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "fleetnix.1",
        "fleetnix-deploy.1",
        "fleetnix-acl-check.1",
        "fleetnix-completions.1",
    ] {
        let text = std::fs::read_to_string(mandir.join(page)).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{page}");
    }
    let n = std::fs::read_dir(&mandir).unwrap().count();
    assert!(n > commands().len(), "{n} pages");
}

/// `fleetnix --root <repo> <cmd>` with the fake tailscale reporting the fixture (`Some`) or
/// unreachable (`None`).
fn with_tailnet(args: &[&str], up: bool) -> std::process::Output {
    let mut cmd = Command::new(fleetnix_bin());
    let state = tempfile::tempdir().unwrap();
    cmd.arg("--root")
        .arg(state.path())
        .arg("--fleet-dir")
        .arg(repo().join("fleet"))
        .args(args)
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env_remove("FAKE_TAILSCALE_STATUS");
    if up {
        cmd.env("FAKE_TAILSCALE_STATUS", status_fixture());
    }
    cmd.output().unwrap()
}

#[test]
fn problem_found_and_could_not_run_differ() {
    // status: the fixture has an unmanaged node (drift: 1); no tailscaled: 3.
    assert_eq!(with_tailnet(&["status"], true).status.code(), Some(1));
    let dead = with_tailnet(&["status"], false);
    assert_eq!(dead.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&dead.stderr).starts_with("error: "));
    // route: a node is picked (0); no tailscaled: 3.
    assert_eq!(
        with_tailnet(&["route", "glm-worker"], true).status.code(),
        Some(0)
    );
    assert_eq!(
        with_tailnet(&["route", "glm-worker"], false).status.code(),
        Some(3)
    );
    // A role nobody has: a problem (1), not "could not run".
    assert_eq!(
        with_tailnet(&["route", "no-such-role"], true).status.code(),
        Some(1)
    );
    // health without tailscaled: 3 (the example fleet is never probed here).
    assert_eq!(with_tailnet(&["health"], false).status.code(), Some(3));
    // A bad flag: clap's usage error, 2.
    assert_eq!(
        with_tailnet(&["status", "--bogus"], true).status.code(),
        Some(2)
    );
    // Invalid fleet files: 1, with the manifest reporter's summary line.
    let dir = tempfile::tempdir().unwrap();
    common::copy_example_fleet(dir.path());
    std::fs::write(dir.path().join("fleet.yml"), "control_plane: [\n").unwrap();
    let out = Command::new(fleetnix_bin())
        .arg("--root")
        .arg(dir.path())
        .arg("--fleet-dir")
        .arg(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
}
