//! The control plane's NixOS module for the bus: `nix/services/nats.nix`.
//!
//! It enables `services.nats` and runs nats-server on [`ServerPlan::to_conf`] — the very text the
//! tests start a real nats-server with — with the passwords in the unit's environment, loaded from
//! the age secret `secrets/<control-plane>/nats-server-env.age`. It also enables the
//! router (`nix/modules/fleet-router.nix`, part of fleetnix's `nixosModules.default`), with its password from
//! `secrets/<control-plane>/nats-router-password.age` and the fleet settings from `fleet/`.

use super::conf::is_var_name;
use super::creds::{ROUTER_SECRET, SERVER_ENV_SECRET};
use super::{BusError, ServerPlan};
use crate::fsutil::write_atomic;
use crate::plan::host_port;
use crate::secrets::{SecretId, SecretKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the module goes, relative to the repository root.
pub const NIX_PATH: &str = "nix/services/nats.nix";

const TEMPLATE: &str = include_str!("../../templates/nats.nix.tera");

fn nix_filter(v: &tera::Value, _: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    Ok(tera::Value::String(crate::nix::literal(v)))
}

/// `text` as a Nix literal that reads well: an indented `''…''` string whose lines are prefixed
/// with `indent` spaces (Nix strips them again), `''` and `${` escaped. Falls back to a
/// double-quoted literal when the text would not survive indentation stripping exactly (control
/// characters other than newlines, no trailing newline, or every line already indented).
pub fn indented_string(text: &str, indent: usize) -> String {
    let exact = text.ends_with('\n')
        && !text.chars().any(|c| c.is_control() && c != '\n')
        && text.lines().any(|l| !l.is_empty() && !l.starts_with(' '));
    if !exact {
        return crate::nix::string(text);
    }
    let pad = " ".repeat(indent);
    let mut out = String::from("''\n");
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(&pad);
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, chars.peek()) {
                    ('\'', Some('\'')) => {
                        chars.next();
                        out.push_str("'''");
                    }
                    ('$', Some('{')) => {
                        chars.next();
                        out.push_str("''${");
                    }
                    _ => out.push(c),
                }
            }
        }
        out.push('\n');
    }
    out.push_str(&" ".repeat(indent.saturating_sub(2)));
    out.push_str("''");
    out
}

/// Renders the module. Pure: nothing is written. `sources` names the manifest files for the header.
pub fn render(plan: &ServerPlan, sources: &str) -> Result<String, BusError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    t.register_filter("nix", nix_filter);
    t.add_raw_template("nats.nix", TEMPLATE)
        .map_err(BusError::Template)?;
    // Comments must stay on one line whatever the paths contain.
    let one_line = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let vars = plan.password_vars();
    // Invariant: password_var builds names of [A-Z0-9_] from validated node names; they are
    // written unquoted into a shell script, so check it rather than trust it.
    if let Some(bad) = vars.iter().find(|v| !is_var_name(v)) {
        return Err(BusError::Template(tera::Error::msg(format!(
            "bad variable name {bad:?}"
        ))));
    }
    let mut cx = tera::Context::new();
    cx.insert("sources", &one_line(sources));
    cx.insert("server_name", plan.server_name.as_str());
    cx.insert("listen", &host_port(&plan.host, plan.port));
    cx.insert(
        "users",
        &plan
            .users
            .iter()
            .map(|u| u.user.to_string())
            .collect::<Vec<_>>(),
    );
    cx.insert("port", &plan.port);
    cx.insert("conf", &indented_string(&plan.to_conf(), 4));
    cx.insert("vars", &vars);
    cx.insert("env_secret", SERVER_ENV_SECRET);
    // `../../secrets + "/<cp>/nats-server-env.age"`: the path below secrets/.
    let env_id = SecretId::new(plan.server_name.clone(), SecretKind::NatsServerEnv);
    cx.insert("env_secret_file", &env_id.secrets_path());
    cx.insert("store_dir", &one_line(&plan.store_dir));
    cx.insert("router_user", &plan.router.user);
    cx.insert("router_secret", ROUTER_SECRET);
    let router_id = SecretId::new(plan.server_name.clone(), SecretKind::NatsRouterPassword);
    cx.insert("router_secret_file", &router_id.secrets_path());
    cx.insert(
        "nats_url",
        &format!("nats://{}", host_port(&plan.host, plan.port)),
    );
    let text = t.render("nats.nix", &cx).map_err(BusError::Template)?;
    crate::nix::check_syntax(&text).map_err(|errors| BusError::Syntax {
        path: PathBuf::from(NIX_PATH),
        errors,
    })?;
    Ok(text)
}

/// Is the module under `root` up to date? `Ok(None)` if so, else the unified diff (old → new)
/// or `Some("")` when the file is missing.
pub fn check(root: &Path, text: &str) -> Result<Option<String>, BusError> {
    let path = root.join(NIX_PATH);
    match std::fs::read_to_string(&path) {
        Ok(old) if old == text => Ok(None),
        Ok(old) => Ok(Some(
            similar::TextDiff::from_lines(old.as_str(), text)
                .unified_diff()
                .header(&format!("a/{NIX_PATH}"), &format!("b/{NIX_PATH}"))
                .to_string(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(String::new())),
        Err(source) => Err(BusError::Io { path, source }),
    }
}

/// Writes the module under `root` atomically (mode 0644: it holds no secret).
pub fn write(root: &Path, text: &str) -> Result<PathBuf, BusError> {
    let path = root.join(NIX_PATH);
    write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| BusError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
