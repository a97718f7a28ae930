//! `grow-partition`: the first boot of a disk made by `image disk` grows its root partition to
//! the end of the disk (docs/BOOT.md, "Growing to the disk"). Shared by `semithin` and
//! `semithin-initrd`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(disk: &Path, number: u32, sector_size: u64) -> Result<ExitCode> {
    let (from, to) = semithin_boot::gpt::grow(disk, number, sector_size)
        .with_context(|| format!("growing partition {number} of {}", disk.display()))?;
    if from == to {
        outln!(
            "partition {number} of {} already ends at the disk's end, sector {to}",
            disk.display()
        );
    } else {
        outln!(
            "partition {number} of {} grown: its last sector was {from}, now {to}",
            disk.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
