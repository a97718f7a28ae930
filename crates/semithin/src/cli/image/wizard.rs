//! The wizards: `image add|remove|upgrade|shell CHANNEL` check out the channel's published
//! release (or, asked for or when nothing is published, its head), change it in a chroot,
//! show what changed and commit it to the channel with the package changes in the message.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_image::build::{self, BuildDir};
use semithin_image::chroot::Chroot;
use semithin_image::{apt, dpkg, profile};
use semithin_store::checkout::{self, CheckoutOptions};
use semithin_store::{Access, CommitId, Repo, channel};

use super::common::{self, Reporter};
use crate::cli::admin::ServerArgs;
use crate::cli::progress::Bar;
use crate::cli::{open, print_json};

/// Which version of the channel a wizard starts from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// The release machines run (`semithin publish`).
    Published,
    /// The channel's newest version, published or not.
    Head,
}

#[derive(clap::Args)]
pub struct Common {
    /// The channel whose image is changed; the new version is committed to it.
    channel: String,
    /// Start from the channel's published release or its head [default: published when the
    /// channel has a published release, else head].
    #[arg(long, value_enum)]
    from: Option<From>,
    /// Publish the new version as the channel's release.
    #[arg(long)]
    publish: bool,
    /// Where the checkout is made (removed afterwards, also on failure).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct PkgArgs {
    #[command(flatten)]
    common: Common,
    /// The packages (names, optionally NAME=VERSION).
    #[arg(required = true)]
    packages: Vec<String>,
    /// When CHANNEL is a package layer of several profiles over different layers: the profile
    /// over whose lower layers it is made.
    #[arg(long)]
    profile: Option<String>,
}

#[derive(clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    common: Common,
    /// Only the upgrades that come from a security suite (`*-security`).
    #[arg(long)]
    security_only: bool,
}

#[derive(clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    common: Common,
    /// Commit what changed without asking.
    #[arg(long, conflicts_with = "no")]
    yes: bool,
    /// Never commit (look around, try things).
    #[arg(long)]
    no: bool,
}

/// The base a wizard starts from, said in words.
struct Base {
    id: CommitId,
    words: String,
}

/// Picks the base, saying which it is and what it leaves out.
fn base(repo: &Repo, name: &str, from: Option<From>, report: &Reporter) -> Result<Base> {
    channel::check_name(name)?;
    let head = channel::head(repo, name)?.with_context(|| format!("no channel named {name:?}"))?;
    let published = crate::cli::trust::published(repo)?
        .into_iter()
        .find_map(|(c, id)| (c == name).then_some(id));
    let (id, words) = match (from, published) {
        (Some(From::Published), None) => bail!(
            "nothing is published on {name}: pass --from head to start from its head ({})",
            head.short()
        ),
        (Some(From::Published) | None, Some(p)) => {
            if p != head {
                report.note(&format!(
                    "warning: the head of {name} ({}) is not its published release ({}): the \
                     new version starts from the published release and leaves out what the head \
                     has beyond it (--from head starts from the head)",
                    head.short(),
                    p.short()
                ));
            }
            (
                p,
                format!("the published release of {name} ({})", p.short()),
            )
        }
        (Some(From::Head), Some(p)) if p != head => {
            report.note(&format!(
                "note: the head of {name} ({}) differs from its published release ({}); \
                 starting from the head",
                head.short(),
                p.short()
            ));
            (
                head,
                format!("the head of {name} ({}, not published)", head.short()),
            )
        }
        (Some(From::Head), Some(_)) => (
            head,
            format!(
                "the head of {name} ({}, the published release)",
                head.short()
            ),
        ),
        (_, None) => (
            head,
            format!(
                "the head of {name} ({}; nothing is published on the channel)",
                head.short()
            ),
        ),
    };
    report.note(&format!("base: {words}"));
    Ok(Base { id, words })
}

/// A checkout of the base in a build directory, and the base's packages.
fn prepare(
    repo_path: &Option<PathBuf>,
    c: &Common,
    report: &Reporter,
) -> Result<(Base, BuildDir, dpkg::Packages)> {
    for t in ["chroot", "mount"] {
        common::need_tool(t)?;
    }
    let repo = open(repo_path.clone(), Access::Read)?;
    if let Some(at) = crate::cli::profile::layer::place(&repo, &c.channel, None)? {
        bail!(
            "{} is a layer of profile {} (over {}), not a whole image: `image add|remove {0} \
             PKG...` change a package layer; upgrade the base ({}) and the profile is composed \
             again; `image shell` works on whole images such as the profile's channel",
            c.channel,
            at.profile,
            at.stack[..at.index].join(" + "),
            at.stack[0]
        );
    }
    let b = base(&repo, &c.channel, c.from, report)?;
    let old = common::packages_at(&repo, b.id)?;
    common::catch_interrupts();
    let dir = BuildDir::new(&c.work_dir)?;
    report.step(&format!("checking out {}", b.id.short()));
    let bar = Bar::new(true);
    let opts = CheckoutOptions {
        cache: None,
        fsync: false,
    };
    checkout::checkout(&repo, b.id, &dir.root(), &opts, &bar)
        .with_context(|| format!("checking out {}", b.id.short()))?;
    Ok((b, dir, old))
}

/// Shows the changes, commits them with `title` and publishes when asked.
fn finish(
    repo_path: Option<PathBuf>,
    c: &Common,
    b: &Base,
    root: &Path,
    old: &dpkg::Packages,
    title: &str,
    report: &Reporter,
) -> Result<ExitCode> {
    build::clean(root)?;
    let new = build::packages_of(root)?;
    let changes = dpkg::diff(old, &new);
    finish_with(repo_path, c, b, root, &changes, title, report, true)
}

#[allow(clippy::too_many_arguments)]
fn finish_with(
    repo_path: Option<PathBuf>,
    c: &Common,
    b: &Base,
    root: &Path,
    changes: &dpkg::Changes,
    title: &str,
    report: &Reporter,
    need_packages: bool,
) -> Result<ExitCode> {
    if need_packages && changes.is_empty() {
        report.finish();
        if c.json {
            print_json(&serde_json::json!({"commit": null, "changes": changes}))?;
        } else {
            outln!("no package changed: no new version of {}", c.channel);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !c.json {
        crate::cli::out(format_args!("{}", changes.lines()))?;
    }
    if semithin_image::interrupted() {
        bail!("interrupted: nothing committed, {} is as it was", c.channel);
    }
    let msg = dpkg::message(&format!("{title}\nbase: {}", b.words), changes);
    report.step("committing");
    let repo = open(repo_path, Access::Write)?;
    let stats = common::commit(&repo, &c.channel, root, &msg, report)?;
    let id: CommitId = stats.commit.parse()?;
    if c.publish {
        report.step("publishing");
        crate::cli::publish::sign(&repo, &c.channel, id)?;
    }
    let profiles = crate::cli::profile::after_move(&repo, &c.channel, &c.work_dir, c.json);
    drop(repo);
    report.finish();
    if c.json {
        print_json(&serde_json::json!({
            "commit": stats.commit,
            "channel": c.channel,
            "base": b.id.to_hex(),
            "changes": changes,
            "published": c.publish,
            "profiles": profiles,
        }))?;
    } else {
        outln!("{}", stats.commit);
        outln!(
            "new version on {} from {}: {}{}",
            c.channel,
            b.words,
            changes.summary(),
            if c.publish { ", published" } else { "" }
        );
    }
    if c.publish || profiles.iter().any(|o| o.published) {
        crate::cli::publish::tell_server(&c.server, c.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `image add` (or `remove` when `remove`).
pub fn add(repo: Option<PathBuf>, a: PkgArgs, remove: bool) -> Result<ExitCode> {
    for p in &a.packages {
        profile::check_package(p).map_err(anyhow::Error::msg)?;
    }
    let at = {
        let r = open(repo.clone(), Access::Read)?;
        crate::cli::profile::layer::place(&r, &a.common.channel, a.profile.as_deref())?
    };
    if let Some(at) = at {
        let flags = crate::cli::profile::layer::Flags {
            publish: a.common.publish,
            work_dir: &a.common.work_dir,
            json: a.common.json,
            server: &a.common.server,
        };
        return crate::cli::profile::layer::change(repo, at, &a.packages, remove, flags);
    }
    if let Some(p) = &a.profile {
        bail!(
            "--profile {p}: {} is not a layer of a profile (it is a whole image)",
            a.common.channel
        );
    }
    let report = Reporter::new(a.common.json);
    let (b, dir, old) = prepare(&repo, &a.common, &report)?;
    let root = dir.root();
    common::add_or_remove(&root, &a.packages, remove, &old, &b.words, &report)?;
    let verb = if remove { "remove" } else { "add" };
    let title = format!(
        "image {verb} {}: {}",
        a.common.channel,
        a.packages.join(" ")
    );
    finish(repo, &a.common, &b, &root, &old, &title, &report)
}

/// `image upgrade`.
pub fn upgrade(repo: Option<PathBuf>, a: UpgradeArgs) -> Result<ExitCode> {
    let report = Reporter::new(a.common.json);
    let (b, dir, old) = prepare(&repo, &a.common, &report)?;
    let root = dir.root();
    {
        let ch = Chroot::enter(&root)?;
        let ev = |e: semithin_image::Event<'_>| report.event(e);
        report.step("apt-get update");
        ch.run("apt-get update", &["apt-get", "update"], &ev)?;
        let sim = ch.run(
            "apt-get -s upgrade",
            &["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"],
            &ev,
        )?;
        let ups: Vec<_> = apt::parse_simulation(&sim)
            .into_iter()
            .filter(|u| u.security || !a.security_only)
            .collect();
        if ups.is_empty() {
            report.finish();
            outln!(
                "nothing to upgrade{} in {}: no new version of {}",
                if a.security_only {
                    " from security suites"
                } else {
                    ""
                },
                b.words,
                a.common.channel
            );
            return Ok(ExitCode::SUCCESS);
        }
        let names: Vec<String> = ups.iter().map(|u| u.name.clone()).collect();
        report.step(&format!("upgrading {}", names.join(" ")));
        let mut argv = vec![
            "apt-get",
            "install",
            "-y",
            "--only-upgrade",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "--",
        ];
        argv.extend(names.iter().map(String::as_str));
        ch.run("apt-get upgrade", &argv, &ev)?;
    }
    let title = format!(
        "image upgrade {}{}",
        a.common.channel,
        if a.security_only {
            " --security-only"
        } else {
            ""
        }
    );
    finish(repo, &a.common, &b, &root, &old, &title, &report)
}

/// What tells an entry changed: mode (kind included), size, mtime, ctime (s, ns), inode.
type Stamp = (u32, u64, i64, i64, i64, u64);

/// Every entry below `root` by path: (kind and mode, size, mtime, ctime, inode), to tell what
/// a shell changed without another checkout.
fn snapshot(root: &Path) -> Result<BTreeMap<PathBuf, Stamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        let rel = p.strip_prefix(root).unwrap_or(&p).to_owned();
        out.insert(
            rel,
            (
                m.mode(),
                m.size(),
                m.mtime(),
                m.ctime(),
                m.ctime_nsec(),
                m.ino(),
            ),
        );
    }
    Ok(out)
}

/// `image shell`.
pub fn shell(repo: Option<PathBuf>, a: ShellArgs) -> Result<ExitCode> {
    let report = Reporter::new(a.common.json);
    let (b, dir, old) = prepare(&repo, &a.common, &report)?;
    let root = dir.root();
    report.finish();
    let before = snapshot(&root)?;
    {
        let ch = Chroot::enter(&root)?;
        let sh = if root.join("bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        note!(
            "a shell in {} (a checkout; nothing changes on the channel until you commit on exit); \
             `exit` when done",
            b.words
        );
        let st = ch.interactive(&[sh])?;
        if semithin_image::interrupted() {
            bail!(
                "interrupted: nothing committed, {} is as it was",
                a.common.channel
            );
        }
        if !st.success() {
            note!("the shell ended with {st}");
        }
    }
    build::clean(&root)?;
    let after = snapshot(&root)?;
    let mut files = Vec::new();
    for (p, m) in &after {
        match before.get(p) {
            None => files.push(format!("A /{}", p.display())),
            Some(o) if o != m && (m.0 & 0o170000) != 0o040000 => {
                files.push(format!("M /{}", p.display()))
            }
            Some(_) => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        files.push(format!("D /{}", p.display()));
    }
    let changes = dpkg::diff(&old, &build::packages_of(&root)?);
    if files.is_empty() {
        outln!("nothing changed: no new version of {}", a.common.channel);
        return Ok(ExitCode::SUCCESS);
    }
    for f in files.iter().take(200) {
        outln!("{}", crate::cli::safe::safe(f));
    }
    if files.len() > 200 {
        outln!("... and {} more", files.len() - 200);
    }
    outln!(
        "{} path(s) changed; packages: {}",
        files.len(),
        changes.summary()
    );
    let commit = if a.yes {
        true
    } else if a.no {
        false
    } else if std::io::stdin().is_terminal() {
        ask(&format!("commit this to {}? [y/N] ", a.common.channel))?
    } else {
        bail!("not a terminal: pass --yes to commit what changed, or --no");
    };
    if !commit {
        outln!("not committed; {} is as it was", a.common.channel);
        return Ok(ExitCode::SUCCESS);
    }
    let title = format!(
        "image shell {}: {} path(s) changed",
        a.common.channel,
        files.len()
    );
    finish_with(repo, &a.common, &b, &root, &changes, &title, &report, false)
}

/// A yes/no question on the terminal.
pub(crate) fn ask(q: &str) -> Result<bool> {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "{q}");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}
