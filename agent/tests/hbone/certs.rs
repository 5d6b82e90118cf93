//! A throwaway CA for HBONE tests and benches: an ECDSA P-256 root (optionally an
//! intermediate under it) issuing workload certificates with one SPIFFE URI SAN
//! and both serverAuth and clientAuth, as the real CA issues them.

// Fixture code outside #[test] fns: a failure here is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_agent::identity::{TrustBundle, WorkloadCertificate};
use ambit_ca::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCa {
    trust_domain: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The root's DER (what peers trust).
    root: CertificateDer<'static>,
    /// Intermediates between the issuer and the root, issuer first.
    intermediates: Vec<CertificateDer<'static>>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let issuer =
            CertifiedIssuer::self_signed(ca_params("test root"), KeyPair::generate().unwrap())
                .unwrap();
        let root = issuer.der().clone();
        Self {
            trust_domain: trust_domain.to_string(),
            issuer,
            root,
            intermediates: Vec::new(),
        }
    }

    /// A CA that issues through an intermediate signed by this one's key.
    pub fn intermediate(&self) -> Self {
        let issuer = CertifiedIssuer::signed_by(
            ca_params("test intermediate"),
            KeyPair::generate().unwrap(),
            &self.issuer,
        )
        .unwrap();
        let mut intermediates = vec![issuer.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Self {
            trust_domain: self.trust_domain.clone(),
            issuer,
            root: self.root.clone(),
            intermediates,
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle {
            trust_domain: self.trust_domain.clone(),
            roots: Arc::new(vec![self.root.clone()]),
        }
    }

    pub fn id(&self, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, namespace, service_account).unwrap()
    }

    pub fn issue(&self, namespace: &str, service_account: &str) -> Arc<WorkloadCertificate> {
        let id = self.id(namespace, service_account);
        self.issue_with_uri(id.clone(), &id.to_string())
    }

    /// A certificate whose SAN says `uri` while the struct claims `identity`.
    pub fn issue_with_uri(&self, identity: SpiffeId, uri: &str) -> Arc<WorkloadCertificate> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let now = SystemTime::now();
        Arc::new(WorkloadCertificate {
            identity,
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(24 * 3600),
        })
    }
}
