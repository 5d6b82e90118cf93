//! The L7 path over loopback: a session between a hyper client and a hyper
//! "pod", with real sockets, deciding with the policies of a state store.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use ambit_policy::{Decision, MtlsMode, PolicySet, Reason};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::metrics::{ConnectionOpen, Reporter};
use crate::state::{Labels, Snapshot, StateStore, Workload};

/// A pod answering every request with its path.
pub(super) async fn pod() -> SocketAddr {
    pod_answering(|req| async move { req.uri().path().to_owned() }).await
}

/// A pod (HTTP/1 and h2c) answering every request with what `answer` makes
/// of it.
pub(super) async fn pod_answering<F, A>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> A + Clone + Send + 'static,
    A: Future<Output = String> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let text = answer(req);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text.await),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

const DENY_ADMIN: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin\"]}}]
";

pub(super) fn store(pod: SocketAddr) -> StateStore {
    let mut b = PolicySet::builder("istio-system");
    for doc in ambit_policy::k8s::documents(DENY_ADMIN).unwrap() {
        b.add(&doc.value).unwrap();
    }
    let w = Workload {
        uid: "u".into(),
        name: "analyzer".into(),
        namespace: "default".into(),
        service_account: "analyzer".into(),
        node: "n".into(),
        ips: vec![pod.ip()],
        labels: Labels::default(),
        enrolled: true,
    };
    let ns = HashMap::from([("default".to_owned(), BTreeMap::new())]);
    StateStore::new(Snapshot::new(vec![w], vec![], ns, b.build()))
}

/// Serves one client connection through a session; returns where to dial.
pub(super) async fn agent(pod: SocketAddr) -> SocketAddr {
    agent_with(pod, L7Settings::default()).await
}

/// [`agent`] with other settings.
pub(super) async fn agent_with(pod: SocketAddr, settings: L7Settings) -> SocketAddr {
    let l7 = L7::new(
        store(pod),
        &mut Registry::default(),
        jwt::Verifier::default(),
        settings,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, peer) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(pod).await.unwrap();
        let labels = crate::metrics::TrafficLabels::new(
            &ConnectionOpen::new(Reporter::Destination, peer, pod),
            "Kubernetes",
            "cluster.local",
        );
        let decision = Decision {
            allowed: true,
            policy: None,
            rule: None,
            reason: Reason::NoAllowPolicies,
            mtls_mode: MtlsMode::Permissive,
        };
        let conn = SessionConn {
            client: peer,
            peer: None,
            dst: pod,
            labels,
        };
        let session = l7.session(&Route::Http { declared: true }, conn, &decision);
        session
            .serve(client, upstream, std::future::pending())
            .await
            .result
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn h2c_streams_are_decided_one_by_one() {
    let agent = agent(pod().await).await;
    let tcp = TcpStream::connect(agent).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i == 7 {
                "/admin".to_owned()
            } else {
                format!("/s/{i}")
            };
            let req = http::Request::get(format!("http://analyzer{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let rsp = sender.send_request(req).await.unwrap();
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (path, status, body)
        }));
    }
    for t in tasks {
        let (path, status, body) = t.await.unwrap();
        if path == "/admin" {
            assert_eq!((status, &body[..]), (403, &b"RBAC: access denied"[..]));
        } else {
            assert_eq!((status, &body[..]), (200, path.as_bytes()));
        }
    }
}

#[tokio::test]
async fn http1_keepalive_survives_a_denial() {
    let agent = agent(pod().await).await;
    let tcp = TcpStream::connect(agent).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (path, want) in [
        ("/a", 200),
        ("/admin", 403),
        ("/./b/../admin", 403),
        ("/c", 200),
    ] {
        sender.ready().await.unwrap();
        let req = http::Request::get(path)
            .header("host", "analyzer")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        assert_eq!(rsp.status().as_u16(), want, "{path}");
        let _ = rsp.into_body().collect().await.unwrap();
    }
}
