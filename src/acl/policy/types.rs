//! The policy's types: positions, issues, selectors, protocols, rules and tests, with the
//! small parsers of single values (`tag:x`, `host:ports`, `tcp`).

use crate::acl::ports::PortSet;
use crate::model::InvalidValue;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A position in the policy text (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Loc {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it starts.
    pub loc: Loc,
}

/// Errors that stop parsing altogether.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not HuJSON.
    #[error("line {line}, column {column}: {message} (the policy must be HuJSON: JSON with comments and trailing commas)")]
    Syntax {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
        /// What the parser says.
        message: String,
    },
    /// The top level is not an object.
    #[error("the policy must be a JSON object `{{ … }}`")]
    NotObject,
}

/// What kind of content problem an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueKind {
    /// A field the policy format does not have (the server rejects it).
    UnknownField,
    /// The same field twice in one object.
    DuplicateField,
    /// A value of the wrong type or outside what the format allows.
    InvalidValue,
    /// A destination that is not `host:ports`, or a bad port.
    MalformedHostPort,
}

/// A content problem found while parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Where.
    pub loc: Loc,
    /// What kind.
    pub kind: IssueKind,
    /// What is wrong.
    pub message: String,
    /// What would be right, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Autogroups the policy format knows.
pub const AUTOGROUPS: &[&str] = &[
    "self",
    "internet",
    "member",
    "members",
    "tagged",
    "admin",
    "owner",
    "network-admin",
    "it-admin",
    "billing-admin",
    "auditor",
    "shared",
    "danger-all",
    "nonroot",
];

/// A source or destination host selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `*`: everything.
    Any,
    /// `tag:name` (stored with the prefix).
    Tag(String),
    /// `group:name` (stored with the prefix).
    Group(String),
    /// `autogroup:name` (stored without the prefix).
    Autogroup(String),
    /// A user login such as `alice@example.com`.
    User(String),
    /// `user:*@domain` (stored: the domain).
    UserDomain(String),
    /// `localpart:*@domain` (SSH users only; stored: the domain).
    LocalPart(String),
    /// A Tailscale IP.
    Ip(IpAddr),
    /// A CIDR.
    Cidr(IpNet),
    /// A name from `hosts`.
    Host(String),
    /// `ipset:name` (stored with the prefix).
    IpSet(String),
}

impl Selector {
    /// Parses one selector.
    pub fn parse(s: &str) -> Result<Selector, InvalidValue> {
        Self::parse_text(s).map_err(InvalidValue)
    }

    fn parse_text(s: &str) -> Result<Selector, String> {
        let named = |prefix: &str| -> Result<String, String> {
            let name = &s[prefix.len()..];
            if name.is_empty() {
                return Err(format!("{s:?} has an empty name after {prefix:?}"));
            }
            if let Some(c) = name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(format!("{s:?} contains {c:?}"));
            }
            Ok(name.to_string())
        };
        if s == "*" {
            Ok(Selector::Any)
        } else if s.starts_with("tag:") {
            named("tag:").map(|_| Selector::Tag(s.to_string()))
        } else if s.starts_with("group:") {
            named("group:").map(|_| Selector::Group(s.to_string()))
        } else if s.starts_with("ipset:") {
            named("ipset:").map(|_| Selector::IpSet(s.to_string()))
        } else if let Some(name) = s.strip_prefix("autogroup:") {
            if AUTOGROUPS.contains(&name) {
                Ok(Selector::Autogroup(name.to_string()))
            } else {
                Err(format!(
                    "unknown autogroup {s:?} (known: {})",
                    AUTOGROUPS.join(", ")
                ))
            }
        } else if let Some(d) = s.strip_prefix("user:*@") {
            Ok(Selector::UserDomain(d.to_string()))
        } else if let Some(d) = s.strip_prefix("localpart:*@") {
            Ok(Selector::LocalPart(d.to_string()))
        } else if s.contains('@') {
            Ok(Selector::User(s.to_string()))
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            Ok(Selector::Ip(ip))
        } else if let Ok(net) = s.parse::<IpNet>() {
            Ok(Selector::Cidr(net))
        } else {
            named("").map(Selector::Host)
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Tag(s) | Selector::Group(s) | Selector::User(s) | Selector::Host(s) => {
                f.write_str(s)
            }
            Selector::IpSet(s) => f.write_str(s),
            Selector::Autogroup(n) => write!(f, "autogroup:{n}"),
            Selector::UserDomain(d) => write!(f, "user:*@{d}"),
            Selector::LocalPart(d) => write!(f, "localpart:*@{d}"),
            Selector::Ip(ip) => write!(f, "{ip}"),
            Selector::Cidr(n) => write!(f, "{n}"),
        }
    }
}

/// IP protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proto {
    /// No `proto`: TCP and UDP (ICMP goes wherever any traffic is allowed).
    Default,
    /// Every protocol (a grant's `ip: ["*"]`).
    Any,
    /// One IANA protocol number (6 = TCP, 17 = UDP, 1 = ICMP, …).
    Number(u8),
}

/// IANA number of TCP.
pub const TCP: u8 = 6;
/// IANA number of UDP.
pub const UDP: u8 = 17;
/// IANA number of ICMP.
pub const ICMP: u8 = 1;
/// IANA number of ICMP for IPv6.
pub const ICMPV6: u8 = 58;
/// IANA number of SCTP.
pub const SCTP: u8 = 132;

/// Protocol names the policy format accepts, with their IANA numbers.
const PROTO_NAMES: &[(&str, u8)] = &[
    ("icmp", ICMP),
    ("igmp", 2),
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("tcp", TCP),
    ("egp", 8),
    ("igp", 9),
    ("udp", UDP),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", ICMPV6),
    ("sctp", SCTP),
];

/// The name of IANA protocol `n` (`tcp`, `icmp`, …), or `proto N`.
pub fn proto_name(n: u8) -> String {
    PROTO_NAMES
        .iter()
        .find(|(_, k)| *k == n)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| format!("proto {n}"))
}

/// Can protocol `n` name ports (TCP, UDP, SCTP)?
pub fn proto_has_ports(n: u8) -> bool {
    matches!(n, TCP | UDP | SCTP)
}

impl Proto {
    /// Parses a `proto` value: a name or a number 1–255.
    pub fn parse(s: &str) -> Result<Proto, InvalidValue> {
        Self::parse_text(s).map_err(InvalidValue)
    }

    fn parse_text(s: &str) -> Result<Proto, String> {
        let named = PROTO_NAMES.iter().find(|(name, _)| *name == s);
        let n = match named {
            Some((_, n)) => *n,
            None => match s.parse::<u8>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "unknown protocol {s:?} (expected a name such as tcp, udp, icmp, sctp, or a number 1-255)"
                    ))
                }
            },
        };
        Ok(Proto::Number(n))
    }

    /// Does a rule with this protocol apply to traffic of protocol `n`?
    pub fn matches(&self, n: u8) -> bool {
        match self {
            Proto::Any => true,
            Proto::Default => matches!(n, TCP | UDP | ICMP | ICMPV6),
            Proto::Number(p) => *p == n,
        }
    }

    /// Can this protocol name ports?
    pub fn has_ports(&self) -> bool {
        match self {
            Proto::Any | Proto::Default => true,
            Proto::Number(p) => proto_has_ports(*p),
        }
    }
}

/// A destination: a host selector, its ports and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host part.
    pub host: Selector,
    /// The ports.
    pub ports: PortSet,
    /// The protocol.
    pub proto: Proto,
}

/// Parses a port list: `*`, `22`, `80,443`, `1000-2000`.
pub fn parse_ports(s: &str) -> Result<PortSet, InvalidValue> {
    parse_ports_text(s).map_err(InvalidValue)
}

fn parse_ports_text(s: &str) -> Result<PortSet, String> {
    if s == "*" {
        return Ok(PortSet::all());
    }
    let mut set = PortSet::new();
    for part in s.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |t: &str| -> Result<u16, String> {
            t.parse::<u16>()
                .map_err(|_| format!("port range {part:?}: {t:?} is not a port number (1-65535)"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo == 0 {
            return Err(format!(
                "port range {part:?}: first port must be >0, or use '*' for wildcard"
            ));
        }
        if lo > hi {
            return Err(format!("port range {part:?}: first port is above the last"));
        }
        set.insert_set(&PortSet::range(lo, hi));
    }
    Ok(set)
}

/// Splits `host:ports` (IPv6 literals in brackets) into its two parts.
pub fn split_host_port(s: &str) -> Result<(&str, &str), InvalidValue> {
    split_host_port_text(s).map_err(InvalidValue)
}

fn split_host_port_text(s: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("dst={s:?}: unclosed '[' in an IPv6 address"))?;
        let ports = after
            .strip_prefix(':')
            .ok_or_else(|| format!("dst={s:?}: hostport must contain a colon (\":\")"))?;
        return Ok((ip, ports));
    }
    let (host, ports) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("dst={s:?}: hostport must contain a colon (\":\")"))?;
    if matches!(host, "tag" | "group" | "autogroup" | "ipset" | "user") {
        return Err(format!(
            "dst={s:?}: missing ports after the host (write e.g. \"{s}:22\" or \"{s}:*\")"
        ));
    }
    Ok((host, ports))
}

/// Parses an ACL destination `host:ports` under a rule's protocol.
pub fn parse_acl_dst(s: &str, proto: Proto) -> Result<Target, InvalidValue> {
    parse_acl_dst_text(s, proto).map_err(InvalidValue)
}

fn parse_acl_dst_text(s: &str, proto: Proto) -> Result<Target, String> {
    let (host, ports) = split_host_port_text(s)?;
    let host = Selector::parse_text(host)?;
    let ports = parse_ports_text(ports).map_err(|e| format!("dst={s:?}: {e}"))?;
    if !proto.has_ports() && !ports.is_all() {
        return Err(format!(
            "dst={s:?}: only tcp, udp and sctp can name ports; use '*' with this protocol"
        ));
    }
    Ok(Target { host, ports, proto })
}

/// Parses a grant's `ip` item: `*`, `22`, `tcp:22`, `udp:53`, `tcp:80-90`.
pub fn parse_grant_ip(s: &str) -> Result<(Proto, PortSet), InvalidValue> {
    parse_grant_ip_text(s).map_err(InvalidValue)
}

fn parse_grant_ip_text(s: &str) -> Result<(Proto, PortSet), String> {
    if s == "*" {
        return Ok((Proto::Any, PortSet::all()));
    }
    match s.split_once(':') {
        Some((proto, ports)) => {
            let proto = Proto::parse_text(proto)?;
            Ok((proto, parse_ports_text(ports)?))
        }
        None => Ok((Proto::Default, parse_ports_text(s)?)),
    }
}

/// A test destination `host:port`: one numeric port.
pub fn parse_test_dst(s: &str) -> Result<(Selector, u16), InvalidValue> {
    parse_test_dst_text(s).map_err(InvalidValue)
}

fn parse_test_dst_text(s: &str) -> Result<(Selector, u16), String> {
    let (host, port) = split_host_port_text(s)?;
    let sel = Selector::parse_text(host)?;
    if matches!(sel, Selector::Any | Selector::Cidr(_)) {
        return Err(format!(
            "test destination {s:?}: no '*' or CIDR, name one host"
        ));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("test destination {s:?}: the port must be one number"))?;
    Ok((sel, port))
}

/// Where a network rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// An entry of `acls`.
    Acl,
    /// An entry of `grants`.
    Grant,
}

/// A network access rule (`acls` entry, or the network part of a `grants` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    /// `acls` or `grants`.
    pub kind: RuleKind,
    /// Index in its array.
    pub index: usize,
    /// Sources.
    pub src: Vec<Spanned<Selector>>,
    /// Destinations.
    pub dst: Vec<Spanned<Target>>,
    /// Where the rule starts.
    pub loc: Loc,
}

impl NetRule {
    /// `acls[3]` / `grants[0]`.
    pub fn label(&self) -> String {
        let k = match self.kind {
            RuleKind::Acl => "acls",
            RuleKind::Grant => "grants",
        };
        format!("{k}[{}]", self.index)
    }
}

/// `accept` or `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SshAction {
    /// Allowed.
    Accept,
    /// Allowed after a fresh login.
    Check,
}

/// An `ssh` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRule {
    /// Index in `ssh`.
    pub index: usize,
    /// accept or check.
    pub action: SshAction,
    /// Sources.
    pub src: Vec<Spanned<Selector>>,
    /// Destinations.
    pub dst: Vec<Spanned<Selector>>,
    /// Local users (`root`, `autogroup:nonroot`, `localpart:*@domain`, names).
    pub users: Vec<Spanned<String>>,
    /// Where the rule starts.
    pub loc: Loc,
}

/// A `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclTest {
    /// Index in `tests`.
    pub index: usize,
    /// The source identity.
    pub src: Spanned<String>,
    /// Protocol (default: TCP or UDP).
    pub proto: Proto,
    /// Destinations that must be accepted.
    pub accept: Vec<Spanned<String>>,
    /// Destinations that must be denied.
    pub deny: Vec<Spanned<String>>,
    /// Where the test starts.
    pub loc: Loc,
}

/// An `sshTests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTest {
    /// Index in `sshTests`.
    pub index: usize,
    /// The source identity.
    pub src: Spanned<String>,
    /// Destination hosts.
    pub dst: Vec<Spanned<String>>,
    /// Users that must be accepted.
    pub accept: Vec<Spanned<String>>,
    /// Users that must need a check.
    pub check: Vec<Spanned<String>>,
    /// Users that must be denied.
    pub deny: Vec<Spanned<String>>,
    /// Where the test starts.
    pub loc: Loc,
}

/// A parsed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `groups`: name → members.
    pub groups: BTreeMap<String, Spanned<Vec<String>>>,
    /// `tagOwners`: tag → owners.
    pub tag_owners: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// `hosts`: alias → IP or CIDR.
    pub hosts: BTreeMap<String, Spanned<IpNet>>,
    /// `ipsets`: `ipset:name` → its operations (`add …` / `remove …`), as written.
    pub ipsets: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// Network rules from `acls` then `grants`.
    pub rules: Vec<NetRule>,
    /// `ssh` rules; `None` when the section is absent.
    pub ssh: Option<Vec<SshRule>>,
    /// `tests`.
    pub tests: Vec<AclTest>,
    /// `sshTests`.
    pub ssh_tests: Vec<SshTest>,
    /// Where each top-level field is.
    pub sections: BTreeMap<String, Loc>,
}

/// A parsed policy and the content problems met on the way.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// What could be read.
    pub policy: Policy,
    /// What the server would reject, in text order.
    pub issues: Vec<Issue>,
}
