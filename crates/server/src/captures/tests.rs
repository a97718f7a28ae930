//! Captures as a machine uploads them and the admin reads them, on an in-process server.

use serde_json::Value;

use super::*;
use crate::testkit::TestServer;

/// A tar.zst of these (path, content) files, with a whiteout `etc/motd`.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, *data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0);
    h.set_size(0);
    h.set_device_major(0).unwrap();
    h.set_device_minor(0).unwrap();
    b.append_data(&mut h, "etc/motd", std::io::empty()).unwrap();
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

fn check(bytes: &[u8], max: u64) -> std::result::Result<Checked, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.tar.zst");
    std::fs::write(&p, bytes).unwrap();
    check_archive(&p, max)
}

#[test]
fn an_archive_is_read_through_before_it_is_kept() {
    let good = archive(&[("etc/hostname", b"lab\n")]);
    let c = check(&good, 1 << 20).unwrap();
    assert_eq!(c.entries, 2);
    assert!(c.unpacked >= 1024, "{c:?}");
    // cut short: the zstd stream or the tar ends early
    let e = check(&good[..good.len() - 8], 1 << 20).unwrap_err();
    assert!(!e.is_empty());
    // not zstd at all
    let e = check(b"this is not a capture", 1 << 20).unwrap_err();
    assert!(e.contains("zstd") || e.contains("Unknown frame"), "{e}");
    // over the unpacked bound
    let big = archive(&[("etc/big", &[0u8; 10_000][..])]);
    let e = check(&big, 4096).unwrap_err();
    assert!(e.contains("more than the 4096 bytes"), "{e}");
    // a path that leaves the layer
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let bad = zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap();
    let e = check(&bad, 1 << 20).unwrap_err();
    assert!(e.contains("`..`"), "{e}");
}

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap().to_owned()
}

/// Files under DATA/captures (uploads in progress included).
fn files(s: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.data.join("captures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_are_stored_listed_fetched_bounded_and_deleted() {
    let s = TestServer::start(|c| {
        c.captures_keep = 2;
        c.capture_max_bytes = 64 << 10;
    })
    .await;
    let t = s.token(true).await;
    let key = s.enroll(&t, "m1").await;
    let up = |body: Vec<u8>| {
        let key = &key;
        let s = &s;
        async move {
            s.signed(key, "POST", "/api/v1/machines/capture", &body)
                .await
        }
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = archive(&[("etc/hostname", format!("lab-{i}\n").as_bytes())]);
        let (st, body) = up(a.clone()).await;
        assert_eq!(st, 200, "{body}");
        let info: CaptureInfo = serde_json::from_str(&body).unwrap();
        assert_eq!(info.machine, "m1");
        assert_eq!(info.size, a.len() as u64);
        assert_eq!(info.hash, blake3::hash(&a).to_hex().as_str());
        assert_eq!(info.entries, 2);
        ids.push(info.id);
    }
    // the oldest went: two kept, each with its file
    let (st, list) = s
        .admin("GET", "/api/v1/admin/captures?machine=m1", None)
        .await;
    assert_eq!(st, 200, "{list}");
    let listed: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [ids[2], ids[1]]);
    assert_eq!(files(&s).len(), 2, "{:?}", files(&s));
    let (st, _) = s
        .admin("GET", &format!("/api/v1/admin/captures/{}", ids[0]), None)
        .await;
    assert_eq!(st, 404);
    // fetched as sent
    let r = s
        .client
        .get(s.at(&format!("/api/v1/admin/captures/{}/archive", ids[2])))
        .bearer_auth(crate::testkit::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(&got[..], &archive(&[("etc/hostname", b"lab-2\n")])[..]);

    // damaged, too large, unsigned, signed over another body: refused, nothing kept
    let before = s.count("SELECT COUNT(*) FROM captures").await;
    let good = archive(&[("etc/hostname", b"lab\n")]);
    let (st, body) = up(good[..good.len() / 2].to_vec()).await;
    assert_eq!(st, 400, "{body}");
    assert!(
        error_of(&body).contains("the capture is not a valid tar.zst"),
        "{body}"
    );
    let (st, body) = up(vec![1u8; 100 << 10]).await;
    assert_eq!(st, 413, "{body}");
    assert!(error_of(&body).contains("capture_max_bytes"), "{body}");
    let r = s
        .client
        .post(s.at("/api/v1/machines/capture"))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let mut rb = s
        .client
        .post(s.at("/api/v1/machines/capture"))
        .body(good.clone());
    for (k, v) in key.sign(
        "POST",
        "/api/v1/machines/capture",
        semithin_protocol::sign::Counter::new().next_now(),
        b"another body",
    ) {
        rb = rb.header(k, v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("does not verify"));
    assert_eq!(s.count("SELECT COUNT(*) FROM captures").await, before);
    assert_eq!(files(&s).len(), 2, "{:?}", files(&s));

    // larger than the server's limit of other bodies (max_body): its own bound applies
    let mut noise = vec![0u8; 2 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let large = archive(&[("var/lib/foo/blob", &noise[..])]);
    assert!(large.len() > 1 << 20);
    let s2 = TestServer::start(|c| c.max_body_bytes = 1 << 20).await;
    let t2 = s2.token(true).await;
    let k2 = s2.enroll(&t2, "m2").await;
    let (st, body) = s2
        .signed(&k2, "POST", "/api/v1/machines/capture", &large)
        .await;
    assert_eq!(st, 200, "{body}");
    s2.stop().await;

    // an unknown id, a bad id, then a delete
    let (st, v) = s.admin("GET", "/api/v1/admin/captures/999", None).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("no capture 999")));
    let (st, v) = s.admin("GET", "/api/v1/admin/captures/x1", None).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s
        .admin("GET", "/api/v1/admin/captures?machine=nobody", None)
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s
        .admin(
            "DELETE",
            &format!("/api/v1/admin/captures/{}", ids[1]),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(files(&s).len(), 1);
    s.stop().await;
}
