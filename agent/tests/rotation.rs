//! Credentials rotated on disk while the agent runs, with real files, real TLS
//! and a real CA service on loopback: the CA token re-read for each request,
//! and the trust bundle file followed by the HBONE TLS configs and the CA client.

// Fixtures outside #[test] fns unwrap too: a failure there is a broken setup.
#![allow(clippy::unwrap_used)]

// Shared with the HBONE tests, which use all of it; this file only part.
#[allow(dead_code)]
#[path = "hbone/certs.rs"]
mod certs;
#[path = "hbone/pod.rs"]
mod pod;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_agent::drain::{self, DrainTrigger};
use ambit_agent::hbone::client::{ClientSettings, Connection};
use ambit_agent::hbone::{
    ConnectError, ConnectRequest, InboundHandler, InboundRequest, PlainConnector, Refusal, Server,
    ServerSettings, TlsConfigs, Transfer, Upstream,
};
use ambit_agent::identity::ca_client::fetch;
use ambit_agent::identity::{
    BundleWatch, FetchError, IssueError, RotatingCaClient, TokenFile, TrustBundleFile,
    WorkloadCertificate,
};
use ambit_agent::mesh::follow_trust_bundle;
use ambit_agent::metrics::Metrics;
use ambit_ca::SpiffeId;
use ambit_ca::api::{CaService, ServerLimits};
use ambit_ca::authn::{Authenticator, AuthnError, BearerToken, NodeName};
use ambit_ca::binding::IdentityBinding;
use ambit_ca::client::CaClientConfig;
use ambit_ca::serving::ServingCert;
use ambit_ca::signer::{Lifetimes, Signer};
use certs::TestCa;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

const POLL: Duration = Duration::from_millis(50);

/// Waits (up to 10 s) for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces `path` the way kubelet and editors do: a new file renamed over it,
/// so a reader never sees it half written.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One agent's view of the trust bundle: the file, its follower, and the TLS
/// configs and metrics it feeds.
struct Agent {
    file: PathBuf,
    watch: BundleWatch,
    tls: Arc<TlsConfigs>,
    metrics: Arc<Metrics>,
    _follow: DropGuard,
}

impl Agent {
    async fn new(
        dir: &Path,
        name: &str,
        roots_pem: &str,
        ca: Option<Arc<RotatingCaClient>>,
    ) -> Self {
        let file = dir.join(format!("{name}-roots.pem"));
        std::fs::write(&file, roots_pem).unwrap();
        let watch = TrustBundleFile::new(&file, "cluster.local")
            .polling_only()
            .with_poll_interval(POLL)
            .start()
            .await
            .unwrap();
        let tls = Arc::new(TlsConfigs::new(watch.current().bundle).unwrap());
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let stop = CancellationToken::new();
        tokio::spawn(follow_trust_bundle(
            watch.subscribe(),
            tls.clone(),
            ca,
            metrics.clone(),
            stop.clone(),
        ));
        Self {
            file,
            watch,
            tls,
            metrics,
            _follow: stop.drop_guard(),
        }
    }

    /// Writes a new bundle and waits until it is applied.
    async fn rotate(&self, roots_pem: &str) {
        let before = self.metrics.agent.trust_bundle_reloads.get();
        replace(&self.file, roots_pem);
        until("the new bundle to be applied", || {
            self.metrics.agent.trust_bundle_reloads.get() == before + 1
        })
        .await;
    }
}

// === HBONE ===

/// The server side: presents one certificate and dials the target.
struct Pod {
    cert: Arc<WorkloadCertificate>,
    peers: Mutex<Vec<SpiffeId>>,
}

impl InboundHandler for Pod {
    type Connection = ();

    async fn server_certificate(&self, _: std::net::IpAddr) -> Option<Arc<WorkloadCertificate>> {
        Some(self.cert.clone())
    }

    async fn handle(&self, request: &InboundRequest) -> Result<Upstream<()>, Refusal> {
        self.peers.lock().push(request.peer.clone());
        pod::dial(request.target).await
    }

    fn closed(&self, _: (), _: Transfer) {}
}

/// An echo server standing for the destination pod.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn hbone_server(tls: Arc<TlsConfigs>, pod: Arc<Pod>) -> (SocketAddr, DrainTrigger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ServerSettings {
        handshake_timeout: Duration::from_millis(500),
        ..ServerSettings::default()
    };
    let (trigger, watcher) = drain::channel();
    tokio::spawn(Server::new(tls, pod, settings).serve(listener, watcher));
    (addr, trigger)
}

/// A new HBONE connection and one tunnel through it carrying a few bytes.
async fn tunnel(tls: &TlsConfigs, request: &ConnectRequest) -> Result<Connection, ConnectError> {
    let attempt = async {
        let connection =
            Connection::connect(&PlainConnector, tls, request, &ClientSettings::default()).await?;
        round_trip(&connection, request).await?;
        Ok(connection)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap()
}

async fn round_trip(connection: &Connection, request: &ConnectRequest) -> Result<(), ConnectError> {
    let mut stream = connection
        .open(request.target, request.client, None)
        .await?;
    stream.write_all(b"rotated").await.unwrap();
    let mut back = [0u8; 7];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"rotated");
    Ok(())
}

#[tokio::test]
async fn hbone_follows_the_trust_bundle_file() {
    let dir = tempfile::tempdir().unwrap();
    // The server's workloads are certified by the old root, the client's by the
    // new one: each side trusts only its own root until the rotation.
    let (old, new) = (TestCa::new("cluster.local"), TestCa::new("cluster.local"));
    let (old_pem, new_pem) = (old.bundle().to_pem(), new.bundle().to_pem());
    let both = format!("{old_pem}{new_pem}");
    let server = Agent::new(dir.path(), "server", &old_pem, None).await;
    let client = Agent::new(dir.path(), "client", &new_pem, None).await;
    let pod = Arc::new(Pod {
        cert: old.issue("default", "analyzer"),
        peers: Mutex::default(),
    });
    let (hbone_addr, _drain) = hbone_server(server.tls.clone(), pod.clone()).await;
    let request = ConnectRequest {
        source: new.issue("default", "sleep"),
        destination: old.id("default", "analyzer"),
        hbone_addr,
        target: echo().await,
        client: "127.0.0.1:40123".parse().unwrap(),
        service_host: None,
        baggage: None,
    };

    let refused = tunnel(&client.tls, &request).await.unwrap_err();
    assert!(!matches!(refused, ConnectError::Status(_)), "{refused}");
    // The server trusts the new root now, but the client still refuses the
    // server's certificate from the old one.
    server.rotate(&both).await;
    assert_eq!(server.metrics.agent.trust_bundle_roots.get(), 2);
    assert!(tunnel(&client.tls, &request).await.is_err());
    assert!(pod.peers.lock().is_empty());

    client.rotate(&format!("{new_pem}{old_pem}")).await;
    let open = tunnel(&client.tls, &request).await.unwrap();
    assert_eq!(*pod.peers.lock(), vec![new.id("default", "sleep")]);

    // A garbage bundle is rejected and the last good one stays in force.
    replace(&server.file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    until("the bad bundle to be rejected", || {
        server.metrics.agent.trust_bundle_reload_errors.get() == 1
    })
    .await;
    let status = server.watch.current();
    let reason = status.last_error.unwrap();
    assert!(
        reason.contains(&server.file.display().to_string()),
        "{reason}"
    );
    assert!(reason.contains("not PEM"), "{reason}");
    assert_eq!((status.generation, status.bundle.roots.len()), (1, 2));
    tunnel(&client.tls, &request).await.unwrap();

    // Rotating the new root out again refuses new connections, while the
    // connection opened before keeps carrying streams.
    server.rotate(&old_pem).await;
    assert_eq!(server.metrics.agent.trust_bundle_roots.get(), 1);
    assert!(tunnel(&client.tls, &request).await.is_err());
    round_trip(&open, &request).await.unwrap();
    assert_eq!(pod.peers.lock().len(), 3);
}

// === CA ===

/// Authenticates any `token-*` as node-a and records what it was sent.
#[derive(Default)]
struct RecordingAuthn(Mutex<Vec<String>>);

impl Authenticator for RecordingAuthn {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<NodeName, AuthnError>> {
        Box::pin(async move {
            self.0.lock().push(token.expose().to_string());
            if token.expose().starts_with("token-") {
                Ok(NodeName::new("node-a"))
            } else {
                Err(AuthnError::UnknownToken)
            }
        })
    }
}

struct AnyIdentity;

impl IdentityBinding for AnyIdentity {
    fn may_hold(&self, _: &NodeName, _: &SpiffeId) -> bool {
        true
    }
}

/// A CA on loopback; returns its address and root PEM.
async fn ca(dir: &Path, authn: Arc<RecordingAuthn>) -> (String, String) {
    let keys = ambit_ca::keys::load_or_generate_root(dir, "cluster.local").unwrap();
    let lifetimes = Lifetimes {
        default: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    let signer = Arc::new(Signer::new(keys, "cluster.local", lifetimes));
    let serving_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let names = vec![ambit_ca::DEFAULT_SERVING_NAME.to_owned()];
    let serving = signer
        .issue_serving(&serving_key, &names, Duration::from_secs(3600))
        .unwrap();
    let identity = ServingCert::fixed(
        &serving.chain_pem[..serving.chain_pem.len() - 1].concat(),
        &serving_key.serialize_pem(),
    )
    .unwrap();
    let root = signer.root_pem().to_owned();
    let service = CaService::new(signer, authn, Arc::new(AnyIdentity));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ambit_ca::api::serve(
        listener,
        service,
        identity,
        ServerLimits::default(),
        std::future::pending(),
    ));
    (format!("https://{addr}"), root)
}

fn client_config(address: &str) -> CaClientConfig {
    let mut config = CaClientConfig::new(address, String::new());
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(5);
    config
}

fn cart() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

#[tokio::test]
async fn each_ca_request_carries_the_token_on_disk_now() {
    let dir = tempfile::tempdir().unwrap();
    let authn = Arc::new(RecordingAuthn::default());
    let (address, root) = ca(&dir.path().join("ca"), authn.clone()).await;
    let roots =
        ambit_agent::identity::TrustBundle::from_pem(root.as_bytes(), "cluster.local").unwrap();
    let token_path = dir.path().join("token");
    let client =
        RotatingCaClient::new(client_config(&address), &roots, TokenFile::new(&token_path))
            .unwrap();
    let ttl = Duration::from_secs(600);

    // No token yet: the request fails naming the file, and reaches no CA.
    let error = fetch(&client, &cart(), ttl).await.unwrap_err();
    assert!(
        matches!(error, FetchError::Issue(IssueError::Token(_))),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&token_path.display().to_string())
    );
    assert!(authn.0.lock().is_empty());

    std::fs::write(&token_path, "token-one\n").unwrap();
    let issued = fetch(&client, &cart(), ttl).await.unwrap();
    assert_eq!(issued.identity, cart());
    replace(&token_path, "token-two");
    fetch(&client, &cart(), ttl).await.unwrap();
    // An emptied file: the previous good token is sent meanwhile.
    replace(&token_path, "");
    fetch(&client, &cart(), ttl).await.unwrap();
    assert!(client.token_file().last_error().unwrap().contains("empty"));
    // A token the CA does not know is sent as is and refused by the CA.
    replace(&token_path, "stale");
    assert!(matches!(
        fetch(&client, &cart(), ttl).await.unwrap_err(),
        FetchError::Issue(IssueError::Ca(_))
    ));
    assert_eq!(
        *authn.0.lock(),
        ["token-one", "token-two", "token-two", "stale"]
    );
}

#[tokio::test]
async fn ca_client_verifies_the_ca_against_the_rotated_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let authn = Arc::new(RecordingAuthn::default());
    let (address, ca_root) = ca(&dir.path().join("ca"), authn.clone()).await;
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "token-one").unwrap();
    let unrelated = TestCa::new("cluster.local").bundle().to_pem();
    let initial =
        ambit_agent::identity::TrustBundle::from_pem(unrelated.as_bytes(), "cluster.local")
            .unwrap();
    let client = Arc::new(
        RotatingCaClient::new(
            client_config(&address),
            &initial,
            TokenFile::new(&token_path),
        )
        .unwrap(),
    );
    let agent = Agent::new(dir.path(), "agent", &unrelated, Some(client.clone())).await;
    let ttl = Duration::from_secs(600);

    // The CA's serving certificate does not chain to the bundle: no call made,
    // and the error names the CA's address.
    let error = fetch(client.as_ref(), &cart(), ttl).await.unwrap_err();
    assert!(
        matches!(error, FetchError::Issue(IssueError::Unreachable { .. })),
        "{error}"
    );
    assert!(error.to_string().contains(&address), "{error}");
    assert!(authn.0.lock().is_empty());

    agent.rotate(&format!("{unrelated}{ca_root}")).await;
    let issued = fetch(client.as_ref(), &cart(), ttl).await.unwrap();
    assert_eq!(issued.identity, cart());
    assert_eq!(*authn.0.lock(), ["token-one"]);
    assert_eq!(agent.metrics.agent.trust_bundle_roots.get(), 2);
}
