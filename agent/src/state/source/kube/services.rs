//! Services and EndpointSlices, decoded once when their event arrives and
//! built into the `Service`s snapshots share, each rebuilt only when its
//! Service or one of its slices changed.
//!
//! At 150,000 pods there are about 10,000 of each. Kept as JSON text and
//! rebuilt at every snapshot, they cost a parse of every slice and a new
//! copy of every endpoint per event; here a slice is held as its addresses
//! and ports, and an unchanged `Service` is the same `Arc` in the next
//! snapshot. A Service with no slice but a selector takes its endpoints
//! from this node's pods, so it is left to the snapshot builder, which sees
//! them (hand-written state; a cluster writes slices).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use super::kind_cache::{KindCache, ObjectKey};
use crate::state::build::service_port;
use crate::state::k8s;
use crate::state::{
    EndpointGroup, FieldError, LoadError, Origin, Service, SnapshotBuilder, describe_object,
};

/// A decoded object, or why it did not decode: the snapshot is refused
/// while it is cached, as the builder refuses any invalid object.
/// The error is boxed: it is rare, and the maps of 10,000 objects should
/// not reserve room for it in every slot.
type Decoded<T> = Result<T, Box<Invalid>>;

#[derive(Debug, Clone)]
pub(super) struct Invalid {
    object: String,
    source: FieldError,
}

/// A Service object as it is kept: what a `Service` is built from, without
/// the name and namespace (its cache key has them) and with its selector (a
/// map in `k8s::Service`, several allocations) held as a list until a build
/// needs it, which is only while no slice names the Service.
#[derive(Debug)]
pub(super) struct ServiceObject {
    vips: Box<[IpAddr]>,
    ports: Box<[k8s::ServiceSpecPort]>,
    selector: Option<Selector>,
}

/// A selector's label pairs.
type Selector = Box<[(Box<str>, Box<str>)]>;

impl ServiceObject {
    /// The decoded Service as the snapshot builder takes it.
    fn decoded(&self, (namespace, name): &ObjectKey) -> k8s::Service {
        k8s::Service {
            meta: k8s::Meta {
                name: name.clone(),
                namespace: namespace.clone(),
                uid: None,
                labels: Default::default(),
            },
            vips: self.vips.to_vec(),
            ports: self.ports.to_vec(),
            selector: self.selector.as_ref().map(|pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
        }
    }
}

/// An EndpointSlice as a Service is built from it: its endpoints are the
/// group every `Service` built from it shares.
#[derive(Debug)]
pub(super) struct CompactSlice {
    service: Option<Box<str>>,
    endpoints: EndpointGroup,
}

#[derive(Debug, Default)]
pub(super) struct ServiceCatalog {
    pub services: KindCache<Decoded<ServiceObject>>,
    pub slices: KindCache<Decoded<CompactSlice>>,
    /// Slice keys per Service key: the slices naming it (a few at most).
    slices_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    built: HashMap<ObjectKey, Arc<Service>>,
    /// Services whose object or slices changed since the last build.
    dirty: HashSet<ObjectKey>,
    all_dirty: bool,
}

impl ServiceCatalog {
    pub fn decode_service(value: &Value) -> Decoded<ServiceObject> {
        let service = k8s::service(value).map_err(|source| {
            Box::new(Invalid {
                object: describe_object("Service", value),
                source,
            })
        })?;
        let selector = service.selector.map(|selector| {
            selector
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect()
        });
        Ok(ServiceObject {
            vips: service.vips.into(),
            ports: service.ports.into(),
            selector,
        })
    }

    pub fn decode_slice(value: &Value) -> Decoded<CompactSlice> {
        let slice = k8s::endpoint_slice(value).map_err(|source| {
            Box::new(Invalid {
                object: describe_object("EndpointSlice", value),
                source,
            })
        })?;
        let addresses = slice
            .endpoints
            .iter()
            .flat_map(|ep| ep.ips.iter().map(|ip| (*ip, ep.ready)));
        Ok(CompactSlice {
            endpoints: EndpointGroup::new(addresses, slice.ports.into()),
            service: slice.service.map(String::into_boxed_str),
        })
    }

    /// A Service was added, changed or deleted (not during a list).
    pub fn service_changed(&mut self, key: ObjectKey) {
        self.dirty.insert(key);
    }

    /// A slice changed from `old` to what is now cached under `key`.
    pub fn slice_changed(&mut self, key: &ObjectKey, old: Option<&Decoded<CompactSlice>>) {
        if let Some(service) = old.and_then(|s| service_key(key, s)) {
            if let Some(slices) = self.slices_of.get_mut(&service) {
                slices.retain(|slice| slice != key);
                if slices.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            self.dirty.insert(service);
        }
        let new = self.slices.get(key).and_then(|s| service_key(key, s));
        if let Some(service) = new {
            let slices = self.slices_of.entry(service.clone()).or_default();
            if !slices.contains(key) {
                slices.push(key.clone());
            }
            self.dirty.insert(service);
        }
    }

    /// A list replaced one of the two kinds: index and build everything.
    pub fn relisted(&mut self) {
        self.slices_of.clear();
        for (key, slice) in self.slices.iter() {
            if let Some(service) = service_key(key, slice) {
                self.slices_of.entry(service).or_default().push(key.clone());
            }
        }
        self.all_dirty = true;
    }

    /// Rebuilds what changed, then hands every Service to `builder`: built,
    /// or (selector only, no slice) as an object for it to select pods.
    pub fn add_to(
        &mut self,
        builder: &mut SnapshotBuilder,
        origin: &Origin,
    ) -> Result<(), LoadError> {
        let invalid = self
            .services
            .iter()
            .map(|(_, s)| s.as_ref().err())
            .chain(self.slices.iter().map(|(_, s)| s.as_ref().err()))
            .flatten()
            .next();
        if let Some(invalid) = invalid {
            return Err(LoadError::Invalid {
                origin: origin.clone(),
                object: invalid.object.clone(),
                source: invalid.source.clone(),
            });
        }
        self.rebuild_dirty();
        for (key, service) in self.services.iter() {
            let Ok(service) = service else { continue };
            match self.built.get(key) {
                Some(built) => builder.add_built_service(origin.clone(), built.clone()),
                None => builder.add_service(origin.clone(), service.decoded(key)),
            }
        }
        Ok(())
    }

    fn rebuild_dirty(&mut self) {
        let keys: Vec<ObjectKey> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            self.built.clear();
            self.services.iter().map(|(k, _)| k.clone()).collect()
        } else {
            self.dirty.drain().collect()
        };
        for key in keys {
            let built = match self.services.get(&key) {
                Some(Ok(service)) => self.build(&key, service),
                _ => None,
            };
            match built {
                Some(built) => self.built.insert(key, Arc::new(built)),
                None => self.built.remove(&key),
            };
        }
    }

    /// The `Service` for `key`, unless it is the builder's to select pods for.
    fn build(&self, key: &ObjectKey, object: &ServiceObject) -> Option<Service> {
        let slices = self.slices_of.get(key);
        if slices.is_none() && object.selector.is_some() {
            return None;
        }
        let endpoints = slices
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice)?.as_ref().ok())
            .map(|slice| slice.endpoints.clone())
            .collect();
        let (namespace, name) = key;
        Some(Service::new(
            name.clone(),
            namespace.clone(),
            object.vips.to_vec(),
            object.ports.iter().map(service_port).collect(),
            endpoints,
        ))
    }

    /// Bytes the decoded slices hold (addresses and map slots), for sizing.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(ObjectKey, Decoded<CompactSlice>)>() + 1;
        let slices: usize = self
            .slices
            .iter()
            .map(|(_, s)| {
                s.as_ref()
                    .map_or(0, |s| s.endpoints.len() * std::mem::size_of::<IpAddr>())
            })
            .sum();
        slices + self.slices.len() * slot
    }
}

/// The Service a slice names, keyed as Services are.
fn service_key(slice_key: &ObjectKey, slice: &Decoded<CompactSlice>) -> Option<ObjectKey> {
    let name = slice.as_ref().ok()?.service.as_deref()?;
    Some((slice_key.0.clone(), name.to_owned()))
}
