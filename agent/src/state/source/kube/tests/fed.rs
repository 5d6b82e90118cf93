//! A fed agent decides exactly as one watching directly: after every event
//! of a random sequence (the same as `incremental`'s), a state server's
//! caches (every pod compact) build, its mirror sends what changed as wire
//! frames, and an agent's caches that hold only their node's pods plus what
//! the frames carried answer every address, Service and connection as a
//! node-scoped agent with direct watches does.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::super::cache::{Caches, Kind, PodScope};
use super::super::{TapEvent, WATCHED};
use super::compact::{NAMESPACES, NODES, key};
use super::incremental::{self, Cluster, KINDS, Op, event, from_scratch, gen_op};
use crate::state::source::feed::wire::Frame;
use crate::state::{LoadOptions, Snapshot};
use crate::state_server::mirror::Mirror;

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
        let (full, _, mut batches) = mirror.subscribe().unwrap();
        for frame in full.iter() {
            apply(&mut agent, frame);
        }

        for op in &ops {
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
            while let Ok(batch) = batches.try_recv() {
                for frame in &batch.frames {
                    apply(&mut agent, frame);
                }
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
