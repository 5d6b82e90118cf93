//! The CA client of the running agent: each request carries the token file's
//! current token, and the CA's serving certificate is verified against the trust
//! bundle in force, which may change while the agent runs (a root rotation).
//!
//! A new token rides the existing connection, since it is per-call metadata.
//! New roots need a new TLS configuration, so they swap in a new `CaClient`
//! whose connection opens (verified against the new roots) on its next request;
//! calls already in flight finish on the old connection.

use std::time::Duration;

use ambit_ca::SpiffeId;
use ambit_ca::client::{CaClient, CaClientConfig, CaClientError};
use arc_swap::ArcSwap;
use futures::future::BoxFuture;

use super::ca_client::{CertificateIssuer, IssueError};
use super::certificate::TrustBundle;
use super::token_file::TokenFile;

/// A CA client whose token and roots follow their files.
#[derive(Debug)]
pub struct RotatingCaClient {
    /// Address, server name and timeouts; roots and token are filled per use.
    config: CaClientConfig,
    client: ArcSwap<CaClient>,
    token: TokenFile,
}

impl RotatingCaClient {
    /// A client verifying the CA against `roots` and authenticating with the
    /// token read from `token` at each request (`config.roots_pem` and
    /// `config.token` are not used).
    pub fn new(
        config: CaClientConfig,
        roots: &TrustBundle,
        token: TokenFile,
    ) -> Result<Self, CaClientError> {
        let client = client_for(&config, roots)?;
        Ok(Self {
            config,
            client: ArcSwap::from_pointee(client),
            token,
        })
    }

    /// Verifies the CA against `roots` from the next connection on.
    pub fn set_trust_bundle(&self, roots: &TrustBundle) -> Result<(), CaClientError> {
        self.client
            .store(std::sync::Arc::new(client_for(&self.config, roots)?));
        Ok(())
    }

    pub fn token_file(&self) -> &TokenFile {
        &self.token
    }
}

fn client_for(config: &CaClientConfig, roots: &TrustBundle) -> Result<CaClient, CaClientError> {
    CaClient::new(CaClientConfig {
        roots_pem: roots.to_pem(),
        token: None,
        ..config.clone()
    })
}

impl CertificateIssuer for RotatingCaClient {
    fn create_certificate<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
        identity: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Vec<String>, IssueError>> {
        Box::pin(async move {
            let token = self.token.token().await?;
            let client = self.client.load().with_token(&token)?;
            Ok(client
                .create_certificate(csr_pem, validity, identity)
                .await?)
        })
    }
}
