//! `semithin-initrd`: the part of semithin an initramfs runs, and nothing else, so that what
//! every boot unpacks stays small (docs/BOOT.md, "The binary in the initramfs"): the check of
//! the deployment at boot (`agent --state STATE boot-verify`), the live boot's verified fetch of
//! its squashfs (`live fetch`) and the first boot's growing of the root partition
//! (`grow-partition`). The arguments are those of the same commands of `semithin`, whose code
//! this is (the modules below are `semithin`'s own), so the boot scripts run either binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[macro_use]
mod cli {
    //! Output as `semithin`'s command line has it (`outln!`, `note!`).

    include!("../cli/macros.rs");

    pub(crate) fn out(args: std::fmt::Arguments) -> std::io::Result<()> {
        use std::io::Write;
        std::io::stdout().lock().write_fmt(args)
    }
}

// The modules of `semithin`'s command line that the initramfs needs, as they are.
#[path = "../cli/boot_verify.rs"]
mod boot_verify;
#[path = "../cli/grow.rs"]
mod grow;
#[path = "../cli/live.rs"]
mod live;
// only what `live fetch` and `boot-verify` use of these is called here
#[allow(dead_code)]
#[path = "../cli/safe.rs"]
mod safe;
#[allow(dead_code)]
#[path = "../cli/tuf_client.rs"]
mod tuf_client;

#[derive(Parser)]
#[command(
    name = "semithin-initrd",
    version,
    about = "The part of semithin an initramfs runs: the check of the deployment at boot, a live \
             boot's verified squashfs, growing the root partition (docs/BOOT.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// `agent --state STATE boot-verify`: verify the current deployment against its release and
    /// put it right from the local store, before it is booted.
    Agent {
        /// The agent's state directory, on the mounted root partition.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[command(subcommand)]
        command: AgentCmd,
    },
    /// Live (diskless) boots: the verified squashfs of a channel's release.
    #[command(subcommand)]
    Live(live::LiveCmd),
    /// Grow partition N of DISK to the disk's end (the first boot of a disk made by `image
    /// disk`).
    GrowPartition {
        /// The disk's device (`/dev/vda`).
        disk: PathBuf,
        /// The partition's number (1 for the first).
        number: u32,
        /// The disk's logical sector size in bytes.
        #[arg(long, default_value_t = 512)]
        sector_size: u64,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Verify the deployment `current` points at and put it right (docs/BOOT.md).
    BootVerify {
        /// `semithin.verify=quick`: unchanged since its seal, the deployment is booted without
        /// reading any file; otherwise it is verified in full.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let res = match Cli::parse().command {
        Command::Agent {
            state,
            command: AgentCmd::BootVerify { quick },
        } => Ok(boot_verify::run(&state, quick)),
        Command::Live(c) => live::run(c),
        Command::GrowPartition {
            disk,
            number,
            sector_size,
        } => grow::run(&disk, number, sector_size),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
