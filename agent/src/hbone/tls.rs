//! rustls configurations for HBONE: TLS 1.3 only, AES-GCM suites on the ring
//! provider, ALPN `h2`, no SNI, mutual authentication by SPIFFE identity.
//!
//! Building a config parses keys and certificates, so configs are cached: one
//! server config per local workload certificate (the dialled pod's) and one client
//! config per (source certificate, destination identity) pair, because the
//! destination identity is checked inside the handshake (see [`verify`]). A rotated
//! certificate is a new cache key, so it gets a new config on next use while open
//! connections keep theirs; configs of expired certificates are pruned, and a new
//! trust bundle drops them all.

pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use ambit_ca::SpiffeId;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::pki_types::CertificateDer;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};

use crate::identity::{TrustBundle, WorkloadCertificate};
pub use verify::{IdentityError, spiffe_id_of};
use verify::{SecureNamingVerifier, TrustDomainClientVerifier};

/// The only application protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("trust bundle for {trust_domain} has no usable root: {source}")]
    Roots {
        trust_domain: String,
        source: rustls::Error,
    },
    #[error("trust bundle verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate of {identity} is unusable: {source}")]
    Certificate {
        identity: Box<SpiffeId>,
        source: rustls::Error,
    },
    #[error("certificate of {identity} has an empty chain")]
    EmptyChain { identity: Box<SpiffeId> },
}

/// The provider every HBONE config uses: ring, restricted to TLS 1.3 AES-GCM.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

/// The peer's workload identity once a handshake completed (both sides).
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, IdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(IdentityError::NoSpiffeId)?;
    spiffe_id_of(leaf)
}

/// The trust bundle in the forms the verifiers need, swapped as a whole.
struct Trust {
    bundle: TrustBundle,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<TrustDomainClientVerifier>,
}

struct Cached<T> {
    not_after: SystemTime,
    config: Arc<T>,
}

/// Builds and caches HBONE TLS configs; shared by the HBONE server and client pool.
pub struct TlsConfigs {
    provider: Arc<CryptoProvider>,
    trust: ArcSwap<Trust>,
    /// Keyed by the leaf certificate itself: a rotated certificate is a new key,
    /// and two pods sharing an identity but not a certificate never collide.
    servers: Mutex<HashMap<CertificateDer<'static>, Cached<ServerConfig>>>,
    clients: Mutex<HashMap<(CertificateDer<'static>, SpiffeId), Cached<ClientConfig>>>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("trust_domain", &self.trust.load().bundle.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TlsConfigs {
    pub fn new(bundle: TrustBundle) -> Result<Self, TlsConfigError> {
        let provider = crypto_provider();
        let trust = Trust::build(bundle, &provider)?;
        Ok(Self {
            provider,
            trust: ArcSwap::from_pointee(trust),
            servers: Mutex::default(),
            clients: Mutex::default(),
        })
    }

    /// Replaces the roots; configs built from the old roots are dropped from the cache.
    pub fn set_trust_bundle(&self, bundle: TrustBundle) -> Result<(), TlsConfigError> {
        let trust = Trust::build(bundle, &self.provider)?;
        // Hold both cache locks across the swap so no config built from the old
        // roots is inserted after the clear.
        let mut servers = self.servers.lock();
        let mut clients = self.clients.lock();
        self.trust.store(Arc::new(trust));
        servers.clear();
        clients.clear();
        Ok(())
    }

    pub fn trust_domain(&self) -> String {
        self.trust.load().bundle.trust_domain.clone()
    }

    /// The config a server presents for the local workload holding `cert`.
    pub fn server_config(
        &self,
        cert: &WorkloadCertificate,
    ) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let leaf = leaf_of(cert)?;
        let mut servers = self.servers.lock();
        if let Some(cached) = servers.get(leaf) {
            return Ok(cached.config.clone());
        }
        let trust = self.trust.load();
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| cert_error(cert, source))?
            .with_client_cert_verifier(trust.client_verifier.clone())
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .map_err(|source| cert_error(cert, source))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: every connection proves its identity with a full handshake.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        prune_expired(&mut servers);
        servers.insert(
            leaf.clone(),
            Cached {
                not_after: cert.not_after,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// The config a client uses to reach `destination` as the workload holding `source`.
    pub fn client_config(
        &self,
        source: &WorkloadCertificate,
        destination: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let leaf = leaf_of(source)?;
        let key = (leaf.clone(), destination.clone());
        let mut clients = self.clients.lock();
        if let Some(cached) = clients.get(&key) {
            return Ok(cached.config.clone());
        }
        let trust = self.trust.load();
        let verifier = SecureNamingVerifier::new(
            trust.roots.clone(),
            destination.clone(),
            self.provider.signature_verification_algorithms,
        );
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source_err| cert_error(source, source_err))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(source.chain.clone(), source.key.clone_key())
            .map_err(|source_err| cert_error(source, source_err))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        prune_expired(&mut clients);
        clients.insert(
            key,
            Cached {
                not_after: source.not_after,
                config: config.clone(),
            },
        );
        Ok(config)
    }
}

impl Trust {
    fn build(bundle: TrustBundle, provider: &Arc<CryptoProvider>) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for root in bundle.roots.iter() {
            roots
                .add(root.clone())
                .map_err(|source| TlsConfigError::Roots {
                    trust_domain: bundle.trust_domain.clone(),
                    source,
                })?;
        }
        let roots = Arc::new(roots);
        let chain =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let client_verifier = Arc::new(TrustDomainClientVerifier::new(
            chain,
            bundle.trust_domain.clone(),
        ));
        Ok(Self {
            bundle,
            roots,
            client_verifier,
        })
    }
}

fn leaf_of(cert: &WorkloadCertificate) -> Result<&CertificateDer<'static>, TlsConfigError> {
    cert.chain
        .first()
        .ok_or_else(|| TlsConfigError::EmptyChain {
            identity: Box::new(cert.identity.clone()),
        })
}

fn cert_error(cert: &WorkloadCertificate, source: rustls::Error) -> TlsConfigError {
    TlsConfigError::Certificate {
        identity: Box::new(cert.identity.clone()),
        source,
    }
}

/// Drops configs whose certificate has expired, so workloads that left the node
/// do not pin their configs forever.
fn prune_expired<K, T>(cache: &mut HashMap<K, Cached<T>>) {
    let now = SystemTime::now();
    cache.retain(|_, cached| cached.not_after > now);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// A self-signed certificate with the given URI SANs (chain checks are the
    /// integration tests' business; these are about identities and caching).
    fn cert(uris: &[&str]) -> WorkloadCertificate {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let der = params.self_signed(&key).unwrap().der().clone();
        let now = SystemTime::now();
        WorkloadCertificate {
            identity: "spiffe://cluster.local/ns/default/sa/a".parse().unwrap(),
            chain: vec![der],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: now,
            not_after: now + Duration::from_secs(3600),
        }
    }

    fn configs(root: &WorkloadCertificate) -> TlsConfigs {
        TlsConfigs::new(TrustBundle {
            trust_domain: "cluster.local".into(),
            roots: Arc::new(root.chain.clone()),
        })
        .unwrap()
    }

    #[test]
    fn reads_the_single_spiffe_uri() {
        let id = "spiffe://cluster.local/ns/default/sa/a";
        assert_eq!(spiffe_id_of(&cert(&[id]).chain[0]).unwrap().to_string(), id);
        assert_eq!(
            spiffe_id_of(&cert(&[]).chain[0]),
            Err(IdentityError::NoSpiffeId)
        );
        assert_eq!(
            spiffe_id_of(&cert(&[id, "spiffe://cluster.local/ns/x/sa/y"]).chain[0]),
            Err(IdentityError::SeveralUris(2))
        );
        assert!(matches!(
            spiffe_id_of(&cert(&["https://example.invalid/a"]).chain[0]),
            Err(IdentityError::Malformed(_))
        ));
        assert_eq!(
            spiffe_id_of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            Err(IdentityError::Unparsable)
        );
    }

    #[test]
    fn configs_speak_tls13_h2_without_sni() {
        let provider = crypto_provider();
        assert!(!provider.cipher_suites.is_empty());
        for suite in &provider.cipher_suites {
            assert!(suite.tls13().is_some(), "{:?}", suite.suite());
            assert!(format!("{:?}", suite.suite()).contains("GCM"));
        }
        let c = cert(&["spiffe://cluster.local/ns/default/sa/a"]);
        let tls = configs(&c);
        let server = tls.server_config(&c).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        let client = tls.client_config(&c, &c.identity).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!client.enable_sni);
    }

    #[test]
    fn cache_follows_certificate_rotation_and_bundle() {
        let a = cert(&["spiffe://cluster.local/ns/default/sa/a"]);
        let tls = configs(&a);
        let first = tls.server_config(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &tls.server_config(&a).unwrap()));
        let client = tls.client_config(&a, &a.identity).unwrap();
        assert!(Arc::ptr_eq(
            &client,
            &tls.client_config(&a, &a.identity).unwrap()
        ));
        let other: SpiffeId = "spiffe://cluster.local/ns/default/sa/b".parse().unwrap();
        assert!(!Arc::ptr_eq(
            &client,
            &tls.client_config(&a, &other).unwrap()
        ));

        let rotated = cert(&["spiffe://cluster.local/ns/default/sa/a"]);
        assert!(!Arc::ptr_eq(&first, &tls.server_config(&rotated).unwrap()));

        tls.set_trust_bundle(TrustBundle {
            trust_domain: "cluster.local".into(),
            roots: Arc::new(rotated.chain.clone()),
        })
        .unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.server_config(&a).unwrap()));
    }

    #[test]
    fn bad_bundle_is_an_error() {
        let result = TlsConfigs::new(TrustBundle {
            trust_domain: "cluster.local".into(),
            roots: Arc::new(vec![CertificateDer::from(vec![1, 2, 3])]),
        });
        assert!(matches!(result, Err(TlsConfigError::Roots { .. })));
    }
}
