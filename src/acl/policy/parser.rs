//! The HuJSON parser: the text into a [`Policy`], every value with its line and column, and
//! every content problem the server would reject collected as an [`Issue`].

use super::types::*;
use crate::acl::ports::PortSet;
use ipnet::IpNet;
use jsonc_parser::ast::{Object, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Top-level fields of the policy format.
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "acls",
    "grants",
    "ssh",
    "groups",
    "tagOwners",
    "hosts",
    "ipsets",
    "postures",
    "defaultSrcPosture",
    "autoApprovers",
    "nodeAttrs",
    "tests",
    "sshTests",
    "derpMap",
    "disableIPv4",
    "OneCGNATRoute",
    "oneCGNATRoute",
    "randomizeClientPort",
    "attrConfig",
];
const ACL_FIELDS: &[&str] = &[
    "action",
    "src",
    "dst",
    "proto",
    "srcPosture",
    "users",
    "ports",
];
const GRANT_FIELDS: &[&str] = &["src", "dst", "ip", "app", "srcPosture", "via"];
const SSH_FIELDS: &[&str] = &[
    "action",
    "src",
    "dst",
    "users",
    "checkPeriod",
    "acceptEnv",
    "srcPosture",
    "recorder",
    "enforceRecorder",
];
const TEST_FIELDS: &[&str] = &[
    "src",
    "proto",
    "accept",
    "deny",
    "srcPostureAttrs",
    "user",
    "allow",
];
const SSH_TEST_FIELDS: &[&str] = &["src", "dst", "accept", "check", "deny"];

/// Reads one top-level section into the policy: `(cx, section name, its value, policy)`.
type ReadSection = fn(&mut Cx<'_>, &str, &Value<'_>, &mut Policy);

/// The sections the parser reads, one entry each: arrays of rules ([`Cx::rules`]) or objects of
/// named entries ([`Cx::entries`]). The other top-level fields are accepted, not looked into.
#[rustfmt::skip]
const SECTIONS: &[(&str, ReadSection)] = &[
    ("acls",      |cx, s, v, p| p.rules.extend(cx.rules(s, v, Cx::acl))),
    ("grants",    |cx, s, v, p| p.rules.extend(cx.rules(s, v, Cx::grant))),
    ("ssh",       |cx, s, v, p| p.ssh = Some(cx.rules(s, v, Cx::ssh))),
    ("tests",     |cx, s, v, p| p.tests = cx.rules(s, v, Cx::test)),
    ("sshTests",  |cx, s, v, p| p.ssh_tests = cx.rules(s, v, Cx::ssh_test)),
    ("groups",    |cx, s, v, p| p.groups = cx.entries(s, v, Cx::group)),
    ("tagOwners", |cx, s, v, p| p.tag_owners = cx.entries(s, v, Cx::tag_owner)),
    ("ipsets",    |cx, s, v, p| p.ipsets = cx.entries(s, v, Cx::ipset)),
    ("hosts",     |cx, s, v, p| p.hosts = cx.entries(s, v, Cx::host)),
];

/// Line and column lookup for byte offsets.
struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    fn loc(&self, offset: usize) -> Loc {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset.min(self.text.len()))
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc { line, column }
    }
}

struct Cx<'t> {
    lines: Lines<'t>,
    issues: Vec<Issue>,
}

fn value_start(v: &Value) -> usize {
    match v {
        Value::StringLit(x) => x.range.start,
        Value::NumberLit(x) => x.range.start,
        Value::BooleanLit(x) => x.range.start,
        Value::Object(x) => x.range.start,
        Value::Array(x) => x.range.start,
        Value::NullKeyword(x) => x.range.start,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::StringLit(_) => "a string",
        Value::NumberLit(_) => "a number",
        Value::BooleanLit(_) => "a boolean",
        Value::Object(_) => "an object",
        Value::Array(_) => "an array",
        Value::NullKeyword(_) => "null",
    }
}

impl<'t> Cx<'t> {
    fn loc(&self, v: &Value) -> Loc {
        self.lines.loc(value_start(v))
    }

    fn issue(&mut self, loc: Loc, kind: IssueKind, message: String, hint: Option<String>) {
        self.issues.push(Issue {
            loc,
            kind,
            message,
            hint,
        });
    }

    fn wrong_type(&mut self, v: &Value, field: &str, expected: &str) {
        let loc = self.loc(v);
        self.issue(
            loc,
            IssueKind::InvalidValue,
            format!("{field} is {}, expected {expected}", kind_of(v)),
            None,
        );
    }

    /// The properties of an object, reporting unknown and duplicate fields.
    fn fields<'v, 'a>(
        &mut self,
        obj: &'v Object<'a>,
        what: &str,
        known: &[&str],
    ) -> Vec<(String, Loc, &'v Value<'a>)> {
        let mut seen: BTreeMap<String, Loc> = BTreeMap::new();
        let mut out = Vec::new();
        for p in &obj.properties {
            let name = p.name.as_str().to_string();
            let loc = self.lines.loc(p.range.start);
            if let Some(first) = seen.get(&name) {
                let msg = format!(
                    "{what}: field {name:?} appears twice (first at line {})",
                    first.line
                );
                self.issue(loc, IssueKind::DuplicateField, msg, None);
                continue;
            }
            seen.insert(name.clone(), loc);
            if !known.contains(&name.as_str()) {
                let hint = crate::suggest::closest(&name, known)
                    .map(|c| format!("did you mean {c:?}? Fields of {what}: {}", known.join(", ")))
                    .or_else(|| Some(format!("fields of {what}: {}", known.join(", "))));
                self.issue(
                    loc,
                    IssueKind::UnknownField,
                    format!("{what}: {name:?} is not a field of the Tailscale policy format (the server rejects unknown fields)"),
                    hint,
                );
                continue;
            }
            out.push((name, loc, &p.value));
        }
        out
    }

    fn string(&mut self, v: &Value, field: &str) -> Option<Spanned<String>> {
        match v {
            Value::StringLit(s) => Some(Spanned {
                value: s.value.to_string(),
                loc: self.lines.loc(s.range.start),
            }),
            other => {
                self.wrong_type(other, field, "a string");
                None
            }
        }
    }

    fn strings(&mut self, v: &Value, field: &str) -> Vec<Spanned<String>> {
        match v {
            Value::Array(a) => a
                .elements
                .iter()
                .filter_map(|e| self.string(e, &format!("an item of {field}")))
                .collect(),
            other => {
                self.wrong_type(other, field, "an array of strings");
                Vec::new()
            }
        }
    }

    fn selectors(&mut self, v: &Value, field: &str) -> Vec<Spanned<Selector>> {
        let mut out = Vec::new();
        for s in self.strings(v, field) {
            match Selector::parse(&s.value) {
                Ok(sel) => out.push(Spanned {
                    value: sel,
                    loc: s.loc,
                }),
                Err(e) => self.issue(
                    s.loc,
                    IssueKind::InvalidValue,
                    format!("{field}: {e}"),
                    None,
                ),
            }
        }
        out
    }

    fn objects<'v, 'a>(&mut self, v: &'v Value<'a>, field: &str) -> Vec<&'v Object<'a>> {
        match v {
            Value::Array(a) => a
                .elements
                .iter()
                .filter_map(|e| match e {
                    Value::Object(o) => Some(o),
                    other => {
                        self.wrong_type(other, &format!("an item of {field}"), "an object");
                        None
                    }
                })
                .collect(),
            other => {
                self.wrong_type(other, field, "an array of objects");
                Vec::new()
            }
        }
    }

    /// A rule's `proto` (`None` when it is not a protocol: an issue).
    fn proto(&mut self, v: &Value, what: &str) -> Option<Proto> {
        let p = self.string(v, &format!("{what}.proto"))?;
        match Proto::parse(&p.value) {
            Ok(proto) => Some(proto),
            Err(e) => {
                let msg = format!("{what}.proto: {e}");
                self.issue(p.loc, IssueKind::InvalidValue, msg, None);
                None
            }
        }
    }

    /// An array of rule objects: each read by `item` with its index; a rule it drops (`None`)
    /// is left out.
    fn rules<T>(
        &mut self,
        section: &str,
        v: &Value,
        item: fn(&mut Self, usize, &Object) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (i, o) in self.objects(v, section).into_iter().enumerate() {
            out.extend(item(self, i, o));
        }
        out
    }

    /// An object of named entries: each read by `entry` from its name, position and value; an
    /// entry it refuses (`None`) is left out. A later entry of the same name replaces an earlier.
    fn entries<T>(
        &mut self,
        section: &str,
        v: &Value,
        entry: fn(&mut Self, &str, Loc, &Value) -> Option<T>,
    ) -> BTreeMap<String, Spanned<T>> {
        let mut out = BTreeMap::new();
        match v {
            Value::Object(o) => {
                for p in &o.properties {
                    let name = p.name.as_str().to_string();
                    let loc = self.lines.loc(p.range.start);
                    if let Some(value) = entry(self, &name, loc, &p.value) {
                        out.insert(name, Spanned { value, loc });
                    }
                }
            }
            other => self.wrong_type(other, section, "an object"),
        }
        out
    }

    /// A `groups` entry: its members (users, never groups).
    fn group(&mut self, name: &str, loc: Loc, v: &Value) -> Option<Vec<String>> {
        if !name.starts_with("group:") {
            self.issue(
                loc,
                IssueKind::InvalidValue,
                format!("groups: {name:?} must start with \"group:\""),
                None,
            );
            return None;
        }
        let members = self.strings(v, &format!("groups.{name}"));
        for m in &members {
            if m.value.starts_with("group:") {
                self.issue(
                    m.loc,
                    IssueKind::InvalidValue,
                    format!(
                        "groups.{name}: groups cannot contain groups ({:?})",
                        m.value
                    ),
                    None,
                );
            }
        }
        Some(members.into_iter().map(|m| m.value).collect())
    }

    /// A `tagOwners` entry: the tag's owners.
    fn tag_owner(&mut self, name: &str, loc: Loc, v: &Value) -> Option<Vec<Spanned<String>>> {
        self.named_strings(("tagOwners", "tag:", "a tag (\"tag:name\")"), name, loc, v)
    }

    /// An `ipsets` entry: its operations, as written.
    fn ipset(&mut self, name: &str, loc: Loc, v: &Value) -> Option<Vec<Spanned<String>>> {
        self.named_strings(
            ("ipsets", "ipset:", "an ipset name (\"ipset:name\")"),
            name,
            loc,
            v,
        )
    }

    /// An entry of `section` whose name must be a `prefix` selector (else: "is not `what`"),
    /// and whose value is an array of strings.
    fn named_strings(
        &mut self,
        (section, prefix, what): (&str, &str, &str),
        name: &str,
        loc: Loc,
        v: &Value,
    ) -> Option<Vec<Spanned<String>>> {
        if !name.starts_with(prefix) || Selector::parse(name).is_err() {
            let msg = format!("{section}: {name:?} is not {what}");
            self.issue(loc, IssueKind::InvalidValue, msg, None);
            return None;
        }
        Some(self.strings(v, &format!("{section}.{name}")))
    }

    /// A `hosts` entry: an IP address or CIDR, under a name without `@`.
    fn host(&mut self, name: &str, loc: Loc, v: &Value) -> Option<IpNet> {
        let addr = self.string(v, &format!("hosts.{name}"))?;
        let net = addr
            .value
            .parse::<IpNet>()
            .or_else(|_| addr.value.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(net) if !name.contains('@') => return Some(net),
            Ok(_) => self.issue(
                loc,
                IssueKind::InvalidValue,
                format!("hosts: {name:?} may not contain '@'"),
                None,
            ),
            Err(_) => self.issue(
                addr.loc,
                IssueKind::InvalidValue,
                format!(
                    "hosts.{name}: {:?} is not an IP address or CIDR",
                    addr.value
                ),
                None,
            ),
        }
        None
    }

    /// An `acls` entry (always kept: its problems are issues).
    fn acl(&mut self, index: usize, obj: &Object) -> Option<NetRule> {
        let what = format!("acls[{index}]");
        let loc = self.lines.loc(obj.range.start);
        let fields = self.fields(obj, &what, ACL_FIELDS);
        let mut src = Vec::new();
        let mut dst_texts = Vec::new();
        let mut proto = Proto::Default;
        let mut action_seen = false;
        for (name, floc, v) in fields {
            match name.as_str() {
                "action" => {
                    action_seen = true;
                    if let Some(a) = self.string(v, &format!("{what}.action")) {
                        if a.value != "accept" {
                            self.issue(
                                a.loc,
                                IssueKind::InvalidValue,
                                format!(
                                    "{what}.action is {:?}; the only action is \"accept\"",
                                    a.value
                                ),
                                None,
                            );
                        }
                    }
                }
                "src" | "users" => src = self.selectors(v, &format!("{what}.{name}")),
                "dst" | "ports" => dst_texts = self.strings(v, &format!("{what}.{name}")),
                "proto" => proto = self.proto(v, &what).unwrap_or(proto),
                _ => {
                    let _ = floc;
                }
            }
        }
        if !action_seen {
            self.issue(
                loc,
                IssueKind::InvalidValue,
                format!("{what} has no \"action\""),
                Some("add \"action\": \"accept\"".into()),
            );
        }
        let mut dst = Vec::new();
        for d in dst_texts {
            match parse_acl_dst(&d.value, proto) {
                Ok(t) => dst.push(Spanned { value: t, loc: d.loc }),
                Err(e) => self.issue(
                    d.loc,
                    IssueKind::MalformedHostPort,
                    format!("{what}: {e}"),
                    Some("destinations are host:ports, e.g. \"tag:worker:22\", \"tag:control-plane:4000,4222\", \"100.64.0.2:*\"".into()),
                ),
            }
        }
        Some(NetRule {
            kind: RuleKind::Acl,
            index,
            src,
            dst,
            loc,
        })
    }

    /// A `grants` entry, its network part (always kept: its problems are issues).
    fn grant(&mut self, index: usize, obj: &Object) -> Option<NetRule> {
        let what = format!("grants[{index}]");
        let loc = self.lines.loc(obj.range.start);
        let fields = self.fields(obj, &what, GRANT_FIELDS);
        let mut src = Vec::new();
        let mut hosts = Vec::new();
        let mut ips: Vec<(Proto, PortSet)> = Vec::new();
        for (name, _, v) in fields {
            match name.as_str() {
                "src" => src = self.selectors(v, &format!("{what}.src")),
                "dst" => hosts = self.selectors(v, &format!("{what}.dst")),
                "ip" => {
                    for s in self.strings(v, &format!("{what}.ip")) {
                        match parse_grant_ip(&s.value) {
                            Ok(x) => ips.push(x),
                            Err(e) => self.issue(
                                s.loc,
                                IssueKind::MalformedHostPort,
                                format!("{what}.ip: {e}"),
                                None,
                            ),
                        }
                    }
                }
                _ => {}
            }
        }
        let mut dst = Vec::new();
        for h in &hosts {
            for (proto, ports) in &ips {
                dst.push(Spanned {
                    value: Target {
                        host: h.value.clone(),
                        ports: ports.clone(),
                        proto: *proto,
                    },
                    loc: h.loc,
                });
            }
        }
        Some(NetRule {
            kind: RuleKind::Grant,
            index,
            src,
            dst,
            loc,
        })
    }

    /// An `ssh` entry; `None` without a valid action.
    fn ssh(&mut self, index: usize, obj: &Object) -> Option<SshRule> {
        let what = format!("ssh[{index}]");
        let loc = self.lines.loc(obj.range.start);
        let fields = self.fields(obj, &what, SSH_FIELDS);
        let mut action = None;
        let (mut src, mut dst, mut users) = (Vec::new(), Vec::new(), Vec::new());
        for (name, _, v) in fields {
            match name.as_str() {
                "action" => {
                    if let Some(a) = self.string(v, &format!("{what}.action")) {
                        match a.value.as_str() {
                            "accept" => action = Some(SshAction::Accept),
                            "check" => action = Some(SshAction::Check),
                            other => self.issue(
                                a.loc,
                                IssueKind::InvalidValue,
                                format!(
                                    "{what}.action is {other:?}; expected \"accept\" or \"check\""
                                ),
                                None,
                            ),
                        }
                    }
                }
                "src" => src = self.selectors(v, &format!("{what}.src")),
                "dst" => dst = self.selectors(v, &format!("{what}.dst")),
                "users" => users = self.strings(v, &format!("{what}.users")),
                _ => {}
            }
        }
        for d in &dst {
            if matches!(
                d.value,
                Selector::Any | Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_)
            ) {
                self.issue(d.loc, IssueKind::InvalidValue, format!("{what}: invalid dst {:?}: SSH destinations are tags, autogroup:self or a user, never '*', IPs or hosts", d.value.to_string()), None);
            }
        }
        for s in &src {
            if matches!(
                s.value,
                Selector::Any | Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_)
            ) {
                self.issue(s.loc, IssueKind::InvalidValue, format!("{what}: invalid src {:?}: SSH sources are users, groups, tags or autogroups", s.value.to_string()), None);
            }
            if action == Some(SshAction::Check) && matches!(s.value, Selector::Tag(_)) {
                self.issue(
                    s.loc,
                    IssueKind::InvalidValue,
                    format!("{what}: \"check\" action does not support tags in src"),
                    None,
                );
            }
        }
        match action {
            Some(action) => Some(SshRule {
                index,
                action,
                src,
                dst,
                users,
                loc,
            }),
            None => {
                self.issue(
                    loc,
                    IssueKind::InvalidValue,
                    format!("{what} has no valid \"action\""),
                    Some("\"action\": \"accept\" or \"check\"".into()),
                );
                None
            }
        }
    }

    /// A `tests` entry; `None` without a source.
    fn test(&mut self, index: usize, obj: &Object) -> Option<AclTest> {
        let what = format!("tests[{index}]");
        let loc = self.lines.loc(obj.range.start);
        let fields = self.fields(obj, &what, TEST_FIELDS);
        let mut src = None;
        let mut proto = Proto::Default;
        let (mut accept, mut deny) = (Vec::new(), Vec::new());
        for (name, _, v) in fields {
            match name.as_str() {
                "src" | "user" => src = self.string(v, &format!("{what}.{name}")),
                "proto" => proto = self.proto(v, &what).unwrap_or(proto),
                "accept" | "allow" => accept = self.strings(v, &format!("{what}.{name}")),
                "deny" => deny = self.strings(v, &format!("{what}.deny")),
                _ => {}
            }
        }
        for d in accept.iter().chain(deny.iter()) {
            if let Err(e) = parse_test_dst(&d.value) {
                self.issue(
                    d.loc,
                    IssueKind::MalformedHostPort,
                    format!("{what}: {e}"),
                    None,
                );
            }
        }
        let Some(src) = src else {
            self.issue(
                loc,
                IssueKind::InvalidValue,
                format!("{what} has no \"src\""),
                None,
            );
            return None;
        };
        Some(AclTest {
            index,
            src,
            proto,
            accept,
            deny,
            loc,
        })
    }

    /// An `sshTests` entry; `None` without a source.
    fn ssh_test(&mut self, index: usize, obj: &Object) -> Option<SshTest> {
        let what = format!("sshTests[{index}]");
        let loc = self.lines.loc(obj.range.start);
        let fields = self.fields(obj, &what, SSH_TEST_FIELDS);
        let mut src = None;
        let (mut dst, mut accept, mut check, mut deny) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, _, v) in fields {
            let field = format!("{what}.{name}");
            match name.as_str() {
                "src" => src = self.string(v, &field),
                "dst" => dst = self.strings(v, &field),
                "accept" => accept = self.strings(v, &field),
                "check" => check = self.strings(v, &field),
                "deny" => deny = self.strings(v, &field),
                _ => {}
            }
        }
        let Some(src) = src else {
            self.issue(
                loc,
                IssueKind::InvalidValue,
                format!("{what} has no \"src\""),
                None,
            );
            return None;
        };
        Some(SshTest {
            index,
            src,
            dst,
            accept,
            check,
            deny,
            loc,
        })
    }
}

/// HuJSON options: JSON plus comments and trailing commas, nothing else of JSON5.
pub fn hujson_options() -> jsonc_parser::ParseOptions {
    jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

/// Parses a policy file. A byte order mark at the start is skipped (lines and columns are
/// those of the text after it, as an editor shows them).
pub fn parse(text: &str) -> Result<Parsed, PolicyError> {
    let (text, _) = crate::fsutil::strip_bom(text);
    let lines = Lines::new(text);
    let ast =
        jsonc_parser::parse_to_ast(text, &Default::default(), &hujson_options()).map_err(|e| {
            PolicyError::Syntax {
                line: e.line_display(),
                column: e.column_display(),
                message: e.kind().to_string(),
            }
        })?;
    let Some(Value::Object(root)) = ast.value else {
        return Err(PolicyError::NotObject);
    };
    let mut cx = Cx {
        lines,
        issues: Vec::new(),
    };
    let mut policy = Policy::default();
    for (name, loc, v) in cx.fields(&root, "the policy", TOP_LEVEL_FIELDS) {
        if let Some((section, read)) = SECTIONS.iter().find(|(s, _)| *s == name) {
            read(&mut cx, section, v, &mut policy);
        }
        policy.sections.insert(name, loc);
    }
    // `rules` holds the `acls` then the `grants`, whatever their order in the text (a stable
    // sort keeps each section's own order).
    policy.rules.sort_by_key(|r| r.kind);
    cx.issues.sort_by_key(|i| i.loc);
    Ok(Parsed {
        policy,
        issues: cx.issues,
    })
}

/// Converts a HuJSON text to standard JSON (comments and trailing commas removed).
pub fn to_json(text: &str) -> Result<serde_json::Value, PolicyError> {
    let (text, _) = crate::fsutil::strip_bom(text);
    jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &hujson_options()).map_err(|e| {
        PolicyError::Syntax {
            line: e.line_display(),
            column: e.column_display(),
            message: e.kind().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_accepted_and_lines_stay_right() {
        let text = "\u{feff}{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},\n  ],\n}\n";
        let parsed = parse(text).expect("a BOM is allowed");
        assert_eq!(parsed.policy.rules.len(), 1);
        assert!(to_json(text).is_ok());
        // A syntax error is reported where an editor shows it.
        match parse("\u{feff}{\n  \"acls\": [}\n}\n") {
            Err(PolicyError::Syntax { line, column, .. }) => assert_eq!((line, column), (2, 12)),
            other => panic!("expected a syntax error: {other:?}"),
        }
    }

    #[test]
    fn host_port_forms() {
        let t = parse_acl_dst("tag:worker:*", Proto::Default).unwrap();
        assert_eq!(t.host, Selector::Tag("tag:worker".into()));
        assert!(t.ports.is_all());
        let t = parse_acl_dst("tag:control-plane:7233,5432,6379,4000", Proto::Default).unwrap();
        assert_eq!(t.ports.to_string(), "4000,5432,6379,7233");
        let t = parse_acl_dst("[fd7a:115c:a1e0::1]:80-90", Proto::Default).unwrap();
        assert_eq!(t.ports.to_string(), "80-90");
        assert!(parse_acl_dst("100.64.0.1", Proto::Default)
            .unwrap_err()
            .0
            .contains("must contain a colon"));
        assert!(parse_acl_dst("100.64.0.1:0", Proto::Default)
            .unwrap_err()
            .0
            .contains("first port must be >0"));
        assert!(parse_acl_dst("tag:worker", Proto::Default)
            .unwrap_err()
            .0
            .contains("missing ports"));
        assert!(parse_acl_dst("tag:worker:22", Proto::parse("icmp").unwrap()).is_err());
        assert!(parse_acl_dst("*:22", Proto::Default).is_ok());
    }

    #[test]
    fn locations_are_lines_and_columns() {
        let text = "{\n  // c\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"],},\n  ],\n  \"bogus\": 1,\n}\n";
        let p = parse(text).unwrap();
        assert_eq!(p.policy.rules[0].loc, Loc { line: 4, column: 5 });
        assert_eq!(p.issues.len(), 1);
        assert_eq!(p.issues[0].kind, IssueKind::UnknownField);
        assert_eq!(p.issues[0].loc, Loc { line: 6, column: 3 });
    }

    #[test]
    fn every_section_read_is_a_field_of_the_format_and_read_once() {
        for (i, (name, _)) in SECTIONS.iter().enumerate() {
            assert!(TOP_LEVEL_FIELDS.contains(name), "{name}");
            assert!(
                !SECTIONS[..i].iter().any(|(n, _)| n == name),
                "{name} twice"
            );
        }
    }

    #[test]
    fn sections_are_read_whatever_their_order_acls_before_grants() {
        let text = r#"{
  "hosts": {"lab": "100.64.0.0/24", "bad": "nope"},
  "grants": [{"src": ["*"], "dst": ["tag:a"], "ip": ["22"]}],
  "tagOwners": {"tag:a": ["group:ops"], "a": []},
  "acls": [{"action": "accept", "src": ["group:ops"], "dst": ["lab:*"]}],
  "groups": {"group:ops": ["alice@example.com", "group:x"]},
  "ssh": [],
  "ipsets": {"ipset:x": ["add 100.64.0.1"]},
  "tests": [{"src": "alice@example.com", "accept": ["tag:a:22"]}],
  "sshTests": [{"dst": ["tag:a"]}],
}"#;
        let p = parse(text).unwrap();
        let kinds: Vec<RuleKind> = p.policy.rules.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [RuleKind::Acl, RuleKind::Grant]);
        assert_eq!(p.policy.rules[0].loc.line, 5);
        assert_eq!(p.policy.hosts.keys().collect::<Vec<_>>(), ["lab"]);
        assert_eq!(p.policy.tag_owners.keys().collect::<Vec<_>>(), ["tag:a"]);
        assert_eq!(p.policy.groups["group:ops"].value.len(), 2);
        assert_eq!(p.policy.ssh, Some(vec![]));
        assert_eq!(p.policy.ipsets.len(), 1);
        assert_eq!((p.policy.tests.len(), p.policy.ssh_tests.len()), (1, 0));
        assert_eq!(p.policy.sections.len(), 9);
        let msgs: Vec<(usize, &str)> = p
            .issues
            .iter()
            .map(|i| (i.loc.line, i.message.as_str()))
            .collect();
        assert_eq!(
            msgs,
            [
                (2, "hosts.bad: \"nope\" is not an IP address or CIDR"),
                (4, "tagOwners: \"a\" is not a tag (\"tag:name\")"),
                (
                    6,
                    "groups.group:ops: groups cannot contain groups (\"group:x\")"
                ),
                (10, "sshTests[0] has no \"src\""),
            ]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        match parse("{\n  \"acls\": [,\n}") {
            Err(PolicyError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(parse("[]"), Err(PolicyError::NotObject)));
    }
}
