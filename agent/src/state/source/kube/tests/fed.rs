//! A fed agent decides exactly as one watching directly: after every event
//! of a random sequence (the same as `incremental`'s), a state server's
//! caches (every pod compact) build, its mirror sends what changed as wire
//! frames, and an agent's caches that hold only their node's pods plus what
//! the frames carried answer every address, Service and connection as a
//! node-scoped agent with direct watches does. The agent's connection is
//! cut at random points, sometimes in the middle of a batch, and it resumes
//! from the position it held.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::super::cache::{Caches, Kind, PodScope};
use super::super::{TapEvent, WATCHED};
use super::compact::{NAMESPACES, NODES, key};
use super::incremental::{self, Cluster, KINDS, Op, event, from_scratch, gen_op};
use crate::state::source::feed::wire::{Frame, Position};
use crate::state::{LoadOptions, Snapshot};
use crate::state_server::mirror::{Mirror, Start};

fn name(kind: Kind) -> &'static str {
    WATCHED[kind as usize].kind
}

fn on_node(object: &Value) -> bool {
    object["spec"]["nodeName"] == NODES[0]
}

/// An address claimed by a pod of this node and by a pod of another: an
/// address reused before the old pod's deletion was seen. A direct agent
/// resolves it over both (the newer pod keeps it, the other is left out);
/// a fed agent sees only its own pod and keeps it, so connections from this
/// node to the other pod fail (closed) until the deletion arrives. The two
/// are compared only outside that transient (README, Scale).
fn contested_across_nodes(cluster: &Cluster) -> bool {
    let pods: Vec<&Value> = cluster
        .values()
        .filter(|(k, _)| *k == Kind::Pod)
        .map(|(_, o)| o)
        .collect();
    pods.iter().any(|a| {
        on_node(a)
            && pods
                .iter()
                .any(|b| !on_node(b) && b["status"]["podIP"] == a["status"]["podIP"])
    })
}

fn apply(caches: &mut Caches, bytes: &[u8]) {
    let frame: Frame = serde_json::from_slice(&bytes[4..]).expect("frames decode");
    match frame {
        Frame::Reset => caches.fed_reset(),
        Frame::Changes(changes) => caches.fed_changes(changes).expect("identities sent first"),
        Frame::Synced { .. } => caches.fed_synced(),
        other => panic!("unexpected {other:?}"),
    }
}

/// What the data path can ask (`incremental::answers`), but the count of
/// remote entries: a fed agent's cover the whole cluster's addresses.
fn answers(s: &Snapshot) -> Vec<String> {
    let mut all = incremental::answers(s);
    assert!(all[0].starts_with("remote pods "), "{}", all[0]);
    all.remove(0);
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fed_agents_decide_as_agents_watching_directly(
        initial in prop::collection::vec(gen_op(), 0..12),
        ops in prop::collection::vec(gen_op(), 1..30),
        // Per op: 0 nothing, 1 cut the connection, 2 reconnect.
        link in prop::collection::vec(0u8..3, 30),
    ) {
        let options = LoadOptions::default();
        let mut cluster = Cluster::new();
        for i in 0..NAMESPACES.len() {
            event(&mut cluster, &Op::Namespace(i, i % 2 == 0));
        }
        for op in &initial {
            event(&mut cluster, op);
        }
        let mut direct = from_scratch(Some(NODES[0]), &cluster);

        // The server lists everything, relaying all but pods to its mirror.
        let mirror = Mirror::default();
        let mut server = Caches::new(PodScope::Compact, false);
        for kind in KINDS {
            server.begin_list(kind);
            if kind != Kind::Pod {
                mirror.tap(TapEvent::Begin(name(kind)));
            }
            for (_, (k, object)) in cluster.iter().filter(|(_, (k, _))| *k == kind) {
                server.put(*k, key(object), object, true);
                if kind != Kind::Pod {
                    mirror.tap(TapEvent::Put { kind: name(kind), key: key(object), object: Arc::new(object.clone()) });
                }
            }
            server.end_list(kind);
            if kind != Kind::Pod {
                mirror.tap(TapEvent::End(name(kind)));
            }
        }
        let built = server.build(&options);
        prop_assume!(built.is_ok());
        mirror.flush(built.unwrap().remote_addresses()).unwrap();

        // The agent lists its node's pods and takes the rest from the feed.
        let mut agent = Caches::new(PodScope::Node(NODES[0].to_owned()), true);
        agent.begin_list(Kind::Pod);
        for (_, (_, pod)) in cluster.iter().filter(|(_, (k, o))| *k == Kind::Pod && on_node(o)) {
            agent.put(Kind::Pod, key(pod), pod, true);
        }
        agent.end_list(Kind::Pod);
        let subscription = mirror.subscribe(None).unwrap();
        let Start::Full(full) = subscription.start else { panic!("nothing to resume from") };
        for frame in full.iter() {
            apply(&mut agent, frame);
        }
        let mut held = Position { epoch: mirror.epoch(), revision: subscription.revision };
        let mut batches = Some(subscription.batches);

        for (op, link) in ops.iter().zip(link) {
            let (kind, k, object) = event(&mut cluster, op);
            match &object {
                Some(object) => {
                    direct.put(kind, k.clone(), object, false);
                    server.put(kind, k.clone(), object, false);
                }
                None => {
                    direct.delete(kind, &k);
                    server.delete(kind, &k);
                }
            }
            if kind == Kind::Pod {
                // The field selector: a pod leaving the node is a deletion.
                match object.as_ref().filter(|o| on_node(o)) {
                    Some(pod) => agent.put(kind, k.clone(), pod, false),
                    None => agent.delete(kind, &k),
                }
            } else {
                mirror.tap(match object {
                    Some(object) => TapEvent::Put { kind: name(kind), key: k, object: Arc::new(object) },
                    None => TapEvent::Delete { kind: name(kind), key: k },
                });
            }
            let Ok(snapshot) = server.build(&options) else { continue };
            mirror.flush(snapshot.remote_addresses()).unwrap();
            if let Some(receiver) = batches.as_mut() {
                while let Ok(batch) = receiver.try_recv() {
                    if link == 1 {
                        // Cut in the middle of the batch: half of it is
                        // applied, and it does not count as held.
                        for frame in &batch.frames[..batch.frames.len() / 2] {
                            apply(&mut agent, frame);
                        }
                        break;
                    }
                    for frame in &batch.frames {
                        apply(&mut agent, frame);
                    }
                    held.revision = batch.revision;
                }
            }
            if link == 1 {
                batches = None;
            }
            if link == 2 && batches.is_none() {
                let subscription = mirror.subscribe(Some(held)).unwrap();
                let Start::Resumed { from, missed } = subscription.start else {
                    panic!("the mirror keeps more batches than these ops make")
                };
                prop_assert_eq!(from, held.revision);
                for batch in &missed {
                    for frame in &batch.frames {
                        apply(&mut agent, frame);
                    }
                }
                held.revision = subscription.revision;
                batches = Some(subscription.batches);
            }
            if batches.is_none() {
                continue;
            }
            let Ok(expected) = direct.build(&options) else { continue };
            if contested_across_nodes(&cluster) {
                continue;
            }
            let fed = agent.build(&options);
            prop_assert!(fed.is_ok(), "after {:?}: {:?}", op, fed.err());
            let fed = fed.unwrap();
            let (a, b) = (answers(&expected), answers(&fed));
            for (a, b) in a.iter().zip(&b) {
                prop_assert_eq!(a, b, "after {:?}", op);
            }
            prop_assert_eq!(a.len(), b.len());
        }
    }
}

/// One batch per namespace added.
fn changed(mirror: &Mirror, namespaces: std::ops::Range<usize>) {
    for i in namespaces {
        let object = serde_json::json!({"metadata": {"name": format!("ns-{i}")}});
        mirror.tap(TapEvent::Put {
            kind: "Namespace",
            key: (String::new(), format!("ns-{i}")),
            object: Arc::new(object),
        });
        mirror.flush(&Default::default()).unwrap();
    }
}

#[test]
fn a_resume_gets_the_missed_batches_only_from_the_same_history() {
    let mirror = Mirror::default();
    changed(&mirror, 0..3);
    let epoch = mirror.epoch();
    let at = |revision| Some(Position { epoch, revision });

    let missed = |held| match mirror.subscribe(held).unwrap().start {
        Start::Resumed { from, missed } => {
            Some((from, missed.iter().map(|b| b.revision).collect::<Vec<_>>()))
        }
        Start::Full(_) => None,
    };
    assert_eq!(missed(at(1)), Some((1, vec![2, 3])));
    assert_eq!(missed(at(3)), Some((3, vec![])), "up to date");
    assert_eq!(missed(at(0)), Some((0, vec![1, 2, 3])));
    // Revisions of another process, or ahead of this one: a full state.
    assert_eq!(
        missed(Some(Position {
            epoch: epoch ^ 1,
            revision: 1
        })),
        None
    );
    assert_eq!(missed(at(4)), None);
    assert_eq!(missed(None), None);

    // Batches older than the kept history cannot be resent.
    changed(&mirror, 3..303);
    assert_eq!(missed(at(1)), None);
    let recent = missed(at(250)).expect("kept");
    assert_eq!(recent.1.len(), 53);
    assert_eq!(recent.1.first(), Some(&251));
}
