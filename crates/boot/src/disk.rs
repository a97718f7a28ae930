//! A raw GPT disk image made without mounting anything (docs/BOOT.md, "A disk for a new
//! machine"): an EFI system partition made with `mkfs.vfat` and filled with mtools, a root
//! partition made with `mkfs.ext4 -d` from a prepared directory, both written into a file
//! partitioned with `sfdisk`. The caller prepares the root tree and the ESP's files; this module
//! sizes, checks and assembles them, in a temporary directory beside the output, which is moved
//! into place only when everything is made.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;
/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of an x86-64 root partition (Discoverable Partitions Specification).
pub const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// The tools a disk is made with, and the package each comes in (Debian's names).
pub const TOOLS: [(&str, &str); 5] = [
    ("sfdisk", "fdisk"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("mkfs.ext4", "e2fsprogs"),
];

/// The ids the partitions and the root file system get: chosen before the root tree is
/// prepared, since its configuration names them.
#[derive(Clone, Debug)]
pub struct Ids {
    pub disk: String,
    pub esp_part: String,
    pub root_part: String,
    /// The ext4 file system's UUID (`root=UUID=...`).
    pub root_fs: String,
    /// The FAT volume id, 8 hex digits.
    pub esp_vol: String,
}

fn uuid() -> Result<String> {
    let p = Path::new("/proc/sys/kernel/random/uuid");
    Ok(std::fs::read_to_string(p)
        .map_err(Error::io("reading", p))?
        .trim()
        .to_owned())
}

impl Ids {
    pub fn new() -> Result<Ids> {
        let vol = uuid()?.replace('-', "");
        Ok(Ids {
            disk: uuid()?,
            esp_part: uuid()?,
            root_part: uuid()?,
            root_fs: uuid()?,
            esp_vol: vol.chars().take(8).collect(),
        })
    }
}

/// What goes onto the ESP: a file's content from a file or as bytes.
pub enum Content {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Everything a disk is made of.
pub struct Spec<'a> {
    /// The disk image to write; must not exist.
    pub out: &'a Path,
    /// The root partition's tree, as it will be (owners, modes, hardlinks, xattrs kept).
    pub root: &'a Path,
    /// The ESP's files by path (`EFI/BOOT/BOOTX64.EFI`, `loader/loader.conf`, ...).
    pub esp: Vec<(String, Content)>,
    /// The whole disk's size; `None`: what the content needs plus room for updates.
    pub size: Option<u64>,
    pub ids: &'a Ids,
    /// Where temporary files go (beside `out`).
    pub work: &'a Path,
}

/// What was made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Made {
    pub size: u64,
    pub esp_size: u64,
    pub root_size: u64,
    /// What the root's content takes, estimated.
    pub root_needed: u64,
}

/// Every tool missing, said with its package; `Ok` when all are there.
pub fn check_tools() -> Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| which(t).is_none())
        .map(|(t, p)| format!("{t} (package {p})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Tool {
            tool: "image disk",
            reason: format!("missing tools: {}; install them", missing.join(", ")),
        })
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run(tool: &'static str, a: &[String]) -> Result<()> {
    let exe = which(tool).ok_or_else(|| Error::Tool {
        tool,
        reason: "not found".into(),
    })?;
    let out = Command::new(exe)
        .args(a)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| Error::Tool {
            tool,
            reason: format!("cannot run it: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool,
            reason: format!(
                "{} ({}): {}{}",
                out.status,
                a.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(())
}

fn s(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn round_mib(n: u64) -> u64 {
    n.div_ceil(MIB) * MIB
}

/// What a tree takes on ext4, estimated: each file in 4 KiB blocks (hardlinks once), an inode
/// and a directory entry for each entry.
pub fn tree_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(Error::io("reading", &d))? {
            let e = e.map_err(Error::io("reading", &d))?;
            let md = std::fs::symlink_metadata(e.path()).map_err(Error::io("reading", e.path()))?;
            total += 512;
            if md.is_dir() {
                total += 4096;
                stack.push(e.path());
            } else if md.is_file() && (md.nlink() == 1 || seen.insert((md.dev(), md.ino()))) {
                total += md.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// The root file system's smallest size for `content` bytes: the content, ext4's own tables
/// (inodes, bitmaps, a 64 MiB journal at most) and its 5% reserved for root.
pub fn root_needed(content: u64) -> u64 {
    let journal = if content < 512 * MIB {
        32 * MIB
    } else {
        64 * MIB
    };
    round_mib(content + content / 8 + journal + 16 * MIB)
}

fn esp_size(files: u64) -> u64 {
    // Room for the kernels and initrds of three deployments (current, previous, one under trial).
    round_mib((files * 3 + 32 * MIB).max(128 * MIB))
}

/// Makes the disk: `spec.out` is written only when everything was made.
pub fn assemble(spec: &Spec, say: &dyn Fn(&str)) -> Result<Made> {
    check_tools()?;
    if spec.out.exists() {
        return Err(Error::OutNotEmpty {
            path: spec.out.to_owned(),
        });
    }
    let mut esp_files = 0u64;
    for (_, c) in &spec.esp {
        esp_files += match c {
            Content::File(p) => std::fs::metadata(p).map_err(Error::io("reading", p))?.len(),
            Content::Bytes(b) => b.len() as u64,
        };
    }
    let esp_size = esp_size(esp_files);
    say("measuring the root partition's content");
    let content = tree_bytes(spec.root)?;
    let needed = root_needed(content);
    let overhead = 2 * MIB + esp_size;
    let size = match spec.size {
        Some(s) => {
            let s = s / MIB * MIB;
            if s < overhead + needed {
                return Err(Error::Tool {
                    tool: "image disk",
                    reason: format!(
                        "--size {} MiB is too small: the disk needs at least {} MiB (the EFI \
                         system partition {} MiB, the root partition {} MiB, 2 MiB of partition \
                         tables)",
                        s / MIB,
                        (overhead + needed) / MIB,
                        esp_size / MIB,
                        needed / MIB
                    ),
                });
            }
            s
        }
        // Room for the first updates; the root partition grows to the disk at the first boot.
        None => overhead + round_mib(needed + (needed / 2).max(256 * MIB)),
    };
    let root_size = size - overhead;

    say(&format!(
        "EFI system partition: {} MiB ({} files)",
        esp_size / MIB,
        spec.esp.len()
    ));
    let esp = spec.work.join("esp.img");
    run(
        "mkfs.vfat",
        &[
            s("-F"),
            s("32"),
            s("-n"),
            s("ESP"),
            s("-i"),
            spec.ids.esp_vol.clone(),
            s("-C"),
            esp.display().to_string(),
            (esp_size / 1024).to_string(),
        ],
    )?;
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in &spec.esp {
        let mut d = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            d = if d.is_empty() {
                (*p).to_owned()
            } else {
                format!("{d}/{p}")
            };
            if !dirs.contains(&d) {
                dirs.push(d.clone());
            }
        }
    }
    for d in &dirs {
        run(
            "mmd",
            &[s("-i"), esp.display().to_string(), format!("::/{d}")],
        )?;
    }
    for (i, (path, c)) in spec.esp.iter().enumerate() {
        let src = match c {
            Content::File(p) => p.clone(),
            Content::Bytes(b) => {
                let p = spec.work.join(format!("esp-file-{i}"));
                std::fs::write(&p, b).map_err(Error::io("writing", &p))?;
                p
            }
        };
        run(
            "mcopy",
            &[
                s("-i"),
                esp.display().to_string(),
                s("-o"),
                src.display().to_string(),
                format!("::/{path}"),
            ],
        )?;
    }

    say(&format!(
        "root partition: {} MiB (its content about {} MiB), mkfs.ext4 -d",
        root_size / MIB,
        content / MIB
    ));
    let root = spec.work.join("root.img");
    run(
        "mkfs.ext4",
        &[
            s("-q"),
            s("-F"),
            s("-L"),
            s("semithin-root"),
            s("-U"),
            spec.ids.root_fs.clone(),
            s("-d"),
            spec.root.display().to_string(),
            root.display().to_string(),
            format!("{}k", root_size / 1024),
        ],
    )
    .map_err(|e| match e {
        Error::Tool { reason, .. } if reason.contains("Could not allocate") || reason.contains("No space") => {
            Error::Tool {
                tool: "image disk",
                reason: format!(
                    "the root partition of {} MiB is too small for its content: give a larger --size ({reason})",
                    root_size / MIB
                ),
            }
        }
        e => e,
    })?;

    say(&format!("partitioning a {} MiB disk (GPT)", size / MIB));
    let disk = spec.work.join("disk.img");
    let f = std::fs::File::create(&disk).map_err(Error::io("creating", &disk))?;
    f.set_len(size).map_err(Error::io("sizing", &disk))?;
    drop(f);
    let table = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start=2048, size={}, type={ESP_TYPE}, uuid={}, name=\"EFI system partition\"\n\
         start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"semithin root\"\n",
        spec.ids.disk,
        esp_size / 512,
        spec.ids.esp_part,
        2048 + esp_size / 512,
        root_size / 512,
        spec.ids.root_part,
    );
    let script = spec.work.join("sfdisk.txt");
    std::fs::write(&script, &table).map_err(Error::io("writing", &script))?;
    let exe = which("sfdisk").expect("checked above");
    let out = Command::new(exe)
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&disk)
        .stdin(std::fs::File::open(&script).map_err(Error::io("reading", &script))?)
        .output()
        .map_err(|e| Error::Tool {
            tool: "sfdisk",
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "sfdisk",
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    say("writing the partitions into the disk");
    copy_into(&esp, &disk, MIB)?;
    copy_into(&root, &disk, MIB + esp_size)?;
    std::fs::rename(&disk, spec.out).map_err(Error::io("moving the disk to", spec.out))?;
    Ok(Made {
        size,
        esp_size,
        root_size,
        root_needed: needed,
    })
}

/// Copies the file `src` into `dst` at `offset`, leaving blocks of zeros as holes.
fn copy_into(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut i = std::fs::File::open(src).map_err(Error::io("reading", src))?;
    let mut o = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(Error::io("opening", dst))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = i.read(&mut buf[n..]).map_err(Error::io("reading", src))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(4096) {
            if block.iter().any(|b| *b != 0) {
                o.seek(SeekFrom::Start(pos))
                    .and_then(|_| o.write_all(block))
                    .map_err(Error::io("writing", dst))?;
            }
            pos += block.len() as u64;
        }
    }
    o.sync_all().map_err(Error::io("syncing", dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_leave_room() {
        assert_eq!(esp_size(0), 128 * MIB);
        assert_eq!(esp_size(100 * MIB), 332 * MIB);
        let n = root_needed(300 * MIB);
        assert!(n > 300 * MIB && n.is_multiple_of(MIB), "{n}");
    }
}
