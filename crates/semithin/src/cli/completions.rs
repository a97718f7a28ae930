//! `semithin completions SHELL` and `semithin manpages DIR`: shell completions and manual pages
//! generated from the command line's own definitions, so they cannot drift from it (the Debian
//! package ships both: packaging/deb/build.sh).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// The directory to write into (made when missing): `semithin.1` and one page per command
    /// and subcommand (`semithin-fleet-list.1`, ...).
    dir: PathBuf,
}

/// Writes the completion script for the shell to stdout.
pub fn completions(a: CompletionArgs) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "semithin", &mut out);
    super::out(format_args!("{}", String::from_utf8_lossy(&out)))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the manual pages into the directory; prints how many.
pub fn manpages(a: ManArgs) -> Result<ExitCode> {
    if a.dir.exists() && !a.dir.is_dir() {
        bail!("{} exists and is not a directory", a.dir.display());
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("making {}", a.dir.display()))?;
    let cmd = super::Cli::command().version(env!("CARGO_PKG_VERSION"));
    clap_mangen::generate_to(cmd, &a.dir)
        .with_context(|| format!("writing manual pages into {}", a.dir.display()))?;
    outln!(
        "{} holds {} manual pages of semithin",
        a.dir.display(),
        pages(&a.dir)?
    );
    Ok(ExitCode::SUCCESS)
}

fn pages(dir: &std::path::Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("semithin") && n.ends_with(".1")
        })
        .count())
}
