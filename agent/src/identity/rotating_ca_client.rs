//! The CA client of the running agent: each request carries the token file's
//! current token, and the CA's serving certificate is verified against the trust
//! bundle in force, which may change while the agent runs (a root rotation).
//!
//! A new token rides the existing connection, since it is per-call metadata.
//! New roots need a new TLS configuration, so they swap in a new `CaClient`
//! whose connection opens (verified against the new roots) on its next request;
//! calls already in flight finish on the old connection.
//!
//! When the CA cannot be reached, the error names the address, and the host
//! when it does not resolve (a `--ca-address` whose Service name is wrong).

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
            match client.create_certificate(csr_pem, validity, identity).await {
                Ok(chain) => Ok(chain),
                Err(error) if error.is_unavailable() => {
                    Err(explain_unavailable(&self.config.address, error).await)
                }
                Err(error) => Err(error.into()),
            }
        })
    }
}

/// Names the host behind an `Unavailable` answer: tonic reports a name that
/// does not resolve only as "dns error", which leaves the operator guessing
/// which name the agent tried. One lookup of our own says whether it resolves.
async fn explain_unavailable(address: &str, error: CaClientError) -> IssueError {
    let Some(authority) = authority_of(address) else {
        return IssueError::Unreachable {
            address: address.to_owned(),
            source: error,
        };
    };
    match tokio::net::lookup_host(&authority).await {
        Ok(_) => IssueError::Unreachable {
            address: address.to_owned(),
            source: error,
        },
        Err(lookup) => IssueError::Unresolved {
            host: host_of(&authority).to_owned(),
            address: address.to_owned(),
            reason: lookup.to_string(),
        },
    }
}

/// `host:port` of `https://host:port[/...]` (the port defaulting to 443).
fn authority_of(address: &str) -> Option<String> {
    let uri: http::Uri = address.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(443);
    Some(format!("{host}:{port}"))
}

fn host_of(authority: &str) -> &str {
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(message: &str) -> CaClientError {
        CaClientError::Status {
            code: tonic::Code::Unavailable,
            message: message.into(),
        }
    }

    #[tokio::test]
    async fn an_unresolvable_ca_host_is_named() {
        let status = unavailable("dns error");
        // `.invalid` never resolves (RFC 6761).
        let error = explain_unavailable("https://ambit-ca.invalid:15012", status).await;
        let text = error.to_string();
        assert!(matches!(error, IssueError::Unresolved { .. }), "{text}");
        assert!(
            text.starts_with("CA host \"ambit-ca.invalid\" (--ca-address https://ambit-ca.invalid:15012) does not resolve: "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_resolvable_but_closed_ca_is_unreachable() {
        let status = unavailable("connection refused");
        let error = explain_unavailable("https://127.0.0.1:1", status).await;
        assert_eq!(
            error.to_string(),
            "CA at https://127.0.0.1:1 unreachable: CA answered Unavailable: connection refused"
        );
    }

    #[test]
    fn authorities() {
        assert_eq!(
            authority_of("https://ambit-ca:15012").as_deref(),
            Some("ambit-ca:15012")
        );
        assert_eq!(
            authority_of("https://ca.example").as_deref(),
            Some("ca.example:443")
        );
        assert_eq!(host_of("ambit-ca:15012"), "ambit-ca");
    }
}
