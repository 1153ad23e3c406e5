# services.fleet-router: fleetnix's task router on the control plane (`fleetnix router`).
# Hand-written; the rendered nix/services/nats.nix imports it and sets its values.
# It answers fleet.dispatch.<role> on the fleet's NATS, routes each task to a healthy node of the
# role, keeps the fleet-health bucket and sends the ntfy alerts. Its NATS password (user _router)
# is handed to it as a systemd credential and never appears in its command line or the store.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.fleet-router;
  inherit (lib) mkOption mkEnableOption mkIf types;
in
{
  options.services.fleet-router = {
    enable = mkEnableOption "the fleetnix task router";

    package = mkOption {
      type = types.package;
      default = pkgs.fleetnix or (pkgs.writeShellScriptBin "fleetnix" ''
        echo "fleetnix is not packaged for this system: set services.fleet-router.package" >&2
        exit 1
      '');
      defaultText = lib.literalExpression "pkgs.fleetnix";
      description = "Package providing the `fleetnix` executable (the flake's packages.default).";
    };

    fleetDir = mkOption {
      type = types.path;
      description = "Directory holding nodes.yml, fleet.yml and services.yml (the fleet settings: strategy, timeouts, ntfy).";
    };

    natsUrl = mkOption {
      type = types.str;
      example = "nats://100.64.0.1:4222";
      description = "NATS server URL (`--nats-url`).";
    };

    passwordFile = mkOption {
      type = types.path;
      description = "File holding the router's NATS password (e.g. an agenix secret path), loaded as a systemd credential.";
    };
  };

  config = mkIf cfg.enable {
    systemd.services.fleet-router = {
      description = "fleetnix task router";
      wantedBy = [ "multi-user.target" ];
      # It talks to the local nats-server over the tailnet address.
      wants = [ "nats.service" "tailscaled.service" ];
      after = [ "nats.service" "tailscaled.service" "tailscaled-autoconnect.service" ];
      serviceConfig = import ./hardening.nix // {
        ExecStart = lib.escapeShellArgs [
          "${cfg.package}/bin/fleetnix"
          "--fleet-dir" "${cfg.fleetDir}"
          "router"
          "--nats-url" cfg.natsUrl
        ] + " --password-file %d/nats-password";
        LoadCredential = [ "nats-password:${toString cfg.passwordFile}" ];
        # The router never ends on its own: any end (even exit 0) is restarted.
        Restart = "always";
        RestartSec = "5s";
      };
    };
  };
}
