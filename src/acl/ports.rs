//! Sets of ports (1–65535) as sorted, merged ranges.

use serde::Serialize;
use std::fmt;

/// A set of ports, kept as sorted, non-overlapping, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every port, 1–65535 (what `*` means).
    pub fn all() -> Self {
        PortSet(vec![(1, u16::MAX)])
    }

    /// One port.
    pub fn single(p: u16) -> Self {
        Self::range(p, p)
    }

    /// The ports `lo..=hi` (empty if `lo > hi`; port 0 is never included).
    pub fn range(lo: u16, hi: u16) -> Self {
        let lo = lo.max(1);
        if lo > hi {
            return Self::new();
        }
        PortSet(vec![(lo, hi)])
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is every port in the set?
    pub fn is_all(&self) -> bool {
        self.0 == [(1, u16::MAX)]
    }

    /// Does the set hold `p`?
    pub fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= p && p <= hi)
    }

    /// Adds every port of `other`.
    pub fn insert_set(&mut self, other: &PortSet) {
        let mut all: Vec<(u16, u16)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(all.len());
        for (lo, hi) in all {
            match out.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        self.0 = out;
    }

    /// The union of two sets.
    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        s.insert_set(other);
        s
    }

    /// The ports of `self` not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let mut cur = u32::from(lo);
            let end = u32::from(hi);
            for &(olo, ohi) in &other.0 {
                let (olo, ohi) = (u32::from(olo), u32::from(ohi));
                if ohi < cur || olo > end {
                    continue;
                }
                if olo > cur {
                    out.push((cur, olo - 1));
                }
                cur = cur.max(ohi + 1);
            }
            if cur <= end {
                out.push((cur, end));
            }
        }
        // Values stay within 1..=65535: they come from u16 bounds, `olo - 1 >= cur >= 1`.
        PortSet(
            out.into_iter()
                .filter_map(|(a, b)| Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)))
                .collect(),
        )
    }

    /// The ports in both sets.
    pub fn intersect(&self, other: &PortSet) -> PortSet {
        self.minus(&self.minus(other))
    }
}

impl fmt::Display for PortSet {
    /// `*` for every port, else `22,80-90`; `none` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("*");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = PortSet::new();
        for p in iter {
            s.insert_set(&PortSet::single(p));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_adjacent_and_overlapping() {
        let s: PortSet = [22, 23, 80, 24].into_iter().collect();
        assert_eq!(s.ranges(), &[(22, 24), (80, 80)]);
        assert_eq!(s.to_string(), "22-24,80");
    }

    #[test]
    fn minus_splits_ranges() {
        let s = PortSet::all().minus(&PortSet::single(22));
        assert_eq!(s.ranges(), &[(1, 21), (23, 65535)]);
        assert_eq!(PortSet::single(22).minus(&PortSet::all()), PortSet::new());
        let a: PortSet = [4000, 5432, 6379, 7233].into_iter().collect();
        let b: PortSet = [4000, 4222].into_iter().collect();
        assert_eq!(a.minus(&b).to_string(), "5432,6379,7233");
        assert_eq!(a.intersect(&b).to_string(), "4000");
    }
}
