//! The identity manager's view of the CA: something that signs a CSR for an
//! identity. `ambit_ca::client::CaClient` is the real one; tests inject others.
//!
//! `fetch` does one issuance end to end: a fresh P-256 key generated here (it
//! never leaves the node), a CSR naming only the SPIFFE ID, the call, and the
//! checks on what came back.

use std::time::Duration;

use ambit_ca::SpiffeId;
use ambit_ca::client::{CaClient, CaClientError};
use futures::future::BoxFuture;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certificate::{ChainError, WorkloadCertificate};
use super::token_file::TokenError;

/// Signs CSRs for workload identities.
pub trait CertificateIssuer: Send + Sync + 'static {
    /// Returns the PEM chain, leaf first.
    fn create_certificate<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
        identity: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Vec<String>, IssueError>>;
}

impl CertificateIssuer for CaClient {
    fn create_certificate<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
        identity: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Vec<String>, IssueError>> {
        Box::pin(async move {
            Ok(CaClient::create_certificate(self, csr_pem, validity, identity).await?)
        })
    }
}

/// Why an issuer could not get a chain signed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Ca(#[from] CaClientError),
    /// No token to authenticate with (see [`TokenFile`](super::TokenFile)).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The CA's host name does not resolve: the operator must see which name
    /// was tried, not only the transport's "dns error".
    #[error("CA host {host:?} (--ca-address {address}) does not resolve: {reason}")]
    Unresolved {
        host: String,
        address: String,
        reason: String,
    },
    /// The CA could not be reached at an address that resolves.
    #[error("CA at {address} unreachable: {source}")]
    Unreachable {
        address: String,
        source: CaClientError,
    },
}

/// Why one issuance attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("generating key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("CA answer unusable: {0}")]
    Chain(#[from] ChainError),
}

/// Generates a key, asks `issuer` to certify it as `identity`, and checks the answer.
pub async fn fetch(
    issuer: &dyn CertificateIssuer,
    identity: &SpiffeId,
    validity: Duration,
) -> Result<WorkloadCertificate, FetchError> {
    let (key, csr_pem) = key_and_csr(identity)?;
    let chain = issuer
        .create_certificate(&csr_pem, validity, identity)
        .await?;
    let public_key_info = key.subject_public_key_info();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(WorkloadCertificate::from_issued(
        identity.clone(),
        key_der,
        &public_key_info,
        &chain,
    )?)
}

/// A fresh ECDSA P-256 key and a CSR with an empty subject and one URI SAN.
pub fn key_and_csr(identity: &SpiffeId) -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(
        identity.to_string(),
    )?)];
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}
