//! Composing a profile: its layers' heads laid one over the other (`semithin_store::compose`,
//! overlayfs semantics), package layers replayed with apt over whatever is below them when that
//! is not what they were made on, and the result committed on the profile's channel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use semithin_image::build::{self, BuildDir};
use semithin_image::chroot::Chroot;
use semithin_image::stack::{self, Conflict, Def, LayerPackages, Made};
use semithin_protocol::ids::short_str;
use semithin_store::checkout::{self, CheckoutOptions};
use semithin_store::compose::{self, Mode};
use semithin_store::import;
use semithin_store::object::{Commit, EntryKind};
use semithin_store::{CommitId, Repo, channel, walk};
use serde::Serialize;

use crate::cli::image::Reporter;
use crate::cli::progress::Bar;

/// Where dpkg keeps its database: a file layer must not change it (it would no longer say
/// what is installed).
const DPKG_DIR: &[u8] = b"var/lib/dpkg";

/// How a composition goes.
pub(crate) struct Options<'a> {
    pub work_dir: &'a Path,
    pub report: &'a Reporter,
    /// Refuse conflicts whatever the profile says.
    pub strict: bool,
}

/// One layer of a composition, for people and scripts.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LayerUse {
    pub channel: String,
    pub commit: String,
    /// `base`, `files` or `packages`.
    pub kind: &'static str,
    /// A package layer installed again over a base it was not made on.
    pub replayed: bool,
}

/// What composing a profile did.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Outcome {
    pub profile: String,
    pub channel: String,
    /// The new version; None when the channel already holds this composition.
    pub commit: Option<String>,
    /// The composed tree's version (new or the head that already held it).
    pub version: String,
    pub layers: Vec<LayerUse>,
    pub conflicts: Vec<Conflict>,
    pub entries: u64,
    pub bytes: u64,
    /// Whether the new version was published (by the profile's policy or as asked).
    pub published: bool,
}

/// The composition of a stack's first `n` layers (all when `n` is the stack's length), as a
/// commit object (stored, on no channel), with what each layer was.
pub(crate) struct Partial {
    pub commit: Commit,
    pub id: CommitId,
    pub layers: Vec<LayerUse>,
    pub made: Made,
    pub conflicts: Vec<Conflict>,
}

/// The heads of `layers`, each named in the error when it has none.
fn heads(repo: &Repo, profile: &str, layers: &[String]) -> Result<Vec<CommitId>> {
    layers
        .iter()
        .map(|l| {
            channel::head(repo, l)?.with_context(|| {
                format!(
                    "profile {profile:?}: the layer {l:?} has no version yet (make it with \
                     `semithin commit -c {l} DIR`, `semithin overlay bake` or `semithin image \
                     add {l} PKG...`)"
                )
            })
        })
        .collect()
}

/// Every path a layer provides or hides (directories that only hold others are not counted).
fn provided(repo: &Repo, layer: &Commit) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    walk::walk(&repo.objects, layer.tree, &mut |p, e| {
        if !matches!(e.kind, EntryKind::Dir(_)) || compose::is_opaque(&e.meta) {
            out.insert(walk::lossy(p));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Whether a file layer reaches into dpkg's database; the first such path.
fn touches_dpkg(repo: &Repo, layer: &Commit) -> Result<Option<String>> {
    let Some(e) = walk::lookup(&repo.objects, layer.tree, DPKG_DIR)? else {
        return Ok(None);
    };
    let EntryKind::Dir(sub) = e.kind else {
        return Ok(Some(walk::lossy(DPKG_DIR)));
    };
    let mut first = None;
    walk::walk(&repo.objects, sub, &mut |p, e| {
        if first.is_none() && !matches!(e.kind, EntryKind::Dir(_)) {
            first = Some(format!("{}/{}", walk::lossy(DPKG_DIR), walk::lossy(p)));
        }
        Ok(())
    })?;
    Ok(first.or_else(|| compose::is_opaque(&e.meta).then(|| walk::lossy(DPKG_DIR))))
}

/// Stores a composed commit object (no channel), so it can be checked out and named.
fn store_commit(repo: &Repo, c: &Commit) -> Result<CommitId> {
    let (id, _) = repo.objects.put_commit(c)?;
    repo.objects.flush()?;
    Ok(id)
}

/// Composes the first `n` layers of `layers` (heads read now).
pub(crate) fn partial(
    repo: &Repo,
    profile: &str,
    layers: &[String],
    n: usize,
    opts: &Options,
) -> Result<Partial> {
    let layers = &layers[..n];
    let ids = heads(repo, profile, layers)?;
    let store = &repo.objects;
    let mut cur = store.get_commit(&ids[0])?;
    let mut uses = vec![LayerUse {
        channel: layers[0].clone(),
        commit: ids[0].to_hex(),
        kind: "base",
        replayed: false,
    }];
    let mut provided_by = Vec::new();
    let mut shadowed = Vec::new();
    for (l, id) in layers.iter().zip(&ids).skip(1) {
        let lc = store.get_commit(id)?;
        let pk = LayerPackages::parse(&lc.message)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("the layer {l:?} ({}): its message", id.short()))?;
        let (upper, kind, replayed) = match &pk {
            Some(p) if p.base != cur.tree.to_hex() => {
                let full = replay(repo, &cur, p, l, opts)?;
                let up = compose::upper(store, &cur, &full)?;
                let upper = Commit {
                    tree: up.tree,
                    hardlinks: up.hardlinks,
                    ..full
                };
                (upper, "packages", true)
            }
            Some(_) => (lc, "packages", false),
            None => {
                if let Some(p) = touches_dpkg(repo, &lc)? {
                    bail!(
                        "profile {profile:?}: the file layer {l:?} changes /{p}: dpkg's database \
                         would no longer say what the image holds. Make package changes with \
                         `semithin image add|remove LAYER PKG...` on a layer of their own, so \
                         they are installed again over each new base"
                    );
                }
                (lc, "files", false)
            }
        };
        let c = compose::apply(store, &cur, &upper, Mode::Image)?;
        provided_by.push(provided(repo, &upper)?);
        shadowed.push(c.shadowed.iter().map(|p| walk::lossy(p)).collect());
        cur = Commit {
            tree: c.tree,
            root_meta: c.root_meta,
            hardlinks: c.hardlinks,
            entries: c.entries,
            bytes: c.bytes,
            parent: None,
            time: 0,
            message: format!("composition of {profile} up to {l}"),
        };
        uses.push(LayerUse {
            channel: l.clone(),
            commit: id.to_hex(),
            kind,
            replayed,
        });
    }
    let names: Vec<String> = layers.iter().skip(1).cloned().collect();
    let conflicts = stack::conflicts(&names, &provided_by, &shadowed);
    let made = Made {
        layers: layers
            .iter()
            .zip(&ids)
            .map(|(l, id)| (l.clone(), id.to_hex()))
            .collect(),
    };
    let id = store_commit(repo, &cur)?;
    Ok(Partial {
        commit: cur,
        id,
        layers: uses,
        made,
        conflicts,
    })
}

/// Installs and removes a package layer's packages with apt over `lower`, in a chroot of a
/// checkout; the whole result, stored on no channel.
pub(crate) fn replay(
    repo: &Repo,
    lower: &Commit,
    p: &LayerPackages,
    layer: &str,
    opts: &Options,
) -> Result<Commit> {
    let report = opts.report;
    for t in ["chroot", "mount"] {
        crate::cli::image::need_tool(t)?;
    }
    crate::cli::image::catch_interrupts();
    let lower_id = store_commit(repo, lower)?;
    report.step(&format!(
        "replaying the package layer {layer} over {} (apt: {}{}{})",
        lower.tree.short(),
        if p.install.is_empty() {
            String::new()
        } else {
            format!("install {}", p.install.join(" "))
        },
        if p.install.is_empty() || p.remove.is_empty() {
            ""
        } else {
            "; "
        },
        if p.remove.is_empty() {
            String::new()
        } else {
            format!("remove {}", p.remove.join(" "))
        }
    ));
    let dir = BuildDir::new(opts.work_dir)?;
    let root = dir.root();
    let bar = Bar::new(true);
    checkout::checkout(
        repo,
        lower_id,
        &root,
        &CheckoutOptions {
            cache: None,
            fsync: false,
        },
        &bar,
    )
    .with_context(|| format!("checking out the layers below {layer}"))?;
    {
        let ch = Chroot::enter(&root)?;
        let ev = |e: semithin_image::Event<'_>| report.event(e);
        let fail = |e: semithin_image::Error| {
            anyhow::Error::new(e).context(format!(
                "replaying the package layer {layer:?} over the new layers below it"
            ))
        };
        ch.run("apt-get update", &["apt-get", "update"], &ev)
            .map_err(fail)?;
        if !p.install.is_empty() {
            build::install(&ch, &p.install, &ev).map_err(fail)?;
        }
        let installed = build::packages_of(&root)?;
        let remove: Vec<&str> = p
            .remove
            .iter()
            .map(String::as_str)
            .filter(|r| installed.contains_key(*r))
            .collect();
        if !remove.is_empty() {
            build::purge(&ch, &remove, &ev).map_err(fail)?;
        }
    }
    if semithin_image::interrupted() {
        bail!("interrupted while replaying {layer}: nothing committed");
    }
    build::clean(&root)?;
    let stats = import::store_detached(
        repo,
        &root,
        &format!("{layer} replayed over {}", lower.tree.to_hex()),
        &bar,
    )
    .with_context(|| format!("storing {layer} replayed"))?;
    let id: CommitId = stats.commit.parse()?;
    Ok(repo.objects.get_commit(&id)?)
}

/// Composes profile `name` and commits the result on its channel when it differs from what the
/// channel holds (other layers, or another tree). The caller holds the write lock.
pub(crate) fn compose(
    repo: &Repo,
    defs: &BTreeMap<String, Def>,
    name: &str,
    opts: &Options,
) -> Result<Outcome> {
    let def = defs
        .get(name)
        .with_context(|| format!("no profile named {name:?}"))?;
    let layers = stack::stack(defs, name)?;
    let channel = def.channel(name);
    let p = partial(repo, name, &layers, layers.len(), opts)?;
    if !p.conflicts.is_empty() && (opts.strict || def.conflicts == stack::Conflicts::Refuse) {
        bail!(
            "profile {name:?}: {} path(s) provided by two layers (nothing committed; the upper \
             layer would win):\n{}",
            p.conflicts.len(),
            conflict_lines(&p.conflicts)
        );
    }
    let head = channel::head(repo, &channel)?;
    let same = match head {
        Some(h) => {
            let hc = repo.objects.get_commit(&h)?;
            (hc.tree == p.commit.tree && Made::parse(&hc.message) == p.made).then_some(h)
        }
        None => None,
    };
    let (commit, version) = match same {
        Some(h) => (None, h),
        None => {
            let message = message(name, &p);
            let c = compose::Composed {
                tree: p.commit.tree,
                root_meta: p.commit.root_meta.clone(),
                hardlinks: p.commit.hardlinks.clone(),
                entries: p.commit.entries,
                bytes: p.commit.bytes,
                shadowed: Vec::new(),
            };
            let id = compose::commit(repo, &channel, &c, &message)
                .with_context(|| format!("committing profile {name:?} to {channel}"))?;
            (Some(id), id)
        }
    };
    Ok(Outcome {
        profile: name.to_owned(),
        channel,
        commit: commit.map(|c| c.to_hex()),
        version: version.to_hex(),
        layers: p.layers,
        conflicts: p.conflicts,
        entries: p.commit.entries,
        bytes: p.commit.bytes,
        published: false,
    })
}

fn message(name: &str, p: &Partial) -> String {
    let mut m = format!("compose {name}: {} layer(s)\n\n", p.layers.len());
    for l in &p.layers {
        m += &format!(
            "  {} {} ({}{})\n",
            l.channel,
            short_str(&l.commit),
            l.kind,
            if l.replayed { ", replayed" } else { "" }
        );
    }
    if !p.conflicts.is_empty() {
        m += &format!(
            "\n{} path(s) provided by two layers (the upper wins):\n{}",
            p.conflicts.len(),
            conflict_lines(&p.conflicts)
        );
    }
    m + "\n" + &p.made.lines()
}

/// Conflicts one per line, at most 50.
pub(crate) fn conflict_lines(c: &[Conflict]) -> String {
    let mut s: String = c
        .iter()
        .take(50)
        .map(|c| {
            format!(
                "  /{}: {} hides {}\n",
                crate::cli::safe::safe(&c.path),
                c.upper,
                c.lower
            )
        })
        .collect();
    if c.len() > 50 {
        s += &format!("  ... and {} more\n", c.len() - 50);
    }
    s
}
