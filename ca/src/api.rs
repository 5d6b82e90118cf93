//! Istio's CA gRPC API (`istio.v1.auth.IstioCertificateService/CreateCertificate`)
//! served over TLS: authenticate the caller, decide the identity it asks for,
//! check the node binding, sign. Every refusal is a gRPC status with a message
//! that says what was wrong.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::SpiffeId;
use crate::authn::{Authenticator, AuthnError, BearerToken};
use crate::binding::IdentityBinding;
use crate::signer::{SignError, Signer};

/// Messages generated from `proto/ca.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::{IstioCertificateRequest, IstioCertificateResponse};

/// Key in the request's `metadata` Struct naming the workload a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Largest request message accepted; a CSR is a few KiB at most.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Limits that stop slow or greedy clients from holding the server's resources.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Whole-call deadline, including reading the request body.
    pub request_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Concurrent streams one HTTP/2 connection may open.
    pub max_streams_per_connection: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_streams_per_connection: 1024,
        }
    }
}

/// The CA service: authentication, binding, signing.
#[derive(Clone)]
pub struct CaService {
    signer: Arc<Signer>,
    authn: Arc<dyn Authenticator>,
    binding: Arc<dyn IdentityBinding>,
}

impl CaService {
    pub fn new(
        signer: Arc<Signer>,
        authn: Arc<dyn Authenticator>,
        binding: Arc<dyn IdentityBinding>,
    ) -> Self {
        Self {
            signer,
            authn,
            binding,
        }
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(BearerToken::from_header)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing bearer token: send `authorization: Bearer <token>`",
                )
            })?;
        let node = self.authn.authenticate(&token).await.map_err(|e| match e {
            AuthnError::UnknownToken => Status::unauthenticated("bearer token not recognised"),
            AuthnError::Unavailable(_) => Status::unavailable(e.to_string()),
        })?;
        let request = request.into_inner();

        let identity = match impersonated_identity(&request)? {
            Some(id) => id,
            // A proxy asking for itself names its identity only in the CSR.
            None => crate::signer::csr_identity(&request.csr).map_err(sign_status)?,
        };
        if !self.binding.may_hold(&node, &identity) {
            tracing::warn!(%node, %identity, decision = "deny", reason = "not on node", "certificate refused");
            return Err(Status::permission_denied(format!(
                "node {node} runs no workload with identity {identity}"
            )));
        }
        let requested = match request.validity_duration {
            d if d < 0 => {
                return Err(Status::invalid_argument(format!(
                    "validity_duration {d} is negative"
                )));
            }
            0 => None,
            d => Some(Duration::from_secs(d.unsigned_abs())),
        };
        let issued = self
            .signer
            .sign(&request.csr, &identity, requested)
            .map_err(|e| {
                tracing::warn!(%node, %identity, decision = "deny", reason = %e, "certificate refused");
                sign_status(e)
            })?;
        tracing::debug!(%node, %identity, decision = "issue", "certificate issued");
        Ok(IstioCertificateResponse {
            cert_chain: issued.chain_pem,
        })
    }
}

fn impersonated_identity(request: &IstioCertificateRequest) -> Result<Option<SpiffeId>, Status> {
    use prost_types::value::Kind;
    let Some(value) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => s.parse().map(Some).map_err(|e| {
            Status::invalid_argument(format!("{IMPERSONATED_IDENTITY} metadata: {e}"))
        }),
        _ => Err(Status::invalid_argument(format!(
            "{IMPERSONATED_IDENTITY} metadata must be a string SPIFFE ID"
        ))),
    }
}

fn sign_status(e: SignError) -> Status {
    match e {
        SignError::ForeignTrustDomain { .. } => Status::permission_denied(e.to_string()),
        SignError::Internal(_) => Status::internal(e.to_string()),
        SignError::TooLarge(_)
        | SignError::NotPem(_)
        | SignError::Malformed(_)
        | SignError::BadSignature
        | SignError::UnsupportedKey(_)
        | SignError::WrongSan { .. } => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.handle(request).await.map(Response::new)
    }
}

/// The CA's own TLS identity: PEM chain (leaf first) and PEM key.
#[derive(Clone)]
pub struct ServingIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Serves the CA API over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CaService,
    identity: ServingIdentity,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(identity.chain_pem, identity.key_pem))
        .timeout(limits.handshake_timeout);
    Server::builder()
        .tls_config(tls)?
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .tcp_nodelay(true)
        .add_service(
            IstioCertificateServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
