//! The state server's view of the cluster as it feeds it: the relayed
//! objects and the resolved remote addresses, each change numbered by a
//! revision and broadcast once, encoded, to every connected agent; the last
//! batches are kept for agents that reconnect and resume.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::state::Workload;
use crate::state::address_map::AddressMap;
use crate::state::source::feed::wire::{
    self, CHUNK, Changes, Frame, Identity, OBJECT_CHUNK, ObjectChange, Position, WireError,
};
use crate::state::source::kube::TapEvent;

/// Batches an agent may fall behind by before it is sent a full state
/// again (at one batch per 100 ms, about 25 s), and batches kept for agents
/// that reconnect: one away for less than that resumes where it was.
const BACKLOG: usize = 256;

/// One batch of changes, encoded as frames of at most `CHUNK` entries.
#[derive(Debug)]
pub struct Batch {
    pub revision: u64,
    pub frames: Vec<Vec<u8>>,
}

/// A full state, encoded as frames (`Reset`, changes, `Synced`).
pub type FullState = Arc<[Vec<u8>]>;

/// A relayed object: kind, namespace, name.
type ObjectId = (&'static str, String, String);

#[derive(Debug)]
pub struct Mirror {
    /// Drawn at start: revisions of another process are another history.
    epoch: u64,
    inner: Mutex<Inner>,
    batches: broadcast::Sender<Arc<Batch>>,
}

/// What an agent is sent first, then every batch from `batches`.
pub struct Subscription {
    pub start: Start,
    /// The revision the agent holds once `start` is sent.
    pub revision: u64,
    pub batches: broadcast::Receiver<Arc<Batch>>,
}

pub enum Start {
    /// Everything, replacing what the agent held.
    Full(FullState),
    /// The batches after the position the agent resumes from.
    Resumed { from: u64, missed: Vec<Arc<Batch>> },
}

#[derive(Debug, Default)]
struct Inner {
    revision: u64,
    objects: BTreeMap<ObjectId, Arc<Value>>,
    /// Kinds being listed again, with the objects the list has named.
    relisting: HashMap<&'static str, HashSet<(String, String)>>,
    /// Object changes not yet sent.
    pending: Vec<ObjectChange>,
    /// The remote addresses as last sent.
    sent: AddressMap<Arc<Workload>>,
    /// Identity ids, by the address of the shared `Workload` (kept alive
    /// here, so an address is never reused while it has an id).
    ids: HashMap<usize, (u32, Arc<Workload>)>,
    next_id: u32,
    /// The full state of `revision`, encoded once for every agent that
    /// connects at it.
    full: Option<(u64, FullState)>,
    /// The last `BACKLOG` batches, oldest first.
    history: VecDeque<Arc<Batch>>,
}

impl Default for Mirror {
    fn default() -> Self {
        Self {
            epoch: rand::random(),
            inner: Mutex::default(),
            batches: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Mirror {
    /// Takes in a relayed object's change; it is sent with the next flush.
    pub fn tap(&self, event: TapEvent) {
        let mut inner = self.inner.lock();
        match event {
            TapEvent::Begin(kind) => {
                inner.relisting.insert(kind, HashSet::new());
            }
            TapEvent::Put { kind, key, object } => {
                if let Some(listed) = inner.relisting.get_mut(kind) {
                    listed.insert(key.clone());
                }
                let id = (kind, key.0, key.1);
                if inner.objects.get(&id) != Some(&object) {
                    inner.objects.insert(id.clone(), object.clone());
                    inner.pending.push(change(id, Some(object)));
                }
            }
            TapEvent::Delete { kind, key } => {
                let id = (kind, key.0, key.1);
                if inner.objects.remove(&id).is_some() {
                    inner.pending.push(change(id, None));
                }
            }
            TapEvent::End(kind) => {
                let Some(listed) = inner.relisting.remove(kind) else {
                    return;
                };
                let gone: Vec<ObjectId> = inner
                    .objects
                    .keys()
                    .filter(|(k, ns, name)| {
                        *k == kind && !listed.contains(&(ns.clone(), name.clone()))
                    })
                    .cloned()
                    .collect();
                for id in gone {
                    inner.objects.remove(&id);
                    inner.pending.push(change(id, None));
                }
            }
        }
    }

    /// Sends what changed since the last flush: pending object changes and
    /// the difference between `addresses` and the addresses last sent.
    /// Returns the new revision, if anything changed.
    pub fn flush(&self, addresses: &AddressMap<Arc<Workload>>) -> Result<Option<u64>, WireError> {
        let mut inner = self.inner.lock();
        let mut changes = Changes {
            objects: std::mem::take(&mut inner.pending),
            ..Changes::default()
        };
        let moved = addresses.diff(&inner.sent, Arc::ptr_eq);
        for (ip, workload) in moved {
            let id = workload.map(|w| inner.id_of(&w, &mut changes.identities));
            changes.addresses.push((ip, id));
        }
        inner.sent = addresses.clone();
        if !changes.addresses.is_empty() {
            // An identity only this map holds is no longer any address's.
            inner.ids.retain(|_, (id, w)| {
                let used = Arc::strong_count(w) > 1;
                if !used {
                    changes.forgotten.push(*id);
                }
                used
            });
        }
        if changes.is_empty() {
            return Ok(None);
        }
        inner.revision += 1;
        changes.revision = inner.revision;
        let frames = encode_chunked(changes)?;
        let revision = inner.revision;
        let batch = Arc::new(Batch { revision, frames });
        if inner.history.len() == BACKLOG {
            inner.history.pop_front();
        }
        inner.history.push_back(batch.clone());
        // No agent connected is no error.
        let _ = self.batches.send(batch);
        Ok(Some(revision))
    }

    /// This process's history: what a `Synced` names with its revision.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What to send an agent that holds `held` (if anything): the batches
    /// it missed when this process still has them all, the full state
    /// otherwise; and the batches that follow.
    pub fn subscribe(&self, held: Option<Position>) -> Result<Subscription, WireError> {
        let mut inner = self.inner.lock();
        let batches = self.batches.subscribe();
        let revision = inner.revision;
        let resumed =
            held.and_then(|held| Some((held.revision, inner.missed_since(self.epoch, held)?)));
        let start = match resumed {
            Some((from, missed)) => Start::Resumed { from, missed },
            None => Start::Full(inner.full_state(self.epoch)?),
        };
        Ok(Subscription {
            start,
            revision,
            batches,
        })
    }

    pub fn revision(&self) -> u64 {
        self.inner.lock().revision
    }

    /// Remote addresses and relayed objects held.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.sent.len(), inner.objects.len())
    }
}

impl Inner {
    /// The batches after `held`, if it is a position of this history that
    /// the kept batches reach back to.
    fn missed_since(&self, epoch: u64, held: Position) -> Option<Vec<Arc<Batch>>> {
        if held.epoch != epoch || held.revision > self.revision {
            return None;
        }
        if held.revision == self.revision {
            return Some(Vec::new());
        }
        let oldest = self.history.front()?.revision;
        if oldest > held.revision + 1 {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|b| b.revision > held.revision)
                .cloned()
                .collect(),
        )
    }

    /// The id of `workload`'s identity; new ones are added to `sent`.
    fn id_of(&mut self, workload: &Arc<Workload>, sent: &mut Vec<Identity>) -> u32 {
        let key = Arc::as_ptr(workload) as usize;
        if let Some((id, _)) = self.ids.get(&key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.ids.insert(key, (id, workload.clone()));
        sent.push(Identity::of(id, workload));
        id
    }

    /// The full state at this revision, encoded once for every agent that
    /// is sent it.
    fn full_state(&mut self, epoch: u64) -> Result<FullState, WireError> {
        if let Some((at, full)) = &self.full
            && *at == self.revision
        {
            return Ok(full.clone());
        }
        let full: FullState = self.encode_full(epoch)?.into();
        self.full = Some((self.revision, full.clone()));
        Ok(full)
    }

    fn encode_full(&self, epoch: u64) -> Result<Vec<Vec<u8>>, WireError> {
        let mut all = Changes {
            revision: self.revision,
            ..Changes::default()
        };
        all.identities = self
            .ids
            .values()
            .map(|(id, workload)| Identity::of(*id, workload))
            .collect();
        all.objects = self
            .objects
            .iter()
            .map(|((kind, ns, name), object)| {
                change((kind, ns.clone(), name.clone()), Some(object.clone()))
            })
            .collect();
        all.addresses = self
            .sent
            .iter()
            .filter_map(|(ip, w)| Some((ip, Some(self.ids.get(&(Arc::as_ptr(w) as usize))?.0))))
            .collect();
        let mut frames = vec![wire::encode(&Frame::Reset)?];
        frames.extend(encode_chunked(all)?);
        frames.push(wire::encode(&Frame::Synced {
            revision: self.revision,
            epoch,
        })?);
        Ok(frames)
    }
}

/// `changes` as frames of at most `CHUNK` addresses or identities, or
/// `OBJECT_CHUNK` objects, identities first (the addresses after them refer
/// to them).
fn encode_chunked(changes: Changes) -> Result<Vec<Vec<u8>>, WireError> {
    let revision = changes.revision;
    let empty = || Changes {
        revision,
        ..Changes::default()
    };
    let mut frames = Vec::new();
    for identities in changes.identities.chunks(CHUNK) {
        let mut chunk = empty();
        chunk.identities = identities.to_vec();
        frames.push(wire::encode(&Frame::Changes(chunk))?);
    }
    for objects in changes.objects.chunks(OBJECT_CHUNK) {
        let mut chunk = empty();
        chunk.objects = objects.to_vec();
        frames.push(wire::encode(&Frame::Changes(chunk))?);
    }
    for addresses in changes.addresses.chunks(CHUNK) {
        let mut chunk = empty();
        chunk.addresses = addresses.to_vec();
        frames.push(wire::encode(&Frame::Changes(chunk))?);
    }
    if !changes.forgotten.is_empty() {
        let mut chunk = empty();
        chunk.forgotten = changes.forgotten;
        frames.push(wire::encode(&Frame::Changes(chunk))?);
    }
    Ok(frames)
}

fn change((kind, namespace, name): ObjectId, object: Option<Arc<Value>>) -> ObjectChange {
    ObjectChange {
        kind: kind.to_owned(),
        namespace,
        name,
        object,
    }
}
