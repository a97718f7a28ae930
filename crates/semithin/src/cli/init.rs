//! `semithin init`: the first run of a new site. Asks on a terminal (or takes as flags) the
//! server URL machines will contact, the suite and the software; makes the repository and the
//! trust metadata when missing; writes a profile directory (the profile, and an overlay with
//! the agent's settings and the TUF root the machines start from); builds, commits and
//! publishes the first release; says what to do next.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_image::profile;
use semithin_store::repo::{Config, Repo};

/// Where a server (`semithin serve --data /var/lib/semithin-server`) keeps its repository.
const DEFAULT_REPO: &str = "/var/lib/semithin-server/repo";

#[derive(clap::Args)]
pub struct Args {
    /// Ask nothing: every value not given as a flag takes its default.
    #[arg(long)]
    yes: bool,
    /// The URL machines contact (written into the image's /etc/semithin/agent.toml)
    /// [default: http://HOSTNAME:8470].
    #[arg(long, value_name = "URL")]
    server_url: Option<String>,
    /// The Debian suite [default: bookworm].
    #[arg(long)]
    suite: Option<String>,
    /// The Debian mirror [default: http://deb.debian.org/debian].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// The key that signs the mirror, when it is not Debian's (a file: .asc or .gpg).
    #[arg(long, value_name = "FILE")]
    mirror_key: Option<PathBuf>,
    /// The software of every machine, comma-separated [default: systemd-sysv,ca-certificates].
    #[arg(long, value_name = "PKG,...")]
    packages: Option<String>,
    /// The channel of the first release [default: site/stable].
    #[arg(long)]
    channel: Option<String>,
    /// The directory the profile is written into (made; refused when it holds a profile)
    /// [default: ./semithin-site].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Where the root key is written when trust is set up here (keep it offline afterwards)
    /// [default: DIR/root.key].
    #[arg(long, value_name = "FILE")]
    root_key: Option<PathBuf>,
    /// Where the build directory is made (removed afterwards).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
}

/// A value: the flag's, else the answer on a terminal, else the default.
fn ask(interactive: bool, question: &str, given: Option<String>, default: &str) -> Result<String> {
    if let Some(v) = given {
        return Ok(v);
    }
    if !interactive {
        return Ok(default.to_owned());
    }
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "{question} [{default}]: ");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let v = line.trim();
    Ok(if v.is_empty() {
        default.to_owned()
    } else {
        v.to_owned()
    })
}

/// A TOML string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub fn run(repo: Option<PathBuf>, a: Args) -> Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal();
    if !a.yes && !terminal {
        bail!(
            "not a terminal: pass --yes and the values as flags (--server-url, --suite, \
             --mirror, --packages, --channel)"
        );
    }
    let interactive = !a.yes;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let server = ask(
        interactive,
        "the URL machines will contact",
        a.server_url,
        &format!("http://{host}:8470"),
    )?;
    semithin_agent::neterr::check_url(&server).map_err(|e| anyhow::anyhow!("--server-url: {e}"))?;
    let suite = ask(interactive, "the Debian suite", a.suite, "bookworm")?;
    let mirror = ask(
        interactive,
        "the Debian mirror",
        a.mirror,
        "http://deb.debian.org/debian",
    )?;
    let packages = ask(
        interactive,
        "the software of every machine (comma-separated)",
        a.packages,
        "systemd-sysv,ca-certificates",
    )?;
    let channel = ask(
        interactive,
        "the channel of the first release",
        a.channel,
        "site/stable",
    )?;
    let packages: Vec<String> = packages
        .split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    for p in &packages {
        profile::check_package(p).map_err(|e| anyhow::anyhow!("--packages: {e}"))?;
    }
    semithin_store::channel::check_name(&channel).context("--channel")?;
    let repo_path = repo.unwrap_or_else(|| PathBuf::from(DEFAULT_REPO));
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("semithin-site"));
    let file = dir.join("site.toml");
    if file.exists() {
        bail!(
            "{} exists: this site has a profile already (`semithin image build {0}` builds it \
             again), or pass --dir elsewhere",
            file.display()
        );
    }

    // The repository and its trust metadata.
    if !repo_path.join("config").exists() {
        Repo::init(&repo_path, Config::default())
            .with_context(|| format!("making the repository {}", repo_path.display()))?;
        note!("made the repository {}", repo_path.display());
    }
    let trust = repo_path.join("trust");
    let root_key = a.root_key.unwrap_or_else(|| dir.join("root.key"));
    std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
    if !trust.join("metadata/1.root.json").exists() {
        semithin_trust::repo::init(
            &trust,
            std::slice::from_ref(&root_key),
            1,
            semithin_trust::clock::now(),
        )?;
        note!(
            "trust set up; the root key is {}: keep it offline (`semithin trust rotate` needs it)",
            root_key.display()
        );
    }

    // The profile, with an overlay that tells the machines where to go.
    let etc = dir.join("overlay/etc/semithin");
    std::fs::create_dir_all(&etc).with_context(|| format!("making {}", etc.display()))?;
    std::fs::copy(trust.join("metadata/1.root.json"), etc.join("root.json"))
        .context("copying the TUF root into the overlay")?;
    std::fs::write(
        etc.join("agent.toml"),
        format!(
            "# written by `semithin init`: packaging/agent.toml lists every setting\n\
             server = {}\ntrusted_root = \"/etc/semithin/root.json\"\n\
             token_file = \"/etc/semithin/enroll-token\"\n",
            quoted(&server)
        ),
    )?;
    let mut text = format!(
        "# The image of every machine of the site (docs/IMAGES.md); `semithin image build` this file.\n\
         channel = {}\nsuite = {}\nmirror = {}\n",
        quoted(&channel),
        quoted(&suite),
        quoted(&mirror)
    );
    if let Some(k) = &a.mirror_key {
        let dest = dir.join(match k.extension().and_then(|e| e.to_str()) {
            Some("gpg") => "mirror-key.gpg",
            _ => "mirror-key.asc",
        });
        std::fs::copy(k, &dest).with_context(|| format!("copying {}", k.display()))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
        text.push_str(&format!(
            "mirror_key = {}\n",
            quoted(&name.unwrap_or_default())
        ));
    }
    let list: Vec<String> = packages.iter().map(|p| quoted(p)).collect();
    text.push_str(&format!(
        "packages = [{}]\noverlay = \"overlay\"\n",
        list.join(", ")
    ));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    note!("wrote {}", file.display());

    let built = super::image::build_profile(
        Some(repo_path.clone()),
        &file,
        &a.work_dir,
        true,
        true,
        false,
    )
    .with_context(|| {
        format!(
            "the repository, trust and {} are ready; once the problem is fixed, \
                     `semithin image build {0} --publish` makes the first release",
            file.display()
        )
    })?;
    next_steps(&repo_path, &built.channel, &server, &file);
    Ok(ExitCode::SUCCESS)
}

fn next_steps(repo: &Path, channel: &str, server: &str, profile: &Path) {
    let data = repo.parent().unwrap_or(repo).display().to_string();
    note!(
        "\nthe first release of {channel} is published. Next:\n\
         1. serve it:            semithin serve --data {data} --listen 0.0.0.0:8470\n\
         \x20  (the URL machines use is {server}; HTTPS with --tls-cert and --tls-key)\n\
         2. an enrollment token: SEMITHIN_SERVER={server} SEMITHIN_ADMIN_TOKEN=$(cat {data}/admin-token) \\\n\
         \x20                      semithin fleet token create --expires-in 7d > enroll-token\n\
         \x20  put it in the image as /etc/semithin/enroll-token (mode 0600), or on each machine\n\
         3. the agent: the image holds /etc/semithin/agent.toml (server {server}) and root.json;\n\
         \x20  install semithin on the machines (or add it to the overlay as /usr/local/bin/semithin)\n\
         \x20  and run `semithin agent --config /etc/semithin/agent.toml --state /var/lib/semithin`\n\
         \x20  (packaging/systemd has the unit)\n\
         4. machines that enroll: semithin fleet accept NAME; semithin fleet assign NAME {channel}\n\
         5. later changes:       semithin image add {channel} PKG --publish, \
         semithin image upgrade {channel} --publish,\n\
         \x20                      or edit {} and `semithin image build` it again",
        profile.display()
    );
}
