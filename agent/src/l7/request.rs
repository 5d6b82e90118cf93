//! One request on the L7 path: normalize its path, authenticate its token,
//! decide it with the policies in force *now* (a policy change applies to the
//! next request of an open connection), then forward it to the pod or answer
//! it as Envoy would.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ambit_ca::SpiffeId;
use ambit_policy::http::{Headers, HttpRequest, normalize_path};
use ambit_policy::{Connection, Target};
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

use super::L7;
use super::body::{Counted, RequestLog};
use super::metrics::ConnectionSeries;
use super::respond::{Body, Local};
use crate::metrics::TrafficLabels;

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

/// The connection to the pod that requests are forwarded on.
pub enum Upstream {
    /// HTTP/1.1 carries one exchange at a time; the server side calls the
    /// handler one request at a time too, so the lock is never contended.
    H1(tokio::sync::Mutex<http1::SendRequest<UpBody>>),
    H2(http2::SendRequest<UpBody>),
}

impl Upstream {
    async fn send(&self, req: Request<UpBody>) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::H1(m) => {
                let mut sender = m.lock().await;
                sender.ready().await?;
                sender.send_request(req).await
            }
            Self::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(req).await
            }
        }
    }
}

/// The request headers as the policy engine reads them.
struct HeaderView<'a>(&'a HeaderMap);

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
    pub upstream: Upstream,
    pub h2: bool,
}

/// A request asks to switch protocols (WebSocket and the like).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
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
        let mut log = RequestLog {
            l7: self.l7.clone(),
            series: self.series.clone(),
            protocol: if grpc { "grpc" } else { "http" },
            started: Instant::now(),
            method: parts.method.clone(),
            path: raw_path.to_owned(),
            host: host_of(&parts),
            status: 0,
            decision: "deny",
            policy: None,
            rule: None,
            reason: Cow::Borrowed(""),
            client: self.facts.client,
            request_bytes: Arc::default(),
            response_bytes: Arc::default(),
        };
        let path = match normalize_path(raw_path) {
            Ok(p) => p,
            Err(e) => return Ok(local(log, Local::BadPath, e.to_string(), body).await),
        };
        log.path.clone_from(&path);

        let snapshot = self.l7.state.current();
        let Some(dst) = snapshot.workload_by_ip(self.facts.dst.ip()).cloned() else {
            let why = "destination is no longer in the state".to_owned();
            return Ok(local(log, Local::Denied, why, body).await);
        };
        let target = Target {
            namespace: &dst.namespace,
            labels: &dst.labels,
        };
        let jwt = snapshot.policies().request_authentication(&target);
        let auth = match self.l7.jwt.authenticate(&jwt, &mut parts).await {
            Ok(auth) => auth,
            Err(why) => return Ok(local(log, Local::BadToken, why, body).await),
        };
        let principal = self.facts.peer.as_ref().map(SpiffeId::principal);
        let decision = snapshot.policies().evaluate_http(
            &target,
            &Connection {
                src_ip: self.facts.client.ip(),
                src_principal: principal.as_deref(),
                src_namespace: self.facts.peer.as_ref().map(SpiffeId::namespace),
                dst_ip: self.facts.dst.ip(),
                dst_port: self.facts.dst.port(),
                mtls: self.facts.peer.is_some(),
            },
            &HttpRequest {
                method: parts.method.as_str(),
                path: &path,
                host: &log.host,
                headers: &HeaderView(&parts.headers),
                auth: auth.as_ref(),
            },
        );
        log.policy.clone_from(&decision.policy);
        log.rule = decision.rule;
        log.reason = Cow::Borrowed(decision.reason.as_str());
        if !decision.allowed {
            let why = log.reason.clone();
            return Ok(local(log, Local::Denied, why, body).await);
        }
        log.decision = "allow";
        drop(jwt);
        drop(snapshot);

        // The pod sees the path that was authorized.
        let uri = if self.h2 {
            let authority = if log.host.is_empty() {
                self.facts.dst.to_string()
            } else {
                log.host.clone()
            };
            Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path.as_str())
                .build()
        } else {
            Uri::builder().path_and_query(path.as_str()).build()
        };
        match uri {
            Ok(uri) => parts.uri = uri,
            Err(e) => return Ok(local(log, Local::BadPath, e.to_string(), body).await),
        }
        let upgrade = !self.h2 && is_upgrade(&parts.headers);
        let mut req =
            Request::from_parts(parts, Counted::new(body, log.request_bytes.clone(), None));
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut rsp = match self.upstream.send(req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                log.reason = Cow::Owned(format!("upstream: {e}"));
                log.status = Local::Upstream.status().as_u16();
                let mut rsp = Local::Upstream.response();
                if !self.h2 {
                    // The pod's connection is gone (it is this client's only
                    // one): close the client's too, so it reconnects.
                    rsp.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                return Ok(with_log(rsp, log));
            }
        };
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let pod_side = hyper::upgrade::on(&mut rsp);
            tokio::spawn(tunnel(client_side, pod_side));
        }
        log.status = rsp.status().as_u16();
        let bytes = log.response_bytes.clone();
        Ok(rsp.map(|b| Counted::new(b, bytes, Some(log)).boxed_unsync()))
    }
}

/// Carries an upgraded exchange (WebSocket) as bytes once both sides agreed.
async fn tunnel(client: hyper::upgrade::OnUpgrade, pod: hyper::upgrade::OnUpgrade) {
    let (client, pod) = match tokio::try_join!(client, pod) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut pod) = (TokioIo::new(client), TokioIo::new(pod));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut pod).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}

/// Largest request body read (and dropped) before a local answer, so the
/// connection stays usable for the next request.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Answers `why` locally, after draining a small request body.
async fn local(
    mut log: RequestLog,
    answer: Local,
    why: impl Into<Cow<'static, str>>,
    body: Incoming,
) -> Response<Body> {
    let _ = Limited::new(body, DRAIN_LIMIT).collect().await;
    log.status = answer.status().as_u16();
    log.decision = answer.decision();
    log.reason = why.into();
    with_log(answer.response(), log)
}

fn with_log(rsp: Response<Body>, log: RequestLog) -> Response<Body> {
    let bytes = log.response_bytes.clone();
    rsp.map(|b| Counted::new(b, bytes, Some(log)).boxed_unsync())
}
