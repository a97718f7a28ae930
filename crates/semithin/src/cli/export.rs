use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use semithin_store::export::TarOptions;
use semithin_store::{Repo, export, refs};

use super::progress::Bar;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// A pax tar archive with xattrs, hardlinks and device nodes.
    Tar,
    /// A squashfs image (zstd) that the kernel mounts, written by tar2sqfs.
    Squashfs,
}

#[derive(clap::Args)]
pub struct Args {
    /// The version to write: a commit id (or a unique prefix), a channel, each optionally with
    /// ~N.
    reference: String,
    /// `tar` (pax, every xattr and ACL) or `squashfs` (through tar2sqfs).
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write; `-` writes a tar to stdout.
    out: PathBuf,
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let id = refs::resolve(repo, &a.reference)?;
    let bar = Bar::new(a.out.as_os_str() == "-");
    match a.format {
        Format::Tar if a.out.as_os_str() == "-" => {
            let mut out = PipeWatch {
                inner: std::io::stdout().lock(),
                broken: false,
            };
            let written =
                export::write_tar(&repo.objects, id, &mut out, TarOptions::default(), &bar);
            if out.broken {
                // `| head -c`: the reader has what it wanted (main ends quietly).
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
            }
            written?;
        }
        Format::Tar => {
            let tmp = a.out.with_extension("partial");
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let written = export::write_tar(&repo.objects, id, &mut w, TarOptions::default(), &bar)
                .map_err(anyhow::Error::from)
                .and_then(|_| Ok(w.into_inner()?.sync_all()?));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &a.out)
                .with_context(|| format!("writing {}", a.out.display()))?;
        }
        Format::Squashfs => {
            anyhow::ensure!(
                a.out.as_os_str() != "-",
                "a squashfs image needs a file, not stdout"
            );
            let dropped = export::write_squashfs(&repo.objects, id, &a.out, &bar)?;
            if dropped > 0 {
                note!("warning: squashfs cannot hold POSIX ACLs: left out on {dropped} entries");
            }
        }
    }
    bar.finish();
    if a.out.as_os_str() != "-" {
        note!("wrote {}", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A writer that remembers a closed pipe, which the store's error reports only as text.
struct PipeWatch<W> {
    inner: W,
    broken: bool,
}

impl<W: std::io::Write> std::io::Write for PipeWatch<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.broken |= matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe);
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.broken |= matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe);
        r
    }
}
