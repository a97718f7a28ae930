//! Boot artifacts of a release (docs/BOOT.md, "Boot artifacts"): the kernel found in its tree,
//! an initrd made by the image's own initramfs-tools with semithin's boot script, and a squashfs
//! of the whole release, each with its length, BLAKE3 and SHA-256 in a manifest.
//!
//! The pure parts (choosing the kernel, the manifest) are apart from the I/O (reading the store,
//! the chroot, tar2sqfs).

pub mod disk;
pub mod error;
pub mod gpt;
pub mod initrd;
pub mod kernel;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use semithin_store::{CommitId, NoProgress, Repo};

pub use error::{Error, Result};
pub use initrd::{InitrdOptions, InitrdSource};

/// The names of the artifacts in an output directory (and on the server).
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const SQUASHFS: &str = "root.squashfs";
pub const MANIFEST: &str = "manifest.json";
/// Every artifact name, in the order they are listed.
pub const NAMES: [&str; 3] = [KERNEL, INITRD, SQUASHFS];

/// One artifact: what a machine checks before it uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub length: u64,
    /// Lower-case hex.
    pub blake3: String,
    /// Lower-case hex.
    pub sha256: String,
}

/// What `manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The release the artifacts were made from.
    pub commit: String,
    /// The kernel's release (`uname -r`).
    pub kernel_version: String,
    /// Where the kernel is in the release's tree.
    pub kernel_path: String,
    /// By name ([`NAMES`]); `initrd.img` is missing when [`Manifest::initrd_missing`] says why.
    pub files: BTreeMap<String, FileInfo>,
    /// Why there is no initrd (the image has no initramfs-tools or no busybox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_missing: Option<String>,
    /// Entries whose POSIX ACLs the squashfs could not hold.
    pub squashfs_acls_dropped: u64,
    /// Where the initrd came from: `mkinitramfs` (made in a checkout of the release) or
    /// `image` (the image's own `boot/initrd.img-VERSION`, which carries semithin's hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_source: Option<String>,
}

/// A long step of [`build_with`], told before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Kernel,
    Squashfs,
    /// Making the initrd with the image's `mkinitramfs`.
    Mkinitramfs,
    /// Copying the image's own initrd.
    ImageInitrd,
    Hashing,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Kernel => "writing the kernel",
            Step::Squashfs => "making the squashfs (tar2sqfs)",
            Step::Mkinitramfs => "making the initrd (the image's mkinitramfs in a chroot)",
            Step::ImageInitrd => "copying the image's own initrd",
            Step::Hashing => "hashing the artifacts",
        }
    }
}

/// The length and hashes of the file at `path`.
pub fn hash_file(path: &Path) -> Result<FileInfo> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let mut b3 = blake3::Hasher::new();
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        sha.update(&buf[..n]);
        length += n as u64;
    }
    Ok(FileInfo {
        length,
        blake3: b3.finalize().to_hex().to_string(),
        sha256: hex::encode(sha.finalize()),
    })
}

/// Checks `out` before any work: a missing or empty directory.
fn check_out(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => {
            let mut rd = std::fs::read_dir(out).map_err(Error::io("reading", out))?;
            if rd.next().is_some() {
                return Err(Error::OutNotEmpty {
                    path: out.to_owned(),
                });
            }
            Ok(())
        }
        Ok(_) => Err(Error::OutNotEmpty {
            path: out.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("reading", out)(e)),
    }
}

/// Builds the boot artifacts of `commit` into the directory `out` (missing or empty): `vmlinuz`,
/// `initrd.img` (unless the image cannot make one: [`Manifest::initrd_missing`]),
/// `root.squashfs` and `manifest.json`. The work (a checkout of the release for the chroot) is
/// done in a temporary directory beside `out`; `out` is only made once everything is built, so a
/// failure leaves nothing behind.
pub fn build(repo: &Repo, commit: CommitId, out: &Path, opts: &InitrdOptions) -> Result<Manifest> {
    build_with(repo, commit, out, opts, &mut |_| {})
}

/// [`build`], telling `step` before each long step.
pub fn build_with(
    repo: &Repo,
    commit: CommitId,
    out: &Path,
    opts: &InitrdOptions,
    step: &mut dyn FnMut(Step),
) -> Result<Manifest> {
    check_out(out)?;
    if let Some(m) = &opts.modules {
        m.iter().try_for_each(|m| initrd::check_module(m))?;
    }
    let store = &repo.objects;
    let c = store.get_commit(&commit)?;
    let kernel = kernel::find(store, c.tree)?;
    // The image's own initrd, when it is to be used.
    let own = match opts.source {
        InitrdSource::Build => None,
        InitrdSource::Auto if opts.modules.is_some() => None,
        InitrdSource::Auto => initrd::image_initrd(store, c.tree, &kernel.version)?.ok(),
        InitrdSource::Image => Some(
            initrd::image_initrd(store, c.tree, &kernel.version)?
                .map_err(|reason| Error::ImageInitrd { reason })?,
        ),
    };
    let initrd_missing = match own {
        Some(_) => None,
        None => initrd::missing(store, c.tree)?,
    };
    if initrd_missing.is_none() && own.is_none() {
        // Before the long work: a missing binary is a mistake of the caller.
        std::fs::metadata(&opts.binary).map_err(|source| Error::Binary {
            path: opts.binary.clone(),
            source,
        })?;
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".semithin-boot-")
        .tempdir_in(&parent)
        .map_err(Error::io("making a temporary directory in", &parent))?;
    let art = work.path().join("out");
    std::fs::create_dir(&art).map_err(Error::io("creating", &art))?;

    step(Step::Kernel);
    let kpath = art.join(KERNEL);
    let mut f = std::fs::File::create(&kpath).map_err(Error::io("creating", &kpath))?;
    kernel::write_content(store, &kernel.content, &mut f)?;
    f.sync_all().map_err(Error::io("syncing", &kpath))?;

    step(Step::Squashfs);
    let squashfs = art.join(SQUASHFS);
    let acls_dropped =
        semithin_store::export::write_squashfs(store, commit, &squashfs, &NoProgress)?;

    let mut initrd_source = None;
    if let Some(content) = &own {
        step(Step::ImageInitrd);
        let p = art.join(INITRD);
        let mut f = std::fs::File::create(&p).map_err(Error::io("creating", &p))?;
        kernel::write_content(store, content, &mut f)?;
        f.sync_all().map_err(Error::io("syncing", &p))?;
        initrd_source = Some("image".to_owned());
    } else if initrd_missing.is_none() {
        step(Step::Mkinitramfs);
        initrd_source = Some("mkinitramfs".to_owned());
        initrd::build(
            repo,
            commit,
            &kernel.version,
            c.time.max(0),
            &work.path().join("initrd"),
            &art.join(INITRD),
            opts,
        )?;
    }

    step(Step::Hashing);
    let mut files = BTreeMap::new();
    for name in NAMES {
        let p = art.join(name);
        if p.exists() {
            files.insert(name.to_owned(), hash_file(&p)?);
        }
    }
    let manifest = Manifest {
        commit: commit.to_hex(),
        kernel_version: kernel.version,
        kernel_path: kernel.path,
        files,
        initrd_missing,
        squashfs_acls_dropped: acls_dropped,
        initrd_source,
    };
    let mpath = art.join(MANIFEST);
    let mut text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    text.push(b'\n');
    let mut f = std::fs::File::create(&mpath).map_err(Error::io("creating", &mpath))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(Error::io("writing", &mpath))?;

    // `out` is missing or empty (checked above): the finished directory takes its place.
    if out.exists() {
        std::fs::remove_dir(out).map_err(Error::io("replacing", out))?;
    }
    std::fs::rename(&art, out).map_err(Error::io("moving the artifacts to", out))?;
    Ok(manifest)
}
