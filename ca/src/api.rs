//! Istio's CA gRPC API (`istio.v1.auth.IstioCertificateService/CreateCertificate`)
//! served over TLS: authenticate the caller, decide the identity it asks for,
//! check the node binding, sign. Every refusal is a gRPC status with a message
//! that says what was wrong, a log line at info and a count by reason.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::SpiffeId;
use crate::authn::{Authenticator, AuthnError, BearerToken, NodeName};
use crate::binding::IdentityBinding;
use crate::metrics::{CaMetrics, RefusalReason};
use crate::serving::{ServingCert, accept_tls};
use crate::signer::{Issued, SignError, Signer};

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
    metrics: Option<CaMetrics>,
}

/// A refused request: the status for the caller, and what the log line and
/// the metrics say. The node is known once the token was accepted.
struct Refused {
    reason: RefusalReason,
    node: Option<NodeName>,
    identity: Option<SpiffeId>,
    status: Status,
}

impl Refused {
    fn new(reason: RefusalReason, status: Status) -> Self {
        Self {
            reason,
            node: None,
            identity: None,
            status,
        }
    }

    fn on(mut self, node: &NodeName, identity: Option<&SpiffeId>) -> Self {
        self.node = Some(node.clone());
        self.identity = identity.cloned();
        self
    }
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
            metrics: None,
        }
    }

    /// Counts issued certificates and refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: CaMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Answers one request; every refusal is logged at info (node, identity,
    /// reason, the message sent; never the token) and counted by reason.
    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        match self.decide(request).await {
            Ok((node, identity, issued, took)) => {
                if let Some(m) = &self.metrics {
                    m.issued(took);
                }
                tracing::debug!(%node, %identity, %peer, decision = "issue", "certificate issued");
                Ok(IstioCertificateResponse {
                    cert_chain: issued.chain_pem,
                })
            }
            Err(refused) => {
                if let Some(m) = &self.metrics {
                    m.refused(refused.reason);
                }
                let node = refused
                    .node
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), ToString::to_string);
                let identity = refused
                    .identity
                    .as_ref()
                    .map_or_else(|| "-".to_string(), ToString::to_string);
                tracing::info!(
                    %node,
                    %identity,
                    %peer,
                    decision = "deny",
                    reason = %refused.reason.as_str(),
                    code = ?refused.status.code(),
                    detail = refused.status.message(),
                    "certificate refused"
                );
                Err(refused.status)
            }
        }
    }

    async fn decide(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<(NodeName, SpiffeId, Issued, Duration), Refused> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(BearerToken::from_header)
            .ok_or_else(|| {
                Refused::new(
                    RefusalReason::MissingToken,
                    Status::unauthenticated(
                        "missing bearer token: send `authorization: Bearer <token>`",
                    ),
                )
            })?;
        let node = self.authn.authenticate(&token).await.map_err(|e| match e {
            AuthnError::UnknownToken => Refused::new(
                RefusalReason::UnknownToken,
                Status::unauthenticated("bearer token not recognised"),
            ),
            AuthnError::Unavailable(_) => Refused::new(
                RefusalReason::AuthnUnavailable,
                Status::unavailable(e.to_string()),
            ),
        })?;
        let request = request.into_inner();

        let identity = match impersonated_identity(&request) {
            Ok(Some(id)) => id,
            // A proxy asking for itself names its identity only in the CSR.
            Ok(None) => crate::signer::csr_identity(&request.csr)
                .map_err(|e| sign_refusal(e).on(&node, None))?,
            Err(status) => {
                return Err(Refused::new(RefusalReason::BadRequest, status).on(&node, None));
            }
        };
        if !self.binding.may_hold(&node, &identity) {
            return Err(Refused::new(
                RefusalReason::NotOnNode,
                Status::permission_denied(format!(
                    "node {node} runs no workload with identity {identity}"
                )),
            )
            .on(&node, Some(&identity)));
        }
        let requested = match request.validity_duration {
            d if d < 0 => {
                return Err(Refused::new(
                    RefusalReason::BadRequest,
                    Status::invalid_argument(format!("validity_duration {d} is negative")),
                )
                .on(&node, Some(&identity)));
            }
            0 => None,
            d => Some(Duration::from_secs(d.unsigned_abs())),
        };
        let started = Instant::now();
        let issued = self
            .signer
            .sign(&request.csr, &identity, requested)
            .map_err(|e| sign_refusal(e).on(&node, Some(&identity)))?;
        Ok((node, identity, issued, started.elapsed()))
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

fn sign_refusal(e: SignError) -> Refused {
    let reason = match e {
        SignError::ForeignTrustDomain { .. } => RefusalReason::ForeignTrustDomain,
        SignError::Internal(_) => RefusalReason::SignFailed,
        SignError::TooLarge(_)
        | SignError::NotPem(_)
        | SignError::Malformed(_)
        | SignError::BadSignature
        | SignError::UnsupportedKey(_)
        | SignError::WrongSan { .. } => RefusalReason::BadCsr,
    };
    let status = match reason {
        RefusalReason::ForeignTrustDomain => Status::permission_denied(e.to_string()),
        RefusalReason::SignFailed => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    };
    Refused::new(reason, status)
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

/// Serves the CA API over TLS on `listener`, with the serving certificate in
/// force at each handshake, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CaService,
    identity: ServingCert,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = identity.server_config()?;
    let incoming = ReceiverStream::new(accept_tls(listener, tls, limits.handshake_timeout));
    Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            IstioCertificateServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Serving(#[from] crate::serving::ServingError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}
