# Evaluates a rendered node module with a stub `config` and describes every value,
# keeping path values distinguishable (and never copying them to the store).
{ file }:
let
  module = import file {
    config.age.secrets."tailscale-authkey".path = "/run/agenix/tailscale-authkey";
    config.age.secrets."nats-password".path = "/run/agenix/nats-password";
  };
  describe = v:
    if builtins.isPath v then { __type = "path"; value = toString v; }
    else if builtins.isAttrs v then builtins.mapAttrs (_: describe) v
    else if builtins.isList v then map describe v
    else v;
in
describe module
