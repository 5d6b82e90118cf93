//! The client the agent uses to ask the CA for workload certificates, over TLS,
//! with its node's bearer token and the workload named in `ImpersonatedIdentity`.
//!
//! One HTTP/2 connection, opened lazily and re-opened after failures, carries
//! every request; callers may share a `CaClient` freely (it is cheap to clone).

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::SpiffeId;
use crate::api::IMPERSONATED_IDENTITY;
use crate::api::proto::IstioCertificateRequest;
use crate::api::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::authn::BearerToken;

/// Where and how to reach the CA.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `https://host:port`.
    pub address: String,
    /// Name the CA's serving certificate must carry (DNS SAN).
    pub server_name: String,
    /// PEM roots the CA's serving certificate must chain to.
    pub roots_pem: String,
    /// This node's token; sent as `authorization: Bearer <token>`.
    pub token: Option<BearerToken>,
    pub connect_timeout: Duration,
    /// Per-call deadline (also sent to the server as `grpc-timeout`).
    pub request_timeout: Duration,
}

impl CaClientConfig {
    pub fn new(address: impl Into<String>, roots_pem: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            server_name: crate::DEFAULT_SERVING_NAME.to_string(),
            roots_pem: roots_pem.into(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("CA client configuration: {0}")]
    Config(String),
    /// The CA answered with an error status (refused, or could not be reached:
    /// tonic reports connection failures as `Unavailable`).
    #[error("CA answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("CA answered with an empty certificate chain")]
    EmptyChain,
}

impl CaClientError {
    /// Whether the CA could not be reached at all (tonic reports connection
    /// and name resolution failures as `Unavailable`).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::Unavailable,
                ..
            }
        )
    }

    /// Whether retrying later may succeed (the CA was unreachable or overloaded),
    /// as opposed to a refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown,
                ..
            }
        )
    }
}

impl From<tonic::Status> for CaClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// Client for the CA's `CreateCertificate`.
#[derive(Clone)]
pub struct CaClient {
    grpc: IstioCertificateServiceClient<Channel>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient").finish_non_exhaustive()
    }
}

impl CaClient {
    /// Builds the client; the connection is opened on first use.
    pub fn new(config: CaClientConfig) -> Result<Self, CaClientError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&config.roots_pem))
            .domain_name(config.server_name.clone());
        let endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| CaClientError::Config(format!("address {:?}: {e}", config.address)))?
            .tls_config(tls)
            .map_err(|e| CaClientError::Config(format!("TLS: {e}")))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let authorization = config.token.as_ref().map(authorization).transpose()?;
        Ok(Self {
            grpc: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            authorization,
            request_timeout: config.request_timeout,
        })
    }

    /// The same client, on the same connection, sending `token` from now on: a
    /// caller whose token rotates (a projected service-account token) swaps it
    /// without reconnecting.
    pub fn with_token(&self, token: &BearerToken) -> Result<Self, CaClientError> {
        Ok(Self {
            authorization: Some(authorization(token)?),
            ..self.clone()
        })
    }

    /// Asks the CA to sign `csr_pem` for `identity`; returns the PEM chain, leaf first.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        validity: Duration,
        identity: &SpiffeId,
    ) -> Result<Vec<String>, CaClientError> {
        let metadata = prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                },
            )]),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        request.set_timeout(self.request_timeout);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let response = self.grpc.clone().create_certificate(request).await?;
        let chain = response.into_inner().cert_chain;
        if chain.is_empty() {
            return Err(CaClientError::EmptyChain);
        }
        Ok(chain)
    }
}

fn authorization(
    token: &BearerToken,
) -> Result<MetadataValue<tonic::metadata::Ascii>, CaClientError> {
    format!("Bearer {}", token.expose())
        .parse()
        .map_err(|_| CaClientError::Config("token is not valid header text".into()))
}
