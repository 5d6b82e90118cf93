//! HBONE end to end over loopback: real TLS 1.3 with test-CA certificates, the
//! real server and client, and plain TCP upstreams standing in for pods.

// Fixtures outside #[test] fns unwrap too: a failure there is a broken setup.
#![allow(clippy::unwrap_used)]

#[path = "hbone/certs.rs"]
mod certs;
#[path = "hbone/pod.rs"]
mod pod;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambit_agent::drain::{self, DrainTrigger};
use ambit_agent::hbone::client::{ClientSettings, Connection};
use ambit_agent::hbone::tls::IdentityError;
use ambit_agent::hbone::{
    Baggage, ConnectError, ConnectRequest, Connector, InboundHandler, InboundRequest,
    PlainConnector, Pool, PoolSettings, Refusal, Server, ServerSettings, TlsConfigs, Transfer,
    Upstream,
};
use ambit_agent::identity::WorkloadCertificate;
use ambit_ca::SpiffeId;
use certs::TestCa;
use http::StatusCode;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Stands in for the proxy: certificates per local pod IP, an optional denial,
/// dials the target for real, and records what it saw.
struct TestHandler {
    certs: HashMap<IpAddr, Arc<WorkloadCertificate>>,
    deny: Option<String>,
    handshakes: AtomicUsize,
    requests: Mutex<Vec<InboundRequest>>,
    closed: mpsc::UnboundedSender<(InboundRequest, Transfer)>,
}

impl InboundHandler for TestHandler {
    /// The request, so the end can be checked against it.
    type Connection = InboundRequest;

    async fn server_certificate(&self, dialled: IpAddr) -> Option<Arc<WorkloadCertificate>> {
        self.handshakes.fetch_add(1, Ordering::SeqCst);
        self.certs.get(&dialled).cloned()
    }

    async fn handle(&self, request: &InboundRequest) -> Result<Upstream<InboundRequest>, Refusal> {
        self.requests.lock().push(request.clone());
        if let Some(reason) = &self.deny {
            return Err(Refusal::Denied {
                reason: reason.clone(),
            });
        }
        let pod = pod::dial(request.target).await?;
        Ok(Upstream {
            stream: pod.stream,
            connection: request.clone(),
            close: pod.close,
            l7: pod.l7,
        })
    }

    fn closed(&self, request: InboundRequest, transfer: Transfer) {
        let _ = self.closed.send((request, transfer));
    }
}

struct Fixture {
    ca: TestCa,
    /// The HBONE server, standing for `<analyzer pod ip>:15008`.
    hbone: SocketAddr,
    handler: Arc<TestHandler>,
    tls: Arc<TlsConfigs>,
    /// sleep's certificate, the usual client.
    source: Arc<WorkloadCertificate>,
    analyzer: SpiffeId,
    closed: mpsc::UnboundedReceiver<(InboundRequest, Transfer)>,
    /// Dropping the trigger drains the server, so the fixture holds it.
    drain: Option<DrainTrigger>,
}

async fn fixture(deny: Option<&str>) -> Fixture {
    let ca = TestCa::new("cluster.local");
    let analyzer_cert = ca.issue("default", "analyzer");
    let analyzer = analyzer_cert.identity.clone();
    let source = ca.issue("default", "sleep");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = listener.local_addr().unwrap();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let handler = Arc::new(TestHandler {
        certs: HashMap::from([(hbone.ip(), analyzer_cert)]),
        deny: deny.map(str::to_string),
        handshakes: AtomicUsize::new(0),
        requests: Mutex::default(),
        closed: closed_tx,
    });
    let tls = Arc::new(TlsConfigs::new(ca.bundle()).unwrap());
    let settings = ServerSettings {
        handshake_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let server = Server::new(tls.clone(), handler.clone(), settings);
    let (drain, watcher) = drain::channel();
    tokio::spawn(server.serve(listener, watcher));
    Fixture {
        ca,
        hbone,
        handler,
        tls,
        source,
        analyzer,
        closed,
        drain: Some(drain),
    }
}

impl Fixture {
    fn request(&self, target: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.source.clone(),
            destination: self.analyzer.clone(),
            hbone_addr: self.hbone,
            target,
            client: "127.0.0.1:40123".parse().unwrap(),
            service_host: None,
            baggage: Some(Baggage::new([(
                "k8s.namespace.name".to_string(),
                "default".to_string(),
            )])),
        }
    }

    async fn connection(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        Connection::connect(
            &PlainConnector,
            &self.tls,
            request,
            &ClientSettings::default(),
        )
        .await
    }

    async fn tunnel(
        &self,
        target: SocketAddr,
    ) -> Result<ambit_agent::hbone::H2Stream, ConnectError> {
        let request = self.request(target);
        let connection = self.connection(&request).await?;
        connection
            .open(request.target, request.client, request.baggage.as_ref())
            .await
    }
}

/// A pod that greets, reads until EOF, then sends back what it read and closes:
/// it only answers if the client's half-close reached it.
async fn pod() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                socket.write_all(b"hello\n").await.unwrap();
                let mut received = Vec::new();
                socket.read_to_end(&mut received).await.unwrap();
                socket.write_all(&received).await.unwrap();
                socket.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Greets, sends `data`, half-closes, and expects `data` back then EOF.
async fn exchange(tunnel: &mut ambit_agent::hbone::H2Stream, data: &[u8]) {
    let mut greeting = [0u8; 6];
    tunnel.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hello\n");
    tunnel.write_all(data).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes changed in transit");
}

#[tokio::test]
async fn bytes_round_trip_with_half_close() {
    let mut f = fixture(None).await;
    let pod = pod().await;
    let mut tunnel = f.tunnel(pod).await.unwrap();
    let data = payload(3 * 1024 * 1024 + 17);
    exchange(&mut tunnel, &data).await;

    let (request, transfer) = tokio::time::timeout(Duration::from_secs(5), f.closed.recv())
        .await
        .unwrap()
        .unwrap();
    transfer.result.unwrap();
    assert_eq!(transfer.forward, data.len() as u64);
    assert_eq!(transfer.backward, data.len() as u64 + 6);
    assert_eq!(request.peer, f.source.identity);
    assert_eq!(request.local_identity, f.analyzer);
    assert_eq!(request.target, pod);
    assert_eq!(request.dialled, f.hbone);
    let forwarded = request.forwarded_for.unwrap();
    assert_eq!(
        (forwarded.ip, forwarded.port),
        ("127.0.0.1".parse().unwrap(), Some(40123))
    );
    assert_eq!(
        request.baggage.unwrap().get("k8s.namespace.name"),
        Some("default")
    );
}

#[tokio::test]
async fn chain_through_an_intermediate_is_accepted() {
    let f = fixture(None).await;
    let pod = pod().await;
    let mut request = f.request(pod);
    request.source = f.ca.intermediate().issue("default", "sleep");
    let connection = f.connection(&request).await.unwrap();
    let mut tunnel = connection.open(pod, request.client, None).await.unwrap();
    exchange(&mut tunnel, b"via intermediate").await;
}

#[tokio::test]
async fn secure_naming_mismatch_aborts() {
    let f = fixture(None).await;
    let mut request = f.request(pod().await);
    request.destination = f.ca.id("default", "guestbook");
    let error = f.connection(&request).await.unwrap_err();
    match error.identity_error() {
        Some(IdentityError::Mismatch { expected, actual }) => {
            assert_eq!(**expected, f.ca.id("default", "guestbook"));
            assert_eq!(**actual, f.analyzer);
        }
        other => panic!("expected a secure naming failure, got {other:?} from {error}"),
    }
    assert!(f.handler.requests.lock().is_empty());
}

/// The server refuses a client; the client learns at its first stream at the latest.
async fn assert_client_refused(f: &Fixture, request: &ConnectRequest) {
    let opened = async {
        let connection = f.connection(request).await?;
        connection.open(request.target, request.client, None).await
    };
    let error = tokio::time::timeout(Duration::from_secs(5), opened)
        .await
        .unwrap()
        .unwrap_err();
    assert!(!matches!(error, ConnectError::Status(_)), "{error}");
    assert!(f.handler.requests.lock().is_empty());
}

#[tokio::test]
async fn client_certificate_from_another_root_is_refused() {
    let f = fixture(None).await;
    let mut request = f.request(pod().await);
    request.source = TestCa::new("cluster.local").issue("default", "sleep");
    assert_client_refused(&f, &request).await;
}

#[tokio::test]
async fn client_of_another_trust_domain_is_refused() {
    let f = fixture(None).await;
    let mut request = f.request(pod().await);
    let foreign: SpiffeId = "spiffe://evil.example/ns/default/sa/sleep".parse().unwrap();
    request.source = f.ca.issue_with_uri(foreign.clone(), &foreign.to_string());
    assert_client_refused(&f, &request).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let f = fixture(None).await;
    let provider = ambit_agent::hbone::tls::crypto_provider();
    let verifier = ambit_agent::hbone::tls::verify::SecureNamingVerifier::new(
        {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(f.ca.bundle().roots[0].clone()).unwrap();
            Arc::new(roots)
        },
        f.analyzer.clone(),
        provider.signature_verification_algorithms,
    );
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_sni = false;
    let tcp = TcpStream::connect(f.hbone).await.unwrap();
    let attempt = async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::IpAddress(f.hbone.ip().into()),
                tcp,
            )
            .await?;
        let (mut sender, connection) = h2::client::handshake(tls)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(pod().await.to_string())
            .body(())
            .unwrap();
        let (response, _) = sender
            .send_request(request, false)
            .map_err(std::io::Error::other)?;
        response.await.map_err(std::io::Error::other)
    };
    let result = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap();
    assert!(
        result.is_err(),
        "server answered a client without certificate"
    );
    assert!(f.handler.requests.lock().is_empty());
}

#[tokio::test]
async fn connect_to_a_pod_other_than_the_dialled_one_is_400() {
    let f = fixture(None).await;
    let pod = pod().await;
    let elsewhere = SocketAddr::new("127.0.0.2".parse().unwrap(), pod.port());
    let error = f.tunnel(elsewhere).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Status(StatusCode::BAD_REQUEST)),
        "{error}"
    );
    assert!(
        f.handler.requests.lock().is_empty(),
        "handler must not see it"
    );
}

#[tokio::test]
async fn denial_is_401_and_prompt() {
    let f = fixture(Some("no ALLOW policy matched")).await;
    let pod = pod().await;
    let request = f.request(pod);
    let connection = f.connection(&request).await.unwrap();
    let started = Instant::now();
    let error = connection
        .open(pod, request.client, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Status(StatusCode::UNAUTHORIZED)),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.handler.requests.lock().len(), 1);
    // The connection stays usable for other streams.
    let error = connection
        .open(pod, request.client, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Status(StatusCode::UNAUTHORIZED)),
        "{error}"
    );
}

#[tokio::test]
async fn unreachable_pod_is_503() {
    let f = fixture(None).await;
    let error = f.tunnel(closed_port().await).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Status(StatusCode::SERVICE_UNAVAILABLE)),
        "{error}"
    );
}

/// A pod that stops reading stops the sender: credit goes back only for bytes
/// handed on, so writes stall after the windows and socket buffers are full
/// instead of buffering without bound; once the pod reads, every byte arrives.
#[tokio::test]
async fn pod_that_stops_reading_stalls_the_sender() {
    // Stream window and send buffer (4 MiB each), the server's copy buffer and
    // the pod socket's kernel buffers (a few MiB with autotuning), with room.
    const BOUND: u64 = 48 * 1024 * 1024;
    let f = fixture(None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pod = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let mut tunnel = f.tunnel(pod).await.unwrap();
    let mut socket = accepted.await.unwrap();

    let chunk = payload(64 * 1024);
    let mut sent = 0u64;
    loop {
        let write = tokio::time::timeout(Duration::from_secs(1), tunnel.write(&chunk));
        match write.await {
            Ok(written) => sent += written.unwrap() as u64,
            Err(_) => break,
        }
        assert!(
            sent <= BOUND,
            "{sent} bytes accepted while the pod read nothing"
        );
    }
    assert!(sent >= 4 * 1024 * 1024, "stalled after only {sent} bytes");

    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match socket.read(&mut buf).await.unwrap() {
                0 => return received,
                n => received += n as u64,
            }
        }
    });
    tunnel.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, sent);
}

#[tokio::test]
async fn garbage_and_stalls_do_not_disturb_a_tunnel() {
    let f = fixture(None).await;
    let pod = pod().await;
    let mut tunnel = f.tunnel(pod).await.unwrap();
    let mut greeting = [0u8; 6];
    tunnel.read_exact(&mut greeting).await.unwrap();

    // Plaintext HTTP, random bytes, and a client that never speaks: each is closed.
    let mut garbage = TcpStream::connect(f.hbone).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut noise = TcpStream::connect(f.hbone).await.unwrap();
    noise.write_all(&payload(4096)).await.unwrap();
    let mut silent = TcpStream::connect(f.hbone).await.unwrap();
    for socket in [&mut garbage, &mut noise, &mut silent] {
        let mut sink = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "server kept a bad connection open");
    }

    let data = payload(100_000);
    tunnel.write_all(&data).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert!(back == data);
    // And new tunnels still work.
    exchange(&mut f.tunnel(pod).await.unwrap(), b"still serving").await;
}

#[tokio::test]
async fn server_presents_the_dialled_pods_certificate() {
    let ca = TestCa::new("cluster.local");
    let (a, b) = (
        ca.issue("default", "analyzer"),
        ca.issue("default", "guestbook"),
    );
    let listener_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener_b = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let (addr_a, addr_b) = (
        listener_a.local_addr().unwrap(),
        listener_b.local_addr().unwrap(),
    );
    let (closed, _rx) = mpsc::unbounded_channel();
    let handler = Arc::new(TestHandler {
        certs: HashMap::from([(addr_a.ip(), a.clone()), (addr_b.ip(), b.clone())]),
        deny: None,
        handshakes: AtomicUsize::new(0),
        requests: Mutex::default(),
        closed,
    });
    let tls = Arc::new(TlsConfigs::new(ca.bundle()).unwrap());
    let server = Server::new(tls.clone(), handler, ServerSettings::default());
    let (_drain, watcher) = drain::channel();
    tokio::spawn(server.clone().serve(listener_a, watcher.clone()));
    tokio::spawn(server.serve(listener_b, watcher));
    let source = ca.issue("default", "sleep");
    let request = |hbone_addr, destination: &Arc<WorkloadCertificate>| ConnectRequest {
        source: source.clone(),
        destination: destination.identity.clone(),
        hbone_addr,
        target: hbone_addr,
        client: "127.0.0.1:1".parse().unwrap(),
        service_host: None,
        baggage: None,
    };
    let settings = ClientSettings::default();
    for (addr, cert, ok) in [
        (addr_a, &a, true),
        (addr_b, &b, true),
        (addr_a, &b, false),
        (addr_b, &a, false),
    ] {
        let result =
            Connection::connect(&PlainConnector, &tls, &request(addr, cert), &settings).await;
        assert_eq!(result.is_ok(), ok, "{addr} as {}", cert.identity);
    }
}

#[tokio::test]
async fn drain_lets_open_tunnels_finish_then_forces_the_rest() {
    let mut f = fixture(None).await;
    let pod = pod().await;
    let mut finishing = f.tunnel(pod).await.unwrap();
    let mut greeting = [0u8; 6];
    finishing.read_exact(&mut greeting).await.unwrap();
    let mut lingering = f.tunnel(pod).await.unwrap();
    lingering.read_exact(&mut greeting).await.unwrap();

    let drain = f.drain.take().unwrap();
    let outcome = tokio::spawn(drain.drain(Duration::from_millis(500), Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: the listener is closed, open tunnels keep working.
    assert!(TcpStream::connect(f.hbone).await.is_err());
    finishing.write_all(b"during drain").await.unwrap();
    finishing.shutdown().await.unwrap();
    let mut back = Vec::new();
    finishing.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"during drain");

    // The idle one outlives the deadline and is cut.
    let outcome = outcome.await.unwrap();
    assert!(
        matches!(outcome, drain::DrainOutcome::Forced { remaining: 1 }),
        "{outcome:?}"
    );
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(2), lingering.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "tunnel survived the forced drain");
}

/// Counts TCP connections the pool makes to 15008.
#[derive(Clone, Default)]
struct CountingConnector(Arc<AtomicUsize>);

impl Connector for CountingConnector {
    async fn connect(
        &self,
        destination: SocketAddr,
        _source: IpAddr,
    ) -> std::io::Result<TcpStream> {
        self.0.fetch_add(1, Ordering::SeqCst);
        TcpStream::connect(destination).await
    }
}

fn pool(f: &Fixture, idle_timeout: Duration) -> (Pool<CountingConnector>, Arc<AtomicUsize>) {
    let connector = CountingConnector::default();
    let dials = connector.0.clone();
    let settings = PoolSettings {
        idle_timeout,
        ..PoolSettings::default()
    };
    (Pool::new(connector, f.tls.clone(), settings), dials)
}

#[tokio::test]
async fn pool_reuses_one_connection_for_sequential_tunnels() {
    let f = fixture(None).await;
    let pod = pod().await;
    let (pool, dials) = pool(&f, Duration::from_secs(60));
    for i in 0..50 {
        let mut tunnel = pool.connect(f.request(pod)).await.unwrap();
        exchange(&mut tunnel, format!("tunnel {i}").as_bytes()).await;
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(f.handler.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(f.handler.requests.lock().len(), 50);
    assert_eq!(pool.connection_count(), 1);

    // Another source identity does not share it.
    let mut request = f.request(pod);
    request.source = f.ca.issue("default", "guestbook");
    exchange(
        &mut pool.connect(request.clone()).await.unwrap(),
        b"other source",
    )
    .await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn pool_opens_a_second_connection_past_100_streams() {
    let f = fixture(None).await;
    let pod = pod().await;
    let (pool, dials) = pool(&f, Duration::from_secs(60));
    let tunnels = futures::future::join_all((0..150).map(|_| pool.connect(f.request(pod)))).await;
    let mut tunnels: Vec<_> = tunnels.into_iter().map(Result::unwrap).collect();
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(pool.connection_count(), 2);
    for (i, tunnel) in tunnels.iter_mut().enumerate() {
        exchange(tunnel, format!("stream {i}").as_bytes()).await;
    }
    drop(tunnels);
    // Slots are free again: more tunnels reuse the two connections.
    for _ in 0..5 {
        exchange(&mut pool.connect(f.request(pod)).await.unwrap(), b"again").await;
    }
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn pool_closes_idle_connections() {
    let f = fixture(None).await;
    let pod = pod().await;
    let (pool, dials) = pool(&f, Duration::from_millis(200));
    exchange(&mut pool.connect(f.request(pod)).await.unwrap(), b"one").await;
    assert_eq!(pool.connection_count(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.connection_count(), 0);
    exchange(&mut pool.connect(f.request(pod)).await.unwrap(), b"two").await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn pool_replaces_a_connection_the_server_closed() {
    let f = fixture(None).await;
    let pod = pod().await;
    // A server whose connections the test can end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = listener.local_addr().unwrap();
    let server = Server::new(f.tls.clone(), f.handler.clone(), ServerSettings::default());
    // The first connection drains on demand; later ones run on.
    let (kill, first_watcher) = drain::channel();
    let (_keep, later_watcher) = drain::channel();
    let mut first = Some(first_watcher);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let watcher = first.take().unwrap_or_else(|| later_watcher.clone());
            tokio::spawn(server.clone().serve_connection(tcp, watcher));
        }
    });
    let (pool, dials) = pool(&f, Duration::from_secs(60));
    let mut request = f.request(pod);
    request.hbone_addr = hbone;
    exchange(&mut pool.connect(request.clone()).await.unwrap(), b"before").await;
    // GOAWAY on the pooled connection, which then closes.
    tokio::spawn(kill.drain(Duration::from_secs(5), Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    exchange(&mut pool.connect(request.clone()).await.unwrap(), b"after").await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

/// A peer that answers the first stream of each connection and refuses every
/// later one with REFUSED_STREAM, as a server going away does.
async fn refusing_server(f: &Fixture, pod: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = f
        .tls
        .server_config(&f.handler.certs[&f.hbone.ip()])
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = config.clone();
            tokio::spawn(async move {
                let tls = tokio_rustls::TlsAcceptor::from(config)
                    .accept(tcp)
                    .await
                    .unwrap();
                let mut h2 = h2::server::handshake(tls).await.unwrap();
                let mut first = true;
                while let Some(Ok((request, mut respond))) = h2.accept().await {
                    if !std::mem::take(&mut first) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let recv = request.into_body();
                    tokio::spawn(async move {
                        // Relay to the pod by hand.
                        let mut upstream = TcpStream::connect(pod).await.unwrap();
                        let tunnel = ambit_agent::hbone::stream::H2Stream::from_parts(send, recv);
                        let (r, w) = tunnel.into_split();
                        ambit_agent::hbone::copy_bidirectional(
                            (r, w),
                            upstream.split(),
                            std::future::pending(),
                        )
                        .await;
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn pool_retries_a_refused_stream_on_a_fresh_connection() {
    let f = fixture(None).await;
    let pod = pod().await;
    let (pool, dials) = pool(&f, Duration::from_secs(60));
    let mut request = f.request(pod);
    request.hbone_addr = refusing_server(&f, pod).await;
    exchange(&mut pool.connect(request.clone()).await.unwrap(), b"first").await;
    // The pooled connection refuses this stream; the pool retries on a new one.
    exchange(
        &mut pool.connect(request.clone()).await.unwrap(),
        b"retried",
    )
    .await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

/// A server on its own listener with `settings`, sharing the fixture's handler.
async fn server_with(f: &Fixture, settings: ServerSettings) -> (SocketAddr, DrainTrigger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, watcher) = drain::channel();
    tokio::spawn(Server::new(f.tls.clone(), f.handler.clone(), settings).serve(listener, watcher));
    (addr, trigger)
}

#[tokio::test]
async fn server_closes_idle_connections_but_not_busy_ones() {
    let f = fixture(None).await;
    let pod = pod().await;
    let settings = ServerSettings {
        idle_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let (hbone, _drain) = server_with(&f, settings).await;
    let mut request = f.request(pod);
    request.hbone_addr = hbone;
    let connection = f.connection(&request).await.unwrap();
    // A tunnel open for longer than the timeout keeps the connection.
    let mut tunnel = connection
        .open(request.target, request.client, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!connection.is_closed(), "closed with a stream open");
    exchange(&mut tunnel, b"still open").await;
    drop(tunnel);
    // Without streams it goes, after the timeout and not before.
    let start = Instant::now();
    while !connection.is_closed() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "idle connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(250));
}

/// Copies both ways between an accepted client and `upstream` until
/// `frozen` is set; from then on it forwards nothing but keeps both sockets
/// open, as a peer that vanished without a FIN or RST looks.
async fn freezable_relay(upstream: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        for (mut r, mut w) in [(cr, sw), (sr, cw)] {
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if frozen.load(Ordering::SeqCst) {
                        // Hold both halves: the peer sees silence, not a close.
                        std::future::pending::<()>().await;
                    }
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn server_closes_a_connection_whose_peer_stops_answering_pings() {
    let mut f = fixture(None).await;
    let pod = pod().await;
    let settings = ServerSettings {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let (hbone, _drain) = server_with(&f, settings).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let relay = freezable_relay(hbone, frozen.clone()).await;
    let mut request = f.request(pod);
    request.hbone_addr = relay;
    let connection = f.connection(&request).await.unwrap();
    let mut tunnel = connection
        .open(request.target, request.client, None)
        .await
        .unwrap();
    // PINGs answered: the tunnel outlives several keepalive timeouts.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exchange(&mut tunnel, b"alive").await;
    let (_, transfer) = f.closed.recv().await.unwrap();
    assert!(transfer.result.is_ok(), "a live peer's tunnel failed");
    // The peer goes silent with a tunnel open: the server ends the
    // connection and the tunnel with it.
    let mut tunnel = connection
        .open(request.target, request.client, None)
        .await
        .unwrap();
    let mut greeting = [0u8; 6];
    tunnel.read_exact(&mut greeting).await.unwrap();
    frozen.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(3), f.closed.recv()).await;
    let (_, transfer) = ended
        .expect("tunnel of a silent peer still open after 3 s")
        .unwrap();
    assert!(
        transfer.result.is_err(),
        "a vanished peer's tunnel ended cleanly"
    );
    drop(tunnel);
}
