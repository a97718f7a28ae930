//! The release's objects for verification: from the local store, or, when the local copy is
//! damaged or missing, fetched again from the server. A fetched object is verified against its
//! id by the object stream and kept in memory for this verification (the store keeps only what
//! it verified when it was written, and a damaged copy is not overwritten in place).

use std::collections::{HashMap, HashSet};

use semithin_protocol::api::{CheckInRequest, MAX_OBJECTS_PER_REQUEST, Report};
use semithin_protocol::path::ApiPath;
use semithin_store::object::{Commit, Tree};
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_store::{ChunkId, CommitId, TreeId, transfer};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::http::Api;

pub(crate) type Key = (ObjKind, [u8; 32]);

/// Where damaged objects come from: the server's object stream.
pub(crate) struct Remote<'a> {
    pub api: Option<&'a Api>,
    /// The server's `objects_path`, when a check-in of this run named it already.
    pub objects_path: Option<ApiPath>,
    /// The report to check in with when no path is known yet.
    pub report: Report,
    /// At boot: there is no network, only the local store.
    pub offline: bool,
}

impl Remote<'_> {
    fn path(&mut self) -> Result<ApiPath> {
        if let Some(p) = &self.objects_path {
            return Ok(p.clone());
        }
        if self.offline {
            return Err(Error::Config(
                "there is no network at boot: only the local store can give it back".into(),
            ));
        }
        let api = self.api.ok_or_else(|| {
            Error::Config("the machine is not enrolled, so there is no server to fetch from".into())
        })?;
        let req = CheckInRequest {
            report: self.report.clone(),
            ..CheckInRequest::default()
        };
        let p = api
            .checkin(&req)?
            .desired
            .map(|d| d.objects_path)
            .ok_or_else(|| {
                Error::Config(
                    "the server names no release for this machine (not accepted, or no \
                     channel assigned), so there is nowhere to fetch from"
                        .into(),
                )
            })?;
        self.objects_path = Some(p.clone());
        Ok(p)
    }

    /// The objects of `want` the server sends, each verified against its id.
    pub fn fetch(&mut self, want: &HashSet<Key>) -> Result<HashMap<Key, Vec<u8>>> {
        let path = self.path()?;
        let api = self.api.expect("a known objects path means enrolled");
        let mut got = HashMap::new();
        let keys: Vec<Key> = want.iter().copied().collect();
        for batch in keys.chunks(MAX_OBJECTS_PER_REQUEST) {
            let refs = batch
                .iter()
                .map(|(k, id)| format!("{}/{}", k.name(), hex::encode(id)))
                .collect();
            let expected: HashSet<Key> = batch.iter().copied().collect();
            let stream = api.objects(&path, refs)?;
            transfer::read_stream(&expected, stream, |obj, raw| {
                got.insert((obj.kind(), *obj.id()), raw);
                Ok(())
            })?;
        }
        Ok(got)
    }
}

/// How many objects were fetched again because the local copy was damaged or missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Refetched {
    pub chunks: u64,
    pub trees: u64,
    pub commits: u64,
}

pub(crate) struct Objects<'a> {
    store: &'a ObjectStore,
    remote: Remote<'a>,
    fetched: HashMap<Key, Vec<u8>>,
    pub refetched: Refetched,
}

fn name(key: &Key) -> String {
    format!("{} {}", key.0.name(), hex::encode(key.1))
}

impl<'a> Objects<'a> {
    pub fn new(store: &'a ObjectStore, remote: Remote<'a>) -> Self {
        Self {
            store,
            remote,
            fetched: HashMap::new(),
            refetched: Refetched::default(),
        }
    }

    /// Objects from `store` alone: nothing is fetched (the check at boot, sealing).
    pub fn offline(store: &'a ObjectStore) -> Self {
        Self::new(
            store,
            Remote {
                api: None,
                objects_path: None,
                report: Report::default(),
                offline: true,
            },
        )
    }

    fn note(&mut self, got: HashMap<Key, Vec<u8>>) {
        for (key, raw) in got {
            match key.0 {
                ObjKind::Chunk => self.refetched.chunks += 1,
                ObjKind::Tree => self.refetched.trees += 1,
                ObjKind::Commit => self.refetched.commits += 1,
            }
            self.fetched.insert(key, raw);
        }
    }

    /// The verified bytes of one object: fetched in this run, else the store's, else fetched now.
    fn get(&mut self, key: Key) -> Result<Vec<u8>> {
        if let Some(b) = self.fetched.get(&key) {
            return Ok(b.clone());
        }
        let local = match self.store.get(key.0, &key.1) {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        let fetched = self.remote.fetch(&HashSet::from([key]));
        let got = fetched.map_err(|e| Error::Release {
            release: hex::encode(key.1),
            reason: format!(
                "the local copy of {} cannot be used ({local}) and fetching it again failed: {e}",
                name(&key)
            ),
        })?;
        self.note(got);
        self.fetched
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::Release {
                release: hex::encode(key.1),
                reason: format!(
                    "the local copy of {} cannot be used ({local}) and the server did not send it",
                    name(&key)
                ),
            })
    }

    pub fn commit(&mut self, id: CommitId) -> Result<Commit> {
        let raw = self.get((ObjKind::Commit, *id.as_bytes()))?;
        Ok(Commit::decode(id, &raw)?)
    }

    pub fn tree(&mut self, id: TreeId) -> Result<Tree> {
        let raw = self.get((ObjKind::Tree, *id.as_bytes()))?;
        Ok(Tree::decode(id, &raw)?)
    }

    /// Fetches, in one request, the chunks among `ids` that the store cannot give back intact.
    pub fn ensure_chunks(&mut self, ids: impl IntoIterator<Item = ChunkId>) -> Result<()> {
        let mut damaged = HashSet::new();
        for id in ids {
            let key = (ObjKind::Chunk, *id.as_bytes());
            if !self.fetched.contains_key(&key) && self.store.get_chunk(&id).is_err() {
                damaged.insert(key);
            }
        }
        if damaged.is_empty() {
            return Ok(());
        }
        let got = self.remote.fetch(&damaged)?;
        self.note(got);
        Ok(())
    }

    /// A chunk, verified: fetched in this run, else the store's.
    pub fn chunk(&self, id: &ChunkId) -> semithin_store::Result<Vec<u8>> {
        match self.fetched.get(&(ObjKind::Chunk, *id.as_bytes())) {
            Some(b) => Ok(b.clone()),
            None => self.store.get_chunk(id),
        }
    }
}
