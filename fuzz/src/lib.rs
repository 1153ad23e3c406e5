//! Fuzzing harnesses for every parser of input fleetnix does not control. Each target is a
//! function of raw bytes that must return (not panic, not hang, not exhaust memory) whatever
//! the bytes are, and that asserts the properties its parser promises. Two drivers run them:
//! `fuzz-afl` (coverage-guided, AFL++ through `cargo afl`) and `fuzz-loop` (a stable,
//! dependency-free mutation loop, used by CI as a smoke test). See docs/fuzzing.md.

use fleetnix::acl::{check, eval, policy};
use fleetnix::manifest::{self, edit, FleetTexts};
use fleetnix::model::{Fleet, SourceFiles};
use fleetnix::secrets::Records;
use fleetnix::tailscale::TailscaleStatus;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The example fleet's files, the defaults for parts an input leaves out.
pub const EXAMPLE_NODES: &str = include_str!("../../fleet/nodes.yml");
/// The example `fleet.yml`.
pub const EXAMPLE_FLEET: &str = include_str!("../../fleet/fleet.yml");
/// The example `services.yml`.
pub const EXAMPLE_SERVICES: &str = include_str!("../../fleet/services.yml");

/// A fuzz target: bytes in, panics on a broken property.
pub type Target = fn(&[u8]);

/// Every target by name, in the order `fuzz-loop all` runs them.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("policy", policy),
    ("status", status),
    ("tsapi", tsapi),
    ("edit", edit),
    ("recipients", recipients),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn paths() -> SourceFiles {
    SourceFiles {
        nodes: PathBuf::from("fleet/nodes.yml"),
        fleet: PathBuf::from("fleet/fleet.yml"),
        services: PathBuf::from("fleet/services.yml"),
    }
}

/// The example fleet, parsed once.
pub fn example_fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        // Invariant: the example fleet is valid (CI runs `fleetnix validate` on it).
        manifest::parse(&texts(EXAMPLE_NODES, EXAMPLE_FLEET, EXAMPLE_SERVICES))
            .expect("the example fleet is valid")
    })
}

fn texts(nodes: &str, fleet: &str, services: &str) -> FleetTexts {
    FleetTexts {
        paths: paths(),
        nodes: nodes.to_string(),
        fleet: fleet.to_string(),
        services: services.to_string(),
    }
}

/// Every diagnostic must point inside its file's text, on character boundaries, with a line and
/// column that agree with the offset: the CLI slices the text there for its snippet.
fn check_problems(e: &manifest::ManifestError, t: &FleetTexts) {
    let _ = e.to_string();
    if let manifest::ManifestError::Invalid { problems, .. } = e {
        assert!(!problems.is_empty(), "an Invalid error without problems");
        for p in problems {
            let text = if p.file == t.paths.nodes {
                &t.nodes
            } else if p.file == t.paths.fleet {
                &t.fleet
            } else if p.file == t.paths.services {
                &t.services
            } else {
                panic!("a problem in an unknown file {}", p.file.display());
            };
            assert!(p.offset <= text.len(), "offset past the end: {p:?}");
            assert!(
                text.is_char_boundary(p.offset),
                "offset inside a char: {p:?}"
            );
            assert!(p.line >= 1 && p.col >= 1, "line/column not 1-based: {p:?}");
        }
    }
}

/// Splits an input into the three fleet files at NUL bytes (nodes, fleet, services); missing
/// parts are the example's.
fn split3(data: &[u8]) -> Option<(String, String, String)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.splitn(3, '\0');
    let nodes = parts.next().unwrap_or(EXAMPLE_NODES).to_string();
    let fleet = parts.next().unwrap_or(EXAMPLE_FLEET).to_string();
    let services = parts.next().unwrap_or(EXAMPLE_SERVICES).to_string();
    Some((nodes, fleet, services))
}

/// The manifest decoder: `nodes.yml` NUL `fleet.yml` NUL `services.yml`. A valid fleet is also
/// planned and its Tailscale policy rendered; an invalid one must carry usable diagnostics.
pub fn manifest(data: &[u8]) {
    let Some((n, f, s)) = split3(data) else {
        return;
    };
    let t = texts(&n, &f, &s);
    match manifest::parse(&t) {
        Ok(fleet) => {
            let plans = fleetnix::spec::node_specs(&fleet);
            assert_eq!(plans.len(), fleet.nodes.len());
            let r = fleetnix::acl::render::render(&fleet, "fuzz");
            // The rendered policy is fleetnix's own output: it must parse.
            if let Err(e) = policy::parse(&r.text) {
                panic!("rendered policy does not parse: {e}\n{}", r.text);
            }
        }
        Err(e) => check_problems(&e, &t),
    }
}

/// The HuJSON policy parser, then the evaluator on whatever it read (the policy's own tests
/// against the example fleet's nodes) and `acl check` of it against the example fleet.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = policy::to_json(text);
    let Ok(parsed) = policy::parse(text) else {
        return;
    };
    let fleet = example_fleet();
    let ev =
        eval::Evaluator::new(&parsed.policy).with_nodes(check::principals::node_principals(fleet));
    let _ = ev.run_tests();
    let nodes = check::principals::node_principals(fleet);
    if let (Some(a), Some(b)) = (nodes.first(), nodes.last()) {
        let _ = ev.ports(a, b, None);
        let _ = ev.ssh(a, b, "root");
    }
    let _ = check::check(fleet, text);
}

/// `tailscale status --json`, then everything fleetnix derives from it.
pub fn status(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(st) = TailscaleStatus::parse(text) else {
        return;
    };
    let _ = st.is_running();
    for d in st.devices() {
        let _ = d.connection();
        let _ = d.peer.dns_label();
        let _ = d.peer.last_seen_time();
    }
    let fleet = example_fleet();
    for n in &fleet.nodes {
        let _ = st.ssh_host_keys(n.name.as_str());
    }
    let report = fleetnix::health::status::status_report(fleet, &st);
    assert_eq!(report.nodes.len(), fleet.nodes.len());
    // Re-serialising what was read and reading it again gives the same status.
    let json = serde_json::to_string(&st).expect("a status serialises");
    let again = TailscaleStatus::parse(&json).expect("a serialised status parses");
    assert_eq!(again, st, "status does not round-trip");
}

/// The Tailscale API answers fleetnix decodes: first byte picks the decoder (error body,
/// rejection, policy validation, created auth key), the rest is the body.
pub fn tsapi(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(body);
    let url = "http://127.0.0.1/api/v2/tailnet/-/keys";
    match sel % 4 {
        0 => {
            let _ = fleetnix::tailscale::api::decode_unauthorized(403, &body).to_string();
        }
        1 => {
            let e = fleetnix::tailscale::api::decode_rejection(400, &body);
            let _ = e.to_string();
        }
        2 => {
            if let Err(e) = fleetnix::tailscale::api::decode_validation(200, url, &body) {
                let _ = e.to_string();
            }
        }
        _ => match fleetnix::tailscale::api::decode_created_key(200, url, &body) {
            Ok(k) => {
                // The key is never shown by Debug.
                use secrecy::ExposeSecret;
                let shown = format!("{k:?}");
                let key = k.key.expose_secret();
                // (A key that is part of the id or expiry text shows there, not as the key.)
                let elsewhere =
                    k.id.contains(key) || k.expires.as_deref().unwrap_or("").contains(key);
                assert!(
                    key.len() < 4 || elsewhere || !shown.contains(key),
                    "auth key visible in Debug"
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
    }
}

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICBqKe3Vya+Q+l2fbm10nCHe7I4hXKXs1sTqeHQuubof";

/// The comment-preserving editor of `nodes.yml`: first byte picks the node, second the field
/// and value, the rest is the file. An edit that succeeds must change only the edited line (or
/// add one line), and if both texts are valid fleets, the new one must be the old one with
/// exactly that field changed.
pub fn edit(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (sel, rest) = data.split_at(2);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let before = manifest::parse(&texts(text, EXAMPLE_FLEET, EXAMPLE_SERVICES)).ok();
    let node = match &before {
        Some(f) if !f.nodes.is_empty() => f.nodes[sel[0] as usize % f.nodes.len()].name.to_string(),
        _ => ["worker-01", "control-01", "a", "nodes"][sel[0] as usize % 4].to_string(),
    };
    let (field, value) = match sel[1] % 5 {
        0 => ("host_key", edit::Scalar::Quoted(HOST_KEY.to_string())),
        1 => (
            "tailscale_ip",
            edit::Scalar::Plain(format!("100.64.{}.{}", sel[1] / 5, sel[0])),
        ),
        2 => ("ssh_user", edit::Scalar::Quoted("deploy".into())),
        3 => ("public_address", edit::Scalar::Plain("203.0.113.7".into())),
        _ => (
            "ssh_user",
            edit::Scalar::Quoted("a\"b\\c\n#d: [e] {f} \u{7f}\u{2028}'".into()),
        ),
    };
    let Ok(new) = edit::set_node_field(text, &node, field, &value) else {
        return;
    };
    if new == text {
        return;
    }
    assert_one_line_changed(text, &new);
    let Some(before) = before else {
        return;
    };
    let Ok(after) = manifest::parse(&texts(&new, EXAMPLE_FLEET, EXAMPLE_SERVICES)) else {
        return;
    };
    let mut expected = before.clone();
    let n = expected
        .nodes
        .iter_mut()
        .find(|n| n.name.as_str() == node)
        .expect("the edited node is in the fleet");
    match field {
        "host_key" => n.host_key = Some(HOST_KEY.parse().expect("a host key")),
        "tailscale_ip" => n.tailscale_ip = value.text().parse().expect("an address"),
        "ssh_user" => n.ssh_user = value.text().parse().expect("a login"),
        _ => n.public_address = Some(value.text().to_string()),
    }
    assert!(
        after == expected,
        "editing {field} of {node} changed more than that field"
    );
}

/// `old` and `new` differ in exactly one line (replaced), or `new` has one line more.
fn assert_one_line_changed(old: &str, new: &str) {
    let a: Vec<&str> = old.split('\n').collect();
    let b: Vec<&str> = new.split('\n').collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let changed_old = a.len() - prefix - suffix;
    let changed_new = b.len() - prefix - suffix;
    assert!(
        changed_old <= 1 && changed_new <= 2 && changed_new >= changed_old,
        "the edit changed {changed_old} line(s) into {changed_new}:\n--- old\n{old}\n--- new\n{new}"
    );
}

/// `secrets/recipients.json`: whatever parses re-serialises to text that parses to the same.
pub fn recipients(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("secrets/recipients.json");
    match Records::parse(text, path) {
        Ok(r) => {
            let again = Records::parse(&r.to_text(), path).expect("written records parse");
            assert_eq!(again, r, "recipients.json does not round-trip");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
