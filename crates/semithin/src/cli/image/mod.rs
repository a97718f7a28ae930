//! `semithin image`: root filesystems from a package list (the `semithin-image` crate does the
//! building) committed to channels, and wizards that change a channel's packages.
//!
//! `build` here; the wizards (`add`, `remove`, `upgrade`, `shell`) in `wizard.rs`; reading
//! packages out of a stored tree and the shared steps (progress, interrupts, commit, publish)
//! in `common.rs`.

mod common;
mod disk;
mod wizard;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_image::{build, dpkg, profile};
use semithin_store::{Access, channel, refs};
use serde_json::json;

use super::admin::ServerArgs;
use super::{open, print_json};
pub(crate) use common::{Reporter, add_or_remove, catch_interrupts, need_tool};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build a root filesystem from a profile file (mmdebstrap, packages, overlays, scripts)
    /// and commit it to the profile's channel, with the package changes in the message.
    Build(BuildArgs),
    /// Install packages into a channel's published release (or head) and commit the result.
    Add(wizard::PkgArgs),
    /// Remove packages from a channel's published release (or head) and commit the result.
    Remove(wizard::PkgArgs),
    /// apt-get update and upgrade in a channel's published release (or head); commits what
    /// changed.
    Upgrade(wizard::UpgradeArgs),
    /// An interactive shell in a chroot of a channel's published release (or head); on exit
    /// it shows what changed and asks whether to commit it.
    Shell(wizard::ShellArgs),
    /// A raw GPT disk image for a new machine: systemd-boot, the channel's published release as
    /// the base system and as the agent's first deployment, the agent's settings (server,
    /// pre-authorised token, CA). Made without mounting anything (docs/BOOT.md).
    Disk(disk::DiskArgs),
    /// The packages installed in a version (read from its var/lib/dpkg/status; no chroot).
    Packages {
        /// The version: a commit id (or prefix), a channel, CHANNEL~N.
        reference: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// What changed between two versions: with --packages, the packages added, removed and
    /// changed; without, the files (as `semithin diff`).
    Diff {
        /// The older version.
        from: String,
        /// The newer version.
        to: String,
        /// Compare the installed packages.
        #[arg(long)]
        packages: bool,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The profile file (TOML; docs/IMAGES.md).
    profile: PathBuf,
    /// Publish the new version as the channel's release (needs `semithin trust init`).
    #[arg(long)]
    publish: bool,
    /// Where the build directory is made (removed afterwards, also on failure).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Make the profile's channel even though its name is a few letters from an existing one
    /// (without it, such a name is refused as a probable misspelling).
    #[arg(long)]
    new_channel: bool,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(repo: Option<PathBuf>, cmd: ImageCmd) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Build(a) => {
            let r = build_profile(
                repo,
                &a.profile,
                &a.work_dir,
                a.publish,
                a.new_channel,
                a.json,
            )?;
            if a.json {
                print_json(&r)?;
            }
            if a.publish || r.profiles.iter().any(|o| o.published) {
                super::publish::tell_server(&a.server, a.json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Add(a) => wizard::add(repo, a, false),
        ImageCmd::Remove(a) => wizard::add(repo, a, true),
        ImageCmd::Upgrade(a) => wizard::upgrade(repo, a),
        ImageCmd::Shell(a) => wizard::shell(repo, a),
        ImageCmd::Disk(a) => disk::run(repo, a),
        ImageCmd::Packages { reference, json } => {
            let repo = open(repo, Access::Read)?;
            let id = refs::resolve(&repo, &reference)?;
            let p = common::packages_at(&repo, id)?;
            if json {
                let list: Vec<_> = p
                    .iter()
                    .map(|(n, v)| json!({"name": n, "version": v}))
                    .collect();
                print_json(&list)?;
            } else {
                for (n, v) in &p {
                    outln!("{n} {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Diff {
            from,
            to,
            packages,
            json,
        } => {
            let repo = open(repo, Access::Read)?;
            if !packages {
                return super::diff::run(&repo, super::diff::Args::new(from, to, json));
            }
            let a = common::packages_at(&repo, refs::resolve(&repo, &from)?)?;
            let b = common::packages_at(&repo, refs::resolve(&repo, &to)?)?;
            let c = dpkg::diff(&a, &b);
            if json {
                print_json(&c)?;
            } else {
                super::out(format_args!("{}", c.lines()))?;
                outln!("{}", c.summary());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The time of every file of a build: the profile's, else `SOURCE_DATE_EPOCH`, else the
/// mirror's Release date (fetched, which also shows a dead mirror before anything runs).
fn source_date_epoch(p: &profile::Profile) -> Result<(i64, &'static str)> {
    if let Some(t) = p.source_date_epoch {
        return Ok((t, "the profile's source_date_epoch"));
    }
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        let t = v
            .to_str()
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|t| *t >= 0)
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?;
        return Ok((t, "SOURCE_DATE_EPOCH"));
    }
    let text = common::fetch_release(&p.mirror, &p.suite)?;
    let t = build::release_date(&text).with_context(|| {
        format!(
            "the Release file of {} {} has no Date: set source_date_epoch in the profile",
            p.mirror, p.suite
        )
    })?;
    Ok((t, "the Date of the mirror's Release file"))
}

/// What `image build` (and `init`) made.
#[derive(serde::Serialize)]
pub(crate) struct Built {
    pub commit: String,
    pub tree: String,
    pub channel: String,
    pub parent: Option<String>,
    pub source_date_epoch: i64,
    pub packages: usize,
    pub changes: dpkg::Changes,
    pub published: bool,
    /// The profiles with this channel in their stack, composed again.
    pub profiles: Vec<super::profile::Outcome>,
}

/// Builds `file`'s image, commits it to its channel and (with `publish`) publishes it.
pub(crate) fn build_profile(
    repo_path: Option<PathBuf>,
    file: &Path,
    work_dir: &Path,
    publish: bool,
    new_channel: bool,
    json: bool,
) -> Result<Built> {
    let p = profile::load(file)?;
    channel::check_name(&p.channel)
        .with_context(|| format!("profile {}: channel", file.display()))?;
    for t in ["mmdebstrap", "chroot", "mount", "tar"] {
        common::need_tool(t)?;
    }
    // The repository must exist, and the channel be meant, before a minute of building.
    let repo = open(repo_path.clone(), Access::Read)?;
    if !new_channel && channel::head(&repo, &p.channel)?.is_none() {
        let names = channel::list(&repo)?;
        let near = semithin_protocol::near::near(&p.channel, names.iter().map(String::as_str));
        if !near.is_empty() {
            bail!(
                "profile {}: there is no channel {:?}, but there is {}: did you mean {}? (pass \
                 --new-channel to make {1:?} all the same)",
                file.display(),
                p.channel,
                near.join(", "),
                near.join(" or ")
            );
        }
    }
    drop(repo);
    let (sde, why) = source_date_epoch(&p)?;
    common::catch_interrupts();
    let report = Reporter::new(json);
    report.note(&format!(
        "building {} from {} (SOURCE_DATE_EPOCH {sde}, {why})",
        p.channel,
        file.display()
    ));
    let dir = build::BuildDir::new(work_dir)?;
    build::build(&p, sde, &dir, &|e| report.event(e)).with_context(|| {
        format!(
            "building the image of {} (channel {} left as it was)",
            file.display(),
            p.channel
        )
    })?;
    let root = dir.root();
    let installed = build::packages_of(&root)?;
    for want in &p.packages {
        let name = want.split(['=', ':']).next().unwrap_or(want);
        if !installed.contains_key(name) {
            bail!("package {name:?} of the profile is not installed in the built tree");
        }
    }
    if semithin_image::interrupted() {
        bail!("interrupted: channel {} left as it was", p.channel);
    }
    report.step("committing");
    let repo = open(repo_path, Access::Write)?;
    let old = match channel::head(&repo, &p.channel)? {
        Some(h) => common::packages_at(&repo, h)?,
        None => dpkg::Packages::new(),
    };
    let changes = dpkg::diff(&old, &installed);
    let title = format!(
        "image build {} from {} ({} {})",
        p.channel,
        file.file_name().map_or(file, Path::new).display(),
        p.suite,
        p.packages.join(" ")
    );
    let msg = dpkg::message(title.trim_end(), &changes);
    let stats = common::commit(&repo, &p.channel, &root, &msg, &report)?;
    drop(dir);
    let id: semithin_store::CommitId = stats.commit.parse()?;
    let tree = repo.objects.get_commit(&id)?.tree.to_hex();
    if publish {
        report.step("publishing");
        super::publish::sign(&repo, &p.channel, id)?;
    }
    report.finish();
    if !json {
        outln!("{}", stats.commit);
        outln!(
            "{} on {}: tree {}, {} packages ({})",
            if stats.parent.is_some() {
                "new version"
            } else {
                "first version"
            },
            p.channel,
            semithin_protocol::ids::short_str(&tree),
            installed.len(),
            changes.summary()
        );
        if publish {
            outln!("published {} at {}", p.channel, id.short());
        } else {
            outln!(
                "not published: `semithin publish {}` releases it to the machines",
                p.channel
            );
        }
    }
    let profiles = super::profile::after_move(&repo, &p.channel, work_dir, json);
    Ok(Built {
        profiles,
        commit: stats.commit,
        tree,
        channel: p.channel,
        parent: stats.parent,
        source_date_epoch: sde,
        packages: installed.len(),
        changes,
        published: publish,
    })
}
