{
  description = "A fleet managed by fleetnix";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    agenix.url = "github:ryantm/agenix";
    agenix.inputs.nixpkgs.follows = "nixpkgs";
    fleetnix.url = "github:fleetnix/fleetnix";
    fleetnix.inputs.nixpkgs.follows = "nixpkgs";
  };

  # Edit fleet/*.yml, run `fleetnix render`, commit nix/nodes/, then `nix flake check`.
  outputs = { self, nixpkgs, agenix, fleetnix, ... }:
    let
      lib = nixpkgs.lib;
      nodeFiles = lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n)
        (if builtins.pathExists ./nix/nodes then builtins.readDir ./nix/nodes else { });
      mkNode = name: lib.nixosSystem {
        modules = [
          agenix.nixosModules.default
          fleetnix.nixosModules.default
          (./nix/nodes + "/${name}.nix")
        ] ++ lib.optional (builtins.pathExists (./hosts + "/${name}/default.nix")) (./hosts + "/${name}/default.nix");
      };
    in
    {
      nixosConfigurations = lib.genAttrs (map (lib.removeSuffix ".nix") (builtins.attrNames nodeFiles)) mkNode;
      checks.x86_64-linux = lib.mapAttrs' (n: c: lib.nameValuePair "node-${n}" c.config.system.build.toplevel)
        self.nixosConfigurations;
    };
}
