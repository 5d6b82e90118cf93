//! The admin servers over real loopback HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::*;
use crate::drain::{self, DrainOutcome, DrainTrigger};
use crate::metrics::tests::{Captured, parse_openmetrics, value, workload};
use crate::metrics::{ConnectionOpen, Reporter, SecurityPolicy};
use crate::telemetry::{self, LogFormat};

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// One request on a fresh HTTP/1 connection.
async fn request(addr: SocketAddr, method: Method, path: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    request_on(stream, &addr.to_string(), method, path).await
}

/// One request on a fresh connection to the control socket.
async fn request_control(socket: &std::path::Path, method: Method, path: &str) -> Reply {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    request_on(stream, "localhost", method, path).await
}

async fn request_on<S>(stream: S, host: &str, method: Method, path: &str) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, Method::GET, path).await
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let (trigger, watcher) = drain::channel();
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_metrics(listener, Arc::new(registry), watcher));

    let analyzer = workload("analyzer", "default", "analyzer", "10.0.2.7", &[]);
    for received in [10, 20, 30] {
        let rec = metrics.open_connection(&ConnectionOpen {
            destination_workload: Some(&analyzer),
            security: SecurityPolicy::None,
            ..ConnectionOpen::new(
                Reporter::Destination,
                "192.0.2.1:1000".parse().unwrap(),
                "10.0.2.7:80".parse().unwrap(),
            )
        });
        rec.record_received(received);
    }

    for path in ["/metrics", "/stats/prometheus"] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let samples = parse_openmetrics(&reply.body);
        let labels = &[
            ("reporter", "destination"),
            ("destination_workload", "analyzer"),
            ("source_workload", "unknown"),
            ("connection_security_policy", "none"),
        ];
        assert_eq!(
            value(&samples, "istio_tcp_connections_opened_total", labels),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "istio_tcp_connections_closed_total", labels),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "istio_tcp_received_bytes_total", labels),
            Some(60.0)
        );
    }

    let reply = get(addr, "/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, "no such endpoint: /nope\n");
    let reply = request(addr, Method::POST, "/metrics").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[header::ALLOW], "GET");

    assert_eq!(
        trigger
            .drain(Duration::from_secs(5), Duration::from_secs(1))
            .await,
        DrainOutcome::Complete
    );
    server.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test]
async fn readiness_flips_when_the_last_blocker_drops() {
    let readiness = Readiness::new();
    let state = readiness.block("state");
    let certs = readiness.block("certificates");
    let (trigger, watcher) = drain::channel();
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_readiness(listener, readiness.clone(), watcher));

    let reply = get(addr, "/healthz/ready").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready: certificates, state\n");
    drop(state);
    let reply = get(addr, "/healthz/ready").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready: certificates\n");
    drop(certs);
    let reply = get(addr, "/healthz/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ready\n");
    assert_eq!(
        get(addr, "/healthz/live").await.status,
        StatusCode::NOT_FOUND
    );

    trigger
        .drain(Duration::from_secs(5), Duration::from_secs(1))
        .await;
    server.await.unwrap();
}

fn admin_server(state: AdminState) -> (DrainTrigger, SocketAddr, tokio::task::JoinHandle<()>) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let (trigger, watcher) = drain::channel();
    let server = tokio::spawn(serve_admin(listener, state, watcher));
    (trigger, addr, server)
}

#[tokio::test]
async fn config_dump_is_json_from_the_providers() {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let readiness = Readiness::new();
    let workloads = Arc::new(|| serde_json::json!([{"name": "analyzer", "namespace": "default"}]));
    let state = AdminState::new(readiness)
        .with_config("workloads", workloads)
        .with_config(
            "state",
            Arc::new(|| serde_json::json!({"synced": true, "error": null})),
        )
        .with_metrics(metrics.clone());
    let (trigger, addr, server) = admin_server(state);
    let rec = metrics.open_connection(&ConnectionOpen::new(
        Reporter::Source,
        "10.0.1.5:4000".parse().unwrap(),
        "10.0.2.7:80".parse().unwrap(),
    ));

    let reply = get(addr, "/config_dump").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let dump: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(dump["workloads"][0]["name"], "analyzer");
    assert_eq!(dump["state"]["synced"], true);
    assert_eq!(dump["connections"].as_array().unwrap().len(), 1);
    assert_eq!(dump["connections"][0]["source"]["address"], "10.0.1.5:4000");
    drop(rec);
    let dump: serde_json::Value =
        serde_json::from_str(&get(addr, "/config_dump").await.body).unwrap();
    assert_eq!(dump["connections"], serde_json::json!([]));

    let page = get(addr, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.body.contains("<td>readiness</td><td>ready</td>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<td>open connections</td><td>0</td>"));

    assert_eq!(
        request(addr, Method::DELETE, "/config_dump").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Changing the agent is for the control socket only.
    let reply = request(addr, Method::POST, "/quitquitquit").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("control socket"), "{}", reply.body);
    assert_eq!(get(addr, "/logging").await.status, StatusCode::NOT_FOUND);

    trigger
        .drain(Duration::from_secs(5), Duration::from_secs(1))
        .await;
    server.await.unwrap();
}

#[tokio::test]
async fn logging_level_change_takes_effect() {
    let out = Captured::default();
    let (subscriber, logs) = telemetry::subscriber(LogFormat::Json, "info", out.clone()).unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);
    let debug_lines = || {
        out.json_lines()
            .iter()
            .filter(|l| l["fields"]["message"] == "probe" || l["message"] == "probe")
            .count()
    };
    let quit = Arc::new(Notify::new());
    let state = AdminState::new(Readiness::new())
        .with_logging(logs.clone())
        .with_quit(quit.clone());
    let (tcp_trigger, tcp_addr, tcp_server) = admin_server(state.clone());
    // Over TCP, every host-network pod could reach them: refused.
    for path in ["/logging?level=debug", "/quitquitquit"] {
        let reply = request(tcp_addr, Method::POST, path).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(get(tcp_addr, "/logging").await.status, StatusCode::OK);
    assert_eq!(logs.current(), "info");
    tcp_trigger
        .drain(Duration::from_secs(5), Duration::from_secs(1))
        .await;
    tcp_server.await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (trigger, watcher) = drain::channel();
    let server = tokio::spawn(serve_control(listener, state, watcher));
    let addr = socket.as_path();
    let get = |addr, path| request_control(addr, Method::GET, path);
    let request = request_control;

    tracing::debug!("probe");
    assert_eq!(debug_lines(), 0);
    let reply = get(addr, "/logging").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "filter: info\n")
    );

    let reply = request(addr, Method::POST, "/logging?level=debug").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "filter: debug\n")
    );
    tracing::debug!("probe");
    assert_eq!(debug_lines(), 1);

    // A bad filter is refused and the previous one stays.
    let reply = request(addr, Method::POST, "/logging?level=info%2Cfoo%3Dnotalevel").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("invalid log filter"), "{}", reply.body);
    assert_eq!(logs.current(), "debug");
    let reply = request(addr, Method::POST, "/logging").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        request(addr, Method::DELETE, "/logging").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let reply = request(addr, Method::POST, "/logging?level=warn").await;
    assert_eq!(reply.status, StatusCode::OK);
    tracing::debug!("probe");
    tracing::info!("probe");
    assert_eq!(debug_lines(), 1);

    assert_eq!(
        get(addr, "/quitquitquit").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let reply = request(addr, Method::POST, "/quitquitquit").await;
    assert_eq!(reply.status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(1), quit.notified())
        .await
        .unwrap();

    trigger
        .drain(Duration::from_secs(5), Duration::from_secs(1))
        .await;
    server.await.unwrap();
}

#[tokio::test]
async fn drain_lets_an_open_request_finish_then_closes() {
    let (trigger, addr, server) = admin_server(AdminState::new(Readiness::new()));
    // A keep-alive connection that is idle when the drain starts.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = || Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(
        sender.send_request(req()).await.unwrap().status(),
        StatusCode::OK
    );

    let started = std::time::Instant::now();
    let outcome = trigger
        .drain(Duration::from_secs(5), Duration::from_secs(1))
        .await;
    assert_eq!(outcome, DrainOutcome::Complete);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle connection closed at once"
    );
    server.await.unwrap();
    // The server closed the kept-alive connection and the listener.
    conn.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
