//! The control plane's NixOS module for the bus: `nix/services/nats.nix`.
//!
//! It enables `services.nats` and runs nats-server on [`ServerPlan::to_conf`] — the very text the
//! tests start a real nats-server with — with the passwords in the unit's environment, loaded from
//! the age secret `secrets/<control-plane>/nats-server-env.age`. It also enables the
//! router (`nix/modules/fleet-router.nix`, part of fleetnix's `nixosModules.default`), with its password from
//! `secrets/<control-plane>/nats-router-password.age` and the fleet settings from `fleet/`, and
//! decrypts the supervisors' password (`nats-supervisor-password.age`) for the units that run them.

use super::{render_nix, RenderError};
use crate::bus::conf::is_var_name;
use crate::bus::creds::{server_env_file, service_password_file};
use crate::bus::users::Service;
use crate::bus::{BusError, ServerPlan};
use crate::fsutil::write_atomic;
use crate::spec::host_port;
use crate::spec::secrets::SERVER_ENV_SECRET;
use std::path::{Path, PathBuf};

/// Where the module goes, relative to the repository root.
pub const NIX_PATH: &str = "nix/services/nats.nix";

/// `text` as a Nix literal that reads well: an indented `''…''` string whose lines are prefixed
/// with `indent` spaces (Nix strips them again), escaped by [`indented_line`]. Falls back to a
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
            indented_line(&mut out, line);
        }
        out.push('\n');
    }
    out.push_str(&" ".repeat(indent.saturating_sub(2)));
    out.push_str("''");
    out
}

/// Appends `line` (no newline, no control character) escaped for a Nix indented string.
///
/// Inside `''…''` Nix's lexer reads `'''` as a literal `''`, `''$` as a literal `$`, `''\c` as
/// `c`, `${` as an interpolation, `''` as the end, and any other `'` or `$` as itself. So:
/// - `''` becomes `'''` (pairs taken from the left);
/// - `${` becomes `''${` (the `$` escaped, the `{` literal);
/// - a `'` left over from pairing stays bare unless the next character written is a `'` (the
///   text goes on with `${`, whose escape starts with `''`): then it is `''\'`, since a bare
///   `'` there would make `'''`, a literal `''` followed by a live `${`;
/// - every other character, `$` and `\` included, stands for itself (`\` is special only after
///   `''`, and no `''` is ever left bare).
pub fn indented_line(out: &mut String, line: &str) {
    let chars: Vec<char> = line.chars().collect();
    let interpolation_at = |i: usize| chars.get(i) == Some(&'$') && chars.get(i + 1) == Some(&'{');
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '\'' if chars.get(i + 1) == Some(&'\'') => {
                out.push_str("'''");
                i += 2;
                continue;
            }
            '\'' if interpolation_at(i + 1) => out.push_str("''\\'"),
            '$' if interpolation_at(i) => out.push_str("''$"),
            c => out.push(c),
        }
        i += 1;
    }
}

/// Renders the module. Pure: nothing is written. `sources` names the manifest files for the header.
pub fn render(plan: &ServerPlan, sources: &str) -> Result<String, BusError> {
    let engine = super::engine().map_err(bus_error)?;
    render_with(&engine, plan, sources).map_err(bus_error)
}

/// [`render`]'s errors as the bus reports them.
fn bus_error(e: RenderError) -> BusError {
    match e {
        RenderError::Template { source, .. } => BusError::Template(source),
        RenderError::Syntax { path, errors } => BusError::Syntax { path, errors },
        RenderError::Bus(e) => e,
        RenderError::Io { path, source } => BusError::Io { path, source },
    }
}

/// [`render`] with a given engine.
pub(crate) fn render_with(
    engine: &tera::Tera,
    plan: &ServerPlan,
    sources: &str,
) -> Result<String, RenderError> {
    let vars = plan.password_vars();
    // Invariant: password_var builds names of [A-Z0-9_] from validated node names; they are
    // written unquoted into a shell script, so check it rather than trust it.
    if let Some(bad) = vars.iter().find(|v| !is_var_name(v)) {
        return Err(RenderError::Template {
            name: "nats.nix".into(),
            source: tera::Error::msg(format!("bad variable name {bad:?}")),
        });
    }
    let mut cx = tera::Context::new();
    cx.insert("sources", sources);
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
    let env_file = server_env_file(&plan.server_name);
    // `../../secrets + "/<cp>/nats-server-env.age"`: the path below secrets/.
    cx.insert(
        "env_secret_file",
        &env_file.trim_start_matches("secrets").to_string(),
    );
    cx.insert("store_dir", &plan.store_dir);
    cx.insert(
        "services",
        &plan
            .services
            .iter()
            .map(|u| u.user.clone())
            .collect::<Vec<_>>(),
    );
    for (prefix, service) in [
        ("router", Service::Router),
        ("supervisor", Service::Supervisor),
    ] {
        cx.insert(format!("{prefix}_user"), service.user());
        cx.insert(format!("{prefix}_secret"), service.secret_kind().name());
        cx.insert(
            format!("{prefix}_secret_file"),
            &service_password_file(&plan.server_name, service)
                .trim_start_matches("secrets")
                .to_string(),
        );
    }
    cx.insert(
        "nats_url",
        &format!("nats://{}", host_port(&plan.host, plan.port)),
    );
    render_nix(engine, "nats.nix", &cx, PathBuf::from(NIX_PATH))
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
