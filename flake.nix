{
  description = "fleetnix: a NixOS fleet on a Tailscale mesh";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    agenix = {
      url = "github:ryantm/agenix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, agenix, ... }:
    let
      lib = nixpkgs.lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      fleetLib = import ./nix/lib.nix { fleetnixModule = self.nixosModules.default; };

      # The example fleet of this repository (fleet/, nix/nodes/, hosts/, secrets/).
      fleet = fleetLib.mkFleet {
        inherit self nixpkgs agenix systems;
        dir = ./.;
      };
    in
    {
      lib = { inherit (fleetLib) mkFleet; };

      # Attribute sets, not bare paths: Nix 2.8's `flake check` accepts nothing else.
      nixosModules = {
        omp-agent = { imports = [ ./nix/modules/omp-agent.nix ]; };
        fleet-node = { imports = [ ./nix/modules/fleet-node.nix ]; };
        fleet-router = { imports = [ ./nix/modules/fleet-router.nix ]; };
        default = {
          imports = [ ./nix/modules/omp-agent.nix ./nix/modules/fleet-node.nix ./nix/modules/fleet-router.nix ];
        };
      };

      inherit (fleet) nixosConfigurations;

      # `nix flake check`: every node's system (of the matching platform) and fleet-files
      # (`fleetnix validate`, `render --check`, `acl check`).
      checks = fleet.checks;

      packages = forAllSystems (pkgs: rec {
        fleetnix = pkgs.callPackage ./nix/package.nix { };
        default = fleetnix;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt age openssh nats-server cloud-init ];
        };
      });

      templates.default = {
        path = ./nix/template;
        description = "A new fleet repository managed by fleetnix";
      };
    };
}
