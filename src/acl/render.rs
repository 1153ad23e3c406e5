//! The Tailscale policy the fleet needs, written as deterministic, commented HuJSON from the
//! fleet's [`intents`](crate::acl::intents::intents()) (`fleetnix acl render`).

use crate::acl::intents::{covers, intents, Intents, Purpose};
use crate::model::{Fleet, Protocol};
use crate::nix::one_line;
use std::collections::BTreeSet;

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn js_list<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| js(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

/// The rendered policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The HuJSON text.
    pub text: String,
    /// The intents it was made from.
    pub intents: Intents,
}

/// Renders the policy for `fleet`. `sources` names the fleet files for the header comment.
pub fn render(fleet: &Fleet, sources: &str) -> Rendered {
    let intents = intents(fleet);
    let mut o = String::new();
    o.push_str(&format!(
        "// Tailscale policy file for the fleet, rendered by `fleetnix acl render` from\n// {}.\n",
        one_line(sources)
    ));
    o.push_str(
        "// Deny by default: only what the rules below accept is allowed. Do not edit by hand:\n",
    );
    o.push_str(
        "// change the fleet files, render again, and check with `fleetnix acl check`.\n{\n",
    );

    // groups
    o.push_str("  // Human operators (fleet.yml operators); other groups named by the catalog.\n  \"groups\": {\n");
    let ops = &fleet.settings.operators;
    for g in &intents.groups {
        if *g == ops.group {
            o.push_str(&format!("    {}: {},\n", js(g), js_list(&ops.members)));
        } else {
            o.push_str(&format!(
                "    // named in services.yml; its members are not known to the fleet files\n    {}: [],\n",
                js(g)
            ));
        }
    }
    o.push_str("  },\n\n");

    // tagOwners
    o.push_str("  // Every tag the fleet uses; the operators apply them (auth keys are minted for these tags).\n  \"tagOwners\": {\n");
    for t in &intents.all_tags {
        o.push_str(&format!(
            "    {}: {},\n",
            js(t),
            js_list(std::slice::from_ref(&ops.group))
        ));
    }
    o.push_str("  },\n\n");

    // acls
    o.push_str("  \"acls\": [\n");
    let mut first = true;
    let mut rule =
        |o: &mut String, comment: String, src: &[String], proto: Protocol, dst: Vec<String>| {
            if !first {
                o.push('\n');
            }
            first = false;
            o.push_str(&format!("    // {}\n", one_line(&comment)));
            o.push_str(&format!(
                "    {{\"action\": \"accept\", \"src\": {}, \"proto\": {}, \"dst\": {}}},\n",
                js_list(src),
                js(&proto.to_string()),
                js_list(&dst)
            ));
        };
    let ports_text = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    for i in &intents.net {
        let dst: Vec<String> = i
            .dst_tags
            .iter()
            .map(|t| format!("{t}:{}", ports_text(&i.ports)))
            .collect();
        let comment = match &i.purpose {
            Purpose::Service {
                name,
                description,
                role,
            } => format!(
                "services.yml {name}{}: {}/{} on role {role}, from {}",
                description
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                ports_text(&i.ports),
                i.protocol,
                i.src.join(", ")
            ),
            Purpose::AgentLitellm | Purpose::AgentNats => {
                if intents.covered_by_catalog(i) {
                    continue;
                }
                format!(
                    "{}: every node's agent to the control plane",
                    i.purpose.describe()
                )
            }
            Purpose::Deploy => {
                "deploys: the deployers (fleet.yml deployers) reach every node's Tailscale SSH (see \"ssh\")"
                    .to_string()
            }
            Purpose::Health => format!(
                "health checks: the control plane probes the services on {}",
                i.dst_tags.join(", ")
            ),
            Purpose::OperatorSsh => {
                "operators: Tailscale SSH to every node (see \"ssh\")".to_string()
            }
        };
        rule(&mut o, comment, &i.src, i.protocol, dst);
    }
    for name in &intents.unhosted {
        o.push_str(&format!(
            "    // services.yml {}: no node has its role, so no rule\n",
            one_line(name)
        ));
    }
    o.push_str("  ],\n\n");

    // ssh
    o.push_str("  \"ssh\": [\n");
    for (k, s) in intents.ssh.iter().enumerate() {
        if k > 0 {
            o.push('\n');
        }
        let mut comment = s.purpose.describe();
        if s.purpose == Purpose::OperatorSsh && s.users.iter().any(|u| u == "root") {
            comment.push_str(", as root because they are the deployers (fleet.yml deployers)");
        }
        o.push_str(&format!("    // {}\n", one_line(&comment)));
        o.push_str(&format!(
            "    {{\"action\": \"accept\", \"src\": {}, \"dst\": {}, \"users\": {}}},\n",
            js_list(&s.src),
            js_list(&s.dst_tags),
            js_list(&s.users)
        ));
    }
    o.push_str("  ],\n\n");

    // tests: for every identity, every (tag, port) of the intents, accept or deny.
    let mut targets: BTreeSet<(Protocol, String, u16)> = BTreeSet::new();
    for i in &intents.net {
        for t in &i.dst_tags {
            for p in &i.ports {
                targets.insert((i.protocol, t.clone(), *p));
            }
        }
    }
    o.push_str("  // Generated from the same catalog: every allowed source is accepted, every other tag and group denied.\n");
    o.push_str("  \"tests\": [\n");
    for ident in intents.identities() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let mut accept = Vec::new();
            let mut deny = Vec::new();
            for (p, tag, port) in targets.iter().filter(|(p, _, _)| *p == proto) {
                let hp = format!("{tag}:{port}");
                if intents.allows(&ident, tag, *port, *p) {
                    accept.push(hp);
                } else {
                    deny.push(hp);
                }
            }
            if accept.is_empty() && deny.is_empty() {
                continue;
            }
            o.push_str(&format!(
                "    {{\"src\": {}, \"proto\": {}, \"accept\": {}, \"deny\": {}}},\n",
                js(&ident),
                js(&proto.to_string()),
                js_list(&accept),
                js_list(&deny)
            ));
        }
    }
    o.push_str("  ],\n\n");

    // sshTests
    o.push_str(&format!(
        "  // Only the deployers ({}) may log in as root.\n",
        one_line(&intents.deploy_src.join(", "))
    ));
    o.push_str("  \"sshTests\": [\n");
    // Every tag and group, and each login listed as a deployer.
    let ssh_idents = intents.identities().into_iter().chain(
        intents
            .deploy_src
            .iter()
            .filter(|d| d.contains('@'))
            .cloned(),
    );
    for ident in ssh_idents {
        let users: BTreeSet<&String> = intents
            .ssh
            .iter()
            .filter(|s| s.src.iter().any(|x| covers(x, &ident)))
            .flat_map(|s| s.users.iter())
            .filter(|u| !u.contains(':'))
            .collect();
        let accept: Vec<&String> = users.into_iter().collect();
        // Only deployers may log in as root: every other source is tested to be denied.
        let deny: Vec<&str> = if accept.iter().any(|u| *u == "root") {
            vec![]
        } else {
            vec!["root"]
        };
        o.push_str(&format!(
            "    {{\"src\": {}, \"dst\": {}, \"accept\": {}, \"deny\": {}}},\n",
            js(&ident),
            js_list(&intents.node_tags),
            js_list(&accept),
            js_list(&deny)
        ));
    }
    o.push_str("  ],\n}\n");
    Rendered { text: o, intents }
}
