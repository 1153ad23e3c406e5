//! Helpers of the `plan` tests and bench: the pinned nixpkgs, a light test flake, and test
//! hosts that look like NixOS down to `/run/current-system`.

use super::netns::{Host, Net};
use super::skip;
use std::path::{Path, PathBuf};

/// The pinned nixpkgs folder (`FLEETNIX_TEST_NIXPKGS`, set by `.ci/run`), or a loud skip.
pub fn pinned() -> Option<PathBuf> {
    match std::env::var_os("FLEETNIX_TEST_NIXPKGS") {
        Some(p) if Path::new(&p).join("nixpkgs.tar.xz").is_file() => Some(PathBuf::from(p)),
        _ => skip("FLEETNIX_TEST_NIXPKGS does not point at the pinned nixpkgs (.ci/run sets it)"),
    }
}

/// `--override-input nixpkgs file://…/nixpkgs.tar.xz`.
pub fn override_args(pinned: &Path) -> Vec<String> {
    vec![
        "--override-input".into(),
        "nixpkgs".into(),
        format!("file://{}/nixpkgs.tar.xz", pinned.display()),
    ]
}

/// A flake whose nixosConfigurations.<node>.config.system.build.toplevel is a tiny derivation
/// of the node's rendered module (so a manifest change is a new system); the pinned nixpkgs
/// provides `lib`. Evaluates in about a second once nixpkgs is in the store.
pub const FLAKE: &str = r#"{
  inputs.nixpkgs.url = "path:/nonexistent-overridden-by-the-tests";
  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      names = map (lib.removeSuffix ".nix") (builtins.attrNames (builtins.readDir ./nix/nodes));
      system = name: derivation {
        name = "nixos-system-${name}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo \"$module\" > $out" ];
        module = builtins.unsafeDiscardStringContext (builtins.readFile (./nix/nodes + "/${name}.nix"));
      };
    in {
      nixosConfigurations = lib.genAttrs names (name: { config.system.build.toplevel = system name; });
    };
}
"#;

/// A NixOS-looking host ([`super::nixos_host`]) and its own `/run` (holding `current-system`,
/// a symlink the test points where it wants with [`set_current`]).
pub fn nixos_host_with_run(net: &mut Net, name: &str) -> (Host, PathBuf) {
    let host = super::nixos_host(net, name);
    let run = super::state_dir(net, name).join("run");
    (host, run)
}

/// Points the host's `/run/current-system` at `path`.
pub fn set_current(run: &Path, path: &str) {
    let link = run.join("current-system");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(path, &link).expect("current-system link");
}
