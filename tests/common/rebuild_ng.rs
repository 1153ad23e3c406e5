//! The real nixos-rebuild (nixos-rebuild-ng, nixpkgs' Python rewrite) from the pinned nixpkgs
//! of `FLEETNIX_TEST_NIXPKGS`, run against namespace hosts, following the shared reference
//! `nixos-rebuild-ng.md`:
//!
//! - its source `pkgs/by-name/ni/nixos-rebuild-ng/src/nixos_rebuild` is copied from the pinned
//!   nixpkgs (unpacked into the store by `builtins.fetchTarball`) with the two mechanical changes
//!   Python 3.11 needs (`type X = …` aliases become `X = …`; `typing.override`, a no-op
//!   decorator, is defined in place) and its build-time placeholders filled;
//! - a `nixos-rebuild` wrapper runs it with `--no-reexec`'s variable set (the flake below has no
//!   `system.build.nixos-rebuild` to re-execute), and a `nix` wrapper translates `nix build
//!   --print-out-paths` (newer than Debian's Nix 2.8) into `--json`;
//! - `NIX_CONFIG` turns off substituters (no network), build users and the sandbox (the tiny
//!   systems are built with `/bin/sh`).
//!
//! [`real_nixos_host`] is a NixOS-looking host whose profile, GC roots and `/root` are its own
//! (bound over the machine's in sshd's mount namespace), so `nix-env --set` on the "target"
//! touches only the test's folders; it shares the machine's `/nix/store`, so the copy moves 0
//! paths. [`write_flake`] writes a flake whose `toplevel` per node is a tiny real derivation
//! with `bin/switch-to-configuration` (recording activations on the host, moving
//! `/run/current-system` and the boot default like the real one) and `nixos-version`.

use super::netns::{Host, Net};
use super::{nixos_host_with, skip, state_dir, write_script};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the package's source lives in nixpkgs.
const SOURCE: &str = "pkgs/by-name/ni/nixos-rebuild-ng/src/nixos_rebuild";

/// `NIX_CONFIG` for builds here: no binary cache to wait for, no build users, no sandbox.
pub const NIX_CONFIG: &str = "substituters =\nbuild-users-group =\nsandbox = false\n";

/// The store path of the pinned nixpkgs: unpacked on first use (about 30 s), then taken from
/// Nix's cache whatever its age (`tarball-ttl`: the file is pinned, it never changes), once per
/// test process (parallel tests wait for the one unpacking).
fn nixpkgs_source(pinned: &Path) -> Option<PathBuf> {
    static SOURCE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut known = SOURCE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = known.as_ref() {
        return Some(p.clone());
    }
    let expr = format!(
        "builtins.fetchTarball \"file://{}/nixpkgs.tar.xz\"",
        pinned.display()
    );
    let out = Command::new("nix-instantiate")
        .args([
            "--eval",
            "--option",
            "tarball-ttl",
            "2147483647",
            "-E",
            &expr,
        ])
        .env("NIX_CONFIG", NIX_CONFIG)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return skip(&format!("cannot run nix-instantiate: {e}")),
    };
    if !out.status.success() {
        return skip(&format!(
            "cannot unpack the pinned nixpkgs: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(text.trim().trim_matches('"'));
    *known = Some(path.clone());
    Some(path)
}

/// One source line, made to run on Python 3.11.
fn port_line(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("type ") {
        if let Some((name, value)) = rest.split_once(" = ") {
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return format!("{name} = {value}");
            }
        }
    }
    if line.starts_with("from typing import ") && line.ends_with(", override") {
        return format!(
            "{}\noverride = lambda f: f",
            line.trim_end_matches(", override")
        );
    }
    line.replace("@executable@", "nixos-rebuild")
        .replace("@withShellFiles@", "false")
        .replace("@withReexec@", "false")
}

/// The real nixos-rebuild, ready under `dir`: returns the `nixos-rebuild` wrapper to pass as
/// `FLEETNIX_NIXOS_REBUILD`. `None` (a loud skip; a failure under `CI`) without the pinned
/// nixpkgs, `nix` or `python3`.
pub fn real_nixos_rebuild(dir: &Path) -> Option<PathBuf> {
    let pinned = super::plan::pinned()?;
    let nix = super::required_tool("nix", "Debian package nix-bin")?;
    let python = super::required_tool("python3", "Debian package python3")?;
    let source = nixpkgs_source(&pinned)?.join(SOURCE);
    let pkg = dir.join("py/nixos_rebuild");
    std::fs::create_dir_all(&pkg).expect("python package dir");
    for entry in std::fs::read_dir(&source).expect("nixos-rebuild-ng source") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_owned();
        let text = std::fs::read_to_string(&path).expect("source file");
        let ported: String = if path.extension().is_some_and(|e| e == "py") {
            text.lines().map(|l| port_line(l) + "\n").collect()
        } else {
            text
        };
        std::fs::write(pkg.join(name), ported).expect("ported source");
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    write_script(
        &bin.join("nix"),
        &format!(
            "#!{python}\n\
             # Nix 2.8 has no `nix build --print-out-paths`: ask for --json and print the outputs.\n\
             import json, os, subprocess, sys\n\
             real = {nix:?}\n\
             args = sys.argv[1:]\n\
             if 'build' in args and '--print-out-paths' in args:\n\
             \x20   args = [a for a in args if a != '--print-out-paths'] + ['--json']\n\
             \x20   r = subprocess.run([real] + args, stdout=subprocess.PIPE)\n\
             \x20   if r.returncode:\n\
             \x20       sys.exit(r.returncode)\n\
             \x20   for o in json.loads(r.stdout):\n\
             \x20       for p in o['outputs'].values():\n\
             \x20           print(p)\n\
             \x20   sys.exit(0)\n\
             os.execv(real, [real] + args)\n",
            python = python.display(),
            nix = nix.display().to_string(),
        ),
    );
    let wrapper = bin.join("nixos-rebuild");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\n\
             # The real nixos-rebuild-ng of the pinned nixpkgs (see tests/common/rebuild_ng.rs).\n\
             export PYTHONPATH='{py}' PATH='{bin}':\"$PATH\" _NIXOS_REBUILD_REEXEC=1\n\
             export NIX_CONFIG='{conf}'\n\
             exec '{python}' -m nixos_rebuild \"$@\"\n",
            py = dir.join("py").display(),
            bin = bin.display(),
            conf = NIX_CONFIG,
            python = python.display(),
        ),
    );
    Some(wrapper)
}

/// The `switch-to-configuration` of the flake's systems: records `<store path> <action>` in the
/// host's `activations`, fails when `<host>/fail-v<nixos-version>` exists, and moves
/// `/run/current-system` (switch/test) and the boot default (switch/boot) like the real one.
const STC: &str = r#"#!/bin/sh
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
self=$(dirname "$(dirname "$(readlink -f "$0")")")
hostdir=$(cat /nix/var/nix/profiles/.fleetnix-test-host)
echo "$self $1" >> "$hostdir/activations"
if [ -e "$hostdir/fail-v$(cat "$self/nixos-version")" ]; then
  echo "switch-to-configuration: activating $self failed" >&2
  exit 1
fi
case $1 in
  switch|test) ln -sfn "$self" /run/current-system.stc && mv -T /run/current-system.stc /run/current-system ;;
esac
case $1 in
  switch|boot) echo "$self" > "$hostdir/boot-default" ;;
esac
"#;

/// Writes `flake.nix` under `root`: `nixosConfigurations.<node>.config.system.build.toplevel`
/// for each of `nodes`, a tiny derivation whose `nixos-version` is the content of
/// `<root>/generation` (change it for a new system; see [`set_generation`]).
pub fn write_flake(root: &Path, nodes: &[&str]) {
    let names: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      system = name: derivation {{
        name = "nixos-system-${{name}}-test";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" ''
          /bin/mkdir -p $out/bin
          printf '%s' "$generation" > $out/nixos-version
          printf '%s' "$stc" > $out/bin/switch-to-configuration
          /bin/chmod +x $out/bin/switch-to-configuration
        '' ];
        generation = builtins.readFile ./generation;
        stc = builtins.readFile ./switch-to-configuration;
      }};
    in {{
      nixosConfigurations = builtins.listToAttrs (map (name: {{
        inherit name;
        value.config.system.build.toplevel = system name;
      }}) [ {names} ]);
    }};
}}
"#,
        names = names.join(" ")
    );
    std::fs::write(root.join("flake.nix"), flake).expect("flake.nix");
    std::fs::write(root.join("switch-to-configuration"), STC).expect("stc");
    set_generation(root, "1");
}

/// Sets what the flake's next system is (its `nixos-version`).
pub fn set_generation(root: &Path, generation: &str) {
    std::fs::write(root.join("generation"), generation).expect("generation");
}

/// A NixOS-looking host ([`super::nixos_host`]) whose `/nix/var/nix/gcroots` and `/root` are its
/// own too, so the real `nix-env --set` run there changes only test folders.
pub fn real_nixos_host(net: &mut Net, name: &str) -> Host {
    let gcroots = net.dir().join(format!("gcroots-{name}"));
    let home = net.dir().join(format!("root-{name}"));
    for d in [&gcroots, &home] {
        std::fs::create_dir_all(d).expect("scratch dir");
    }
    nixos_host_with(
        net,
        name,
        vec![
            (gcroots, PathBuf::from("/nix/var/nix/gcroots")),
            (home, PathBuf::from("/root")),
        ],
    )
}

/// The host's activations (`<what> <action>` lines), with store paths shortened to their
/// `nixos-version` (the flake's generation) and the harness's generations to `gen<n>`.
pub fn activations(net: &Net, name: &str) -> Vec<String> {
    super::lines(&state_dir(net, name).join("activations"))
        .into_iter()
        .map(|l| {
            let (what, action) = l.rsplit_once(' ').unwrap_or((&l, ""));
            format!("{} {action}", system_name(what))
        })
        .collect()
}

/// A system path shortened: the flake's systems to `v<nixos-version>`, harness generations
/// (`…/gens/<n>`) to `gen<n>`.
pub fn system_name(path: &str) -> String {
    let p = Path::new(path.trim());
    if let Ok(v) = std::fs::read_to_string(p.join("nixos-version")) {
        return format!("v{}", v.trim());
    }
    format!(
        "gen{}",
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// What the host runs, its profile and its boot default, shortened by [`system_name`].
pub fn systems(net: &Net, name: &str) -> (String, String, String) {
    let state = state_dir(net, name);
    let running = std::fs::read_link(state.join("run/current-system")).expect("current-system");
    let profiles = net.dir().join(format!("profiles-{name}"));
    let link = std::fs::read_link(profiles.join("system")).expect("profile");
    let profile = std::fs::read_link(profiles.join(link)).expect("profile generation");
    let boot = std::fs::read_to_string(state.join("boot-default")).expect("boot-default");
    let boot = boot.trim();
    let boot = if boot.starts_with('/') {
        system_name(boot)
    } else {
        format!("gen{boot}")
    };
    (
        system_name(&running.to_string_lossy()),
        system_name(&profile.to_string_lossy()),
        boot,
    )
}
