//! The policy the fleet needs, derived from the catalog and the rendered configuration, written
//! as deterministic, commented HuJSON.
//!
//! Access comes from [`intents`]: every catalog row (its `allow` sources → the tags of the nodes
//! hosting its role, on its port), what the rendered node configuration needs (every agent → the
//! control plane's LiteLLM port and NATS), the control plane's deploys (SSH on every node) and
//! health checks (the services on the other nodes), and the operators' SSH. The same intents
//! generate the policy's `tests` and `sshTests`, so the control server refuses a drifted policy.

use crate::model::{Fleet, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Default NATS port when the URL names none.
pub const NATS_DEFAULT_PORT: u16 = 4222;

/// Why an access exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Purpose {
    /// A row of `services.yml`.
    Service {
        /// Service id.
        name: String,
        /// Human name.
        description: Option<String>,
        /// Hosting role.
        role: String,
    },
    /// Agents connect to the control plane's LiteLLM (`--control-plane`, fleet.yml `control_plane_port`).
    AgentLitellm,
    /// Agents connect to NATS (`--nats-url`, fleet.yml `nats_url`).
    AgentNats,
    /// Deploys: the control plane reaches every node over Tailscale SSH.
    Deploy,
    /// Health checks: the control plane probes the services of the other nodes.
    Health,
    /// Operators reach every node over Tailscale SSH.
    OperatorSsh,
}

impl Purpose {
    /// Is this something the rendered configuration cannot work without (as opposed to a catalog permission)?
    pub fn required(&self) -> bool {
        !matches!(self, Purpose::Service { .. })
    }

    /// A few words: `services.yml nats`, `needed: agents' NATS (nats_url)`.
    pub fn short(&self) -> String {
        match self {
            Purpose::Service { name, .. } => format!("services.yml {name}"),
            Purpose::AgentLitellm => "needed: agents' LiteLLM (control_plane_port)".into(),
            Purpose::AgentNats => "needed: agents' NATS (nats_url)".into(),
            Purpose::Deploy => "needed: deploys over SSH".into(),
            Purpose::Health => "needed: health checks".into(),
            Purpose::OperatorSsh => "needed: operators' SSH".into(),
        }
    }

    /// A short human description.
    pub fn describe(&self) -> String {
        match self {
            Purpose::Service {
                name,
                description,
                role,
            } => match description {
                Some(d) => format!("catalog row {name} ({d}, role {role})"),
                None => format!("catalog row {name} (role {role})"),
            },
            Purpose::AgentLitellm => {
                "agents' LiteLLM endpoint (omp --control-plane, fleet.yml control_plane_port)"
                    .into()
            }
            Purpose::AgentNats => {
                "agents' NATS connection (omp --nats-url, fleet.yml nats_url)".into()
            }
            Purpose::Deploy => "deploys over Tailscale SSH from the control plane".into(),
            Purpose::Health => "health checks from the control plane".into(),
            Purpose::OperatorSsh => "operators' SSH (fleet.yml operators)".into(),
        }
    }
}

/// A network access the fleet needs or allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intent {
    /// Why.
    pub purpose: Purpose,
    /// Source selectors, sorted.
    pub src: Vec<String>,
    /// Destination tags, sorted.
    pub dst_tags: Vec<String>,
    /// Ports, sorted.
    pub ports: Vec<u16>,
    /// Protocol.
    pub protocol: Protocol,
}

/// A Tailscale SSH access the fleet needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshIntent {
    /// Why.
    pub purpose: Purpose,
    /// Source selectors, sorted.
    pub src: Vec<String>,
    /// Destination tags, sorted.
    pub dst_tags: Vec<String>,
    /// Local users.
    pub users: Vec<String>,
}

/// Everything the policy must allow, and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intents {
    /// Network accesses, in render order.
    pub net: Vec<Intent>,
    /// SSH accesses.
    pub ssh: Vec<SshIntent>,
    /// The control plane's tags: the deploying source.
    pub deploy_src: Vec<String>,
    /// Every tag carried by a node, sorted.
    pub node_tags: Vec<String>,
    /// Every tag in use (nodes' and the catalog's `allow`), sorted.
    pub all_tags: Vec<String>,
    /// Every group in use (operators' and the catalog's `allow`), sorted.
    pub groups: Vec<String>,
    /// Catalog rows whose role no node has (no rule is rendered for them).
    pub unhosted: Vec<String>,
}

/// The NATS port of `nats_url` (4222 when it names none).
pub fn nats_port(nats_url: &str) -> u16 {
    url::Url::parse(nats_url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(NATS_DEFAULT_PORT)
}

fn sorted<I: IntoIterator<Item = String>>(it: I) -> Vec<String> {
    it.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Does intent source selector `sel` cover the identity `ident` (a tag or group name)?
fn covers(sel: &str, ident: &str) -> bool {
    sel == ident
        || sel == "*"
        || (sel == "autogroup:member" && ident.starts_with("group:"))
        || (sel == "autogroup:tagged" && ident.starts_with("tag:"))
}

/// Derives the accesses the fleet needs from the catalog and the settings.
pub fn intents(fleet: &Fleet) -> Intents {
    let cp = fleet.control_plane();
    let cp_tags = fleet.tags_of(cp);
    let node_tags = sorted(fleet.nodes.iter().flat_map(|n| fleet.tags_of(n)));
    let mut net = Vec::new();
    let mut unhosted = Vec::new();
    for s in &fleet.catalog.services {
        let dst_tags = sorted(
            fleet
                .nodes
                .iter()
                .filter(|n| n.has_role(&s.role))
                .flat_map(|n| fleet.tags_of(n)),
        );
        if dst_tags.is_empty() {
            unhosted.push(s.name.to_string());
            continue;
        }
        net.push(Intent {
            purpose: Purpose::Service {
                name: s.name.to_string(),
                description: s.description.clone(),
                role: s.role.to_string(),
            },
            src: sorted(s.allow.iter().cloned()),
            dst_tags,
            ports: vec![s.port],
            protocol: s.protocol,
        });
    }
    // Agents run on every node: they need the control plane's LiteLLM and NATS ports.
    for (purpose, port) in [
        (Purpose::AgentLitellm, fleet.settings.control_plane_port),
        (Purpose::AgentNats, nats_port(&fleet.settings.nats_url)),
    ] {
        net.push(Intent {
            purpose,
            src: node_tags.clone(),
            dst_tags: cp_tags.clone(),
            ports: vec![port],
            protocol: Protocol::Tcp,
        });
    }
    net.push(Intent {
        purpose: Purpose::Deploy,
        src: cp_tags.clone(),
        dst_tags: node_tags.clone(),
        ports: vec![22],
        protocol: Protocol::Tcp,
    });
    // Health checks: the services of every node but the control plane, per tag.
    let mut health: BTreeMap<(String, Protocol), BTreeSet<u16>> = BTreeMap::new();
    for n in fleet.nodes.iter().filter(|n| n.name != cp.name) {
        for s in fleet.services_of(n) {
            for t in fleet.tags_of(n) {
                health.entry((t, s.protocol)).or_default().insert(s.port);
            }
        }
    }
    for ((tag, protocol), ports) in health {
        net.push(Intent {
            purpose: Purpose::Health,
            src: cp_tags.clone(),
            dst_tags: vec![tag],
            ports: ports.into_iter().collect(),
            protocol,
        });
    }
    let ops = fleet.settings.operators.group.clone();
    net.push(Intent {
        purpose: Purpose::OperatorSsh,
        src: vec![ops.clone()],
        dst_tags: node_tags.clone(),
        ports: vec![22],
        protocol: Protocol::Tcp,
    });
    let deploy_users = sorted(fleet.nodes.iter().map(|n| n.ssh_user.to_string()));
    let ssh = vec![
        SshIntent {
            purpose: Purpose::Deploy,
            src: cp_tags.clone(),
            dst_tags: node_tags.clone(),
            users: deploy_users,
        },
        SshIntent {
            purpose: Purpose::OperatorSsh,
            src: vec![ops.clone()],
            dst_tags: node_tags.clone(),
            users: vec!["root".into(), "autogroup:nonroot".into()],
        },
    ];
    let allow_sel = || fleet.catalog.services.iter().flat_map(|s| s.allow.iter());
    let all_tags = sorted(
        node_tags
            .iter()
            .cloned()
            .chain(allow_sel().filter(|a| a.starts_with("tag:")).cloned()),
    );
    let groups = sorted(
        std::iter::once(ops).chain(allow_sel().filter(|a| a.starts_with("group:")).cloned()),
    );
    Intents {
        net,
        ssh,
        deploy_src: cp_tags,
        node_tags,
        all_tags,
        groups,
        unhosted,
    }
}

impl Intents {
    /// Is a required intent already granted by the catalog rows (so it needs no rule of its own)?
    fn covered_by_catalog(&self, need: &Intent) -> bool {
        need.src.iter().all(|ident| {
            need.ports.iter().all(|p| {
                self.net.iter().any(|i| {
                    matches!(i.purpose, Purpose::Service { .. })
                        && i.protocol == need.protocol
                        && i.ports.contains(p)
                        && i.src.iter().any(|s| covers(s, ident))
                        && need.dst_tags.iter().all(|t| i.dst_tags.contains(t))
                })
            })
        })
    }

    /// The identities tests are generated for: every tag and group in use.
    pub fn identities(&self) -> Vec<String> {
        self.all_tags
            .iter()
            .chain(self.groups.iter())
            .cloned()
            .collect()
    }

    /// Is `ident` (a tag or group) allowed to reach tag `tag` on `port`/`protocol` by the intents?
    pub fn allows(&self, ident: &str, tag: &str, port: u16, protocol: Protocol) -> bool {
        self.net.iter().any(|i| {
            i.protocol == protocol
                && i.ports.contains(&port)
                && i.dst_tags.iter().any(|t| t == tag)
                && i.src.iter().any(|s| covers(s, ident))
        })
    }

    /// The intents that allow `ident` to reach tag `tag` on `port`.
    pub fn reasons(&self, ident: &str, tags: &[String], port: u16) -> Vec<&Intent> {
        self.net
            .iter()
            .filter(|i| {
                i.ports.contains(&port)
                    && i.dst_tags.iter().any(|t| tags.contains(t))
                    && i.src.iter().any(|s| covers(s, ident))
            })
            .collect()
    }
}

/// Makes text safe inside a `//` comment (no line breaks or control characters).
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

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
        comment_text(sources)
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
            o.push_str(&format!("    // {}\n", comment_text(&comment)));
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
                "deploys: the control plane reaches every node's Tailscale SSH (see \"ssh\")"
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
            comment_text(name)
        ));
    }
    o.push_str("  ],\n\n");

    // ssh
    o.push_str("  \"ssh\": [\n");
    for (k, s) in intents.ssh.iter().enumerate() {
        if k > 0 {
            o.push('\n');
        }
        o.push_str(&format!("    // {}\n", comment_text(&s.purpose.describe())));
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
    o.push_str("  \"sshTests\": [\n");
    for ident in intents.identities() {
        let users: BTreeSet<&String> = intents
            .ssh
            .iter()
            .filter(|s| s.src.iter().any(|x| covers(x, &ident)))
            .flat_map(|s| s.users.iter())
            .filter(|u| !u.contains(':'))
            .collect();
        let accept: Vec<&String> = users.into_iter().collect();
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
