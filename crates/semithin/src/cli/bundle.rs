//! `semithin bundle create CHANNEL --for SELECTOR --out DIR`: what machines of an offline or
//! air-gapped site need to reach the channel's published release, on removable media, in the
//! backup disk's layout (docs/OFFLINE.md); `semithin bundle sync DIR`: the machines' signed
//! reports sent to the server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_agent::backup::ResultFile;
use semithin_agent::backup::manifest::{Entry, FORMAT, Manifest, Paths};
use semithin_delta::build::{Effort, build_in};
use semithin_protocol::api::{MachineInfo, OfflineReports, OfflineReportsAnswer};
use semithin_protocol::selector::Selector;
use semithin_store::repo::Config as RepoConfig;
use semithin_store::{Access, CommitId, Repo, channel};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::ServerArgs;
use super::fleet::urlencode;
use super::print_json;
use super::safe::safe;

/// The format of `bundle.json`.
pub const BUNDLE_FORMAT: u32 = 1;

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Write what the selected machines need to reach CHANNEL's published release to DIR
    /// (removable media): the release's objects, the signed metadata it verifies with, every
    /// root, delta packs from the releases the machines run, bundle.json. The machines are
    /// asked of the server (as `fleet list`); the repository is SEMITHIN_REPO (--repo).
    Create {
        /// The channel whose published release the machines go to.
        channel: String,
        /// Which machines (`site=school-12`, a name, `*`); machines on another channel are
        /// skipped and named.
        #[arg(long = "for", value_name = "SELECTOR")]
        selector: String,
        /// The bundle's directory: absent or empty (the mount point of the medium).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the bundle stays importable (`30d`, `72h`): signs a snapshot and timestamp
        /// valid that long for the bundle (the timestamp and snapshot keys must be in
        /// REPO/trust/keys), then at once a timestamp of the usual lifetime for the machines
        /// online. Without it the bundle holds the repository's current timestamp (one day).
        #[arg(long, value_name = "DURATION", value_parser = parse_expires)]
        expires: Option<i64>,
        /// Print bundle.json (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Send the reports machines left in DIR/results/ (`agent import`) to the server: each is
    /// verified with its machine's key and stored as a check-in, or refused with the reason.
    Sync {
        /// The bundle's directory.
        dir: PathBuf,
        /// Print the server's answer as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// `bundle.json`: what the bundle is for (docs/FORMAT.md, "Offline bundles").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BundleInfo {
    pub format: u32,
    pub channel: String,
    pub release: String,
    /// Unix seconds.
    pub made_at: i64,
    /// When its signed timestamp expires (Unix seconds): machines must import it before.
    pub expires: i64,
    pub machines: Vec<BundleMachine>,
    /// Selected machines left out, and why.
    pub skipped: Vec<Skipped>,
    /// The delta packs it holds (`deltas/FROM-TO.pack`).
    pub deltas: Vec<Delta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BundleMachine {
    pub id: String,
    pub name: String,
    /// The release it ran when the bundle was made.
    pub current: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delta {
    pub from: String,
    pub to: String,
    pub bytes: u64,
}

pub fn run(repo: Option<PathBuf>, server: &ServerArgs, cmd: BundleCmd) -> Result<ExitCode> {
    match cmd {
        BundleCmd::Create {
            channel,
            selector,
            out,
            expires,
            json,
        } => create(repo, server, &channel, &selector, &out, expires, json),
        BundleCmd::Sync { dir, json } => sync(server, &dir, json),
    }
}

/// `--expires`: a duration of at least an hour and at most a year.
fn parse_expires(s: &str) -> std::result::Result<i64, String> {
    let secs = semithin_trust::repo::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration: a number and s, m, h or d (`30d`)"))?;
    if !(3600..=366 * 86400).contains(&secs) {
        return Err(format!("{s:?}: a bundle lasts from 1h to 366d"));
    }
    Ok(secs)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn read_json(path: &Path) -> Result<Value> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("{} is not JSON", path.display()))
}

fn create(
    repo: Option<PathBuf>,
    server: &ServerArgs,
    channel: &str,
    selector: &str,
    out: &Path,
    expires: Option<i64>,
    json: bool,
) -> Result<ExitCode> {
    channel::check_name(channel)?;
    Selector::parse(selector)?;
    // What an interrupted run left (`.partial/`) does not count: it is made anew.
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() != ".partial")
    {
        bail!(
            "{} is not empty: a bundle is written to an empty directory (or one not there yet)",
            out.display()
        );
    }
    // signing the bundle's metadata takes the repository's write lock, which the server's
    // renewal then waits for
    let access = if expires.is_some() {
        Access::Write
    } else {
        Access::Read
    };
    let repo = super::open(repo, access)?;
    let release = super::trust::published(&repo)?
        .into_iter()
        .find(|(c, _)| c == channel)
        .map(|(_, id)| id)
        .with_context(|| format!("channel {channel} has no published release"))?;
    let c = server.client()?;
    let ms: Vec<MachineInfo> = c.get(
        "listing machines",
        &format!("/api/v1/admin/machines?selector={}", urlencode(selector)),
    )?;
    let mut machines = Vec::new();
    let mut skipped = Vec::new();
    for m in ms {
        if m.channel.as_deref() == Some(channel) {
            machines.push(BundleMachine {
                id: m.id.to_string(),
                name: m.name,
                current: m.report.current.map(|r| r.to_string()),
            });
        } else {
            let reason = match &m.channel {
                Some(o) => format!("it follows channel {o}, not {channel}"),
                None => "it is assigned no channel".to_owned(),
            };
            note!("bundle: skipping {}: {}", safe(&m.name), safe(&reason));
            skipped.push(Skipped {
                name: m.name,
                reason,
            });
        }
    }
    if machines.is_empty() {
        bail!("no machine selected by {selector:?} follows channel {channel}: nothing to bundle");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tmp = out.join(".partial");
    let offline = match expires {
        Some(secs) => {
            let mut t = semithin_trust::repo::TrustRepo::open(&super::trust::dir(&repo))?;
            let now = now();
            let m = t
                .sign_for_offline(now + secs, now)
                .context("signing the bundle's long-lived metadata")?;
            note!(
                "bundle: signed timestamp version {} valid until {} for the bundle, and a newer one of the usual lifetime for the machines online",
                m.version,
                semithin_trust::clock::format(m.expires)
            );
            Some(m)
        }
        None => None,
    };
    let res = write(&repo, channel, release, &machines, skipped, offline, &tmp);
    let info = match res {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Moved into place, the manifest last: a bundle without one is no bundle.
    for name in [
        "repo",
        "trust",
        "deltas",
        "results",
        "bundle.json",
        "manifest.json",
    ] {
        std::fs::rename(tmp.join(name), out.join(name))
            .with_context(|| format!("moving {name} into {}", out.display()))?;
    }
    std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    semithin_store::fsutil::sync_dir(out)?;
    if json {
        print_json(&info)?;
    } else {
        outln!(
            "bundle of release {} of channel {channel} for {} machine(s) in {}{}",
            release.short(),
            info.machines.len(),
            out.display(),
            if info.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} skipped)", info.skipped.len())
            }
        );
        outln!(
            "its signed metadata expires at {}: import it on every machine before then",
            semithin_trust::clock::format(info.expires)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write(
    repo: &Repo,
    channel: &str,
    release: CommitId,
    machines: &[BundleMachine],
    skipped: Vec<Skipped>,
    offline: Option<semithin_trust::repo::OfflineMeta>,
    tmp: &Path,
) -> Result<BundleInfo> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let paths = Paths::new(tmp);
    for d in [
        paths.tmp(),
        paths.roots(),
        tmp.join("deltas"),
        tmp.join("results"),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let rel = release.to_hex();
    note!("bundle: copying the objects of release {}", release.short());
    Repo::init(&paths.repo(), RepoConfig::default())?;
    let bundle = Repo::open(&paths.repo(), Access::Write)?;
    let n = semithin_agent::backup::copy_objects(&repo.objects, &bundle.objects, &rel)
        .map_err(|e| anyhow::anyhow!(semithin_agent::error::render(&e)))?;
    note!("bundle: {n} object(s) copied, each verified");
    drop(bundle);
    let mut expires = copy_metadata(repo, &paths.trust_of(&rel), &paths.roots())?;
    if let Some(m) = offline {
        // the long-lived timestamp names the snapshot just copied (the repository's newer
        // timestamp names the same one)
        semithin_store::fsutil::write_synced(
            &paths.trust_of(&rel).join("timestamp.json"),
            &m.timestamp,
        )?;
        expires = m.expires;
    }
    let made_at = now();
    if expires <= made_at {
        bail!(
            "the repository's signed timestamp expired at {}: run `semithin trust refresh` (or \
             let the server renew it) first",
            semithin_trust::clock::format(expires)
        );
    }
    let mut deltas = Vec::new();
    let mut froms: Vec<&str> = machines
        .iter()
        .filter_map(|m| m.current.as_deref())
        .filter(|c| *c != rel)
        .collect();
    froms.sort();
    froms.dedup();
    for from in froms {
        let Ok(from_id) = from.parse::<CommitId>() else {
            continue;
        };
        if !repo
            .objects
            .contains(semithin_store::pack::ObjKind::Commit, from_id.as_bytes())
        {
            note!("bundle: release {from} is not in the repository: no delta pack from it");
            continue;
        }
        note!(
            "bundle: making the delta pack {} -> {}",
            from_id.short(),
            release.short()
        );
        let path = tmp.join("deltas").join(format!("{from}-{rel}.pack"));
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let s = build_in(
            &repo.objects,
            from_id,
            release,
            Effort::Full,
            &tmp.join("deltas"),
            &mut f,
        )?;
        f.flush()?;
        f.into_inner()?.sync_all()?;
        deltas.push(Delta {
            from: from.to_owned(),
            to: rel.clone(),
            bytes: s.total_bytes,
        });
    }
    let info = BundleInfo {
        format: BUNDLE_FORMAT,
        channel: channel.to_owned(),
        release: rel.clone(),
        made_at,
        expires,
        machines: machines.to_vec(),
        skipped,
        deltas,
    };
    semithin_store::fsutil::write_synced(
        &tmp.join("bundle.json"),
        &serde_json::to_vec_pretty(&info)?,
    )?;
    let manifest = Manifest {
        format: FORMAT,
        machine: None,
        made_at,
        current: Some(rel.clone()),
        releases: vec![Entry {
            release: rel,
            channel: channel.to_owned(),
            verified_at: made_at,
        }],
    };
    manifest.save(&paths)?;
    std::fs::remove_dir_all(paths.tmp())?;
    Ok(info)
}

/// Copies the repository's current signed metadata into `into` under the names the backup's
/// fetcher serves (the timestamp, and the snapshot, targets and delegated roles at the versions
/// it names, without their version prefix), and every root into `roots`. The timestamp's expiry.
fn copy_metadata(repo: &Repo, into: &Path, roots: &Path) -> Result<i64> {
    let meta = super::trust::dir(repo).join("metadata");
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        let b = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        semithin_store::fsutil::write_synced(to, &b)?;
        Ok(())
    };
    let ts = meta.join("timestamp.json");
    copy(&ts, &into.join("timestamp.json"))?;
    let ts = read_json(&ts)?;
    let expires = ts["signed"]["expires"]
        .as_str()
        .and_then(semithin_trust::clock::parse)
        .context("the signed timestamp has no expiry")?;
    let snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .context("the signed timestamp names no snapshot version")?;
    let snap = meta.join(format!("{snap_v}.snapshot.json"));
    copy(&snap, &into.join("snapshot.json"))?;
    let snap = read_json(&snap)?;
    let listed = snap["signed"]["meta"]
        .as_object()
        .context("the snapshot lists no metadata")?;
    for (name, m) in listed {
        let v = m["version"]
            .as_u64()
            .with_context(|| format!("the snapshot names no version of {name}"))?;
        if name.contains('/') || name.starts_with('.') {
            bail!("the snapshot names {name:?}, which is no file name");
        }
        copy(&meta.join(format!("{v}.{name}")), &into.join(name))?;
    }
    for e in std::fs::read_dir(&meta).with_context(|| format!("listing {}", meta.display()))? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = n.strip_suffix(".root.json")
            && !v.is_empty()
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            copy(&e.path(), &roots.join(&n))?;
        }
    }
    semithin_store::fsutil::sync_dir(into)?;
    semithin_store::fsutil::sync_dir(roots)?;
    Ok(expires)
}

fn sync(server: &ServerArgs, dir: &Path, json: bool) -> Result<ExitCode> {
    let results = dir.join("results");
    let mut reports = Vec::new();
    let mut unreadable = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&results)
        .with_context(|| format!("listing {}", results.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    for p in names {
        let file = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read(&p)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<ResultFile>(&b)?))
        {
            Ok(r) => reports.push(r),
            Err(e) => unreadable.push((file, format!("{e:#}"))),
        }
    }
    if reports.is_empty() && unreadable.is_empty() {
        bail!(
            "{} holds no results: run `semithin agent import` on the machines first",
            results.display()
        );
    }
    let c = server.client()?;
    let reports = reports
        .into_iter()
        .map(|r| semithin_protocol::api::OfflineReport {
            machine: r.machine,
            headers: r.headers,
            body: r.body,
        })
        .collect();
    let answer: OfflineReportsAnswer = c.post(
        "sending the offline reports",
        "/api/v1/admin/offline-reports",
        &OfflineReports { reports },
    )?;
    let refused = answer.refused.len() + unreadable.len();
    if json {
        let mut v = serde_json::to_value(&answer)?;
        for (f, e) in &unreadable {
            v["refused"]
                .as_array_mut()
                .expect("an array")
                .push(serde_json::json!({"machine": f, "reason": e}));
        }
        print_json(&v)?;
    } else {
        for s in &answer.stored {
            outln!("stored: {} ({})", safe(&s.name), safe(&s.machine));
        }
        for r in &answer.refused {
            outln!("refused: {}: {}", safe(&r.machine), safe(&r.reason));
        }
        for (f, e) in &unreadable {
            outln!("refused: {}: {}", safe(f), safe(e));
        }
    }
    Ok(if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
