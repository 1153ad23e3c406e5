# lib.mkFleet: the NixOS systems and checks of a fleet repository managed by fleetnix. Both this
# repository's flake.nix and the template's (nix/template/flake.nix) call it, so they cannot disagree.
{ fleetnixModule }:
{
  # mkFleet { self, nixpkgs, agenix, dir, modules ? [ ], systems ? … } →
  #   { nixosConfigurations.<node>; checks.<system>.{ fleet-files, node-<node> } }
  #
  # - dir: the fleet repository (`./.` in its flake.nix): nix/nodes/<node>.nix (rendered by
  #   `fleetnix render`) become nixosConfigurations.<node>, each with every hosts/<node>/*.nix
  #   (hardware-configuration.nix is what `nixos-generate-config` writes);
  # - modules: extra NixOS modules for every node (e.g. one setting services.omp-agent.package
  #   from a flake input);
  # - checks: every node's system of that platform, and `fleet-files`, a derivation running
  #   `fleetnix validate`, `render --check` and `acl check` on the fleet (so a stale nix/nodes/
  #   fails `nix flake check`).
  mkFleet =
    { self
    , nixpkgs
    , agenix
    , dir
    , modules ? [ ]
    , systems ? [ "x86_64-linux" "aarch64-linux" ]
    }:
    let
      lib = nixpkgs.lib;
      nixFiles = d:
        builtins.attrNames (lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name)
          (if builtins.pathExists d then builtins.readDir d else { }));
      nodeNames = map (lib.removeSuffix ".nix") (nixFiles (dir + "/nix/nodes"));
      # hosts/<node>/*.nix: hardware-configuration.nix and anything else hand-written for the node.
      hostModules = name: map (f: dir + "/hosts/${name}/${f}") (nixFiles (dir + "/hosts/${name}"));
      mkNode = name: lib.nixosSystem {
        modules = [
          agenix.nixosModules.default
          fleetnixModule
          (dir + "/nix/nodes/${name}.nix")
          # The router (enabled on the control plane by nix/services/nats.nix) runs this
          # fleetnix unless the fleet sets services.fleet-router.package itself.
          ({ pkgs, ... }: { services.fleet-router.package = lib.mkDefault (pkgs.callPackage ./package.nix { }); })
        ] ++ hostModules name ++ modules;
      };
      nodeChecks = system:
        lib.mapAttrs' (name: node: lib.nameValuePair "node-${name}" node.config.system.build.toplevel)
          (lib.filterAttrs (_: node: node.pkgs.stdenv.hostPlatform.system == system)
            (self.nixosConfigurations or { }));
      fleetCheck = pkgs:
        let fleetnix = pkgs.callPackage ./package.nix { };
        in pkgs.runCommand "fleetnix-fleet-files" { nativeBuildInputs = [ fleetnix ]; } ''
          fleetnix --root ${dir} validate
          fleetnix --root ${dir} render --check
          fleetnix --root ${dir} acl check
          touch $out
        '';
    in
    {
      nixosConfigurations = lib.genAttrs nodeNames mkNode;
      checks = lib.genAttrs systems (system:
        { fleet-files = fleetCheck nixpkgs.legacyPackages.${system}; } // nodeChecks system);
    };
}
