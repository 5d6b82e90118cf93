//! The file source against a real directory: first load, live reload through
//! inotify and through polling, bad edits, folders.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// Edits must be live within this long (issue 5).
const DEADLINE: Duration = Duration::from_secs(1);

fn state(ns_label: &str, pod_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n  labels: {{istio.io/dataplane-mode: {ns_label}}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: app}}\n\
         spec: {{nodeName: node-a}}\nstatus: {{phase: Running, podIP: {pod_ip}}}\n"
    )
}

/// Replaces `path` the way editors and `kubectl > tmp && mv` do.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(".incoming.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes an enrolled pod at 10.0.0.1 to `path` and starts following it.
async fn following(path: &Path) -> (StateStore, FileWatch) {
    std::fs::write(path, state("ambient", "10.0.0.1")).unwrap();
    let store = StateStore::new(Snapshot::default());
    let watch = FileSource::new(path, LoadOptions::default())
        .start(store.clone())
        .await
        .unwrap();
    (store, watch)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn next_generation(rx: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .expect("edit not applied within a second")
        .unwrap();
    rx.borrow_and_update().clone()
}

async fn wait_for_error(store: &StateStore) -> String {
    let start = Instant::now();
    loop {
        if let Some(e) = store.status().last_error {
            return e.message;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "bad edit not reported within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_ok(store: &StateStore) {
    let start = Instant::now();
    while !store.status().is_ok() {
        assert!(
            start.elapsed() < DEADLINE,
            "error not cleared within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn first_load_failure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(Snapshot::default());

    let missing = dir.path().join("none.yaml");
    let e = FileSource::new(&missing, LoadOptions::default())
        .start(store.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, LoadError::Read { .. }), "{e}");

    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let e = FileSource::new(&empty, LoadOptions::default())
        .start(store.clone())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: no Kubernetes objects found", empty.display())
    );
    assert!(!store.current().is_synced());
}

#[tokio::test]
async fn edits_apply_within_a_second_and_bad_edits_keep_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let (store, _watch) = following(&path).await;
    let mut rx = store.subscribe();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.generation(), 1);
    assert!(first.workload_by_ip(ip("10.0.0.1")).unwrap().enrolled);

    // Unlabelling the namespace takes the pod out of the mesh, live.
    replace_by_rename(&path, &state("none", "10.0.0.1"));
    let second = next_generation(&mut rx).await;
    assert_eq!(second.generation(), 2);
    assert!(!second.workload_by_ip(ip("10.0.0.1")).unwrap().enrolled);

    // A bad edit: reported with file and line, the last good state stays.
    std::fs::write(&path, state("ambient", "10.0.0.999")).unwrap();
    let message = wait_for_error(&store).await;
    assert_eq!(
        message,
        format!(
            "{}:7: Pod app/p: status.podIP: \"10.0.0.999\" is not an IP address",
            path.display()
        )
    );
    assert_eq!(store.current().generation(), 2);
    assert!(store.current().workload_by_ip(ip("10.0.0.1")).is_some());
    assert!(!rx.has_changed().unwrap());

    // Fixing it applies and clears the error (in-place write this time).
    std::fs::write(&path, state("ambient", "10.0.0.2")).unwrap();
    let third = next_generation(&mut rx).await;
    assert_eq!(third.generation(), 3);
    assert!(third.workload_by_ip(ip("10.0.0.1")).is_none());
    assert!(third.workload_by_ip(ip("10.0.0.2")).unwrap().enrolled);
    assert!(store.status().is_ok());
}

#[tokio::test]
async fn deleting_the_file_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let (store, _watch) = following(&path).await;
    std::fs::remove_file(&path).unwrap();
    let message = wait_for_error(&store).await;
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(store.current().workload_by_ip(ip("10.0.0.1")).is_some());

    // Restoring the same content clears the error without a new generation.
    std::fs::write(&path, state("ambient", "10.0.0.1")).unwrap();
    wait_for_ok(&store).await;
    assert_eq!(store.current().generation(), 1);
}

#[tokio::test]
async fn undoing_a_bad_edit_clears_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let good = state("ambient", "10.0.0.1");
    let (store, _watch) = following(&path).await;
    replace_by_rename(&path, "kind: Pod\nmetadata: {name: [\n");
    let message = wait_for_error(&store).await;
    assert!(message.contains("invalid YAML"), "{message}");
    replace_by_rename(&path, &good);
    wait_for_ok(&store).await;
    assert_eq!(store.current().generation(), 1);
}

#[tokio::test]
async fn folder_reloads_when_a_file_is_added_and_ignores_others() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, pod) = state("ambient", "10.0.0.1")
        .split_once("---\n")
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    std::fs::write(dir.path().join("00-namespaces.yaml"), &ns).unwrap();
    let store = StateStore::new(Snapshot::default());
    let mut rx = store.subscribe();
    let _watch = FileSource::new(dir.path(), LoadOptions::default())
        .start(store.clone())
        .await
        .unwrap();
    assert_eq!(rx.borrow_and_update().workloads().count(), 0);

    // Swap files and other extensions are not state.
    std::fs::write(dir.path().join(".10-pods.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("README.md"), "garbage: [").unwrap();
    replace_by_rename(&dir.path().join("10-pods.yaml"), &pod);
    let snapshot = next_generation(&mut rx).await;
    assert!(snapshot.workload_by_ip(ip("10.0.0.1")).is_some());
    assert!(store.status().is_ok());
}

#[tokio::test]
async fn polling_applies_edits_without_inotify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    std::fs::write(&path, state("ambient", "10.0.0.1")).unwrap();
    let store = StateStore::new(Snapshot::default());
    let mut rx = store.subscribe();
    let _watch = FileSource::new(&path, LoadOptions::default())
        .polling_only()
        .with_poll_interval(Duration::from_millis(200))
        .start(store.clone())
        .await
        .unwrap();
    rx.borrow_and_update();
    replace_by_rename(&path, &state("ambient", "10.0.0.5"));
    let snapshot = next_generation(&mut rx).await;
    assert!(snapshot.workload_by_ip(ip("10.0.0.5")).is_some());
}

#[tokio::test]
async fn dropping_the_watch_stops_following() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let (store, watch) = following(&path).await;
    drop(watch);
    replace_by_rename(&path, &state("ambient", "10.0.0.2"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.current().generation(), 1);
}
