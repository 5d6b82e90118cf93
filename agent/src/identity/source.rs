//! The seam through which the data path (HBONE client and server) asks for
//! the certificates of the node's workloads, so it needs no knowledge of how
//! they are issued or renewed ([`IdentityManager`](super::IdentityManager)
//! implements it; tests give fixed ones).

use std::collections::BTreeSet;
use std::sync::Arc;

use ambit_ca::SpiffeId;
use futures::future::BoxFuture;

use super::WorkloadCertificate;

/// Where the data path gets the certificates of the node's workloads.
pub trait CertificateSource: Send + Sync + 'static {
    /// A valid certificate for `id`, waiting for an issuance in progress;
    /// `None` when there is none to be had now.
    fn certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Option<Arc<WorkloadCertificate>>>;

    /// The identities the node must hold from now on (the local enrolled
    /// workloads'); the others may be forgotten.
    fn track(&self, ids: BTreeSet<SpiffeId>);
}
