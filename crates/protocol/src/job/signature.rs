//! Admin signatures of job specs.
//!
//! A signature covers the canonical JSON (the OLPC form TUF signs metadata with: sorted keys, no
//! insignificant white space, integers only) of the spec's JSON value *as received*, unknown
//! fields included: [`SpecJson`] keeps that value beside the parsed [`JobSpec`]. So a verifier
//! checks what it was given, never a re-serialisation of what its own version understood, and a
//! field the signer did not sign makes the signature fail; the order of keys and white space,
//! which carry nothing, do not matter.

use std::ops::Deref;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{JobSignature, JobSpec};

/// The context of a job signature: version 2 signs canonical JSON of the spec as received
/// (version 1 signed this crate's re-serialisation of a parsed spec, and is no longer accepted).
const SIGNING_CONTEXT: &[u8] = b"semithin-job-v2";

/// A [`JobSpec`] with the JSON value it was made from or received as. It dereferences to the
/// spec; it serialises as that value, so whoever passes it on (the server, its database) passes
/// on what the admin signed, fields it does not know included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecJson {
    spec: JobSpec,
    json: Value,
}

impl SpecJson {
    /// A spec made here (the admin's tool, tests): its value is its serialisation.
    pub fn new(spec: JobSpec) -> Self {
        let json = serde_json::to_value(&spec).expect("a job spec serialises");
        Self { spec, json }
    }

    /// A spec received as `json`.
    pub fn from_value(json: Value) -> Result<Self, String> {
        if !json.is_object() {
            return Err("a job spec must be a JSON object".into());
        }
        crate::json::integers_only(&json).map_err(|e| format!("bad job spec: {e}"))?;
        let spec = JobSpec::deserialize(&json).map_err(|e| format!("bad job spec: {e}"))?;
        Ok(Self { spec, json })
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The JSON value a signature covers.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

impl utoipa::PartialSchema for SpecJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // As received and signed: the JSON of a `JobSpec` (fields it does not know kept).
        <JobSpec as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for SpecJson {}

impl Deref for SpecJson {
    type Target = JobSpec;
    fn deref(&self) -> &JobSpec {
        &self.spec
    }
}

impl Serialize for SpecJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SpecJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Value::deserialize(d)?;
        Self::from_value(json).map_err(serde::de::Error::custom)
    }
}

/// The bytes an admin signature covers: a context, a NUL, then the canonical JSON of the spec's
/// value. Fails for values canonical JSON cannot hold (floating-point numbers).
pub fn signing_input(spec: &SpecJson) -> Result<Vec<u8>, String> {
    let mut out = SIGNING_CONTEXT.to_vec();
    out.push(0);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    spec.json
        .serialize(&mut ser)
        .map_err(|e| format!("the job spec is not canonical JSON: {e}"))?;
    Ok(out)
}

/// An admin's job-signing key: the 32-byte ed25519 seed, one line of hex in its file.
pub struct AdminKey {
    key: SigningKey,
}

impl AdminKey {
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn from_file_text(text: &str) -> Result<Self, String> {
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("not a job-signing key: expected a 32-byte ed25519 seed in hex, one line")?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn file_text(&self) -> String {
        format!("{}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs the spec as it will be sent.
    pub fn sign(&self, spec: &SpecJson) -> Result<JobSignature, String> {
        Ok(self.sign_input(&signing_input(spec)?))
    }

    /// Signs bytes that begin with their own context (a variable set's, `vars::SetJson`).
    pub fn sign_input(&self, input: &[u8]) -> JobSignature {
        JobSignature {
            key: self.public_hex(),
            signature: hex::encode(self.key.sign(input).to_bytes()),
        }
    }
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public_key(hex_key: &str) -> Result<[u8; 32], String> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("bad admin public key {hex_key:?}: expected 64 hex digits"))
}

/// Checks that `sig` is a valid signature, by one of `trusted`, of the spec as received.
pub fn verify(spec: &SpecJson, sig: &JobSignature, trusted: &[[u8; 32]]) -> Result<(), String> {
    verify_input(&signing_input(spec)?, sig, trusted)
        .map_err(|e| e.replace("the signed value", "the job"))
}

/// Checks that `sig` is a valid signature, by one of `trusted`, of `input` (which begins with
/// its own context).
pub fn verify_input(input: &[u8], sig: &JobSignature, trusted: &[[u8; 32]]) -> Result<(), String> {
    let key = parse_public_key(&sig.key)?;
    if !trusted.contains(&key) {
        return Err(format!(
            "it is signed by the admin key {}, which this machine does not trust",
            sig.key
        ));
    }
    let vk = VerifyingKey::from_bytes(&key).map_err(|e| format!("bad admin key: {e}"))?;
    let bytes: [u8; 64] = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature is not 64 bytes of hex")?;
    vk.verify_strict(input, &ed25519_dalek::Signature::from_bytes(&bytes))
        .map_err(|_| {
            "the signature does not verify: the signed value is not what the admin signed".into()
        })
}

#[cfg(test)]
mod tests {
    use super::super::{Action, Delivery, Schedule};
    use super::*;

    /// Found by the job_spec fuzz target: a number past 64 bits (kept as a float by
    /// serde_json) in an unknown field did not survive a round trip unchanged. Refused at once.
    #[test]
    fn a_spec_holding_a_float_or_a_huge_number_is_refused_as_it_is_read() {
        let mut v = serde_json::to_value(spec()).unwrap();
        for bad in [
            serde_json::json!(1.5),
            serde_json::from_str::<Value>(&"2".repeat(96)).unwrap(),
            serde_json::json!({"deep": [1, 2, 0.1]}),
        ] {
            v["extra"] = bad;
            let e = SpecJson::from_value(v.clone()).unwrap_err();
            assert!(e.contains("not an integer"), "{e}");
        }
        v["extra"] = serde_json::json!(u64::MAX);
        SpecJson::from_value(v).unwrap();
    }

    fn spec() -> JobSpec {
        JobSpec {
            id: "0123456789abcdef0123456789abcdef".into(),
            action: Action::Command {
                argv: vec!["true".into()],
            },
            timeout_secs: 60,
            schedule: Schedule::default(),
            created_at: 1_000_000,
        }
    }

    /// A delivery as the agent receives it: `spec_text` is the spec's JSON as sent.
    fn received(spec_text: &str, sig: &JobSignature) -> Delivery {
        let text = format!(
            r#"{{"delivery":"0123456789abcdef0123456789abcdef","spec":{spec_text},"signature":{}}}"#,
            serde_json::to_string(sig).unwrap()
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn the_signature_covers_the_spec_as_received_not_as_reparsed() {
        let k = AdminKey::generate().unwrap();
        let trusted = [parse_public_key(&k.public_hex()).unwrap()];
        let signed = SpecJson::new(spec());
        let sig = k.sign(&signed).unwrap();
        let sent = serde_json::to_string(&signed).unwrap();

        // as sent: accepted
        let d = received(&sent, &sig);
        verify(&d.spec, &sig, &trusted).unwrap();
        // the same value with its keys in another order and other white space: accepted
        let v: serde_json::Map<String, Value> = serde_json::from_str(&sent).unwrap();
        let reordered = format!(
            "{{ {} }}",
            v.iter()
                .rev()
                .map(|(k, v)| format!("{k:?} : {v}"))
                .collect::<Vec<_>>()
                .join(" ,\n")
        );
        assert_ne!(reordered, sent);
        verify(&received(&reordered, &sig).spec, &sig, &trusted).unwrap();

        // A field the signer did not sign parses to the same spec (this version ignores it),
        // so a re-serialisation would verify; the received value does not.
        for extra in [
            r#""run_as":"root""#,
            r#""schedule_v2":{"every":"* * * * *"}"#,
            r#""at":null"#,
        ] {
            let tampered = format!("{},{extra}}}", sent.strip_suffix('}').unwrap());
            let d = received(&tampered, &sig);
            assert_eq!(d.spec.spec(), signed.spec(), "{tampered}");
            let e = verify(&d.spec, &sig, &trusted).unwrap_err();
            assert!(e.contains("does not verify"), "{tampered}: {e}");
        }
        // The same inside a nested object.
        let tampered = sent.replace(r#""type":"command""#, r#""type":"command","shell":true"#);
        assert_ne!(tampered, sent);
        let e = verify(&received(&tampered, &sig).spec, &sig, &trusted).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // A float (not canonical JSON) is refused with the reason, as the spec is read.
        let float = format!("{},\"x\":1.5}}", sent.strip_suffix('}').unwrap());
        let e = serde_json::from_str::<Delivery>(&format!(
            r#"{{"delivery":"d","spec":{float},"signature":null}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an integer"), "{e}");
    }

    #[test]
    fn fields_the_signer_signed_are_covered_even_when_this_version_ignores_them() {
        let k = AdminKey::generate().unwrap();
        let trusted = [parse_public_key(&k.public_hex()).unwrap()];
        let mut v = serde_json::to_value(spec()).unwrap();
        v["note"] = "from a newer admin tool".into();
        let newer = SpecJson::from_value(v).unwrap();
        let sig = k.sign(&newer).unwrap();
        // passed on through a server (serialised, stored, parsed again): still verifies
        let text = serde_json::to_string(&newer).unwrap();
        let again: SpecJson = serde_json::from_str(&text).unwrap();
        verify(&again, &sig, &trusted).unwrap();
        // re-made from the parsed spec alone, it no longer does
        let reparsed = SpecJson::new(again.spec().clone());
        assert!(verify(&reparsed, &sig, &trusted).is_err());
    }

    #[test]
    fn a_spec_that_is_not_an_object_is_refused() {
        assert!(serde_json::from_str::<SpecJson>("[1,2]").is_err());
        assert!(serde_json::from_str::<SpecJson>(r#"{"id":"x"}"#).is_err());
    }
}
