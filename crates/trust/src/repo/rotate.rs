//! Replacing a role's keys: a new root signed by the old root keys (and the new ones).

use super::init::{check_new_key_paths, load_root_keys, save_root_keys};
use super::*;

impl TrustRepo {
    /// Replaces the key(s) of `role` and signs a new root (version N+1) with a threshold of the
    /// old root keys (`root_key_paths`) and, for a root rotation, of the new ones too.
    ///
    /// - `root`: new root keys are written to `new_root_key_paths` (one key each, never
    ///   overwriting) before the new root is; `threshold` sets the new root threshold (default:
    ///   the old one).
    /// - an online role: its key file is replaced, and its metadata and what depends on it are
    ///   signed again with new versions (targets -> snapshot -> timestamp).
    pub fn rotate(
        &mut self,
        role: Role,
        root_key_paths: &[PathBuf],
        new_root_key_paths: &[PathBuf],
        threshold: Option<u64>,
        now: i64,
    ) -> Result<RotateReport> {
        let old_root = self.root.signed.clone();
        let old_keys = load_root_keys(&old_root, root_key_paths)?;
        let usage = |msg: &str| Error::TrustRepo {
            path: self.dir.clone(),
            reason: msg.to_owned(),
        };
        let old_rk = old_root.roles[role.name()].clone();
        let mut root = old_root.clone();
        root.version = self.next_version(Role::Root)?;
        root.expires = clock::format(now + self.config.expires.root);
        let new_keys: Vec<KeyPair>;
        let new_threshold;
        match role {
            Role::Root => {
                if new_root_key_paths.is_empty() {
                    return Err(usage(
                        "rotating the root needs --new-root-key FILE for each new root key",
                    ));
                }
                new_threshold = threshold.unwrap_or(old_rk.threshold);
                if new_threshold == 0 || new_threshold > new_root_key_paths.len() as u64 {
                    return Err(usage(&format!(
                        "root threshold {new_threshold} with {} new root key file(s): it must be 1..={0}",
                        new_root_key_paths.len()
                    )));
                }
                check_new_key_paths(new_root_key_paths)?;
                new_keys = new_root_key_paths
                    .iter()
                    .map(|_| KeyPair::generate())
                    .collect::<Result<_>>()?;
            }
            _ => {
                if !new_root_key_paths.is_empty() {
                    return Err(usage(
                        "--new-root-key is only for `rotate root`; an online role's new key is \
                         kept in the repository",
                    ));
                }
                if threshold.is_some_and(|t| t != 1) {
                    return Err(usage("online roles have one key and threshold 1"));
                }
                new_threshold = 1;
                new_keys = vec![KeyPair::generate()?];
            }
        }
        // Swap the role's keys in the root; drop old keys no other role uses.
        root.roles.insert(
            role.name().to_owned(),
            role_keys(
                new_keys.iter().map(|k| k.id.clone()).collect(),
                new_threshold,
            ),
        );
        for k in &new_keys {
            root.keys.insert(k.id.clone(), k.public.clone());
        }
        let used: BTreeSet<&String> = root.roles.values().flat_map(|r| &r.keyids).collect();
        root.keys.retain(|id, _| used.contains(id));
        // Signed by the old root keys and, when the root role changes, the new ones.
        let mut signers: Vec<&KeyPair> = old_keys.iter().collect();
        if role == Role::Root {
            signers.extend(new_keys.iter());
        }
        let new_root = sign(Role::Root, &root, &signers)?;
        check_signed(Role::Root, &new_root, &old_root)
            .and_then(|()| check_signed(Role::Root, &new_root, &new_root.signed))
            .map_err(|e| Error::invalid("root", format!("self-check failed: {e}")))?;

        // Re-sign what depends on the rotated key, with the new key.
        let mut pending = Pending {
            root: Some(new_root),
            ..Default::default()
        };
        if role != Role::Root {
            let others: Vec<Role> = Role::ONLINE.into_iter().filter(|r| *r != role).collect();
            let others = self.online_keys(&others)?;
            let mut keys: BTreeMap<Role, &KeyPair> = others.iter().map(|(r, k)| (*r, k)).collect();
            keys.insert(role, &new_keys[0]);
            self.renew(&mut pending, role, &keys, now)?;
        }
        self.self_check(&pending)?;

        // Write: new keys first (so no root ever names a key we could lose), then metadata.
        self.clean_tmp()?;
        self.repair_root_copy()?;
        let dir = self.dir.clone();
        let l = Layout(&dir);
        let pending_key = (role != Role::Root).then(|| l.new_key(role));
        if role == Role::Root {
            save_root_keys(&new_keys, new_root_key_paths)?;
        } else if let Some(p) = &pending_key {
            write_atomic(&l.tmp(), p, &new_keys[0].file_bytes(), 0o600)?;
        }
        let root_only = Pending {
            root: pending.root.take(),
            ..Default::default()
        };
        let mut written = self.write(root_only)?;
        if let Some(p) = &pending_key {
            let dest = l.key(role);
            std::fs::rename(p, &dest).map_err(Error::io("renaming into", &dest))?;
            sync_dir(&l.keys())?;
        }
        written.extend(self.write(pending)?);
        let new_key_files: Vec<PathBuf> = if role == Role::Root {
            new_root_key_paths.to_vec()
        } else {
            vec![self.layout().key(role)]
        };
        Ok(RotateReport {
            role: role.name().into(),
            old_keyids: old_rk.keyids,
            new_keys: new_keys
                .iter()
                .zip(new_key_files)
                .map(|(k, file)| KeyReport {
                    role: role.name().into(),
                    keyid: k.id.clone(),
                    file,
                })
                .collect(),
            threshold: new_threshold,
            written,
        })
    }
}
