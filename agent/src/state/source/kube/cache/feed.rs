//! The state feed's frames applied to the caches: relayed objects go where
//! watched ones would, and remote addresses replace the address book's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::super::watched;
use super::{Caches, Kind};
use crate::state::Workload;
use crate::state::address_map::AddressMap;
use crate::state::source::feed::wire::Changes;

/// The kinds the feed relays as objects: all but pods.
const RELAYED: [Kind; 6] = [
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
];

/// Remote addresses as the feed resolved them.
#[derive(Debug, Default)]
pub(in crate::state::source) struct FedAddresses {
    current: Addresses,
    /// A full state being received, swapped in once complete.
    incoming: Option<Addresses>,
}

#[derive(Debug, Default)]
struct Addresses {
    identities: HashMap<u32, Arc<Workload>>,
    by_ip: AddressMap<Arc<Workload>>,
}

impl FedAddresses {
    pub fn published(&self) -> (AddressMap<Arc<Workload>>, usize) {
        (self.current.by_ip.clone(), self.current.by_ip.len())
    }
}

/// The feed broke its own protocol; the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub(in crate::state::source) enum FeedProtocolError {
    #[error("address {ip} refers to identity {id}, which was never sent")]
    UnknownIdentity { ip: IpAddr, id: u32 },
    #[error("feed frame for a source that is not fed")]
    NotFed,
}

impl Caches {
    /// A full state follows: what is fed now replaces what was, at `fed_synced`.
    pub fn fed_reset(&mut self) {
        for kind in RELAYED {
            self.begin_list(kind);
        }
        if let Some(fed) = &mut self.fed {
            fed.incoming = Some(Addresses::default());
        }
    }

    pub fn fed_changes(&mut self, changes: Changes) -> Result<(), FeedProtocolError> {
        let Some(fed) = &mut self.fed else {
            return Err(FeedProtocolError::NotFed);
        };
        let listing = fed.incoming.is_some();
        let addresses = fed.incoming.as_mut().unwrap_or(&mut fed.current);
        for identity in changes.identities {
            let id = identity.id;
            addresses
                .identities
                .insert(id, Arc::new(identity.into_workload()));
        }
        for id in changes.forgotten {
            addresses.identities.remove(&id);
        }
        let moved = !changes.addresses.is_empty();
        for (ip, id) in changes.addresses {
            match id {
                Some(id) => {
                    let workload = addresses
                        .identities
                        .get(&id)
                        .ok_or(FeedProtocolError::UnknownIdentity { ip, id })?;
                    addresses.by_ip.insert(ip, workload.clone());
                }
                None => {
                    addresses.by_ip.remove(&ip);
                }
            }
        }
        if moved && !listing {
            self.changed.structure = true;
        }
        for change in changes.objects {
            let Some(kind) = watched(&change.kind)
                .map(|w| w.cached_as)
                .filter(|k| RELAYED.contains(k))
            else {
                tracing::debug!(kind = %change.kind, "feed relayed a kind this agent does not read");
                continue;
            };
            let key = (change.namespace, change.name);
            match change.object {
                Some(object) => self.put(kind, key, &object, listing),
                None => self.delete(kind, &key),
            }
        }
        Ok(())
    }

    /// The full state is complete: it replaces what was fed before.
    pub fn fed_synced(&mut self) {
        for kind in RELAYED {
            self.end_list(kind);
        }
        if let Some(fed) = &mut self.fed
            && let Some(incoming) = fed.incoming.take()
        {
            fed.current = incoming;
        }
        self.changed.structure = true;
    }
}
