//! The agent's settings: a TOML file (`--config`, default STATE/agent.toml), overridden by flags.

use std::path::{Path, PathBuf};

use semithin_protocol::selector::Labels;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server's URL, e.g. `http://updates.example:8470`, or several to fail over between
    /// (relays first, then the root): a list, or one string of URLs separated by commas
    /// (`crate::failover`).
    #[serde(deserialize_with = "one_or_list")]
    pub server: Option<String>,
    /// PEM certificates of the CA that signed the server's certificate (for https:// servers
    /// with a certificate of the fleet's own CA); only these are trusted then. Without it, the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// This machine's name (default: the host name).
    pub name: Option<String>,
    /// The enrollment token (needed only until the machine is enrolled).
    pub token: Option<String>,
    /// A file holding the enrollment token, read by `semithin agent` when `token` is unset (so
    /// the secret is in neither the settings nor a command line); it may be deleted once the
    /// machine is enrolled.
    pub token_file: Option<PathBuf>,
    /// Labels the machine asks for at enrollment.
    pub labels: Labels,
    /// The channel this machine follows, whatever the server says: an answer naming another
    /// one is refused and reported (docs/TRUST.md, "Channel assignment"). Without it, the
    /// channel signed for this machine in the trust metadata (`fleet assign`) is followed.
    pub channel: Option<String>,
    /// Only for a repository that does not sign channel assignments yet (made before they
    /// were, and not published since): follow the server when it moves this machine to another
    /// channel, though nothing signed confirms the move. Otherwise the first channel named is
    /// kept.
    pub follow_channel_changes: bool,
    /// Use the relays the server's check-in answers name (`fleet move --relay`) before the
    /// configured servers, which stay the fallback (docs/RELAY.md). Off: only the configured
    /// servers are ever contacted.
    pub follow_placement: bool,
    /// The TUF root the machine trusts at first (a root.json baked into the image).
    pub trusted_root: Option<PathBuf>,
    /// Seconds between check-ins when nothing wakes the agent (a tenth of it is jitter).
    pub interval_secs: u32,
    /// Shell commands run after a switch; all must exit 0 for the release to count as healthy.
    /// They see SEMITHIN_DEPLOYMENT (the deployment's directory) and SEMITHIN_RELEASE.
    pub health_checks: Vec<String>,
    /// Longest a single health check may run.
    pub health_timeout_secs: u64,
    /// A switched release not confirmed healthy within this many seconds (say, the machine
    /// rebooted into it and never came back up) is rolled back.
    pub health_deadline_secs: u64,
    /// Deployments kept besides the current one, for rollback.
    pub keep: usize,
    /// Seconds between verifications of the running deployment, which also runs after every
    /// boot (0: never).
    pub verify_interval_secs: u64,
    /// Longest wait between retries when the server cannot be reached.
    pub max_backoff_secs: u64,
    /// The root file system jobs act on: apt and dpkg run chrooted into it, commands too, and
    /// the inventory is read from it (default: the running system).
    pub sysroot: Option<PathBuf>,
    /// Run free-form commands (`semithin job run`) signed by one of `admin_keys`.
    pub allow_commands: bool,
    /// Public keys (64 hex digits) of the admins whose signed commands this machine runs.
    pub admin_keys: Vec<String>,
    /// Seconds between readings of the package inventory (dpkg, apt); 0: never.
    pub inventory_interval_secs: u64,
    /// What a reboot job runs (not chrooted).
    pub reboot_command: Vec<String>,
    /// Seconds between the progress reports of a running job, which also learn of a cancel.
    pub job_progress_secs: u64,
    /// The upper directory of the `/etc` overlay (docs/BOOT.md); default
    /// STATE/overlay/etc/upper.
    pub etc_upper: Option<PathBuf>,
    /// What verification does with local changes in the `/etc` overlay.
    pub etc_policy: EtcPolicy,
    /// With `etc_policy = "restore"`: the paths in /etc put back to the release's version when
    /// changed locally (globs such as `cron.d/*`, `sudoers`; a pattern that matches a directory
    /// covers everything below it).
    pub etc_restore: Vec<String>,
    /// Where the facts the machine reports are read from (`proc/`, `sys/` below it): `/` on a
    /// machine, the host's view from a container.
    pub facts_root: Option<PathBuf>,
    /// Seconds between readings of the facts.
    pub facts_interval_secs: u64,
    /// What restarts a unit whose rendered configuration changed (the unit's name is added).
    pub restart_command: Vec<String>,
    /// Paths a capture (`semithin agent capture`, the capture job) sends besides the `/etc`
    /// overlay, read below the sysroot (`/var/lib/foo`).
    pub capture_paths: Vec<PathBuf>,
    /// The most bytes of file content a capture may hold.
    pub capture_max_bytes: u64,
    /// A copy of the kept deployments' releases and their signed metadata is kept here, on a
    /// disk of its own: the directory must be the mount point of a file system other than the
    /// state directory's (docs/BOOT.md, "Booting from the backup disk").
    pub backup_dir: Option<PathBuf>,
    /// `systemd-boot`: keep a boot loader entry with its own kernel and initrd for each kept
    /// deployment on the EFI system partition, the default following `current`, a trial booted
    /// once (docs/BOOT.md, "Kernels, initramfs and the boot loader"). `none` (the default):
    /// the base system's boot loader and kernel boot every deployment.
    pub boot_loader: crate::bootloader::Kind,
    /// Where the EFI system partition is mounted.
    pub esp: PathBuf,
    /// The kernel command line of the entries (the root, the console, ...), before
    /// `semithin.deployment=ID`; default: the running kernel's (`/proc/cmdline`) without what
    /// the boot loader and the entry add.
    pub boot_options: Option<String>,
    /// Where efivarfs is mounted.
    pub efivars: PathBuf,
    /// A live (diskless) machine booted by `boot=semithin-live` (docs/BOOT.md, "The agent on a
    /// live machine"): the running release is the one the boot verified (`live_booted`), and an
    /// update is for the next boot: the new release's squashfs is fetched into the live cache
    /// (`live_cache`), verified against its signed target, and named there for the boot script.
    pub live: bool,
    /// The release the live boot verified and mounted.
    pub live_booted: PathBuf,
    /// The live boot's cache directory (`semithin-live/` on the `semithin.cache=` partition,
    /// which the boot leaves mounted under /run). Without it (a cache in a tmpfs), the next
    /// boot fetches the new release itself.
    pub live_cache: PathBuf,
    /// BitTorrent (docs/TORRENT.md): fetch delta packs from the machines of the site first,
    /// through the server's private torrent and tracker, then seed them; HTTP when no peer
    /// sends anything within `torrent_patience_secs`.
    pub torrent: bool,
    /// The TCP port peers reach this machine on while it shares (0: a free one).
    pub torrent_port: u16,
    /// How long a pack is seeded after an update, in seconds.
    pub torrent_seed_secs: u64,
    /// Seeding also stops once this many times the pack was uploaded (0: no ratio).
    pub torrent_seed_ratio: f64,
    /// Seconds without a byte from the swarm before the pack is fetched over HTTP.
    pub torrent_patience_secs: u64,
}

/// What verification does with local changes in the `/etc` overlay (docs/BOOT.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcPolicy {
    /// List every changed path in the report; change nothing.
    #[default]
    Report,
    /// Put back the paths that match `etc_restore` (the machine counts as tampered while they
    /// differ); list the rest.
    Restore,
}

impl std::str::FromStr for EtcPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "report" => Ok(EtcPolicy::Report),
            "restore" => Ok(EtcPolicy::Restore),
            _ => Err(format!(
                "unknown /etc policy {s:?}: it is `report` or `restore`"
            )),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: None,
            ca: None,
            name: None,
            token: None,
            token_file: None,
            labels: Labels::new(),
            channel: None,
            follow_channel_changes: false,
            follow_placement: false,
            trusted_root: None,
            interval_secs: 300,
            health_checks: Vec::new(),
            health_timeout_secs: 120,
            health_deadline_secs: 900,
            keep: 1,
            verify_interval_secs: 24 * 3600,
            max_backoff_secs: 300,
            sysroot: None,
            allow_commands: false,
            admin_keys: Vec::new(),
            inventory_interval_secs: 3600,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            job_progress_secs: 5,
            etc_upper: None,
            etc_policy: EtcPolicy::Report,
            etc_restore: Vec::new(),
            facts_root: None,
            facts_interval_secs: 300,
            restart_command: vec!["systemctl".into(), "try-restart".into()],
            capture_paths: Vec::new(),
            capture_max_bytes: 256 << 20,
            backup_dir: None,
            boot_loader: crate::bootloader::Kind::None,
            esp: PathBuf::from("/boot/efi"),
            boot_options: None,
            efivars: PathBuf::from("/sys/firmware/efi/efivars"),
            live: false,
            live_booted: PathBuf::from("/run/semithin/booted"),
            live_cache: PathBuf::from("/run/semithin/live/cache-disk/semithin-live"),
            torrent: false,
            torrent_port: 0,
            torrent_seed_secs: 3600,
            torrent_seed_ratio: 3.0,
            torrent_patience_secs: 5,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The trusted admin keys, parsed.
    pub fn admin_keys(&self) -> Result<Vec<[u8; 32]>> {
        self.admin_keys
            .iter()
            .map(|k| semithin_protocol::job::parse_public_key(k).map_err(Error::Config))
            .collect()
    }

    /// The `etc_restore` patterns, parsed; a `restore` policy needs at least one.
    pub fn etc_restore(&self) -> Result<Vec<glob::Pattern>> {
        if self.etc_policy == EtcPolicy::Restore && self.etc_restore.is_empty() {
            return Err(Error::Config(
                "etc_policy = \"restore\" needs the paths to restore in etc_restore \
                 (for example [\"cron.d/*\", \"sudoers.d/*\"]; \"**\" for all of /etc)"
                    .into(),
            ));
        }
        self.etc_restore
            .iter()
            .map(|p| {
                let rel = p.trim_start_matches('/');
                let rel = rel.strip_prefix("etc/").unwrap_or(rel);
                glob::Pattern::new(rel)
                    .map_err(|e| Error::Config(format!("etc_restore pattern {p:?}: {e}")))
            })
            .collect()
    }

    /// The boot loader whose entries the agent keeps, when one is configured.
    pub fn loader(&self) -> Result<Option<crate::bootloader::Loader>> {
        if self.boot_loader == crate::bootloader::Kind::None {
            return Ok(None);
        }
        let options = match &self.boot_options {
            Some(o) => o.clone(),
            None => {
                let p = Path::new("/proc/cmdline");
                let c = std::fs::read_to_string(p).map_err(Error::io("reading", p))?;
                crate::bootloader::options_from_cmdline(&c)
            }
        };
        Ok(Some(crate::bootloader::Loader {
            esp: self.esp.clone(),
            efivars: self.efivars.clone(),
            options,
        }))
    }

    pub fn server(&self) -> Result<&str> {
        self.server.as_deref().ok_or_else(|| {
            Error::Config("no server URL: give --server or `server` in the config file".into())
        })
    }
}

/// `server = "URL"` or `server = ["URL", "URL2"]`, held as one comma-separated string.
fn one_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    Ok(match Option::<OneOrList>::deserialize(d)? {
        None => None,
        Some(OneOrList::One(s)) => Some(s),
        Some(OneOrList::List(l)) => Some(l.join(",")),
    })
}
