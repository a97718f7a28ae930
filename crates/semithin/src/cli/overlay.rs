//! `semithin overlay list|show|bake|delete`: machines' captures (`semithin agent capture`, the
//! capture job) as the server keeps them, and baked into layer channels of the repository
//! (docs/IMAGES.md, "Client changes baked into layers").

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_protocol::capture::CaptureInfo;
use semithin_protocol::near;
use semithin_server::bake;
use semithin_store::{Access, Repo, channel};
use serde::Serialize;

use super::admin::{AdminClient, ServerArgs};
use super::fleet::urlencode;
use super::safe::safe;
use super::{human, print_json, time};

#[derive(Subcommand)]
pub enum OverlayCmd {
    /// The captures the server keeps (of one machine, or all), newest first.
    List {
        /// Only this machine's.
        machine: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// What a capture holds (added or changed files, whiteouts, opaque directories, sizes);
    /// with --into, what baking it would change in that layer (nothing is recorded).
    Show {
        /// A capture id (a number), or a machine's name for its newest capture.
        capture: String,
        /// The layer channel to compare with.
        #[arg(long, value_name = "LAYER")]
        into: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Bake a capture into a layer channel: shows what it changes in the layer's head, asks,
    /// then commits the head with the capture laid over it (overlay semantics, whiteouts and
    /// opaque directories kept). A channel without a head takes the capture as it is.
    Bake {
        /// A capture id (a number), or a machine's name for its newest capture.
        capture: String,
        /// The layer channel, e.g. `layers/room-203`.
        #[arg(long, value_name = "LAYER")]
        into: String,
        /// Make the layer channel when it does not exist (without it, a channel with no
        /// version is refused as a probable misspelling).
        #[arg(long)]
        new_channel: bool,
        /// Bake without asking (required when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// Sign the new version as the channel's release too.
        #[arg(long)]
        publish: bool,
        /// The version's message [default: `capture ID of MACHINE`].
        #[arg(long, short)]
        message: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Forget a capture on the server.
    Delete {
        /// The capture id.
        id: u64,
    },
}

/// The capture `arg` names: a number is a capture id, anything else (or a number no capture
/// has) a machine's name, for its newest capture.
fn resolve(c: &AdminClient, arg: &str) -> Result<CaptureInfo> {
    if let Ok(n) = arg.parse::<u64>()
        && let Ok(info) = c.get::<CaptureInfo>(
            "reading the capture",
            &format!("/api/v1/admin/captures/{n}"),
        )
    {
        return Ok(info);
    }
    let list: Vec<CaptureInfo> = c
        .get(
            "listing captures",
            &format!("/api/v1/admin/captures?machine={}", urlencode(arg)),
        )
        .with_context(|| format!("no capture {arg:?}"))?;
    list.into_iter().next().with_context(|| {
        format!(
            "machine {} has no capture: run `semithin agent capture` on it, or `semithin job \
             capture {0}`",
            safe(arg)
        )
    })
}

/// The capture's tar.zst in a temporary file, checked against its hash.
fn download(c: &AdminClient, info: &CaptureInfo) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix("semithin-capture")
        .suffix(".tar.zst")
        .tempfile()?;
    c.download(
        "fetching the capture",
        &format!("/api/v1/admin/captures/{}/archive", info.id),
        f.as_file_mut(),
        info.size,
    )?;
    let got = blake3::Hasher::new()
        .update_reader(std::fs::File::open(f.path())?)?
        .finalize()
        .to_hex();
    if got.as_str() != info.hash {
        bail!(
            "capture {}: what the server sent has BLAKE3 {got}, not {} as recorded",
            info.id,
            info.hash
        );
    }
    Ok(f)
}

fn open_repo(repo: Option<PathBuf>) -> Result<Repo> {
    super::open(repo, Access::Write)
}

/// Refuses a layer channel with no version unless `--new-channel`, naming the channels near it.
fn check_layer(repo: &Repo, layer: &str, new_channel: bool) -> Result<bool> {
    channel::check_name(layer)?;
    let new = channel::head(repo, layer)?.is_none();
    if new && !new_channel {
        let names = channel::list(repo)?;
        let near = near::near(layer, names.iter().map(String::as_str));
        if near.is_empty() {
            bail!(
                "there is no layer channel {layer:?}: pass --new-channel to make it with this \
                 capture"
            );
        }
        bail!(
            "there is no layer channel {layer:?}, but there is {}: did you mean {}? (pass \
             --new-channel to make {layer:?} all the same)",
            near.join(", "),
            near.join(" or ")
        );
    }
    Ok(new)
}

fn print_changes(changes: &[semithin_store::diff::Change]) -> Result<()> {
    for ch in changes {
        let fields = if ch.fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", ch.fields.join(", "))
        };
        outln!(
            "{} {:<8} {}{fields}",
            ch.change.letter(),
            ch.entry_type,
            safe(&ch.path)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Shown<'a> {
    capture: &'a CaptureInfo,
    entries: Vec<bake::Listed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    into: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<semithin_store::diff::Change>>,
}

#[derive(Serialize)]
struct Baked<'a> {
    capture: u64,
    layer: &'a str,
    commit: Option<String>,
    parent: Option<String>,
    changes: Vec<semithin_store::diff::Change>,
    published: bool,
}

pub fn run(repo: Option<PathBuf>, server: &ServerArgs, cmd: OverlayCmd) -> Result<ExitCode> {
    let c = server.client()?;
    match cmd {
        OverlayCmd::List { machine, json } => {
            let path = match &machine {
                Some(m) => format!("/api/v1/admin/captures?machine={}", urlencode(m)),
                None => "/api/v1/admin/captures".into(),
            };
            let list: Vec<CaptureInfo> = c.get("listing captures", &path)?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                outln!("no capture");
            }
            for i in &list {
                outln!(
                    "{:>5}  {:<20} {}  {:>10}  {:>6} entries{}",
                    i.id,
                    safe(&i.machine),
                    time(i.created_at),
                    human(i.size),
                    i.entries,
                    match &i.baked {
                        Some(b) =>
                            format!("  baked into {} at {}", safe(&b.channel), short(&b.commit)),
                        None => String::new(),
                    }
                );
            }
        }
        OverlayCmd::Show {
            capture,
            into,
            json,
        } => {
            let info = resolve(&c, &capture)?;
            let file = download(&c, &info)?;
            let mut entries = bake::list_archive(file.path())
                .map_err(|e| anyhow::anyhow!("capture {}: {e}", info.id))?;
            let running = against_running(&c, repo.clone(), &info, &mut entries);
            let changes = match &into {
                Some(layer) => {
                    let repo = open_repo(repo)?;
                    check_layer(&repo, layer, true)?;
                    let commit = import(&repo, file.path(), &info)?;
                    Some(bake::plan(&repo, layer, commit)?.changes)
                }
                None => None,
            };
            if json {
                print_json(&Shown {
                    capture: &info,
                    entries,
                    into: into.as_deref(),
                    changes,
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "capture {} of {}, {}: {} entries, {} ({} unpacked)",
                info.id,
                safe(&info.machine),
                time(info.created_at),
                info.entries,
                human(info.size),
                human(info.unpacked)
            );
            if let Some(r) = &running {
                outln!("against the release it runs, {}:", short(r));
            }
            for e in &entries {
                let change = e.change.unwrap_or("");
                match e.kind {
                    "file" => outln!(
                        "  {change:<8} {:<8} {} ({})",
                        e.kind,
                        safe(&e.path),
                        human(e.size)
                    ),
                    _ => outln!("  {change:<8} {:<8} {}", e.kind, safe(&e.path)),
                }
            }
            if let (Some(layer), Some(changes)) = (&into, &changes) {
                outln!(
                    "baked into {layer}, it would change {} path(s):",
                    changes.len()
                );
                print_changes(changes)?;
            }
        }
        OverlayCmd::Bake {
            capture,
            into,
            new_channel,
            yes,
            publish,
            message,
            json,
        } => {
            if !yes && !std::io::stdin().is_terminal() {
                bail!("not a terminal: pass --yes to bake without being asked");
            }
            let info = resolve(&c, &capture)?;
            let repo = open_repo(repo)?;
            let new = check_layer(&repo, &into, new_channel)?;
            let file = download(&c, &info)?;
            let commit = import(&repo, file.path(), &info)?;
            let plan = bake::plan(&repo, &into, commit)?;
            if !json {
                outln!(
                    "capture {} of {} into {}{}: {} path(s) change",
                    info.id,
                    safe(&info.machine),
                    into,
                    if new { " (a new layer channel)" } else { "" },
                    plan.changes.len()
                );
                print_changes(&plan.changes)?;
            }
            let mut out = Baked {
                capture: info.id,
                layer: &into,
                commit: None,
                parent: plan.head.map(|h| h.to_hex()),
                changes: plan.changes.clone(),
                published: false,
            };
            if plan.changes.is_empty() && !new {
                if json {
                    print_json(&out)?;
                } else {
                    outln!("nothing to bake: {into} holds this capture already");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !yes && !ask(&format!("bake this into {into}? [y/N] "))? {
                outln!("not baked; {into} is as it was");
                return Ok(ExitCode::SUCCESS);
            }
            let msg = message.unwrap_or_else(|| format!("capture {} of {}", info.id, info.machine));
            let id = bake::bake(&repo, &into, &plan, &msg)?;
            out.commit = Some(id.to_hex());
            // the profiles with this layer in their stack are composed again
            super::profile::after_move(&repo, &into, Path::new("/var/tmp"), json);
            if publish {
                super::publish::sign(&repo, &into, id)?;
                out.published = true;
            }
            drop(repo);
            if json {
                print_json(&out)?;
            } else {
                outln!("baked: {into} is now {}", id.short());
                if publish {
                    outln!("published {into} at {}", id.short());
                }
            }
            if publish {
                super::publish::tell_server(server, json)?;
            }
        }
        OverlayCmd::Delete { id } => {
            let info: CaptureInfo = c.delete(
                "deleting the capture",
                &format!("/api/v1/admin/captures/{id}"),
            )?;
            outln!("capture {} of {} deleted", info.id, safe(&info.machine));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Marks each entry `added` or `changed` against the release the machine runs, when the
/// server names one and the repository (if one is given) holds it; the release, or `None`.
fn against_running(
    c: &AdminClient,
    repo: Option<PathBuf>,
    info: &CaptureInfo,
    entries: &mut [bake::Listed],
) -> Option<String> {
    let path = repo.filter(|p| p.join("config").is_file())?;
    let m: serde_json::Value = c
        .get(
            "reading the machine",
            &format!("/api/v1/admin/machines/{}", urlencode(&info.machine)),
        )
        .ok()?;
    let current = m["report"]["current"].as_str()?.to_owned();
    let id = current.parse().ok()?;
    let repo = Repo::open(&path, Access::Read).ok()?;
    bake::against_release(&repo, id, entries).ok()?;
    Some(current)
}

/// A yes/no question on the terminal.
fn ask(q: &str) -> Result<bool> {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "{q}");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn import(repo: &Repo, file: &Path, info: &CaptureInfo) -> Result<semithin_store::CommitId> {
    bake::import(
        repo,
        file,
        &format!("capture {} of {}", info.id, info.machine),
    )
    .with_context(|| format!("importing capture {}", info.id))
}
