use super::*;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop}
spec: {nodeName: node-a, serviceAccountName: cart}
---
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: web-1}
  spec: {nodeName: node-b}
- kind: Pod
  metadata: {name: done, namespace: shop}
  spec: {nodeName: node-b, serviceAccountName: batch}
  status: {phase: Succeeded}
- kind: Pod
  metadata: {name: pending, namespace: shop}
  spec: {serviceAccountName: pending}
---
kind: Service
metadata: {name: cart, namespace: shop}
"#;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

#[test]
fn binds_service_accounts_to_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    std::fs::write(&path, PODS).unwrap();
    let binding = StateFileBinding::load(&path).unwrap();
    let a = NodeName::new("node-a");
    let b = NodeName::new("node-b");
    assert!(binding.may_hold(&a, &id("shop", "cart")));
    assert!(!binding.may_hold(&b, &id("shop", "cart")));
    assert!(binding.may_hold(&b, &id("default", "default")));
    assert!(
        !binding.may_hold(&b, &id("shop", "batch")),
        "finished pods hold nothing"
    );
    assert!(!binding.may_hold(&a, &id("shop", "pending")));
    assert!(!binding.may_hold(&NodeName::new("node-c"), &id("shop", "cart")));
}

#[test]
fn reloads_on_change_and_keeps_last_good() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), PODS).unwrap();
    let binding = StateFileBinding::load(dir.path()).unwrap();
    let c = NodeName::new("node-c");
    assert!(!binding.may_hold(&c, &id("shop", "cart")));

    std::fs::write(
        dir.path().join("b.yaml"),
        "kind: Pod\nmetadata: {namespace: shop}\nspec: {nodeName: node-c, serviceAccountName: cart}\n",
    )
    .unwrap();
    binding.reload_if_changed();
    assert!(binding.may_hold(&c, &id("shop", "cart")));

    std::fs::write(dir.path().join("b.yaml"), "kind: Pod\n  bad: [yaml\n").unwrap();
    binding.reload_if_changed();
    assert!(
        binding.may_hold(&c, &id("shop", "cart")),
        "bad edit keeps last good state"
    );
}
