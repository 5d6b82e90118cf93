//! The fake API server against kube-rs itself: if kube's typed client and
//! watcher accept its answers, the agent's watchers and the CA's TokenReview
//! client are tested against the protocol, not against a stub.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambit_tests::fake_kube::{self, FakeKube, TokenUser};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde_json::json;

fn client(fake: &FakeKube) -> Client {
    let config = Config::new(fake.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

fn pod(namespace: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some("default".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn next_event<S, K>(stream: &mut S) -> Event<K>
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("no watch error")
}

#[tokio::test]
async fn list_get_and_paging_match_the_api() {
    let fake = FakeKube::start().await.unwrap();
    for i in 0..7 {
        fake.apply(&pod("a", &format!("p{i}"), "node-1")).unwrap();
    }
    fake.apply(&pod("b", "other", "node-2")).unwrap();
    let pods: Api<Pod> = Api::all(client(&fake));

    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 8);
    assert_eq!(all.metadata.resource_version.as_deref(), Some("8"));

    let page = pods.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = pods
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 5);
    assert!(rest.metadata.continue_.is_none());

    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-2"))
        .await
        .unwrap();
    let names: Vec<_> = on_node
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["other"]);
    let labelled = pods
        .list(&ListParams::default().labels("app in (p1,p2)"))
        .await
        .unwrap();
    assert_eq!(labelled.items.len(), 2);

    let in_a: Api<Pod> = Api::namespaced(client(&fake), "a");
    let p3 = in_a.get("p3").await.unwrap();
    assert_eq!(p3.spec.unwrap().node_name.as_deref(), Some("node-1"));
    assert!(p3.metadata.uid.is_some());
    let missing = in_a.get("nope").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn watcher_sees_changes_and_resumes_without_relisting() {
    let fake = FakeKube::start().await.unwrap();
    fake.apply(&Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("a".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let pods: Api<Pod> = Api::all(client(&fake));
    let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut events).await, Event::Init));
    assert!(matches!(next_event(&mut events).await, Event::InitDone));

    fake.apply(&pod("a", "web", "node-1")).unwrap();
    let Event::Apply(added) = next_event(&mut events).await else {
        panic!("apply")
    };
    assert_eq!(added.metadata.name.as_deref(), Some("web"));

    fake.drop_watches();
    let mut changed = pod("a", "web", "node-1");
    changed.metadata.labels = Some([("version".to_owned(), "2".to_owned())].into());
    fake.apply(&changed).unwrap();
    let Event::Apply(modified) = next_event(&mut events).await else {
        panic!("apply")
    };
    assert_eq!(modified.metadata.labels.unwrap()["version"], "2");

    fake.delete(&fake_kube::PODS, "a", "web").unwrap();
    let Event::Delete(deleted) = next_event(&mut events).await else {
        panic!("delete")
    };
    assert_eq!(deleted.metadata.name.as_deref(), Some("web"));

    let counts = fake.counts();
    assert_eq!(
        counts.lists["pods"], 1,
        "a dropped watch resumes from its version"
    );
    assert_eq!(counts.watches["pods"], 2);
}

#[tokio::test]
async fn compacted_history_forces_a_relist() {
    let fake = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::all(client(&fake));
    let params = WatchParams::default();
    fake.apply(&pod("a", "one", "n")).unwrap();
    fake.apply(&pod("a", "two", "n")).unwrap();
    fake.compact();
    let mut stream = pods.watch(&params, "1").await.unwrap().boxed();
    let event = stream.try_next().await.unwrap().unwrap();
    let WatchEvent::Error(status) = event else {
        panic!("expected 410, got {event:?}")
    };
    assert_eq!(status.code, 410);

    // From the current version the watch is fine.
    let mut stream = pods.watch(&params, "2").await.unwrap().boxed();
    fake.apply(&pod("a", "three", "n")).unwrap();
    let event = stream.try_next().await.unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("three")));
}

#[tokio::test]
async fn bookmarks_carry_the_current_version() {
    let fake = FakeKube::with_bookmark_interval(Duration::from_millis(50))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::all(client(&fake));
    fake.apply(&pod("a", "one", "n")).unwrap();
    let mut stream = pods
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    fake.apply(&ns).unwrap();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Bookmark(bookmark) = event else {
        panic!("expected a bookmark, got {event:?}")
    };
    assert_eq!(
        bookmark.metadata.resource_version, "2",
        "other kinds' changes advance it"
    );
}

#[tokio::test]
async fn istio_kinds_are_served_at_both_versions() {
    let fake = FakeKube::start().await.unwrap();
    fake.apply(&json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "deny-all", "namespace": "a" },
        "spec": { "action": "DENY", "rules": [{}] },
    }))
    .unwrap();
    for version in ["v1", "v1beta1"] {
        let gvk = GroupVersionKind::gvk("security.istio.io", version, "AuthorizationPolicy");
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(client(&fake), &resource);
        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let object = &list.items[0];
        assert_eq!(
            object.types.as_ref().unwrap().api_version,
            format!("security.istio.io/{version}")
        );
        assert_eq!(object.data["spec"]["action"], "DENY");
    }
}

#[tokio::test]
async fn forbidden_kinds_answer_403() {
    let fake = FakeKube::start().await.unwrap();
    fake.forbid(&fake_kube::SERVICES);
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::all(client(&fake));
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden"));
}

#[tokio::test]
async fn token_review_authenticates_registered_tokens_for_their_audience() {
    let fake = FakeKube::start().await.unwrap();
    let user = TokenUser::pod_bound(
        "ambit-system",
        "ambit-agent",
        "agent-x",
        "node-1",
        "ambit-ca",
    );
    fake.add_token("good", user);
    let reviews: Api<TokenReview> = Api::all(client(&fake));
    let review = |token: &str, audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(vec![audience.into()]),
        },
        ..Default::default()
    };

    let ok = reviews
        .create(&PostParams::default(), &review("good", "ambit-ca"))
        .await
        .unwrap();
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:ambit-system:ambit-agent")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        ["agent-x"]
    );
    assert_eq!(status.audiences.unwrap(), ["ambit-ca"]);

    let wrong_audience = reviews
        .create(&PostParams::default(), &review("good", "other"))
        .await
        .unwrap();
    assert_eq!(wrong_audience.status.unwrap().authenticated, Some(false));
    let unknown = reviews
        .create(&PostParams::default(), &review("forged", "ambit-ca"))
        .await
        .unwrap();
    let status = unknown.status.unwrap();
    assert_eq!(status.authenticated, Some(false));
    assert!(status.error.is_some());
    assert_eq!(fake.counts().token_reviews, 3);
}
