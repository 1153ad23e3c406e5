# fleetnix itself, from this repository's source (used by packages.fleetnix and the fleet check).
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "fleetnix";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  doCheck = false; # the test suite needs root, network namespaces and sshd
  meta.mainProgram = "fleetnix";
}
