//! Keys: key ids, verification and thresholds (each key counted once, however many key ids or
//! signatures name it), and signing keys in files.
//!
//! semithin signs with ed25519 only, and verifies it with `verify_strict`. To read metadata made
//! by other TUF implementations, verification also knows the specification's other key types:
//! ECDSA on P-256 (`ecdsa` or `ecdsa-sha2-nistp256` keys, PEM public keys, DER signatures) and
//! RSA (`rsa` keys in PEM, schemes `rsassa-pss-sha256|384|512` and `rsa-pkcs1v15-sha256|384|512`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::cjson;
use crate::error::{Error, Result};
use crate::metadata::{Key, KeyVal, RoleKeys, RoleMeta, Signature, Signed};

/// The key id TUF reference implementations give a key: SHA-256 of its canonical JSON.
pub fn key_id(key: &Key) -> String {
    hex::encode(Sha256::digest(
        cjson::to_vec(key).expect("keys are canonical JSON"),
    ))
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// A public key this library can verify signatures with.
enum PublicKey {
    Ed25519(VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    RsaPss(rsa::RsaPublicKey, Hash),
    RsaPkcs1(rsa::RsaPublicKey, Hash),
}

impl PublicKey {
    /// The key of a metadata key entry, when its type and scheme are supported and its value
    /// parses.
    fn of(key: &Key) -> Option<Self> {
        let public = key.keyval.public.as_str();
        let rsa = || rsa::RsaPublicKey::from_public_key_pem(public).ok();
        let hash = |s: &str| match s {
            "sha256" => Some(Hash::Sha256),
            "sha384" => Some(Hash::Sha384),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        };
        match (key.keytype.as_str(), key.scheme.as_str()) {
            ("ed25519", "ed25519") => {
                let mut b = [0u8; 32];
                hex::decode_to_slice(public, &mut b).ok()?;
                VerifyingKey::from_bytes(&b).ok().map(Self::Ed25519)
            }
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                    .ok()
                    .map(Self::P256)
            }
            ("rsa", scheme) => {
                if let Some(h) = scheme.strip_prefix("rsassa-pss-") {
                    Some(Self::RsaPss(rsa()?, hash(h)?))
                } else if let Some(h) = scheme.strip_prefix("rsa-pkcs1v15-") {
                    Some(Self::RsaPkcs1(rsa()?, hash(h)?))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// What identifies the key itself, whatever key id or scheme names it.
    fn identity(&self) -> Vec<u8> {
        use rsa::traits::PublicKeyParts;
        match self {
            Self::Ed25519(k) => [b"ed25519:".as_slice(), k.as_bytes()].concat(),
            Self::P256(k) => [b"p256:".as_slice(), k.to_encoded_point(true).as_bytes()].concat(),
            Self::RsaPss(k, _) | Self::RsaPkcs1(k, _) => [
                b"rsa:".as_slice(),
                &k.n().to_bytes_be(),
                b":",
                &k.e().to_bytes_be(),
            ]
            .concat(),
        }
    }

    fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match self {
            Self::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
            Self::P256(k) => {
                p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            Self::RsaPkcs1(k, h) => {
                let Ok(s) = rsa::pkcs1v15::Signature::try_from(sig) else {
                    return false;
                };
                let k = k.clone();
                match h {
                    Hash::Sha256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k).verify(msg, &s),
                    Hash::Sha384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(k).verify(msg, &s),
                    Hash::Sha512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(k).verify(msg, &s),
                }
                .is_ok()
            }
            Self::RsaPss(k, h) => {
                // The salt is as long as the digest (securesystemslib, python-tuf) or as long
                // as the key allows (Go's default): both are accepted.
                use rsa::traits::PublicKeyParts;
                let Ok(s) = rsa::pss::Signature::try_from(sig) else {
                    return false;
                };
                let h_len = match h {
                    Hash::Sha256 => 32,
                    Hash::Sha384 => 48,
                    Hash::Sha512 => 64,
                };
                let em_len = (k.n().bits() - 1).div_ceil(8);
                let max_salt = em_len.saturating_sub(h_len + 2);
                [h_len, max_salt].into_iter().any(|salt| {
                    let k = k.clone();
                    match h {
                        Hash::Sha256 => {
                            rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(k, salt)
                                .verify(msg, &s)
                        }
                        Hash::Sha384 => {
                            rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(k, salt)
                                .verify(msg, &s)
                        }
                        Hash::Sha512 => {
                            rsa::pss::VerifyingKey::<Sha512>::new_with_salt_len(k, salt)
                                .verify(msg, &s)
                        }
                    }
                    .is_ok()
                })
            }
        }
    }
}

/// Checks that `signed` carries at least `rk.threshold` valid signatures by distinct keys of
/// `rk.keyids`. Signatures by unknown keys, by keys of unsupported types, invalid signatures and
/// repeated signatures are ignored, never counted. A key id may sign only once (specification
/// section 4.2): metadata whose signatures name a key id twice is refused even when it reaches
/// the threshold.
pub fn verify<T: RoleMeta>(
    role: &str,
    signed: &Signed<T>,
    keys: &BTreeMap<String, Key>,
    rk: &RoleKeys,
) -> Result<()> {
    let mut counted: HashSet<Vec<u8>> = HashSet::new();
    let authorised: HashSet<&str> = rk.keyids.iter().map(String::as_str).collect();
    for sig in &signed.signatures {
        if !authorised.contains(sig.keyid.as_str()) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid).and_then(PublicKey::of) else {
            continue;
        };
        let id = key.identity();
        if counted.contains(&id) {
            continue;
        }
        let Ok(bytes) = hex::decode(&sig.sig) else {
            continue;
        };
        if key.verifies(&signed.canonical, &bytes) {
            counted.insert(id);
        }
    }
    if (counted.len() as u64) < rk.threshold {
        return Err(Error::Threshold {
            role: role.to_owned(),
            valid: counted.len(),
            threshold: rk.threshold,
        });
    }
    let mut ids = HashSet::new();
    if let Some(dup) = signed.signatures.iter().find(|s| !ids.insert(&s.keyid)) {
        return Err(Error::invalid(
            role,
            format!("key id {} signs more than once", dup.keyid),
        ));
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
        // A key id signing twice is refused even when the threshold is met.
        assert!(matches!(
            verify("timestamp", &timestamp(&[&a, &a]), &keys, &rk(&[&a.id], 1)),
            Err(Error::Invalid { .. })
        ));
        // A key not authorised for the role does not count.
        assert!(verify("timestamp", &timestamp(&[&a, &b]), &keys, &rk(&[&a.id], 2)).is_err());
        // A tampered payload fails.
        let mut t = timestamp(&[&a, &b]);
        t.canonical[10] ^= 1;
        assert!(verify("timestamp", &t, &keys, &two).is_err());
    }

    /// Checks `sig` (hex) over `msg` by `key` with `verify`, threshold 1.
    fn verifies_with(key: Key, msg: &[u8], sig: &str) -> bool {
        let t = serde_json::json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "meta": {"snapshot.json": {"version": 1}}});
        let mut signed: Signed<Timestamp> =
            Signed::parse("timestamp", &envelope(&t, &[]).unwrap()).unwrap();
        signed.canonical = msg.to_vec();
        signed.signatures = vec![Signature {
            keyid: "k".into(),
            sig: sig.into(),
        }];
        let keys = BTreeMap::from([("k".to_string(), key)]);
        let rk = RoleKeys {
            keyids: vec!["k".into()],
            threshold: 1,
            extra: Default::default(),
        };
        verify("timestamp", &signed, &keys, &rk).is_ok()
    }

    fn key(keytype: &str, scheme: &str, public: &str) -> Key {
        Key {
            keytype: keytype.into(),
            scheme: scheme.into(),
            keyval: KeyVal {
                public: public.into(),
                extra: Default::default(),
            },
            extra: Default::default(),
        }
    }

    #[test]
    fn ecdsa_p256_signatures_verify_whatever_half_s_is_in() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let sk = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let msg = b"{\"semithin\":\"test\"}";
        let sig: p256::ecdsa::Signature = sk.sign(msg);
        let (r, s) = sig.split_scalars();
        let other_half = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        for keytype in ["ecdsa", "ecdsa-sha2-nistp256"] {
            let k = || key(keytype, "ecdsa-sha2-nistp256", &pem);
            for sig in [sig, other_half] {
                let der = hex::encode(sig.to_der().as_bytes());
                assert!(verifies_with(k(), msg, &der));
                assert!(!verifies_with(k(), b"{}", &der));
            }
            assert!(!verifies_with(k(), msg, ""));
            assert!(!verifies_with(k(), msg, "3045022100"));
        }
        assert!(!verifies_with(
            key("ecdsa", "ecdsa-sha2-nistp384", &pem),
            msg,
            &hex::encode(sig.to_der().as_bytes())
        ));
    }

    /// A 2048-bit key and its signatures, made with Python's cryptography.
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5YZSurU2WX7mYjoMlcEt\n/Zn80u6pXxt2x2Atog0oIwe/dGK3+YlZD1cD8VBgYgTI/eeohTd/gxjVonTcerUg\nyL/8V6qpdfI9x1PjY9633PY7jMj/cGs/9Yq96txRbVHpo51jt7LKWZz2U6dgYlpp\nbNhR9FYjugZsOlXE2n/lOZOZui8CYA8/fu2SQ9tzn6x0hk1mLClGANE0f+HoAtv0\ncZ0cM7E5TMsrufzBML/6MEL9YAtqJRU+6rtV3vX+3c2hdr+62vq8Pk9sRx05F+ag\nRwg8UhI9Icvah1HSk8XuexLvoTcdN43jBjDmF6eTfmCtXK2gGpQF4wiok8Je3w+p\nfwIDAQAB\n-----END PUBLIC KEY-----\n";
    const RSA_MSG: &[u8] = b"{\"semithin\":\"test vector\"}";
    /// PSS, salt as long as the digest (securesystemslib's signers).
    const RSA_PSS: &str = "1c0acf4c0abe8649d312b257c6c678673bbc77c3a2f0e141699c5e78adafb1d6049b3012cd7fda70f055a8ec497ad490538e3d8b4bf24a73c8cc70bb872904432eb22ae4dc0d2a427faaa02f6782e5a5f6943626bc2b90db98c58c57178f7dfd843a71e84a3db2b5bd29b600d8bc1c83bb5564996b3cdfcf8df05ea7091d11154baa3a3eccefc8a30f64ba2f35c919975e63c9b7f85fa2eb5545e286fd3996e8c01009d32a7cb96091995092bba6c6cef35eb07bc637e7040ea091a86c8f05f1758df38430b5ed8160e42e75fe23335e84cf7105dfcc4f79bc8cac9b88c5c909ff5c8376821c8718ec203b503dfa90c7ef05dce5ece18c1b285e7e2ab8323a89";
    /// PSS, salt as long as the key allows.
    const RSA_PSS_MAX: &str = "927758ea37842441e054bddfbe1e583c20cc62283c50b7401fa4b2bb851306299c6bf86c7fa0dcf9e976b2f50321ec1b594ec53ad782c358568ef963470d38997a8f2062c7fd924ca24a23c3406b79adcec8262f9dc4f4370f2ef96323fcff2da4eb6df8e3a55155d25f5cc39177588d792b0bc61548f6b09846a7af93d1d8801c847707c0332797c0ec8b248539fe747d6dac7b36832735f57f412fa04ec320bf8156697be4ee6808d35ca1f0ea5f6d6694efe138a7658352d978836b115188366f5fe30e6addef794099a4cb4469ebc04c8cc590f1ccf10e50d18b4302759850f7219c6c666e34be96a9c34cfbe11a1801e43804a9b4859aee68043e087d65";
    const RSA_PKCS1: &str = "84bad91867c9705dc562345f63f18c7aec51d69038316037f6a9264397035efd716543b9b8b163032143de60e0ddd24e7d9da8648433d0182b383408ed2867b48c12bb907dcaa4b27d8451340ea002c7594e2a0e33d79036076e37f179dd3f938e60bffd3b4e2fe4dc4ab4628168c2683cddc765b086a8510a1b76a0115f02ad550c670faf1511e3d6a0a08dfca4f681021eb8d46ea828065e26138692d64e0e8f8328fcef3ade6dffd7c586c82d7f8f4be429403a0d55eb5dfb872868f48392ea18dca026c4457f0265704ecd9110e07845c8c99aabdfe588de18d6cc8894091a6103dc4f0346d5705c7b8135306fd69aaa39aa2aede518fb31cbaba141a810";

    #[test]
    fn rsa_signatures_verify_with_their_scheme_only() {
        let pss = || key("rsa", "rsassa-pss-sha256", RSA_PUBLIC);
        let pkcs1 = || key("rsa", "rsa-pkcs1v15-sha256", RSA_PUBLIC);
        assert!(verifies_with(pss(), RSA_MSG, RSA_PSS));
        assert!(verifies_with(pss(), RSA_MSG, RSA_PSS_MAX));
        assert!(verifies_with(pkcs1(), RSA_MSG, RSA_PKCS1));
        assert!(!verifies_with(pss(), RSA_MSG, RSA_PKCS1));
        assert!(!verifies_with(pkcs1(), RSA_MSG, RSA_PSS));
        assert!(!verifies_with(pss(), b"{}", RSA_PSS));
        assert!(!verifies_with(pkcs1(), b"{}", RSA_PKCS1));
        assert!(!verifies_with(pss(), RSA_MSG, RSA_PSS.get(2..).unwrap()));
        assert!(!verifies_with(pss(), RSA_MSG, ""));
        assert!(!verifies_with(
            key("rsa", "rsassa-pss-md5", RSA_PUBLIC),
            RSA_MSG,
            RSA_PSS
        ));
        assert!(!verifies_with(
            key("rsa", "rsassa-pss-sha256", "not a key"),
            RSA_MSG,
            RSA_PSS
        ));
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
