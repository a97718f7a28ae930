//! Layered profiles: a profile is an ordered stack of layers, each a channel of its own, the
//! first the base image (docs/IMAGES.md, "Layered profiles").
//!
//! Pure: the definition file's format and checks ([`Def`]), a profile's whole stack through
//! `extends` ([`stack`]), and the lines a composition and a package layer write into their
//! commit messages so that the next composition knows what they were made of ([`Made`],
//! [`LayerPackages`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::profile::check_package;

/// How deep `extends` may go.
const MAX_DEPTH: usize = 16;
/// How many layers a stack may have.
pub const MAX_LAYERS: usize = 64;

/// What a composed profile's new version does once committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Publish {
    /// Committed and said; the admin publishes it (or starts a rollout).
    #[default]
    Offer,
    /// Published at once.
    Auto,
}

/// What paths that two layers above the base both provide do to a composition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conflicts {
    /// The upper layer wins (overlayfs); the paths are listed with the layers.
    #[default]
    List,
    /// The composition is refused, listing them.
    Refuse,
}

/// One profile's definition, as stored in `REPO/profiles/NAME.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Def {
    /// Another profile whose layers come first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// The layers this profile adds, bottom first: channels.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Where compositions are committed; default `profiles/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default)]
    pub publish: Publish,
    #[serde(default)]
    pub conflicts: Conflicts,
    /// The machines that run this profile (a label selector), for `profile assign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<String>,
}

/// A definition or a set of them that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StackError {
    #[error("profile {name:?}: {message}")]
    Invalid { name: String, message: String },
    #[error("no profile named {0:?}")]
    Unknown(String),
    #[error("profile {name:?}: `extends` makes a cycle: {}", chain.join(" -> "))]
    Cycle { name: String, chain: Vec<String> },
}

fn invalid(name: &str, message: impl Into<String>) -> StackError {
    StackError::Invalid {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// A profile name: lowercase letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a profile name (lowercase letters, digits, `-`, `_`, `.`; up to 64, \
             starting with a letter or digit)"
        ))
    }
}

impl Def {
    /// Parses a stored definition (`name` names it in errors).
    pub fn parse(name: &str, text: &str) -> Result<Def, StackError> {
        let def: Def = toml::from_str(text).map_err(|e| invalid(name, e.message().to_owned()))?;
        def.validate(name)?;
        Ok(def)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a definition serialises")
    }

    /// The channel compositions are committed to.
    pub fn channel(&self, name: &str) -> String {
        self.channel
            .clone()
            .unwrap_or_else(|| format!("profiles/{name}"))
    }

    /// Checks the fields alone (channel names are checked by the caller, who knows the store's
    /// rule; a selector's syntax likewise).
    pub fn validate(&self, name: &str) -> Result<(), StackError> {
        check_name(name).map_err(|m| invalid(name, m))?;
        if let Some(e) = &self.extends {
            check_name(e).map_err(|m| invalid(name, format!("extends: {m}")))?;
            if e == name {
                return Err(StackError::Cycle {
                    name: name.to_owned(),
                    chain: vec![name.to_owned(), name.to_owned()],
                });
            }
        } else if self.layers.is_empty() {
            return Err(invalid(
                name,
                "no layers: name the base image's channel first (and what goes over it), or \
                 extend another profile",
            ));
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(invalid(name, format!("more than {MAX_LAYERS} layers")));
        }
        let mut seen = BTreeSet::new();
        for l in &self.layers {
            if !seen.insert(l) {
                return Err(invalid(name, format!("layers: {l:?} is named twice")));
            }
        }
        if self
            .channel
            .as_ref()
            .is_some_and(|c| self.layers.contains(c))
        {
            return Err(invalid(
                name,
                "channel: the profile's own channel cannot also be one of its layers",
            ));
        }
        Ok(())
    }
}

/// A profile's whole stack, bottom first: the layers of what it extends, then its own. Every
/// layer once (a layer a profile names again that its parent has is refused, naming both).
pub fn stack(defs: &BTreeMap<String, Def>, name: &str) -> Result<Vec<String>, StackError> {
    let mut chain: Vec<&str> = Vec::new();
    let mut next = Some(name);
    while let Some(n) = next.take() {
        if chain.contains(&n) {
            let mut c: Vec<String> = chain.iter().map(|s| s.to_string()).collect();
            c.push(n.to_owned());
            return Err(StackError::Cycle {
                name: name.to_owned(),
                chain: c,
            });
        }
        if chain.len() >= MAX_DEPTH {
            return Err(invalid(
                name,
                format!("extends: more than {MAX_DEPTH} deep"),
            ));
        }
        let def = defs
            .get(n)
            .ok_or_else(|| StackError::Unknown(n.to_owned()))?;
        chain.push(n);
        next = def.extends.as_deref();
    }
    let mut out: Vec<String> = Vec::new();
    for n in chain.iter().rev() {
        for l in &defs[*n].layers {
            if out.contains(l) {
                return Err(invalid(
                    n,
                    format!("layers: {l:?} is already in the stack it extends"),
                ));
            }
            out.push(l.clone());
        }
    }
    if out.len() > MAX_LAYERS {
        return Err(invalid(name, format!("more than {MAX_LAYERS} layers")));
    }
    Ok(out)
}

/// The profiles whose stack holds `layer`, by name.
pub fn above(defs: &BTreeMap<String, Def>, layer: &str) -> Vec<String> {
    defs.keys()
        .filter(|n| stack(defs, n).is_ok_and(|s| s.iter().any(|l| l == layer)))
        .cloned()
        .collect()
}

/// What a composition was made of: each layer's channel and commit, bottom first. Written into
/// the composed commit's message as `Layer: CHANNEL COMMIT` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Made {
    pub layers: Vec<(String, String)>,
}

const LAYER: &str = "Layer: ";

impl Made {
    pub fn lines(&self) -> String {
        self.layers
            .iter()
            .map(|(c, id)| format!("{LAYER}{c} {id}\n"))
            .collect()
    }

    /// Reads the lines back out of a commit message (other lines ignored).
    pub fn parse(message: &str) -> Made {
        let layers = message
            .lines()
            .filter_map(|l| l.strip_prefix(LAYER))
            .filter_map(|rest| {
                let (c, id) = rest.split_once(' ')?;
                Some((c.to_owned(), id.trim().to_owned()))
            })
            .collect();
        Made { layers }
    }
}

/// A package layer: made by apt on a lower tree, replayed (the same packages installed and
/// removed with apt) when it goes over another. Written into the layer's commit message as
/// `Layer-Base:`, `Layer-Install:` and `Layer-Remove:` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerPackages {
    /// The tree id the layer was made over.
    pub base: String,
    pub install: Vec<String>,
    pub remove: Vec<String>,
}

impl LayerPackages {
    pub fn lines(&self) -> String {
        let mut s = format!("Layer-Base: {}\n", self.base);
        if !self.install.is_empty() {
            s += &format!("Layer-Install: {}\n", self.install.join(" "));
        }
        if !self.remove.is_empty() {
            s += &format!("Layer-Remove: {}\n", self.remove.join(" "));
        }
        s
    }

    /// Reads the lines back (None: not a package layer). Package names are checked again, as
    /// they reach apt's command line.
    pub fn parse(message: &str) -> Result<Option<LayerPackages>, String> {
        let mut out = LayerPackages::default();
        let mut any = false;
        for l in message.lines() {
            if let Some(b) = l.strip_prefix("Layer-Base: ") {
                let b = b.trim();
                if b.len() != 64 || !b.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("Layer-Base: {b:?} is not a tree id"));
                }
                out.base = b.to_owned();
                any = true;
            } else if let Some(p) = l.strip_prefix("Layer-Install: ") {
                out.install = words(p)?;
            } else if let Some(p) = l.strip_prefix("Layer-Remove: ") {
                out.remove = words(p)?;
            }
        }
        Ok(any.then_some(out))
    }

    /// The layer after `install` and `remove` more: a package installed and later removed is
    /// gone from both lists, unless the base had it (then it stays removed).
    pub fn then(&self, install: &[String], remove: &[String]) -> LayerPackages {
        let mut ins: Vec<String> = self.install.clone();
        let mut rem: Vec<String> = self.remove.clone();
        for p in install {
            rem.retain(|r| r != p);
            if !ins.contains(p) {
                ins.push(p.clone());
            }
        }
        for p in remove {
            let was_added = ins.contains(p);
            ins.retain(|r| r != p);
            if !was_added && !rem.contains(p) {
                rem.push(p.clone());
            }
        }
        LayerPackages {
            base: self.base.clone(),
            install: ins,
            remove: rem,
        }
    }
}

fn words(s: &str) -> Result<Vec<String>, String> {
    s.split_whitespace()
        .map(|p| {
            check_package(p)?;
            Ok(p.to_owned())
        })
        .collect()
}

/// A path two layers above the base both provide, differently: the upper wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub path: String,
    /// The layer whose version is hidden.
    pub lower: String,
    /// The layer whose version is in the image.
    pub upper: String,
}

/// Conflicts from what each layer above the base provides and what each one's composition
/// shadowed: `provided[i]` holds the paths layer `i` (counting from the one over the base)
/// provides, `shadowed[i]` the paths its composition replaced or hid.
pub fn conflicts(
    names: &[String],
    provided: &[BTreeSet<String>],
    shadowed: &[Vec<String>],
) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (i, paths) in shadowed.iter().enumerate() {
        for p in paths {
            // The nearest layer below `i` that provides the path owns what was hidden.
            if let Some(j) = (0..i).rev().find(|j| provided[*j].contains(p)) {
                out.push(Conflict {
                    path: p.clone(),
                    lower: names[j].clone(),
                    upper: names[i].clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(extends: Option<&str>, layers: &[&str]) -> Def {
        Def {
            extends: extends.map(str::to_owned),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            ..Def::default()
        }
    }

    #[test]
    fn stacks_follow_extends_and_refuse_cycles_and_repeats() {
        let mut defs = BTreeMap::new();
        defs.insert(
            "lab".to_owned(),
            def(None, &["base/stable", "lab/software"]),
        );
        defs.insert("room-203".to_owned(), def(Some("lab"), &["lab/room-203"]));
        assert_eq!(
            stack(&defs, "room-203").unwrap(),
            ["base/stable", "lab/software", "lab/room-203"]
        );
        assert_eq!(above(&defs, "lab/software"), ["lab", "room-203"]);
        assert_eq!(above(&defs, "lab/room-203"), ["room-203"]);
        assert_eq!(
            stack(&defs, "nope").unwrap_err(),
            StackError::Unknown("nope".into())
        );
        defs.insert("a".to_owned(), def(Some("b"), &["x"]));
        defs.insert("b".to_owned(), def(Some("a"), &["y"]));
        let e = stack(&defs, "a").unwrap_err().to_string();
        assert_eq!(e, "profile \"a\": `extends` makes a cycle: a -> b -> a");
        defs.insert("again".to_owned(), def(Some("lab"), &["lab/software"]));
        let e = stack(&defs, "again").unwrap_err().to_string();
        assert!(
            e.contains("\"lab/software\" is already in the stack"),
            "{e}"
        );
    }

    #[test]
    fn definitions_are_checked() {
        let e = Def::parse("x", "layers = []\n").unwrap_err().to_string();
        assert!(e.contains("no layers"), "{e}");
        let e = Def::parse("x", "layers = [\"a\", \"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a\" is named twice"), "{e}");
        let e = Def::parse("x", "layers = [\"a\"]\nlayer = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `layer`"), "{e}");
        let e = Def::parse("x", "layers = [\"a\"]\npublish = \"always\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("always"), "{e}");
        let e = Def::parse("Bad", "layers = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a profile name"), "{e}");
        let d = Def::parse(
            "ok",
            "layers = [\"a\", \"b\"]\npublish = \"auto\"\nmachines = \"class=lab\"\n",
        )
        .unwrap();
        assert_eq!(Def::parse("ok", &d.to_toml()).unwrap(), d);
        assert_eq!(d.channel("ok"), "profiles/ok");
    }

    #[test]
    fn message_lines_round_trip() {
        let m = Made {
            layers: vec![("base".into(), "ab".into()), ("lab/x".into(), "cd".into())],
        };
        let text = format!("compose lab\n\n{}", m.lines());
        assert_eq!(Made::parse(&text), m);
        let p = LayerPackages {
            base: "a".repeat(64),
            install: vec!["hello".into()],
            remove: vec!["nano".into()],
        };
        assert_eq!(
            LayerPackages::parse(&format!("image add\n{}", p.lines())).unwrap(),
            Some(p.clone())
        );
        assert_eq!(LayerPackages::parse("plain message").unwrap(), None);
        assert!(
            LayerPackages::parse("Layer-Base: xyz")
                .unwrap_err()
                .contains("not a tree id")
        );
        let bad = format!("Layer-Base: {}\nLayer-Install: hello;rm\n", "a".repeat(64));
        assert!(LayerPackages::parse(&bad).is_err());
        let q = p.then(&["nano".into(), "cowsay".into()], &["hello".into()]);
        assert_eq!(q.install, ["nano", "cowsay"]);
        assert_eq!(q.remove, Vec::<String>::new());
    }

    #[test]
    fn conflicts_name_the_nearest_owner() {
        let names = vec!["l1".to_owned(), "l2".to_owned(), "l3".to_owned()];
        let provided = vec![
            BTreeSet::from(["etc/a".to_owned(), "etc/b".to_owned()]),
            BTreeSet::from(["etc/a".to_owned()]),
            BTreeSet::from(["etc/a".to_owned(), "etc/b".to_owned()]),
        ];
        let shadowed = vec![
            vec!["etc/hostname".to_owned()],
            vec!["etc/a".to_owned()],
            vec!["etc/a".to_owned(), "etc/b".to_owned()],
        ];
        let c = conflicts(&names, &provided, &shadowed);
        let got: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| (c.path.as_str(), c.lower.as_str(), c.upper.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("etc/a", "l1", "l2"),
                ("etc/a", "l2", "l3"),
                ("etc/b", "l1", "l3")
            ]
        );
    }
}
