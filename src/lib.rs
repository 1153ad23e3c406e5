//! fleetnix: provision a fleet of NixOS machines on a Tailscale mesh.
//!
//! Data flows one way, and the folders are its stages; a stage imports only the stages above it
//! in this list (`.ci/import-circles.py` fails CI on any circle):
//!
//! | stage | folder | owns |
//! |---|---|---|
//! | types | [`model`] | the validated fleet: names, roles, addresses, settings, the catalog |
//! | 1 | [`manifest`] | `fleet/*.yml` → [`model::Fleet`], every problem with file, line and field; `hosts/` checks |
//! | 2 | [`spec`] | each node's resolved settings ([`spec::NodeSpec`]) and which secrets exist |
//! | 3 | [`outputs`] | pure renderers: NixOS modules, the NATS module, cloud-init, the agent unit |
//! | 3 | [`acl`] | the Tailscale policy: render, parse, evaluate, check, matrix, apply |
//! | 3 | [`secrets`] | age secrets: store, rekey, NATS passwords, minted keys |
//! | executor | [`tailscale`] | the `tailscale` CLI and the Tailscale API |
//! | executor | [`health`] | observation: probes, `status`, `health --watch`, alerts |
//! | executor | [`bus`] | orchestration on NATS: permissions, dispatch, heartbeats, registry, router |
//! | executor | [`deploy`] | `deploy` and `plan` over SSH: the program, its runner, guard and gate |
//! | executor | [`bootstrap`] | fresh VMs into the fleet, and their cloud-init |
//!
//! Shared foundations, used by every stage and importing none: [`exec`] (processes, SSH,
//! quoting), [`secret`] (the one secret string type), [`nix`] (writing Nix safely), [`fsutil`]
//! (atomic writes), [`lock`] (one fleetnix per repository), [`http`], [`suggest`].
//! The binary's thin layer is `src/cli/` (one file per command).

pub mod acl;
pub mod bootstrap;
pub mod bus;
pub mod deploy;
pub mod exec;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod lock;
pub mod manifest;
pub mod model;
pub mod nix;
pub mod outputs;
pub mod secret;
pub mod secrets;
pub mod spec;
pub mod suggest;
pub mod tailscale;
