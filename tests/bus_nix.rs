//! The control plane's NATS module (`nix/services/nats.nix`): fresh, deterministic, and running
//! exactly the configuration the server tests run.

mod bus_support;
mod common;

use bus_support::nats_server_bin;
use common::{example_fleet, nix_instantiate, repo};
use fleetnix::bus::{self, creds};
use fleetnix::outputs::nats as busnix;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const SOURCES: &str = "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml";

fn eval(nix: &Path, expr: &str, args: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(nix);
    cmd.args(["--eval", "--strict", "--json", "--expr", expr]);
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "nix-instantiate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn committed_module_is_fresh_and_rendering_is_deterministic() {
    let plan = bus::server_plan(&example_fleet()).unwrap();
    let a = busnix::render(&plan, SOURCES).unwrap();
    let b = busnix::render(&plan, SOURCES).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        busnix::check(&repo(), &a).unwrap(),
        None,
        "{} is stale: re-render it",
        busnix::NIX_PATH
    );
    // It names each password variable but holds no password.
    for u in &plan.users {
        assert!(a.contains(&format!("\"password\": ${},", u.password_var)));
    }
    let creds = creds::BusCredentials::generate(&plan);
    for u in &plan.users {
        assert!(!a.contains(creds.password(u.user.as_str()).unwrap().expose()));
    }
}

#[test]
fn write_then_check_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let plan = bus::server_plan(&example_fleet()).unwrap();
    let text = busnix::render(&plan, SOURCES).unwrap();
    assert_eq!(
        busnix::check(dir.path(), &text).unwrap(),
        Some(String::new())
    );
    let path = busnix::write(dir.path(), &text).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(busnix::check(dir.path(), &text).unwrap(), None);
    let diff = busnix::check(dir.path(), &text.replace("4222", "4223")).unwrap();
    assert!(diff.unwrap().contains("+    port = 4223;"));
}

/// Evaluates the module with stub `config`, `lib` and `pkgs` that record what they are given.
const STUB_EVAL: &str = r#"
{ file }:
let
  module = import file {
    config.age.secrets."nats-server-env" = { path = "/run/agenix/nats-server-env"; file = "@env-secret"; };
    config.age.secrets."nats-router-password" = { path = "/run/agenix/nats-router-password"; file = "@router-secret"; };
    lib.mkForce = v: { __force = v; };
    pkgs = {
      nats-server = { outPath = "@nats-server"; };
      writeText = name: text: { outPath = builtins.toJSON { writeText = name; inherit text; }; };
      runCommand = name: env: script: {
        outPath = builtins.toJSON { runCommand = name; inherit script; inputs = map toString env.nativeBuildInputs; };
      };
    };
  };
  describe = v:
    if builtins.isPath v then { __path = toString v; }
    else if builtins.isAttrs v then builtins.mapAttrs (_: describe) v
    else if builtins.isList v then map describe v
    else v;
in describe module
"#;

#[test]
fn module_runs_exactly_the_configuration_the_server_tests_run() {
    let Some(nix) = nix_instantiate() else { return };
    let fleet = example_fleet();
    let plan = bus::server_plan(&fleet).unwrap();
    let file = repo().join(busnix::NIX_PATH);
    let m = eval(&nix, STUB_EVAL, &[("file", file.to_str().unwrap())]);

    assert_eq!(
        m["services"]["nats"],
        serde_json::json!({"enable": true, "serverName": "control-01", "port": 4222, "validateConfig": false, "jetstream": true})
    );
    // The router runs beside the server, as its own user, with its password as a credential.
    // No import by relative path (a template fleet has no nix/modules/): the router's options
    // come from fleetnix's nixosModules.default.
    assert!(m.get("imports").is_none(), "{}", m["imports"]);
    assert_eq!(
        m["services"]["fleet-router"],
        serde_json::json!({
            "enable": true,
            "fleetDir": {"__path": repo().join("fleet").to_str().unwrap()},
            "natsUrl": "nats://100.64.0.1:4222",
            "passwordFile": "/run/agenix/nats-router-password",
        })
    );
    assert_eq!(
        m["systemd"]["services"]["fleet-router"]["restartTriggers"],
        serde_json::json!(["@router-secret"])
    );
    assert_eq!(
        m["age"]["secrets"]["nats-router-password"]["file"]["__path"],
        repo()
            .join(creds::router_password_file(&plan.server_name))
            .to_str()
            .unwrap()
    );
    assert_eq!(
        m["age"]["secrets"]["nats-server-env"]["file"]["__path"],
        repo()
            .join(creds::server_env_file(&plan.server_name))
            .to_str()
            .unwrap()
    );
    let unit = &m["systemd"]["services"]["nats"];
    assert_eq!(
        unit["serviceConfig"]["EnvironmentFile"],
        "/run/agenix/nats-server-env"
    );
    assert_eq!(unit["restartTriggers"], serde_json::json!(["@env-secret"]));
    assert!(unit["after"]
        .as_array()
        .unwrap()
        .contains(&"tailscaled-autoconnect.service".into()));

    // ExecStart = nats-server -c <checked config>; the check exports a placeholder per variable
    // and runs `nats-server -t` on the config file, whose text is exactly ServerPlan::to_conf.
    let exec = unit["serviceConfig"]["ExecStart"]["__force"]
        .as_str()
        .unwrap();
    let checked = exec
        .strip_prefix("@nats-server/bin/nats-server -c ")
        .expect(exec);
    let checked: Value = serde_json::from_str(checked).unwrap();
    assert_eq!(checked["inputs"], serde_json::json!(["@nats-server"]));
    let script = checked["script"].as_str().unwrap();
    let exports: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .collect();
    let expected: Vec<String> = plan
        .password_vars()
        .iter()
        .map(|v| format!("{v}=placeholder"))
        .collect();
    assert_eq!(exports, expected);
    let config_line = script
        .lines()
        .find_map(|l| l.strip_prefix("nats-server --config "))
        .expect("the check runs nats-server");
    let conf: Value =
        serde_json::from_str(config_line.strip_suffix(" -t").expect(config_line)).unwrap();
    assert_eq!(conf["writeText"], "fleet-nats.conf");
    assert_eq!(conf["text"].as_str().unwrap(), plan.to_conf());
}

#[test]
fn the_configuration_takes_passwords_from_the_environment() {
    let plan = bus::server_plan(&example_fleet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nats.conf");
    std::fs::write(&path, plan.to_conf()).unwrap();
    let check = |with_env: bool| {
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&path).arg("-t").env_clear();
        if with_env {
            for v in plan.password_vars() {
                cmd.env(v, "placeholder");
            }
        }
        cmd.output().unwrap()
    };
    let ok = check(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the environment the references cannot resolve: they are variables, not literals.
    let missing = check(false);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NATS_PASSWORD_CONTROL_01"));
}

#[test]
fn indented_strings_evaluate_to_their_text() {
    let Some(nix) = nix_instantiate() else { return };
    let samples = [
        "{\n  \"a\": $X,\n\n  b\n}\n",
        "x ${y} '' ''' $${z} '\n  indented\n",
        "no newline at the end",
        "  all\n  indented\n",
        "tab\there\n",
    ];
    for text in samples {
        let lit = busnix::indented_string(text, 4);
        let expr = format!("let s = {lit}; in s");
        assert!(fleetnix::nix::check_syntax(&expr).is_ok(), "{lit}");
        assert_eq!(eval(&nix, &expr, &[]), Value::String(text.into()), "{lit}");
    }
}

/// Evaluates a hand-written service module with a stub `lib` (mkOption returns its argument,
/// mkIf its value) and the given `services.<name>` values; prints its `config`.
const MODULE_EVAL: &str = r#"
{ file, name }:
let
  lib = {
    mkOption = o: o;
    mkEnableOption = d: { description = d; };
    mkIf = c: v: if c then v else { };
    literalExpression = e: e;
    optional = c: v: if c then [ v ] else [ ];
    optionalAttrs = c: v: if c then v else { };
    concatStringsSep = builtins.concatStringsSep;
    escapeShellArgs = args: builtins.concatStringsSep " " (map (a: "'" + a + "'") args);
    types = {
      package = "package"; path = "path"; str = "str"; nullOr = t: "null or ${t}";
      listOf = t: "list of ${t}"; nonEmptyListOf = t: "non-empty list of ${t}"; strMatching = r: "str matching";
    };
  };
  values = {
    fleet-router = {
      enable = true; package = "@fleetnix"; fleetDir = "/fleet"; natsUrl = "nats://100.64.0.1:4222";
      passwordFile = "/run/agenix/nats-router-password";
    };
    omp-agent = {
      enable = true; package = "@omp"; nodeName = "w"; controlPlane = "c:1"; roles = [ "r" ];
      natsUrl = "nats://100.64.0.1:4222"; natsCredentialsFile = "/run/agenix/nats-password"; extraArgs = [ ];
    };
  };
  module = import file { inherit lib; pkgs = { }; config.services = values; };
in { options = builtins.attrNames module.options.services.${name}; config = module.config; }
"#;

#[test]
fn router_module_is_hardened_like_the_agent_and_takes_its_password_as_a_credential() {
    let Some(nix) = nix_instantiate() else { return };
    let eval_module = |file: &str, name: &str| {
        let path = repo().join(file);
        let mut cmd = Command::new(&nix);
        cmd.args(["--eval", "--strict", "--json", "--expr", MODULE_EVAL])
            .args(["--argstr", "file", path.to_str().unwrap()])
            .args(["--argstr", "name", name]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let router = eval_module("nix/modules/fleet-router.nix", "fleet-router");
    let agent = eval_module("nix/modules/omp-agent.nix", "omp-agent");
    assert_eq!(
        router["options"],
        serde_json::json!(["enable", "fleetDir", "natsUrl", "package", "passwordFile"])
    );
    let unit = &router["config"]["systemd"]["services"]["fleet-router"];
    let sc = &unit["serviceConfig"];
    assert_eq!(
        sc["ExecStart"],
        "'@fleetnix/bin/fleetnix' '--fleet-dir' '/fleet' 'router' '--nats-url' 'nats://100.64.0.1:4222' --password-file %d/nats-password"
    );
    assert_eq!(
        sc["LoadCredential"],
        serde_json::json!(["nats-password:/run/agenix/nats-router-password"])
    );
    // Any end of the router is restarted, even exit 0 (issue 21, finding 7).
    assert_eq!(sc["Restart"], "always");
    assert!(unit["after"]
        .as_array()
        .unwrap()
        .contains(&"nats.service".into()));
    assert_eq!(unit["wantedBy"], serde_json::json!(["multi-user.target"]));
    // Every hardening setting of the agent's unit, with the same value.
    let agent_sc = agent["config"]["systemd"]["services"]["omp-agent"]["serviceConfig"]
        .as_object()
        .unwrap();
    for (k, v) in agent_sc {
        if ["ExecStart", "LoadCredential", "StateDirectory", "Restart"].contains(&k.as_str()) {
            continue;
        }
        assert_eq!(&sc[k], v, "{k}");
    }
}

/// Evaluates `[ lit0 lit1 … ]` in one `nix-instantiate --eval` call; the strings, or the error.
fn eval_strings(nix: &Path, literals: &[String]) -> Result<Vec<String>, String> {
    let expr = format!("[\n{}\n]", literals.join("\n"));
    let out = Command::new(nix)
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{}\n{expr}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Finding 6 of issue 21: `'${` became `'''${`, a literal `''` followed by a live interpolation.
#[test]
fn escaping_the_review_found_wrong_evaluates_to_the_text() {
    let Some(nix) = nix_instantiate() else { return };
    let texts: Vec<String> = [
        "x'${builtins.currentSystem}y\n",
        "'''${a}\n",
        "''${a}\n",
        "'$${a}\n",
        "$'${a}'\n",
        "''\\'${a}\\${b}'''\n",
        "a'\n",
        "'\n",
    ]
    .map(String::from)
    .to_vec();
    let lits: Vec<String> = texts
        .iter()
        .map(|t| busnix::indented_string(t, 4))
        .collect();
    assert!(lits.iter().all(|l| l.starts_with("''")), "{lits:?}");
    assert_eq!(eval_strings(&nix, &lits).unwrap(), texts);
}

/// Any text of `'`, `$`, `{`, `}`, `\`, `"`, spaces, tabs, newlines and letters evaluates back to itself,
/// as an indented string when it can be one and a quoted one otherwise. Each case is a batch of
/// texts evaluated by one `nix-instantiate` call.
#[test]
fn indented_strings_round_trip_through_nix_for_any_quotes_and_dollars() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let Some(nix) = nix_instantiate() else { return };
    let text = proptest::string::string_regex("[$'{}\\\\\\n\\t\" ab]{0,16}").unwrap();
    // Half of them given the indented form's shape (a first unindented line, a final newline).
    let batch = proptest::collection::vec((text, any::<bool>()), 64);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let indented = std::cell::Cell::new(0usize);
    runner
        .run(&batch, |cases| {
            let texts: Vec<String> = cases
                .iter()
                .map(|(t, force)| if *force { format!("x{t}\n") } else { t.clone() })
                .collect();
            let lits: Vec<String> = texts
                .iter()
                .map(|t| busnix::indented_string(t, 4))
                .collect();
            for (t, l) in texts.iter().zip(&lits) {
                // Indented exactly when the text survives Nix's indentation stripping.
                let fits = t.ends_with('\n')
                    && !t.contains('\t')
                    && t.lines().any(|l| !l.is_empty() && !l.starts_with(' '));
                prop_assert_eq!(l.starts_with("''"), fits, "{:?} → {}", t, l);
            }
            indented.set(indented.get() + lits.iter().filter(|l| l.starts_with("''")).count());
            let got = eval_strings(&nix, &lits).map_err(TestCaseError::fail)?;
            prop_assert_eq!(got, texts);
            Ok(())
        })
        .unwrap();
    let indented = indented.get();
    assert!(
        indented > 48 * 8,
        "only {indented} indented literals were tried"
    );
}
