//! Rendered node modules against real Nix: every `.nix` file parses with
//! `nix-instantiate --parse`, node modules evaluate strictly, and every option they set
//! exists in the real NixOS option declarations (`../shared/nixos/options.json`) with
//! a value of the declared type.

mod common;

use common::{example_fleet, nix_instantiate, repo, shared_file};
use fleetnix::{nix, plan, render};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn options_json() -> Value {
    let path = shared_file("nixos/options.json")
        .expect("shared/nixos/options.json next to the repository");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Renders the example fleet into a temp root; returns the node modules' paths.
fn rendered_example() -> (tempfile::TempDir, Vec<PathBuf>) {
    let fleet = example_fleet();
    let files = render::render_fleet(
        &fleet,
        &plan::plan(&fleet),
        "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let changes = render::compare(dir.path(), &files).unwrap();
    render::apply(dir.path(), &files, &changes).unwrap();
    assert!(files.contains_key(Path::new("nix/services/nats.nix")));
    let paths = files
        .keys()
        .filter(|p| p.starts_with("nix/nodes"))
        .map(|p| dir.path().join(p))
        .collect();
    (dir, paths)
}

#[test]
fn every_nix_file_in_the_repo_parses_with_nix() {
    let Some(bin) = nix_instantiate() else { return };
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() && !name.starts_with('.') && name != "target" {
                walk(&p, out);
            } else if name.ends_with(".nix") {
                out.push(p);
            }
        }
    }
    walk(&repo(), &mut files);
    let (_dir, rendered) = rendered_example();
    files.extend(rendered);
    assert!(files.iter().any(|f| f.ends_with("flake.nix")));
    assert!(files.iter().any(|f| f.ends_with("omp-agent.nix")));
    for f in &files {
        let out = Command::new(&bin).arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // rnix agrees with Nix.
        nix::check_syntax(&std::fs::read_to_string(f).unwrap()).unwrap();
    }
}

/// Evaluates a node module strictly with a stub `config`, paths kept as `{__type = "path"}`.
fn evaluate(bin: &Path, module: &Path) -> Value {
    let out = Command::new(bin)
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("tests/nix/describe.nix"))
        .arg("--arg")
        .arg("file")
        .arg(module)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval of {} failed: {}",
        module.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Option declarations: loc (with `<name>` wildcards) → type string.
fn declarations(options: &Value) -> Vec<(Vec<String>, String)> {
    options["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let loc = o["loc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (loc, o["type"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Options declared by our own omp-agent module (`name = mkOption` / `mkEnableOption`).
fn agent_options() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(repo().join("nix/modules/omp-agent.nix")).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some((name, rest)) = t.split_once(" = mkOption") {
            let ty = text[text.find(t).unwrap()..]
                .lines()
                .find_map(|l| l.trim().strip_prefix("type = "))
                .unwrap()
                .trim_end_matches(';')
                .to_string();
            out.push((
                vec!["services".into(), "omp-agent".into(), name.to_string()],
                ty,
            ));
            let _ = rest;
        } else if let Some((name, _)) = t.split_once(" = mkEnableOption") {
            out.push((
                vec!["services".into(), "omp-agent".into(), name.to_string()],
                "boolean".into(),
            ));
        }
    }
    assert!(out.len() >= 6, "agent options found: {out:?}");
    out
}

fn loc_matches(decl: &[String], path: &[String]) -> bool {
    decl.len() == path.len() && decl.iter().zip(path).all(|(d, p)| d == "<name>" || d == p)
}

fn is_prefix(decl: &[String], path: &[String]) -> bool {
    decl.len() > path.len() && decl.iter().zip(path).all(|(d, p)| d == "<name>" || d == p)
}

fn is_path(v: &Value) -> bool {
    v.get("__type").and_then(Value::as_str) == Some("path")
}

/// Does `v` have the NixOS type named `ty` (the subset of type descriptions we render)?
fn has_type(ty: &str, v: &Value) -> bool {
    if let Some(rest) = ty.strip_prefix("null or ") {
        return v.is_null() || has_type(rest, v);
    }
    if let Some(rest) = ty.strip_prefix("list of ") {
        return v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| has_type(rest, x)));
    }
    if let Some(rest) = ty.strip_prefix("one of ") {
        let allowed: Vec<String> = rest
            .split(", ")
            .map(|s| s.trim_matches('"').to_string())
            .collect();
        return v.as_str().is_some_and(|s| allowed.iter().any(|a| a == s));
    }
    match ty {
        "boolean" => v.is_boolean(),
        "string" | "types.str" => v.is_string(),
        "absolute path" => is_path(v) || v.as_str().is_some_and(|s| s.starts_with('/')),
        "path" | "types.path" => is_path(v) || v.as_str().is_some_and(|s| s.starts_with('/')),
        "types.nullOr types.path" => v.is_null() || has_type("types.path", v),
        t if t.starts_with("16 bit unsigned integer") => v.as_u64().is_some_and(|n| n <= 65535),
        t if t.starts_with("string matching the pattern") => {
            // networking.hostName: ^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$
            v.as_str().is_some_and(|s| {
                s.len() <= 63
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
        }
        t if t.starts_with("types.strMatching") => v
            .as_str()
            .is_some_and(|s| fleetnix::model::check_label(s).is_ok()),
        "types.nonEmptyListOf (types.strMatching \"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\")" => {
            v.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|x| {
                        x.as_str()
                            .is_some_and(|s| fleetnix::model::check_label(s).is_ok())
                    })
            })
        }
        _ => panic!("type `{ty}` not understood by the test: extend has_type"),
    }
}

/// Walks the evaluated module; every leaf must be a declared option of the right type.
fn check_values(
    decls: &[(Vec<String>, String)],
    path: &mut Vec<String>,
    v: &Value,
    seen: &mut Vec<String>,
) {
    if path.len() == 1 && path[0] == "imports" {
        // Module imports are not options; they must be paths to files that exist.
        for p in v.as_array().expect("imports is a list") {
            assert!(is_path(p), "import {p} is not a path");
            assert!(
                Path::new(p["value"].as_str().unwrap()).exists(),
                "imported {p} does not exist"
            );
        }
        seen.push("imports".into());
        return;
    }
    if let Some((_, ty)) = decls.iter().find(|(loc, _)| loc_matches(loc, path)) {
        if !ty.contains("submodule") {
            assert!(
                has_type(ty, v),
                "{} = {v} is not of type {ty}",
                path.join(".")
            );
            seen.push(path.join("."));
            return;
        }
    }
    match v.as_object() {
        Some(map) if !is_path(v) && decls.iter().any(|(loc, _)| is_prefix(loc, path)) => {
            for (k, x) in map {
                path.push(k.clone());
                check_values(decls, path, x, seen);
                path.pop();
            }
        }
        _ => panic!("{} is not a NixOS option (value {v})", path.join(".")),
    }
}

#[test]
fn rendered_modules_evaluate_to_declared_options_of_the_right_type() {
    let Some(bin) = nix_instantiate() else { return };
    let mut decls = declarations(&options_json());
    decls.extend(agent_options());
    let (_dir, files) = rendered_example();
    for f in &files {
        let value = evaluate(&bin, f);
        let mut seen = Vec::new();
        check_values(&decls, &mut Vec::new(), &value, &mut seen);
        for must in [
            "networking.hostName",
            "services.tailscale.enable",
            "services.tailscale.authKeyFile",
            "services.tailscale.extraUpFlags",
            "services.tailscale.useRoutingFeatures",
            "age.secrets.tailscale-authkey.file",
            "networking.firewall.interfaces.tailscale0.allowedTCPPorts",
            "services.omp-agent.roles",
            "services.omp-agent.natsCredentialsFile",
            "age.secrets.nats-password.file",
        ] {
            assert!(
                seen.iter().any(|s| s == must),
                "{} does not set {must}: {seen:?}",
                f.display()
            );
        }
    }
}

#[test]
fn evaluated_values_follow_the_plan() {
    let Some(bin) = nix_instantiate() else { return };
    let (dir, _files) = rendered_example();
    let cp = evaluate(&bin, &dir.path().join("nix/nodes/control-01.nix"));
    assert_eq!(cp["networking"]["hostName"], "control-01");
    assert_eq!(
        cp["networking"]["firewall"]["interfaces"]["tailscale0"]["allowedTCPPorts"],
        serde_json::json!([3000, 4000, 4222, 5432, 6379, 7233, 8080, 8090])
    );
    // Nothing but tailscale0 gets role ports.
    assert_eq!(
        cp["networking"]["firewall"]["interfaces"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert!(cp["networking"]["firewall"]
        .get("allowedTCPPorts")
        .is_none());
    let w = evaluate(&bin, &dir.path().join("nix/nodes/worker-01.nix"));
    assert_eq!(
        w["services"]["tailscale"]["authKeyFile"],
        "/run/agenix/tailscale-authkey"
    );
    assert_eq!(
        w["services"]["tailscale"]["extraUpFlags"],
        serde_json::json!([
            "--ssh",
            "--accept-routes",
            "--hostname=worker-01",
            "--advertise-tags=tag:worker"
        ])
    );
    assert_eq!(
        w["services"]["omp-agent"]["controlPlane"],
        "100.64.0.1:4000"
    );
    assert_eq!(
        w["services"]["omp-agent"]["roles"],
        serde_json::json!(["glm-worker", "kg-writer"])
    );
    assert_eq!(
        w["services"]["omp-agent"]["natsUrl"],
        "nats://100.64.0.1:4222"
    );
    // The secret file is the plan's, inside the flake's secrets/ directory.
    let file = w["age"]["secrets"]["tailscale-authkey"]["file"]["value"]
        .as_str()
        .unwrap();
    assert_eq!(
        Path::new(file),
        dir.path().join(fleetnix::plan::authkey_file(
            &fleetnix::model::NodeName::parse("worker-01").unwrap()
        ))
    );
}

#[test]
fn nix_string_escaping_round_trips_through_real_nix() {
    let Some(bin) = nix_instantiate() else { return };
    let nasty = [
        "plain",
        "quote\" and backslash \\",
        "${builtins.currentTime}",
        "$${x}",
        "dollar at end $",
        "''${antiquote}''",
        "newline\nand\ttab\r",
        "unicode ✓ é",
        "\\${x}",
    ];
    let list =
        serde_json::Value::Array(nasty.iter().map(|s| Value::String(s.to_string())).collect());
    let expr = nix::literal(&list);
    let out = Command::new(&bin)
        .args(["--eval", "--strict", "--json", "-E"])
        .arg(&expr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, nasty);
}
