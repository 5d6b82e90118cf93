//! The certificate material the data path presents and verifies against.
//!
//! The identity manager publishes `WorkloadCertificate`s; HBONE builds its TLS
//! configurations from them. Both sides meet only through these types.

use std::sync::Arc;
use std::time::SystemTime;

use ambit_ca::SpiffeId;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A workload's private key (generated on this node) and its issued chain, leaf first.
#[derive(Debug)]
pub struct WorkloadCertificate {
    pub identity: SpiffeId,
    /// Leaf first, then intermediates; the root is not included.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    /// Whether the certificate is usable at `now` (inside its validity window).
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The roots this node trusts for peers of its trust domain. Several roots may be
/// present at once, so a root can be rotated without downtime.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Arc<Vec<CertificateDer<'static>>>,
}
