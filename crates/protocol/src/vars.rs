//! Per-machine configuration: variable sets signed by an admin key, the scopes they apply to,
//! what a check-in answer carries of them, and the facts a machine reports about itself
//! (docs/CONFIG.md).
//!
//! A variable set belongs to one scope (`global`, `channel:NAME`, `label:K=V`,
//! `machine:NAME`). The admin's tool signs each set as [`job`](crate::job) specs are signed
//! (canonical JSON of the value as received, here under the context `semithin-vars-v1`); the
//! server stores sets as received and hands a machine the sets that apply to it, lowest
//! precedence first ([`Bundle`]); the agent verifies each against the admin keys it trusts and
//! merges them in that order.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::api::BadField;
use crate::job::JobSignature;
use crate::selector::{self, Labels};

/// The context of a variable-set signature.
const SIGNING_CONTEXT: &[u8] = b"semithin-vars-v1";

/// At most this many variables in one set.
pub const MAX_VARS: usize = 256;
/// At most this many bytes of a variable's name.
pub const MAX_NAME: usize = 64;
/// At most this many bytes of one value, as compact JSON.
pub const MAX_VALUE_BYTES: usize = 16 << 10;
/// At most this many bytes of a whole set's variables, as compact JSON (an agent reads an
/// answer of at most 1 MiB, which carries all of a machine's sets).
pub const MAX_SET_BYTES: usize = 64 << 10;
/// Names a template sees beside the variables: a variable may not take them.
pub const RESERVED: &[&str] = &["facts", "machine", "semithin"];

/// Where a variable set applies; also its rank in the precedence (higher wins).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Global,
    Channel(String),
    Label(String, String),
    Machine(String),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: String| {
            Err(format!(
                "bad scope {s:?}: {why} (a scope is global, channel:NAME, label:KEY=VALUE or \
                 machine:NAME)"
            ))
        };
        if s == "global" {
            return Ok(Scope::Global);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return bad("unknown scope".into());
        };
        match kind {
            "channel" => {
                if rest.is_empty()
                    || rest.len() > 128
                    || !rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
                {
                    return bad("a channel name is 1 to 128 of A-Z a-z 0-9 - _ . /".into());
                }
                Ok(Scope::Channel(rest.to_owned()))
            }
            "label" => match selector::parse_label(rest) {
                Ok((k, v)) => Ok(Scope::Label(k, v)),
                Err(e) => bad(e.to_string()),
            },
            "machine" => match selector::check_name(rest) {
                Ok(()) => Ok(Scope::Machine(rest.to_owned())),
                Err(e) => bad(e.to_string()),
            },
            _ => bad(format!("unknown kind {kind:?}")),
        }
    }

    /// 0 global, 1 channel, 2 label, 3 machine.
    pub fn rank(&self) -> u8 {
        match self {
            Scope::Global => 0,
            Scope::Channel(_) => 1,
            Scope::Label(..) => 2,
            Scope::Machine(_) => 3,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Channel(c) => write!(f, "channel:{c}"),
            Scope::Label(k, v) => write!(f, "label:{k}={v}"),
            Scope::Machine(m) => write!(f, "machine:{m}"),
        }
    }
}

/// A variable's name: 1 to 64 of `a-z 0-9 _`, starting with a letter or `_`, not one of
/// [`RESERVED`]; so a template names it as it is (`{{ ntp_server }}`).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(format!(
            "bad variable name {name:?}: 1 to {MAX_NAME} of a-z 0-9 _, not starting with a digit"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "the variable name {name:?} is reserved (templates see the machine's facts and \
             details under {})",
            RESERVED.join(", ")
        ));
    }
    Ok(())
}

/// No floating-point number anywhere (canonical JSON holds only integers).
fn check_value(name: &str, v: &Value) -> Result<(), String> {
    let mut stack = vec![v];
    let mut seen = 0usize;
    while let Some(v) = stack.pop() {
        seen += 1;
        if seen > 100_000 {
            return Err(format!("variable {name}: too many nested values"));
        }
        match v {
            Value::Number(n) if !n.is_i64() && !n.is_u64() => {
                return Err(format!(
                    "variable {name}: {n} is not an integer (give decimals as strings)"
                ));
            }
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    let len = serde_json::to_string(v).map(|s| s.len()).unwrap_or(0);
    if len > MAX_VALUE_BYTES {
        return Err(format!(
            "variable {name}: {len} bytes; at most {MAX_VALUE_BYTES} are accepted"
        ));
    }
    Ok(())
}

/// The variables of one scope, as the admin signs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VarSet {
    /// `global`, `channel:NAME`, `label:K=V` or `machine:NAME`.
    pub scope: String,
    /// Grows with every change of the scope's set; an agent refuses a set older than one it
    /// has applied, and the server one not newer than it holds.
    pub version: u64,
    pub vars: BTreeMap<String, Value>,
}

impl VarSet {
    /// Scope, names, values and sizes; the parsed scope.
    pub fn validate(&self) -> Result<Scope, String> {
        let scope = Scope::parse(&self.scope)?;
        if self.vars.len() > MAX_VARS {
            return Err(format!(
                "{} variables in {}; at most {MAX_VARS} per scope",
                self.vars.len(),
                self.scope
            ));
        }
        for (k, v) in &self.vars {
            check_name(k)?;
            check_value(k, v)?;
        }
        let len = serde_json::to_string(&self.vars)
            .map(|s| s.len())
            .unwrap_or(0);
        if len > MAX_SET_BYTES {
            return Err(format!(
                "the variables of {} take {len} bytes; at most {MAX_SET_BYTES} per scope",
                self.scope
            ));
        }
        Ok(scope)
    }
}

/// A [`VarSet`] with the JSON value it was made from or received as (what a signature covers:
/// fields this version does not know included), as `job::SpecJson` is for job specs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetJson {
    set: VarSet,
    json: Value,
}

impl SetJson {
    pub fn new(set: VarSet) -> Self {
        let json = serde_json::to_value(&set).expect("a variable set serialises");
        Self { set, json }
    }

    pub fn from_value(json: Value) -> Result<Self, String> {
        if !json.is_object() {
            return Err("a variable set must be a JSON object".into());
        }
        crate::json::integers_only(&json).map_err(|e| format!("bad variable set: {e}"))?;
        let set = VarSet::deserialize(&json).map_err(|e| format!("bad variable set: {e}"))?;
        Ok(Self { set, json })
    }

    pub fn set(&self) -> &VarSet {
        &self.set
    }

    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The bytes a signature covers: the context, a NUL, the canonical JSON of the value.
    pub fn signing_input(&self) -> Result<Vec<u8>, String> {
        let mut out = SIGNING_CONTEXT.to_vec();
        out.push(0);
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
        self.json
            .serialize(&mut ser)
            .map_err(|e| format!("the variable set is not canonical JSON: {e}"))?;
        Ok(out)
    }
}

impl std::ops::Deref for SetJson {
    type Target = VarSet;
    fn deref(&self) -> &VarSet {
        &self.set
    }
}

impl utoipa::PartialSchema for SetJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // As received and signed: the canonical JSON of a `VarSet`.
        <VarSet as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for SetJson {}

impl Serialize for SetJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SetJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A variable set and the admin's signature of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedSet {
    pub set: SetJson,
    pub signature: JobSignature,
}

impl SignedSet {
    /// Signed by one of `trusted`, over the set as received; the set valid.
    pub fn verify(&self, trusted: &[[u8; 32]]) -> Result<Scope, String> {
        let scope = self
            .set
            .validate()
            .map_err(|e| format!("variable set {:?}: {e}", self.set.scope))?;
        crate::job::verify_input(&self.set.signing_input()?, &self.signature, trusted)
            .map_err(|e| format!("variable set {}: {e}", self.set.scope))?;
        Ok(scope)
    }

    /// Signs `set` with an admin key.
    pub fn sign(set: VarSet, key: &crate::job::AdminKey) -> Result<Self, String> {
        set.validate()?;
        let set = SetJson::new(set);
        let signature = key.sign_input(&set.signing_input()?);
        Ok(Self { set, signature })
    }
}

/// What a check-in answer carries when the machine's variables differ from what it reported
/// holding (`ConfigReport::vars_digest`): every set that applies to it, lowest precedence
/// first (global, its channel, its labels in the server's label order, itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bundle {
    /// Names this bundle; the agent reports it back once it holds the bundle.
    pub digest: String,
    pub sets: Vec<SignedSet>,
}

/// At most this many sets in a bundle.
pub const MAX_BUNDLE_SETS: usize = 128;

/// At most this many bytes of signed sets in one machine's bundle (the JSON of the sets): a
/// check-in answer must stay well within what an agent reads (1 MiB).
pub const MAX_BUNDLE_BYTES: usize = 512 << 10;

/// What the agent says of the machine's rendered configuration (`Report::config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigReport {
    /// The digest of the variable bundle the machine holds (verified), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars_digest: Option<String>,
    /// Files rendered by the last successful rendering.
    #[serde(default)]
    pub files: u32,
    /// Why the last rendering (or variable bundle) was refused; the files rendered before
    /// stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One network interface of a machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One block device of a machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What a machine reports about itself: the facts templates and selectors (`fact.NAME=VALUE`)
/// use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Facts {
    pub hostname: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub cpu_count: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmi_vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmi_product: Option<String>,
}

/// Bounds of [`Facts`].
pub mod fact_limits {
    pub const TEXT_BYTES: usize = 256;
    pub const INTERFACES: usize = 64;
    pub const ADDRESSES: usize = 32;
    pub const DISKS: usize = 64;
}

fn bad(field: String, reason: String) -> BadField {
    BadField { field, reason }
}

fn text(field: &str, s: &str) -> Result<(), BadField> {
    if s.len() > fact_limits::TEXT_BYTES {
        return Err(bad(
            field.into(),
            format!(
                "{} bytes; at most {} are accepted",
                s.len(),
                fact_limits::TEXT_BYTES
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(field.into(), "holds a control character".into()));
    }
    Ok(())
}

impl Facts {
    /// Every field within [`fact_limits`], without control characters.
    pub fn check(&self) -> Result<(), BadField> {
        use fact_limits as l;
        text("facts.hostname", &self.hostname)?;
        text("facts.cpu_model", &self.cpu_model)?;
        for (f, v) in [
            ("facts.dmi_vendor", &self.dmi_vendor),
            ("facts.dmi_product", &self.dmi_product),
        ] {
            if let Some(v) = v {
                text(f, v)?;
            }
        }
        if self.interfaces.len() > l::INTERFACES {
            return Err(bad(
                "facts.interfaces".into(),
                format!(
                    "{} interfaces; at most {}",
                    self.interfaces.len(),
                    l::INTERFACES
                ),
            ));
        }
        for (i, n) in self.interfaces.iter().enumerate() {
            text(&format!("facts.interfaces[{i}].name"), &n.name)?;
            if let Some(m) = &n.mac {
                text(&format!("facts.interfaces[{i}].mac"), m)?;
            }
            if n.addresses.len() > l::ADDRESSES {
                return Err(bad(
                    format!("facts.interfaces[{i}].addresses"),
                    format!("{} addresses; at most {}", n.addresses.len(), l::ADDRESSES),
                ));
            }
            for (j, a) in n.addresses.iter().enumerate() {
                text(&format!("facts.interfaces[{i}].addresses[{j}]"), a)?;
            }
        }
        if self.disks.len() > l::DISKS {
            return Err(bad(
                "facts.disks".into(),
                format!("{} disks; at most {}", self.disks.len(), l::DISKS),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            text(&format!("facts.disks[{i}].name"), &d.name)?;
            if let Some(m) = &d.model {
                text(&format!("facts.disks[{i}].model"), m)?;
            }
        }
        Ok(())
    }

    /// The digest the server answers (`CheckInResponse::facts_digest`): BLAKE3 of the JSON.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// The facts a selector can name (`fact.KEY=VALUE`): one value each, or several (`mac`,
    /// `ip`: any of them matches).
    pub fn flat(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut m: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        m.insert("hostname", vec![self.hostname.clone()]);
        m.insert("cpu_model", vec![self.cpu_model.clone()]);
        m.insert("cpu_count", vec![self.cpu_count.to_string()]);
        m.insert("memory_mib", vec![(self.memory_bytes >> 20).to_string()]);
        m.insert("disks", vec![self.disks.len().to_string()]);
        if let Some(v) = &self.dmi_vendor {
            m.insert("dmi_vendor", vec![v.clone()]);
        }
        if let Some(v) = &self.dmi_product {
            m.insert("dmi_product", vec![v.clone()]);
        }
        let macs = self.interfaces.iter().filter_map(|i| i.mac.clone());
        m.insert("mac", macs.collect());
        let ips = self.interfaces.iter().flat_map(|i| i.addresses.clone());
        m.insert("ip", ips.collect());
        m
    }
}

/// The names a selector may give after `fact.`.
pub const FACT_KEYS: &[&str] = &[
    "hostname",
    "cpu_model",
    "cpu_count",
    "memory_mib",
    "disks",
    "dmi_vendor",
    "dmi_product",
    "mac",
    "ip",
];

/// A machine's variables merged from its sets (later sets win), as the template sees them.
pub fn merge<'a>(sets: impl IntoIterator<Item = &'a VarSet>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for s in sets {
        for (k, v) in &s.vars {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The admin's view of one stored set (`GET /api/v1/admin/vars`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredSet {
    pub scope: String,
    pub version: u64,
    pub vars: BTreeMap<String, Value>,
    /// The admin key that signed it.
    pub key: String,
    pub updated_at: i64,
}

/// `GET /api/v1/admin/vars`: the stored sets and the order of label scopes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VarsInfo {
    pub sets: Vec<StoredSet>,
    /// Label keys in the order their sets apply (later wins); keys not listed come after, by
    /// name.
    pub label_order: Vec<String>,
}

/// `PUT /api/v1/admin/vars/order`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabelOrder {
    pub keys: Vec<String>,
}

/// `POST /api/v1/admin/render`: a dry run of a machine's templates on the server.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenderRequest {
    pub machine: String,
    /// Only the template whose target is this path (`/etc/motd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One rendered file of a dry run.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenderedFile {
    pub target: String,
    pub template: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    pub content: String,
}

/// The answer of a dry run.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenderAnswer {
    pub machine: String,
    pub release: crate::ids::ReleaseId,
    /// The merged variables the machine gets (facts and machine details aside).
    pub vars: BTreeMap<String, Value>,
    pub files: Vec<RenderedFile>,
}

/// Label keys as given to `var order`: label keys, each once.
pub fn check_label_order(keys: &[String]) -> Result<(), String> {
    if keys.len() > 64 {
        return Err(format!("{} label keys; at most 64", keys.len()));
    }
    for (i, k) in keys.iter().enumerate() {
        selector::parse_label(&format!("{k}=x")).map_err(|e| e.to_string())?;
        if keys.iter().take(i).any(|o| o == k) {
            return Err(format!("label key {k} is given twice"));
        }
    }
    Ok(())
}

/// The order in which label sets apply: by the position of their key in `order` (keys not
/// listed after, by name), then by value.
pub fn label_rank(order: &[String], key: &str) -> (usize, String) {
    match order.iter().position(|k| k == key) {
        Some(p) => (p, String::new()),
        None => (order.len(), key.to_owned()),
    }
}

/// Which labels a machine has that a label scope names.
pub fn applies(scope: &Scope, name: &str, channel: Option<&str>, labels: &Labels) -> bool {
    match scope {
        Scope::Global => true,
        Scope::Channel(c) => channel == Some(c.as_str()),
        Scope::Label(k, v) => labels.get(k) == Some(v),
        Scope::Machine(m) => m == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{AdminKey, parse_public_key};

    fn set(scope: &str, vars: &[(&str, Value)]) -> VarSet {
        VarSet {
            scope: scope.into(),
            version: 1,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn scopes_parse_and_print_back() {
        for s in [
            "global",
            "channel:lab/stable",
            "label:site=a",
            "machine:lab-1",
        ] {
            assert_eq!(Scope::parse(s).unwrap().to_string(), s);
        }
        for (s, want) in [
            ("globl", "unknown scope"),
            ("label:site", "expected key=value"),
            ("machine:-x", "must not start"),
            ("team:x", "unknown kind"),
            ("channel:", "channel name"),
        ] {
            let e = Scope::parse(s).unwrap_err();
            assert!(e.contains(want) && e.contains(s), "{s}: {e}");
        }
    }

    #[test]
    fn names_values_and_sizes_are_checked() {
        assert!(check_name("ntp_server2").is_ok());
        for n in ["", "Ntp", "2x", "a-b", "facts", &"a".repeat(65)] {
            assert!(check_name(n).is_err(), "{n}");
        }
        assert!(set("global", &[("x", 1.5.into())]).validate().is_err());
        assert!(
            set("global", &[("x", "y".repeat(MAX_VALUE_BYTES).into())])
                .validate()
                .unwrap_err()
                .contains("at most")
        );
        let many: Vec<(String, Value)> = (0..=MAX_VARS)
            .map(|i| (format!("v{i}"), 1.into()))
            .collect();
        let s = VarSet {
            scope: "global".into(),
            version: 1,
            vars: many.into_iter().collect(),
        };
        assert!(s.validate().unwrap_err().contains("at most"));
        let big: Vec<(String, Value)> = (0..8)
            .map(|i| (format!("v{i}"), "x".repeat(10_000).into()))
            .collect();
        let s = VarSet {
            scope: "global".into(),
            version: 1,
            vars: big.into_iter().collect(),
        };
        assert!(s.validate().unwrap_err().contains("per scope"));
    }

    #[test]
    fn a_signed_set_verifies_only_as_signed_and_by_a_trusted_key() {
        let k = AdminKey::generate().unwrap();
        let other = AdminKey::generate().unwrap();
        let trusted = [parse_public_key(&k.public_hex()).unwrap()];
        let s = SignedSet::sign(set("label:site=a", &[("ntp", "10.0.0.1".into())]), &k).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: SignedSet = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.verify(&trusted).unwrap(),
            Scope::Label("site".into(), "a".into())
        );
        // a value changed
        let forged: SignedSet =
            serde_json::from_str(&text.replace("10.0.0.1", "10.6.6.6")).unwrap();
        assert!(
            forged
                .verify(&trusted)
                .unwrap_err()
                .contains("does not verify")
        );
        // moved to another scope
        let moved: SignedSet =
            serde_json::from_str(&text.replace("label:site=a", "global")).unwrap();
        assert!(
            moved
                .verify(&trusted)
                .unwrap_err()
                .contains("does not verify")
        );
        // a field added that this version ignores
        let added: SignedSet =
            serde_json::from_str(&text.replace("\"version\"", "\"x\":1,\"version\"")).unwrap();
        assert!(added.verify(&trusted).is_err());
        // signed by a key the machine does not trust
        let s2 = SignedSet::sign(set("global", &[]), &other).unwrap();
        assert!(s2.verify(&trusted).unwrap_err().contains("does not trust"));
    }

    #[test]
    fn facts_are_bounded_and_flattened() {
        let mut f = Facts {
            hostname: "h".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("52:54:00:00:00:01".into()),
                addresses: vec!["10.0.0.5".into()],
            }],
            dmi_vendor: Some("LENOVO".into()),
            memory_bytes: 2 << 30,
            ..Default::default()
        };
        f.check().unwrap();
        let flat = f.flat();
        assert_eq!(flat["dmi_vendor"], vec!["LENOVO"]);
        assert_eq!(flat["memory_mib"], vec!["2048"]);
        assert_eq!(flat["mac"], vec!["52:54:00:00:00:01"]);
        for k in flat.keys() {
            assert!(FACT_KEYS.contains(k), "{k}");
        }
        f.hostname = "x".repeat(300);
        assert_eq!(f.check().unwrap_err().field, "facts.hostname");
        f.hostname = "a\u{1b}[2J".into();
        assert!(f.check().unwrap_err().reason.contains("control"));
        f.hostname = "h".into();
        f.interfaces = vec![Interface::default(); 65];
        assert_eq!(f.check().unwrap_err().field, "facts.interfaces");
    }

    #[test]
    fn label_order_is_checked() {
        assert!(check_label_order(&["site".into(), "class".into()]).is_ok());
        assert!(check_label_order(&["site".into(), "site".into()]).is_err());
        assert!(check_label_order(&["a b".into()]).is_err());
    }
}
