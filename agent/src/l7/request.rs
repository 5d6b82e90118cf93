//! One request on the L7 path: normalize its path, authenticate its token,
//! decide it with the policies in force *now* (a policy change applies to the
//! next request of an open connection), then forward it to the pod or answer
//! it as Envoy would.
//!
//! [`Deciding`] holds the steps both protocols share; [`Handler`] is hyper's
//! service for HTTP/2 (h2c), and `h1` drives the same steps for HTTP/1.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_ca::SpiffeId;
use ambit_policy::http::{Headers, HttpRequest, RequestAuth, normalize_path};
use ambit_policy::{Connection, JwtPolicy, Target};
use http::{HeaderMap, Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2;

use super::L7;
use super::body::{Counted, RequestLog};
use super::metrics::ConnectionSeries;
use super::respond::{Body, Local};
use crate::metrics::TrafficLabels;
use crate::state::{Snapshot, Workload};

/// The request body as forwarded to the pod.
pub type UpBody = Counted<Incoming>;

/// What is fixed for the life of one client connection.
#[derive(Debug)]
pub struct Facts {
    pub client: SocketAddr,
    /// From the mTLS handshake; `None` on the plaintext path.
    pub peer: Option<SpiffeId>,
    pub dst: SocketAddr,
    pub labels: TrafficLabels,
}

/// The request headers as the policy engine reads them.
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Serves the requests of one client connection.
pub struct Handler {
    pub l7: Arc<L7>,
    pub facts: Facts,
    pub series: Arc<ConnectionSeries>,
    /// The pod's HTTP/2 connection; each request is a stream of it.
    pub upstream: http2::SendRequest<UpBody>,
}

fn host_of(parts: &http::request::Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let h = parts.headers.get(header::HOST)?;
            h.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Why a request is answered by the agent instead of the pod.
pub struct Refusal {
    pub answer: Local,
    pub why: Cow<'static, str>,
}

impl Refusal {
    pub fn new(answer: Local, why: impl Into<Cow<'static, str>>) -> Self {
        Self {
            answer,
            why: why.into(),
        }
    }
}

/// One request on its way through the checks, shared by the HTTP/1 path
/// and hyper's HTTP/2 path: [`start`](Self::start), then RequestAuthentication
/// with [`jwt`](Self::jwt), then [`decide`](Self::decide).
pub struct Deciding {
    snapshot: Arc<Snapshot>,
    dst: Arc<Workload>,
}

impl Deciding {
    /// Normalizes `raw_target` into `log.path` and finds the destination in
    /// the state in force now.
    pub fn start(
        l7: &L7,
        facts: &Facts,
        log: &mut RequestLog,
        raw_target: &str,
    ) -> Result<Self, Refusal> {
        match normalize_path(raw_target) {
            Ok(p) => log.path = p,
            Err(e) => {
                log.path = raw_target.to_owned();
                return Err(Refusal::new(Local::BadPath, e.to_string()));
            }
        }
        let snapshot = l7.state.current();
        let Some(dst) = snapshot.workload_by_ip(facts.dst.ip()).cloned() else {
            return Err(Refusal::new(
                Local::Denied,
                "destination is no longer in the state",
            ));
        };
        Ok(Self { snapshot, dst })
    }

    fn target(&self) -> Target<'_> {
        Target {
            namespace: &self.dst.namespace,
            labels: &self.dst.labels,
        }
    }

    /// The RequestAuthentication rules that apply to the destination.
    pub fn jwt(&self) -> JwtPolicy<'_> {
        self.snapshot
            .policies()
            .request_authentication(&self.target())
    }

    /// Decides the request; fills the log's policy, rule and reason.
    pub fn decide(
        &self,
        facts: &Facts,
        log: &mut RequestLog,
        headers: &dyn Headers,
        auth: Option<&RequestAuth>,
    ) -> Result<(), Refusal> {
        let principal = facts.peer.as_ref().map(SpiffeId::principal);
        let decision = self.snapshot.policies().evaluate_http(
            &self.target(),
            &Connection {
                src_ip: facts.client.ip(),
                src_principal: principal.as_deref(),
                src_namespace: facts.peer.as_ref().map(SpiffeId::namespace),
                dst_ip: facts.dst.ip(),
                dst_port: facts.dst.port(),
                mtls: facts.peer.is_some(),
            },
            &HttpRequest {
                method: log.method.as_str(),
                path: &log.path,
                host: &log.host,
                headers,
                auth,
            },
        );
        log.policy.clone_from(&decision.policy);
        log.rule = decision.rule;
        log.reason = Cow::Borrowed(decision.reason.as_str());
        if decision.allowed {
            log.decision = "allow";
            Ok(())
        } else {
            Err(Refusal::new(Local::Denied, log.reason.clone()))
        }
    }
}

impl Handler {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let raw_path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut log = RequestLog::new(
            self.l7.clone(),
            self.series.clone(),
            if grpc { "grpc" } else { "http" },
            parts.method.clone(),
            host_of(&parts),
            self.facts.client,
        );
        let deciding = match Deciding::start(&self.l7, &self.facts, &mut log, raw_path) {
            Ok(d) => d,
            Err(r) => return Ok(local(log, r, body).await),
        };
        let jwt = deciding.jwt();
        let auth = match self.l7.jwt.authenticate(&jwt, &mut parts).await {
            Ok(auth) => auth,
            Err(why) => return Ok(local(log, Refusal::new(Local::BadToken, why), body).await),
        };
        let decided = deciding.decide(
            &self.facts,
            &mut log,
            &HeaderView(&parts.headers),
            auth.as_ref(),
        );
        if let Err(r) = decided {
            return Ok(local(log, r, body).await);
        }
        drop(jwt);
        drop(deciding);

        // The pod sees the path that was authorized.
        let authority = if log.host.is_empty() {
            self.facts.dst.to_string()
        } else {
            log.host.clone()
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(log.path.as_str())
            .build();
        match uri {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                return Ok(local(log, Refusal::new(Local::BadPath, e.to_string()), body).await);
            }
        }
        let req = Request::from_parts(parts, Counted::new(body, log.request_bytes.clone(), None));
        let rsp = match self.upstream.clone().send_request(req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                log.reason = Cow::Owned(format!("upstream: {e}"));
                log.status = Local::Upstream.status().as_u16();
                return Ok(with_log(Local::Upstream.response(), log));
            }
        };
        log.status = rsp.status().as_u16();
        let bytes = log.response_bytes.clone();
        Ok(rsp.map(|b| Counted::new(b, bytes, Some(log)).boxed_unsync()))
    }
}

/// Largest request body read (and dropped) before a local answer, so the
/// connection stays usable for the next request.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// Answers `why` locally, after draining a small request body.
async fn local(mut log: RequestLog, refusal: Refusal, body: Incoming) -> Response<Body> {
    let _ = Limited::new(body, DRAIN_LIMIT).collect().await;
    log.refused(&refusal);
    with_log(refusal.answer.response(), log)
}

fn with_log(rsp: Response<Body>, log: RequestLog) -> Response<Body> {
    let bytes = log.response_bytes.clone();
    rsp.map(|b| Counted::new(b, bytes, Some(log)).boxed_unsync())
}
