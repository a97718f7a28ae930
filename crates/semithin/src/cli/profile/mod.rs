//! `semithin profile`: layered profiles. A profile is a stack of layers, each a channel (the
//! base image first, then overlays), optionally extending another profile; its composition is
//! committed on the profile's own channel, so deltas, history, rollouts and rollback work as for
//! any channel. Definitions live in `REPO/profiles/NAME.toml` (docs/IMAGES.md, "Layered
//! profiles").
//!
//! The commands here; the composition in `compose.rs`; package layers made by `image add` in
//! `layer.rs`.

mod assign;
mod compose;
pub(crate) mod layer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_image::stack::{self, Conflicts, Def, Made, Publish};
use semithin_protocol::ids::short_str;
use semithin_protocol::selector::Selector;
use semithin_store::{Access, Repo, channel, fsutil};
use serde::Serialize;
use serde_json::json;

use super::admin::ServerArgs;
use super::image::Reporter;
use super::{open, print_json};
pub(crate) use compose::Outcome;

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// Define a profile or change one: its layers (channels, the base image first), what it
    /// extends, its channel, its publishing policy and its machines.
    Set(SetArgs),
    /// Remove a profile's definition (its channel and the layers stay).
    Remove {
        /// The profile.
        name: String,
    },
    /// Every profile: its channel, stack and whether a layer moved since it was composed.
    List {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// One profile: each layer of its stack (kind, head, what the last composition used) and
    /// the conflicts between layers.
    Show {
        /// The profile.
        name: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Compose profiles (their layers' heads, package layers replayed over a new base) and
    /// commit each result that differs on the profile's channel.
    Compose(ComposeArgs),
    /// The layers and the profiles above each, as a tree.
    Tree {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Assign each profile's machines (its `machines` selector) to its channel on the server;
    /// a machine two profiles select is refused, naming both.
    Assign {
        /// The profiles [default: every profile with machines].
        names: Vec<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(clap::Args)]
pub struct SetArgs {
    /// The profile: lowercase letters, digits, `-`, `_`, `.`.
    name: String,
    /// The layers, bottom first, comma-separated: channels (without --extends, the first is
    /// the base image).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Another profile whose stack comes below these layers (`none` removes it).
    #[arg(long)]
    extends: Option<String>,
    /// The channel compositions are committed to [default: profiles/NAME].
    #[arg(long)]
    channel: Option<String>,
    /// What a new composition does: `offer` (committed; publish it or start a rollout) or
    /// `auto` (published at once).
    #[arg(long, value_enum)]
    publish: Option<PublishArg>,
    /// Paths two layers above the base both provide: `list` them (the upper layer wins) or
    /// `refuse` the composition.
    #[arg(long, value_enum)]
    conflicts: Option<ConflictsArg>,
    /// The machines of this profile, a label selector (`site=school-12,class=lab`), used by
    /// `profile assign`; `none` removes it.
    #[arg(long)]
    machines: Option<String>,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PublishArg {
    Offer,
    Auto,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConflictsArg {
    List,
    Refuse,
}

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// The profiles [default: every profile].
    names: Vec<String>,
    /// Only the profiles a layer of which moved since their last composition.
    #[arg(long)]
    stale: bool,
    /// Publish each new composition whatever the profile's policy.
    #[arg(long)]
    publish: bool,
    /// Refuse a composition with conflicts between layers whatever the profile says.
    #[arg(long)]
    strict: bool,
    /// Where package layers are replayed (a checkout and a chroot, removed afterwards).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn dir(repo: &Repo) -> PathBuf {
    repo.path().join("profiles")
}

/// Every definition in the repository, by name; a damaged one is an error naming its file.
pub(crate) fn load(repo: &Repo) -> Result<BTreeMap<String, Def>> {
    let d = dir(repo);
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
    };
    for e in rd {
        let p = e?.path();
        let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let def = Def::parse(name, &text).with_context(|| format!("in {}", p.display()))?;
        out.insert(name.to_owned(), def);
    }
    Ok(out)
}

fn save(repo: &Repo, name: &str, def: &Def) -> Result<()> {
    let d = dir(repo);
    std::fs::create_dir_all(&d).with_context(|| format!("making {}", d.display()))?;
    fsutil::replace_atomic(
        &d.join(format!("{name}.toml")),
        &repo.tmp_dir(),
        def.to_toml().as_bytes(),
    )?;
    Ok(())
}

pub fn run(repo: Option<PathBuf>, cmd: ProfileCmd) -> Result<ExitCode> {
    match cmd {
        ProfileCmd::Set(a) => set(&open(repo, Access::Write)?, a),
        ProfileCmd::Remove { name } => {
            let r = open(repo, Access::Write)?;
            let defs = load(&r)?;
            if !defs.contains_key(&name) {
                bail!("no profile named {name:?}");
            }
            if let Some((child, _)) = defs
                .iter()
                .find(|(_, d)| d.extends.as_deref() == Some(name.as_str()))
            {
                bail!("profile {child:?} extends {name:?}: change or remove it first");
            }
            let f = dir(&r).join(format!("{name}.toml"));
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            outln!("profile {name} removed (its channel and layers stay)");
            Ok(ExitCode::SUCCESS)
        }
        ProfileCmd::List { json } => list(&open(repo, Access::Read)?, json),
        ProfileCmd::Show { name, json } => show(&open(repo, Access::Read)?, &name, json),
        ProfileCmd::Compose(a) => compose_cmd(repo, a),
        ProfileCmd::Tree { json } => tree(&open(repo, Access::Read)?, json),
        ProfileCmd::Assign {
            names,
            json,
            server,
        } => {
            // The repository is let go before the server is asked: it signs the assignments
            // under the repository's write lock.
            let defs = load(&open(repo, Access::Read)?)?;
            assign::assign(&defs, &names, json, &server)
        }
    }
}

fn set(repo: &Repo, a: SetArgs) -> Result<ExitCode> {
    stack::check_name(&a.name).map_err(anyhow::Error::msg)?;
    let mut defs = load(repo)?;
    let mut def = defs.get(&a.name).cloned().unwrap_or_default();
    if let Some(l) = a.layers {
        def.layers = l.into_iter().map(|s| s.trim().to_owned()).collect();
    }
    match a.extends.as_deref() {
        Some("none") => def.extends = None,
        Some(e) => def.extends = Some(e.to_owned()),
        None => {}
    }
    if let Some(c) = a.channel {
        def.channel = Some(c);
    }
    if let Some(p) = a.publish {
        def.publish = match p {
            PublishArg::Offer => Publish::Offer,
            PublishArg::Auto => Publish::Auto,
        };
    }
    if let Some(c) = a.conflicts {
        def.conflicts = match c {
            ConflictsArg::List => Conflicts::List,
            ConflictsArg::Refuse => Conflicts::Refuse,
        };
    }
    match a.machines.as_deref() {
        Some("none") => def.machines = None,
        Some(m) => {
            Selector::parse(m).with_context(|| format!("--machines {m:?}"))?;
            def.machines = Some(m.to_owned());
        }
        None => {}
    }
    def.validate(&a.name)?;
    for l in &def.layers {
        channel::check_name(l).with_context(|| format!("layer {l:?}"))?;
    }
    let own = def.channel(&a.name);
    channel::check_name(&own).with_context(|| format!("channel {own:?}"))?;
    defs.insert(a.name.clone(), def.clone());
    let layers = stack::stack(&defs, &a.name)?;
    if layers.contains(&own) {
        bail!(
            "profile {:?}: its channel {own:?} is also one of its layers",
            a.name
        );
    }
    for (other, d) in &defs {
        if other != &a.name && d.channel(other) == own {
            bail!("profile {other:?} already composes into {own:?}: give --channel");
        }
    }
    let mut missing = Vec::new();
    for l in &layers {
        if channel::head(repo, l)?.is_none() {
            missing.push(l.clone());
        }
    }
    save(repo, &a.name, &def)?;
    if a.json {
        print_json(
            &json!({"profile": a.name, "channel": own, "layers": layers, "missing": missing}),
        )?;
    } else {
        outln!("profile {}: {} -> {own}", a.name, layers.join(" + "));
        for m in &missing {
            note!(
                "note: the layer {m} has no version yet: `semithin image add {m} PKG...` (a \
                 package layer), `semithin commit -c {m} DIR` or `semithin overlay bake` (files)"
            );
        }
        note!("compose it with `semithin profile compose {}`", a.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a layer of `name` moved since its channel's head was composed (None: never
/// composed).
fn stale(repo: &Repo, defs: &BTreeMap<String, Def>, name: &str) -> Result<Option<Vec<String>>> {
    let def = &defs[name];
    let layers = stack::stack(defs, name)?;
    let Some(head) = channel::head(repo, &def.channel(name))? else {
        return Ok(None);
    };
    let made = Made::parse(&repo.objects.get_commit(&head)?.message);
    let used: BTreeMap<&str, &str> = made
        .layers
        .iter()
        .map(|(c, id)| (c.as_str(), id.as_str()))
        .collect();
    let mut moved = Vec::new();
    for l in &layers {
        let now = channel::head(repo, l)?.map(|c| c.to_hex());
        if now.as_deref() != used.get(l.as_str()).copied() {
            moved.push(l.clone());
        }
    }
    Ok(Some(moved))
}

#[derive(Serialize)]
struct ListRow {
    name: String,
    channel: String,
    layers: Vec<String>,
    extends: Option<String>,
    publish: Publish,
    machines: Option<String>,
    /// `up-to-date`, `stale` (a layer moved), `never composed`.
    state: String,
    moved: Vec<String>,
}

fn list(repo: &Repo, json: bool) -> Result<ExitCode> {
    let defs = load(repo)?;
    let mut rows = Vec::new();
    for (name, def) in &defs {
        let layers = stack::stack(&defs, name)?;
        let (state, moved) = match stale(repo, &defs, name)? {
            None => ("never composed".to_owned(), Vec::new()),
            Some(m) if m.is_empty() => ("up-to-date".to_owned(), m),
            Some(m) => ("stale".to_owned(), m),
        };
        rows.push(ListRow {
            name: name.clone(),
            channel: def.channel(name),
            layers,
            extends: def.extends.clone(),
            publish: def.publish,
            machines: def.machines.clone(),
            state,
            moved,
        });
    }
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!("no profiles: `semithin profile set NAME --layers BASE,LAYER...`");
    }
    for r in rows {
        outln!(
            "{:<16} {:<24} {:<15} {}{}",
            r.name,
            r.channel,
            r.state,
            r.layers.join(" + "),
            r.machines
                .map(|m| format!("  [machines: {m}]"))
                .unwrap_or_default()
        );
        if !r.moved.is_empty() {
            outln!("{:<16} moved since: {}", "", r.moved.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One layer of `profile show`.
#[derive(Serialize)]
struct ShowRow {
    channel: String,
    /// `base`, `files`, `packages` or `missing` (no version yet).
    kind: &'static str,
    head: Option<String>,
    /// The version the profile's last composition used.
    composed_from: Option<String>,
    packages: Option<stack::LayerPackages>,
}

fn show(repo: &Repo, name: &str, json: bool) -> Result<ExitCode> {
    let defs = load(repo)?;
    let def = defs
        .get(name)
        .with_context(|| format!("no profile named {name:?}"))?;
    let layers = stack::stack(&defs, name)?;
    let own = def.channel(name);
    let head = channel::head(repo, &own)?;
    let made = match head {
        Some(h) => Made::parse(&repo.objects.get_commit(&h)?.message),
        None => Made::default(),
    };
    let mut rows = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let h = channel::head(repo, l)?;
        // A package layer says so in its message; the base is a whole image whatever it says.
        let packages = match h {
            Some(id) if i > 0 => {
                stack::LayerPackages::parse(&repo.objects.get_commit(&id)?.message)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let kind = match (h, &packages) {
            (None, _) => "missing",
            (Some(_), _) if i == 0 => "base",
            (Some(_), Some(_)) => "packages",
            (Some(_), None) => "files",
        };
        let composed_from = made
            .layers
            .iter()
            .find(|(c, _)| c == l)
            .map(|(_, id)| id.clone());
        rows.push(ShowRow {
            channel: l.clone(),
            kind,
            head: h.map(|c| c.to_hex()),
            composed_from,
            packages,
        });
    }
    if json {
        print_json(&json!({
            "profile": name,
            "channel": own,
            "extends": def.extends,
            "publish": def.publish,
            "conflicts": def.conflicts,
            "machines": def.machines,
            "head": head.map(|c| c.to_hex()),
            "layers": rows,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "profile {name} -> {own}{}",
        match head {
            Some(h) => format!(" (at {})", h.short()),
            None => " (never composed)".to_owned(),
        }
    );
    if let Some(e) = &def.extends {
        outln!("extends {e}");
    }
    outln!(
        "publish: {}; conflicts: {}; machines: {}",
        match def.publish {
            Publish::Offer => "offer",
            Publish::Auto => "auto",
        },
        match def.conflicts {
            Conflicts::List => "list",
            Conflicts::Refuse => "refuse",
        },
        def.machines.as_deref().unwrap_or("-")
    );
    outln!("layers, top first:");
    for r in rows.iter().rev() {
        let head = r.head.as_deref().map(short_str).unwrap_or("-");
        let moved = match &r.composed_from {
            Some(u) if Some(u) != r.head.as_ref() => {
                format!(" (composed from {})", short_str(u))
            }
            None if r.head.is_some() => " (not composed yet)".to_owned(),
            _ => String::new(),
        };
        let pk = r
            .packages
            .as_ref()
            .map(|p| format!(" [{}]", p.install.join(" ")))
            .unwrap_or_default();
        outln!("  {:<28} {:<9} {head}{moved}{pk}", r.channel, r.kind);
    }
    Ok(ExitCode::SUCCESS)
}

fn compose_cmd(repo_path: Option<PathBuf>, a: ComposeArgs) -> Result<ExitCode> {
    let repo = open(repo_path, Access::Write)?;
    let defs = load(&repo)?;
    let names: Vec<String> = if a.names.is_empty() {
        defs.keys().cloned().collect()
    } else {
        for n in &a.names {
            if !defs.contains_key(n) {
                bail!(
                    "no profile named {n:?}{}",
                    semithin_protocol::near::did_you_mean(n, defs.keys().map(String::as_str))
                );
            }
        }
        a.names.clone()
    };
    let report = Reporter::new(a.json);
    let opts = compose::Options {
        work_dir: &a.work_dir,
        report: &report,
        strict: a.strict,
    };
    let mut outcomes = Vec::new();
    let mut published_any = false;
    for n in &names {
        if a.stale && stale(&repo, &defs, n)?.is_some_and(|m| m.is_empty()) {
            continue;
        }
        report.step(&format!("composing {n}"));
        let mut o = compose::compose(&repo, &defs, n, &opts)?;
        let publish = a.publish || defs[n].publish == Publish::Auto;
        o.published = publish_if(&repo, &o, publish)?;
        published_any |= o.published;
        let published = o.published;
        outcomes.push((o, published));
    }
    drop(repo);
    report.finish();
    if a.json {
        let v: Vec<_> = outcomes
            .iter()
            .map(|(o, p)| json!({"outcome": o, "published": p}))
            .collect();
        print_json(&v)?;
    } else {
        if outcomes.is_empty() {
            outln!("every profile is up to date");
        }
        for (o, p) in &outcomes {
            say(o, *p)?;
        }
    }
    if published_any {
        crate::cli::publish::tell_server(&a.server, a.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes a new composition when asked; whether it did.
fn publish_if(repo: &Repo, o: &Outcome, publish: bool) -> Result<bool> {
    let Some(c) = &o.commit else {
        return Ok(false);
    };
    if !publish {
        return Ok(false);
    }
    crate::cli::publish::sign(repo, &o.channel, c.parse()?)
        .with_context(|| format!("publishing {} on {}", short_str(c), o.channel))?;
    Ok(true)
}

/// An outcome for people.
pub(crate) fn say(o: &Outcome, published: bool) -> Result<()> {
    let replayed: Vec<&str> = o
        .layers
        .iter()
        .filter(|l| l.replayed)
        .map(|l| l.channel.as_str())
        .collect();
    match &o.commit {
        None => outln!(
            "{}: up to date ({} holds this composition: {})",
            o.profile,
            o.channel,
            short_str(&o.version)
        ),
        Some(c) => {
            outln!(
                "{}: composed {} layer(s) into {} on {}{}",
                o.profile,
                o.layers.len(),
                short_str(c),
                o.channel,
                if replayed.is_empty() {
                    String::new()
                } else {
                    format!(" (replayed: {})", replayed.join(", "))
                }
            );
            if published {
                outln!("  published as the release of {}", o.channel);
            } else {
                outln!(
                    "  not published: `semithin publish {}` or `semithin rollout start {} {}`",
                    o.channel,
                    o.channel,
                    short_str(c)
                );
            }
        }
    }
    if !o.conflicts.is_empty() {
        outln!(
            "  {} path(s) provided by two layers (the upper wins):",
            o.conflicts.len()
        );
        crate::cli::out(format_args!("{}", compose::conflict_lines(&o.conflicts)))?;
    }
    Ok(())
}

fn tree(repo: &Repo, json: bool) -> Result<ExitCode> {
    let defs = load(repo)?;
    // parent layer -> the layers and profiles directly above it.
    let mut above: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut bases = Vec::new();
    for name in defs.keys() {
        let layers = stack::stack(&defs, name)?;
        let mut below: Option<String> = None;
        for l in &layers {
            match &below {
                None => {
                    if !bases.contains(l) {
                        bases.push(l.clone());
                    }
                }
                Some(b) => {
                    let v = above.entry(b.clone()).or_default();
                    if !v.contains(l) {
                        v.push(l.clone());
                    }
                }
            }
            below = Some(l.clone());
        }
        let top = format!("profile:{name}");
        above
            .entry(below.expect("a stack has a layer"))
            .or_default()
            .push(top);
    }
    if json {
        print_json(&json!({"bases": bases, "above": above}))?;
        return Ok(ExitCode::SUCCESS);
    }
    fn walk(
        node: &str,
        above: &BTreeMap<String, Vec<String>>,
        defs: &BTreeMap<String, Def>,
        indent: &str,
        depth: usize,
    ) -> Result<()> {
        let Some(kids) = above.get(node) else {
            return Ok(());
        };
        for (i, k) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            let label = match k.strip_prefix("profile:") {
                Some(p) => format!("=> profile {p} ({})", defs[p].channel(p)),
                None => k.clone(),
            };
            outln!("{indent}{}{label}", if last { "└─ " } else { "├─ " });
            if depth < stack::MAX_LAYERS {
                let next = format!("{indent}{}", if last { "   " } else { "│  " });
                walk(k, above, defs, &next, depth + 1)?;
            }
        }
        Ok(())
    }
    if bases.is_empty() {
        outln!("no profiles: `semithin profile set NAME --layers BASE,LAYER...`");
    }
    for b in &bases {
        outln!("{b}");
        walk(b, &above, &defs, "", 0)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// After `channel` moved: every profile with it in its stack (but not composing into it) is
/// composed again, published by its policy, and said. A failure is a warning: the move stands.
pub(crate) fn after_move(repo: &Repo, moved: &str, work_dir: &Path, quiet: bool) -> Vec<Outcome> {
    let defs = match load(repo) {
        Ok(d) => d,
        Err(e) => {
            note!("warning: the profiles could not be read: {e:#}");
            return Vec::new();
        }
    };
    let report = Reporter::new(quiet);
    let opts = compose::Options {
        work_dir,
        report: &report,
        strict: false,
    };
    let mut out = Vec::new();
    // A profile's channel may itself be a layer of another profile: what moves with a new
    // composition is composed in turn, each channel once.
    let mut moves = vec![moved.to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(moved) = moves.pop() {
        if !seen.insert(moved.clone()) {
            continue;
        }
        for name in stack::above(&defs, &moved) {
            let own = defs[&name].channel(&name);
            if own == moved {
                continue;
            }
            report.step(&format!(
                "{moved} moved: composing the profile {name} again"
            ));
            match compose::compose(repo, &defs, &name, &opts).and_then(|mut o| {
                o.published = publish_if(repo, &o, defs[&name].publish == Publish::Auto)?;
                Ok(o)
            }) {
                Ok(o) => {
                    if !quiet {
                        report.finish();
                        let _ = say(&o, o.published);
                    }
                    if o.commit.is_some() {
                        moves.push(own);
                    }
                    out.push(o);
                }
                Err(e) => note!(
                    "warning: profile {name} was not composed again: {e:#} (fix it and run \
                     `semithin profile compose {name}`)"
                ),
            }
        }
    }
    out
}

/// Tells the server (when one is configured) after compositions were published, so it wakes
/// their machines at once. Call it once the repository is let go: the server reads it.
pub(crate) fn tell_if_published(outcomes: &[Outcome], quiet: bool) -> Result<()> {
    if outcomes.iter().any(|o| o.published) {
        crate::cli::publish::tell_server(&ServerArgs::default(), quiet)?;
    }
    Ok(())
}
