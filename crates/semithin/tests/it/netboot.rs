//! Boot artifacts signed at publish and served (docs/BOOT.md, "Boot artifacts"; docs/PROTOCOL.md,
//! "Boot artifacts and network boot"), without booting anything: the targets `publish` signs,
//! the files it keeps, the `/api/v1/boot` and `/boot` routes with their ranges and bad input,
//! and `semithin live fetch` against a real server (what the initrd of a live boot runs).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{BIN, q, sh};
use crate::fleet::Server;

/// A small tree with a "kernel" (`boot/vmlinuz-1.0` with its modules directory) and no
/// initramfs-tools: publish makes a kernel and a squashfs, and says why there is no initrd.
pub(crate) fn kernel_tree(dir: &Path, tag: &str) {
    sh(&format!(
        "set -e; mkdir -p {d}/boot {d}/usr/lib/modules/1.0/kernel {d}/etc {d}/usr/bin; \
         head -c 300000 /dev/urandom > {d}/boot/vmlinuz-1.0; \
         printf 'tree %s\\n' {tag} > {d}/etc/tag; \
         head -c 200000 /dev/urandom > {d}/usr/bin/prog",
        d = q(dir),
        tag = q(Path::new(tag))
    ));
}

/// The newest signed targets of the server's repository.
pub(crate) fn targets(s: &Server) -> Value {
    let m = s.repo().join("trust/metadata");
    let newest = std::fs::read_dir(&m)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            let v: u64 = n.strip_suffix(".targets.json")?.parse().ok()?;
            Some(v)
        })
        .max()
        .unwrap();
    let t: Value =
        serde_json::from_slice(&std::fs::read(m.join(format!("{newest}.targets.json"))).unwrap())
            .unwrap();
    t["signed"]["targets"].clone()
}

/// The kept file of a signed artifact (`REPO/boot/SHA256`) and its target.
pub(crate) fn artifact(s: &Server, release: &str, name: &str) -> (PathBuf, Value) {
    let t = targets(s)[format!("boot/{release}/{name}")].clone();
    assert!(t.is_object(), "no target boot/{release}/{name}");
    let sha = t["hashes"]["sha256"].as_str().unwrap();
    (s.repo().join("boot").join(sha), t)
}

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum {}", q(p)))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A GET without credentials: (status, headers, body).
pub(crate) fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let c = reqwest::blocking::Client::new();
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().unwrap().to_vec())
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error"].as_str().unwrap_or("").to_owned()
}

fn commit(s: &Server, src: &Path, channel: &str) -> String {
    let out = s.ok(&[
        "commit",
        src.to_str().unwrap(),
        "--channel",
        channel,
        "--new-channel",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["commit"].as_str().unwrap().to_owned()
}

#[test]
fn publish_signs_the_boot_artifacts_of_a_release_with_a_kernel_and_keeps_them_by_content() {
    let s = Server::start();
    let src = s.path("src");
    kernel_tree(&src, "a");
    let id = commit(&s, &src, "lab/a");
    let out = s.cli(&["publish", "lab/a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("with 2 boot artifacts signed as boot/{id}/*")),
        "{text}"
    );
    // progress on the long steps, and why there is no initrd
    assert!(err.contains("making the squashfs"), "{err}");
    assert!(
        err.contains("no initrd: the image has no initramfs-tools"),
        "{err}"
    );

    let t = targets(&s);
    assert!(t["channels/lab/a"].is_object());
    assert!(t[format!("boot/{id}/initrd.img")].is_null(), "{t:#}");
    let (kernel, kt) = artifact(&s, &id, "vmlinuz");
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        std::fs::read(src.join("boot/vmlinuz-1.0")).unwrap()
    );
    assert_eq!(kt["length"], 300000);
    assert_eq!(kt["custom"]["kernel_version"], "1.0");
    let (sq, st) = artifact(&s, &id, "root.squashfs");
    assert_eq!(st["hashes"]["sha256"], sha256(&sq));
    assert_eq!(st["length"], std::fs::metadata(&sq).unwrap().len());
    assert_eq!(
        st["custom"]["blake3"],
        blake3::hash(&std::fs::read(&sq).unwrap()).to_hex().as_str()
    );
    let listing = sh(&format!("unsquashfs -l {} | sort", q(&sq)));
    assert!(listing.contains("squashfs-root/etc/tag"), "{listing}");

    // Published again (the channel on another name): made before, kept, signed the same.
    s.ok(&["channel", "set", "lab/b", &id]);
    let out = s.cli(&["publish", "lab/b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("made before, kept"), "{err}");
    assert_eq!(targets(&s)[format!("boot/{id}/root.squashfs")], st);
    // A kept file damaged: made again rather than signed over.
    sh(&format!(
        "printf X | dd of={} bs=1 seek=100 conv=notrunc status=none",
        q(&sq)
    ));
    let err = String::from_utf8_lossy(&s.cli(&["publish", "lab/b"]).stderr).into_owned();
    assert!(err.contains("making the squashfs"), "{err}");
    assert_eq!(sha256(&sq), st["hashes"]["sha256"].as_str().unwrap());

    // --boot never signs none; --boot always refuses a release without a kernel.
    let plain = s.path("plain");
    sh(&format!(
        "mkdir -p {p}/etc; echo x > {p}/etc/x",
        p = q(&plain)
    ));
    let pid = commit(&s, &plain, "lab/plain");
    let out = s.cli(&["publish", "lab/plain", "--boot", "always"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--boot always: the release has no kernel to boot"),
        "{err}"
    );
    assert!(targets(&s)["channels/lab/plain"].is_null());
    s.ok(&["publish", "lab/plain"]);
    let t = targets(&s);
    assert!(t["channels/lab/plain"].is_object());
    assert!(t[format!("boot/{pid}/vmlinuz")].is_null());
    kernel_tree(&plain, "with kernel");
    let kid = commit(&s, &plain, "lab/plain");
    s.ok(&["publish", "lab/plain", "--boot", "never"]);
    assert!(targets(&s)[format!("boot/{kid}/vmlinuz")].is_null());

    // Both channels that named `id` move on to a release of their own: its boot targets leave
    // the signed metadata at the publish, and gc removes their files (the new ones stay).
    let boot_dir = sq.parent().unwrap().to_owned();
    let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
    assert!(files(&boot_dir) >= 2);
    let mut new_ids = Vec::new();
    for (ch, tag) in [("lab/a", "a2"), ("lab/b", "b2")] {
        let src = s.path(tag);
        kernel_tree(&src, tag);
        new_ids.push(commit(&s, &src, ch));
        s.ok(&["publish", ch]);
    }
    let t = targets(&s);
    assert!(t[format!("boot/{id}/vmlinuz")].is_null(), "{t:#}");
    assert!(t[format!("boot/{id}/root.squashfs")].is_null(), "{t:#}");
    let out: Value = serde_json::from_str(&s.ok(&["gc", "--json"])).unwrap();
    assert!(out["removed_boot_files"].as_u64().unwrap() >= 1, "{out}");
    assert!(
        !sq.exists(),
        "the squashfs of a release nothing names is still there"
    );
    for n in &new_ids {
        let (f, _) = artifact(&s, n, "root.squashfs");
        assert!(f.is_file());
        let (k, _) = artifact(&s, n, "vmlinuz");
        assert!(k.is_file());
    }
    let out: Value = serde_json::from_str(&s.ok(&["gc", "--json"])).unwrap();
    assert_eq!(out["removed_boot_files"], 0, "{out}");
}

#[test]
fn boot_routes_serve_ranges_and_refuse_bad_paths_names_macs_and_ranges() {
    let s = Server::start_args(&["--netboot"]);
    let src = s.path("src");
    kernel_tree(&src, "a");
    let id = commit(&s, &src, "lab/a");
    s.ok(&["publish", "lab/a"]);
    let (kernel, _) = artifact(&s, &id, "vmlinuz");
    let want = std::fs::read(&kernel).unwrap();
    let u = |p: &str| format!("{}{p}", s.url);

    // Whole, from an offset, past the end; an If-Range naming another version gets it whole.
    let (st, h, body) = get(&u(&format!("/boot/{id}/vmlinuz")), &[]);
    assert_eq!(st, 200);
    assert_eq!(body, want);
    assert_eq!(h["accept-ranges"], "bytes");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let (st, h, body) = get(
        &u(&format!("/boot/{id}/vmlinuz")),
        &[("range", "bytes=1000-"), ("if-range", &etag)],
    );
    assert_eq!(st, 206);
    assert_eq!(body, want[1000..]);
    assert_eq!(
        h["content-range"],
        format!("bytes 1000-{}/{}", want.len() - 1, want.len()).as_str()
    );
    let (st, _, body) = get(
        &u(&format!("/boot/{id}/vmlinuz")),
        &[("range", "bytes=1000-"), ("if-range", "\"other\"")],
    );
    assert_eq!((st, body.len()), (200, want.len()));
    let past = format!("bytes={}-", want.len() + 1);
    let (st, _, body) = get(&u(&format!("/boot/{id}/vmlinuz")), &[("range", &past)]);
    assert_eq!(st, 416);
    assert!(
        error_of(&body).contains(&format!(
            "the artifact has {} bytes; a range from {} is past its end",
            want.len(),
            want.len() + 1
        )),
        "{}",
        error_of(&body)
    );

    // Bad names and paths: clear errors, nothing served.
    let other = "ab".repeat(32);
    for (path, status, says) in [
        (
            format!("/boot/{id}/passwd"),
            400,
            "\"passwd\" is not a boot artifact",
        ),
        (
            format!("/boot/{id}/..%2f..%2fadmin-token"),
            400,
            "is not a boot artifact",
        ),
        (
            "/boot/not-a-release/vmlinuz".to_owned(),
            400,
            "is not a release",
        ),
        (
            format!("/boot/{}/vmlinuz", id.to_uppercase()),
            400,
            "is not a release",
        ),
        (
            format!("/boot/{other}/vmlinuz"),
            404,
            "has no signed boot artifact vmlinuz",
        ),
        (
            format!("/boot/{id}/initrd.img"),
            404,
            "has no signed boot artifact initrd.img",
        ),
        (
            "/boot/ipxe/mac/52:54:00:12:34".to_owned(),
            400,
            "is not a MAC address",
        ),
        (
            "/boot/ipxe/mac/52:54:00:12:34:zz".to_owned(),
            400,
            "is not a MAC address",
        ),
        (
            "/boot/ipxe/mac/..%2f..%2fx".to_owned(),
            400,
            "is not a MAC address",
        ),
        (
            "/boot/metadata/..%2fadmin-token".to_owned(),
            400,
            "bad metadata file name",
        ),
        (
            "/boot/metadata/root.key".to_owned(),
            400,
            "bad metadata file name",
        ),
        (
            "/boot/metadata/99.root.json".to_owned(),
            404,
            "no such file",
        ),
    ] {
        let (st, _, body) = get(&u(&path), &[]);
        assert_eq!(st, status, "{path}: {}", error_of(&body));
        assert!(
            error_of(&body).contains(says),
            "{path}: {}",
            error_of(&body)
        );
    }

    // The signed route: machines and the admin only.
    let (st, _, body) = get(&u(&format!("/api/v1/boot/{id}/vmlinuz")), &[]);
    assert_eq!(st, 401, "{}", error_of(&body));
    let auth = format!("Bearer {}", s.token);
    let (st, _, body) = get(
        &u(&format!("/api/v1/boot/{id}/vmlinuz")),
        &[("authorization", &auth), ("range", "bytes=7-")],
    );
    assert_eq!((st, &body[..]), (206, &want[7..]));

    // iPXE: the first script chains by MAC; an unknown MAC without a default gets a menu.
    let (st, _, body) = get(&u("/boot/ipxe"), &[]);
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(
        text,
        format!("#!ipxe\nchain {}/boot/ipxe/mac/${{net0/mac}}\n", s.url)
    );
    let (st, _, body) = get(&u("/boot/ipxe/mac/52-54-00-12-34-56"), &[]);
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("52:54:00:12:34:56 is not a machine of the fleet"),
        "{text}"
    );
    // lab/a has no initrd: nothing to offer
    assert!(
        text.contains("no published channel has a kernel to boot"),
        "{text}"
    );
    let (st, _, _) = get(&u("/boot/metadata/timestamp.json"), &[]);
    assert_eq!(st, 200);
    assert!(s.stats()["boot_bytes_sent"].as_u64().unwrap() >= want.len() as u64);

    // Without --netboot the public namespace is not there.
    let plain = Server::start();
    for p in [
        "/boot/ipxe",
        "/boot/metadata/timestamp.json",
        &format!("/boot/{id}/vmlinuz"),
    ] {
        let (st, _, body) = get(&format!("{}{p}", plain.url), &[]);
        assert_eq!(st, 404, "{p}");
        assert!(
            error_of(&body).contains("network boot is off"),
            "{p}: {}",
            error_of(&body)
        );
    }
}

/// `semithin live fetch` as the initrd runs it.
fn live_fetch(s: &Server, channel: &str, cache: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["live", "fetch", "--server", &s.url, "--channel", channel])
        .arg("--trusted-root")
        .arg(s.root_json())
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn live_fetch_verifies_the_squashfs_fetches_a_damaged_copy_again_and_resumes() {
    let s = Server::start_args(&["--netboot"]);
    let src = s.path("src");
    kernel_tree(&src, "a");
    let id = commit(&s, &src, "live/a");
    s.ok(&["publish", "live/a"]);
    let (sq, st) = artifact(&s, &id, "root.squashfs");
    let good = std::fs::read(&sq).unwrap();
    let sha = st["hashes"]["sha256"].as_str().unwrap();
    let cache = s.path("cache");
    let booted = s.path("booted");

    let out = live_fetch(
        &s,
        "live/a",
        &cache,
        &["--release-file", booted.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let path = cache.join("squashfs").join(sha);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path.to_str().unwrap()
    );
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert!(
        err.contains(&format!(
            "squashfs of release {} verified",
            id.get(..12).unwrap()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&booted).unwrap().trim(), id);

    // Cached and whole: not fetched again.
    let before = s.stats()["boot_bytes_sent"].as_u64().unwrap();
    let out = live_fetch(&s, "live/a", &cache, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not fetched again"));
    assert_eq!(s.stats()["boot_bytes_sent"].as_u64().unwrap(), before);

    // Damaged in the cache: fetched again.
    sh(&format!(
        "printf XXXX | dd of={} bs=1 seek=5000 conv=notrunc status=none",
        q(&path)
    ));
    let out = live_fetch(&s, "live/a", &cache, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the cached squashfs does not verify (sha256"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), good);

    // Half downloaded: resumed from where it stopped, only the rest sent.
    std::fs::remove_file(&path).unwrap();
    let half = good.len() / 2;
    std::fs::write(
        cache.join("squashfs").join(format!("{sha}.part")),
        &good[..half],
    )
    .unwrap();
    let before = s.stats()["boot_bytes_sent"].as_u64().unwrap();
    let out = live_fetch(&s, "live/a", &cache, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("resuming at byte {half}")), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let sent = s.stats()["boot_bytes_sent"].as_u64().unwrap() - before;
    assert_eq!(sent, (good.len() - half) as u64);

    // Offline (no server, or one that cannot be reached): the cached squashfs, verified against
    // the metadata the last fetch verified, again from the trust root.
    let offline = |server: Option<&str>| {
        let mut c = std::process::Command::new(BIN);
        c.args(["live", "fetch", "--channel", "live/a"])
            .arg("--trusted-root")
            .arg(s.root_json())
            .arg("--cache")
            .arg(&cache);
        if let Some(u) = server {
            c.args(["--server", u]);
        }
        c.output().unwrap()
    };
    let dead = format!("http://127.0.0.1:{}", crate::fleet::free_port());
    for server in [None, Some(dead.as_str())] {
        let out = offline(server);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("verified offline against the metadata verified at"),
            "{err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            path.to_str().unwrap()
        );
    }
    // ... but never a damaged one, nor with metadata that does not verify.
    sh(&format!(
        "printf XXXX | dd of={} bs=1 seek=5000 conv=notrunc status=none",
        q(&path)
    ));
    let out = offline(Some(&dead));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify (sha256"), "{err}");
    assert!(err.contains("and it cannot be fetched"), "{err}");
    std::fs::write(&path, &good).unwrap();
    let targets_json = cache.join("trust/targets.json");
    let signed = std::fs::read(&targets_json).unwrap();
    std::fs::write(
        &targets_json,
        String::from_utf8_lossy(&signed).replace("live/a", "live/x"),
    )
    .unwrap();
    let out = offline(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the cached metadata does not verify"), "{err}");
    std::fs::write(&targets_json, &signed).unwrap();

    // A release the channel's target does not permit, a channel that is not signed.
    let out = live_fetch(
        &s,
        "live/a",
        &s.path("c2"),
        &["--release", &"ab".repeat(32)],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not one the signed target of channel live/a permits"),
        "{err}"
    );
    let out = live_fetch(&s, "live/none", &s.path("c3"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no channel live/none"));

    // Damaged on the server: never printed as a path, the reason said.
    std::fs::remove_file(&path).unwrap();
    let mut bad = good.clone();
    bad[4000] ^= 0xff;
    std::fs::write(&sq, &bad).unwrap();
    let out = live_fetch(&s, "live/a", &cache, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the fetched squashfs does not verify (sha256"),
        "{err}"
    );
    assert!(err.contains("never verified"), "{err}");
    assert!(!path.exists());

    // Another trust root: the metadata does not verify, nothing is fetched.
    let other = Server::start();
    let out = std::process::Command::new(BIN)
        .args(["live", "fetch", "--server", &s.url, "--channel", "live/a"])
        .arg("--trusted-root")
        .arg(other.root_json())
        .arg("--cache")
        .arg(s.path("c4"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verifying the signed metadata"), "{err}");
    assert!(!s.path("c4/squashfs").join(sha).exists());
}

#[test]
fn live_fetch_over_https_trusts_only_the_ca_it_is_given() {
    let s = Server::start_tls_args(&["--netboot"]);
    let src = s.path("src");
    kernel_tree(&src, "tls");
    let id = commit(&s, &src, "live/tls");
    s.ok(&["publish", "live/tls"]);
    let (sq, _) = artifact(&s, &id, "root.squashfs");
    let ca = s.ca.clone().unwrap();
    let cache = s.path("cache");
    let out = live_fetch(&s, "live/tls", &cache, &["--ca", ca.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(std::fs::read(path).unwrap(), std::fs::read(&sq).unwrap());
    // Without the CA nothing is trusted (an initrd has no system roots): nothing fetched.
    let out = live_fetch(&s, "live/tls", &s.path("c2"), &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verifying the signed metadata"), "{err}");
}

#[test]
fn the_live_boot_script_is_well_formed_and_runs_what_the_hook_installs() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/initramfs-tools");
    let live = base.join("scripts/semithin-live");
    let out = std::process::Command::new("sh")
        .arg("-n")
        .arg(&live)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&live).unwrap();
    // initramfs-tools' init calls these four after sourcing /scripts/${BOOT}.
    for f in [
        "mountroot()",
        "mount_top()",
        "mount_premount()",
        "mount_bottom()",
    ] {
        assert!(text.contains(&format!("\n{f} {{\n")), "{f} missing");
    }
    // The binary where the hook copies it, the trust root and CA where the hook puts them.
    let hook = std::fs::read_to_string(base.join("hooks/semithin")).unwrap();
    assert!(text.contains("/usr/lib/semithin/semithin \"$@\""), "{text}");
    assert!(hook.contains("copy_exec \"$bin\" /usr/lib/semithin/semithin\n"));
    assert!(hook.contains("for f in root.json ca.pem; do"), "{hook}");
    assert!(text.contains("--ca /etc/semithin/ca.pem"), "{text}");
    for m in ["squashfs", "loop", "overlay", "virtio_net"] {
        assert!(
            hook.contains(&format!(" {m} ")) || hook.contains(&format!(" {m};")),
            "the hook does not add {m}"
        );
    }
    // Every kernel parameter the script reads is documented.
    let doc = std::fs::read_to_string(base.join("../../docs/BOOT.md")).unwrap();
    for p in [
        "semithin.live=",
        "semithin.channel=",
        "semithin.release=",
        "semithin.cache=",
        "semithin.overlay=",
    ] {
        assert!(text.contains(&format!("{p}*)")), "{p} not parsed");
        assert!(doc.contains(&format!("`{p}")), "{p} not in docs/BOOT.md");
    }
}

#[test]
fn bad_netboot_settings_and_live_fetch_arguments_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:1", "--data"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--netboot", "--netboot-cmdline", "console=ttyS0; shell"][..],
            "';' cannot be in a kernel command line",
        ),
        (
            &["--netboot", "--netboot-cmdline", "a\nb"][..],
            "'\\n' cannot be",
        ),
        (
            &["--netboot", "--netboot-default", "../x"][..],
            "--netboot-default",
        ),
    ] {
        let out = serve(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} made the data directory"
        );
    }
    let fetch = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["live", "fetch", "--cache"])
            .arg(dir.path().join("cache"))
            .args(args)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--channel", "a", "--release", "xyz"][..],
            "--release \"xyz\" is not a release id",
        ),
        (&["--channel", "../a"][..], "--channel"),
        (
            &["--channel", "a", "--trusted-root", "/nonexistent/root.json"][..],
            "reading the trust root /nonexistent/root.json",
        ),
    ] {
        let out = fetch(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
