//! `semithin image disk CHANNEL --out disk.img`: a raw GPT disk for a new machine (docs/BOOT.md,
//! "A disk for a new machine"). The root partition is prepared here: the release checked out as
//! the base system, the agent's state with the release in its store, staged and current, and the
//! agent's settings in the machine's `/etc` layer; `semithin_boot::disk` makes the partitions and
//! the disk without mounting anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_agent::bootloader;
use semithin_agent::state::Layout;
use semithin_boot::disk::{self, Content};
use semithin_store::checkout::{CheckoutOptions, checkout};
use semithin_store::{Access, CommitId, NoProgress, Repo, channel};

use super::super::{open, print_json};

/// Where Debian's systemd-boot-efi package puts the boot loader.
const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The agent's state directory in the images semithin makes.
const STATE: &str = "var/lib/semithin";

#[derive(clap::Args)]
pub struct DiskArgs {
    /// The channel whose published release the disk boots.
    channel: String,
    /// The disk image to write (a new file): `dd` it onto a disk or a USB stick.
    #[arg(long)]
    out: PathBuf,
    /// The disk's size (`4G`, `2048M`, bytes) [default: what the release needs plus room for
    /// updates; the root partition grows to the disk it is written to at the first boot].
    #[arg(long, value_parser = size)]
    size: Option<u64>,
    /// The server the machine enrolls with.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// A pre-authorised enrollment token (`semithin fleet token create --preauthorized`).
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// The CA that signed the server's certificate (PEM), for an https server of the fleet's
    /// own CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// More kernel parameters for the machine (`console=ttyS0`), after `root=UUID=... ro`.
    #[arg(long, default_value = "")]
    kernel_options: String,
    /// Print what was made as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// `4G`, `512M`, `100K` or bytes.
fn size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: a size is a number with K, M, G or T")),
            };
            (t.strip_suffix(c).unwrap_or(t), m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a size (4G, 2048M, bytes)"))
}

fn say(json: bool) -> impl Fn(&str) {
    move |s: &str| {
        if !json {
            note!("{s}");
        }
    }
}

pub fn run(repo: Option<PathBuf>, a: DiskArgs) -> Result<ExitCode> {
    let repo = open(repo, Access::Read)?;
    channel::check_name(&a.channel)?;
    let id = crate::cli::trust::published(&repo)?
        .into_iter()
        .find_map(|(c, id)| (c == a.channel).then_some(id))
        .with_context(|| {
            format!(
                "nothing is published on {}: a new machine boots the channel's published \
                 release (`semithin publish {}`)",
                a.channel, a.channel
            )
        })?;
    if a.out.exists() {
        bail!(
            "{} exists: the disk is written to a new file",
            a.out.display()
        );
    }
    disk::check_tools()?;
    let store = &repo.objects;
    let tree = store.get_commit(&id)?.tree;
    let files = semithin_boot::kernel::boot_files(store, tree)
        .with_context(|| format!("release {} cannot boot from a disk", id.short()))?;
    let ca = match &a.ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading --ca {}", p.display()))?),
        None => None,
    };
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".semithin-disk-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a temporary directory in {}", parent.display()))?;
    let say = say(a.json);
    let ids = disk::Ids::new()?;
    let root = work.path().join("root");

    say(&format!(
        "checking out release {} as the base system",
        id.short()
    ));
    let opts = CheckoutOptions {
        cache: None,
        fsync: false,
    };
    checkout(&repo, id, &root, &opts, &NoProgress)
        .with_context(|| format!("checking out {}", id.short()))?;
    let boot_efi = root.join("boot/efi");
    if !boot_efi.is_dir() {
        note!(
            "warning: the release has no /boot/efi directory: the agent's `esp` cannot be \
             mounted there in its deployments (add the directory to the image)"
        );
    }
    let loader = match std::fs::read(root.join(SYSTEMD_BOOT)) {
        Ok(b) => b,
        Err(_) => std::fs::read(Path::new("/").join(SYSTEMD_BOOT)).with_context(|| {
            format!(
                "systemd-boot is neither in the release nor on this machine (/{SYSTEMD_BOOT}): \
                 install Debian's systemd-boot-efi package"
            )
        })?,
    };

    say("the agent's store: copying the release");
    let state = root.join(STATE);
    let layout = Layout::new(&state);
    std::fs::create_dir_all(layout.deployments())?;
    let rp = layout.repo();
    Repo::init(&rp, semithin_store::repo::Config::default())?;
    let agent_repo = Repo::open(&rp, Access::Write)?;
    copy_release(&repo, &agent_repo, id, work.path())?;
    say("staging the deployment");
    let hex = id.to_hex();
    semithin_agent::deploy::stage(&agent_repo, &layout, &hex)?;
    semithin_agent::deploy::point_current(&layout, Some(&hex))?;
    drop(agent_repo);
    // The deployment in the agent's history, so it is kept for rollback after the first update.
    let st = semithin_agent::state::State {
        history: vec![hex.clone()],
        ..Default::default()
    };
    st.save(&layout.state())?;

    let options = format!("root=UUID={} ro {}", ids.root_fs, a.kernel_options)
        .trim()
        .to_owned();
    // The machine's settings: in its /etc layer (kept across releases) and in the base system.
    let upper = state.join("overlay/etc/upper");
    for etc in [upper.clone(), root.join("etc")] {
        settings(&root, &etc, &repo, &a, ca.as_deref(), &options, &ids)?;
    }

    let kernel = work.path().join("vmlinuz");
    let initrd = work.path().join("initrd.img");
    for (p, c) in [(&kernel, &files.kernel.content), (&initrd, &files.initrd)] {
        let mut f = std::fs::File::create(p)?;
        semithin_boot::kernel::write_content(store, c, &mut f)?;
    }
    // The first boot grows the root partition to the disk it was written to.
    let entry = bootloader::entry_text(
        &hex,
        &files.kernel.version,
        &format!("{options} semithin.grow"),
    );
    let base = format!(
        "# The base system of the root partition, without semithin (docs/BOOT.md)\n\
         title base system (semithin=off)\nlinux /base/vmlinuz\ninitrd /base/initrd.img\n\
         options {options} semithin=off\n"
    );
    let conf = format!(
        "default {}\ntimeout 0\neditor no\n",
        bootloader::entry_id(&hex)
    );
    let esp = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_owned(), Content::Bytes(loader)),
        ("loader/loader.conf".to_owned(), Content::Bytes(conf.into())),
        (
            format!("loader/entries/{}", bootloader::entry_id(&hex)),
            Content::Bytes(entry.into()),
        ),
        (
            "loader/entries/base.conf".to_owned(),
            Content::Bytes(base.into()),
        ),
        (
            format!("semithin/{hex}/vmlinuz"),
            Content::File(kernel.clone()),
        ),
        (
            format!("semithin/{hex}/initrd.img"),
            Content::File(initrd.clone()),
        ),
        ("base/vmlinuz".to_owned(), Content::File(kernel)),
        ("base/initrd.img".to_owned(), Content::File(initrd)),
    ];
    let made = disk::assemble(
        &disk::Spec {
            out: &a.out,
            root: &root,
            esp,
            size: a.size,
            ids: &ids,
            work: work.path(),
        },
        &say,
    )?;
    if a.json {
        print_json(&serde_json::json!({
            "release": hex,
            "kernel_version": files.kernel.version,
            "disk": made,
            "root_uuid": ids.root_fs,
            "esp_partuuid": ids.esp_part,
        }))?;
    } else {
        outln!(
            "{}: {} MiB, release {} with kernel {} (EFI system partition {} MiB, root {} MiB)",
            a.out.display(),
            made.size >> 20,
            id.short(),
            files.kernel.version,
            made.esp_size >> 20,
            made.root_size >> 20
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies the objects of `id` from `from` into `to`, in rounds (a tree's entries are known once
/// it is there), through a file in `work`.
fn copy_release(from: &Repo, to: &Repo, id: CommitId, work: &Path) -> Result<()> {
    use semithin_store::transfer;
    let stream = work.join("objects.stream");
    loop {
        let wanted = transfer::missing(&to.objects, id)?;
        if wanted.is_empty() {
            return Ok(());
        }
        let f = std::fs::File::create(&stream)?;
        transfer::send(&from.objects, &wanted, std::io::BufWriter::new(f))?;
        let expected = wanted.iter().copied().collect();
        let f = std::fs::File::open(&stream)?;
        transfer::receive(&to.objects, &expected, std::io::BufReader::new(f))?;
    }
}

/// Writes the agent's settings under `etc` (`semithin/agent.toml`, the trusted root, the CA)
/// and a mount unit for the ESP: the release's own agent.toml with the server, token, CA and
/// boot loader set.
fn settings(
    root: &Path,
    etc: &Path,
    repo: &Repo,
    a: &DiskArgs,
    ca: Option<&[u8]>,
    options: &str,
    ids: &disk::Ids,
) -> Result<()> {
    let dir = etc.join("semithin");
    std::fs::create_dir_all(&dir)?;
    let shipped = root.join("etc/semithin/agent.toml");
    let mut t: toml::Table = match std::fs::read_to_string(&shipped) {
        Ok(s) => s.parse().with_context(|| {
            format!(
                "the release's /etc/semithin/agent.toml: {}",
                shipped.display()
            )
        })?,
        Err(_) => toml::Table::new(),
    };
    let set = |t: &mut toml::Table, k: &str, v: &str| {
        t.insert(k.into(), toml::Value::String(v.into()));
    };
    if let (Some(s), Some(tok)) = (&a.server, &a.token) {
        set(&mut t, "server", s);
        set(&mut t, "token", tok);
    }
    if let Some(c) = ca {
        std::fs::write(dir.join("ca.pem"), c)?;
        set(&mut t, "ca", "/etc/semithin/ca.pem");
    }
    let r = repo.path().join("trust/metadata/1.root.json");
    std::fs::copy(&r, dir.join("root.json"))
        .with_context(|| format!("copying the trusted root {}", r.display()))?;
    if !t.contains_key("trusted_root") {
        set(&mut t, "trusted_root", "/etc/semithin/root.json");
    }
    set(&mut t, "boot_loader", "systemd-boot");
    set(&mut t, "esp", "/boot/efi");
    set(&mut t, "boot_options", options);
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "# Written by `semithin image disk`: the release's settings with this machine's\n{}",
            toml::to_string(&t)?
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    // The ESP mounted at /boot/efi by systemd, without changing the release's fstab.
    let units = etc.join("systemd/system");
    std::fs::create_dir_all(units.join("local-fs.target.wants"))?;
    std::fs::write(
        units.join("boot-efi.mount"),
        format!(
            "# Written by `semithin image disk`: the EFI system partition, where the agent keeps\n\
             # the boot loader entries of its deployments.\n[Unit]\nDescription=EFI system partition\n\n\
             [Mount]\nWhat=PARTUUID={}\nWhere=/boot/efi\nType=vfat\nOptions=umask=0077,nofail\n",
            ids.esp_part
        ),
    )?;
    let link = units.join("local-fs.target.wants/boot-efi.mount");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("../boot-efi.mount", &link)?;
    Ok(())
}
