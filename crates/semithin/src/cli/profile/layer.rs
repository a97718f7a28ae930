//! Package layers: `semithin image add|remove LAYER PKG...` on a channel that is a layer of a
//! profile (above its base). The packages are installed with apt over the composition of the
//! layers below, and what that changed is stored as the layer (overlay semantics: changed and
//! new files, whiteouts for removed ones) with the packages and the tree it was made over in the
//! message, so the next composition over another base installs them again instead of merging
//! files (dpkg's database stays true).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_image::build::{self, BuildDir};
use semithin_image::dpkg;
use semithin_image::stack::{self, LayerPackages};
use semithin_store::checkout::{self, CheckoutOptions};
use semithin_store::compose::{self, Mode};
use semithin_store::{Access, CommitId, Repo, channel, import};
use serde_json::json;

use super::compose::{Options, partial};
use crate::cli::admin::ServerArgs;
use crate::cli::image::Reporter;
use crate::cli::progress::Bar;
use crate::cli::{open, print_json};

/// A layer in a profile's stack: the profile, its stack and the layer's place (above 0).
pub(crate) struct Place {
    pub profile: String,
    pub stack: Vec<String>,
    pub index: usize,
}

/// The place of `layer` in a profile's stack above the base (None: it is in none, or only as a
/// base: then it is a whole image). Several profiles hold it: `want` says which one's lower
/// layers it is made over.
pub(crate) fn place(repo: &Repo, layer: &str, want: Option<&str>) -> Result<Option<Place>> {
    let defs = super::load(repo)?;
    let mut found = Vec::new();
    for name in stack::above(&defs, layer) {
        let s = stack::stack(&defs, &name)?;
        let i = s
            .iter()
            .position(|l| l == layer)
            .expect("above says it is there");
        if i > 0 {
            found.push(Place {
                profile: name,
                stack: s,
                index: i,
            });
        }
    }
    if let Some(w) = want {
        return match found.into_iter().find(|p| p.profile == w) {
            Some(p) => Ok(Some(p)),
            None => bail!("{layer:?} is not a layer above the base of profile {w:?}"),
        };
    }
    if found.len() > 1 {
        // The same layers below it in each: any will do.
        let first = &found[0];
        let same = found
            .iter()
            .all(|p| p.stack[..p.index] == first.stack[..first.index]);
        if !same {
            let names: Vec<&str> = found.iter().map(|p| p.profile.as_str()).collect();
            bail!(
                "{layer:?} is a layer of the profiles {} over different layers: pass --profile \
                 to say over which one's it is made",
                names.join(", ")
            );
        }
    }
    Ok(found.into_iter().next())
}

/// What the wizard was asked besides the packages.
pub(crate) struct Flags<'a> {
    pub publish: bool,
    pub work_dir: &'a Path,
    pub json: bool,
    pub server: &'a ServerArgs,
}

/// `image add|remove LAYER PKG...` for a package layer.
pub(crate) fn change(
    repo_path: Option<PathBuf>,
    at: Place,
    packages: &[String],
    remove: bool,
    f: Flags,
) -> Result<ExitCode> {
    let layer = at.stack[at.index].clone();
    for t in ["chroot", "mount"] {
        crate::cli::image::need_tool(t)?;
    }
    let repo = open(repo_path, Access::Write)?;
    let report = Reporter::new(f.json);
    let opts = Options {
        work_dir: f.work_dir,
        report: &report,
        strict: false,
    };
    report.note(&format!(
        "{layer} is a package layer of profile {} over {}",
        at.profile,
        at.stack[..at.index].join(" + ")
    ));
    report.step(&format!("composing the layers below {layer}"));
    let lower = partial(&repo, &at.profile, &at.stack, at.index, &opts)?;
    let head = channel::head(&repo, &layer)?;
    let (prev, start) = match head {
        None => (
            LayerPackages {
                base: lower.commit.tree.to_hex(),
                ..LayerPackages::default()
            },
            lower.id,
        ),
        Some(h) => {
            let hc = repo.objects.get_commit(&h)?;
            let Some(p) = LayerPackages::parse(&hc.message).map_err(anyhow::Error::msg)? else {
                bail!(
                    "{layer:?} is a file layer (it was not made by `image add`): put package \
                     changes in a layer of their own (a new channel in the profile's layers) so \
                     they are installed again over each new base"
                );
            };
            // The layer as it is over what is below it now (replayed when that moved).
            let full = if p.base == lower.commit.tree.to_hex() {
                let c = compose::apply(&repo.objects, &lower.commit, &hc, Mode::Image)?;
                semithin_store::object::Commit {
                    tree: c.tree,
                    root_meta: c.root_meta,
                    hardlinks: c.hardlinks,
                    entries: c.entries,
                    bytes: c.bytes,
                    ..lower.commit.clone()
                }
            } else {
                super::compose::replay(&repo, &lower.commit, &p, &layer, &opts)?
            };
            let (id, _) = repo.objects.put_commit(&full)?;
            repo.objects.flush()?;
            (p, id)
        }
    };
    crate::cli::image::catch_interrupts();
    let dir = BuildDir::new(f.work_dir)?;
    let root = dir.root();
    report.step(&format!("checking out {}", start.short()));
    let bar = Bar::new(true);
    checkout::checkout(
        &repo,
        start,
        &root,
        &CheckoutOptions {
            cache: None,
            fsync: false,
        },
        &bar,
    )
    .with_context(|| format!("checking out {}", start.short()))?;
    let old = build::packages_of(&root)?;
    let words = format!("{layer} over its lower layers");
    crate::cli::image::add_or_remove(&root, packages, remove, &old, &words, &report)?;
    if semithin_image::interrupted() {
        bail!("interrupted: nothing committed, {layer} is as it was");
    }
    build::clean(&root)?;
    let changes = dpkg::diff(&old, &build::packages_of(&root)?);
    if changes.is_empty() {
        report.finish();
        if f.json {
            print_json(&json!({"commit": null, "changes": changes}))?;
        } else {
            outln!("no package changed: no new version of {layer}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !f.json {
        crate::cli::out(format_args!("{}", changes.lines()))?;
    }
    report.step("storing the layer");
    let stats = import::store_detached(&repo, &root, "layer result", &bar)?;
    let full_id: CommitId = stats.commit.parse()?;
    let full = repo.objects.get_commit(&full_id)?;
    let up = compose::upper(&repo.objects, &lower.commit, &full)?;
    let (ins, rem): (&[String], &[String]) = if remove {
        (&[], packages)
    } else {
        (packages, &[])
    };
    let next = LayerPackages {
        base: lower.commit.tree.to_hex(),
        ..prev.then(ins, rem)
    };
    let verb = if remove { "remove" } else { "add" };
    let title = format!("image {verb} {layer}: {}", packages.join(" "));
    let words = format!(
        "the layers of profile {} below it ({})",
        at.profile,
        at.stack[..at.index].join(" + ")
    );
    let msg = format!(
        "{}\n{}",
        dpkg::message(&format!("{title}\nbase: {words}"), &changes),
        next.lines()
    );
    let c = compose::Composed {
        root_meta: lower.commit.root_meta.clone(),
        ..up
    };
    let id = compose::commit(&repo, &layer, &c, &msg)?;
    report.finish();
    let outcomes = super::after_move(&repo, &layer, f.work_dir, f.json);
    let mut published = Vec::new();
    for o in &outcomes {
        if o.published {
            published.push(o.channel.clone());
        } else if f.publish {
            crate::cli::publish::sign(&repo, &o.channel, o.version.parse()?)?;
            published.push(o.channel.clone());
        }
    }
    drop(repo);
    if f.json {
        print_json(&json!({
            "commit": id.to_hex(),
            "channel": layer,
            "profile": at.profile,
            "changes": changes,
            "packages": next,
            "profiles": outcomes,
            "published": published,
        }))?;
    } else {
        outln!("{}", id.to_hex());
        outln!(
            "new version of the package layer {layer}: {}{}",
            changes.summary(),
            if published.is_empty() {
                String::new()
            } else {
                format!("; published {}", published.join(", "))
            }
        );
    }
    if !published.is_empty() {
        crate::cli::publish::tell_server(f.server, f.json)?;
    }
    Ok(ExitCode::SUCCESS)
}
