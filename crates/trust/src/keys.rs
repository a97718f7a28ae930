//! ed25519 keys: key ids, verification with `verify_strict` and thresholds (each key counted
//! once, however many key ids or signatures name it), and signing keys in files.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cjson;
use crate::error::{Error, Result};
use crate::metadata::{Key, KeyVal, RoleKeys, RoleMeta, Signature, Signed};

/// The key id TUF reference implementations give a key: SHA-256 of its canonical JSON.
pub fn key_id(key: &Key) -> String {
    hex::encode(Sha256::digest(
        cjson::to_vec(key).expect("keys are canonical JSON"),
    ))
}

/// The ed25519 public key of a metadata key, when it is one.
fn ed25519(key: &Key) -> Option<VerifyingKey> {
    if key.keytype != "ed25519" || key.scheme != "ed25519" {
        return None;
    }
    let mut b = [0u8; 32];
    hex::decode_to_slice(&key.keyval.public, &mut b).ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Checks that `signed` carries at least `rk.threshold` valid signatures by distinct keys of
/// `rk.keyids`. Signatures by unknown keys, by keys of unsupported types, and repeated
/// signatures are ignored, never counted.
pub fn verify<T: RoleMeta>(
    role: &str,
    signed: &Signed<T>,
    keys: &BTreeMap<String, Key>,
    rk: &RoleKeys,
) -> Result<()> {
    let mut counted: HashSet<[u8; 32]> = HashSet::new();
    let authorised: HashSet<&str> = rk.keyids.iter().map(String::as_str).collect();
    for sig in &signed.signatures {
        if !authorised.contains(sig.keyid.as_str()) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid).and_then(ed25519) else {
            continue;
        };
        if counted.contains(key.as_bytes()) {
            continue;
        }
        let Ok(bytes) = hex::decode(&sig.sig) else {
            continue;
        };
        let Ok(s) = ed25519_dalek::Signature::from_slice(&bytes) else {
            continue;
        };
        if key.verify_strict(&signed.canonical, &s).is_ok() {
            counted.insert(*key.as_bytes());
        }
    }
    if (counted.len() as u64) < rk.threshold {
        return Err(Error::Threshold {
            role: role.to_owned(),
            valid: counted.len(),
            threshold: rk.threshold,
        });
    }
    Ok(())
}

/// A signing key, as kept in a key file (JSON, mode 0600).
pub struct KeyPair {
    signing: SigningKey,
    pub public: Key,
    pub id: String,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keytype: String,
    scheme: String,
    public: String,
    private: String,
}

impl KeyPair {
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::KeyFile {
            path: "(new key)".into(),
            reason: format!("no randomness: {e}"),
        })?;
        Ok(Self::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let public = Key {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(signing.verifying_key().as_bytes()),
                extra: Default::default(),
            },
            extra: Default::default(),
        };
        let id = key_id(&public);
        Self {
            signing,
            public,
            id,
        }
    }

    pub fn sign(&self, canonical: &[u8]) -> Signature {
        Signature {
            keyid: self.id.clone(),
            sig: hex::encode(self.signing.sign(canonical).to_bytes()),
        }
    }

    /// The content of this key's key file (it holds the private key).
    pub fn file_bytes(&self) -> Vec<u8> {
        let kf = KeyFile {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            public: self.public.keyval.public.clone(),
            private: hex::encode(self.signing.to_bytes()),
        };
        serde_json::to_vec_pretty(&kf).expect("key file serialises")
    }

    /// Writes the key to a new file readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = self.file_bytes();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(Error::io("creating key file", path))?;
        f.write_all(&text).map_err(Error::io("writing", path))?;
        f.sync_all().map_err(Error::io("syncing", path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::KeyFile {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(Error::io("reading key file", path))?;
        let kf: KeyFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if kf.keytype != "ed25519" || kf.scheme != "ed25519" {
            return Err(bad("only ed25519 keys are supported".into()));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&kf.private, &mut seed)
            .map_err(|_| bad("private key is not 64 hex digits".into()))?;
        let pair = Self::from_seed(seed);
        if pair.public.keyval.public != kf.public {
            return Err(bad("public key does not match the private key".into()));
        }
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Timestamp, envelope};

    fn timestamp(signers: &[&KeyPair]) -> Signed<Timestamp> {
        let t = serde_json::json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "meta": {"snapshot.json": {"version": 1}}});
        let canonical = cjson::to_vec(&t).unwrap();
        let sigs: Vec<_> = signers.iter().map(|k| k.sign(&canonical)).collect();
        Signed::parse("timestamp", &envelope(&t, &sigs).unwrap()).unwrap()
    }

    #[test]
    fn threshold_counts_each_key_once() {
        let (a, b) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
        let mut keys = BTreeMap::new();
        keys.insert(a.id.clone(), a.public.clone());
        keys.insert(b.id.clone(), b.public.clone());
        // The same key under a second key id.
        keys.insert("alias".into(), a.public.clone());
        let rk = |ids: &[&str], threshold| RoleKeys {
            keyids: ids.iter().map(|s| s.to_string()).collect(),
            threshold,
            extra: Default::default(),
        };
        let two = rk(&[&a.id, &b.id, "alias"], 2);
        assert!(verify("timestamp", &timestamp(&[&a, &b]), &keys, &two).is_ok());
        // a's signature twice does not make two.
        assert!(verify("timestamp", &timestamp(&[&a, &a]), &keys, &two).is_err());
        let mut aliased = timestamp(&[&a]);
        let mut again = aliased.signatures[0].clone();
        again.keyid = "alias".into();
        aliased.signatures.push(again);
        assert!(matches!(
            verify("timestamp", &aliased, &keys, &two),
            Err(Error::Threshold { valid: 1, .. })
        ));
        // A key not authorised for the role does not count.
        assert!(verify("timestamp", &timestamp(&[&a, &b]), &keys, &rk(&[&a.id], 2)).is_err());
        // A tampered payload fails.
        let mut t = timestamp(&[&a, &b]);
        t.canonical[10] ^= 1;
        assert!(verify("timestamp", &t, &keys, &two).is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyPair::generate().unwrap();
        let p = d.path().join("k.json");
        k.save(&p).unwrap();
        assert_eq!(KeyPair::load(&p).unwrap().id, k.id);
        assert!(k.save(&p).is_err(), "a key file is never overwritten");
    }
}
