//! Reads `fleet/nodes.yml`, `fleet/fleet.yml` and `fleet/services.yml` into a
//! validated [`Fleet`], reporting every problem with its file, line and field.
//! Nothing after this module sees YAML.

pub mod diag;
pub mod edit;
pub mod yaml;

pub use diag::Problem;

use crate::model::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use yaml::{Node as Y, Value};

/// The role that marks the control plane.
pub const CONTROL_PLANE_ROLE: &str = "control-plane";

/// Errors of [`load`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A fleet file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fleet files are invalid.
    #[error("{}", render_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
        /// The text of each file read, for diagnostics with source snippets.
        sources: Vec<(PathBuf, String)>,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    let mut s = format!("{} problem(s) in the fleet files:", problems.len());
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

/// The texts of the three fleet files.
#[derive(Debug, Clone)]
pub struct FleetTexts {
    /// Paths the texts were read from.
    pub paths: SourceFiles,
    /// `nodes.yml`.
    pub nodes: String,
    /// `fleet.yml`.
    pub fleet: String,
    /// `services.yml`.
    pub services: String,
}

impl FleetTexts {
    /// Reads the three files from `dir`.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let paths = SourceFiles {
            nodes: dir.join("nodes.yml"),
            fleet: dir.join("fleet.yml"),
            services: dir.join("services.yml"),
        };
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| ManifestError::Read {
                path: p.clone(),
                source,
            })
        };
        Ok(FleetTexts {
            nodes: read(&paths.nodes)?,
            fleet: read(&paths.fleet)?,
            services: read(&paths.services)?,
            paths,
        })
    }
}

/// Reads and validates the fleet in `dir` (`nodes.yml`, `fleet.yml`, `services.yml`).
pub fn load(dir: &Path) -> Result<Fleet, ManifestError> {
    parse(&FleetTexts::read(dir)?)
}

/// Validates already-read fleet files.
pub fn parse(texts: &FleetTexts) -> Result<Fleet, ManifestError> {
    let mut problems = Vec::new();
    let services_root = parse_yaml(&texts.paths.services, &texts.services, &mut problems);
    let fleet_root = parse_yaml(&texts.paths.fleet, &texts.fleet, &mut problems);
    let nodes_root = parse_yaml(&texts.paths.nodes, &texts.nodes, &mut problems);

    let mut cx = Cx {
        file: &texts.paths.services,
        problems: &mut problems,
        node: None,
    };
    let catalog = services_root
        .as_ref()
        .and_then(|r| decode_catalog(&mut cx, r));
    cx.file = &texts.paths.fleet;
    let settings = fleet_root
        .as_ref()
        .and_then(|r| decode_settings(&mut cx, r));
    cx.file = &texts.paths.nodes;
    let nodes = nodes_root
        .as_ref()
        .and_then(|r| decode_nodes(&mut cx, r, catalog.as_ref().map(|c| &c.0)));

    if let (Some((catalog, cat_spans)), Some(settings), Some(nodes)) = (catalog, settings, nodes) {
        let fleet = cross_check(&mut cx, texts, catalog, &cat_spans, settings, nodes);
        if problems.is_empty() {
            if let Some(fleet) = fleet {
                return Ok(fleet);
            }
        }
    }
    problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    problems.dedup();
    Err(ManifestError::Invalid {
        problems,
        sources: vec![
            (texts.paths.nodes.clone(), texts.nodes.clone()),
            (texts.paths.fleet.clone(), texts.fleet.clone()),
            (texts.paths.services.clone(), texts.services.clone()),
        ],
    })
}

fn parse_yaml(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Y> {
    match yaml::parse(text) {
        Ok(Some(root)) => Some(root),
        Ok(None) => {
            problems.push(
                Problem::at(
                    path,
                    yaml::Pos::START,
                    1,
                    "(file)",
                    "the file is empty".into(),
                )
                .expected("a YAML mapping"),
            );
            None
        }
        Err(e) => {
            problems.push(
                Problem::at(
                    path,
                    e.pos,
                    1,
                    "(syntax)",
                    format!("malformed YAML: {}", e.message),
                )
                .expected("valid YAML"),
            );
            None
        }
    }
}

/// Decoding context: the file being read and where problems go.
struct Cx<'a> {
    file: &'a Path,
    problems: &'a mut Vec<Problem>,
    /// The node whose fields are being read, for messages.
    node: Option<String>,
}

impl Cx<'_> {
    fn err(&mut self, at: &Y, field: &str, message: impl Into<String>, expected: Option<String>) {
        let mut p = Problem::at(self.file, at.pos, at.len, field, message.into())
            .node(self.node.as_deref());
        p.expected = expected;
        self.problems.push(p);
    }

    /// Reads a mapping, reporting unknown (with the closest known name) and duplicate keys.
    fn fields<'y>(&mut self, node: &'y Y, path: &str, known: &[&str]) -> Option<Fields<'y>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                node,
                path,
                format!("found {}", node.kind()),
                Some(format!("a mapping with fields {}", known.join(", "))),
            );
            return None;
        };
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let Some(name) = k.as_str() else {
                self.err(k, path, "a key is not a plain string", None);
                continue;
            };
            let field = join(path, name);
            if !known.contains(&name) {
                let hint = closest(name, known)
                    .map(|c| format!("did you mean `{c}`? Known fields: {}", known.join(", ")))
                    .unwrap_or_else(|| format!("one of {}", known.join(", ")));
                self.err(k, &field, format!("unknown field `{name}`"), Some(hint));
                continue;
            }
            if map.insert(name, (k, v)).is_some() {
                self.err(k, &field, format!("field `{name}` is given twice"), None);
            }
        }
        Some(Fields {
            owner: node,
            path: path.to_string(),
            map,
        })
    }

    fn required<'y>(&mut self, f: &Fields<'y>, name: &str, expected: &str) -> Option<&'y Y> {
        match f.get(name) {
            Some(v) => Some(v),
            None => {
                self.err(
                    f.owner,
                    &join(&f.path, name),
                    format!("missing required field `{name}`"),
                    Some(expected.to_string()),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Y, field: &str, expected: &str) -> Option<String> {
        match v.as_str() {
            Some(s) if !v.is_null() => Some(s.to_string()),
            _ => {
                self.err(
                    v,
                    field,
                    format!("found {}", v.kind()),
                    Some(expected.into()),
                );
                None
            }
        }
    }

    fn int(&mut self, v: &Y, field: &str, expected: &str) -> Option<i64> {
        let parsed = match &v.value {
            Value::Scalar { text, plain: true } => text.parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let found = v
                .as_str()
                .map(|s| format!("`{s}`"))
                .unwrap_or(v.kind().into());
            self.err(v, field, format!("found {found}"), Some(expected.into()));
        }
        parsed
    }

    fn positive(&mut self, v: &Y, field: &str) -> Option<u32> {
        let n = self.int(v, field, "a positive whole number")?;
        if n <= 0 || n > u32::MAX as i64 {
            self.err(
                v,
                field,
                format!("{n} is not positive"),
                Some("a number greater than 0".into()),
            );
            return None;
        }
        Some(n as u32)
    }

    fn port(&mut self, v: &Y, field: &str) -> Option<u16> {
        let n = self.int(v, field, "a port number 1-65535")?;
        if !(1..=65535).contains(&n) {
            self.err(
                v,
                field,
                format!("{n} is not a port"),
                Some("a port number 1-65535".into()),
            );
            return None;
        }
        Some(n as u16)
    }

    fn boolean(&mut self, v: &Y, field: &str) -> Option<bool> {
        match &v.value {
            Value::Scalar { text, plain: true } if text == "true" => Some(true),
            Value::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                let found = v
                    .as_str()
                    .map(|s| format!("`{s}`"))
                    .unwrap_or(v.kind().into());
                self.err(
                    v,
                    field,
                    format!("found {found}"),
                    Some("true or false".into()),
                );
                None
            }
        }
    }

    fn list<'y>(&mut self, v: &'y Y, field: &str, expected: &str) -> Option<&'y [Y]> {
        match &v.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.err(
                    v,
                    field,
                    format!("found {}", v.kind()),
                    Some(format!("a list of {expected}")),
                );
                None
            }
        }
    }

    /// A string checked by `check`, which explains what is wrong.
    fn checked<T>(
        &mut self,
        v: &Y,
        field: &str,
        expected: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(v, field, expected)?;
        match check(&s) {
            Ok(t) => Some(t),
            Err(why) => {
                self.err(
                    v,
                    field,
                    format!("`{}` is invalid: {why}", s.escape_debug()),
                    Some(expected.into()),
                );
                None
            }
        }
    }
}

/// The fields of one mapping.
struct Fields<'y> {
    owner: &'y Y,
    path: String,
    map: BTreeMap<&'y str, (&'y Y, &'y Y)>,
}

impl<'y> Fields<'y> {
    /// The value of `name`, treating an explicit null as absent.
    fn get(&self, name: &str) -> Option<&'y Y> {
        self.map.get(name).map(|(_, v)| *v).filter(|v| !v.is_null())
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The known name closest to `name`, if it is close enough to be a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn check_tag(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("tag:")
        .ok_or("it does not start with `tag:`")?;
    check_label(rest).map(|()| s.to_string())
}

fn check_group(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("group:")
        .ok_or("it does not start with `group:`")?;
    check_label(rest).map(|()| s.to_string())
}

/// Autogroups that may be used as a source of access.
pub const SOURCE_AUTOGROUPS: [&str; 8] = [
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:network-admin",
    "autogroup:it-admin",
    "autogroup:billing-admin",
    "autogroup:auditor",
];

fn check_login(s: &str) -> Result<String, String> {
    let ok = s.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._+-".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a Tailscale login looks like `alice@example.com` (letters, digits, `@._+-`)".into())
    }
}

/// Checks a public key: `age1…` or `ssh-ed25519|ssh-rsa <base64> [comment]`, on one line.
pub fn check_public_key(s: &str, allow_age: bool) -> Result<String, String> {
    let s = s.trim();
    if s.contains(['\n', '\r', '"', '\\', '$', '`']) {
        return Err("it contains a newline, quote, `\\`, `$` or backquote".into());
    }
    if allow_age && s.starts_with("age1") {
        if s.len() > 10
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Ok(s.to_string());
        }
        return Err("an age recipient is `age1` followed by lowercase bech32 characters".into());
    }
    let mut parts = s.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    if !["ssh-ed25519", "ssh-rsa"].contains(&kind) {
        return Err(format!(
            "key type `{kind}` is not supported (use ssh-ed25519 or ssh-rsa)"
        ));
    }
    if body.len() < 16
        || !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
    {
        return Err("the key material is not base64".into());
    }
    let comment: Vec<&str> = parts.collect();
    if comment
        .iter()
        .any(|w| !w.chars().all(|c| c.is_ascii_graphic() && c != '\''))
    {
        return Err("the key comment has unsafe characters".into());
    }
    Ok(s.to_string())
}

fn check_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("a host name or IP address (letters, digits, `.`, `-`, `:`)".into())
    }
}

fn check_user(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
    {
        Ok(s.to_string())
    } else {
        Err("a Unix user name (lowercase letters, digits, `_`, `-`; at most 32)".into())
    }
}

fn check_nats_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("nats://")
        .ok_or("it does not start with `nats://`")?;
    let (host, port) = rest.rsplit_once(':').ok_or("it has no `:port`")?;
    check_host(host)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a port"))?;
    Ok(s.to_string())
}

/// Spans kept for cross-file checks of the catalog.
struct CatalogSpans<'y> {
    services: Vec<&'y Y>,
}

fn decode_catalog<'y>(cx: &mut Cx, root: &'y Y) -> Option<(Catalog, CatalogSpans<'y>)> {
    let f = cx.fields(root, "", &["default_tag", "roles", "services"])?;
    let default_tag = match f.get("default_tag") {
        Some(v) => cx.checked(v, "default_tag", "a tag like `tag:worker`", check_tag),
        None => Some("tag:worker".to_string()),
    };
    let mut roles = BTreeMap::new();
    let mut ok = default_tag.is_some();
    if let Some(v) = cx.required(
        &f,
        "roles",
        "a mapping of role names to { tag, description }",
    ) {
        if let Some(rf) = cx.fields_any(v, "roles") {
            for (k, val) in rf {
                let field = format!("roles.{}", k.as_str().unwrap_or("?"));
                let Some(name) = cx.checked(
                    k,
                    &field,
                    "a role name (lowercase hostname label)",
                    Role::parse,
                ) else {
                    ok = false;
                    continue;
                };
                let mut spec = RoleSpec {
                    name: name.clone(),
                    tag: None,
                    description: None,
                };
                if !val.is_null() {
                    if let Some(sf) = cx.fields(val, &field, &["tag", "description"]) {
                        if let Some(t) = sf.get("tag") {
                            spec.tag = cx.checked(
                                t,
                                &join(&field, "tag"),
                                "a tag like `tag:control-plane`",
                                check_tag,
                            );
                            ok &= spec.tag.is_some();
                        }
                        if let Some(d) = sf.get("description") {
                            spec.description = cx.string(d, &join(&field, "description"), "text");
                        }
                    } else {
                        ok = false;
                    }
                }
                if roles.insert(name, spec).is_some() {
                    cx.err(k, &field, "role is declared twice", None);
                    ok = false;
                }
            }
        } else {
            ok = false;
        }
    } else {
        ok = false;
    }
    let known_tags: BTreeSet<String> = roles
        .values()
        .filter_map(|r: &RoleSpec| r.tag.clone())
        .chain(default_tag.clone())
        .collect();

    let mut services = Vec::new();
    let mut spans = CatalogSpans {
        services: Vec::new(),
    };
    let mut seen: HashMap<String, ()> = HashMap::new();
    if let Some(v) = cx.required(&f, "services", "a list of services") {
        for (i, item) in cx
            .list(v, "services", "services")
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let path = format!("services[{i}]");
            let Some(sf) = cx.fields(
                item,
                &path,
                &["name", "description", "port", "protocol", "role", "allow"],
            ) else {
                ok = false;
                continue;
            };
            let name = cx
                .required(&sf, "name", "a service id (lowercase label)")
                .and_then(|v| {
                    cx.checked(
                        v,
                        &join(&path, "name"),
                        "a service id (lowercase label)",
                        Role::parse,
                    )
                });
            if let (Some(n), Some(v)) = (&name, sf.get("name")) {
                if seen.insert(n.to_string(), ()).is_some() {
                    cx.err(
                        v,
                        &join(&path, "name"),
                        format!("service `{n}` is listed twice"),
                        None,
                    );
                    ok = false;
                }
            }
            let description = sf
                .get("description")
                .and_then(|v| cx.string(v, &join(&path, "description"), "text"));
            let port = cx
                .required(&sf, "port", "a port number")
                .and_then(|v| cx.port(v, &join(&path, "port")));
            let protocol = match sf.get("protocol") {
                None => Some(Protocol::Tcp),
                Some(v) => cx.checked(v, &join(&path, "protocol"), "tcp or udp", |s| match s {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    _ => Err("unknown protocol".into()),
                }),
            };
            let role_node = cx.required(&sf, "role", "the role whose nodes host the service");
            let role = role_node
                .and_then(|v| cx.checked(v, &join(&path, "role"), "a role name", Role::parse));
            if let (Some(r), Some(v)) = (&role, role_node) {
                if !roles.contains_key(r) {
                    let known: Vec<&str> = roles.keys().map(Role::as_str).collect();
                    let hint = closest(r.as_str(), &known)
                        .map(|c| format!("a role of `roles:` (did you mean `{c}`?)"));
                    cx.err(
                        v,
                        &join(&path, "role"),
                        format!("role `{r}` is not in the catalog's `roles:`"),
                        hint.or(Some("a role of `roles:`".into())),
                    );
                    ok = false;
                }
            }
            let mut allow = Vec::new();
            if let Some(v) = cx.required(
                &sf,
                "allow",
                "a list of sources (tag:…, group:…, autogroup:…)",
            ) {
                for (j, a) in cx
                    .list(v, &join(&path, "allow"), "sources")
                    .unwrap_or(&[])
                    .iter()
                    .enumerate()
                {
                    let field = format!("{path}.allow[{j}]");
                    let expected =
                        "`tag:…` of a role, the operators' `group:…`, an `autogroup:…` or `*`";
                    let Some(s) = cx.string(a, &field, expected) else {
                        ok = false;
                        continue;
                    };
                    let valid = if s.starts_with("tag:") {
                        check_tag(&s).and_then(|t| {
                            if known_tags.contains(&t) {
                                Ok(t)
                            } else {
                                Err(format!(
                                    "no role carries tag `{t}` (known: {})",
                                    known_tags.iter().cloned().collect::<Vec<_>>().join(", ")
                                ))
                            }
                        })
                    } else if s.starts_with("group:") {
                        check_group(&s)
                    } else if SOURCE_AUTOGROUPS.contains(&s.as_str()) || s == "*" {
                        Ok(s.clone())
                    } else {
                        Err("not a selector".into())
                    };
                    match valid {
                        Ok(s) => allow.push(s),
                        Err(why) => {
                            cx.err(
                                a,
                                &field,
                                format!("`{}`: {why}", s.escape_debug()),
                                Some(expected.into()),
                            );
                            ok = false;
                        }
                    }
                }
            }
            allow.sort();
            allow.dedup();
            match (name, port, protocol, role) {
                (Some(name), Some(port), Some(protocol), Some(role)) => {
                    services.push(Service {
                        name,
                        description,
                        port,
                        protocol,
                        role,
                        allow,
                    });
                    spans.services.push(item);
                }
                _ => ok = false,
            }
        }
    } else {
        ok = false;
    }
    if !ok {
        return None;
    }
    Some((
        Catalog {
            roles,
            default_tag: default_tag?,
            services,
        },
        spans,
    ))
}

impl Cx<'_> {
    /// The entries of a mapping whose keys are names (not a fixed field set).
    fn fields_any<'y>(&mut self, node: &'y Y, path: &str) -> Option<Vec<(&'y Y, &'y Y)>> {
        match &node.value {
            Value::Map(entries) => Some(entries.iter().map(|(k, v)| (k, v)).collect()),
            _ => {
                self.err(
                    node,
                    path,
                    format!("found {}", node.kind()),
                    Some("a mapping".into()),
                );
                None
            }
        }
    }
}

/// Settings plus the positions needed for cross-file checks.
struct RawSettings<'y> {
    settings: Settings,
    control_plane: &'y Y,
    nats_url_given: bool,
}

fn decode_settings<'y>(cx: &mut Cx, root: &'y Y) -> Option<RawSettings<'y>> {
    let f = cx.fields(
        root,
        "",
        &[
            "control_plane",
            "nats_url",
            "control_plane_port",
            "tailnet",
            "operators",
            "ntfy",
            "fleet",
            "state_version",
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
    let cp_node = cx.required(&f, "control_plane", "the name of the control-plane node");
    let control_plane =
        cp_node.and_then(|v| cx.checked(v, "control_plane", "a node name", NodeName::parse));
    let nats_url = f.get("nats_url").and_then(|v| {
        cx.checked(
            v,
            "nats_url",
            "a URL like nats://100.64.0.1:4222",
            check_nats_url,
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
                    Err("letters, digits and `-._@` only".into())
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
                            Err("letters, digits, `-` and `_` only, at most 64".into())
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
            ],
        ) {
            if let Some(t) = ff.get("node_timeout_seconds") {
                match cx.positive(t, "fleet.node_timeout_seconds") {
                    Some(t) => failure.node_timeout_seconds = t,
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
            nats_url: nats_url.unwrap_or_default(),
            control_plane_port,
            tailnet,
            operators,
            failure,
            ntfy,
            state_version,
            node_state_versions: BTreeMap::new(),
        },
        control_plane: cp_node,
        nats_url_given,
    })
}

/// A node plus the positions needed for cross checks, and its `state_version`.
struct NodeSpans<'y> {
    item: &'y Y,
    name: Option<&'y Y>,
    ip: Option<&'y Y>,
    state_version: Option<StateVersion>,
}

/// What `state_version` must look like.
const STATE_VERSION_EXPECTED: &str = "the NixOS release the node was first installed with, as a quoted \"YY.MM\" like \"25.11\" (never changed after installation)";

fn decode_nodes<'y>(
    cx: &mut Cx,
    root: &'y Y,
    catalog: Option<&Catalog>,
) -> Option<Vec<(Node, NodeSpans<'y>)>> {
    let f = cx.fields(root, "", &["nodes"])?;
    let list = cx.required(&f, "nodes", "a list of nodes")?;
    let items = cx.list(list, "nodes", "nodes")?;
    let mut out = Vec::new();
    let mut ok = true;
    const FIELDS: [&str; 10] = [
        "name",
        "tailscale_ip",
        "roles",
        "resources",
        "os",
        "ssh_user",
        "host_key",
        "public_address",
        "state_version",
        "models",
    ];
    for (i, item) in items.iter().enumerate() {
        let path = format!("nodes[{i}]");
        // Name the node in every message about it, even those found before its name is checked.
        cx.node = match &item.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some("name"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string),
            _ => None,
        };
        let Some(nf) = cx.fields(item, &path, &FIELDS) else {
            ok = false;
            continue;
        };
        let name_node = cx.required(&nf, "name", "a hostname label like worker-01");
        let name = name_node.and_then(|v| {
            cx.checked(
                v,
                &join(&path, "name"),
                "an RFC 1123 hostname label (lowercase letters, digits, '-', at most 63)",
                NodeName::parse,
            )
        });
        cx.node = name
            .as_ref()
            .map(|n| n.to_string())
            .or_else(|| name_node.and_then(|v| v.as_str()).map(str::to_string));
        let ip_node = cx.required(
            &nf,
            "tailscale_ip",
            "a Tailscale address in 100.64.0.0/10 or fd7a:115c:a1e0::/48",
        );
        let tailscale_ip = ip_node.and_then(|v| {
            cx.checked(
                v,
                &join(&path, "tailscale_ip"),
                "a Tailscale address in 100.64.0.0/10 or fd7a:115c:a1e0::/48",
                |s| {
                    let ip: IpAddr = s.parse().map_err(|_| "not an IP address".to_string())?;
                    if is_tailnet_addr(&ip) {
                        Ok(ip)
                    } else {
                        Err("outside Tailscale's address ranges".into())
                    }
                },
            )
        });
        let mut roles: Vec<Role> = Vec::new();
        let mut roles_ok = true;
        if let Some(v) = cx.required(&nf, "roles", "a list of roles from fleet/services.yml") {
            let items = cx.list(v, &join(&path, "roles"), "roles");
            roles_ok &= items.is_some();
            for (j, r) in items.unwrap_or(&[]).iter().enumerate() {
                let field = format!("{path}.roles[{j}]");
                let Some(role) = cx.checked(
                    r,
                    &field,
                    "a role name (lowercase letters, digits, '-')",
                    Role::parse,
                ) else {
                    roles_ok = false;
                    continue;
                };
                if let Some(cat) = catalog {
                    if !cat.roles.contains_key(&role) {
                        let known: Vec<&str> = cat.roles.keys().map(Role::as_str).collect();
                        let hint = match closest(role.as_str(), &known) {
                            Some(c) => {
                                format!("a role of fleet/services.yml (did you mean `{c}`?)")
                            }
                            None => format!("one of {}", known.join(", ")),
                        };
                        cx.err(
                            r,
                            &field,
                            format!("role `{role}` is not in the catalog"),
                            Some(hint),
                        );
                        roles_ok = false;
                    }
                }
                if roles.contains(&role) {
                    cx.err(
                        r,
                        &field,
                        format!("role `{role}` is listed twice"),
                        Some("each role once".into()),
                    );
                    roles_ok = false;
                    continue;
                }
                roles.push(role);
            }
            if roles.is_empty() && roles_ok {
                cx.err(
                    v,
                    &join(&path, "roles"),
                    "the node has no roles",
                    Some("at least one role".into()),
                );
                roles_ok = false;
            }
        } else {
            roles_ok = false;
        }
        let mut resources = None;
        if let Some(v) = cx.required(&nf, "resources", "a mapping { cpu, ram_gb }") {
            let rpath = join(&path, "resources");
            if let Some(rf) = cx.fields(v, &rpath, &["cpu", "ram_gb", "gpu"]) {
                let cpu = cx
                    .required(&rf, "cpu", "a positive number of cores")
                    .and_then(|v| cx.positive(v, &join(&rpath, "cpu")));
                let ram = cx
                    .required(&rf, "ram_gb", "a positive number of GiB")
                    .and_then(|v| cx.positive(v, &join(&rpath, "ram_gb")));
                let gpu = match rf.get("gpu") {
                    Some(v) => cx
                        .int(v, &join(&rpath, "gpu"), "a number of GPUs")
                        .and_then(|g| {
                            if (0..=1024).contains(&g) {
                                Some(g as u32)
                            } else {
                                cx.err(
                                    v,
                                    &join(&rpath, "gpu"),
                                    format!("{g} GPUs"),
                                    Some("0 to 1024".into()),
                                );
                                None
                            }
                        })
                        .map(Some),
                    None => Some(None),
                };
                if let (Some(cpu), Some(ram_gb), Some(gpu)) = (cpu, ram, gpu) {
                    resources = Some(Resources { cpu, ram_gb, gpu });
                }
            }
        }
        let os = match nf.get("os") {
            None => Some(Os::Nixos),
            Some(v) => cx.checked(v, &join(&path, "os"), "nixos, linux or auto", |s| match s {
                "nixos" => Ok(Os::Nixos),
                "linux" => Ok(Os::Linux),
                "auto" => Ok(Os::Auto),
                _ => Err("unknown OS".into()),
            }),
        };
        let ssh_user = match nf.get("ssh_user") {
            None => Some("root".to_string()),
            Some(v) => cx.checked(v, &join(&path, "ssh_user"), "a Unix user name", check_user),
        };
        let host_key = match nf.get("host_key") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "host_key"),
                    "an SSH host public key (ssh-ed25519 AAAA… or ssh-rsa AAAA…)",
                    |s| check_public_key(s, false),
                )
                .map(Some),
        };
        let state_version = match nf.get("state_version") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "state_version"),
                    STATE_VERSION_EXPECTED,
                    StateVersion::parse,
                )
                .map(Some),
        };
        let public_address = match nf.get("public_address") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "public_address"),
                    "a host name or IP address",
                    check_host,
                )
                .map(Some),
        };
        let mut models: Vec<String> = Vec::new();
        let mut models_ok = true;
        if let Some(v) = nf.get("models") {
            let field = join(&path, "models");
            let items = cx.list(v, &field, "a list of model names");
            models_ok &= items.is_some();
            for (j, m) in items.unwrap_or(&[]).iter().enumerate() {
                let field = format!("{field}[{j}]");
                let Some(model) = cx.checked(
                    m,
                    &field,
                    "a model name like glm-4.5-air (letters, digits and . _ - : / + @)",
                    |s| check_model(s).map(|()| s.to_string()),
                ) else {
                    models_ok = false;
                    continue;
                };
                if models.contains(&model) {
                    cx.err(
                        m,
                        &field,
                        format!("model `{model}` is listed twice"),
                        Some("each model once".into()),
                    );
                    models_ok = false;
                    continue;
                }
                models.push(model);
            }
        }
        match (
            name,
            tailscale_ip,
            resources,
            os,
            ssh_user,
            host_key,
            public_address,
            state_version,
        ) {
            (
                Some(name),
                Some(tailscale_ip),
                Some(resources),
                Some(os),
                Some(ssh_user),
                Some(host_key),
                Some(public_address),
                Some(state_version),
            ) if roles_ok && models_ok => {
                out.push((
                    Node {
                        name,
                        tailscale_ip,
                        roles,
                        resources,
                        os,
                        ssh_user,
                        host_key,
                        public_address,
                        models,
                    },
                    NodeSpans {
                        item,
                        name: name_node,
                        ip: ip_node,
                        state_version,
                    },
                ));
            }
            _ => ok = false,
        }
    }
    cx.node = None;
    // Duplicates are checked here, on what decoded, so they are reported even when other nodes are broken.
    let mut names: HashMap<&NodeName, ()> = HashMap::new();
    let mut ips: HashMap<IpAddr, &NodeName> = HashMap::new();
    for (node, spans) in &out {
        if names.insert(&node.name, ()).is_some() {
            let at = spans.name.unwrap_or(spans.item);
            cx.node = Some(node.name.to_string());
            cx.err(
                at,
                "nodes[].name",
                format!("duplicate node name `{}`", node.name),
                Some("unique node names".into()),
            );
            ok = false;
        }
        if let Some(other) = ips.insert(node.tailscale_ip, &node.name) {
            let at = spans.ip.unwrap_or(spans.item);
            cx.node = Some(node.name.to_string());
            cx.err(
                at,
                "nodes[].tailscale_ip",
                format!(
                    "duplicate tailscale_ip {} (also used by {other})",
                    node.tailscale_ip
                ),
                Some("a unique address per node".into()),
            );
            ok = false;
        }
    }
    cx.node = None;
    if ok {
        Some(out)
    } else {
        None
    }
}

fn cross_check<'t>(
    cx: &mut Cx<'t>,
    texts: &'t FleetTexts,
    catalog: Catalog,
    cat_spans: &CatalogSpans,
    raw: RawSettings,
    nodes: Vec<(Node, NodeSpans)>,
) -> Option<Fleet> {
    let mut ok = true;
    let cp_role = Role::parse(CONTROL_PLANE_ROLE).ok()?;
    let nodes_root_pos = nodes.first().map(|(_, s)| s.item);
    if !nodes.iter().any(|(n, _)| n.has_role(&cp_role)) {
        cx.file = &texts.paths.nodes;
        if let Some(at) = nodes_root_pos {
            cx.err(
                at,
                "nodes[].roles",
                format!("no node has the `{CONTROL_PLANE_ROLE}` role"),
                Some(format!(
                    "exactly the control plane node to list `{CONTROL_PLANE_ROLE}`"
                )),
            );
        } else {
            cx.problems.push(
                Problem::at(
                    &texts.paths.nodes,
                    yaml::Pos::START,
                    1,
                    "nodes",
                    "there are no nodes".into(),
                )
                .expected("at least the control-plane node"),
            );
        }
        ok = false;
    }
    let mut settings = raw.settings;
    match nodes.iter().find(|(n, _)| n.name == settings.control_plane) {
        None => {
            cx.file = &texts.paths.fleet;
            let known: Vec<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
            let hint = match closest(settings.control_plane.as_str(), &known) {
                Some(c) => format!("a node of nodes.yml (did you mean `{c}`?)"),
                None => format!("one of {}", known.join(", ")),
            };
            cx.err(
                raw.control_plane,
                "control_plane",
                format!("node `{}` is not in nodes.yml", settings.control_plane),
                Some(hint),
            );
            ok = false;
        }
        Some((cp, _)) if !cp.has_role(&cp_role) => {
            cx.file = &texts.paths.fleet;
            cx.err(
                raw.control_plane,
                "control_plane",
                format!(
                    "node `{}` does not have the `{CONTROL_PLANE_ROLE}` role",
                    cp.name
                ),
                Some(format!("the node with role `{CONTROL_PLANE_ROLE}`")),
            );
            ok = false;
        }
        Some((cp, _)) => {
            if !raw.nats_url_given {
                let port = catalog
                    .services
                    .iter()
                    .find(|s| s.name.as_str() == "nats")
                    .map_or(4222, |s| s.port);
                settings.nats_url = match cp.tailscale_ip {
                    IpAddr::V4(ip) => format!("nats://{ip}:{port}"),
                    IpAddr::V6(ip) => format!("nats://[{ip}]:{port}"),
                };
            }
        }
    }
    cx.file = &texts.paths.services;
    for (svc, at) in catalog.services.iter().zip(&cat_spans.services) {
        if !nodes.iter().any(|(n, _)| n.has_role(&svc.role)) {
            cx.err(
                at,
                &format!("services.{}.role", svc.name),
                format!(
                    "service `{}` is hosted by role `{}`, which no node has",
                    svc.name, svc.role
                ),
                Some("a role that at least one node in nodes.yml lists".into()),
            );
            ok = false;
        }
        for a in &svc.allow {
            if a.starts_with("group:") && *a != settings.operators.group {
                cx.err(
                    at,
                    &format!("services.{}.allow", svc.name),
                    format!("unknown group `{a}`"),
                    Some(format!(
                        "the operators' group `{}` from fleet.yml",
                        settings.operators.group
                    )),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    settings.node_state_versions = nodes
        .iter()
        .filter_map(|(n, s)| Some((n.name.clone(), s.state_version.clone()?)))
        .collect();
    let mut nodes: Vec<Node> = nodes.into_iter().map(|(n, _)| n).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Fleet {
        nodes,
        catalog,
        settings,
        sources: texts.paths.clone(),
    })
}
