//! The certificate material the data path presents and verifies against.
//!
//! The identity manager publishes `WorkloadCertificate`s; HBONE builds its TLS
//! configurations from them. Both sides meet only through these types.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_ca::SpiffeId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

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

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("certificate chain is empty")]
    Empty,
    #[error("certificate {index} of the chain is not PEM: {reason}")]
    NotPem { index: usize, reason: String },
    #[error("leaf certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("leaf names {found:?}, expected exactly {expected}")]
    WrongIdentity {
        expected: String,
        found: Vec<String>,
    },
    #[error("leaf certifies a different public key than the one this node generated")]
    WrongKey,
}

impl WorkloadCertificate {
    /// Whether the certificate is usable at `now` (inside its validity window).
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Builds the certificate from a CA answer (PEM chain, leaf first, possibly
    /// ending in the root) and the key generated here, checking that the leaf
    /// certifies exactly `identity` and exactly this key.
    pub fn from_issued(
        identity: SpiffeId,
        key: PrivateKeyDer<'static>,
        public_key_info: &[u8],
        chain_pem: &[String],
    ) -> Result<Self, ChainError> {
        let mut chain = chain_pem
            .iter()
            .enumerate()
            .map(|(index, pem)| {
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| ChainError::NotPem {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = chain.first().ok_or(ChainError::Empty)?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| ChainError::Malformed(e.to_string()))?;
        let sans: Vec<String> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::URI(u) => (*u).to_string(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if sans != [identity.to_string()] {
            return Err(ChainError::WrongIdentity {
                expected: identity.to_string(),
                found: sans,
            });
        }
        if parsed.public_key().raw != public_key_info {
            return Err(ChainError::WrongKey);
        }
        let not_before = unix(parsed.validity().not_before.timestamp());
        let not_after = unix(parsed.validity().not_after.timestamp());
        // Peers hold the root already; presenting it only costs bytes.
        if chain.len() > 1 && chain.last().is_some_and(is_self_issued) {
            chain.pop();
        }
        Ok(Self {
            identity,
            chain,
            key,
            not_before,
            not_after,
        })
    }
}

fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn is_self_issued(cert: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false)
}

#[derive(Debug, thiserror::Error)]
pub enum TrustBundleError {
    #[error("{}: {reason}", path.display())]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The roots this node trusts for peers of its trust domain. Several roots may be
/// present at once, so a root can be rotated without downtime.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Arc<Vec<CertificateDer<'static>>>,
}

impl TrustBundle {
    /// Reads every certificate in a PEM file; at least one is required.
    pub fn from_pem_file(path: &Path, trust_domain: &str) -> Result<Self, TrustBundleError> {
        let err = |reason: String| TrustBundleError::File {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let roots = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("not PEM certificates: {e}")))?;
        if roots.is_empty() {
            return Err(err("holds no certificate".into()));
        }
        for (i, root) in roots.iter().enumerate() {
            X509Certificate::from_der(root.as_ref())
                .map_err(|e| err(format!("certificate {i} is not valid X.509: {e}")))?;
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots: Arc::new(roots),
        })
    }
}
