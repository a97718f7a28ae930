//! The boot artifacts of a release at `semithin publish` (docs/BOOT.md, "Boot artifacts"): made
//! once per release by crates/boot, kept by content as `REPO/boot/SHA256`, and signed as the TUF
//! targets `boot/RELEASE/NAME` beside the channel's target, with their lengths and hashes.
//!
//! The publisher makes them, not the server: their hashes must be signed with the targets key,
//! which only the publisher holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use semithin_boot::{InitrdOptions, InitrdSource};
use semithin_protocol::boot;
use semithin_protocol::ids::ReleaseId;
use semithin_store::{CommitId, Repo};
use semithin_trust::metadata::TargetFile;
use semithin_trust::repo::TrustRepo;
use serde_json::json;

/// `publish --boot`: when the release's boot artifacts are made and signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BootMode {
    /// When the release has a kernel (boot/vmlinuz-VERSION with its modules).
    Auto,
    /// Always: a release without a kernel is refused.
    Always,
    /// Never.
    Never,
}

/// Where the artifacts are kept.
pub fn dir(repo: &Repo) -> PathBuf {
    repo.path().join(boot::REPO_DIR)
}

/// What [`gc`] removed.
pub struct Removed {
    pub files: u64,
    pub bytes: u64,
}

/// Removes the kept artifacts (`REPO/boot/SHA256`) that no signed `boot/...` target names: the
/// boot targets of releases no channel names any more are dropped at each publish
/// (`prune_boot_targets`), so their files go with the next gc. Temporary files of an
/// interrupted build go too.
pub fn gc(repo: &Repo) -> Result<Removed> {
    let d = dir(repo);
    let mut out = Removed { files: 0, bytes: 0 };
    let Ok(rd) = std::fs::read_dir(&d) else {
        return Ok(out);
    };
    let tdir = super::trust::dir(repo);
    let mut named = std::collections::BTreeSet::new();
    if tdir.exists() {
        let t = TrustRepo::open(&tdir)?;
        for (target, info) in &t.targets().signed.targets {
            if target.starts_with("boot/")
                && let Some(h) = info.hashes.get("sha256")
            {
                named.insert(h.clone());
            }
        }
    }
    for e in rd {
        let e = e.with_context(|| format!("listing {}", d.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if named.contains(&name) {
            continue;
        }
        let meta = e.metadata()?;
        if !meta.is_file() {
            continue;
        }
        std::fs::remove_file(e.path())
            .with_context(|| format!("removing {}", e.path().display()))?;
        out.files += 1;
        out.bytes += meta.len();
    }
    Ok(out)
}

use semithin_trust::digest::sha256_file;

/// The artifacts of `id` signed before, when every one of them is still kept whole (length and
/// SHA-256 checked again): a release is made into artifacts once.
fn signed_before(repo: &Repo, id: CommitId) -> Result<Option<BTreeMap<String, TargetFile>>> {
    let t = TrustRepo::open(&super::trust::dir(repo))?;
    let release = ReleaseId::from(id);
    let mut out = BTreeMap::new();
    for name in boot::NAMES {
        let target = boot::target(&release, name);
        if let Some(info) = t.targets().signed.targets.get(&target) {
            out.insert(target, info.clone());
        }
    }
    if !out.contains_key(&boot::target(&release, boot::KERNEL)) {
        return Ok(None);
    }
    for info in out.values() {
        let Some(sha) = info.hashes.get("sha256") else {
            return Ok(None);
        };
        let path = dir(repo).join(sha);
        match sha256_file(&path) {
            Ok((len, h)) if len == info.length && h == *sha => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Makes (or finds, when made before) the boot artifacts of `id` and returns the targets to sign
/// for them; empty when there are none to make (`--boot never`, or `auto` and no kernel).
pub fn artifacts(
    repo: &Repo,
    id: CommitId,
    mode: BootMode,
    quiet: bool,
) -> Result<BTreeMap<String, TargetFile>> {
    if mode == BootMode::Never {
        return Ok(BTreeMap::new());
    }
    let commit = repo.objects.get_commit(&id)?;
    if let Err(e) = semithin_boot::kernel::find(&repo.objects, commit.tree) {
        match (mode, e) {
            (BootMode::Always, e) => {
                bail!("--boot always: {e}")
            }
            (_, semithin_boot::Error::NoKernel { .. }) => return Ok(BTreeMap::new()),
            (_, e) => return Err(e.into()),
        }
    }
    if let Some(found) = signed_before(repo, id)? {
        if !quiet {
            note!("boot artifacts of {}: made before, kept", id.short());
        }
        return Ok(found);
    }
    let keep = dir(repo);
    std::fs::create_dir_all(&keep).with_context(|| format!("creating {}", keep.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".publish-")
        .tempdir_in(&keep)
        .with_context(|| format!("making a temporary directory in {}", keep.display()))?;
    let out = work.path().join("out");
    let opts = InitrdOptions {
        binary: std::env::current_exe().context("finding this program's binary for the initrd")?,
        modules: None,
        source: InitrdSource::Auto,
    };
    let started = Instant::now();
    let m = semithin_boot::build_with(repo, id, &out, &opts, &mut |s| {
        if !quiet {
            note!(
                "boot artifacts of {}: {} ({:.0} s so far)",
                id.short(),
                s.describe(),
                started.elapsed().as_secs_f64()
            );
        }
    })
    .with_context(|| format!("boot artifacts of {}", id.short()))?;
    if let Some(why) = &m.initrd_missing {
        note!(
            "warning: boot artifacts of {}: no initrd: {why}",
            id.short()
        );
    }
    let release = ReleaseId::from(id);
    let mut targets = BTreeMap::new();
    for (name, f) in &m.files {
        let Ok(name) = boot::check_name(name) else {
            continue;
        };
        let from = out.join(name);
        let to = keep.join(&f.sha256);
        if sha256_file(&to).is_ok_and(|(l, h)| l == f.length && h == f.sha256) {
            // the same bytes are kept already (another release with the same kernel)
        } else {
            std::fs::rename(&from, &to)
                .with_context(|| format!("keeping {} as {}", name, to.display()))?;
        }
        let mut custom = json!({ "blake3": f.blake3 });
        if name == boot::KERNEL {
            custom["kernel_version"] = json!(m.kernel_version);
        }
        if name == boot::INITRD
            && let Some(src) = &m.initrd_source
        {
            custom["initrd_source"] = json!(src);
        }
        targets.insert(
            boot::target(&release, name),
            TargetFile {
                length: f.length,
                hashes: BTreeMap::from([("sha256".to_owned(), f.sha256.clone())]),
                custom: Some(custom),
                extra: Default::default(),
            },
        );
    }
    std::fs::File::open(&keep)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", keep.display()))?;
    if !quiet {
        note!(
            "boot artifacts of {} made in {:.0} s (kernel {}, initrd {})",
            id.short(),
            started.elapsed().as_secs_f64(),
            m.kernel_version,
            m.initrd_source.as_deref().unwrap_or("none")
        );
    }
    Ok(targets)
}
