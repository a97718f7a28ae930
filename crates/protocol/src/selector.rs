//! Machine names, labels and the selectors that choose machines by them.
//!
//! A selector is either one machine's name (`lab-07`) or a comma-separated list of `key=value`
//! pairs that must all match (`site=school-12,class=lab`); `*` matches every machine. A pair
//! whose key starts with `fact.` matches a fact the machine reports (`fact.dmi_vendor=LENOVO`,
//! `fact.mac=52:54:00:12:34:56`: any of its MAC addresses), so label keys may not start so.

use std::collections::BTreeMap;

use crate::{Error, Result};

pub type Labels = BTreeMap<String, String>;

const MAX_NAME: usize = 63;

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A machine name: 1 to 63 characters of `A-Z a-z 0-9 - _ .`, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::Name {
            name: name.to_owned(),
            reason: reason.into(),
        })
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("must be 1 to 63 characters");
    }
    if !name.chars().all(name_char) {
        return bad("may hold only letters, digits, '-', '_' and '.'");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    Ok(())
}

/// A label key or value: the characters of a machine name, plus `/` in keys (`hw/model`).
fn check_label_part(label: &str, part: &str, what: &str, slash: bool) -> Result<()> {
    let ok = !part.is_empty()
        && part.len() <= MAX_NAME
        && part.chars().all(|c| name_char(c) || (slash && c == '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::Label {
            label: label.to_owned(),
            reason: format!(
                "the {what} must be 1 to 63 characters of letters, digits, '-', '_', '.'{}",
                if slash { " or '/'" } else { "" }
            ),
        })
    }
}

/// Parses `key=value`.
pub fn parse_label(label: &str) -> Result<(String, String)> {
    let Some((k, v)) = label.split_once('=') else {
        return Err(Error::Label {
            label: label.to_owned(),
            reason: "expected key=value".into(),
        });
    };
    check_label_part(label, k, "key", true)?;
    check_label_part(label, v, "value", false)?;
    if k.starts_with(FACT_PREFIX) {
        return Err(Error::Label {
            label: label.to_owned(),
            reason: format!("label keys starting with {FACT_PREFIX:?} are kept for facts"),
        });
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Keys of a selector that name a machine's facts.
pub const FACT_PREFIX: &str = "fact.";

/// A fact condition `fact.KEY=VALUE`: a known fact, a value of 1 to 256 printable characters
/// without `,` (spaces inside are kept: `fact.dmi_product=ThinkPad T480`).
fn parse_fact(selector: &str, part: &str) -> Result<(String, String)> {
    let bad = |reason: String| {
        Err(Error::Selector {
            selector: selector.to_owned(),
            reason,
        })
    };
    let Some((k, v)) = part.split_once('=') else {
        return bad(format!("{part:?}: expected fact.KEY=VALUE"));
    };
    let name = k.strip_prefix(FACT_PREFIX).unwrap_or(k);
    if !crate::vars::FACT_KEYS.contains(&name) {
        return bad(format!(
            "unknown fact {name:?}: the facts are {}",
            crate::vars::FACT_KEYS.join(", ")
        ));
    }
    let v = v.trim();
    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() || c == '=') {
        return bad(format!(
            "{part:?}: a fact's value is 1 to 256 printable characters without ',' or '='"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    All,
    Name(String),
    Labels(Labels),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "*" {
            return Ok(Selector::All);
        }
        if !s.contains('=') {
            check_name(s).map_err(|e| Error::Selector {
                selector: s.to_owned(),
                reason: format!(
                    "{e} (a selector is a machine name, key=value[,key=value...] or *)"
                ),
            })?;
            return Ok(Selector::Name(s.to_owned()));
        }
        let mut labels = Labels::new();
        for part in s.split(',') {
            let part = part.trim();
            let (k, v) = if part.starts_with(FACT_PREFIX) {
                parse_fact(s, part)?
            } else {
                parse_label(part).map_err(|e| Error::Selector {
                    selector: s.to_owned(),
                    reason: e.to_string(),
                })?
            };
            if labels.insert(k.clone(), v).is_some() {
                return Err(Error::Selector {
                    selector: s.to_owned(),
                    reason: format!("label {k} is given twice"),
                });
            }
        }
        Ok(Selector::Labels(labels))
    }

    /// Whether a machine of this name and labels is chosen; a fact condition never matches
    /// here ([`Selector::matches_facts`]).
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.matches_facts(name, labels, None)
    }

    /// Whether a machine of this name, labels and facts is chosen. A multi-valued fact (`mac`,
    /// `ip`) matches when any of its values does; a machine that reported no facts matches no
    /// fact condition.
    pub fn matches_facts(
        &self,
        name: &str,
        labels: &Labels,
        facts: Option<&crate::vars::Facts>,
    ) -> bool {
        match self {
            Selector::All => true,
            Selector::Name(n) => n == name,
            Selector::Labels(want) => {
                let flat = facts.map(|f| f.flat());
                want.iter().all(|(k, v)| match k.strip_prefix(FACT_PREFIX) {
                    Some(fact) => flat
                        .as_ref()
                        .and_then(|f| f.get(fact))
                        .is_some_and(|vals| vals.iter().any(|x| x == v)),
                    None => labels.get(k) == Some(v),
                })
            }
        }
    }

    /// Whether it names any fact (so it must be evaluated with the machines' facts).
    pub fn uses_facts(&self) -> bool {
        matches!(self, Selector::Labels(l) if l.keys().any(|k| k.starts_with(FACT_PREFIX)))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::Name(n) => f.write_str(n),
            Selector::Labels(l) => {
                let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &[(&str, &str)]) -> Labels {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_names_and_all_labels() {
        let l = labels(&[("site", "school-12"), ("class", "lab"), ("hw/model", "x1")]);
        assert!(
            Selector::parse("site=school-12,class=lab")
                .unwrap()
                .matches("a", &l)
        );
        assert!(Selector::parse(" hw/model=x1 ").unwrap().matches("a", &l));
        assert!(
            !Selector::parse("site=school-12,class=office")
                .unwrap()
                .matches("a", &l)
        );
        assert!(Selector::parse("lab-07").unwrap().matches("lab-07", &l));
        assert!(!Selector::parse("lab-07").unwrap().matches("lab-08", &l));
        assert!(Selector::parse("*").unwrap().matches("x", &Labels::new()));
        assert_eq!(Selector::parse("b=2,a=1").unwrap().to_string(), "a=1,b=2");
    }

    #[test]
    fn bad_selectors_and_labels_are_named() {
        for (s, want) in [
            ("a=1,a=2", "given twice"),
            ("a=", "value must be"),
            ("=x", "key must be"),
            ("a=1,,b=2", "expected key=value"),
            ("a b", "may hold only"),
            ("", "1 to 63"),
            ("a=$(x)", "value must be"),
        ] {
            let e = Selector::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        assert!(check_name("-x").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
        check_name("Lab-07.school_12").unwrap();
    }

    #[test]
    fn fact_conditions_match_reported_facts() {
        use crate::vars::{Facts, Interface};
        let f = Facts {
            hostname: "h1".into(),
            dmi_vendor: Some("LENOVO".into()),
            dmi_product: Some("ThinkPad T480".into()),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("52:54:00:00:00:01".into()),
                addresses: vec!["10.0.0.5".into(), "fe80::1".into()],
            }],
            ..Default::default()
        };
        let l = labels(&[("site", "a")]);
        let m = |s: &str, facts: Option<&Facts>| {
            Selector::parse(s).unwrap().matches_facts("m", &l, facts)
        };
        assert!(m("fact.dmi_vendor=LENOVO", Some(&f)));
        assert!(m("site=a, fact.dmi_product=ThinkPad T480", Some(&f)));
        assert!(m("fact.mac=52:54:00:00:00:01", Some(&f)));
        assert!(m("fact.ip=fe80::1", Some(&f)));
        assert!(!m("fact.dmi_vendor=Dell", Some(&f)));
        assert!(!m("site=b,fact.dmi_vendor=LENOVO", Some(&f)));
        // no facts reported: no fact condition matches, and `matches` never sees facts
        assert!(!m("fact.dmi_vendor=LENOVO", None));
        assert!(
            !Selector::parse("fact.hostname=h1")
                .unwrap()
                .matches("m", &l)
        );
        assert!(Selector::parse("fact.hostname=h1").unwrap().uses_facts());
        assert!(!Selector::parse("site=a").unwrap().uses_facts());
        for (s, want) in [
            ("fact.colour=red", "unknown fact"),
            ("fact.hostname=", "1 to 256"),
            ("fact.hostname=a=b", "without ','"),
        ] {
            let e = Selector::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        // labels cannot take the facts' keys
        let e = parse_label("fact.dmi_vendor=x").unwrap_err().to_string();
        assert!(e.contains("kept for facts"), "{e}");
    }
}
