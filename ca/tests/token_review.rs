//! The CA with Kubernetes caller authentication, end to end: an agent's
//! projected token is reviewed by the (fake) API server, its node is learned
//! from the token's bound pod, and a certificate is signed over real gRPC/TLS
//! only for a workload scheduled on that node.
// Test helpers outside #[test] fns panic on a broken environment by design.
#![allow(clippy::unwrap_used)]

#[path = "fixture/ca.rs"]
mod fixture;

use std::sync::Arc;
use std::time::Duration;

use ambit_ca::SpiffeId;
use ambit_ca::api::{CaService, ServerLimits};
use ambit_ca::authn::token_review::{
    EXTRA_POD_UID, Refusal, ReviewError, ServiceAccountRef, TokenReviewAuthenticator,
};
use ambit_ca::authn::{BearerToken, NodeName};
use ambit_ca::binding::IdentityBinding;
use ambit_ca::client::{CaClient, CaClientConfig, CaClientError};
use ambit_ca::pods::PodIndex;
use ambit_ca::serving::ServingCert;
use ambit_ca::signer::{Lifetimes, Signer};
use ambit_tests::fake_kube::{self, FakeKube, TokenUser};
use fixture::{csr_for, uri_sans};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Code;

const AUDIENCE: &str = "ambit-ca";

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "nodeName": node, "serviceAccountName": sa, "containers": [] },
        "status": { "phase": "Running" },
    })
}

fn identity(ns: &str, sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
        .parse()
        .unwrap()
}

fn agent_sa() -> ServiceAccountRef {
    "ambit-system/ambit-agent".parse().unwrap()
}

/// A token of `namespace/sa` bound to pod `pod` (with its real uid) on `node`.
fn bound_token(fake: &FakeKube, token: &str, ns: &str, sa: &str, pod: &str, node: &str) {
    let mut user = TokenUser::pod_bound(ns, sa, pod, node, AUDIENCE);
    if let Some(stored) = fake.get(&fake_kube::PODS, ns, pod) {
        let uid = stored["metadata"]["uid"].as_str().unwrap().to_owned();
        user.extra.insert(EXTRA_POD_UID.into(), vec![uid]);
    }
    fake.add_token(token, user);
}

/// Agents on node-a and node-b; `shop/cart` on node-a, `shop/web` on node-b.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await.unwrap();
    fake.apply(&pod("ambit-system", "agent-a", "ambit-agent", "node-a"))
        .unwrap();
    fake.apply(&pod("ambit-system", "agent-b", "ambit-agent", "node-b"))
        .unwrap();
    fake.apply(&pod("shop", "cart-1", "cart", "node-a"))
        .unwrap();
    fake.apply(&pod("shop", "web-1", "web", "node-b")).unwrap();
    bound_token(
        &fake,
        "agent-a-token",
        "ambit-system",
        "ambit-agent",
        "agent-a",
        "node-a",
    );
    bound_token(
        &fake,
        "agent-b-token",
        "ambit-system",
        "ambit-agent",
        "agent-b",
        "node-b",
    );
    bound_token(&fake, "cart-token", "shop", "cart", "cart-1", "node-a");
    fake
}

struct Kube {
    client: kube::Client,
    pods: Arc<PodIndex>,
    _watch: tokio::task::JoinHandle<()>,
}

async fn kube(fake: &FakeKube) -> Kube {
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap();
    let (pods, watch) = PodIndex::start(client.clone());
    tokio::time::timeout(Duration::from_secs(10), async {
        while !pods.is_synced() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    Kube {
        client,
        pods,
        _watch: watch,
    }
}

fn authenticator(k: &Kube) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(k.client.clone(), AUDIENCE, agent_sa(), k.pods.clone())
}

async fn refusal(authn: &TokenReviewAuthenticator, token: &str) -> Refusal {
    match authn.review(&BearerToken::new(token)).await {
        Err(ReviewError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_token_names_its_pods_node() {
    let fake = cluster().await;
    let k = kube(&fake).await;
    let authn = authenticator(&k);
    let node = authn
        .review(&BearerToken::new("agent-a-token"))
        .await
        .unwrap();
    assert_eq!(node, NodeName::new("node-a"));
    let node = authn
        .review(&BearerToken::new("agent-b-token"))
        .await
        .unwrap();
    assert_eq!(node, NodeName::new("node-b"));

    // The pod index binds identities to nodes.
    assert!(
        k.pods
            .may_hold(&NodeName::new("node-a"), &identity("shop", "cart"))
    );
    assert!(
        !k.pods
            .may_hold(&NodeName::new("node-a"), &identity("shop", "web"))
    );
    assert!(
        !k.pods
            .may_hold(&NodeName::new("node-c"), &identity("shop", "cart"))
    );
}

#[tokio::test]
async fn everything_else_is_refused_with_its_reason() {
    let fake = cluster().await;
    let k = kube(&fake).await;
    let authn = authenticator(&k);

    assert!(matches!(
        refusal(&authn, "forged").await,
        Refusal::NotAuthenticated(_)
    ));
    assert_eq!(
        refusal(&authn, "cart-token").await,
        Refusal::WrongServiceAccount("system:serviceaccount:shop:cart".into())
    );

    // A token for another audience (e.g. the API server's own).
    let mut other = TokenUser::pod_bound(
        "ambit-system",
        "ambit-agent",
        "agent-a",
        "node-a",
        "kubernetes",
    );
    other.extra.remove(EXTRA_POD_UID);
    fake.add_token("api-audience", other);
    assert!(matches!(
        refusal(&authn, "api-audience").await,
        Refusal::NotAuthenticated(_)
    ));

    // An agent token with no bound object cannot name a node.
    let mut unbound = TokenUser::pod_bound("ambit-system", "ambit-agent", "x", "x", AUDIENCE);
    unbound.extra.clear();
    fake.add_token("unbound", unbound);
    assert_eq!(refusal(&authn, "unbound").await, Refusal::Unbound);

    // The token claims a node its pod is not on.
    bound_token(
        &fake,
        "lying",
        "ambit-system",
        "ambit-agent",
        "agent-a",
        "node-b",
    );
    assert!(matches!(
        refusal(&authn, "lying").await,
        Refusal::NodeMismatch(..)
    ));

    // The token's pod was deleted, or replaced by a pod of the same name.
    fake.delete(&fake_kube::PODS, "ambit-system", "agent-b")
        .unwrap();
    let gone = || async { refusal(&authn, "agent-b-token").await };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while k.pods.pod("ambit-system", "agent-b").is_some() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gone().await,
        Refusal::PodGone("ambit-system/agent-b".into())
    );
    fake.apply(&pod("ambit-system", "agent-b", "ambit-agent", "node-b"))
        .unwrap();
    assert!(matches!(gone().await, Refusal::PodReplaced(..)));
}

#[tokio::test]
async fn a_pod_not_yet_in_the_index_is_read_from_the_api() {
    let fake = cluster().await;
    let k = kube(&fake).await;
    // An index that never saw the new agent pod: the authenticator asks the API.
    let empty = Arc::new(PodIndex::default());
    let authn = TokenReviewAuthenticator::new(k.client.clone(), AUDIENCE, agent_sa(), empty);
    assert_eq!(
        authn
            .review(&BearerToken::new("agent-a-token"))
            .await
            .unwrap(),
        NodeName::new("node-a")
    );
    // An index that has not synced binds nothing: fail closed.
    assert!(!PodIndex::default().may_hold(&NodeName::new("node-a"), &identity("shop", "cart")));
}

/// A CA on loopback that authenticates with TokenReview against `fake`.
async fn ca(k: &Kube, dir: &std::path::Path) -> (String, String) {
    let keys = ambit_ca::keys::load_or_generate_root(dir, "cluster.local").unwrap();
    let lifetimes = Lifetimes {
        default: Duration::from_secs(3600),
        max: Duration::from_secs(86400),
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
    let service = CaService::new(signer, Arc::new(authenticator(k)), k.pods.clone());
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

fn client(address: &str, root: &str, token: &str) -> CaClient {
    let mut config = CaClientConfig::new(address, root);
    config.token = Some(BearerToken::new(token));
    CaClient::new(config).unwrap()
}

fn code(result: Result<Vec<String>, CaClientError>) -> Code {
    match result {
        Err(CaClientError::Status { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn ca_signs_only_for_workloads_on_the_callers_node() {
    let fake = cluster().await;
    let k = kube(&fake).await;
    let dir = tempfile::tempdir().unwrap();
    let (address, root) = ca(&k, dir.path()).await;
    let ttl = Duration::from_secs(600);
    let cart = identity("shop", "cart");
    let web = identity("shop", "web");

    let agent_a = client(&address, &root, "agent-a-token");
    let chain = agent_a
        .create_certificate(&csr_for(&cart), ttl, &cart)
        .await
        .unwrap();
    assert_eq!(uri_sans(&chain[0]), [cart.to_string()]);

    // node-a's agent may not get node-b's workload.
    assert_eq!(
        code(agent_a.create_certificate(&csr_for(&web), ttl, &web).await),
        Code::PermissionDenied
    );
    // A workload's own token, and a forged one, are not agents.
    for token in ["cart-token", "forged"] {
        let c = client(&address, &root, token);
        assert_eq!(
            code(c.create_certificate(&csr_for(&cart), ttl, &cart).await),
            Code::Unauthenticated
        );
    }

    // The workload moves to node-b: node-a loses it, node-b gains it.
    fake.delete(&fake_kube::PODS, "shop", "cart-1").unwrap();
    fake.apply(&pod("shop", "cart-2", "cart", "node-b"))
        .unwrap();
    let node_b = NodeName::new("node-b");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !k.pods.may_hold(&node_b, &cart) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        code(
            agent_a
                .create_certificate(&csr_for(&cart), ttl, &cart)
                .await
        ),
        Code::PermissionDenied
    );
    let agent_b = client(&address, &root, "agent-b-token");
    agent_b
        .create_certificate(&csr_for(&cart), ttl, &cart)
        .await
        .unwrap();
    assert_eq!(fake.counts().token_reviews, 6);
}
