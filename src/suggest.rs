//! "Did you mean …?": the one metric every suggestion in fleetnix uses.
//!
//! The metric is the (unrestricted) Damerau–Levenshtein distance (insertions,
//! deletions, substitutions and swaps of neighbours each cost 1), compared without regard to
//! ASCII case. A known name is close enough when the distance is at most 2, or a third of the
//! known name's length for long names: a typo or two, never an unrelated word. Ties go to the
//! name that sorts first, so a suggestion never depends on the order names were listed in.

/// The name of `known` closest to `name`, if it is close enough to be a typo of it.
pub fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    closest_in(name, known.iter().copied())
}

/// [`closest`] over any list of names (e.g. `fleet.nodes.iter().map(|n| n.name.as_str())`).
pub fn closest_in<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (distance(&name, k), k))
        .filter(|(d, k)| *d <= max_distance(k))
        .min()
        .map(|(_, k)| k)
}

/// The distance [`closest`] compares by.
pub fn distance(a: &str, b: &str) -> usize {
    strsim::damerau_levenshtein(&a.to_ascii_lowercase(), &b.to_ascii_lowercase())
}

/// How far a typo of `known` may be from it.
fn max_distance(known: &str) -> usize {
    2.max(known.chars().count() / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_found_and_unrelated_words_are_not() {
        let known = ["roles", "resources", "tailscale_ip", "name"];
        assert_eq!(closest("rolse", &known), Some("roles"));
        assert_eq!(closest("tailscaleip", &known), Some("tailscale_ip"));
        assert_eq!(closest("Roles", &known), Some("roles"));
        assert_eq!(closest("zzzzzz", &known), None);
    }

    #[test]
    fn ties_go_to_the_name_that_sorts_first() {
        assert_eq!(
            closest("worker-0", &["worker-02", "worker-01"]),
            Some("worker-01")
        );
        assert_eq!(closest_in("ab", ["ba", "ac"]), Some("ac"));
    }

    #[test]
    fn long_names_allow_more_edits() {
        // 3 edits from a 15-character name: within a third of its length.
        assert_eq!(
            closest("mnemo-replca", &["mnemopi-replica"]),
            Some("mnemopi-replica")
        );
        assert_eq!(closest("abc", &["xyz"]), None);
    }
}
