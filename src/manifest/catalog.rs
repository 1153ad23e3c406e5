//! `services.yml`: the roles and the service catalog.

use super::decode::{join, Cx};
use super::validate::*;
use super::yaml::Node as Y;
use crate::model::*;
use crate::suggest::closest;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Spans kept for cross-file checks of the catalog.
pub(super) struct CatalogSpans<'y> {
    pub(super) services: Vec<&'y Y>,
}

pub(super) fn decode_catalog<'y>(cx: &mut Cx, root: &'y Y) -> Option<(Catalog, CatalogSpans<'y>)> {
    let f = cx.fields(root, "", &["default_tag", "roles", "services"])?;
    let default_tag = match f.get("default_tag") {
        Some(v) => cx.checked(v, "default_tag", "a tag like `tag:worker`", Tag::parse),
        // A valid literal: never None.
        None => Tag::parse("tag:worker").ok(),
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
                                Tag::parse,
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
        .filter_map(|r: &RoleSpec| r.tag.as_ref().map(Tag::to_string))
        .chain(default_tag.as_ref().map(Tag::to_string))
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
                    _ => Err(InvalidValue::from("unknown protocol")),
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
                        Tag::parse(&s).map_err(String::from).and_then(|t| {
                            if known_tags.contains(t.as_str()) {
                                Ok(t.to_string())
                            } else {
                                Err(format!(
                                    "no role carries tag `{t}` (known: {})",
                                    known_tags.iter().cloned().collect::<Vec<_>>().join(", ")
                                ))
                            }
                        })
                    } else if s.starts_with("group:") {
                        check_group(&s).map_err(String::from)
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
