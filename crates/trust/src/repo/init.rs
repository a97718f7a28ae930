//! Making a trust directory: root keys, online keys and version 1 of every role.

use super::*;

/// Loads root keys from files and checks they are root keys of `root`, enough of them for its
/// threshold. Errors name the file.
pub(super) fn load_root_keys(root: &Root, paths: &[PathBuf]) -> Result<Vec<KeyPair>> {
    let rk = &root.roles["root"];
    let mut out: Vec<KeyPair> = Vec::new();
    for p in paths {
        let k = KeyPair::load(p)?;
        if !rk.keyids.contains(&k.id) {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: format!(
                    "key {} is not a root key of this repository (root version {})",
                    k.id, root.version
                ),
            });
        }
        if !out.iter().any(|o| o.id == k.id) {
            out.push(k);
        }
    }
    if (out.len() as u64) < rk.threshold {
        return Err(Error::invalid(
            "root",
            format!(
                "{} distinct root key(s) given ({}), the root threshold is {}: pass more \
                 --root-key files",
                out.len(),
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                rk.threshold
            ),
        ));
    }
    Ok(out)
}

/// Refuses paths where new root key files cannot go.
pub(super) fn check_new_key_paths(paths: &[PathBuf]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for p in paths {
        if !seen.insert(p) {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: "given twice".into(),
            });
        }
        if p.symlink_metadata().is_ok() {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: "already exists; a key file is never overwritten".into(),
            });
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: format!("directory {} does not exist", parent.display()),
            });
        }
    }
    Ok(())
}

/// Writes new root keys to the admin's files; on failure removes the ones written.
pub(super) fn save_root_keys(keys: &[KeyPair], paths: &[PathBuf]) -> Result<()> {
    for (i, (k, p)) in keys.iter().zip(paths).enumerate() {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Err(e) = k.save(p).and_then(|()| sync_dir(parent)) {
            for q in &paths[..i] {
                let _ = std::fs::remove_file(q);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Makes a new trust directory at `dir`: root keys (written to `root_key_paths`, one key each,
/// never overwriting), the online keys, the settings file, and version 1 of every role (an empty
/// targets role). The directory appears at once, complete, or not at all.
pub fn init(
    dir: &Path,
    root_key_paths: &[PathBuf],
    threshold: u64,
    now: i64,
) -> Result<InitReport> {
    let refuse = |reason: String| Error::TrustRepo {
        path: dir.to_owned(),
        reason,
    };
    if dir.symlink_metadata().is_ok() {
        return Err(refuse(
            "already exists: trust is set up; use `semithin trust rotate` to change keys".into(),
        ));
    }
    if root_key_paths.is_empty() {
        return Err(refuse("no root key file given".into()));
    }
    if threshold == 0 || threshold > root_key_paths.len() as u64 {
        return Err(refuse(format!(
            "root threshold {threshold} with {} root key file(s): it must be 1..={0}",
            root_key_paths.len()
        )));
    }
    check_new_key_paths(root_key_paths)?;
    let config = Config::default();
    let root_keys = root_key_paths
        .iter()
        .map(|_| KeyPair::generate())
        .collect::<Result<Vec<_>>>()?;
    let online: BTreeMap<Role, KeyPair> = Role::ONLINE
        .into_iter()
        .map(|r| KeyPair::generate().map(|k| (r, k)))
        .collect::<Result<_>>()?;

    let mut all_keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for k in &root_keys {
        all_keys.insert(k.id.clone(), k.public.clone());
    }
    roles.insert(
        "root".to_owned(),
        role_keys(root_keys.iter().map(|k| k.id.clone()).collect(), threshold),
    );
    for (r, k) in &online {
        all_keys.insert(k.id.clone(), k.public.clone());
        roles.insert(r.name().to_owned(), role_keys(vec![k.id.clone()], 1));
    }
    let root = Root {
        kind: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: 1,
        expires: clock::format(now + config.expires.root),
        keys: all_keys,
        roles,
        extra: Default::default(),
    };
    let root_signers: Vec<&KeyPair> = root_keys.iter().collect();
    let root = sign(Role::Root, &root, &root_signers)?;
    check_signed(Role::Root, &root, &root.signed)?;
    let targets = Targets {
        kind: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: clock::format(now + config.expires.targets),
        targets: BTreeMap::new(),
        delegations: None,
        extra: Default::default(),
    };
    let targets = sign(Role::Targets, &targets, &[&online[&Role::Targets]])?;
    let (snapshot, timestamp) = snapshot_and_timestamp(
        &config,
        now,
        &targets,
        1,
        &online[&Role::Snapshot],
        1,
        &online[&Role::Timestamp],
    )?;
    for (role, ok) in [
        (
            Role::Targets,
            check_signed(Role::Targets, &targets, &root.signed),
        ),
        (
            Role::Snapshot,
            check_signed(Role::Snapshot, &snapshot, &root.signed),
        ),
        (
            Role::Timestamp,
            check_signed(Role::Timestamp, &timestamp, &root.signed),
        ),
    ] {
        ok.map_err(|e| Error::invalid(role.name(), format!("self-check failed: {e}")))?;
    }

    // Build the whole directory under a staging name beside it, then rename it into place.
    let parent = dir.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.init.tmp",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if staging.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&staging).map_err(Error::io("removing leftover", &staging))?;
    }
    let result = (|| -> Result<()> {
        let l = Layout(&staging);
        std::fs::create_dir(&staging).map_err(Error::io("creating", &staging))?;
        for d in [l.metadata(), l.targets(), l.tmp()] {
            std::fs::create_dir(&d).map_err(Error::io("creating", &d))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(l.keys())
            .map_err(Error::io("creating", l.keys()))?;
        for (r, k) in &online {
            write_atomic(&l.tmp(), &l.key(*r), &k.file_bytes(), 0o600)?;
        }
        write_atomic(
            &l.tmp(),
            &staging.join(CONFIG_FILE),
            Config::default_text().as_bytes(),
            0o644,
        )?;
        let m = l.metadata();
        write_atomic(&l.tmp(), &m.join("1.root.json"), &root.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("root.json"), &root.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("1.targets.json"), &targets.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("1.snapshot.json"), &snapshot.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("timestamp.json"), &timestamp.raw, 0o644)?;
        // channel assignments are signed from the start (repo/assign.rs)
        TrustRepo::open(&staging)?.enable_assignments(now)?;
        sync_dir(&staging)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = save_root_keys(&root_keys, root_key_paths) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&staging, dir) {
        let _ = std::fs::remove_dir_all(&staging);
        for p in root_key_paths {
            let _ = std::fs::remove_file(p);
        }
        return Err(Error::io("renaming into", dir)(e));
    }
    sync_dir(parent)?;
    let l = Layout(dir);
    Ok(InitReport {
        dir: dir.to_owned(),
        root_keys: root_keys
            .iter()
            .zip(root_key_paths)
            .map(|(k, p)| KeyReport {
                role: "root".into(),
                keyid: k.id.clone(),
                file: p.clone(),
            })
            .collect(),
        root_threshold: threshold,
        online_keys: online
            .iter()
            .map(|(r, k)| KeyReport {
                role: r.name().into(),
                keyid: k.id.clone(),
                file: l.key(*r),
            })
            .collect(),
    })
}
