//! Images from a package list: `image build` with mmdebstrap against a local signed Debian
//! mirror on loopback (tests/fixtures/debian-mirror.sh: the .debs of a minbase bookworm, signed
//! by a throwaway key) and a second local repository of tiny packages (apt.rs), `init`, and
//! the wizards (shell, add, remove, upgrade) with real apt and dpkg in chroots. Nothing leaves
//! loopback; every failure must leave the channel, the work directory and the mounts as they
//! were.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::apt::{Http, gpg_key, publish_repo, serve};
use crate::common::{Env, q, sh};

/// A repository, the local Debian mirror and a repository of tiny packages (`extra`) served on
/// loopback, and a work directory for builds that must be empty after every command.
struct Site {
    env: Env,
    _http: Http,
    url: String,
    mirror_key: PathBuf,
    extra: PathBuf,
    extra_key: PathBuf,
    work: PathBuf,
}

impl Site {
    fn new(extra: &[(&str, &[(&str, &str)])]) -> Site {
        let env = Env::new();
        let mirror =
            sh(&format!(
                "{} 2>/dev/null",
                q(&Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/debian-mirror.sh"))
            ));
        let mirror = PathBuf::from(mirror.trim());
        let www = env.path("www");
        let extra_dir = env.path("extra");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::create_dir_all(&extra_dir).unwrap();
        std::os::unix::fs::symlink(mirror.join("debian"), www.join("debian")).unwrap();
        std::os::unix::fs::symlink(extra_dir.join("repo"), www.join("extra")).unwrap();
        let extra_key = gpg_key(&extra_dir);
        publish_repo(&extra_dir, extra);
        let http = serve(www);
        let work = env.path("work");
        std::fs::create_dir_all(&work).unwrap();
        Site {
            url: format!("http://127.0.0.1:{}", http.port),
            _http: http,
            mirror_key: mirror.join("key.asc"),
            extra: extra_dir,
            extra_key,
            work,
            env,
        }
    }

    /// `semithin ARGS --work-dir WORK` (for the commands that build).
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut a = args.to_vec();
        a.extend(["--work-dir", self.work.to_str().unwrap()]);
        a
    }

    fn ok(&self, args: &[&str]) -> String {
        self.env.ok(&self.args(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        self.env.json(&self.args(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        let e = self.env.fails(&self.args(args));
        self.assert_clean();
        e
    }

    /// Nothing left in the work directory, nothing mounted below it.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.work).unwrap().collect();
        assert!(left.is_empty(), "left in the work directory: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let w = self.work.to_str().unwrap();
        assert!(!mounts.contains(w), "still mounted below {w}:\n{mounts}");
    }

    /// A profile file in the test's directory.
    fn profile(&self, name: &str, text: &str) -> PathBuf {
        let p = self.env.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The lines of a base profile: the local mirror and the extra repository.
    fn base_profile(&self, channel: &str, packages: &str) -> String {
        format!(
            "channel = \"{channel}\"\nsuite = \"bookworm\"\nmirror = \"{u}/debian\"\n\
             mirror_key = \"{mk}\"\npackages = [{packages}]\n\
             [[sources]]\nname = \"extra\"\nuri = \"{u}/extra\"\nsuite = \"testing\"\nkey = \"{ek}\"\n",
            u = self.url,
            mk = self.mirror_key.display(),
            ek = self.extra_key.display(),
        )
    }

    fn head(&self, channel: &str) -> Option<String> {
        let v = self.env.json(&["channel", "list"]);
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == channel)
            .map(|c| c["head"].as_str().unwrap().to_owned())
    }

    fn packages(&self, reference: &str) -> Vec<String> {
        let v = self.env.json(&["image", "packages", reference]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn message(&self, reference: &str) -> String {
        let v = self.env.json(&["show", reference]);
        v["message"].as_str().unwrap().to_owned()
    }
}

fn names(changes: &Value, kind: &str) -> Vec<String> {
    changes[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match kind {
            "changed" => format!(
                "{} {} -> {}",
                p["name"].as_str().unwrap(),
                p["old"].as_str().unwrap(),
                p["new"].as_str().unwrap()
            ),
            _ => format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            ),
        })
        .collect()
}

/// The versions dpkg says are installed in a checkout (the tree's own dpkg, in a chroot).
fn dpkg_list(root: &Path) -> Vec<String> {
    let out = Command::new("chroot")
        .arg(root)
        .args([
            "dpkg-query",
            "-W",
            "-f=${db:Status-Abbrev}${Package} ${Version}\\n",
        ])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ii "))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

#[test]
fn image_build_refuses_bad_profiles_and_a_dead_mirror_changing_nothing() {
    let s = Site::new(&[("testing", &[("stone", "1.0")])]);
    let ok = s.base_profile("lab/bad", "\"hello\"");
    let cases: Vec<(String, &str)> = vec![
        (ok.replace("packages", "pakages"), "unknown field `pakages`"),
        (
            ok.replace("\"hello\"", "\"Hello World\""),
            "packages: \"Hello World\" is not a Debian package name",
        ),
        (format!("overlay = \"missing\"\n{ok}"), "overlay: "),
        (format!("scripts = [\"none.sh\"]\n{ok}"), "scripts: "),
        (ok.replace("suite = \"bookworm\"\n", ""), "suite: missing"),
        (format!("extends = \"bad.toml\"\n{ok}"), "cycle"),
        (
            format!("source_date_epoch = \"soon\"\n{ok}"),
            "source_date_epoch",
        ),
    ];
    for (text, want) in cases {
        let f = s.profile("bad.toml", &text);
        let e = s.fails(&["image", "build", f.to_str().unwrap()]);
        assert!(e.contains(want), "{want}: {e}");
        assert!(e.contains("bad.toml"), "{e}");
    }
    // A new channel a letter from an existing one: a probable misspelling.
    let tree = s.env.path("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    s.env.commit("lab/stable", &tree);
    let f = s.profile("typo.toml", &s.base_profile("lab/stabel", "\"hello\""));
    let e = s.fails(&["image", "build", f.to_str().unwrap()]);
    assert!(e.contains("did you mean lab/stable?"), "{e}");
    assert!(e.contains("--new-channel"), "{e}");
    // A mirror nobody answers on: said before anything is built.
    let dead = ok.replace(&s.url, "http://127.0.0.1:9");
    let f = s.profile("dead.toml", &dead);
    let e = s.fails(&["image", "build", f.to_str().unwrap()]);
    assert!(
        e.contains("the mirror http://127.0.0.1:9/debian cannot be reached"),
        "{e}"
    );
    // With its time given, the build starts and apt's failure is read back: the mirror named.
    let f = s.profile(
        "dead2.toml",
        &format!("source_date_epoch = 1700000000\n{dead}"),
    );
    let e = s.fails(&["image", "build", f.to_str().unwrap()]);
    assert!(e.contains("channel lab/bad left as it was"), "{e}");
    assert!(e.contains("127.0.0.1:9"), "{e}");
    assert_eq!(s.head("lab/bad"), None);
}

/// One profile built twice gives the same tree; its packages are those of a minbase bookworm
/// plus the profile's (one from the mirror, one from an extra source with its own key); the
/// overlay and the script are in it; apt's lists and caches and the policy-rc.d are not.
#[test]
fn slow_image_build_makes_the_profiles_packages_and_the_same_tree_twice() {
    let s = Site::new(&[("testing", &[("stone", "1.0")])]);
    let files = s.env.path("files/etc/motd.d");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("lab"), "lab machines\n").unwrap();
    std::fs::write(
        s.env.path("setup.sh"),
        "#!/bin/sh\nset -e\necho \"made by a script\" > /etc/scripted\n",
    )
    .unwrap();
    let text = format!(
        "overlay = \"files\"\nscripts = [\"setup.sh\"]\n{}",
        s.base_profile("lab/base", "\"hello\", \"stone\"")
    );
    let f = s.profile("base.toml", &text);
    let a = s.json(&["image", "build", f.to_str().unwrap()]);
    s.assert_clean();
    let pk = s.packages("lab/base");
    assert!(pk.contains(&"stone 1.0".to_owned()), "{pk:?}");
    assert!(pk.iter().any(|p| p.starts_with("hello ")), "{pk:?}");
    assert!(pk.iter().any(|p| p.starts_with("apt ")), "{pk:?}");
    assert_eq!(a["packages"].as_u64().unwrap() as usize, pk.len());
    // The first version's message lists every package as added.
    let m = s.message("lab/base");
    assert!(
        m.contains(&format!(
            "packages: {} added, 0 removed, 0 changed",
            pk.len()
        )),
        "{m}"
    );
    assert!(m.contains("\n+ stone 1.0\n"), "{m}");

    // What dpkg itself says in the tree is what `image packages` read from the status file.
    let root = s.env.path("checkout");
    s.env.ok(&["checkout", "lab/base", root.to_str().unwrap()]);
    let mut listed = pk.clone();
    listed.sort();
    assert_eq!(dpkg_list(&root), listed);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd.d/lab")).unwrap(),
        "lab machines\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/scripted")).unwrap(),
        "made by a script\n"
    );
    assert!(root.join("etc/apt/sources.list.d/extra.sources").is_file());
    assert!(!root.join("usr/sbin/policy-rc.d").exists());
    let lists = sh(&format!("ls {}", q(&root.join("var/lib/apt/lists"))));
    assert_eq!(
        lists.split_whitespace().collect::<Vec<_>>(),
        ["lock", "partial"]
    );
    assert_eq!(
        sh(&format!(
            "ls {}/var/cache/apt/archives/*.deb 2>/dev/null | wc -l",
            q(&root)
        ))
        .trim(),
        "0"
    );

    // The same inputs again: the same tree, and a message that says nothing changed.
    let b = s.json(&["image", "build", f.to_str().unwrap()]);
    s.assert_clean();
    assert_eq!(
        a["tree"], b["tree"],
        "two builds of the same profile differ"
    );
    assert_ne!(a["commit"], b["commit"]);
    assert_eq!(a["source_date_epoch"], b["source_date_epoch"]);
    assert!(
        s.message("lab/base")
            .contains("packages: 0 added, 0 removed, 0 changed")
    );
}

/// A profile that extends another takes its settings and adds to them; a package apt does not
/// know fails the build with its name, and the channel stays as it was.
#[test]
fn slow_image_build_extends_and_names_an_unknown_package() {
    let s = Site::new(&[("testing", &[("stone", "1.0"), ("pebble", "1.0")])]);
    std::fs::create_dir_all(s.env.path("lab")).unwrap();
    s.profile("base.toml", &s.base_profile("lab/base", "\"stone\""));
    let child = s.profile(
        "lab/room.toml",
        "extends = \"../base.toml\"\nchannel = \"lab/room\"\npackages = [\"pebble\"]\n",
    );
    let r = s.json(&["image", "build", child.to_str().unwrap()]);
    s.assert_clean();
    assert_eq!(r["channel"], "lab/room");
    let pk = s.packages("lab/room");
    assert!(pk.contains(&"stone 1.0".to_owned()) && pk.contains(&"pebble 1.0".to_owned()));
    let head = s.head("lab/room");

    let bad = s.profile(
        "lab/bad.toml",
        "extends = \"room.toml\"\nchannel = \"lab/room\"\npackages = [\"nosuchpkg\"]\n\
         source_date_epoch = 1700000000\n",
    );
    let e = s.fails(&["image", "build", bad.to_str().unwrap()]);
    assert!(
        e.contains("package \"nosuchpkg\" is not in any of the image's apt sources"),
        "{e}"
    );
    assert_eq!(s.head("lab/room"), head);
}

/// `init` makes a site (trust, profile, first release published); then the wizards change it:
/// a shell adds an apt source, `add` installs from it, `upgrade --security-only` and `upgrade`
/// take exactly the newer versions the repository serves, `remove` removes; each commit lists
/// exactly its package changes, and a package apt does not know changes nothing.
#[test]
fn slow_image_init_and_the_wizards_commit_exactly_their_package_changes() {
    let s = Site::new(&[
        ("testing", &[("stone", "1.0"), ("pebble", "1.0")]),
        ("testing-security", &[]),
    ]);
    let site = s.env.path("site");
    let out = s.ok(&[
        "init",
        "--yes",
        "--server-url",
        "http://updates.example:8470",
        "--mirror",
        &format!("{}/debian", s.url),
        "--mirror-key",
        s.mirror_key.to_str().unwrap(),
        "--packages",
        "hello",
        "--channel",
        "site/stable",
        "--dir",
        site.to_str().unwrap(),
    ]);
    s.assert_clean();
    assert!(out.contains("published site/stable"), "{out}");
    let signed = sh(&format!(
        "grep -l channels/site/stable {}/trust/metadata/*.targets.json | wc -l",
        q(&s.env.repo)
    ));
    assert_ne!(signed.trim(), "0", "the first release is not signed");
    assert!(site.join("root.key").is_file());
    let agent = std::fs::read_to_string(site.join("overlay/etc/semithin/agent.toml")).unwrap();
    assert!(
        agent.contains("server = \"http://updates.example:8470\""),
        "{agent}"
    );
    assert!(
        s.packages("site/stable")
            .iter()
            .any(|p| p.starts_with("hello "))
    );
    let first = s.head("site/stable").unwrap();

    // A shell (scripted through stdin) adds the extra source and its key.
    let key = std::fs::read_to_string(&s.extra_key).unwrap();
    let script = format!(
        "cat > /etc/apt/keyrings/extra.asc <<'EOF'\n{key}EOF\n\
         printf 'Types: deb\\nURIs: {u}/extra\\nSuites: testing testing-security\\nComponents: main\\nSigned-By: /etc/apt/keyrings/extra.asc\\n' \
           > /etc/apt/sources.list.d/extra.sources\nexit\n",
        u = s.url
    );
    let mut child = Command::new(crate::common::BIN)
        .args(["--repo", s.env.repo.to_str().unwrap()])
        .args(s.args(&["image", "shell", "site/stable", "--yes"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{so}{se}");
    assert!(
        so.contains("A /etc/apt/sources.list.d/extra.sources"),
        "{so}"
    );
    assert!(
        se.contains("base: the published release of site/stable"),
        "{se}"
    );
    s.assert_clean();

    // The head is not published now: a wizard says which base it takes.
    let r = s.json(&[
        "image",
        "add",
        "site/stable",
        "stone",
        "pebble",
        "--from",
        "head",
        "--publish",
    ]);
    s.assert_clean();
    let c = &r["changes"];
    assert_eq!(names(c, "added"), ["pebble 1.0", "stone 1.0"]);
    assert!(names(c, "removed").is_empty() && names(c, "changed").is_empty());
    let m = s.message("site/stable");
    assert!(m.contains("base: the head of site/stable"), "{m}");
    assert!(
        m.contains("packages: 2 added, 0 removed, 0 changed\n+ pebble 1.0\n+ stone 1.0\n"),
        "{m}"
    );
    let added = s.head("site/stable").unwrap();

    // A package apt does not know: named, nothing changes.
    let e = s.fails(&["image", "add", "site/stable", "nosuchpkg"]);
    assert!(
        e.contains("package \"nosuchpkg\" is not in any of the image's apt sources"),
        "{e}"
    );
    assert_eq!(s.head("site/stable").unwrap(), added);

    // Newer versions on the repository: stone in testing, pebble in testing-security.
    publish_repo(
        &s.extra,
        &[
            ("testing", &[("stone", "1.1"), ("pebble", "1.0")]),
            ("testing-security", &[("pebble", "1.1")]),
        ],
    );
    let r = s.json(&["image", "upgrade", "site/stable", "--security-only"]);
    s.assert_clean();
    assert_eq!(names(&r["changes"], "changed"), ["pebble 1.0 -> 1.1"]);
    assert!(names(&r["changes"], "added").is_empty());
    assert!(s.message("site/stable").contains("~ pebble 1.0 -> 1.1\n"));

    let r = s.json(&["image", "upgrade", "site/stable", "--from", "head"]);
    s.assert_clean();
    assert_eq!(names(&r["changes"], "changed"), ["stone 1.0 -> 1.1"]);

    let r = s.json(&["image", "remove", "site/stable", "stone", "--from", "head"]);
    s.assert_clean();
    assert_eq!(names(&r["changes"], "removed"), ["stone 1.1"]);
    assert!(names(&r["changes"], "added").is_empty());

    // The whole way from the first release, by package.
    let d = s
        .env
        .json(&["image", "diff", &first, "site/stable", "--packages"]);
    assert_eq!(names(&d, "added"), ["pebble 1.1"]);
    assert!(names(&d, "removed").is_empty() && names(&d, "changed").is_empty());
    s.env.fsck_ok();
}

/// ctrl-c in the middle of a wizard (the whole process group, as a terminal sends it): the
/// chroot's mounts are undone, the checkout removed, nothing committed.
#[test]
fn image_shell_interrupted_leaves_no_mounts_and_commits_nothing() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let base = sh(&format!(
        "{} base",
        q(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-root.sh"))
    ));
    env.ok(&["commit", "-c", "lab/x", base.trim()]);
    let head = env.ok(&["channel", "list"]);
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(crate::common::BIN)
        .args([
            "--repo",
            env.repo.to_str().unwrap(),
            "image",
            "shell",
            "lab/x",
            "--yes",
        ])
        .args(["--work-dir", work.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"touch /etc/touched\nsleep 60\n").unwrap();
    let w = work.to_str().unwrap().to_owned();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&w)
    };
    crate::fleet::wait_until("the chroot's mounts", 60, mounted);
    std::thread::sleep(std::time::Duration::from_millis(500));
    sh(&format!("kill -INT -- -{}", child.id()));
    let o = child.wait_with_output().unwrap();
    drop(stdin);
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{se}");
    assert!(se.contains("interrupted: nothing committed"), "{se}");
    assert!(!mounted(), "mounts left below {w}");
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
    assert!(left.is_empty(), "left: {left:?}");
    assert_eq!(env.ok(&["channel", "list"]), head);
}

/// Package layers: `image add` on a layer of a profile installs over the layers below and keeps
/// what changed as the layer; base + two package layers composed equals the same packages
/// installed into the base in one chroot (files and dpkg's database); a security update of the
/// base composes the profile again with both layers installed again by apt (not merged file by
/// file), and the new composition is a small delta from the old.
#[test]
fn slow_image_package_layers_are_replayed_over_a_new_base() {
    let s = Site::new(&[
        (
            "testing",
            &[("stone", "1.0"), ("pebble", "1.0"), ("gravel", "1.0")],
        ),
        ("testing-security", &[]),
    ]);
    let text = format!(
        "{}[[sources]]\nname = \"extra-security\"\nuri = \"{u}/extra\"\nsuite = \"testing-security\"\nkey = \"{ek}\"\n",
        s.base_profile("os/base", "\"pebble\""),
        u = s.url,
        ek = s.extra_key.display()
    );
    let f = s.profile("base.toml", &text);
    s.ok(&["image", "build", f.to_str().unwrap()]);
    s.assert_clean();
    s.env.ok(&[
        "profile",
        "set",
        "lab",
        "--layers",
        "os/base,lab/tools,lab/more",
    ]);

    let r = s.json(&["image", "add", "lab/tools", "stone"]);
    s.assert_clean();
    assert_eq!(names(&r["changes"], "added"), ["stone 1.0"]);
    assert_eq!(r["profile"], "lab");
    let m = s.message("lab/tools");
    assert!(
        m.contains("Layer-Install: stone\n") && m.contains("Layer-Base: "),
        "{m}"
    );
    // The layer holds what apt changed, not a whole root.
    let layer_pk = s.env.json(&["show", "lab/tools"]);
    assert!(
        layer_pk["entries"].as_u64().unwrap() < 200,
        "the layer is not a difference: {layer_pk:#}"
    );
    let r = s.json(&["image", "add", "lab/more", "gravel"]);
    s.assert_clean();
    let composed = &r["profiles"][0];
    assert_eq!(composed["channel"], "profiles/lab");
    let first = composed["commit"].as_str().unwrap().to_owned();
    assert!(
        composed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["replayed"] == false),
        "{composed:#}"
    );

    // The same packages installed into the base in one chroot, by the whole-image wizard.
    s.env.ok(&["channel", "set", "flat/all", "os/base"]);
    s.ok(&["image", "add", "flat/all", "stone", "--from", "head"]);
    s.ok(&["image", "add", "flat/all", "gravel", "--from", "head"]);
    s.assert_clean();
    let (a, b) = (s.env.path("co-layers"), s.env.path("co-flat"));
    s.env.ok(&["checkout", "profiles/lab", a.to_str().unwrap()]);
    s.env.ok(&["checkout", "flat/all", b.to_str().unwrap()]);
    let listed = dpkg_list(&a);
    assert_eq!(listed, dpkg_list(&b));
    assert!(
        ["pebble 1.0", "stone 1.0", "gravel 1.0"]
            .iter()
            .all(|p| listed.contains(&p.to_string())),
        "{listed:?}"
    );
    // diff compares no device nodes: /dev's are compared by their listing.
    let devs = |r: &Path| {
        sh(&format!(
            "cd {} && ls -ln dev | awk '{{print $1, $5, $6, $NF}}'",
            q(r)
        ))
    };
    assert_eq!(devs(&a), devs(&b));
    let d = std::process::Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=dev"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        d.status.success(),
        "the composed layers and the one chroot differ:\n{}",
        String::from_utf8_lossy(&d.stdout)
    );

    // A security update of the base: both package layers are installed again over it.
    publish_repo(
        &s.extra,
        &[
            (
                "testing",
                &[("stone", "1.0"), ("pebble", "1.0"), ("gravel", "1.0")],
            ),
            ("testing-security", &[("pebble", "1.1")]),
        ],
    );
    let r = s.json(&["image", "upgrade", "os/base", "--security-only"]);
    s.assert_clean();
    assert_eq!(names(&r["changes"], "changed"), ["pebble 1.0 -> 1.1"]);
    let composed = &r["profiles"][0];
    let replayed: Vec<&str> = composed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["replayed"] == true)
        .map(|l| l["channel"].as_str().unwrap())
        .collect();
    assert_eq!(replayed, ["lab/tools", "lab/more"]);
    let second = composed["commit"].as_str().unwrap().to_owned();
    let pk = s.packages("profiles/lab");
    for p in ["pebble 1.1", "stone 1.0", "gravel 1.0"] {
        assert!(pk.contains(&p.to_owned()), "{p} missing: {pk:?}");
    }
    let c = s.env.path("co-after");
    s.env.ok(&["checkout", "profiles/lab", c.to_str().unwrap()]);
    let mut want = pk.clone();
    want.sort();
    assert_eq!(
        dpkg_list(&c),
        want,
        "dpkg's database is not what the tree holds"
    );
    assert_eq!(
        std::fs::read_to_string(c.join("usr/share/pebble/version")).unwrap(),
        "1.1\n"
    );
    // What machines on the profile download: a small delta.
    let d = s.env.json(&["delta", &first, &second]);
    let total = d["total_bytes"].as_u64().unwrap();
    let size = s.env.json(&["show", &second])["bytes"].as_u64().unwrap();
    assert!(
        total * 20 < size,
        "the update is {total} bytes for an image of {size}"
    );
    let list = s.env.json(&["profile", "list"]);
    assert_eq!(list[0]["state"], "up-to-date");
    s.env.fsck_ok();
}

/// On a terminal (a pty made by script(1)), `init` asks each question with its default and takes
/// the answers (an empty one takes the default); a mirror that does not answer then stops it
/// before anything is built, naming the mirror, with the profile written and nothing committed.
#[test]
fn init_asks_on_a_terminal_and_takes_the_answers() {
    use std::io::Write;
    let env = crate::common::Env::new();
    let site = env.path("site");
    let cmd = format!(
        "{} --repo {} init --dir {} --mirror http://127.0.0.1:1/debian --work-dir {}",
        q(Path::new(crate::common::BIN)),
        q(&env.repo),
        q(&site),
        q(&env.path("work"))
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"http://updates.example:8470\n\nhello\nlab/first\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{text}");
    for prompt in [
        "the URL machines will contact [http://",
        "the Debian suite [bookworm]: ",
        "the software of every machine (comma-separated) [systemd-sysv,ca-certificates]: ",
        "the channel of the first release [site/stable]: ",
    ] {
        assert!(text.contains(prompt), "no prompt {prompt:?} in:\n{text}");
    }
    assert!(
        text.contains("the mirror http://127.0.0.1:1/debian cannot be reached"),
        "{text}"
    );
    let profile = std::fs::read_to_string(site.join("site.toml")).unwrap();
    assert!(
        profile.contains("channel = \"lab/first\"")
            && profile.contains("suite = \"bookworm\"")
            && profile.contains("packages = [\"hello\"]"),
        "{profile}"
    );
    let agent = std::fs::read_to_string(site.join("overlay/etc/semithin/agent.toml")).unwrap();
    assert!(
        agent.contains("server = \"http://updates.example:8470\""),
        "{agent}"
    );
    let channels = env.json(&["channel", "list"]);
    assert_eq!(channels, serde_json::json!([]));
}
