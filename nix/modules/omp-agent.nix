# services.omp-agent: the OMP agent runtime that pulls tasks for the node's roles from NATS.
# Hand-written; rendered node modules (nix/nodes/*.nix) only set its values.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.omp-agent;
  inherit (lib) mkOption mkEnableOption mkIf types;
in
{
  options.services.omp-agent = {
    enable = mkEnableOption "the OMP agent runtime";

    package = mkOption {
      type = types.nullOr types.package;
      default = pkgs.omp or null;
      defaultText = lib.literalExpression "pkgs.omp or null";
      description = ''
        Package providing the `omp` executable. nixpkgs has none: set it from a flake input
        providing omp (a module in `fleetnix.lib.mkFleet { modules = [ … ]; }`) or in
        `hosts/<node>/*.nix`. While it is null the agent's unit is not installed and evaluation
        prints a warning.
      '';
    };

    nodeName = mkOption {
      type = types.strMatching "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
      description = "Name of this node in the fleet (`--node-name`).";
    };

    controlPlane = mkOption {
      type = types.str;
      example = "100.64.0.1:4000";
      description = "Control plane address and port (`--control-plane`).";
    };

    roles = mkOption {
      type = types.nonEmptyListOf (types.strMatching "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?");
      description = "Roles whose tasks this node takes (`--roles`).";
    };

    natsUrl = mkOption {
      type = types.str;
      example = "nats://100.64.0.1:4222";
      description = "NATS server URL (`--nats-url`).";
    };

    natsCredentialsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "NATS credentials file (e.g. an agenix secret path), passed as NATS_CREDS_FILE.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra arguments for `omp agent start`.";
    };
  };

  config = mkIf cfg.enable {
    warnings = lib.optional (cfg.package == null) ''
      services.omp-agent.package is not set (and nixpkgs has no `omp`), so the OMP agent of ${cfg.nodeName} is not installed.
      Set it to a package providing bin/omp: from a flake input providing omp, in a module given to
      fleetnix.lib.mkFleet { modules = [ ({ pkgs, ... }: { services.omp-agent.package = omp.packages.''${pkgs.stdenv.hostPlatform.system}.default; }) ]; },
      or in hosts/${cfg.nodeName}/*.nix (services.omp-agent.package = …;).'';

    systemd.services.omp-agent = mkIf (cfg.package != null) {
      description = "OMP agent (${cfg.nodeName})";
      wantedBy = [ "multi-user.target" ];
      # The agent reaches the control plane over the tailnet: start once Tailscale is up.
      wants = [ "network-online.target" "tailscaled.service" ];
      after = [ "network-online.target" "tailscaled.service" "tailscaled-autoconnect.service" ];
      environment = lib.optionalAttrs (cfg.natsCredentialsFile != null) {
        NATS_CREDS_FILE = "%d/nats-creds";
      };
      serviceConfig = import ./hardening.nix // {
        ExecStart = lib.escapeShellArgs ([
          "${cfg.package}/bin/omp" "agent" "start"
          "--node-name" cfg.nodeName
          "--control-plane" cfg.controlPlane
          "--roles" (lib.concatStringsSep "," cfg.roles)
          "--nats-url" cfg.natsUrl
        ] ++ cfg.extraArgs);
        LoadCredential = lib.optional (cfg.natsCredentialsFile != null) "nats-creds:${toString cfg.natsCredentialsFile}";
        Restart = "on-failure";
        RestartSec = "5s";
        StateDirectory = "omp-agent";
      };
    };
  };
}
