//! What a package-based machine has: installed packages from `dpkg-query -W`, and the upgrades
//! `apt-get -s dist-upgrade` would make (`Inst NAME [OLD] (NEW ORIGINS [ARCH])`), marking those
//! whose new version comes from a `-security` suite. Never `apt list`, whose output is not for
//! programs. Both only read; they run chrooted into the sysroot when there is one.

use std::path::Path;
use std::time::{Duration, Instant};

use semithin_protocol::inventory::{Inventory, Package, Upgrade};

use super::exec::{End, Output, Runner};

/// Whether the root has a dpkg database at all.
pub fn has_dpkg(root: Option<&Path>) -> bool {
    root.unwrap_or(Path::new("/"))
        .join("var/lib/dpkg/status")
        .is_file()
}

fn read(root: Option<&Path>, argv: &[&str]) -> Result<String, String> {
    let mut never = || false;
    let mut r = Runner {
        root,
        deadline: Instant::now() + Duration::from_secs(300),
        cancelled: &mut never,
        poll_every: Duration::from_secs(3600),
    };
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let mut out = Output::default();
    match r.run(
        &argv,
        &[("DEBIAN_FRONTEND", "noninteractive")],
        &mut out,
        true,
    )? {
        End::Exited(Some(0)) => Ok(out.text()),
        end => Err(format!(
            "{} ended with {end:?}: {}",
            argv.join(" "),
            out.text().trim()
        )),
    }
}

/// Installed packages, by name.
pub fn packages(root: Option<&Path>) -> Result<Vec<Package>, String> {
    let text = read(
        root,
        &[
            "dpkg-query",
            "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ],
    )?;
    Ok(parse_dpkg(&text))
}

pub fn parse_dpkg(text: &str) -> Vec<Package> {
    let mut out: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            // `ii` installed, `hi` installed and held; the rest is not (fully) installed.
            if !matches!(status.trim(), "ii" | "hi") {
                return None;
            }
            Some(Package {
                name: f.next()?.to_owned(),
                version: f.next()?.to_owned(),
                arch: f.next()?.to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// The upgrades apt would make (`dist`: dist-upgrade, else upgrade), from its simulation.
pub fn upgrades(root: Option<&Path>, dist: bool) -> Result<Vec<Upgrade>, String> {
    let text = read(
        root,
        &[
            "apt-get",
            "-s",
            "-q",
            "-o",
            "Debug::NoLocking=true",
            if dist { "dist-upgrade" } else { "upgrade" },
        ],
    )?;
    Ok(parse_simulation(&text))
}

/// `Inst NAME [OLD] (NEW ORIGIN, ORIGIN [ARCH])` lines of packages that are upgraded (new
/// installs, without `[OLD]`, are not upgrades).
pub fn parse_simulation(text: &str) -> Vec<Upgrade> {
    let mut out: Vec<Upgrade> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix('[')?;
            let (from, rest) = rest.split_once(']')?;
            let inner = rest.trim_start().strip_prefix('(')?;
            let (inner, _) = inner.rsplit_once(')')?;
            let (to, rest) = inner.split_once(' ').unwrap_or((inner, ""));
            let origin = match rest.rsplit_once(" [") {
                Some((o, _)) => o,
                None if rest.starts_with('[') => "",
                None => rest,
            }
            .trim();
            Some(Upgrade {
                name: name.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                security: is_security(origin),
                origin: origin.to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An origin is `LABEL:VERSION/SUITE`; a security update comes from a `-security` suite.
fn is_security(origin: &str) -> bool {
    origin.split(", ").any(|o| {
        o.rsplit('/')
            .next()
            .is_some_and(|suite| suite.trim().ends_with("-security"))
            || o.starts_with("Debian-Security:")
    })
}

pub fn collect(root: Option<&Path>, now: i64) -> Result<Inventory, String> {
    Ok(Inventory {
        packages: packages(root)?,
        upgradable: upgrades(root, true)?,
        collected_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulation_lines_are_parsed_and_security_is_marked() {
        let text = "\
NOTE: This is only a simulation!
Reading package lists...
The following packages will be upgraded:
  libssl3 openssl stone
Inst libssl3 [3.0.11-1~deb12u1] (3.0.11-1~deb12u2 Debian:12.4/stable, Debian-Security:12/stable-security [amd64])
Inst stone [1.0] (1.1 semithin-test:1/testing [all])
Inst pebble [1.0] (1.1 testing-security [all])
Inst newdep (2.0 Debian:12.4/stable [amd64])
Inst odd [1:2.0-1] (1:2.1-1 [amd64])
Conf libssl3 (3.0.11-1~deb12u2 Debian:12.4/stable, Debian-Security:12/stable-security [amd64])
";
        let u = parse_simulation(text);
        let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["libssl3", "odd", "pebble", "stone"]);
        assert!(u[0].security);
        assert_eq!(u[0].from, "3.0.11-1~deb12u1");
        assert_eq!(u[0].to, "3.0.11-1~deb12u2");
        assert_eq!(
            u[0].origin,
            "Debian:12.4/stable, Debian-Security:12/stable-security"
        );
        assert!(!u[1].security);
        assert_eq!(
            (u[1].from.as_str(), u[1].to.as_str(), u[1].origin.as_str()),
            ("1:2.0-1", "1:2.1-1", "")
        );
        assert!(u[2].security, "{:?}", u[2]);
        assert!(!u[3].security);
    }

    #[test]
    fn only_installed_packages_are_listed() {
        let p = parse_dpkg(
            "ii \tbash\t5.2.15-2+b2\tamd64\nrc \told\t1.0\tall\nhi \theld\t2\tall\nun \tgone\t\t\n",
        );
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "held"]);
        assert_eq!(p[0].version, "5.2.15-2+b2");
    }
}
