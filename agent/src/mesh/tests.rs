//! The mesh data path over loopback with real TLS: two agents (node-a and
//! node-b) share one cluster state; pods are loopback addresses in
//! 127.77.0.0/24, each "pod server" an echo listener on its pod address.
//!
//! guestbook (sa guestbook) and sleep (sa sleep) run on node-a, analyzer
//! (app=analyzer, sa analyzer) and db (sa db) on node-b.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_ca::SpiffeId;
use futures::FutureExt;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::hbone::client::{ClientSettings, Connection};
use crate::hbone::{ConnectError, Connector};
use crate::identity::WorkloadCertificate;
use crate::metrics::tests::{parse_openmetrics, value};
use crate::proxy::inbound_plain::{Admission, InboundRequest};
use crate::proxy::outbound::MeshConnection;
use crate::proxy::{Forwarded, Status};
use crate::socket::{ClientAddr, OrigDst};
use crate::state::{LoadOptions, SnapshotBuilder};
use futures::future::BoxFuture;

const GUESTBOOK: &str = "127.77.0.1";
const ANALYZER: &str = "127.77.0.2";
const SLEEP: &str = "127.77.0.3";
const DB: &str = "127.77.0.4";

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: guestbook, namespace: default, labels: {app: guestbook}}
spec: {nodeName: node-a, serviceAccountName: guestbook}
status: {phase: Running, podIP: 127.77.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: analyzer, namespace: default, labels: {app: analyzer}}
spec: {nodeName: node-b, serviceAccountName: analyzer}
status: {phase: Running, podIP: 127.77.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {nodeName: node-a, serviceAccountName: sleep}
status: {phase: Running, podIP: 127.77.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {nodeName: node-b, serviceAccountName: db}
status: {phase: Running, podIP: 127.77.0.4}
"#;

const ONLY_GUESTBOOK: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-from-guestbook, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/guestbook"]}}]
"#;

const DENY_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-closed, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
"#;

const ONLY_GUESTBOOK_IP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-from-guestbook-ip, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {ipBlocks: ["127.77.0.1/32"]}}]
"#;

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

fn snapshot(extra: &[&str]) -> Snapshot {
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    builder.add_text(Path::new("pods.yaml"), PODS).unwrap();
    for (i, text) in extra.iter().enumerate() {
        builder
            .add_text(Path::new(&format!("policy-{i}.yaml")), text)
            .unwrap();
    }
    builder.build().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// === certificates ===

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh test root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let root = issuer.der().clone();
        Self { issuer, root }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle {
            trust_domain: "cluster.local".into(),
            roots: Arc::new(vec![self.root.clone()]),
        }
    }

    fn issue(&self, sa: &str) -> Arc<WorkloadCertificate> {
        let identity = id(sa);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().as_str().try_into().unwrap(),
        )];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let now = SystemTime::now();
        Arc::new(WorkloadCertificate {
            identity,
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
        })
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

/// Certificates held by an agent, and what it was asked to track.
#[derive(Default)]
struct FixedCertificates {
    certs: HashMap<SpiffeId, Arc<WorkloadCertificate>>,
    tracked: Mutex<Vec<BTreeSet<SpiffeId>>>,
}

impl CertificateSource for FixedCertificates {
    fn certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Option<Arc<WorkloadCertificate>>> {
        std::future::ready(self.certs.get(id).cloned()).boxed()
    }

    fn track(&self, ids: BTreeSet<SpiffeId>) {
        self.tracked.lock().push(ids);
    }
}

// === agents and pods ===

struct Agent {
    registry: Registry,
    mesh: Mesh,
    certs: Arc<FixedCertificates>,
}

impl Agent {
    fn new(node: &str, store: &StateStore, ca: &TestCa, sas: &[&str], hbone_port: u16) -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let certs = Arc::new(FixedCertificates {
            certs: sas.iter().map(|sa| (id(sa), ca.issue(sa))).collect(),
            tracked: Mutex::default(),
        });
        let mut config = MeshConfig::new(node, "cluster.local");
        config.hbone_port = hbone_port;
        let mesh = build(
            &config,
            store.clone(),
            certs.clone(),
            ca.bundle(),
            SocketFactory::plain(Duration::from_secs(2)),
            metrics,
        )
        .unwrap();
        Self {
            registry,
            mesh,
            certs,
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        value(
            &parse_openmetrics(&crate::metrics::encode(&self.registry)),
            name,
            labels,
        )
    }

    /// Hands a connection from `src` (a pod address) to `dst` to the forwarder,
    /// as the outbound listener would; returns the application's end.
    async fn captured(
        &self,
        store: &StateStore,
        src: &str,
        dst: SocketAddr,
    ) -> (TcpStream, JoinHandle<Forwarded>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip(src), 0)).unwrap();
        let app = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (client, peer) = listener.accept().await.unwrap();
        let snapshot = store.current();
        let conn = MeshConnection {
            client,
            client_addr: ClientAddr(peer),
            orig_dst: OrigDst(dst),
            source: snapshot.workload_by_ip(ip(src)).unwrap().clone(),
            target: dst,
            destination: snapshot.workload_by_ip(dst.ip()).unwrap().clone(),
            cut: tokio_util::sync::CancellationToken::new(),
        };
        (app, tokio::spawn(self.mesh.forwarder.forward(conn)))
    }
}

/// An echo server on a pod address; returns its port.
async fn pod_server(pod: &str) -> u16 {
    let listener = TcpListener::bind(SocketAddr::new(ip(pod), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Node-b's HBONE server on the analyzer's and db's addresses, one port.
async fn serve_hbone(agent: &Agent) -> u16 {
    let first = TcpListener::bind(SocketAddr::new(ip(ANALYZER), 0))
        .await
        .unwrap();
    let port = first.local_addr().unwrap().port();
    let second = TcpListener::bind(SocketAddr::new(ip(DB), port))
        .await
        .unwrap();
    // Never drained: the trigger lives as long as the test process.
    let (trigger, watcher) = crate::drain::channel();
    std::mem::forget(trigger);
    for listener in [first, second] {
        let server = agent.mesh.hbone.clone();
        tokio::spawn(server.serve(listener, watcher.clone()));
    }
    port
}

struct Cluster {
    ca: TestCa,
    store: StateStore,
    node_a: Agent,
    node_b: Agent,
    analyzer: SocketAddr,
    hbone_port: u16,
}

async fn cluster(policies: &[&str]) -> Cluster {
    let ca = TestCa::new();
    let store = StateStore::new(Snapshot::default());
    store.replace(snapshot(policies));
    // The port is only known once node-b listens; node-a dials it.
    let node_b = Agent::new("node-b", &store, &ca, &["analyzer", "db"], 0);
    let hbone_port = serve_hbone(&node_b).await;
    let node_a = Agent::new("node-a", &store, &ca, &["guestbook", "sleep"], hbone_port);
    let analyzer = SocketAddr::new(ip(ANALYZER), pod_server(ANALYZER).await);
    Cluster {
        ca,
        store,
        node_a,
        node_b,
        analyzer,
        hbone_port,
    }
}

async fn echo(app: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    app.write_all(payload).await?;
    app.shutdown().await?;
    let mut back = Vec::new();
    app.read_to_end(&mut back).await?;
    Ok(back)
}

/// Dials from a chosen source address, as a pod (or an impostor in one) would.
struct BoundConnector(IpAddr);

impl Connector for BoundConnector {
    async fn connect(&self, destination: SocketAddr, _source: IpAddr) -> io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.0, 0))?;
        socket.connect(destination).await
    }
}

/// A CONNECT straight to node-b's server as `client_sa`, bypassing node-a.
async fn raw_connect(
    c: &Cluster,
    client_sa: &str,
    dialled: &str,
    target: SocketAddr,
    forwarded: &str,
) -> Result<crate::hbone::H2Stream, ConnectError> {
    raw_connect_from(c, "127.0.0.1", client_sa, dialled, target, forwarded).await
}

async fn raw_connect_from(
    c: &Cluster,
    from: &str,
    client_sa: &str,
    dialled: &str,
    target: SocketAddr,
    forwarded: &str,
) -> Result<crate::hbone::H2Stream, ConnectError> {
    let tls = TlsConfigs::new(c.ca.bundle()).unwrap();
    let request = hbone::ConnectRequest {
        source: c.ca.issue(client_sa),
        destination: id(if dialled == ANALYZER {
            "analyzer"
        } else {
            "db"
        }),
        hbone_addr: SocketAddr::new(ip(dialled), c.hbone_port),
        target,
        client: forwarded.parse().unwrap(),
        service_host: None,
        baggage: None,
    };
    let connector = BoundConnector(ip(from));
    let conn = Connection::connect(&connector, &tls, &request, &ClientSettings::default()).await?;
    conn.open(target, request.client, None).await
}

fn expect_status(result: Result<crate::hbone::H2Stream, ConnectError>, status: u16) {
    match result {
        Err(ConnectError::Status(s)) => assert_eq!(s.as_u16(), status),
        other => panic!("expected {status}, got {other:?}"),
    }
}

// === tests ===

#[tokio::test]
async fn tunnel_carries_bytes_and_both_agents_count_it() {
    let c = cluster(&[ONLY_GUESTBOOK]).await;
    let (mut app, forward) = c.node_a.captured(&c.store, GUESTBOOK, c.analyzer).await;
    let payload = b"marker-7f3a through the mesh".repeat(100);
    assert_eq!(echo(&mut app, &payload).await.unwrap(), payload);
    let result = forward.await.unwrap();
    assert_eq!(result.status, Status::Closed, "{result:?}");
    assert_eq!(result.bytes.client_to_server, payload.len() as u64);

    let n = payload.len() as f64;
    let mtls = ("connection_security_policy", "mutual_tls");
    let from = (
        "source_principal",
        "spiffe://cluster.local/ns/default/sa/guestbook",
    );
    let to = (
        "destination_principal",
        "spiffe://cluster.local/ns/default/sa/analyzer",
    );
    for (agent, reporter) in [(&c.node_a, "source"), (&c.node_b, "destination")] {
        let labels = [
            ("reporter", reporter),
            mtls,
            from,
            to,
            ("source_workload", "guestbook"),
        ];
        // The server's record closes when its copy ends; give it a moment.
        for _ in 0..50 {
            if agent.metric("istio_tcp_connections_closed_total", &labels) == Some(1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            agent.metric("istio_tcp_connections_opened_total", &labels),
            Some(1.0),
            "{reporter}"
        );
        assert_eq!(
            agent.metric("istio_tcp_connections_closed_total", &labels),
            Some(1.0),
            "{reporter}"
        );
        assert_eq!(
            agent.metric("istio_tcp_received_bytes_total", &labels),
            Some(n),
            "{reporter}"
        );
        assert_eq!(
            agent.metric("istio_tcp_sent_bytes_total", &labels),
            Some(n),
            "{reporter}"
        );
    }
    assert_eq!(
        c.node_b.metric(
            "ambit_authorization_decisions_total",
            &[("decision", "allow"), ("reason", "allowed by ALLOW rule")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn denied_connect_is_401_and_resets_the_application() {
    let c = cluster(&[ONLY_GUESTBOOK]).await;
    let (mut app, forward) = c.node_a.captured(&c.store, SLEEP, c.analyzer).await;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let err = app.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(started.elapsed() < Duration::from_secs(1));
    let result = forward.await.unwrap();
    assert_eq!(result.status, Status::Denied, "{result:?}");
    assert!(result.reason.unwrap().contains("401"));
    assert_eq!(
        c.node_b.metric(
            "ambit_authorization_decisions_total",
            &[("decision", "deny"), ("reason", "no ALLOW policy matched")]
        ),
        Some(1.0)
    );
    expect_status(
        raw_connect(&c, "sleep", ANALYZER, c.analyzer, &format!("{SLEEP}:1000")).await,
        401,
    );
}

#[tokio::test]
async fn connect_to_another_pod_than_the_dialled_one_is_400() {
    let c = cluster(&[]).await;
    let db = SocketAddr::new(ip(DB), c.analyzer.port());
    let forwarded = format!("{GUESTBOOK}:1000");
    expect_status(
        raw_connect(&c, "guestbook", ANALYZER, db, &forwarded).await,
        400,
    );
    // The HBONE port itself is not a target.
    let own = SocketAddr::new(ip(ANALYZER), hbone::HBONE_PORT);
    expect_status(
        raw_connect(&c, "guestbook", ANALYZER, own, &forwarded).await,
        400,
    );
    // And the server keeps serving others.
    let mut ok = raw_connect(&c, "guestbook", ANALYZER, c.analyzer, &forwarded)
        .await
        .unwrap();
    assert_eq!(echo_h2(&mut ok, b"still serving").await, b"still serving");
}

async fn echo_h2(stream: &mut crate::hbone::H2Stream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    back
}

#[tokio::test]
async fn unreachable_pod_is_503() {
    let c = cluster(&[]).await;
    let closed = {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip(ANALYZER), 0)).unwrap();
        l.local_addr().unwrap()
    };
    let forwarded = format!("{GUESTBOOK}:1000");
    expect_status(
        raw_connect(&c, "guestbook", ANALYZER, closed, &forwarded).await,
        503,
    );
    let (mut app, forward) = c.node_a.captured(&c.store, GUESTBOOK, closed).await;
    let mut buf = [0u8; 1];
    assert_eq!(
        app.read(&mut buf).await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(forward.await.unwrap().status, Status::ConnectFailed);
}

#[tokio::test]
async fn forwarded_address_is_believed_only_for_the_peers_own_workload() {
    let c = cluster(&[ONLY_GUESTBOOK_IP]).await;
    let guestbook_addr = format!("{GUESTBOOK}:1000");
    // guestbook's certificate may speak for guestbook's address.
    let mut ok = raw_connect(&c, "guestbook", ANALYZER, c.analyzer, &guestbook_addr)
        .await
        .unwrap();
    assert_eq!(echo_h2(&mut ok, b"x").await, b"x");
    // sleep's may not: the tunnel's own source (127.0.0.1) is used, and denied.
    expect_status(
        raw_connect(&c, "sleep", ANALYZER, c.analyzer, &guestbook_addr).await,
        401,
    );
}

#[tokio::test]
async fn a_certificate_is_refused_from_another_pods_address() {
    let c = cluster(&[]).await;
    let forwarded = format!("{GUESTBOOK}:1000");
    // guestbook's own key, from guestbook's address: fine.
    let mut ok = raw_connect_from(&c, GUESTBOOK, "guestbook", ANALYZER, c.analyzer, &forwarded)
        .await
        .unwrap();
    assert_eq!(echo_h2(&mut ok, b"honest").await, b"honest");
    // sleep's key used from guestbook's address: stolen.
    expect_status(
        raw_connect_from(&c, GUESTBOOK, "sleep", ANALYZER, c.analyzer, &forwarded).await,
        401,
    );
    assert_eq!(
        c.node_b.metric(
            "ambit_authorization_decisions_total",
            &[
                ("decision", "deny"),
                ("reason", "peer identity is not its pod's")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn same_node_connections_get_the_inbound_checks_in_process() {
    let c = cluster(&[ONLY_GUESTBOOK]).await;
    // db -> analyzer are both on node-b: node-b's forwarder carries it itself.
    let (mut app, forward) = c.node_b.captured(&c.store, DB, c.analyzer).await;
    let mut buf = [0u8; 1];
    assert_eq!(
        app.read(&mut buf).await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(forward.await.unwrap().status, Status::Denied);

    let open = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-from-db, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/db"]}}]
"#;
    c.store.replace(snapshot(&[open]));
    let (mut app, forward) = c.node_b.captured(&c.store, DB, c.analyzer).await;
    assert_eq!(echo(&mut app, b"local").await.unwrap(), b"local");
    assert_eq!(forward.await.unwrap().status, Status::Closed);
    let labels = |r: &'static str| {
        [
            ("reporter", r),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/db",
            ),
            ("connection_security_policy", "mutual_tls"),
        ]
    };
    for reporter in ["source", "destination"] {
        assert_eq!(
            c.node_b
                .metric("istio_tcp_connections_opened_total", &labels(reporter)),
            Some(2.0),
            "{reporter}"
        );
        assert_eq!(
            c.node_b
                .metric("istio_tcp_received_bytes_total", &labels(reporter)),
            Some(5.0),
            "{reporter}"
        );
    }
}

#[tokio::test]
async fn policy_change_closes_open_tunnels_it_denies() {
    let c = cluster(&[]).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::authz::watch::follow(
        c.node_b.mesh.tracker.clone(),
        c.store.subscribe(),
        shutdown.clone(),
    ));
    let (mut app, forward) = c.node_a.captured(&c.store, GUESTBOOK, c.analyzer).await;
    app.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(c.node_b.mesh.tracker.len(), 1);

    // A policy that still allows guestbook leaves it open...
    c.store.replace(snapshot(&[ONLY_GUESTBOOK]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.write_all(b"pong").await.unwrap();
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    // ...one that denies it closes it within a second.
    c.store.replace(snapshot(&[DENY_ALL]));
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(1), app.read(&mut buf))
        .await
        .expect("closed within a second");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let result = forward.await.unwrap();
    assert_ne!(result.status, Status::Closed, "{result:?}");
    assert_eq!(c.node_b.mesh.tracker.len(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn plaintext_admission_follows_peer_authentication_and_policy_changes() {
    let c = cluster(&[]).await;
    let admit = |snapshot: &Snapshot| {
        let destination = snapshot.workload_by_ip(ip(ANALYZER)).unwrap().clone();
        c.node_b.mesh.admission.admit(&InboundRequest {
            snapshot,
            client: ClientAddr("10.9.9.9:4000".parse().unwrap()),
            source: None,
            destination: &destination,
            orig_dst: OrigDst(c.analyzer),
        })
    };
    let permissive = c.store.current();
    let Admission::Follow(admitted) = admit(&permissive) else {
        panic!("PERMISSIVE admits plaintext");
    };
    let close = admitted.closed_by_policy();
    assert_eq!(c.node_b.mesh.tracker.len(), 1);

    let strict = snapshot(&[STRICT]);
    assert!(
        matches!(admit(&strict), Admission::Deny { reason } if reason == "plaintext refused by STRICT")
    );
    assert_eq!(c.node_b.mesh.tracker.reauthorize(&strict), 1);
    assert!(close.is_cancelled());
    admitted.finished(&Forwarded::refused(Status::Denied, "closed"));
    assert_eq!(c.node_b.mesh.tracker.len(), 0);
    let none = ("connection_security_policy", "none");
    assert_eq!(
        c.node_b.metric(
            "istio_tcp_connections_closed_total",
            &[("reporter", "destination"), none]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn identities_follow_the_local_enrolled_workloads() {
    let c = cluster(&[]).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(follow_identities(
        c.node_a.certs.clone(),
        c.store.subscribe(),
        "node-a".into(),
        "cluster.local".into(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first: BTreeSet<SpiffeId> = [id("guestbook"), id("sleep")].into();
    assert_eq!(c.node_a.certs.tracked.lock().as_slice(), &[first]);
    shutdown.cancel();
    task.await.unwrap();
}
