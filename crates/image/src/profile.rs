//! Profile files: what an image is made of, in TOML (docs/IMAGES.md).
//!
//! [`parse`] and [`Profile::validate`] are pure: text in, a checked profile or an error naming
//! the file and the field out. [`load`] reads a profile and the profiles it `extends` (relative
//! to the file that names them, cycles refused), merges them base first and checks that the
//! files they name exist, before anything is built.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How deep `extends` may go.
const MAX_DEPTH: usize = 16;

/// A profile file or a chain of them that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading profile {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
    #[error("profile {}: `extends` makes a cycle: {}", file.display(), chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle { file: PathBuf, chain: Vec<PathBuf> },
}

fn invalid(file: &Path, message: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// One profile file as written (every field optional; unknown fields refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub extends: Option<String>,
    pub channel: Option<String>,
    pub suite: Option<String>,
    pub mirror: Option<String>,
    pub mirror_key: Option<String>,
    pub arch: Option<String>,
    pub components: Option<Vec<String>>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    pub overlay: Option<String>,
    #[serde(default)]
    pub scripts: Vec<String>,
    pub source_date_epoch: Option<i64>,
}

/// An extra apt source as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    pub uri: String,
    pub suite: String,
    #[serde(default = "main_component")]
    pub components: Vec<String>,
    pub key: String,
}

fn main_component() -> Vec<String> {
    vec!["main".to_owned()]
}

/// An extra apt source, its key file resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    pub key: PathBuf,
}

/// A whole profile: the file and what it extends, merged, every path absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The files read, the base first, the named profile last.
    pub files: Vec<PathBuf>,
    pub channel: String,
    pub suite: String,
    pub mirror: String,
    pub mirror_key: Option<PathBuf>,
    pub arch: Option<String>,
    pub components: Vec<String>,
    /// In the order given, each once.
    pub packages: Vec<String>,
    pub sources: Vec<Source>,
    pub overlays: Vec<PathBuf>,
    pub scripts: Vec<PathBuf>,
    pub source_date_epoch: Option<i64>,
}

/// Parses one profile file's text (`file` only names it in errors).
pub fn parse(text: &str, file: &Path) -> Result<Raw, ProfileError> {
    toml::from_str(text).map_err(|e| invalid(file, e.message().to_owned() + &at(text, e.span())))
}

/// " (line N: `the line`)" for a TOML error's place, so the field is named.
fn at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(start) = span.map(|s| s.start) else {
        return String::new();
    };
    let Some(before) = text.get(..start) else {
        return String::new();
    };
    let n = before.matches('\n').count();
    let line = text.lines().nth(n).unwrap_or("").trim();
    let line: String = line.chars().take(80).collect();
    format!(" (line {}: `{line}`)", n + 1)
}

/// A Debian package name (policy 5.6.7), optionally `:ARCH` and `=VERSION`.
pub fn check_package(spec: &str) -> Result<(), String> {
    let (rest, version) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let (name, arch) = match rest.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !name_ok {
        return Err(format!(
            "{spec:?} is not a Debian package name (lowercase letters, digits, `+`, `-`, `.`; \
             at least two characters, starting with a letter or digit)"
        ));
    }
    if let Some(a) = arch
        && !word(a)
    {
        return Err(format!("{spec:?}: {a:?} is not an architecture"));
    }
    if let Some(v) = version
        && (v.is_empty()
            || !v.starts_with(|c: char| c.is_ascii_digit())
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c)))
    {
        return Err(format!("{spec:?}: {v:?} is not a Debian version"));
    }
    Ok(())
}

/// A suite, component or architecture: lowercase letters, digits, `-`, `.`, `_`.
fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
}

/// An apt URI: http, https or file, nothing apt's one-line or deb822 syntax would split.
fn check_uri(field: &str, uri: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s));
    if !scheme_ok {
        return Err(format!(
            "{field}: {uri:?} is not an http://, https:// or file:/ URL"
        ));
    }
    if uri
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "[]\"'".contains(c))
    {
        return Err(format!(
            "{field}: {uri:?} has a space, quote or bracket, which apt cannot take"
        ));
    }
    Ok(())
}

impl Profile {
    /// Checks every field's syntax (pure: no file is looked at).
    pub fn validate(&self) -> Result<(), String> {
        if !word(&self.suite) {
            return Err(format!("suite: {:?} is not a suite name", self.suite));
        }
        check_uri("mirror", &self.mirror)?;
        if let Some(a) = &self.arch
            && !word(a)
        {
            return Err(format!("arch: {a:?} is not an architecture"));
        }
        if self.components.is_empty() {
            return Err("components: empty (main, at least)".to_owned());
        }
        for c in &self.components {
            if !word(c) {
                return Err(format!("components: {c:?} is not a component name"));
            }
        }
        for p in &self.packages {
            check_package(p).map_err(|e| format!("packages: {e}"))?;
        }
        let mut names = BTreeSet::new();
        for s in &self.sources {
            let ok = s
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && s.name.starts_with(|c: char| c.is_ascii_lowercase())
                && s.name.len() <= 64;
            if !ok {
                return Err(format!(
                    "sources: name {:?}: lowercase letters, digits and `-`, starting with a letter",
                    s.name
                ));
            }
            if s.name == "debian" {
                return Err(
                    "sources: the name \"debian\" is the mirror's own; pick another".to_owned(),
                );
            }
            if !names.insert(&s.name) {
                return Err(format!("sources: {:?} is named twice", s.name));
            }
            check_uri(&format!("sources.{}.uri", s.name), &s.uri)?;
            if !word(&s.suite) {
                return Err(format!(
                    "sources.{}.suite: {:?} is not a suite name",
                    s.name, s.suite
                ));
            }
            if s.components.is_empty() || s.components.iter().any(|c| !word(c)) {
                return Err(format!(
                    "sources.{}.components: {:?} is not a list of components",
                    s.name, s.components
                ));
            }
        }
        if let Some(e) = self.source_date_epoch
            && e < 0
        {
            return Err(format!("source_date_epoch: {e} is before 1970"));
        }
        Ok(())
    }
}

/// Reads `file` and what it extends, merges them and checks the result (syntax, and that every
/// file and directory it names exists).
pub fn load(file: &Path) -> Result<Profile, ProfileError> {
    let mut chain: Vec<(PathBuf, Raw)> = Vec::new();
    let mut next = Some(file.to_owned());
    while let Some(f) = next.take() {
        let abs = std::path::absolute(&f).map_err(|source| ProfileError::Read {
            file: f.clone(),
            source,
        })?;
        let real = std::fs::canonicalize(&abs).map_err(|source| ProfileError::Read {
            file: abs.clone(),
            source,
        })?;
        if chain.iter().any(|(p, _)| *p == real) {
            let mut names: Vec<PathBuf> = chain.iter().map(|(p, _)| p.clone()).collect();
            names.push(real);
            return Err(ProfileError::Cycle {
                file: file.to_owned(),
                chain: names,
            });
        }
        if chain.len() >= MAX_DEPTH {
            return Err(invalid(
                file,
                format!("extends: more than {MAX_DEPTH} profiles deep"),
            ));
        }
        let text = std::fs::read_to_string(&real).map_err(|source| ProfileError::Read {
            file: real.clone(),
            source,
        })?;
        let raw = parse(&text, &real)?;
        if let Some(e) = &raw.extends {
            if e.is_empty() {
                return Err(invalid(&real, "extends: empty"));
            }
            next = Some(dir_of(&real).join(e));
        }
        chain.push((real, raw));
    }
    chain.reverse();
    let profile = merge(&chain)?;
    let named = chain.last().map_or(file, |(p, _)| p.as_path());
    profile.validate().map_err(|m| invalid(named, m))?;
    check_files(&profile, named)?;
    Ok(profile)
}

fn dir_of(file: &Path) -> PathBuf {
    file.parent().map(Path::to_owned).unwrap_or_default()
}

/// Merges a chain, base first: later files set scalars anew and add packages, sources (one of
/// the same name replaced), overlays and scripts. `channel` is the named profile's own.
pub fn merge(chain: &[(PathBuf, Raw)]) -> Result<Profile, ProfileError> {
    let Some((last, leaf)) = chain.last() else {
        return Err(invalid(Path::new(""), "no profile"));
    };
    let channel = leaf.channel.clone().ok_or_else(|| {
        invalid(
            last,
            "channel: missing (every profile names the channel it builds, also one that extends another)",
        )
    })?;
    let mut suite = None;
    let mut mirror = None;
    let mut mirror_key = None;
    let mut arch = None;
    let mut components = None;
    let mut sde = None;
    let mut packages: Vec<String> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    let mut overlays = Vec::new();
    let mut scripts = Vec::new();
    for (file, raw) in chain {
        let dir = dir_of(file);
        suite = raw.suite.clone().or(suite);
        mirror = raw.mirror.clone().or(mirror);
        mirror_key = raw.mirror_key.as_ref().map(|k| dir.join(k)).or(mirror_key);
        arch = raw.arch.clone().or(arch);
        components = raw.components.clone().or(components);
        sde = raw.source_date_epoch.or(sde);
        for p in &raw.packages {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
        for s in &raw.sources {
            sources.retain(|o| o.name != s.name);
            sources.push(Source {
                name: s.name.clone(),
                uri: s.uri.clone(),
                suite: s.suite.clone(),
                components: s.components.clone(),
                key: dir.join(&s.key),
            });
        }
        if let Some(o) = &raw.overlay {
            overlays.push(dir.join(o));
        }
        scripts.extend(raw.scripts.iter().map(|s| dir.join(s)));
    }
    Ok(Profile {
        files: chain.iter().map(|(p, _)| p.clone()).collect(),
        channel,
        suite: suite.ok_or_else(|| invalid(last, "suite: missing (e.g. suite = \"bookworm\")"))?,
        mirror: mirror.ok_or_else(|| {
            invalid(
                last,
                "mirror: missing (e.g. mirror = \"http://deb.debian.org/debian\")",
            )
        })?,
        mirror_key,
        arch,
        components: components.unwrap_or_else(main_component),
        packages,
        sources,
        overlays,
        scripts,
        source_date_epoch: sde,
    })
}

/// Every file and directory the profile names exists and is of the right kind.
fn check_files(p: &Profile, file: &Path) -> Result<(), ProfileError> {
    let is_file = |field: &str, path: &Path| {
        if path.is_file() {
            Ok(())
        } else {
            Err(invalid(
                file,
                format!("{field}: {} is not a file", path.display()),
            ))
        }
    };
    if let Some(k) = &p.mirror_key {
        is_file("mirror_key", k)?;
    }
    for s in &p.sources {
        is_file(&format!("sources.{}.key", s.name), &s.key)?;
    }
    for o in &p.overlays {
        if !o.is_dir() {
            return Err(invalid(
                file,
                format!("overlay: {} is not a directory", o.display()),
            ));
        }
    }
    for s in &p.scripts {
        is_file("scripts", s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = "channel = \"lab/base\"\nsuite = \"bookworm\"\n\
        mirror = \"http://127.0.0.1:1/debian\"\npackages = [\"hello\", \"less\"]\n";

    #[test]
    fn a_profile_extends_another_relative_to_its_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub/files")).unwrap();
        write(d.path(), "base.toml", BASE);
        write(d.path(), "sub/key.asc", "key");
        let child = write(
            d.path(),
            "sub/lab.toml",
            "extends = \"../base.toml\"\nchannel = \"lab/stable\"\npackages = [\"stone\", \"hello\"]\n\
             overlay = \"files\"\n[[sources]]\nname = \"extra\"\nuri = \"http://127.0.0.1:1/extra\"\n\
             suite = \"testing\"\nkey = \"key.asc\"\n",
        );
        let p = load(&child).unwrap();
        assert_eq!(p.channel, "lab/stable");
        assert_eq!(p.suite, "bookworm");
        assert_eq!(p.packages, ["hello", "less", "stone"]);
        assert_eq!(p.components, ["main"]);
        assert_eq!(p.sources.len(), 1);
        assert!(p.sources[0].key.ends_with("sub/key.asc"));
        assert_eq!(p.files.len(), 2);
    }

    #[test]
    fn bad_profiles_are_refused_naming_the_field() {
        let d = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("pakages = [\"x\"]", "unknown field `pakages`"),
            ("packages = [\"Hello World\"]", "packages: \"Hello World\""),
            ("packages = [\"hello=abc\"]", "is not a Debian version"),
            ("overlay = \"nowhere\"", "overlay: "),
            ("scripts = [\"missing.sh\"]", "scripts: "),
            ("mirror_key = \"none.asc\"", "mirror_key: "),
            ("suite = \"Book Worm\"", "suite: "),
            ("components = []", "components: empty"),
            ("packages = \"hello\"", "invalid type"),
        ];
        for (extra, want) in cases {
            // a later key replaces the base's (TOML refuses duplicate keys, so build anew)
            let text: String = BASE
                .lines()
                .filter(|l| {
                    let k = extra.split('=').next().unwrap().trim();
                    !l.starts_with(&format!("{k} "))
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                + extra
                + "\n";
            let f = write(d.path(), "p.toml", &text);
            let e = load(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(e.contains("p.toml"), "{e}");
        }
        let f = write(
            d.path(),
            "q.toml",
            "suite = \"bookworm\"\nmirror = \"ftp://x\"\n",
        );
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("channel: missing"), "{e}");
        let f = write(
            d.path(),
            "r.toml",
            "channel = \"a\"\nsuite = \"bookworm\"\nmirror = \"ftp://x\"\n",
        );
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("mirror: \"ftp://x\""), "{e}");
    }

    #[test]
    fn extends_cycles_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.toml",
            "extends = \"b.toml\"\nchannel = \"a\"\n",
        );
        write(
            d.path(),
            "b.toml",
            "extends = \"a.toml\"\nchannel = \"b\"\n",
        );
        let e = load(&d.path().join("a.toml")).unwrap_err();
        assert!(matches!(e, ProfileError::Cycle { .. }), "{e}");
        assert!(e.to_string().contains("cycle"), "{e}");
        write(
            d.path(),
            "c.toml",
            "extends = \"c.toml\"\nchannel = \"c\"\n",
        );
        assert!(matches!(
            load(&d.path().join("c.toml")),
            Err(ProfileError::Cycle { .. })
        ));
        let e = load(&d.path().join("none.toml")).unwrap_err();
        assert!(e.to_string().contains("none.toml"), "{e}");
    }

    #[test]
    fn package_names() {
        for ok in [
            "hello",
            "libc6",
            "g++",
            "libstdc++6:amd64",
            "hello=2.10-3",
            "a0",
        ] {
            check_package(ok).unwrap();
        }
        for bad in [
            "",
            "h",
            "Hello",
            "-x",
            "he llo",
            "hello=",
            "x;rm",
            "hello:AMD",
        ] {
            assert!(check_package(bad).is_err(), "{bad}");
        }
    }
}
