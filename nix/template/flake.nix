{
  description = "A fleet managed by fleetnix";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    agenix.url = "github:ryantm/agenix";
    agenix.inputs.nixpkgs.follows = "nixpkgs";
    fleetnix.url = "github:fleetnix/fleetnix";
    fleetnix.inputs.nixpkgs.follows = "nixpkgs";
    fleetnix.inputs.agenix.follows = "agenix";
  };

  # Edit fleet/*.yml, add hosts/<node>/hardware-configuration.nix, run `fleetnix render`, commit,
  # then `nix flake check`.
  outputs = { self, nixpkgs, agenix, fleetnix, ... }:
    fleetnix.lib.mkFleet {
      inherit self nixpkgs agenix;
      dir = ./.;
      # Extra modules for every node, e.g. the agent's package from a flake input providing omp:
      # modules = [ ({ pkgs, ... }: { services.omp-agent.package = omp.packages.${pkgs.stdenv.hostPlatform.system}.default; }) ];
    };
}
