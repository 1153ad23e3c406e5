//! `fleet.yml`: fleet-wide settings.

use super::decode::{join, Cx};
use super::nodes::STATE_VERSION_EXPECTED;
use super::validate::*;
use super::yaml::Node as Y;
use crate::model::*;
use crate::suggest::closest;
use std::collections::BTreeMap;

/// Settings plus the positions needed for cross-file checks.
pub(super) struct RawSettings<'y> {
    pub(super) settings: Settings,
    pub(super) control_plane: &'y Y,
    pub(super) nats_url_given: bool,
}

/// What a `deployers` entry may be.
const DEPLOYER_EXPECTED: &str =
    "a group like `group:operators`, a tag like `tag:deployer`, or a login like alice@example.com";

/// A `deployers` entry: a group, a tag or a login (Tailscale SSH sources that name someone).
fn check_deployer(s: &str) -> Result<String, InvalidValue> {
    if s.starts_with("group:") {
        check_group(s)
    } else if s.starts_with("tag:") {
        Tag::parse(s).map(|t| t.to_string())
    } else if s.contains('@') {
        check_login(s)
    } else {
        Err("not a group, tag or login (autogroups and `*` would give root to too many)".into())
    }
}

pub(super) fn decode_settings<'y>(cx: &mut Cx, root: &'y Y) -> Option<RawSettings<'y>> {
    let f = cx.fields(
        root,
        "",
        &[
            "control_plane",
            "nats_url",
            "control_plane_port",
            "tailnet",
            "operators",
            "deployers",
            "ntfy",
            "fleet",
            "state_version",
            "tailscale_auth",
        ],
    )?;
    let mut ok = true;
    let state_version = f.get("state_version").and_then(|v| {
        cx.checked(
            v,
            "state_version",
            STATE_VERSION_EXPECTED,
            StateVersion::parse,
        )
    });
    ok &= f.get("state_version").is_none() || state_version.is_some();
    let tailscale_auth = match f.get("tailscale_auth") {
        Some(v) => {
            let expected = format!("one of {}", TailscaleAuth::NAMES.join(", "));
            cx.checked(v, "tailscale_auth", &expected, |s| {
                TailscaleAuth::parse(s).ok_or_else(|| match closest(s, &TailscaleAuth::NAMES) {
                    Some(c) => format!("unknown enrolment kind (did you mean `{c}`?)"),
                    None => "unknown enrolment kind".to_string(),
                })
            })
        }
        None => Some(TailscaleAuth::Preauth),
    };
    ok &= tailscale_auth.is_some();
    let cp_node = cx.required(&f, "control_plane", "the name of the control-plane node");
    let control_plane =
        cp_node.and_then(|v| cx.checked(v, "control_plane", "a node name", NodeName::parse));
    let nats_url = f.get("nats_url").and_then(|v| {
        cx.checked(
            v,
            "nats_url",
            "a URL like nats://100.64.0.1:4222",
            NatsUrl::parse,
        )
    });
    ok &= f.get("nats_url").is_none() || nats_url.is_some();
    let control_plane_port = match f.get("control_plane_port") {
        Some(v) => cx.port(v, "control_plane_port"),
        None => Some(4000),
    };
    let tailnet = match f.get("tailnet") {
        Some(v) => cx.checked(
            v,
            "tailnet",
            "a tailnet name like example.com, or `-`",
            |s| {
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._@".contains(c))
                {
                    Ok(s.to_string())
                } else {
                    Err(InvalidValue::from("letters, digits and `-._@` only"))
                }
            },
        ),
        None => Some("-".into()),
    };
    let mut operators = Operators {
        group: "group:operators".into(),
        members: Vec::new(),
        keys: Vec::new(),
    };
    if let Some(v) = f.get("operators") {
        if let Some(of) = cx.fields(v, "operators", &["group", "members", "keys"]) {
            if let Some(g) = of.get("group") {
                match cx.checked(
                    g,
                    "operators.group",
                    "a group like `group:operators`",
                    check_group,
                ) {
                    Some(g) => operators.group = g,
                    None => ok = false,
                }
            }
            if let Some(m) = of.get("members") {
                for (i, item) in cx
                    .list(m, "operators.members", "logins")
                    .unwrap_or(&[])
                    .iter()
                    .enumerate()
                {
                    match cx.checked(
                        item,
                        &format!("operators.members[{i}]"),
                        "a login like alice@example.com",
                        check_login,
                    ) {
                        Some(l) => operators.members.push(l),
                        None => ok = false,
                    }
                }
            }
            if let Some(k) = of.get("keys") {
                for (i, item) in cx
                    .list(k, "operators.keys", "{ name, key }")
                    .unwrap_or(&[])
                    .iter()
                    .enumerate()
                {
                    let path = format!("operators.keys[{i}]");
                    let Some(kf) = cx.fields(item, &path, &["name", "key"]) else {
                        ok = false;
                        continue;
                    };
                    let name = cx
                        .required(&kf, "name", "who the key belongs to")
                        .and_then(|v| cx.string(v, &join(&path, "name"), "a name"));
                    let key = cx
                        .required(
                            &kf,
                            "key",
                            "an age1… recipient or ssh-ed25519/ssh-rsa public key",
                        )
                        .and_then(|v| {
                            cx.checked(
                                v,
                                &join(&path, "key"),
                                "an age1… recipient or ssh-ed25519/ssh-rsa public key",
                                |s| check_public_key(s, true),
                            )
                        });
                    match (name, key) {
                        (Some(name), Some(key)) => operators.keys.push(OperatorKey { name, key }),
                        _ => ok = false,
                    }
                }
            }
        } else {
            ok = false;
        }
    }
    let deployers = match f.get("deployers") {
        None => vec![operators.group.clone()],
        Some(v) => {
            let mut out = std::collections::BTreeSet::new();
            let items = cx.list(v, "deployers", DEPLOYER_EXPECTED);
            if items.is_none() {
                ok = false;
            }
            for (i, item) in items.unwrap_or(&[]).iter().enumerate() {
                match cx.checked(
                    item,
                    &format!("deployers[{i}]"),
                    DEPLOYER_EXPECTED,
                    check_deployer,
                ) {
                    Some(d) => {
                        out.insert(d);
                    }
                    None => ok = false,
                }
            }
            if ok && out.is_empty() {
                cx.err(
                    v,
                    "deployers",
                    "empty: nobody could deploy".to_string(),
                    Some(DEPLOYER_EXPECTED.into()),
                );
                ok = false;
            }
            out.into_iter().collect()
        }
    };
    let mut ntfy = NtfySettings {
        topic: "fleet-alerts".into(),
        port: 8090,
    };
    if let Some(v) = f.get("ntfy") {
        if let Some(nf) = cx.fields(v, "ntfy", &["topic", "port"]) {
            if let Some(t) = nf.get("topic") {
                match cx.checked(
                    t,
                    "ntfy.topic",
                    "a topic name (letters, digits, `-_`)",
                    |s| {
                        if !s.is_empty()
                            && s.len() <= 64
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                        {
                            Ok(s.to_string())
                        } else {
                            Err(InvalidValue::from(
                                "letters, digits, `-` and `_` only, at most 64",
                            ))
                        }
                    },
                ) {
                    Some(t) => ntfy.topic = t,
                    None => ok = false,
                }
            }
            if let Some(p) = nf.get("port") {
                match cx.port(p, "ntfy.port") {
                    Some(p) => ntfy.port = p,
                    None => ok = false,
                }
            }
        } else {
            ok = false;
        }
    }
    let mut failure = FailureSettings {
        node_timeout_seconds: 30,
        retry_on_node_failure: true,
        failover_strategy: FailoverStrategy::RoundRobin,
        alert_on_node_down: true,
        task_timeout_seconds: 300,
    };
    if let Some(v) = f.get("fleet") {
        if let Some(ff) = cx.fields(
            v,
            "fleet",
            &[
                "node_timeout_seconds",
                "retry_on_node_failure",
                "failover_strategy",
                "alert_on_node_down",
                "task_timeout_seconds",
            ],
        ) {
            if let Some(t) = ff.get("node_timeout_seconds") {
                match cx.positive(t, "fleet.node_timeout_seconds") {
                    Some(t) => failure.node_timeout_seconds = t,
                    None => ok = false,
                }
            }
            if let Some(t) = ff.get("task_timeout_seconds") {
                match cx.positive(t, "fleet.task_timeout_seconds") {
                    Some(t) => failure.task_timeout_seconds = t,
                    None => ok = false,
                }
            }
            if let Some(b) = ff.get("retry_on_node_failure") {
                match cx.boolean(b, "fleet.retry_on_node_failure") {
                    Some(b) => failure.retry_on_node_failure = b,
                    None => ok = false,
                }
            }
            if let Some(b) = ff.get("alert_on_node_down") {
                match cx.boolean(b, "fleet.alert_on_node_down") {
                    Some(b) => failure.alert_on_node_down = b,
                    None => ok = false,
                }
            }
            if let Some(s) = ff.get("failover_strategy") {
                let expected = format!("one of {}", FailoverStrategy::NAMES.join(", "));
                match cx.checked(s, "fleet.failover_strategy", &expected, |s| {
                    FailoverStrategy::parse(s).ok_or_else(|| {
                        match closest(s, &FailoverStrategy::NAMES) {
                            Some(c) => format!("unknown failover strategy (did you mean `{c}`?)"),
                            None => "unknown failover strategy".to_string(),
                        }
                    })
                }) {
                    Some(s) => failure.failover_strategy = s,
                    None => ok = false,
                }
            }
        } else {
            ok = false;
        }
    }
    let (Some(control_plane), Some(control_plane_port), Some(tailnet), Some(cp_node)) =
        (control_plane, control_plane_port, tailnet, cp_node)
    else {
        return None;
    };
    if !ok {
        return None;
    }
    let nats_url_given = nats_url.is_some();
    Some(RawSettings {
        settings: Settings {
            control_plane,
            // Without `nats_url`, `cross_check` sets the control plane's address (a placeholder until then).
            nats_url: nats_url
                .unwrap_or_else(|| NatsUrl::at(std::net::Ipv4Addr::UNSPECIFIED.into(), 4222)),
            control_plane_port,
            tailnet,
            operators,
            deployers,
            failure,
            ntfy,
            state_version,
            node_state_versions: BTreeMap::new(),
            tailscale_auth: tailscale_auth.unwrap_or_default(),
        },
        control_plane: cp_node,
        nats_url_given,
    })
}
