//! Bad input is refused with a message naming the problem, writes nothing outside the
//! repository, and leaves the repository valid: hostile and damaged archives, damaged objects, a
//! repository from a newer semithin, non-empty checkout destinations, processes killed halfway,
//! bad channel names and references.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Writes a tar archive with python3's tarfile, which writes whatever names it is given.
/// `entries` is Python code calling `f(name)`, `d(name)`, `sym(name, target)`,
/// `hard(name, target)` and, in pax format, `pax_path(name, path)` (a harmless ustar name
/// with a pax `path` record).
fn python_tar(path: &Path, pax: bool, entries: &str) {
    let format = if pax { "PAX_FORMAT" } else { "GNU_FORMAT" };
    let script = format!(
        r#"
import io, sys, tarfile
t = tarfile.open(sys.argv[1], "w", format=tarfile.{format})
def add(name, kind, data=b"", link="", pax=None):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.mtime = 1700000000
    ti.linkname = link
    ti.size = len(data)
    if pax:
        ti.pax_headers = pax
    t.addfile(ti, io.BytesIO(data) if data else None)
def f(name): add(name, tarfile.REGTYPE, b"data\n")
def d(name): add(name, tarfile.DIRTYPE)
def sym(name, target): add(name, tarfile.SYMTYPE, link=target)
def hard(name, target): add(name, tarfile.LNKTYPE, link=target)
def pax_path(name, path): add(name, tarfile.REGTYPE, b"data\n", pax={{"path": path}})
{entries}
t.close()
"#
    );
    let py = path.with_extension("py");
    std::fs::write(&py, script).unwrap();
    sh(&format!("python3 {} {}", q(&py), q(path)));
    std::fs::remove_file(&py).unwrap();
}

/// Everything in the test directory outside the repository, with type, size and mtime.
fn outside_repo(env: &Env) -> String {
    sh(&format!(
        "cd {} && find . -path ./repo -prune -o -printf '%p %y %s %T@\\n' | LC_ALL=C sort",
        q(env.dir.path())
    ))
}

/// Commits ARCHIVE expecting a refusal whose message holds each of `expect`; checks that nothing
/// changed outside the repository, that no channel moved, and that fsck still passes.
fn refused(env: &Env, archive: &Path, expect: &[&str]) -> String {
    let outside = outside_repo(env);
    let channels = env.json(&["channel", "list"]);
    let err = env.fails(&["commit", "-c", "os", archive.to_str().unwrap()]);
    assert!(
        err.contains(&archive.display().to_string()),
        "the error should name the archive:\n{err}"
    );
    for e in expect {
        assert!(err.contains(e), "the error should contain {e:?}:\n{err}");
    }
    assert_eq!(
        outside_repo(env),
        outside,
        "a refused commit of {} changed files outside the repository",
        archive.display()
    );
    assert_eq!(
        env.json(&["channel", "list"]),
        channels,
        "a refused commit moved a channel"
    );
    env.fsck_ok();
    err
}

/// A good commit after the refusals works and checks out equal to its source.
fn good_commit_still_works(env: &Env) {
    let src = env.path("good");
    sh(&format!(
        "mkdir -p {0}/etc && echo fine > {0}/etc/motd",
        q(&src)
    ));
    let id = env.commit("os", &src);
    let out = env.path("good-out");
    env.ok(&["checkout", &id, out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    env.fsck_ok();
}

/// A name no other test uses, for files that must not appear outside the test directory.
fn unique(env: &Env) -> String {
    env.dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Asserts `rel` exists below none of the places an extracting tool could have used as its
/// root: the test directory, the repository and its scratch directories, the working directory.
fn assert_nowhere(env: &Env, rel: &str) {
    let roots = [
        env.dir.path().to_owned(),
        env.repo.clone(),
        env.repo.join("tmp"),
        env.repo.join("objects/tmp"),
        env.repo.join("objects/packs"),
        env.repo.join("cache/files"),
        std::env::current_dir().unwrap(),
    ];
    for root in roots {
        let p = root.join(rel);
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} was created",
            p.display()
        );
    }
}

#[test]
fn archive_paths_leaving_the_root_are_refused() {
    let env = Env::new();
    let tag = unique(&env);
    let up = format!("../semithin-escape-{tag}");
    let nested = format!("a/b/../../../semithin-escape-nested-{tag}");
    let abs = format!("/etc/semithin-escape-{tag}");
    let long = format!("../{}-{tag}", "l".repeat(120));
    let cases: [(&str, bool, String, Vec<String>); 5] = [
        (
            "dotdot.tar",
            false,
            format!("f('etc/motd')\nf('{up}')"),
            vec![format!("entry {up:?}: path contains ..")],
        ),
        (
            "nested.tar",
            false,
            format!("d('a')\nd('a/b')\nf('{nested}')"),
            vec![format!("entry {nested:?}: path contains ..")],
        ),
        (
            "absolute.tar",
            false,
            format!("f('etc/motd')\nf('{abs}')"),
            vec![format!("entry {abs:?}: absolute path")],
        ),
        // GNU tar writes a name this long in a long-name header before the entry.
        (
            "longname.tar",
            false,
            format!("f('{long}')"),
            vec![format!("entry {long:?}: path contains ..")],
        ),
        // The pax path record wins over the harmless ustar name.
        (
            "pax.tar",
            true,
            format!("pax_path('harmless', '{up}')"),
            vec![format!("entry {up:?}: path contains ..")],
        ),
    ];
    for (file, pax, entries, expect) in cases {
        let archive = env.path(file);
        python_tar(&archive, pax, &entries);
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        refused(&env, &archive, &expect);
    }
    assert_nowhere(&env, &up);
    assert_nowhere(&env, &format!("../semithin-escape-nested-{tag}"));
    assert_nowhere(&env, &long);
    assert!(!Path::new(&abs).exists(), "{abs} was created");
    good_commit_still_works(&env);
}

#[test]
fn archive_entries_through_a_symlink_are_refused() {
    let env = Env::new();
    // An existing directory outside the repository that a symlink in the archive points at.
    let target = env.path("somewhere");
    std::fs::create_dir(&target).unwrap();
    let t = target.display();
    let cases = [
        (
            "abs-link.tar",
            format!("sym('a', '{t}')\nf('a/file')"),
            r#"entry "a/file": goes through the symlink "a""#,
        ),
        (
            "dir-below-link.tar",
            format!("d('etc')\nsym('etc/ssl', '{t}')\nd('etc/ssl/private')"),
            r#"entry "etc/ssl/private/": goes through the symlink "etc/ssl""#,
        ),
        (
            "rel-link.tar",
            "sym('up', '../..')\nf('up/file')".to_owned(),
            r#"entry "up/file": goes through the symlink "up""#,
        ),
    ];
    for (file, entries, expect) in cases {
        let archive = env.path(file);
        python_tar(&archive, false, &entries);
        refused(&env, &archive, &[expect]);
    }
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "something was written through the symlink into {t}"
    );
    assert_nowhere(&env, "../../file");
    good_commit_still_works(&env);
}

#[test]
fn hardlinks_to_anything_but_an_earlier_file_are_refused() {
    let env = Env::new();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let not_earlier = ", which is not a file earlier in this archive";
    let cases = [
        (
            "up.tar",
            "f('ok')\nhard('pw', '../../etc/passwd')",
            r#"entry "pw": hardlink target "../../etc/passwd": path contains .."#.to_owned(),
        ),
        (
            "abs.tar",
            "f('ok')\nhard('pw', '/etc/passwd')",
            r#"entry "pw": hardlink target "/etc/passwd": absolute path"#.to_owned(),
        ),
        (
            "missing.tar",
            "f('ok')\nhard('pw', 'etc/passwd')",
            format!(r#"entry "pw": hardlink to "etc/passwd"{not_earlier}"#),
        ),
        (
            "later.tar",
            "hard('pw', 'later')\nf('later')",
            format!(r#"entry "pw": hardlink to "later"{not_earlier}"#),
        ),
        (
            "to-dir.tar",
            "d('dir')\nhard('pw', 'dir')",
            format!(r#"entry "pw": hardlink to "dir"{not_earlier}"#),
        ),
        (
            "to-symlink.tar",
            "sym('s', '/etc/passwd')\nhard('pw', 's')",
            format!(r#"entry "pw": hardlink to "s"{not_earlier}"#),
        ),
    ];
    for (file, entries, expect) in cases {
        let archive = env.path(file);
        python_tar(&archive, false, entries);
        refused(&env, &archive, &[&expect]);
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    good_commit_still_works(&env);
}

/// Where a member of an archive is, as python3's tarfile sees it.
struct Member {
    name: String,
    /// Offset of its header.
    header: u64,
    /// Offset of its data, and its size.
    data: u64,
    size: u64,
}

/// A tar of three files written by GNU tar (whole-second mtimes, which its format keeps): its
/// source, the archive, and its members in order.
fn gnu_tar(env: &Env) -> (PathBuf, PathBuf, Vec<Member>) {
    let src = env.path("src");
    let archive = env.path("good.tar");
    sh(&format!(
        "mkdir -p {0} && head -c 100000 /dev/urandom > {0}/a && head -c 3000 /dev/urandom > {0}/b \
         && echo hi > {0}/c && find {0} -exec touch -d @1700000000 {{}} + \
         && tar --format=gnu -C {0} -cf {1} .",
        q(&src),
        q(&archive)
    ));
    let members = sh(&format!(
        "python3 -c 'import sys, tarfile\nfor m in tarfile.open(sys.argv[1]).getmembers(): \
         print(m.name, m.offset, m.offset_data, m.size)' {}",
        q(&archive)
    ));
    let members = members
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            Member {
                name: v[0].to_owned(),
                header: v[1].parse().unwrap(),
                data: v[2].parse().unwrap(),
                size: v[3].parse().unwrap(),
            }
        })
        .collect();
    (src, archive, members)
}

fn member<'a>(members: &'a [Member], name: &str) -> &'a Member {
    members.iter().find(|m| m.name == name).unwrap()
}

/// Writes the first `len` bytes of `archive` to `name`.
fn cut(env: &Env, archive: &Path, name: &str, len: u64) -> PathBuf {
    let out = env.path(name);
    let data = std::fs::read(archive).unwrap();
    assert!(len < data.len() as u64);
    std::fs::write(&out, &data[..len as usize]).unwrap();
    out
}

#[test]
fn truncated_archives_are_detected() {
    let env = Env::new();
    let (src, archive, members) = gnu_tar(&env);
    let a = member(&members, "./a");
    let b = member(&members, "./b");
    let last = members.last().unwrap();
    let end_of_last = last.data + last.size.div_ceil(512) * 512;
    let no_marker = "truncated: the archive ends without its end-of-archive marker";
    let cases = [
        // In the middle of a file's data.
        (
            cut(&env, &archive, "mid-data.tar", a.data + 50_000),
            r#"entry "./a": truncated: the archive ends inside this file (50000 of 100000 bytes)"#,
        ),
        // Right after a header, before any of its data.
        (
            cut(&env, &archive, "header-only.tar", b.header + 512),
            r#"entry "./b": truncated: the archive ends inside this file (0 of 3000 bytes)"#,
        ),
        // Exactly at an entry boundary: every entry read is whole, but the end marker is missing.
        (cut(&env, &archive, "boundary.tar", b.header), no_marker),
        (
            cut(&env, &archive, "after-last.tar", end_of_last),
            no_marker,
        ),
    ];
    for (cut, expect) in &cases {
        refused(&env, cut, &[expect]);
    }
    // The whole archive is fine.
    let id = env.commit("os", &archive);
    let out = env.path("out");
    env.ok(&["checkout", &id, out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    env.fsck_ok();
}

#[test]
fn corrupt_archives_are_detected() {
    let env = Env::new();
    let (_, archive, members) = gnu_tar(&env);
    let b = member(&members, "./b");
    // A byte of b's header (its name), so the header checksum no longer matches.
    let flipped = env.path("flipped.tar");
    let mut data = std::fs::read(&archive).unwrap();
    data[b.header as usize + 2] ^= 0xff;
    std::fs::write(&flipped, &data).unwrap();
    refused(&env, &flipped, &["archive header checksum mismatch"]);
    // A .tar.gz cut in half: the cut falls inside a's data.
    sh(&format!("gzip -k {}", q(&archive)));
    let gz = env.path("good.tar.gz");
    let half = std::fs::metadata(&gz).unwrap().len() / 2;
    let truncated = cut(&env, &gz, "cut.tar.gz", half);
    refused(
        &env,
        &truncated,
        &[
            r#"entry "./a": reading content: the Gzip stream is damaged or truncated (incomplete deflate stream)"#,
        ],
    );
    good_commit_still_works(&env);
}

/// The packs of a repository, largest first.
fn packs(env: &Env, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(env.repo.join("objects/packs"))
        .unwrap()
        .map(|de| de.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    v.sort();
    v.reverse();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Runs fsck expecting it to find damage: exit status 1 and the parsed JSON report.
fn fsck_damaged(env: &Env) -> Value {
    let out = env.run(&["fsck", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fsck should report damage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_and_never_checked_out() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let id = env.commit("os", &src);
    let pack = packs(&env, "pack").remove(0);
    // usr/lib/big.bin is random, so zstd stores it as raw blocks and its bytes appear verbatim
    // in the pack. Flipping a byte found by its content, near the middle of the pack, makes sure
    // the damage is in chunk data and not in the record headers between objects.
    let pos = sh(&format!(
        r#"python3 -c '
import sys
pack, big = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
needle = big[len(big) // 2:len(big) // 2 + 64]
pos = pack.find(needle)
assert pos > 0 and pack.find(needle, pos + 1) < 0
print(pos + 32, len(pack))' {} {}"#,
        q(&pack),
        q(&src.join("usr/lib/big.bin"))
    ));
    let (pos, len) = pos.trim().split_once(' ').unwrap();
    let (pos, len): (usize, usize) = (pos.parse().unwrap(), len.parse().unwrap());
    assert!(
        pos > len / 8 && pos < len * 7 / 8,
        "{pos} is not in the middle of {len}"
    );
    let mut data = std::fs::read(&pack).unwrap();
    data[pos] ^= 0x01;
    std::fs::write(&pack, &data).unwrap();

    let report = fsck_damaged(&env);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "one damaged chunk: {report:#}");
    let p = &problems[0];
    assert_eq!(p["kind"], "chunk", "{report:#}");
    let chunk = p["id"].as_str().unwrap();
    assert!(
        p["error"].as_str().unwrap().contains("is corrupt"),
        "{report:#}"
    );
    let user = format!("{}:/usr/lib/big.bin", id.get(..12).unwrap());
    assert!(
        p["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str() == Some(user.as_str())),
        "used_by should name {user}: {report:#}"
    );
    // Without --json, the same in words.
    let out = env.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("chunk {} damaged", chunk.get(..12).unwrap()))
            && text.contains(&format!("used by {user}"))
            && text.contains("1 PROBLEMS"),
        "{text}"
    );

    // checkout names the corrupt object and writes no wrong byte: what exists of big.bin is a
    // prefix of the real content.
    let dest = env.path("out");
    let err = env.fails(&["checkout", "os", dest.to_str().unwrap()]);
    assert!(
        err.contains(&format!("chunk object {chunk} is corrupt")),
        "{err}"
    );
    let original = std::fs::read(src.join("usr/lib/big.bin")).unwrap();
    if let Ok(written) = std::fs::read(dest.join("usr/lib/big.bin")) {
        assert!(
            written.len() < original.len() && original.starts_with(&written),
            "checkout wrote wrong data into usr/lib/big.bin"
        );
    }
    let tar = env.path("export.tar");
    let err = env.fails(&["export", "os", "--format", "tar", tar.to_str().unwrap()]);
    assert!(
        err.contains(&format!("chunk object {chunk} is corrupt")),
        "{err}"
    );
    assert!(!tar.exists(), "a failed export left {}", tar.display());
    assert!(
        !tar.with_extension("partial").exists(),
        "a failed export left its partial file"
    );
}

#[test]
fn a_damaged_pack_index_is_reported_and_stops_gc() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.commit("os", &src);
    let idx = packs(&env, "idx").remove(0);
    let len = std::fs::metadata(&idx).unwrap().len();
    sh(&format!("truncate -s {} {}", len / 2, q(&idx)));

    let report = fsck_damaged(&env);
    let name = idx.file_name().unwrap().to_str().unwrap();
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "pack"
                && p["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(name) && e.contains("is damaged"))),
        "fsck should report the pack index {name}: {report:#}"
    );
    // The objects it indexed cannot be found: checkout says so.
    let err = env.fails(&["checkout", "os", env.path("out").to_str().unwrap()]);
    assert!(err.contains("is missing from the repository"), "{err}");
    // gc must not take the unreadable objects for garbage.
    let packs_before = sh(&format!("ls -l {}", q(&env.repo.join("objects/packs"))));
    let err = env.fails(&["gc"]);
    assert!(
        err.contains("refusing to collect garbage in a damaged repository") && err.contains(name),
        "{err}"
    );
    assert_eq!(
        sh(&format!("ls -l {}", q(&env.repo.join("objects/packs")))),
        packs_before,
        "gc changed the packs of a damaged repository"
    );
}

#[test]
fn a_repository_of_a_newer_format_is_refused_by_every_command() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!("mkdir -p {0} && echo x > {0}/x", q(&src)));
    env.commit("os", &src);
    let config = env.repo.join("config");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("format = 1"), "{text}");
    std::fs::write(&config, text.replace("format = 1", "format = 2")).unwrap();
    let log = env.repo.join("channels/os.log");
    let log_before = std::fs::read(&log).unwrap();
    let dest = env.path("out");
    let tar = env.path("out.tar");
    let (s, d, t) = (
        src.to_str().unwrap(),
        dest.to_str().unwrap(),
        tar.to_str().unwrap(),
    );
    let commands: [&[&str]; 13] = [
        &["commit", "-c", "os", s],
        &["log"],
        &["log", "--channel", "os"],
        &["show", "os"],
        &["diff", "os", "os"],
        &["checkout", "os", d],
        &["channel", "set", "os", "os"],
        &["channel", "log", "os"],
        &["channel", "list"],
        &["cherry-pick", "os", "--onto", "os"],
        &["fsck"],
        &["gc"],
        &["export", "os", "--format", "tar", t],
    ];
    for args in commands {
        let err = env.fails(args);
        assert!(
            err.contains("format version 2") && err.contains("upgrade semithin"),
            "semithin {args:?}:\n{err}"
        );
    }
    assert_eq!(std::fs::read(&log).unwrap(), log_before);
    assert!(!dest.exists() && !tar.exists());
    // Nothing else was changed: with the version put back, the repository is as it was.
    std::fs::write(&config, text).unwrap();
    env.fsck_ok();
}

#[test]
fn checkout_refuses_a_destination_that_is_not_an_empty_directory() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {0}/etc && echo new > {0}/etc/motd",
        q(&src)
    ));
    env.commit("os", &src);
    let dest = env.path("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), "mine\n").unwrap();
    let err = env.fails(&["checkout", "os", dest.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{} exists and is not empty", dest.display())),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep"]);
    assert_eq!(
        std::fs::read_to_string(dest.join("keep")).unwrap(),
        "mine\n"
    );

    let file = env.path("file");
    std::fs::write(&file, "a file\n").unwrap();
    let err = env.fails(&["checkout", "os", file.to_str().unwrap()]);
    assert!(err.contains(&format!("{} exists", file.display())), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a file\n");
    // An empty directory is fine.
    let empty = env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    env.ok(&["checkout", "os", empty.to_str().unwrap()]);
    assert_same_tree(&src, &empty);
}

/// Starts `semithin --repo REPO ARGS` without waiting for it.
fn spawn(env: &Env, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--repo")
        .arg(&env.repo)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills CHILD with SIGKILL as soon as `ready` holds, or once `limit` has passed (when `must`
/// is false; otherwise that fails the test), and reaps it. Fails the test when it ended on its
/// own first.
fn kill_when(child: &mut Child, what: &str, limit: Duration, must: bool, ready: impl Fn() -> bool) {
    let start = Instant::now();
    loop {
        if ready() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} ended ({status}) before it could be killed");
        }
        if start.elapsed() > limit {
            assert!(!must, "{what}: not at the point to kill it after {limit:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "{what} ended ({status}) before it was killed"
    );
}

fn count_files(dir: &Path, ext: Option<&str>) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter(|de| {
                let p = de.as_ref().unwrap().path();
                ext.is_none_or(|x| p.extension().is_some_and(|e| e == x))
            })
            .count()
        })
        .unwrap_or(0)
}

/// About 200 MB: four large random files and a few hundred small ones.
fn big_source(dir: &Path) {
    sh(&format!(
        "set -e; mkdir -p {0}/small && cd {0} && for i in 1 2 3 4; do head -c 48M /dev/urandom > big$i; done \
         && for i in $(seq 1 300); do head -c $((i * 97)) /dev/urandom > small/f$i; done",
        q(dir)
    ));
}

#[test]
fn a_commit_killed_halfway_changes_nothing_and_the_next_one_works() {
    let first = Env::new();
    let second = Env::new();
    let big = first.path("big");
    big_source(&big);
    for (moment, env) in [("early", &first), ("late", &second)] {
        let base = env.path("base");
        sh(&format!(
            "mkdir -p {0}/etc && echo base > {0}/etc/motd",
            q(&base)
        ));
        let prev = env.commit("os", &base);
        let tmp = env.repo.join("objects/tmp");
        let packs = env.repo.join("objects/packs");
        let idx_before = count_files(&packs, Some("idx"));
        let mut child = spawn(env, &["commit", "-c", "os", big.to_str().unwrap()]);
        let what = format!("commit killed {moment}");
        match moment {
            // As soon as it has started writing a pack.
            "early" => kill_when(&mut child, &what, Duration::from_millis(300), false, || {
                count_files(&tmp, None) > 0
            }),
            // Once two full packs (128 MiB of the 200) are stored, which nothing refers to yet.
            _ => kill_when(&mut child, &what, Duration::from_secs(60), true, || {
                count_files(&packs, Some("idx")) >= idx_before + 2
            }),
        }
        env.fsck_ok();
        let log = env.json(&["log", "--channel", "os"]);
        let versions: Vec<&str> = log[0]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["commit"].as_str().unwrap())
            .collect();
        assert_eq!(versions, [prev.as_str()], "{what}: the channel moved");
        let moves = env.json(&["channel", "log", "os"]);
        assert_eq!(moves.as_array().unwrap().len(), 1, "{what}: {moves:#}");

        let id = env.commit("os", &big);
        let show = env.json(&["show", &id]);
        assert_eq!(show["parent"], prev.as_str());
        let out = env.path("out");
        env.ok(&["checkout", &id, out.to_str().unwrap()]);
        // The checkout verified every chunk it read; fsck ran above.
        assert_same_tree(&big, &out);
        assert_eq!(count_files(&tmp, None), 0, "{what}: leftovers stayed");
    }
}

/// A source of one 96 MiB file `x` whose first 32 MiB are the whole of `a/x`: a commit of it
/// killed once its first 64 MiB pack is stored leaves a pack that a later commit of `a` uses
/// in part, so gc has to rewrite it.
fn gc_sources(dir: &Path) -> (PathBuf, PathBuf) {
    let (x, a) = (dir.join("x"), dir.join("a"));
    sh(&format!(
        "set -e; mkdir -p {0} {1} && head -c 32M /dev/urandom > {1}/x && cp -p {1}/x {0}/x \
         && head -c 64M /dev/urandom >> {0}/x && touch -r {1}/x {0}/x",
        q(&x),
        q(&a)
    ));
    (x, a)
}

/// Commits BASE, then kills a commit of X once a pack is stored, then commits A; returns the
/// two commits that were made.
fn leave_garbage(env: &Env, base: &Path, x: &Path, a: &Path) -> (String, String) {
    let c0 = env.commit("os", base);
    let packs = env.repo.join("objects/packs");
    let before = count_files(&packs, Some("idx"));
    let mut child = spawn(env, &["commit", "-c", "os", x.to_str().unwrap()]);
    kill_when(
        &mut child,
        "commit of x",
        Duration::from_secs(60),
        true,
        || count_files(&packs, Some("idx")) > before,
    );
    let c1 = env.commit("os", a);
    (c0, c1)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|de| de.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn gc_removes_what_a_killed_commit_left_and_nothing_else() {
    let env = Env::new();
    let base = env.path("base");
    sample_tree(&base);
    let (x, a) = gc_sources(env.dir.path());
    let (c0, c1) = leave_garbage(&env, &base, &x, &a);
    let packs = env.repo.join("objects/packs");
    let before = dir_bytes(&packs);
    let gc = env.json(&["gc"]);
    let after = dir_bytes(&packs);
    assert!(gc["removed_objects"].as_u64().unwrap() > 0, "{gc:#}");
    assert_eq!(gc["rewritten_packs"], 1, "{gc:#}");
    assert_eq!(
        gc["freed_bytes"].as_u64().unwrap(),
        before - after,
        "freed_bytes should be what the packs shrank by: {gc:#}"
    );
    // The 32 MiB of x that a does not have are gone.
    assert!(before - after > 30 << 20, "{before} -> {after}");
    env.fsck_ok();
    for (id, src) in [(&c0, &base), (&c1, &a)] {
        let out = env.path(&format!("out-{id}"));
        env.ok(&["checkout", id, out.to_str().unwrap()]);
        assert_same_tree(src, &out);
    }
    let again = env.json(&["gc"]);
    assert_eq!(again["removed_objects"], 0, "{again:#}");
    assert_eq!(again["freed_bytes"], 0, "{again:#}");
}

#[test]
fn gc_killed_at_any_moment_leaves_a_valid_repository() {
    let sources = tempfile::tempdir().unwrap();
    let (x, a) = gc_sources(sources.path());
    let base = sources.path().join("base");
    sh(&format!(
        "mkdir -p {0}/etc && echo base > {0}/etc/motd",
        q(&base)
    ));
    let mut interrupted = 0;
    // A gc here takes about 60 ms: these fall before it writes, while it copies the live
    // objects, while it syncs, and around when it removes the old pack.
    for delay in [3, 20, 40, 50, 60] {
        let env = Env::new();
        let (_, c1) = leave_garbage(&env, &base, &x, &a);
        let mut child = spawn(&env, &["gc"]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            interrupted += 1;
        } else {
            assert!(status.success(), "gc failed on its own: {status}");
        }
        env.fsck_ok();
        let out = env.path("out");
        env.ok(&["checkout", &c1, out.to_str().unwrap()]);
        assert_same_tree(&a, &out);
        // The next gc finishes the work: no pack without its index, no temporary file.
        env.ok(&["gc"]);
        env.fsck_ok();
        let packs = env.repo.join("objects/packs");
        assert_eq!(
            count_files(&packs, Some("pack")),
            count_files(&packs, Some("idx")),
            "a pack without an index after gc killed at {delay} ms"
        );
        assert_eq!(count_files(&env.repo.join("objects/tmp"), None), 0);
        let again = env.json(&["gc"]);
        assert_eq!(again["removed_objects"], 0, "{again:#}");
    }
    assert!(interrupted > 0, "gc always finished before it was killed");
}

#[test]
fn bad_channel_names_are_refused() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!("mkdir -p {0} && echo x > {0}/x", q(&src)));
    env.commit("os", &src);
    let s = src.to_str().unwrap();
    for name in [
        "../x", "a b", "/abs", "a/../b", ".hidden", "x~1", "", "a//b",
    ] {
        let commands: [&[&str]; 5] = [
            &["commit", "-c", name, s],
            &["channel", "set", name, "os"],
            &["channel", "log", name],
            &["log", "--channel", name],
            &["cherry-pick", "os", "--onto", name],
        ];
        for args in commands {
            let err = env.fails(args);
            assert!(
                err.contains(&format!("{name:?} is not a valid channel name")),
                "semithin {args:?}:\n{err}"
            );
        }
    }
    assert_eq!(
        env.json(&["channel", "list"]),
        serde_json::json!([{"channel": "os", "head": env.json(&["show", "os"])["commit"]}])
    );
    let logs = sh(&format!(
        "cd {} && find . -name '*.log' | LC_ALL=C sort",
        q(env.dir.path())
    ));
    assert_eq!(logs, "./repo/channels/os.log\n");
    env.fsck_ok();
}

#[test]
fn bad_references_are_refused() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!("mkdir -p {0} && echo 1 > {0}/x", q(&src)));
    env.commit("lab", &src);
    std::fs::write(src.join("x"), "2\n").unwrap();
    env.commit("lab", &src);
    std::fs::write(src.join("x"), "3\n").unwrap();
    env.commit("lab", &src);
    let moves = env.json(&["channel", "log", "lab"]);
    let cases: [(&[&str], &str); 11] = [
        (
            &["show", "nosuch"],
            r#""nosuch" matches no commit or channel"#,
        ),
        (
            &["show", "nosuch~1"],
            r#""nosuch" matches no commit or channel"#,
        ),
        (
            &["show", "lab~x"],
            r#""lab~x": "x" after ~ is not a number"#,
        ),
        (
            &["show", "lab~99"],
            r#""lab~99": history ends after 2 version(s) back"#,
        ),
        (
            &["show", "lab~3"],
            r#""lab~3": history ends after 2 version(s) back"#,
        ),
        (&["diff", "lab", "nosuch"], r#""nosuch" matches no commit"#),
        (
            &["channel", "set", "lab", "lab~99"],
            r#""lab~99": history ends"#,
        ),
        (
            &["cherry-pick", "nosuch", "--onto", "lab"],
            r#""nosuch" matches no commit"#,
        ),
        // Valid names of channels that do not exist.
        (
            &["cherry-pick", "lab", "--onto", "nochan"],
            r#"no channel named "nochan""#,
        ),
        (
            &["log", "--channel", "nochan"],
            r#"no channel named "nochan""#,
        ),
        (
            &["channel", "log", "nochan"],
            r#"no channel named "nochan""#,
        ),
    ];
    for (args, expect) in cases {
        let err = env.fails(args);
        assert!(err.contains(expect), "semithin {args:?}:\n{err}");
    }
    let dest = env.path("out");
    let err = env.fails(&["checkout", "lab~99", dest.to_str().unwrap()]);
    assert!(
        err.contains("history ends after 2 version(s) back"),
        "{err}"
    );
    assert!(!dest.exists(), "a refused checkout made {}", dest.display());
    assert_eq!(env.json(&["channel", "log", "lab"]), moves, "lab moved");
    // The last good reference still resolves.
    let first = env.json(&["show", "lab~2"]);
    assert_eq!(first["parent"], Value::Null);
}

#[test]
fn a_damaged_record_header_in_a_pack_is_reported() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.commit("os", &src);
    env.fsck_ok();
    let pack = sh(&format!(
        "ls -S {}/objects/packs/*.pack | head -1",
        q(&env.repo)
    ));
    let pack = pack.trim();
    // The first record's header starts after the 8-byte magic: change a byte of its id.
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[8 + 5] ^= 0xff;
    std::fs::write(pack, &bytes).unwrap();
    let out = env.run(&["fsck", "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["kind"] == "pack" && p["error"].as_str().unwrap().contains("record header")),
        "{v:#}"
    );
}

#[test]
fn a_command_says_it_waits_for_a_repository_another_process_holds() {
    let env = Env::new();
    let lock = env.repo.join("lock");
    // another process holds the repository for writing for a moment
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .args(["-c", "sleep 1"])
        .spawn()
        .unwrap();
    let held = || {
        !Command::new("flock")
            .arg("-n")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    let start = Instant::now();
    while !held() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = env.run(&["log"]);
    holder.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for the repository"), "{err}");
    assert!(
        err.contains("another process holds it for writing"),
        "{err}"
    );
    // free, it says nothing
    let out = env.run(&["log"]);
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
}

/// Regression: `semithin commit` of a directory 12,000 levels deep aborted with a stack overflow,
/// and names over 255 bytes or paths over 4,096 were committed though no checkout could make
/// them. Each is refused with the path named, and nothing is stored.
#[test]
fn names_and_paths_no_checkout_could_make_are_refused_at_commit() {
    let env = Env::new();
    // Deep trees are slow to make and remove on a disk: this source is in memory.
    let mem = tempfile::tempdir_in("/dev/shm").unwrap();
    let deep = mem.path().join("deep");
    sh(&format!(
        "python3 -c 'import os, sys
os.makedirs(sys.argv[1]); os.chdir(sys.argv[1])
for _ in range(12000): os.mkdir(\"a\"); os.chdir(\"a\")
open(\"f\", \"w\").write(\"x\")' {}",
        q(&deep)
    ));
    let channels = env.json(&["channel", "list"]);
    let out = env.run(&["commit", "-c", "os", deep.to_str().unwrap()]);
    sh(&format!("rm -rf {}", q(&deep)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("source {}/a/a/a/a", deep.display()))
            && err.contains("the path is longer than the 4095 bytes the kernel takes"),
        "{err}"
    );
    assert_eq!(env.json(&["channel", "list"]), channels);

    let long = env.path("long.tar");
    python_tar(&long, true, &format!("d('d'); f('d/{}')", "n".repeat(256)));
    refused(
        &env,
        &long,
        &[
            &format!("entry \"d/{}\"", "n".repeat(256)),
            "is 256 bytes long, over the 255 a file name may have",
        ],
    );
    let deep_tar = env.path("deep.tar");
    python_tar(&deep_tar, true, "f('a/' * 12000 + 'f')");
    refused(
        &env,
        &deep_tar,
        &[
            "(24001 bytes)",
            "the path is 24001 bytes long, over the 4094",
        ],
    );
    let target = env.path("target.tar");
    python_tar(&target, true, "sym('l', 't' * 5000)");
    refused(
        &env,
        &target,
        &["entry \"l\": the symlink target is 5000 bytes long"],
    );
    good_commit_still_works(&env);
}
