//! TUF metadata (specification 1.0): the four top-level roles and delegated targets roles, in
//! their JSON form. Unknown fields are kept where the specification allows them, so metadata
//! written by other implementations verifies and round-trips.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cjson;
use crate::clock;
use crate::error::{Error, Result};

/// The specification version we write; we read any 1.x.
pub const SPEC_VERSION: &str = "1.0.31";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    pub public: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A public key as metadata lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Which keys sign a role, and how many signatures it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    #[serde(default)]
    pub consistent_snapshot: bool,
    pub version: u64,
    pub expires: String,
    pub keys: BTreeMap<String, Key>,
    pub roles: BTreeMap<String, RoleKeys>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A metadata file as the timestamp and snapshot roles describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A target file: its length and hashes, and anything the repository adds in `custom`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u64,
    #[serde(default)]
    pub terminating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Succinct hash bin delegations (TAP 15): `2^bit_length` roles named `NAME_PREFIX-HEX`, all
/// with the same keys and threshold; a target path belongs to the bin numbered by the first
/// `bit_length` bits of its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    pub keyids: Vec<String>,
    pub threshold: u64,
    pub bit_length: u32,
    pub name_prefix: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SuccinctRoles {
    /// Hex digits of a bin number.
    fn suffix_len(&self) -> usize {
        format!("{:x}", (1u64 << self.bit_length) - 1).len()
    }

    /// The bin role a target path is delegated to.
    pub fn role_for(&self, path: &str) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(path.as_bytes());
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let bin = u64::from(first) >> (32 - self.bit_length);
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            bin,
            width = self.suffix_len()
        )
    }

    /// Whether `role` is one of the bins.
    pub fn delegates(&self, role: &str) -> bool {
        role.strip_prefix(&self.name_prefix)
            .and_then(|r| r.strip_prefix('-'))
            .filter(|s| s.len() == self.suffix_len() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .is_some_and(|bin| bin < (1u64 << self.bit_length))
    }
}

/// Delegations of a targets role: a list of roles with their paths, or succinct hash bins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Delegations {
    /// The keys and threshold of a role these delegations delegate to, if they do.
    pub fn role_keys(&self, name: &str) -> Option<RoleKeys> {
        let (keyids, threshold) = match (&self.roles, &self.succinct_roles) {
            (Some(roles), _) => {
                let r = roles.iter().find(|r| r.name == name)?;
                (r.keyids.clone(), r.threshold)
            }
            (None, Some(s)) if s.delegates(name) => (s.keyids.clone(), s.threshold),
            _ => return None,
        };
        Some(RoleKeys {
            keyids,
            threshold,
            extra: Default::default(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What every role's signed part has.
pub trait RoleMeta: DeserializeOwned + Serialize {
    const TYPE: &'static str;
    fn spec_version(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> &str;
    fn kind(&self) -> &str;
    /// Checks beyond the common fields.
    fn check(&self, _role: &str) -> Result<()> {
        Ok(())
    }
}

macro_rules! role_meta {
    ($t:ty, $name:literal $(, $check:item)?) => {
        impl RoleMeta for $t {
            const TYPE: &'static str = $name;
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
            fn kind(&self) -> &str {
                &self.kind
            }
            $($check)?
        }
    };
}

role_meta!(
    Root,
    "root",
    fn check(&self, role: &str) -> Result<()> {
        for name in ["root", "timestamp", "snapshot", "targets"] {
            let r = self
                .roles
                .get(name)
                .ok_or_else(|| Error::invalid(role, format!("no {name} role")))?;
            check_threshold(role, name, r.threshold)?;
        }
        if let Some(extra) = self
            .roles
            .keys()
            .find(|r| !["root", "timestamp", "snapshot", "targets"].contains(&r.as_str()))
        {
            return Err(Error::invalid(
                role,
                format!("unknown top-level role {extra:?}"),
            ));
        }
        Ok(())
    }
);
role_meta!(
    Timestamp,
    "timestamp",
    fn check(&self, role: &str) -> Result<()> {
        if self.meta.len() != 1 || !self.meta.contains_key("snapshot.json") {
            return Err(Error::invalid(
                role,
                "meta must describe exactly snapshot.json",
            ));
        }
        Ok(())
    }
);
role_meta!(
    Snapshot,
    "snapshot",
    fn check(&self, role: &str) -> Result<()> {
        if !self.meta.contains_key("targets.json") {
            return Err(Error::invalid(role, "meta does not describe targets.json"));
        }
        Ok(())
    }
);
role_meta!(
    Targets,
    "targets",
    fn check(&self, role: &str) -> Result<()> {
        if let Some(d) = &self.delegations {
            if d.roles.is_some() == d.succinct_roles.is_some() {
                return Err(Error::invalid(
                    role,
                    "delegations need exactly one of roles and succinct_roles",
                ));
            }
            if let Some(s) = &d.succinct_roles {
                check_threshold(role, &s.name_prefix, s.threshold)?;
                if !(1..=32).contains(&s.bit_length) {
                    return Err(Error::invalid(
                        role,
                        format!("succinct_roles bit_length {} is not 1 to 32", s.bit_length),
                    ));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for r in d.roles.iter().flatten() {
                if !seen.insert(&r.name) {
                    return Err(Error::invalid(
                        role,
                        format!("delegated role {:?} listed twice", r.name),
                    ));
                }
                if ["root", "timestamp", "snapshot", "targets"].contains(&r.name.as_str()) {
                    return Err(Error::invalid(
                        role,
                        format!("a delegation may not be named {:?}", r.name),
                    ));
                }
                check_threshold(role, &r.name, r.threshold)?;
                if r.paths.is_some() == r.path_hash_prefixes.is_some() {
                    return Err(Error::invalid(
                        role,
                        format!(
                            "delegated role {:?} needs exactly one of paths and path_hash_prefixes",
                            r.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
);

fn check_threshold(role: &str, name: &str, threshold: u64) -> Result<()> {
    if threshold == 0 {
        return Err(Error::invalid(role, format!("role {name} has threshold 0")));
    }
    Ok(())
}

/// Metadata as received: the parsed role, its signatures, the canonical bytes they sign, and
/// the bytes exactly as they came (which is what gets stored).
#[derive(Clone, Debug)]
pub struct Signed<T> {
    pub signed: T,
    pub signatures: Vec<Signature>,
    pub canonical: Vec<u8>,
    pub raw: Vec<u8>,
}

impl<T: RoleMeta> Signed<T> {
    /// Parses metadata of role `role` (a role name, for messages) and checks its shape.
    pub fn parse(role: &str, bytes: &[u8]) -> Result<Self> {
        let perr = |reason: String| Error::Parse {
            role: role.to_owned(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| perr(e.to_string()))?;
        let Value::Object(mut top) = v else {
            return Err(perr("not a JSON object".into()));
        };
        let signed_v = top
            .remove("signed")
            .ok_or_else(|| perr("no \"signed\" object".into()))?;
        let sigs_v = top
            .remove("signatures")
            .ok_or_else(|| perr("no \"signatures\" list".into()))?;
        let canonical =
            cjson::to_vec(&signed_v).map_err(|e| perr(format!("not canonicalisable: {e}")))?;
        let signatures: Vec<Signature> =
            serde_json::from_value(sigs_v).map_err(|e| perr(format!("signatures: {e}")))?;
        let signed: T = serde_json::from_value(signed_v).map_err(|e| perr(e.to_string()))?;
        if signed.kind() != T::TYPE {
            return Err(Error::invalid(
                role,
                format!("_type is {:?}, expected {:?}", signed.kind(), T::TYPE),
            ));
        }
        // As python-tuf: MAJOR.MINOR or MAJOR.MINOR.PATCH, digits only, and major version 1.
        let parts: Vec<&str> = signed.spec_version().split('.').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Error::invalid(
                role,
                format!(
                    "spec_version {:?} is not MAJOR.MINOR[.PATCH]",
                    signed.spec_version()
                ),
            ));
        }
        if parts[0] != "1" {
            return Err(Error::invalid(
                role,
                format!("spec_version {} is not 1.x", signed.spec_version()),
            ));
        }
        if signed.version() == 0 {
            return Err(Error::invalid(role, "version 0"));
        }
        if clock::parse(signed.expires()).is_none() {
            return Err(Error::invalid(
                role,
                format!("expires {:?} is not YYYY-MM-DDTHH:MM:SSZ", signed.expires()),
            ));
        }
        signed.check(role)?;
        Ok(Self {
            signed,
            signatures,
            canonical,
            raw: bytes.to_vec(),
        })
    }

    /// Expiry in seconds since the epoch (checked parseable on load).
    pub fn expires_at(&self) -> i64 {
        clock::parse(self.signed.expires()).unwrap_or(i64::MIN)
    }
}

/// Builds the signed JSON bytes of a role from its parts (for writing metadata).
pub fn envelope<T: Serialize>(signed: &T, signatures: &[Signature]) -> Result<Vec<u8>> {
    let v = serde_json::json!({ "signatures": signatures, "signed": signed });
    let mut out = serde_json::to_vec_pretty(&v).map_err(|e| Error::Parse {
        role: "metadata".into(),
        reason: e.to_string(),
    })?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(bit_length: u32) -> SuccinctRoles {
        SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length,
            name_prefix: "bin".into(),
            extra: Default::default(),
        }
    }

    #[test]
    fn succinct_roles_bin_paths_by_their_hash() {
        // The cases of tuf-conformance's succinct roles traversal test.
        for (bit_length, path, bin) in [
            (1, "boo", "bin-0"),
            (1, "too", "bin-1"),
            (2, "foo", "bin-0"),
            (2, "doo", "bin-1"),
            (2, "too", "bin-2"),
            (2, "bar", "bin-3"),
            (8, "bar", "bin-fc"),
        ] {
            assert_eq!(bins(bit_length).role_for(path), bin, "{bit_length} {path}");
        }
        assert_eq!(bins(12).role_for("bar").len(), "bin-".len() + 3);
        let b = bins(8);
        assert!(b.delegates("bin-00") && b.delegates("bin-ff"));
        for not in [
            "bin-0", "bin-100", "bin-fg", "bin-+f", "bin00", "other-00", "bin-",
        ] {
            assert!(!b.delegates(not), "{not}");
        }
        assert!(bins(32).delegates("bin-ffffffff"));
    }

    #[test]
    fn root_with_an_unknown_top_level_role_is_refused() {
        let role = serde_json::json!({"keyids": [], "threshold": 1});
        let mut root = serde_json::json!({"_type": "root", "spec_version": "1.0.31",
            "consistent_snapshot": true, "version": 1, "expires": "2030-01-01T00:00:00Z",
            "keys": {}, "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role}});
        let bytes = |v: &serde_json::Value| envelope(v, &[]).unwrap();
        assert!(Signed::<Root>::parse("root", &bytes(&root)).is_ok());
        root["roles"]["mirror"] = role.clone();
        let e = Signed::<Root>::parse("root", &bytes(&root))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown top-level role \"mirror\""), "{e}");
    }
}
