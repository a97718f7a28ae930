//! Configuration templates shipped in a release and rendered per machine (docs/CONFIG.md).
//!
//! A release ships its templates under `/usr/share/semithin/templates/` with one manifest,
//! `templates.toml`, that says for each template where it is rendered (a path in `/etc`), with
//! which mode and owner, and which unit to restart when the rendered file changes:
//!
//! ```toml
//! [[template]]
//! source = "chrony.conf.j2"         # relative to /usr/share/semithin/templates
//! target = "/etc/chrony/chrony.conf"
//! mode = "0644"                     # default 0644
//! uid = 0                           # default 0 (numeric: names would need the release's passwd)
//! gid = 0
//! restart = "chrony.service"        # optional: restarted when the file changed
//! ```
//!
//! Rendering is pure: manifest text, template sources and a context in, files out. MiniJinja
//! runs with strict undefined (a missing variable is an error), without a loader (a template
//! reads no file, includes nothing) and with fuel (a rendering does bounded work). Every
//! template is rendered before anything is written, so one broken template leaves every
//! earlier rendering in place.

use std::collections::BTreeMap;

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior};
use semithin_protocol::vars::Facts;
use serde::Deserialize;
use serde_json::Value;

/// Where a release keeps its templates (relative to its root).
pub const DIR: &str = "usr/share/semithin/templates";
/// The manifest in [`DIR`].
pub const MANIFEST: &str = "templates.toml";
/// At most this many templates in a manifest.
pub const MAX_TEMPLATES: usize = 256;
/// At most this many bytes of a template's source, and of a rendered file.
pub const MAX_BYTES: usize = 1 << 20;
/// The work one template may do (MiniJinja's fuel: about one unit per instruction).
const FUEL: u64 = 5_000_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{DIR}/{MANIFEST}: {reason}")]
    Manifest { reason: String },
    #[error("template {source_name} ({target}): {reason}")]
    Source {
        source_name: String,
        target: String,
        reason: String,
    },
    #[error("template {source_name} ({target}){}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Render {
        source_name: String,
        target: String,
        line: Option<usize>,
        reason: String,
    },
}

/// One template of the manifest, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Relative to [`DIR`].
    pub source: String,
    /// An absolute path below `/etc`.
    pub target: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub restart: Option<String>,
}

impl Template {
    /// The target relative to `/etc` (`chrony/chrony.conf`).
    pub fn rel(&self) -> &str {
        self.target.strip_prefix("/etc/").unwrap_or(&self.target)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    template: Vec<RawTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    source: String,
    target: String,
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    restart: Option<String>,
}

fn plain_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= 255 && !c.contains('\0'))
        && !p.chars().any(char::is_control)
}

fn check_unit(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 256
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'))
        && u.contains('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "restart {u:?}: expected a systemd unit name (chrony.service, getty@tty1.service)"
        ))
    }
}

/// Parses and checks the manifest: sources plain relative paths, targets below `/etc`, each
/// once, modes octal up to 07777, unit names.
pub fn parse_manifest(text: &str) -> Result<Vec<Template>, Error> {
    let bad = |reason: String| Error::Manifest { reason };
    let raw: RawManifest = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if raw.template.len() > MAX_TEMPLATES {
        return Err(bad(format!(
            "{} templates; at most {MAX_TEMPLATES}",
            raw.template.len()
        )));
    }
    let mut out: Vec<Template> = Vec::new();
    for (i, t) in raw.template.into_iter().enumerate() {
        let at = |why: String| bad(format!("template {} ({:?}): {why}", i + 1, t.source));
        if !plain_path(&t.source) {
            return Err(at(
                "source must be a relative path below the templates directory".into(),
            ));
        }
        let rel = t.target.strip_prefix("/etc/").unwrap_or("");
        if !plain_path(rel) {
            return Err(at(format!(
                "target {:?} must be an absolute path below /etc (no '..', no '//')",
                t.target
            )));
        }
        let mode = match &t.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| at(format!("mode {m:?}: expected octal, at most 07777")))?,
        };
        if let Some(u) = &t.restart {
            check_unit(u).map_err(at)?;
        }
        if let Some(o) = out.iter().find(|o| {
            o.target == t.target
                || t.target.starts_with(&format!("{}/", o.target))
                || o.target.starts_with(&format!("{}/", t.target))
        }) {
            return Err(at(format!(
                "target {} clashes with the target of {}",
                t.target, o.source
            )));
        }
        out.push(Template {
            source: t.source,
            target: t.target,
            mode,
            uid: t.uid.unwrap_or(0),
            gid: t.gid.unwrap_or(0),
            restart: t.restart,
        });
    }
    Ok(out)
}

/// A rendered template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub template: Template,
    pub content: Vec<u8>,
}

/// What a machine is, for its templates. Its labels are not here: they are the server's, not
/// signed by the admin; what differs by label reaches a template as a label scope's variables.
pub struct Machine<'a> {
    pub name: &'a str,
    pub channel: Option<&'a str>,
}

/// The context a template sees: the variables at the top level, `facts` (what the machine
/// reported) and `machine` (`name`, `channel`).
pub fn context(vars: &BTreeMap<String, Value>, facts: Option<&Facts>, m: &Machine) -> Value {
    let mut ctx: serde_json::Map<String, Value> =
        vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    ctx.insert(
        "facts".into(),
        facts
            .and_then(|f| serde_json::to_value(f).ok())
            .unwrap_or(Value::Object(Default::default())),
    );
    ctx.insert(
        "machine".into(),
        serde_json::json!({"name": m.name, "channel": m.channel}),
    );
    Value::Object(ctx)
}

/// Renders every template with `ctx`, reading each source with `read` (its path relative to
/// [`DIR`]); the first failure is the error, naming the template and the line.
pub fn render_all(
    templates: &[Template],
    mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ctx: &Value,
) -> Result<Vec<Rendered>, Error> {
    let mut out = Vec::with_capacity(templates.len());
    for t in templates {
        let src_err = |reason: String| Error::Source {
            source_name: t.source.clone(),
            target: t.target.clone(),
            reason,
        };
        let bytes = read(&t.source).map_err(src_err)?;
        if bytes.len() > MAX_BYTES {
            return Err(src_err(format!(
                "{} bytes; at most {MAX_BYTES}",
                bytes.len()
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| src_err("not UTF-8 text".into()))?;
        out.push(Rendered {
            template: t.clone(),
            content: render_one(t, &text, ctx)?,
        });
    }
    Ok(out)
}

fn render_one(t: &Template, text: &str, ctx: &Value) -> Result<Vec<u8>, Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    // keep the file's last newline (Jinja drops it by default)
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    let err = |e: minijinja::Error| Error::Render {
        source_name: t.source.clone(),
        target: t.target.clone(),
        line: e.line(),
        reason: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    let tmpl = env.template_from_named_str(&t.source, text).map_err(err)?;
    let s = tmpl.render(Serde(ctx)).map_err(err)?;
    if s.len() > MAX_BYTES {
        return Err(Error::Render {
            source_name: t.source.clone(),
            target: t.target.clone(),
            line: None,
            reason: format!("renders {} bytes; at most {MAX_BYTES}", s.len()),
        });
    }
    Ok(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Vec<Template> {
        parse_manifest(
            r#"
            [[template]]
            source = "motd.j2"
            target = "/etc/motd"
            [[template]]
            source = "ntp/chrony.j2"
            target = "/etc/chrony/chrony.conf"
            mode = "0640"
            gid = 5
            restart = "chrony.service"
            "#,
        )
        .unwrap()
    }

    fn ctx(vars: &[(&str, Value)]) -> Value {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let facts = Facts {
            hostname: "h1".into(),
            ..Default::default()
        };
        context(
            &vars,
            Some(&facts),
            &Machine {
                name: "m1",
                channel: Some("lab"),
            },
        )
    }

    fn sources(name: &str) -> Result<Vec<u8>, String> {
        match name {
            "motd.j2" => Ok(
                b"{{ machine.name }} on {{ machine.channel }} ({{ facts.hostname }})\n".to_vec(),
            ),
            "ntp/chrony.j2" => {
                Ok(b"{% for s in ntp %}server {{ s }} iburst\n{% endfor %}".to_vec())
            }
            _ => Err("no such file".into()),
        }
    }

    #[test]
    fn templates_render_with_variables_facts_and_machine() {
        let t = manifest();
        assert_eq!(t[1].mode, 0o640);
        assert_eq!(t[1].gid, 5);
        assert_eq!(t[1].rel(), "chrony/chrony.conf");
        let out = render_all(&t, sources, &ctx(&[("ntp", serde_json::json!(["a", "b"]))])).unwrap();
        assert_eq!(out[0].content, b"m1 on lab (h1)\n");
        assert_eq!(out[1].content, b"server a iburst\nserver b iburst\n");
    }

    #[test]
    fn a_missing_variable_or_broken_template_names_the_template_and_line() {
        let t = manifest();
        let e = render_all(&t, sources, &ctx(&[])).unwrap_err().to_string();
        assert!(
            e.contains("ntp/chrony.j2") && e.contains("/etc/chrony/chrony.conf"),
            "{e}"
        );
        assert!(e.contains("line 1") && e.contains("undefined"), "{e}");
        let broken = |n: &str| match n {
            "motd.j2" => Ok(b"ok\n{% if x %}\nno end\n".to_vec()),
            _ => sources(n),
        };
        let e = render_all(&t, broken, &ctx(&[("x", 1.into())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("motd.j2") && e.contains("syntax"), "{e}");
        // no file system: include finds nothing
        let include = |n: &str| match n {
            "motd.j2" => Ok(b"{% include '/etc/shadow' %}".to_vec()),
            _ => sources(n),
        };
        let e = render_all(&t, include, &ctx(&[("ntp", serde_json::json!([]))]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("motd.j2") && e.contains("include"), "{e}");
        // endless work is cut by fuel
        let busy = |n: &str| match n {
            "motd.j2" => Ok(
                b"{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
                    .to_vec(),
            ),
            _ => sources(n),
        };
        let e = render_all(&t, busy, &ctx(&[("ntp", serde_json::json!([]))]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuel"), "{e}");
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        for (m, want) in [
            (
                "[[template]]\nsource = \"../x\"\ntarget = \"/etc/x\"",
                "source must be",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/usr/x\"",
                "below /etc",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/etc/../x\"",
                "below /etc",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/etc/x\"\nmode = \"999\"",
                "octal",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/etc/x\"\nrestart = \"-x; rm\"",
                "unit",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/etc/x\"\nowner = \"root\"",
                "unknown field",
            ),
            (
                "[[template]]\nsource = \"x\"\ntarget = \"/etc/x\"\n[[template]]\nsource = \"y\"\ntarget = \"/etc/x\"",
                "clashes",
            ),
        ] {
            let e = parse_manifest(m).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(MANIFEST), "{m}: {e}");
        }
    }
}
