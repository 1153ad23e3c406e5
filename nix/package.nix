# fleetnix itself, from this repository's source (used by packages.fleetnix and the fleet check).
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "fleetnix";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  buildType = "release"; # Cargo.toml's shipping profile: stripped, no debug info
  doCheck = false; # the test suite needs root, network namespaces and sshd
  meta.mainProgram = "fleetnix";
}
