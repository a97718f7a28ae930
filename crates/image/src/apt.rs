//! apt's output read back into what went wrong, naming the package or the mirror; and the
//! upgrades `apt-get -s upgrade` would make. Pure functions over text.

/// The first problem apt's output names, in words for the admin; `None` when nothing known is
/// found (the caller shows the last lines instead).
pub fn explain(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if let Some(p) = l.strip_prefix("E: Unable to locate package ") {
            return Some(format!(
                "package {:?} is not in any of the image's apt sources",
                p.trim()
            ));
        }
        if let Some(rest) = l.strip_prefix("E: Package '")
            && let Some((p, _)) = rest.split_once('\'')
        {
            return Some(format!(
                "package {p:?} has no version that can be installed from the image's apt sources"
            ));
        }
        if let Some(rest) = l.strip_prefix("E: Version '")
            && let Some((v, rest)) = rest.split_once('\'')
        {
            let p = rest.split('\'').nth(1).unwrap_or("?");
            return Some(format!(
                "package {p:?} has no version {v:?} in the apt sources"
            ));
        }
        if l.starts_with("E: Unable to correct problems") || l.starts_with("E: Unmet dependencies")
        {
            let held: Vec<&str> = lines
                .iter()
                .filter_map(|x| {
                    let x = x.trim();
                    x.contains(" : Depends: ")
                        .then(|| x.split(" : ").next().unwrap_or(x))
                })
                .collect();
            return Some(format!(
                "apt cannot satisfy the dependencies{}",
                if held.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", held.join(", "))
                }
            ));
        }
        // "Err:1 http://127.0.0.1:9/debian bookworm InRelease" and the reason on the next line
        if let Some(rest) = l.strip_prefix("Err:") {
            let mut words = rest.split_whitespace().skip(1);
            let url = words.next().unwrap_or(rest);
            let what = words.collect::<Vec<_>>().join(" ");
            let reason = lines.get(i + 1).map_or("", |r| r.trim());
            return Some(format!("the apt source {url} failed ({what}): {reason}"));
        }
        if let Some(rest) = l.strip_prefix("E: Failed to fetch ") {
            return Some(format!("apt failed to fetch {}", rest.trim()));
        }
        if l.starts_with("W: GPG error: ") || l.contains("is not signed") {
            let what = l
                .trim_start_matches("W: GPG error: ")
                .trim_start_matches("E: ");
            return Some(format!(
                "an apt source's signature cannot be checked (wrong or missing key): {what}"
            ));
        }
        if l.contains("does not have a Release file") {
            return Some(format!(
                "an apt source has no such suite: {}",
                l.trim_start_matches("E: ")
            ));
        }
    }
    None
}

/// The last `n` lines of a command's output, for errors nothing better explains.
pub fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One upgrade of `apt-get -s upgrade`: `Inst NAME [OLD] (NEW ORIGINS [ARCH])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub name: String,
    pub new: String,
    pub security: bool,
}

/// The packages a simulated upgrade would upgrade (only those with an old version).
pub fn parse_simulation(text: &str) -> Vec<Upgrade> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix('[')?;
            let (_, rest) = rest.split_once("] (")?;
            let (new, origins) = rest.split_once(' ').unwrap_or((rest, ""));
            let security = origins
                .split(", ")
                .any(|o| o.contains("-security") || o.starts_with("Debian-Security"));
            Some(Upgrade {
                name: name.to_owned(),
                new: new.trim_end_matches(')').to_owned(),
                security,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_errors_name_the_package_or_the_mirror() {
        let cases = [
            (
                "Reading package lists...\nE: Unable to locate package nosuchpkg\n",
                "package \"nosuchpkg\" is not in",
            ),
            (
                "E: Package 'foo' has no installation candidate\n",
                "package \"foo\" has no version",
            ),
            (
                "E: Version '9' for 'hello' was not found\n",
                "package \"hello\" has no version \"9\"",
            ),
            (
                "Ign:1 x\nErr:1 http://127.0.0.1:9/debian bookworm InRelease\n  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n",
                "the apt source http://127.0.0.1:9/debian failed (bookworm InRelease): Could not connect",
            ),
            (
                "W: GPG error: http://127.0.0.1:5/x testing InRelease: The following signatures couldn't be verified\n",
                "signature cannot be checked",
            ),
            (
                "The following packages have unmet dependencies:\n a : Depends: b but it is not installable\nE: Unable to correct problems, you have held broken packages.\n",
                "dependencies of a",
            ),
        ];
        for (out, want) in cases {
            let e = explain(out).unwrap_or_default();
            assert!(e.contains(want), "{out}: {e}");
        }
        assert_eq!(explain("all fine\n"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }

    #[test]
    fn simulated_upgrades_are_parsed_with_security_marked() {
        let u = parse_simulation(
            "Inst stone [1.0] (1.1 semithin-test:1/testing [all])\n\
             Inst pebble [1.0] (1.1 testing-security [all])\nInst new (2.0 x [all])\nConf stone (1.1)\n",
        );
        assert_eq!(u.len(), 2);
        assert!(!u[0].security && u[1].security);
        assert_eq!(u[0].new, "1.1");
    }
}
