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
  # nixos-rebuild --target-host copies unsigned closures as the SSH user: root, or a non-root
  # ssh_user in wheel (which --sudo needs anyway).
  nix.settings.trusted-users = [ "root" "@wheel" ];
  nix.settings.experimental-features = [ "nix-command" "flakes" ];
}
