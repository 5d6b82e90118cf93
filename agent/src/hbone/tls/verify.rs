//! Certificate verifiers for HBONE's mutual TLS.
//!
//! Workload certificates carry no DNS names: a peer is named by the one SPIFFE URI
//! SAN in its leaf. The client verifier checks the server chain against the trust
//! bundle and then requires that URI to be the destination workload's identity
//! (secure naming), so a client never hands its own certificate to the wrong server.
//! The server verifier checks the client chain and requires the client's identity to
//! belong to our trust domain. Both read the SAN with [`spiffe_id_of`].

use std::sync::Arc;

use ambit_ca::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a peer certificate does not name an acceptable workload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509")]
    Unparsable,
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; exactly one is allowed")]
    SeveralUris(usize),
    #[error("certificate URI SAN is not a workload SPIFFE ID: {0}")]
    Malformed(String),
    #[error("peer is {actual}, expected {expected}")]
    Mismatch {
        expected: Box<SpiffeId>,
        actual: Box<SpiffeId>,
    },
    #[error("peer {actual} is not in trust domain {expected}")]
    ForeignTrustDomain {
        expected: String,
        actual: Box<SpiffeId>,
    },
}

impl From<IdentityError> for TlsError {
    fn from(e: IdentityError) -> Self {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// The workload identity a leaf certificate names: its single URI SAN, parsed as a SPIFFE ID.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| IdentityError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .ok_or(IdentityError::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId),
        [uri] => uri
            .parse()
            .map_err(|_| IdentityError::Malformed((*uri).to_string())),
        many => Err(IdentityError::SeveralUris(many.len())),
    }
}

/// Client side: the server chain must reach a trusted root and its leaf must name
/// exactly the destination workload we meant to reach. The TLS server name is
/// ignored: HBONE sends no SNI and the destination is named by identity alone.
#[derive(Debug)]
pub struct SecureNamingVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SecureNamingVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for SecureNamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let actual = spiffe_id_of(end_entity)?;
        if actual != self.expected {
            return Err(IdentityError::Mismatch {
                expected: Box::new(self.expected.clone()),
                actual: Box::new(actual),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        // The configs offer TLS 1.3 only; reaching this would be a rustls bug.
        Err(TlsError::General("HBONE speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: rustls' WebPKI client verifier for the chain and the clientAuth
/// purpose, plus the requirement that the client names a workload of our trust domain.
#[derive(Debug)]
pub struct TrustDomainClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl TrustDomainClientVerifier {
    pub fn new(chain: Arc<dyn ClientCertVerifier>, trust_domain: String) -> Self {
        Self {
            chain,
            trust_domain,
        }
    }
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let actual = spiffe_id_of(end_entity)?;
        if actual.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                expected: self.trust_domain.clone(),
                actual: Box::new(actual),
            }
            .into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
