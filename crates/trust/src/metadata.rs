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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, Key>,
    pub roles: Vec<DelegatedRole>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
            let mut seen = std::collections::BTreeSet::new();
            for r in &d.roles {
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
