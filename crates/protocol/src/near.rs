//! Names near a misspelt one (`lab/stabel` → `lab/stable`), for errors that suggest what was
//! probably meant: a few edits apart (Damerau-Levenshtein, so a swap of two letters is one), or
//! equal but for case. Names that differ only in digits (`lab-01`, `lab-02`; `v1`, `v2`) are
//! different names, not misspellings, and names of fewer than four letters are near only when
//! equal but for case.

/// The candidates near `name`, nearest first (at most three); `name` itself is never one.
pub fn near<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let lower = name.to_lowercase();
    let mut found: Vec<(usize, &'a str)> = candidates
        .into_iter()
        .filter(|c| *c != name)
        .filter_map(|c| {
            let other = c.to_lowercase();
            if other == lower {
                return Some((0, c));
            }
            let short = name.chars().count().min(c.chars().count()) < 4;
            if short || without_digits(&other) == without_digits(&lower) {
                return None;
            }
            let d = strsim::damerau_levenshtein(&lower, &other);
            let allowed = (name.chars().count().max(c.chars().count()) / 4).clamp(1, 3);
            (d <= allowed).then_some((d, c))
        })
        .collect();
    found.sort();
    found.dedup();
    found.into_iter().take(3).map(|(_, c)| c).collect()
}

fn without_digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// ` (did you mean a or b?)`, or nothing when no candidate is near.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let n = near(name, candidates);
    match n.as_slice() {
        [] => String::new(),
        [one] => format!(" (did you mean {one}?)"),
        [rest @ .., last] => format!(" (did you mean {} or {last}?)", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_find_the_names_meant() {
        let names = ["lab/stable", "lab/testing", "office/stable", "prod"];
        assert_eq!(near("lab/stabel", names), ["lab/stable"]);
        assert_eq!(near("lab/stabl", names), ["lab/stable"]);
        assert_eq!(near("Lab/Stable", names), ["lab/stable"]);
        assert_eq!(near("lab/tesing", names), ["lab/testing"]);
        assert!(near("prd", names).is_empty(), "too short to guess");
        assert_eq!(near("PROD", names), ["prod"]);
        assert!(
            near("lab-02", ["lab-01"]).is_empty(),
            "numbered names are names"
        );
        assert!(near("os", ["c", "h", "acl"]).is_empty());
        assert!(near("kiosk/edge", names).is_empty());
        assert!(
            near("lab/stable", names).is_empty(),
            "a name is not near itself"
        );
        assert_eq!(
            did_you_mean("lab/stabel", names),
            " (did you mean lab/stable?)"
        );
        assert_eq!(did_you_mean("x", names), "");
        assert_eq!(
            did_you_mean("lab/beta", ["lab/meta", "lab/bets"]),
            " (did you mean lab/bets or lab/meta?)"
        );
    }
}
