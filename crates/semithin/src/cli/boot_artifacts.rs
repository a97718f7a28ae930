use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use semithin_boot::{InitrdOptions, InitrdSource};
use semithin_store::{Repo, refs};

use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The version: a commit id (or a unique prefix), a channel, each optionally with ~N.
    reference: String,
    /// A missing or empty directory for vmlinuz, initrd.img, root.squashfs and manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// Make the initrd with `MODULES=list` and these kernel modules (comma-separated) instead
    /// of the image's own initramfs-tools configuration.
    #[arg(long, value_delimiter = ',')]
    initrd_modules: Option<Vec<String>>,
    /// Where the initrd comes from: `auto` takes the image's own `boot/initrd.img-VERSION` when
    /// the image carries semithin's hook (etc/initramfs-tools/hooks/semithin) and no
    /// --initrd-modules are given, else makes one with the image's mkinitramfs; `image` and
    /// `build` insist on one of them.
    #[arg(long, value_enum, default_value_t = InitrdFrom::Auto)]
    initrd: InitrdFrom,
    /// Print the manifest as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// `--initrd`: where the initrd comes from.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InitrdFrom {
    Auto,
    Image,
    Build,
}

impl From<InitrdFrom> for InitrdSource {
    fn from(f: InitrdFrom) -> Self {
        match f {
            InitrdFrom::Auto => InitrdSource::Auto,
            InitrdFrom::Image => InitrdSource::Image,
            InitrdFrom::Build => InitrdSource::Build,
        }
    }
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let id = refs::resolve(repo, &a.reference)?;
    let opts = InitrdOptions {
        binary: std::env::current_exe().context("finding this program's binary for the initrd")?,
        modules: a.initrd_modules,
        source: a.initrd.into(),
    };
    let m = semithin_boot::build(repo, id, &a.out, &opts)
        .with_context(|| format!("boot artifacts of {} into {}", a.reference, a.out.display()))?;
    if let Some(why) = &m.initrd_missing {
        note!("warning: no initrd: {why}");
    }
    if m.squashfs_acls_dropped > 0 {
        note!(
            "warning: squashfs cannot hold POSIX ACLs: left out on {} entries",
            m.squashfs_acls_dropped
        );
    }
    if a.json {
        print_json(&m)?;
    } else {
        outln!(
            "boot artifacts of {} (kernel {}) in {}:",
            semithin_protocol::ids::short_str(&m.commit),
            m.kernel_version,
            a.out.display()
        );
        for (name, f) in &m.files {
            outln!("  {name:<14} {:>10}  blake3 {}", human(f.length), f.blake3);
        }
    }
    Ok(ExitCode::SUCCESS)
}
