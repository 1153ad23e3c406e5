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

      # Every rendered node module in nix/nodes/ becomes a nixosConfiguration.
      nodeFiles = lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name)
        (if builtins.pathExists ./nix/nodes then builtins.readDir ./nix/nodes else { });
      nodeNames = map (lib.removeSuffix ".nix") (builtins.attrNames nodeFiles);

      # Optional hand-written hardware configuration: hosts/<node>/*.nix.
      hostModules = name:
        let dir = ./hosts + "/${name}";
        in if builtins.pathExists dir then
          map (f: dir + "/${f}") (builtins.filter (lib.hasSuffix ".nix") (builtins.attrNames (builtins.readDir dir)))
        else [ ];

      mkNode = name: lib.nixosSystem {
        modules = [
          agenix.nixosModules.default
          self.nixosModules.default
          (./nix/nodes + "/${name}.nix")
        ] ++ hostModules name;
      };
    in
    {
      nixosModules = {
        omp-agent = ./nix/modules/omp-agent.nix;
        fleet-node = ./nix/modules/fleet-node.nix;
        default = { imports = [ ./nix/modules/omp-agent.nix ./nix/modules/fleet-node.nix ]; };
      };

      nixosConfigurations = lib.genAttrs nodeNames mkNode;

      # `nix flake check` evaluates and builds every node of the matching system.
      checks = forAllSystems (pkgs:
        lib.mapAttrs' (name: node: lib.nameValuePair "node-${name}" node.config.system.build.toplevel)
          (lib.filterAttrs (_: node: node.pkgs.stdenv.hostPlatform.system == pkgs.stdenv.hostPlatform.system)
            self.nixosConfigurations));

      packages = forAllSystems (pkgs: rec {
        fleetnix = pkgs.rustPlatform.buildRustPackage {
          pname = "fleetnix";
          version = "0.1.0";
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          doCheck = false; # the test suite needs root, network namespaces and sshd
        };
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
