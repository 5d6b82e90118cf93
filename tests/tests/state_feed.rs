//! The state feed against the fake API server: a fed agent holds the same
//! state as one watching directly (identities, enrolment, Services,
//! decisions) through creations, edits and deletions; it refuses nothing it
//! should accept and is refused with a wrong token; and when the feed dies
//! the agent falls back to direct watches, then returns to the feed; and an
//! agent whose connection broke resumes with only the batches it missed.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_agent::state::source::failover::{FailoverWatch, SourceMode};
use ambit_agent::state::source::feed::FeedConfig;
use ambit_agent::state::source::kube::KubeSource;
use ambit_agent::state::{LoadOptions, Snapshot, StateStore};
use ambit_agent::state_server::StateServer;
use ambit_ca::authn::bootstrap::BootstrapTokens;
use ambit_ca::serving::ServingCert;
use ambit_policy::{Connection, Target};
use ambit_tests::fake_kube::FakeKube;
use ambit_tests::fake_kube::objects::{endpoint_slice, namespace, service};
use ambit_tests::pki::ServingPki;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(15);
const SERVER_NAME: &str = "ambit-state.test";
const NODE: &str = "node-a";
const TOKEN: &str = "bootstrap-token-of-node-a";

fn pod(ns: &str, name: &str, ip: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "generateName": format!("{app}-"),
            "labels": { "app": app },
        },
        "spec": { "nodeName": node, "serviceAccountName": format!("{app}-sa"), "containers": [{ "name": "c" }] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
    })
}

fn allow_from(ns: &str, principal: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": "allow", "namespace": ns },
        "spec": { "action": "ALLOW", "rules": [{ "from": [{ "source": { "principals": [principal] } }] }] },
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Namespace `apps` enrolled, `legacy` not; pods on three nodes.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await.unwrap();
    fake.apply(&namespace("apps", true)).unwrap();
    fake.apply(&namespace("legacy", false)).unwrap();
    fake.apply(&pod("apps", "web-1", "10.0.1.5", NODE, "web"))
        .unwrap();
    fake.apply(&pod("apps", "api-1", "10.0.2.5", "node-b", "api"))
        .unwrap();
    fake.apply(&pod("apps", "api-2", "10.0.3.5", "node-c", "api"))
        .unwrap();
    fake.apply(&pod("legacy", "db-1", "10.0.2.9", "node-b", "db"))
        .unwrap();
    fake.apply(&service("apps", "api", "10.96.0.20")).unwrap();
    fake.apply(&endpoint_slice("apps", "api", &["10.0.2.5", "10.0.3.5"]))
        .unwrap();
    fake.apply(&allow_from("apps", "cluster.local/ns/apps/sa/web-sa"))
        .unwrap();
    fake
}

fn source(fake: &FakeKube) -> KubeSource {
    let config = kube::Config::new(fake.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    KubeSource::new(client, LoadOptions::default()).with_settle(Duration::from_millis(10))
}

struct Feed {
    pki: ServingPki,
    dir: tempfile::TempDir,
}

impl Feed {
    fn new() -> Self {
        let feed = Self {
            pki: ServingPki::new(SERVER_NAME).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(feed.path("root.pem"), &feed.pki.root_pem).unwrap();
        std::fs::write(feed.path("token"), TOKEN).unwrap();
        std::fs::write(feed.path("wrong-token"), "not-the-token-of-node-a").unwrap();
        feed
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    async fn server(&self, fake: &FakeKube, listener: TcpListener) -> StateServer {
        let tls = ServingCert::fixed(&self.pki.chain_pem, &self.pki.key_pem)
            .unwrap()
            .server_config()
            .unwrap();
        let tokens = BootstrapTokens::from_pairs([(NODE.to_owned(), TOKEN.to_owned())]).unwrap();
        let mut server = StateServer::start(
            source(fake),
            Arc::new(tls),
            Arc::new(tokens),
            Duration::from_millis(20),
        );
        server.serve(listener);
        server
    }

    /// A server on a free loopback port, and that port.
    async fn running(&self, fake: &FakeKube) -> (SocketAddr, StateServer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, self.server(fake, listener).await)
    }

    fn config(&self, addr: SocketAddr, token: &Path) -> FeedConfig {
        FeedConfig {
            address: addr.to_string(),
            server_name: SERVER_NAME.to_owned(),
            trust_bundle: self.path("root.pem"),
            token_file: token.to_path_buf(),
            node: NODE.to_owned(),
        }
    }
}

/// An agent of `NODE` fed from `addr`, falling back after `fallback`.
fn fed_agent(
    fake: &FakeKube,
    config: FeedConfig,
    fallback: Duration,
) -> (FailoverWatch, StateStore) {
    let store = StateStore::new(Snapshot::default());
    let direct = source(fake).with_node(NODE);
    let fed = direct.clone().fed_by(config);
    (
        FailoverWatch::start(fed, direct, store.clone(), fallback),
        store,
    )
}

fn direct_agent(fake: &FakeKube) -> (ambit_agent::state::source::kube::KubeWatch, StateStore) {
    let store = StateStore::new(Snapshot::default());
    (source(fake).with_node(NODE).start(store.clone()), store)
}

/// What an agent of `NODE` decides from a snapshot, for every address and
/// Service of the test cluster.
fn view(s: &Snapshot) -> Vec<String> {
    let addresses = [
        "10.0.1.5", "10.0.1.6", "10.0.2.5", "10.0.3.5", "10.0.2.9", "10.0.4.4",
    ];
    let mut seen: Vec<String> = addresses
        .iter()
        .map(|a| match s.workload_by_ip(ip(a)) {
            Some(w) => format!(
                "{a}: {}/{} sa={} enrolled={} local={}",
                w.namespace,
                if w.is_remote() { "-" } else { &w.name },
                w.service_account,
                w.enrolled,
                w.node == NODE
            ),
            None => format!("{a}: none"),
        })
        .collect();
    // The ready set, not a pick: `service_target` round-robins on a counter
    // that each store's history advances differently.
    let mut ready: Vec<SocketAddr> = s
        .service_by_vip(ip("10.96.0.20"))
        .map(|svc| svc.ready_endpoints(80).collect())
        .unwrap_or_default();
    ready.sort();
    seen.push(format!("api: {ready:?}"));
    let labels = std::collections::BTreeMap::new();
    for (ns, principal) in [
        ("apps", "cluster.local/ns/apps/sa/web-sa"),
        ("apps", "cluster.local/ns/apps/sa/api-sa"),
        ("legacy", "cluster.local/ns/apps/sa/api-sa"),
    ] {
        let dst = Target {
            namespace: ns,
            labels: &labels,
        };
        let conn = Connection {
            src_ip: ip("10.0.2.5"),
            src_principal: Some(principal),
            src_namespace: Some("apps"),
            dst_ip: ip("10.0.1.5"),
            dst_port: 8080,
            mtls: true,
        };
        seen.push(format!(
            "{principal} -> {ns}: {}",
            s.policies().evaluate(&dst, &conn).allowed
        ));
    }
    seen
}

/// Waits until both stores are synced, decide alike, and show `expected`.
async fn agree(fed: &StateStore, direct: &StateStore, what: &str, expected: &[&str]) {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let (f, d) = (fed.current(), direct.current());
            let seen = view(&f);
            if f.is_synced()
                && d.is_synced()
                && seen == view(&d)
                && expected.iter().all(|e| seen.iter().any(|s| s == e))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        panic!(
            "{what}: fed and direct never agreed on {expected:?}\nfed:    {:?}\ndirect: {:?}",
            view(&fed.current()),
            view(&direct.current())
        )
    })
}

async fn until_mode(watch: &FailoverWatch, mode: SourceMode) {
    let mut rx = watch.mode();
    tokio::time::timeout(WAIT, rx.wait_for(|m| *m == mode))
        .await
        .unwrap_or_else(|_| panic!("never switched to {mode:?}"))
        .unwrap();
}

#[tokio::test]
async fn a_fed_agent_decides_as_one_watching_directly() {
    let fake = cluster().await;
    let feed = Feed::new();
    let (addr, server) = feed.running(&fake).await;
    let (fed, fed_store) = fed_agent(&fake, feed.config(addr, &feed.path("token")), WAIT * 4);
    let (_direct, direct_store) = direct_agent(&fake);
    // Remote pods are known by identity, this node's in full.
    agree(
        &fed_store,
        &direct_store,
        "initial",
        &[
            "10.0.2.5: apps/- sa=api-sa enrolled=true local=false",
            "10.0.2.9: legacy/- sa=db-sa enrolled=false local=false",
            "10.0.1.5: apps/web-1 sa=web-sa enrolled=true local=true",
        ],
    )
    .await;
    assert_eq!(*fed.mode().borrow(), SourceMode::Fed);
    assert_eq!(fed_store.source(), "state feed");
    assert_eq!(server.agents(), 1);
    let mut registry = prometheus_client::registry::Registry::default();
    server.metrics().register(&mut registry);
    let scraped = tokio::time::timeout(WAIT, async {
        loop {
            let text = ambit_agent::metrics::encode(&registry);
            if text.contains("ambit_state_server_agents 1\n")
                && text.contains("ambit_state_server_addresses 4\n")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        scraped.is_ok(),
        "{}",
        ambit_agent::metrics::encode(&registry)
    );

    // Every kind of change follows, and the two keep deciding alike.
    fake.apply(&pod("apps", "api-3", "10.0.4.4", "node-c", "api"))
        .unwrap();
    fake.apply(&endpoint_slice("apps", "api", &["10.0.4.4"]))
        .unwrap();
    agree(
        &fed_store,
        &direct_store,
        "new pod",
        &[
            "10.0.4.4: apps/- sa=api-sa enrolled=true local=false",
            "api: [10.0.4.4:8080]",
        ],
    )
    .await;

    fake.apply(&allow_from("apps", "cluster.local/ns/apps/sa/api-sa"))
        .unwrap();
    agree(
        &fed_store,
        &direct_store,
        "policy edit",
        &["cluster.local/ns/apps/sa/api-sa -> apps: true"],
    )
    .await;

    fake.apply(&namespace("legacy", true)).unwrap();
    agree(
        &fed_store,
        &direct_store,
        "namespace enrolled",
        &["10.0.2.9: legacy/- sa=db-sa enrolled=true local=false"],
    )
    .await;

    fake.delete(&ambit_tests::fake_kube::PODS, "apps", "api-1")
        .unwrap();
    fake.apply(&pod("apps", "web-2", "10.0.1.6", NODE, "web"))
        .unwrap();
    agree(
        &fed_store,
        &direct_store,
        "pod deleted, local pod added",
        &[
            "10.0.2.5: none",
            "10.0.1.6: apps/web-2 sa=web-sa enrolled=true local=true",
        ],
    )
    .await;
    assert!(server.bytes_sent() > 0);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_agent_watches_directly() {
    let fake = cluster().await;
    let feed = Feed::new();
    let (addr, server) = feed.running(&fake).await;
    let (fed, fed_store) = fed_agent(
        &fake,
        feed.config(addr, &feed.path("wrong-token")),
        Duration::from_millis(500),
    );
    let (_direct, direct_store) = direct_agent(&fake);
    agree(&fed_store, &direct_store, "direct after refusal", &[]).await;
    assert_eq!(*fed.mode().borrow(), SourceMode::Direct);
    assert_eq!(server.agents(), 0);
    assert!(
        server.metrics().refused.get() >= 1,
        "the refusal is counted"
    );
    let failure = fed_store.status().last_error;
    assert!(
        failure.is_none(),
        "the direct source's state is in force: {failure:?}"
    );
}

#[tokio::test]
async fn the_agent_falls_back_while_the_feed_is_down_and_returns_to_it() {
    let fake = cluster().await;
    let feed = Feed::new();
    let (addr, server) = feed.running(&fake).await;
    let fallback = Duration::from_secs(1);
    let (fed, fed_store) = fed_agent(&fake, feed.config(addr, &feed.path("token")), fallback);
    let (_direct, direct_store) = direct_agent(&fake);
    agree(&fed_store, &direct_store, "initial", &[]).await;
    assert_eq!(*fed.mode().borrow(), SourceMode::Fed);

    // The feed goes away: the state fed so far stays, marked stale.
    drop(server);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stale = fed_store.staleness(std::time::SystemTime::now());
    assert!(stale >= Duration::from_millis(300), "staleness {stale:?}");
    fake.apply(&pod("apps", "api-3", "10.0.4.4", "node-c", "api"))
        .unwrap();
    until_mode(&fed, SourceMode::Direct).await;
    agree(
        &fed_store,
        &direct_store,
        "after fallback",
        &["10.0.4.4: apps/- sa=api-sa enrolled=true local=false"],
    )
    .await;
    assert_eq!(fed_store.source(), "kubernetes (state feed unreachable)");
    let fresh = fed_store.staleness(std::time::SystemTime::now());
    assert_eq!(fresh, Duration::ZERO, "direct watches are current");

    // The feed is back on its address: the agent returns to it.
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = feed.server(&fake, listener).await;
    until_mode(&fed, SourceMode::Fed).await;
    fake.apply(&allow_from("apps", "cluster.local/ns/apps/sa/api-sa"))
        .unwrap();
    agree(
        &fed_store,
        &direct_store,
        "fed again",
        &["cluster.local/ns/apps/sa/api-sa -> apps: true"],
    )
    .await;
    tokio::time::timeout(WAIT, async {
        while server.agents() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
}

/// A TCP relay in front of a state server, so a test can break agents'
/// connections while the server (and the history it keeps) lives on.
struct Relay {
    addr: SocketAddr,
    /// Open: relaying; closed: every connection is dropped, new ones at once.
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let gate = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let mut gate = gate.subscribe();
                if !*gate.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = gate.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Self { addr, open, task }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_reconnecting_agent_resumes_with_the_batches_it_missed() {
    let fake = cluster().await;
    let feed = Feed::new();
    let (addr, server) = feed.running(&fake).await;
    let relay = Relay::start(addr).await;
    // Fallback far away: the agent stays on the feed throughout.
    let config = feed.config(relay.addr, &feed.path("token"));
    let (fed, fed_store) = fed_agent(&fake, config, Duration::from_secs(60));
    let (_direct, direct_store) = direct_agent(&fake);
    agree(&fed_store, &direct_store, "initial", &[]).await;
    assert_eq!(*fed.mode().borrow(), SourceMode::Fed);
    assert_eq!(server.metrics().full_states.get(), 1);

    // The connection breaks; the cluster changes while the agent is away.
    relay.set_open(false);
    let server = &server;
    let batched = |before: u64| async move {
        tokio::time::timeout(WAIT, async {
            while server.revision() == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the server batches the change");
    };
    let before = server.revision();
    fake.apply(&pod("apps", "api-3", "10.0.4.4", "node-c", "api"))
        .unwrap();
    batched(before).await;
    let before = server.revision();
    fake.apply(&allow_from("apps", "cluster.local/ns/apps/sa/api-sa"))
        .unwrap();
    batched(before).await;
    let sent = server.bytes_sent();

    relay.set_open(true);
    agree(
        &fed_store,
        &direct_store,
        "resumed",
        &[
            "10.0.4.4: apps/- sa=api-sa enrolled=true local=false",
            "cluster.local/ns/apps/sa/api-sa -> apps: true",
        ],
    )
    .await;
    assert_eq!(server.metrics().resumed.get(), 1, "one resume");
    assert_eq!(
        server.metrics().full_states.get(),
        1,
        "no second full state"
    );
    // The resume is the two batches and a few small frames, not a state.
    let resent = server.bytes_sent() - sent;
    assert!(resent < 8 * 1024, "{resent} bytes sent on resuming");
    assert_eq!(*fed.mode().borrow(), SourceMode::Fed);
}
