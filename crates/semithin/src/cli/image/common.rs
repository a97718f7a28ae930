//! What the image commands share: progress, interrupts, packages of a stored tree, the mirror's
//! Release file, committing.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use semithin_image::build;
use semithin_image::chroot::Chroot;
use semithin_image::{Event, dpkg};
use semithin_store::import::{self, CommitOptions, CommitStats};
use semithin_store::object::EntryKind;
use semithin_store::{CommitId, Repo, walk};

use crate::cli::progress::Bar;

/// Progress of the long steps: each step on its own line (stderr), and on a terminal a spinner
/// with the last line of the program running.
pub(crate) struct Reporter {
    quiet: bool,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Reporter {
    pub(crate) fn new(quiet: bool) -> Self {
        let spinner = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let s = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            s.set_style(
                ProgressStyle::with_template("  {spinner} {elapsed:>4} {wide_msg}")
                    .expect("valid template"),
            );
            s.enable_steady_tick(std::time::Duration::from_millis(200));
            s
        });
        Self {
            quiet,
            spinner: Mutex::new(spinner),
        }
    }

    pub(crate) fn event(&self, e: Event) {
        match e {
            Event::Step(s) => self.step(s),
            Event::Line(l) => {
                if let Some(s) = self.spinner.lock().expect("lock").as_ref() {
                    s.set_message(crate::cli::safe::safe(l).to_string());
                }
            }
        }
    }

    /// A new step, said on its own line.
    pub(crate) fn step(&self, s: &str) {
        self.note(&format!("==> {s}"));
        if let Some(sp) = self.spinner.lock().expect("lock").as_ref() {
            sp.reset_elapsed();
            sp.set_message("");
        }
    }

    pub(crate) fn note(&self, s: &str) {
        if self.quiet {
            return;
        }
        match self.spinner.lock().expect("lock").as_ref() {
            Some(sp) => sp.suspend(|| note!("{s}")),
            None => note!("{s}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(s) = self.spinner.lock().expect("lock").take() {
            s.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// From now on ctrl-c (and SIGTERM) no longer ends this process at once: the program running
/// in the chroot gets it and fails, and the build directory and the mounts are cleaned up on
/// the way out (`semithin_image::interrupted` says why it failed).
pub(crate) fn catch_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = tx.send(());
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let int = signal(SignalKind::interrupt());
                let term = signal(SignalKind::terminate());
                let _ = tx.send(());
                let (Ok(mut int), Ok(mut term)) = (int, term) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    semithin_image::set_interrupted();
                    note!("semithin: interrupted; cleaning up (unmounting, removing the build directory)");
                }
            });
        });
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    });
}

/// The packages installed in a stored version, from its var/lib/dpkg/status.
pub(crate) fn packages_at(repo: &Repo, id: CommitId) -> Result<dpkg::Packages> {
    let c = repo.objects.get_commit(&id)?;
    let Some(e) = walk::lookup(&repo.objects, c.tree, dpkg::STATUS.as_bytes())? else {
        bail!(
            "version {} has no {}: not a Debian root filesystem (or dpkg's database was removed)",
            id.short(),
            dpkg::STATUS
        );
    };
    let EntryKind::File(f) = &e.kind else {
        bail!("{} in version {} is not a file", dpkg::STATUS, id.short());
    };
    let mut bytes = Vec::with_capacity(usize::try_from(f.size).unwrap_or(0));
    for ch in &f.chunks {
        bytes.extend_from_slice(&repo.objects.get_chunk(&ch.id)?);
    }
    Ok(dpkg::parse_status(&String::from_utf8_lossy(&bytes)))
}

/// The mirror's InRelease (else Release) file for `suite`; an error naming the mirror when it
/// cannot be had.
pub(crate) fn fetch_release(mirror: &str, suite: &str) -> Result<String> {
    let base = mirror.trim_end_matches('/');
    if let Some(path) = base.strip_prefix("file:") {
        let dir = Path::new(path).join("dists").join(suite);
        for f in ["InRelease", "Release"] {
            if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
                return Ok(t);
            }
        }
        bail!(
            "the mirror {mirror} has no suite {suite}: no {}/InRelease",
            dir.display()
        );
    }
    let client = semithin_agent::http::client_builder(None)?
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut last = String::new();
    for f in ["InRelease", "Release"] {
        let url = format!("{base}/dists/{suite}/{f}");
        match client.get(&url).send() {
            Ok(r) if r.status().is_success() => {
                return r.text().with_context(|| format!("reading {url}"));
            }
            Ok(r) => last = format!("{url} answered {}", r.status()),
            Err(e) => {
                let why = semithin_agent::neterr::explain(&url, &e)
                    .unwrap_or_else(|| format!("{:#}", anyhow::Error::new(e)));
                bail!("the mirror {mirror} cannot be reached: {why}")
            }
        }
    }
    bail!("the mirror {mirror} has no suite {suite}: {last}")
}

/// Refuses to start without a program the steps need.
pub(crate) fn need_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !found {
        bail!("{name} is not installed (on Debian: apt-get install {name})");
    }
    Ok(())
}

/// The step of `image add|remove`: apt-get update and install, or purge of packages that must be
/// installed (`installed`, in `words` for the error).
pub(crate) fn add_or_remove(
    root: &Path,
    packages: &[String],
    remove: bool,
    installed: &dpkg::Packages,
    words: &str,
    report: &Reporter,
) -> Result<()> {
    let ch = Chroot::enter(root)?;
    let ev = |e: semithin_image::Event<'_>| report.event(e);
    if remove {
        for p in packages {
            if !installed.contains_key(p.as_str()) {
                bail!("package {p:?} is not installed in {words}");
            }
        }
        report.step(&format!("apt-get purge {}", packages.join(" ")));
        let names: Vec<&str> = packages.iter().map(String::as_str).collect();
        build::purge(&ch, &names, &ev)?;
    } else {
        report.step("apt-get update");
        ch.run("apt-get update", &["apt-get", "update"], &ev)?;
        report.step(&format!("apt-get install {}", packages.join(" ")));
        build::install(&ch, packages, &ev)?;
    }
    Ok(())
}

/// Commits `root` to `channel` with `message`.
pub(crate) fn commit(
    repo: &Repo,
    channel: &str,
    root: &Path,
    message: &str,
    report: &Reporter,
) -> Result<CommitStats> {
    let bar = Bar::new(report.quiet);
    let opts = CommitOptions {
        channel,
        message,
        time: None,
    };
    let stats = import::commit(repo, root, &opts, &bar)
        .with_context(|| format!("committing the image to {channel}"))?;
    bar.finish();
    for w in &stats.warnings {
        report.note(&format!("warning: {w}"));
    }
    Ok(stats)
}
