//! Per-machine configuration on the server (docs/CONFIG.md): the variable sets the admin
//! signed, one per scope, kept as received (SQLite, migration 12) and in memory; which of them
//! apply to a machine, in precedence order; the facts machines report; the dry run of a
//! machine's templates (`fleet render`).
//!
//! The server signs nothing here and cannot change a value: a machine verifies every set
//! against the admin keys it trusts. What the server decides is which sets a machine gets and
//! in which order (global, its channel, its labels in the label order, itself).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use semithin_protocol::selector::Labels;
use semithin_protocol::vars::{
    self, Bundle, Facts, LabelOrder, Scope, SignedSet, StoredSet, VarsInfo,
};
use sqlx::{Row, SqlitePool};

use crate::db::MachineRow;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, Machine};

/// A stored set and what names it in a bundle's digest.
pub struct Stored {
    pub signed: SignedSet,
    pub scope: Scope,
    pub digest: blake3::Hash,
    pub updated_at: i64,
    /// The length of its JSON, what it adds to a bundle.
    pub bytes: usize,
}

#[derive(Default)]
pub struct Vars {
    sets: RwLock<BTreeMap<Scope, Arc<Stored>>>,
    order: RwLock<Vec<String>>,
    /// One admin change at a time (database, then memory).
    write: tokio::sync::Mutex<()>,
}

/// Why a set was refused (400, or 409 for a stale version).
pub enum Refused {
    Bad(String),
    Stale(String),
}

fn stored(signed: SignedSet, updated_at: i64) -> std::result::Result<Stored, String> {
    let scope = signed.set.validate()?;
    let body = serde_json::to_vec(&signed).map_err(|e| e.to_string())?;
    Ok(Stored {
        digest: blake3::hash(&body),
        bytes: body.len(),
        signed,
        scope,
        updated_at,
    })
}

impl Vars {
    /// Loads the stored sets and the label order.
    pub async fn load(db: &SqlitePool) -> Result<Self> {
        let rows = sqlx::query("SELECT scope, body, updated_at FROM var_sets")
            .fetch_all(db)
            .await
            .map_err(|e| Error::db("loading variable sets", e))?;
        let mut sets = BTreeMap::new();
        for r in rows {
            let scope: String = r.get(0);
            let body: String = r.get(1);
            let bad =
                |why: String| Error::Config(format!("variable set {scope} in the database: {why}"));
            let signed: SignedSet = serde_json::from_str(&body).map_err(|e| bad(e.to_string()))?;
            let s = stored(signed, r.get(2)).map_err(bad)?;
            sets.insert(s.scope.clone(), Arc::new(s));
        }
        let order: Vec<String> =
            sqlx::query_scalar("SELECT label_key FROM var_label_order ORDER BY position")
                .fetch_all(db)
                .await
                .map_err(|e| Error::db("loading the label order", e))?;
        Ok(Self {
            sets: RwLock::new(sets),
            order: RwLock::new(order),
            write: Default::default(),
        })
    }

    /// The sets that apply to a machine, lowest precedence first, and the digest naming them.
    pub fn applying(
        &self,
        name: &str,
        channel: Option<&str>,
        labels: &Labels,
    ) -> (String, Vec<Arc<Stored>>) {
        let sets = self.sets.read().expect("lock");
        let order = self.order.read().expect("lock");
        let mut out: Vec<Arc<Stored>> = Vec::new();
        if let Some(s) = sets.get(&Scope::Global) {
            out.push(s.clone());
        }
        if let Some(c) = channel
            && let Some(s) = sets.get(&Scope::Channel(c.to_owned()))
        {
            out.push(s.clone());
        }
        let mut by_label: Vec<(_, Arc<Stored>)> = labels
            .iter()
            .filter_map(|(k, v)| {
                let s = sets.get(&Scope::Label(k.clone(), v.clone()))?;
                Some((vars::label_rank(&order, k), s.clone()))
            })
            .collect();
        by_label.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(by_label.into_iter().map(|(_, s)| s));
        if let Some(s) = sets.get(&Scope::Machine(name.to_owned())) {
            out.push(s.clone());
        }
        let mut h = blake3::Hasher::new_derive_key("semithin vars bundle v1");
        for s in &out {
            h.update(s.digest.as_bytes());
        }
        (h.finalize().to_hex().to_string(), out)
    }

    /// What a machine's check-in answer carries: its bundle, unless it holds it already.
    pub fn bundle(&self, r: &MachineRow) -> Option<Bundle> {
        let (digest, sets) = self.applying(&r.name, r.channel.as_deref(), &r.labels);
        let held = r
            .report
            .config
            .as_ref()
            .and_then(|c| c.vars_digest.as_ref());
        if held == Some(&digest) {
            return None;
        }
        let bytes: usize = sets.iter().map(|s| s.bytes).sum();
        if bytes > vars::MAX_BUNDLE_BYTES {
            // `put` refuses a set that makes a bundle this large; labels given later can still.
            tracing::warn!(
                machine = %r.name,
                bytes,
                "the variable sets of this machine are over {} bytes: not sent (it keeps the \
                 ones it holds); make its label sets smaller",
                vars::MAX_BUNDLE_BYTES
            );
            return None;
        }
        Some(Bundle {
            digest,
            sets: sets.iter().map(|s| s.signed.clone()).collect(),
        })
    }

    /// The first machine whose bundle would be over [`vars::MAX_BUNDLE_BYTES`] with `new` in
    /// place of the set of its scope, and that size.
    fn too_large(&self, fleet: &Fleet, new: &Stored) -> Option<(String, usize)> {
        for m in fleet.select(&semithin_protocol::selector::Selector::All) {
            let r = m.row.lock().expect("lock");
            if !vars::applies(&new.scope, &r.name, r.channel.as_deref(), &r.labels) {
                continue;
            }
            let (_, sets) = self.applying(&r.name, r.channel.as_deref(), &r.labels);
            let bytes: usize = sets
                .iter()
                .filter(|s| s.scope != new.scope)
                .map(|s| s.bytes)
                .sum::<usize>()
                + new.bytes;
            if bytes > vars::MAX_BUNDLE_BYTES {
                return Some((r.name.clone(), bytes));
            }
        }
        None
    }

    /// Stores a set the admin signed: valid, signed by the key it names, newer than the one held.
    /// Machines whose sets changed are woken. The database first, then memory.
    pub async fn put(
        &self,
        db: &SqlitePool,
        fleet: &Fleet,
        signed: SignedSet,
        now: i64,
    ) -> Result<std::result::Result<Vec<String>, Refused>> {
        let key = match semithin_protocol::job::parse_public_key(&signed.signature.key) {
            Ok(k) => k,
            Err(e) => return Ok(Err(Refused::Bad(e))),
        };
        if let Err(e) = signed.verify(&[key]) {
            return Ok(Err(Refused::Bad(e)));
        }
        let s = match stored(signed, now) {
            Ok(s) => s,
            Err(e) => return Ok(Err(Refused::Bad(e))),
        };
        let body = serde_json::to_string(&s.signed).map_err(|e| Error::Config(e.to_string()))?;
        let _one = self.write.lock().await;
        if let Some(old) = self.sets.read().expect("lock").get(&s.scope)
            && old.signed.set.version >= s.signed.set.version
        {
            return Ok(Err(Refused::Stale(format!(
                "{} is at version {}; this set is version {}: read it again (`semithin var \
                 list`) and sign the change anew",
                s.scope, old.signed.set.version, s.signed.set.version
            ))));
        }
        if let Some((machine, bytes)) = self.too_large(fleet, &s) {
            return Ok(Err(Refused::Bad(format!(
                "with this set, the variables of machine {machine} would take {bytes} bytes in \
                 its check-in, over the {} a machine is sent: make this set (or the others that \
                 apply to it) smaller",
                vars::MAX_BUNDLE_BYTES
            ))));
        }
        sqlx::query(
            "INSERT INTO var_sets (scope, version, body, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope) DO UPDATE SET version = $2, body = $3, updated_at = $4",
        )
        .bind(s.scope.to_string())
        .bind(i64::try_from(s.signed.set.version).unwrap_or(i64::MAX))
        .bind(body)
        .bind(now)
        .execute(db)
        .await
        .map_err(|e| Error::db("storing the variable set", e))?;
        let scope = s.scope.clone();
        self.sets
            .write()
            .expect("lock")
            .insert(scope.clone(), Arc::new(s));
        Ok(Ok(wake(fleet, |r| {
            vars::applies(&scope, &r.name, r.channel.as_deref(), &r.labels)
        })))
    }

    /// Sets the order of label scopes; every machine with two or more label sets is woken.
    pub async fn set_order(
        &self,
        db: &SqlitePool,
        fleet: &Fleet,
        o: LabelOrder,
    ) -> Result<Vec<String>> {
        let _one = self.write.lock().await;
        let err = |e| Error::db("storing the label order", e);
        let mut tx = db.begin().await.map_err(err)?;
        sqlx::query("DELETE FROM var_label_order")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        for (i, k) in o.keys.iter().enumerate() {
            sqlx::query("INSERT INTO var_label_order (position, label_key) VALUES ($1, $2)")
                .bind(i as i64)
                .bind(k)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        *self.order.write().expect("lock") = o.keys;
        Ok(wake(fleet, |_| true))
    }

    pub fn info(&self) -> VarsInfo {
        VarsInfo {
            sets: self
                .sets
                .read()
                .expect("lock")
                .values()
                .map(|s| StoredSet {
                    scope: s.scope.to_string(),
                    version: s.signed.set.version,
                    vars: s.signed.set.vars.clone(),
                    key: s.signed.signature.key.clone(),
                    updated_at: s.updated_at,
                })
                .collect(),
            label_order: self.order.read().expect("lock").clone(),
        }
    }
}

/// Wakes the machines `f` picks, whose answer may have changed; their names.
fn wake(fleet: &Fleet, f: impl Fn(&MachineRow) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for m in fleet.select(&semithin_protocol::selector::Selector::All) {
        let r = m.row.lock().expect("lock");
        if f(&r) {
            m.wake.notify_one();
            out.push(r.name.clone());
        }
    }
    out
}

/// Loads every machine's stored facts into the fleet.
pub async fn load_facts(db: &SqlitePool, fleet: &Fleet) -> Result<()> {
    let rows = sqlx::query("SELECT machine, facts FROM machine_facts")
        .fetch_all(db)
        .await
        .map_err(|e| Error::db("loading facts", e))?;
    for r in rows {
        let id: String = r.get(0);
        let text: String = r.get(1);
        if let Some(m) = fleet.get(&id) {
            let f: Facts = serde_json::from_str(&text).map_err(|e| {
                Error::Config(format!("facts of machine {id} in the database: {e}"))
            })?;
            m.set_facts(f);
        }
    }
    Ok(())
}

/// Stores the facts a machine reported when they differ from those held: the database first.
pub async fn store_facts(db: &SqlitePool, m: &Machine, f: &Facts, now: i64) -> Result<()> {
    if m.facts().is_some_and(|old| *old == *f) {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO machine_facts (machine, facts, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (machine) DO UPDATE SET facts = $2, updated_at = $3",
    )
    .bind(&m.id)
    .bind(serde_json::to_string(f).map_err(|e| Error::Config(e.to_string()))?)
    .bind(now)
    .execute(db)
    .await
    .map_err(|e| Error::db("storing facts", e))?;
    m.set_facts(f.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use semithin_protocol::job::AdminKey;
    use semithin_protocol::vars::{SignedSet, VarSet};
    use serde_json::{Value, json};

    use crate::testkit::{TestServer, report};

    fn set(scope: &str, version: u64, vars: Value) -> VarSet {
        VarSet {
            scope: scope.into(),
            version,
            vars: serde_json::from_value(vars).unwrap(),
        }
    }

    async fn put(s: &TestServer, k: &AdminKey, v: VarSet) -> (u16, Value) {
        let signed = SignedSet::sign(v, k).unwrap();
        s.admin(
            "PUT",
            "/api/v1/admin/vars",
            Some(serde_json::to_value(&signed).unwrap()),
        )
        .await
    }

    async fn checkin(
        s: &TestServer,
        key: &semithin_protocol::sign::MachineKey,
        body: Value,
    ) -> Value {
        let (st, text) = s
            .signed(key, "POST", "/api/v1/checkin", body.to_string().as_bytes())
            .await;
        assert_eq!(st, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sets_reach_the_machines_they_apply_to_once_and_only_agents_that_render() {
        let s = TestServer::start(|_| {}).await;
        let t = s.token(true).await;
        let a = s.enroll(&t, "a").await;
        let b = s.enroll(&t, "b").await;
        let (st, v) = s
            .admin(
                "POST",
                "/api/v1/admin/machines/a/labels",
                Some(json!({"set": {"site": "x"}})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let k = AdminKey::generate().unwrap();
        let (st, v) = put(&s, &k, set("label:site=x", 1, json!({"ntp": "n1"}))).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["machines"], json!(["a"]));
        // not newer than the stored one: 409
        let (st, v) = put(&s, &k, set("label:site=x", 1, json!({"ntp": "n2"}))).await;
        assert_eq!(st, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("version 1"), "{v}");

        // an agent that does not say accepts_vars is never given sets
        let r = checkin(&s, &a, json!({"report": report(json!({}))})).await;
        assert!(r.get("vars").is_none(), "{r}");
        // one that does gets them, and not again once it reports holding them
        let r = checkin(
            &s,
            &a,
            json!({"report": report(json!({})), "accepts_vars": true}),
        )
        .await;
        let bundle = &r["vars"];
        assert_eq!(bundle["sets"][0]["set"]["vars"]["ntp"], "n1", "{r}");
        let digest = bundle["digest"].as_str().unwrap().to_owned();
        let held = report(json!({"config": {"vars_digest": digest, "files": 0}}));
        let r = checkin(&s, &a, json!({"report": held, "accepts_vars": true})).await;
        assert!(r.get("vars").is_none(), "{r}");
        // b has no set: an empty bundle once
        let r = checkin(
            &s,
            &b,
            json!({"report": report(json!({})), "accepts_vars": true}),
        )
        .await;
        assert_eq!(r["vars"]["sets"], json!([]), "{r}");
        // a global set reaches both, a's bundle has both in precedence order
        let (_, v) = put(&s, &k, set("global", 1, json!({"ntp": "g"}))).await;
        assert_eq!(v["machines"], json!(["a", "b"]));
        let held = report(json!({"config": {"vars_digest": digest, "files": 0}}));
        let r = checkin(&s, &a, json!({"report": held, "accepts_vars": true})).await;
        let scopes: Vec<&str> = r["vars"]["sets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["set"]["scope"].as_str().unwrap())
            .collect();
        assert_eq!(scopes, ["global", "label:site=x"]);
        s.stop().await;
    }

    /// A set that would make a machine's bundle larger than an agent is sent is refused naming
    /// the machine, and what was stored stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_that_makes_a_bundle_too_large_is_refused_naming_the_machine() {
        let s = TestServer::start(|_| {}).await;
        let t = s.token(true).await;
        let _a = s.enroll(&t, "a").await;
        let labels: serde_json::Map<String, Value> =
            (0..8).map(|i| (format!("l{i}"), json!("x"))).collect();
        let (st, v) = s
            .admin(
                "POST",
                "/api/v1/admin/machines/a/labels",
                Some(json!({"set": labels})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let k = AdminKey::generate().unwrap();
        // 60 KiB a set: four values of 15 KiB.
        let big = |tag: &str| {
            let v: serde_json::Map<String, Value> = (0..4)
                .map(|i| {
                    (
                        format!("v{i}"),
                        json!(format!("{tag}{}", "x".repeat(15 << 10))),
                    )
                })
                .collect();
            Value::Object(v)
        };
        for scope in [
            "global",
            "label:l0=x",
            "label:l1=x",
            "label:l2=x",
            "label:l3=x",
        ] {
            let (st, v) = put(&s, &k, set(scope, 1, big(scope))).await;
            assert_eq!(st, 200, "{scope}: {v}");
        }
        for i in 4..8 {
            let scope = format!("label:l{i}=x");
            let (st, v) = put(&s, &k, set(&scope, 1, big(&scope))).await;
            if st != 200 {
                assert_eq!(st, 400, "{v}");
                let e = v["error"].as_str().unwrap();
                assert!(
                    e.contains("the variables of machine a would take")
                        && e.contains(&semithin_protocol::vars::MAX_BUNDLE_BYTES.to_string()),
                    "{e}"
                );
                // What was stored stays, and the machine's bundle is within the bound.
                let (_, info) = s.admin("GET", "/api/v1/admin/vars", None).await;
                let n = info["sets"].as_array().unwrap().len();
                assert_eq!(n, i + 1, "{info}");
                return s.stop().await;
            }
        }
        panic!("no set was refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn facts_out_of_bounds_are_refused_and_facts_within_are_kept() {
        let s = TestServer::start(|_| {}).await;
        let t = s.token(true).await;
        let a = s.enroll(&t, "a").await;
        let body = json!({"report": report(json!({})),
            "facts": {"hostname": "h", "interfaces": [{"name": "eth0", "mac": "x".repeat(300)}]}});
        let (st, text) = s
            .signed(&a, "POST", "/api/v1/checkin", body.to_string().as_bytes())
            .await;
        assert_eq!(st, 400, "{text}");
        assert!(text.contains("facts.interfaces[0].mac"), "{text}");
        assert_eq!(s.count("SELECT count(*) FROM machine_facts").await, 0);
        let body = json!({"report": report(json!({})),
            "facts": {"hostname": "h", "dmi_vendor": "LENOVO"}});
        let r = checkin(&s, &a, body).await;
        assert!(r["facts_digest"].is_string(), "{r}");
        assert_eq!(s.count("SELECT count(*) FROM machine_facts").await, 1);
        let (_, m) = s
            .admin(
                "GET",
                "/api/v1/admin/machines?selector=fact.dmi_vendor%3DLENOVO",
                None,
            )
            .await;
        assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
        s.stop().await;
    }
}
