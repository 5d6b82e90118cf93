//! The certificate material the data path presents and verifies against.
//!
//! The identity manager publishes `WorkloadCertificate`s; HBONE builds its TLS
//! configurations from them. Both sides meet only through these types.

use std::path::{Path, PathBuf};
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
    /// As the CA issued it: leaf first, then intermediates, then the root. It is
    /// presented whole, as Istio's sidecars and ztunnel do, so a client can check
    /// which root a workload chains to (`openssl s_client -showcerts`, as in
    /// Istio's plug-in CA tutorial) and peers never need to hold intermediates.
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
        let chain = chain_pem
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

#[derive(Debug, thiserror::Error)]
pub enum TrustBundleError {
    #[error("reading trust bundle {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust bundle {}: {defect}", path.display())]
    Invalid { path: PathBuf, defect: BundleDefect },
}

/// Why the content of a trust bundle cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleDefect {
    #[error("holds no certificate")]
    NoCertificate,
    #[error("not PEM certificates: {0}")]
    NotPem(String),
    #[error("certificate {index} is not valid X.509: {reason}")]
    Malformed { index: usize, reason: String },
    /// A leaf pasted in by mistake would make every peer fail verification.
    #[error("certificate {index} ({subject}) is not a CA certificate")]
    NotCa { index: usize, subject: String },
    #[error("certificate {index} is not usable as a trust anchor: {reason}")]
    NotAnchor { index: usize, reason: String },
}

/// The roots this node trusts for peers of its trust domain. Several roots may be
/// present at once, so a root can be rotated without downtime.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Arc<Vec<CertificateDer<'static>>>,
}

impl TrustBundle {
    /// Reads every certificate in a PEM file; see [`TrustBundle::from_pem`].
    pub fn from_pem_file(path: &Path, trust_domain: &str) -> Result<Self, TrustBundleError> {
        let bytes = std::fs::read(path).map_err(|source| TrustBundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&bytes, trust_domain).map_err(|defect| TrustBundleError::Invalid {
            path: path.to_path_buf(),
            defect,
        })
    }

    /// Parses PEM roots: at least one, each a CA certificate that rustls
    /// accepts as a trust anchor. Checked here, before a bundle is swapped in,
    /// so a bad file is refused as a whole instead of breaking the TLS configs.
    pub fn from_pem(pem: &[u8], trust_domain: &str) -> Result<Self, BundleDefect> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleDefect::NotPem(e.to_string()))?;
        if roots.is_empty() {
            return Err(BundleDefect::NoCertificate);
        }
        for (index, root) in roots.iter().enumerate() {
            let (_, cert) =
                X509Certificate::from_der(root.as_ref()).map_err(|e| BundleDefect::Malformed {
                    index,
                    reason: e.to_string(),
                })?;
            if !cert.is_ca() {
                return Err(BundleDefect::NotCa {
                    index,
                    subject: cert.subject().to_string(),
                });
            }
            rustls::RootCertStore::empty()
                .add(root.clone())
                .map_err(|e| BundleDefect::NotAnchor {
                    index,
                    reason: e.to_string(),
                })?;
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots: Arc::new(roots),
        })
    }

    /// The roots as PEM, for clients that take PEM (the CA client).
    pub fn to_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .roots
            .iter()
            .map(|der| pem::Pem::new("CERTIFICATE", der.as_ref()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// SHA-256 of each root's DER, in the `AB:CD:...` form `openssl x509
    /// -fingerprint -sha256` prints, so an operator can compare the two.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|der| sha256_hex(der.as_ref()))
            .collect()
    }
}

/// SHA-256 from the ring provider rustls already carries, so the agent needs no
/// second digest implementation.
fn sha256_hex(data: &[u8]) -> String {
    let Some(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() else {
        return String::new();
    };
    suite
        .common
        .hash_provider
        .hash(data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    use super::*;

    /// A self-signed certificate, a CA or not, as PEM.
    pub(crate) fn self_signed(name: &str, ca: bool) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn parse(pem: &str) -> Result<TrustBundle, BundleDefect> {
        TrustBundle::from_pem(pem.as_bytes(), "cluster.local")
    }

    #[test]
    fn bundle_takes_several_ca_roots_and_round_trips_as_pem() {
        let pem = format!(
            "# mesh roots\n{}{}",
            self_signed("a", true),
            self_signed("b", true)
        );
        let bundle = parse(&pem).unwrap();
        assert_eq!(bundle.roots.len(), 2);
        let again = parse(&bundle.to_pem()).unwrap();
        assert_eq!(again.roots, bundle.roots);
        let prints = bundle.fingerprints();
        assert_eq!(prints.len(), 2);
        assert_ne!(prints[0], prints[1]);
        assert_eq!(prints[0].len(), 32 * 3 - 1);
    }

    #[test]
    fn fingerprint_is_sha256() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn unusable_bundles_say_why() {
        assert_eq!(parse("").unwrap_err(), BundleDefect::NoCertificate);
        assert_eq!(
            parse("just text\n").unwrap_err(),
            BundleDefect::NoCertificate
        );
        assert!(matches!(
            parse("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(BundleDefect::NotPem(_))
        ));
        let not_x509 = pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            vec![0x30, 0x03, 0x02, 0x01, 0x01],
        ));
        assert!(matches!(
            parse(&not_x509),
            Err(BundleDefect::Malformed { index: 0, .. })
        ));
        let leaf = format!(
            "{}{}",
            self_signed("root", true),
            self_signed("a leaf", false)
        );
        match parse(&leaf).unwrap_err() {
            BundleDefect::NotCa { index, subject } => {
                assert_eq!(index, 1);
                assert!(subject.contains("a leaf"), "{subject}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        let missing = TrustBundle::from_pem_file(&path, "cluster.local").unwrap_err();
        assert!(matches!(missing, TrustBundleError::Read { .. }));
        std::fs::write(&path, self_signed("leaf", false)).unwrap();
        let message = TrustBundle::from_pem_file(&path, "cluster.local")
            .unwrap_err()
            .to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a CA"), "{message}");
    }
}
