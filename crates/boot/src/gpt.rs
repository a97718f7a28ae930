//! Growing the last partition of a GPT disk to the end of the disk, for a disk image written to
//! a larger disk (docs/BOOT.md, "A disk for a new machine"): the backup header and entries are
//! moved to the disk's end, the partition's last sector follows, both headers' CRCs are made
//! anew. Run by the initramfs before the root is mounted (`semithin grow-partition`); the file
//! system is grown after it by `resize2fs`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

const SIG: &[u8; 8] = b"EFI PART";

fn bad(reason: impl Into<String>) -> Error {
    Error::Tool {
        tool: "grow-partition",
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}

/// What a grow did: the partition's last sector before and after (the same when it already
/// ended where the disk does).
pub type Grown = (u64, u64);

/// Grows partition `number` (1-based) of the GPT disk `dev` (sector size `sector`) to the end of
/// the disk. Refused when it is not the partition that ends last or the table does not verify.
pub fn grow(dev: &Path, number: u32, sector: u64) -> Result<Grown> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(Error::io("opening", dev))?;
    let size = f.seek(SeekFrom::End(0)).map_err(Error::io("sizing", dev))?;
    let sectors = size / sector;
    let read_at = |f: &mut std::fs::File, off: u64, len: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(Error::io("reading", dev))?;
        Ok(b)
    };
    let mut hdr = read_at(&mut f, sector, sector as usize)?;
    if &hdr[..8] != SIG {
        return Err(bad(format!("{} has no GPT", dev.display())));
    }
    let hsize = u32_at(&hdr, 12) as usize;
    if !(92..=sector as usize).contains(&hsize) {
        return Err(bad(format!("GPT header size {hsize}")));
    }
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc(&h) != u32_at(&hdr, 16) {
        return Err(bad("the GPT header's CRC does not match"));
    }
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80) as usize;
    let esize = u32_at(&hdr, 84) as usize;
    if esize < 128 || count == 0 || count > 1024 || number as usize > count || number == 0 {
        return Err(bad(format!(
            "partition {number} of a table of {count} entries of {esize} bytes"
        )));
    }
    let mut entries = read_at(&mut f, entries_lba * sector, count * esize)?;
    if crc(&entries) != u32_at(&hdr, 88) {
        return Err(bad("the GPT partition entries' CRC does not match"));
    }
    let entry_sectors = ((count * esize) as u64).div_ceil(sector);
    let backup_lba = sectors - 1;
    let backup_entries = backup_lba - entry_sectors;
    let last_usable = backup_entries - 1;
    let i = (number as usize - 1) * esize;
    let last = u64_at(&entries, i + 40);
    if entries[i..i + 16].iter().all(|b| *b == 0) {
        return Err(bad(format!("partition {number} is empty")));
    }
    for j in 0..count {
        let o = j * esize;
        if j != number as usize - 1
            && entries[o..o + 16].iter().any(|b| *b != 0)
            && u64_at(&entries, o + 40) > last
        {
            return Err(bad(format!(
                "partition {} ends after partition {number}: only the last one is grown",
                j + 1
            )));
        }
    }
    let old_backup = u64_at(&hdr, 32);
    if last >= last_usable && old_backup == backup_lba {
        return Ok((last, last));
    }
    if last > last_usable {
        return Err(bad(format!(
            "partition {number} ends at sector {last}, after the disk's last usable sector {last_usable}"
        )));
    }
    entries[i + 40..i + 48].copy_from_slice(&last_usable.to_le_bytes());
    let ecrc = crc(&entries);
    // The primary header.
    hdr[32..40].copy_from_slice(&backup_lba.to_le_bytes());
    hdr[48..56].copy_from_slice(&last_usable.to_le_bytes());
    hdr[88..92].copy_from_slice(&ecrc.to_le_bytes());
    let seal = |hdr: &mut Vec<u8>| {
        hdr[16..20].fill(0);
        let c = crc(&hdr[..hsize]);
        hdr[16..20].copy_from_slice(&c.to_le_bytes());
    };
    let mut backup = hdr.clone();
    seal(&mut hdr);
    // The backup: its own and the other header's places swapped, its entries before it.
    backup[24..32].copy_from_slice(&backup_lba.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    seal(&mut backup);
    let write_at = |f: &mut std::fs::File, off: u64, b: &[u8]| -> Result<()> {
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.write_all(b))
            .map_err(Error::io("writing", dev))
    };
    // The backup first: a cut in between leaves the primary table as it was, still valid.
    write_at(&mut f, backup_entries * sector, &entries)?;
    write_at(&mut f, backup_lba * sector, &backup)?;
    f.sync_all().map_err(Error::io("syncing", dev))?;
    write_at(&mut f, entries_lba * sector, &entries)?;
    write_at(&mut f, sector, &hdr)?;
    f.sync_all().map_err(Error::io("syncing", dev))?;
    Ok((last, last_usable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sfdisk(args: &[&str], disk: &Path, input: Option<&str>) -> String {
        use std::io::Write as _;
        let mut c = Command::new("sfdisk")
            .args(args)
            .arg(disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (package fdisk, installed by tests/test.sh)");
        c.stdin
            .take()
            .unwrap()
            .write_all(input.unwrap_or("").as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sfdisk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_last_partition_grows_to_the_end_of_a_larger_disk() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        sfdisk(
            &["-q", "--no-reread", "--no-tell-kernel"],
            &disk,
            Some(
                "label: gpt\nstart=2048, size=20480, type=uefi\nstart=22528, size=40960, type=linux\n",
            ),
        );
        // Already at its end? No: room is left after it. Grown to the last usable sector.
        let g = grow(&disk, 2, 512).unwrap();
        let last = 64 * 2048 - 34;
        assert_eq!(g, (22528 + 40960 - 1, last));
        assert_eq!(grow(&disk, 2, 512).unwrap(), (last, last));
        // Written to a larger disk: the backup table moves to the new end.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        let g = grow(&disk, 2, 512).unwrap();
        assert_eq!(g, (last, 96 * 2048 - 34));
        sfdisk(&["--verify"], &disk, None);
        let dump = sfdisk(&["-d"], &disk, None);
        assert!(
            dump.contains(&format!(
                "start=       22528, size=      {}",
                96 * 2048 - 34 - 22528 + 1
            )),
            "{dump}"
        );
        // Only the last partition; a disk without GPT is refused.
        let e = grow(&disk, 1, 512).unwrap_err().to_string();
        assert!(e.contains("partition 2 ends after partition 1"), "{e}");
        let plain = d.path().join("plain.img");
        std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
        let e = grow(&plain, 1, 512).unwrap_err().to_string();
        assert!(e.contains("has no GPT"), "{e}");
    }
}
