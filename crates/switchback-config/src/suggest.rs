//! "Did you mean ...?" for misspelt names.

/// Edit distance between two strings (in characters): insertions, deletions, substitutions
/// and swaps of two adjacent characters (`chta` for `chat`, the commonest typo) count one
/// each (the optimal string alignment distance).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the table: the one before the previous one is needed for swaps.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            let mut best = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                best = best.min(before[j - 1] + 1);
            }
            current[j + 1] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate closest to `wrong`, if it is close enough to be a likely typo: at most
/// one edit for short names, up to a third of the length for longer ones.
pub(crate) fn closest<'a>(wrong: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (wrong.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(&wrong.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("chta", "chat"), 1, "a swap is one edit");
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("abc", "ca"), 3);
    }

    #[test]
    fn closest_only_when_close() {
        let known = ["prefix", "path", "regex", "headers", "runtime_fraction"];
        assert_eq!(closest("prefx", &known), Some("prefix"));
        assert_eq!(closest("Prefix", &known), Some("prefix"));
        assert_eq!(closest("pth", &known), Some("path"));
        assert_eq!(closest("zzzzzz", &known), None);
        assert_eq!(closest("runtime_fractoin", &known), Some("runtime_fraction"));
    }
}
