# Settings every fleet node shares. Hand-written; imported by the flake for every node.
{ lib, ... }:
{
  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";

  # Deploys use Tailscale SSH on the tailnet address. OpenSSH still runs so the node has host
  # keys (secrets are encrypted to them), but its port is not opened on any interface.
  services.openssh = {
    enable = true;
    openFirewall = false;
    settings.PasswordAuthentication = false;
  };
  age.identityPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];

  networking.firewall.enable = true;
  # Deploys that switch configurations need this for nixos-rebuild --target-host.
  nix.settings.trusted-users = [ "root" ];
  nix.settings.experimental-features = [ "nix-command" "flakes" ];
}
