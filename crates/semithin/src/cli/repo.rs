use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use semithin_store::repo::{Config, Repo};

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create an empty repository at PATH (a new or empty directory).
    Init {
        /// Where the repository is made: a new or empty directory.
        path: PathBuf,
        /// zstd level for stored objects (1-19): higher is smaller and slower to commit.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        compression_level: i32,
    },
}

pub fn run(cmd: RepoCmd) -> Result<ExitCode> {
    match cmd {
        RepoCmd::Init {
            path,
            compression_level,
        } => {
            Repo::init(
                &path,
                Config {
                    compression_level,
                    ..Config::default()
                },
            )?;
            outln!(
                "initialised an empty semithin repository in {}",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
