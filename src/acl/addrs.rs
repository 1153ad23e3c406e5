//! Address selectors (IPs, CIDRs, `hosts` aliases, `ipsets`) and what they cover.
//!
//! A tailnet device has one address in each of Tailscale's ranges (`100.64.0.0/10` and
//! `fd7a:115c:a1e0::/48`); the fleet files give one of them. Whether a selector covers such a
//! device is therefore yes, no, or unknown: unknown when the selector covers only part of the range
//! of the address nodes.yml does not give. An `ipset` is a list of `add`/`remove` operations on
//! IPs, CIDRs, `hosts` aliases, `autogroup:internet` and other ipsets, applied in order (Tailscale's
//! "IP sets"); one whose items the checker cannot read is not evaluated but reported.

use super::policy::Policy;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Tailscale's IPv4 range, `100.64.0.0/10`.
pub const TAILNET_V4: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10);
/// Tailscale's IPv6 range, `fd7a:115c:a1e0::/48`.
pub const TAILNET_V6: IpNet = IpNet::new_assert(
    IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0)),
    48,
);

/// How much of a range a set covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// No address of the range.
    None,
    /// Some addresses of the range, perhaps not all.
    Part,
    /// Every address of the range.
    All,
}

/// Does an address selector cover a device?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covers {
    /// Yes: its known address, or the whole range of its unknown one.
    Yes,
    /// No.
    No,
    /// Cannot be told: the selector covers part of the range of an address the fleet files do not give,
    /// or it is an ipset the checker cannot read.
    Unknown,
}

/// Both nets' addresses overlap (nets are nested or disjoint).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What `net` covers of `range`.
fn net_cover(net: &IpNet, range: &IpNet) -> Cover {
    if net.contains(range) {
        Cover::All
    } else if overlaps(net, range) {
        Cover::Part
    } else {
        Cover::None
    }
}

/// One operand of an ipset operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// An address or CIDR (also a `hosts` alias).
    Net(IpNet),
    /// Another ipset.
    Set(AddrSet),
    /// `autogroup:internet`: addresses outside the tailnet (none of Tailscale's ranges).
    Internet,
}

impl Item {
    fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Item::Net(n) => n.contains(&ip),
            Item::Set(s) => s.contains(ip),
            Item::Internet => !TAILNET_V4.contains(&ip) && !TAILNET_V6.contains(&ip),
        }
    }

    fn cover(&self, range: &IpNet) -> Cover {
        match self {
            Item::Net(n) => net_cover(n, range),
            Item::Set(s) => s.cover(range),
            Item::Internet => {
                if overlaps(range, &TAILNET_V4) || overlaps(range, &TAILNET_V6) {
                    Cover::None
                } else {
                    Cover::Part
                }
            }
        }
    }

    fn nets(&self, out: &mut Vec<IpNet>) {
        match self {
            Item::Net(n) => out.push(*n),
            Item::Set(s) => {
                for (add, i) in &s.ops {
                    if *add {
                        i.nets(out);
                    }
                }
            }
            Item::Internet => {}
        }
    }
}

/// A set of addresses: `add`/`remove` operations applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    ops: Vec<(bool, Item)>,
}

impl AddrSet {
    /// The addresses of one net.
    pub fn net(n: IpNet) -> Self {
        AddrSet {
            ops: vec![(true, Item::Net(n.trunc()))],
        }
    }

    /// Is `ip` in the set?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mut inside = false;
        for (add, item) in &self.ops {
            if item.contains(ip) {
                inside = *add;
            }
        }
        inside
    }

    /// How much of `range` the set covers (`Part` when it cannot be told exactly).
    pub fn cover(&self, range: &IpNet) -> Cover {
        let mut state = Cover::None;
        for (add, item) in &self.ops {
            state = match (add, item.cover(range), state) {
                (_, Cover::None, s) => s,
                (true, Cover::All, _) => Cover::All,
                (true, Cover::Part, Cover::All) => Cover::All,
                (true, Cover::Part, _) => Cover::Part,
                (false, Cover::All, _) => Cover::None,
                (false, Cover::Part, Cover::None) => Cover::None,
                (false, Cover::Part, _) => Cover::Part,
            };
        }
        state
    }

    /// Does the set cover a device at `ip` which, if `other_unknown`, also has an address of the
    /// other family in Tailscale's range that is not known?
    pub fn covers_device(&self, ip: Option<IpAddr>, other_unknown: bool) -> Covers {
        let Some(ip) = ip else { return Covers::No };
        if self.contains(ip) {
            return Covers::Yes;
        }
        if !other_unknown {
            return Covers::No;
        }
        let other = if ip.is_ipv4() { TAILNET_V6 } else { TAILNET_V4 };
        match self.cover(&other) {
            Cover::All => Covers::Yes,
            Cover::Part => Covers::Unknown,
            Cover::None => Covers::No,
        }
    }

    /// An address of the set that is none of `taken`, to stand for "another device in the set";
    /// addresses in Tailscale's ranges come first.
    pub fn sample(&self, taken: &[IpAddr]) -> Option<IpAddr> {
        let mut nets = Vec::new();
        for (add, i) in &self.ops {
            if *add {
                i.nets(&mut nets);
            }
        }
        let mut starts = Vec::new();
        for n in &nets {
            for t in [TAILNET_V4, TAILNET_V6] {
                if n.contains(&t) {
                    starts.push((*n, t.network()));
                } else if t.contains(n) {
                    starts.push((*n, n.network()));
                }
            }
        }
        starts.extend(nets.iter().map(|n| (*n, n.network())));
        // Past a removed range: its first address after.
        for (add, i) in &self.ops {
            if let (false, Item::Net(r)) = (add, i) {
                for n in &nets {
                    if let Some(after) = offset(r.broadcast(), 1) {
                        starts.push((*n, after));
                    }
                }
            }
        }
        let tries = taken.len() as u128 + 2;
        for (n, start) in starts {
            for k in 0..tries {
                let Some(ip) = offset(start, k) else { break };
                if !n.contains(&ip) {
                    break;
                }
                if self.contains(ip) && !taken.contains(&ip) {
                    return Some(ip);
                }
            }
        }
        None
    }
}

/// `ip + k`, in the same family, if it does not overflow.
fn offset(ip: IpAddr, k: u128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let n = u128::from(u32::from(v4)).checked_add(k)?;
            u32::try_from(n).ok().map(|n| IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(k)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// Parses an address or CIDR.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// Every `ipsets` entry of `policy` resolved to a set, or why it cannot be verified.
pub fn resolve_ipsets(
    policy: &Policy,
) -> BTreeMap<String, Result<AddrSet, crate::model::InvalidValue>> {
    let mut out = BTreeMap::new();
    for name in policy.ipsets.keys() {
        let r = resolve(policy, name, &mut Vec::new());
        out.insert(name.clone(), r);
    }
    out
}

fn resolve(
    policy: &Policy,
    name: &str,
    stack: &mut Vec<String>,
) -> Result<AddrSet, crate::model::InvalidValue> {
    if stack.iter().any(|s| s == name) {
        return Err(format!("circular reference ({} -> {name})", stack.join(" -> ")).into());
    }
    let Some(items) = policy.ipsets.get(name) else {
        return Err(format!("{name} is not defined in \"ipsets\"").into());
    };
    stack.push(name.to_string());
    let mut ops = Vec::new();
    for it in &items.value {
        let text = it.value.trim();
        let (add, target) = if let Some(t) = text.strip_prefix("add ") {
            (true, t.trim())
        } else if let Some(t) = text.strip_prefix("remove ") {
            (false, t.trim())
        } else {
            (true, text)
        };
        let item = if target == "autogroup:internet" {
            Item::Internet
        } else if target.starts_with("ipset:") {
            match resolve(policy, target, stack) {
                Ok(s) => Item::Set(s),
                Err(e) => {
                    stack.pop();
                    return Err(format!("{:?}: {e}", it.value).into());
                }
            }
        } else if let Some(n) = parse_net(target) {
            Item::Net(n)
        } else if let Some(h) = policy.hosts.get(target) {
            Item::Net(h.value.trunc())
        } else {
            stack.pop();
            return Err(format!(
                "item {:?} (line {}) is not \"add\"/\"remove\" of an IP, a CIDR, a hosts alias, autogroup:internet or an ipset",
                it.value, it.loc.line
            ).into());
        };
        ops.push((add, item));
    }
    stack.pop();
    Ok(AddrSet { ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_net(s).unwrap()
    }

    #[test]
    fn ordered_add_and_remove() {
        let s = AddrSet {
            ops: vec![
                (true, Item::Net(net("100.64.0.0/10"))),
                (false, Item::Net(net("100.64.0.0/24"))),
                (true, Item::Net(net("100.64.0.7"))),
            ],
        };
        assert!(s.contains("100.64.0.7".parse().unwrap()));
        assert!(!s.contains("100.64.0.8".parse().unwrap()));
        assert!(s.contains("100.65.0.1".parse().unwrap()));
        assert_eq!(s.cover(&TAILNET_V4), Cover::Part);
        assert_eq!(s.cover(&TAILNET_V6), Cover::None);
        assert_eq!(
            AddrSet::net(net("0.0.0.0/0")).cover(&TAILNET_V4),
            Cover::All
        );
        assert_eq!(AddrSet::net(net("::/0")).cover(&TAILNET_V6), Cover::All);
    }

    #[test]
    fn devices_with_an_unknown_address() {
        let v4: IpAddr = "100.64.0.2".parse().unwrap();
        let whole = AddrSet::net(TAILNET_V6);
        let one = AddrSet::net(net("fd7a:115c:a1e0::2"));
        assert_eq!(whole.covers_device(Some(v4), true), Covers::Yes);
        assert_eq!(one.covers_device(Some(v4), true), Covers::Unknown);
        assert_eq!(one.covers_device(Some(v4), false), Covers::No);
        let v6: IpAddr = "fd7a:115c:a1e0::2".parse().unwrap();
        assert_eq!(one.covers_device(Some(v6), true), Covers::Yes);
        assert_eq!(
            AddrSet::net(net("100.64.0.0/24")).covers_device(Some(v6), true),
            Covers::Unknown
        );
    }

    #[test]
    fn samples_avoid_taken_addresses() {
        let taken: Vec<IpAddr> = vec!["100.64.0.0".parse().unwrap()];
        let s = AddrSet::net(net("0.0.0.0/0"));
        assert_eq!(s.sample(&taken), Some("100.64.0.1".parse().unwrap()));
        let one = AddrSet::net(net("100.64.0.0/32"));
        assert_eq!(one.sample(&taken), None);
    }
}
