//! `semithin var`: the variables machines render their configuration templates with, one set
//! per scope (global, a channel, a label, a machine), each signed with the admin's key
//! (docs/CONFIG.md). Also `semithin fleet render`, the server's dry run of a machine's
//! templates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_protocol::api::Affected;
use semithin_protocol::job::AdminKey;
use semithin_protocol::vars::{
    self, LabelOrder, RenderAnswer, RenderRequest, Scope, SignedSet, VarSet, VarsInfo,
};

use super::admin::{AdminClient, ServerArgs};
use super::print_json;
use super::safe::safe;

#[derive(Subcommand)]
pub enum VarCmd {
    /// Set variables in a scope (`NAME=TEXT`, or `NAME:=JSON` for a number, a list, a map):
    /// the scope's whole set is signed anew and reaches the machines it applies to.
    Set {
        /// `global`, `channel:NAME`, `label:KEY=VALUE` or `machine:NAME`.
        #[arg(long)]
        scope: String,
        /// The admin's signing key (`semithin job keygen`); machines trust it in `admin_keys`.
        #[arg(long, value_name = "FILE")]
        sign_key: PathBuf,
        /// `NAME=TEXT` or `NAME:=JSON`.
        #[arg(required = true, value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Remove variables from a scope (the set is signed anew).
    Unset {
        /// `global`, `channel:NAME`, `label:KEY=VALUE` or `machine:NAME`.
        #[arg(long)]
        scope: String,
        /// The admin's signing key.
        #[arg(long, value_name = "FILE")]
        sign_key: PathBuf,
        /// The variables to remove.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The variables of every scope (or one), and the order of label scopes.
    List {
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The order in which label scopes apply, later keys winning (`site class`: a class's
    /// value overrides a site's); keys not named come after, by name.
    Order {
        /// Label keys, first applied first (none: by key name).
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
    },
}

fn read_key(path: &PathBuf) -> Result<AdminKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    AdminKey::from_file_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `NAME=TEXT` or `NAME:=JSON`.
fn parse_assignment(s: &str) -> Result<(String, serde_json::Value)> {
    let (name, value) = match (s.find(":="), s.find('=')) {
        (Some(i), Some(j)) if i < j => {
            let json = s.get(i + 2..).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("{s}: the value after := is not JSON"))?;
            (s.get(..i).unwrap_or_default(), v)
        }
        (_, Some(j)) => (
            s.get(..j).unwrap_or_default(),
            serde_json::Value::String(s.get(j + 1..).unwrap_or_default().to_owned()),
        ),
        _ => bail!("{s:?}: expected NAME=TEXT or NAME:=JSON"),
    };
    vars::check_name(name).map_err(anyhow::Error::msg)?;
    Ok((name.to_owned(), value))
}

/// The scope's set as the server holds it (an empty one at version 0 when none).
fn current(c: &AdminClient, scope: &Scope) -> Result<VarSet> {
    let info: VarsInfo = c.get("reading the variables", "/api/v1/admin/vars")?;
    let want = scope.to_string();
    Ok(info
        .sets
        .into_iter()
        .find(|s| s.scope == want)
        .map(|s| VarSet {
            scope: s.scope,
            version: s.version,
            vars: s.vars,
        })
        .unwrap_or(VarSet {
            scope: want,
            version: 0,
            vars: Default::default(),
        }))
}

fn store(c: &AdminClient, set: VarSet, key: &AdminKey, json: bool) -> Result<()> {
    let scope = set.scope.clone();
    let version = set.version;
    let signed = SignedSet::sign(set, key).map_err(anyhow::Error::msg)?;
    let a: Affected = c.put("storing the variables", "/api/v1/admin/vars", &signed)?;
    if json {
        print_json(&serde_json::json!({
            "scope": scope, "version": version, "machines": a.machines
        }))?;
    } else {
        outln!(
            "{scope} at version {version}; {} machine(s) get it: {}",
            a.machines.len(),
            a.machines
                .iter()
                .map(|m| safe(m).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub fn run(server: &ServerArgs, cmd: VarCmd) -> Result<ExitCode> {
    // Everything given is checked before the server is asked.
    match &cmd {
        VarCmd::Set { scope, vars, .. } => {
            Scope::parse(scope).map_err(anyhow::Error::msg)?;
            for v in vars {
                parse_assignment(v)?;
            }
        }
        VarCmd::Unset { scope, names, .. } => {
            Scope::parse(scope).map_err(anyhow::Error::msg)?;
            for n in names {
                vars::check_name(n).map_err(anyhow::Error::msg)?;
            }
        }
        VarCmd::List {
            scope: Some(scope), ..
        } => {
            Scope::parse(scope).map_err(anyhow::Error::msg)?;
        }
        VarCmd::Order { keys } => vars::check_label_order(keys).map_err(anyhow::Error::msg)?,
        VarCmd::List { .. } => {}
    }
    let c = server.client()?;
    match cmd {
        VarCmd::Set {
            scope,
            sign_key,
            vars,
            json,
        } => {
            let key = read_key(&sign_key)?;
            let scope = Scope::parse(&scope).map_err(anyhow::Error::msg)?;
            let mut set = current(&c, &scope)?;
            for v in &vars {
                let (k, v) = parse_assignment(v)?;
                set.vars.insert(k, v);
            }
            set.version += 1;
            set.validate().map_err(anyhow::Error::msg)?;
            store(&c, set, &key, json)?;
        }
        VarCmd::Unset {
            scope,
            sign_key,
            names,
            json,
        } => {
            let key = read_key(&sign_key)?;
            let scope = Scope::parse(&scope).map_err(anyhow::Error::msg)?;
            let mut set = current(&c, &scope)?;
            for n in &names {
                if set.vars.remove(n).is_none() {
                    bail!("{n} is not set in {scope} (`semithin var list --scope {scope}`)");
                }
            }
            set.version += 1;
            store(&c, set, &key, json)?;
        }
        VarCmd::List { scope, json } => {
            let mut info: VarsInfo = c.get("reading the variables", "/api/v1/admin/vars")?;
            if let Some(s) = &scope {
                let want = Scope::parse(s).map_err(anyhow::Error::msg)?.to_string();
                info.sets.retain(|x| x.scope == want);
            }
            if json {
                print_json(&info)?;
            } else {
                if !info.label_order.is_empty() {
                    outln!("label order: {}", info.label_order.join(" "));
                }
                for s in &info.sets {
                    outln!(
                        "{} (version {}, signed by {}):",
                        safe(&s.scope),
                        s.version,
                        safe(s.key.get(..16).unwrap_or(&s.key))
                    );
                    for (k, v) in &s.vars {
                        outln!("  {k} = {}", safe(&v.to_string()));
                    }
                }
            }
        }
        VarCmd::Order { keys } => {
            let a: Affected = c.put(
                "storing the label order",
                "/api/v1/admin/vars/order",
                &LabelOrder { keys: keys.clone() },
            )?;
            outln!(
                "label scopes apply in the order: {} ({} machine(s) told)",
                if keys.is_empty() {
                    "by key name".to_owned()
                } else {
                    keys.join(", ")
                },
                a.machines.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `semithin fleet render MACHINE [PATH]`.
pub fn render(c: &AdminClient, machine: String, path: Option<String>, json: bool) -> Result<()> {
    if let Some(p) = &path
        && !p.starts_with("/etc/")
    {
        bail!("{p}: templates render into /etc: give the path as /etc/...");
    }
    let a: RenderAnswer = c.post(
        "rendering",
        "/api/v1/admin/render",
        &RenderRequest { machine, path },
    )?;
    if json {
        return print_json(&a);
    }
    for f in &a.files {
        outln!(
            "# {} from {} (mode {:04o}, {}:{}{})",
            safe(&f.target),
            safe(&f.template),
            f.mode,
            f.uid,
            f.gid,
            f.restart
                .as_ref()
                .map(|u| format!(", restarts {}", safe(u)))
                .unwrap_or_default()
        );
        // the content as the machine gets it, control characters shown escaped
        for line in f.content.lines() {
            outln!("{}", safe(line));
        }
    }
    Ok(())
}
