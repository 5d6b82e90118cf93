//! Parsing, validation, enrolment and lookups of the state, from YAML text.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::*;

fn load(files: &[(&str, &str)]) -> Result<Snapshot, LoadError> {
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    for (name, text) in files {
        builder.add_text(Path::new(name), text)?;
    }
    builder.build()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The shape `kubectl get ns,pods,svc,endpointslices -A -o yaml` prints.
const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    labels:
      istio.io/dataplane-mode: ambient
      kubernetes.io/metadata.name: shop
    name: shop
- apiVersion: v1
  kind: Namespace
  metadata:
    name: legacy
- apiVersion: v1
  kind: Pod
  metadata:
    labels: {app: web}
    name: web-0
    namespace: shop
    uid: 7d2a6c3e-0000-4000-8000-000000000001
  spec:
    containers:
    - name: web
      ports:
      - {containerPort: 8080, name: http, protocol: TCP}
    nodeName: node-a
    serviceAccountName: web
  status:
    phase: Running
    podIP: 10.1.0.10
    podIPs:
    - ip: 10.1.0.10
    - ip: fd00::10
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, labels: {app: web}}
  spec: {nodeName: node-b}
  status: {phase: Running, podIP: 10.1.0.11}
- apiVersion: v1
  kind: Pod
  metadata:
    name: batch
    namespace: shop
    labels: {istio.io/dataplane-mode: none}
  spec: {nodeName: node-a}
  status: {phase: Running, podIP: 10.1.0.12}
- apiVersion: v1
  kind: Pod
  metadata: {name: old, namespace: legacy}
  spec: {nodeName: node-a}
  status: {phase: Running, podIP: 10.1.0.13}
- apiVersion: v1
  kind: Pod
  metadata: {name: done, namespace: shop}
  spec: {nodeName: node-a}
  status: {phase: Succeeded, podIP: 10.1.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: pending, namespace: shop}
  spec: {}
  status: {phase: Pending}
- apiVersion: v1
  kind: Pod
  metadata: {name: kube-proxy-x, namespace: shop}
  spec: {nodeName: node-a, hostNetwork: true}
  status: {phase: Running, podIP: 172.18.0.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: agent-x, namespace: shop}
  spec: {nodeName: node-b, hostNetwork: true}
  status: {phase: Running, podIP: 172.18.0.2}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.0.20
    clusterIPs: [10.96.0.20]
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: http}
    - {name: admin, port: 9000, targetPort: 9001}
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    selector: {app: web}
    type: ClusterIP
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abcde
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  endpoints:
  - addresses: [10.1.0.10]
    conditions: {ready: true}
  - addresses: [10.1.0.11]
    conditions: {ready: false}
  - addresses: [10.1.0.99]
  ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: admin, port: 9001, protocol: TCP}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored, namespace: shop}
  data: {a: b}
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kubectl_list_is_read() {
    let s = load(&[("cluster.yaml", KUBECTL_LIST)]).unwrap();
    assert!(s.is_synced());

    let web = s.workload_by_ip(ip("10.1.0.10")).unwrap();
    assert_eq!(web.name, "web-0");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.uid, "7d2a6c3e-0000-4000-8000-000000000001");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.node, "node-a");
    assert_eq!(web.ips, vec![ip("10.1.0.10"), ip("fd00::10")]);
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert!(web.enrolled);
    // Dual stack: the same workload under both IPs.
    assert!(std::sync::Arc::ptr_eq(
        web,
        s.workload_by_ip(ip("fd00::10")).unwrap()
    ));

    let web1 = s.workload_by_ip(ip("10.1.0.11")).unwrap();
    assert_eq!(web1.service_account, "default");
    assert_eq!(web1.uid, "shop/web-1");

    // Skipped: not running, no IP, host network (whose shared IP is no conflict).
    assert!(
        s.workloads()
            .all(|w| !["done", "pending"].contains(&w.name.as_str()))
    );
    assert!(s.workload_by_ip(ip("172.18.0.2")).is_none());
    assert_eq!(s.workloads().count(), 4);
}

#[test]
fn enrolment_follows_namespace_and_pod_labels() {
    let s = load(&[("cluster.yaml", KUBECTL_LIST)]).unwrap();
    let enrolled = |addr: &str| s.workload_by_ip(ip(addr)).unwrap().enrolled;
    assert!(enrolled("10.1.0.10"));
    assert!(
        !enrolled("10.1.0.12"),
        "pod opted out with dataplane-mode=none"
    );
    assert!(!enrolled("10.1.0.13"), "namespace without the label");

    let local: Vec<_> = s.local_enrolled("node-a").map(|w| w.name.clone()).collect();
    assert_eq!(local, vec!["web-0"]);
    let remote: Vec<_> = s.local_enrolled("node-b").map(|w| w.name.clone()).collect();
    assert_eq!(remote, vec!["web-1"]);
    assert_eq!(s.local_enrolled("node-z").count(), 0);
}

#[test]
fn enrolment_table() {
    let labels = |mode: Option<&str>| -> BTreeMap<String, String> {
        mode.map(|m| (DATAPLANE_MODE_LABEL.to_owned(), m.to_owned()))
            .into_iter()
            .collect()
    };
    // (namespace label, pod label, enrolled)
    let cases = [
        (Some("ambient"), None, true),
        (Some("ambient"), Some("none"), false),
        (Some("ambient"), Some("ambient"), true),
        (None, None, false),
        (None, Some("ambient"), true),
        (Some("none"), Some("ambient"), true),
        (Some("sidecar"), None, false),
        (Some("Ambient"), None, false),
    ];
    for (ns, pod, want) in cases {
        assert_eq!(
            is_enrolled(&labels(ns), &labels(pod)),
            want,
            "{ns:?} {pod:?}"
        );
    }
}

#[test]
fn pods_with_a_sidecar_are_not_enrolled() {
    let text = "kind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
        kind: Pod\nmetadata:\n  name: p\n  namespace: a\n  annotations: {sidecar.istio.io/status: '{}'}\n\
        spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n";
    let s = load(&[("a.yaml", text)]).unwrap();
    assert!(!s.workload_by_ip(ip("10.0.0.1")).unwrap().enrolled);
    assert_eq!(s.local_enrolled("n").count(), 0);
}

/// Two slices of one Service with different port lists, each with an
/// unready endpoint between ready ones: a port's ready endpoints span the
/// groups that resolve it, and only those.
#[test]
fn service_ports_resolve_per_endpoint_group() {
    let ports = |http: Option<u16>| -> EndpointPorts {
        let mut listed = vec![(Some("metrics".to_string()), 9090)];
        listed.extend(http.map(|n| (Some("http".to_string()), n)));
        listed.into()
    };
    let svc = Service::new(
        "web".into(),
        "shop".into(),
        vec![ip("10.96.0.9")],
        vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                target: TargetPort::Name("http".into()),
                app_protocol: None,
            },
            ServicePort {
                name: Some("metrics".into()),
                port: 9090,
                target: TargetPort::Number(9090),
                app_protocol: None,
            },
        ],
        vec![
            EndpointGroup::new(
                [
                    (ip("10.1.0.1"), true),
                    (ip("10.1.0.2"), false),
                    (ip("10.1.0.3"), true),
                ],
                ports(Some(8080)),
            ),
            // This slice's pods do not name the http port.
            EndpointGroup::new(
                [(ip("10.1.1.1"), false), (ip("10.1.1.2"), true)],
                ports(None),
            ),
        ],
    );
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let http: Vec<SocketAddr> = svc.ready_endpoints(80).collect();
    assert_eq!(http, vec![addr("10.1.0.1:8080"), addr("10.1.0.3:8080")]);
    let metrics: Vec<SocketAddr> = svc.ready_endpoints(9090).collect();
    assert_eq!(
        metrics,
        vec![
            addr("10.1.0.1:9090"),
            addr("10.1.0.3:9090"),
            addr("10.1.1.2:9090")
        ]
    );

    // Round robin covers exactly the ready endpoints of the port.
    let mut picked: Vec<(IpAddr, u16)> = (0..6).map(|_| svc.pick(9090).unwrap()).collect();
    picked.sort();
    picked.dedup();
    let expected: Vec<(IpAddr, u16)> = metrics.iter().map(|a| (a.ip(), a.port())).collect();
    assert_eq!(picked, expected);
    assert_eq!(svc.pick(443), None);

    assert!(svc.serves_on(80, addr("10.1.0.3:8080")));
    assert!(!svc.serves_on(80, addr("10.1.0.2:8080")), "not ready");
    assert!(
        !svc.serves_on(80, addr("10.1.1.2:8080")),
        "its group has no http port"
    );
    assert!(svc.serves(addr("10.1.1.2:9090")));
    assert!(!svc.serves(addr("10.1.1.2:8080")));
    let unready: Vec<IpAddr> = svc
        .endpoints()
        .filter(|(_, ready)| !ready)
        .map(|(ip, _)| ip)
        .collect();
    assert_eq!(unready, vec![ip("10.1.0.2"), ip("10.1.1.1")]);
}

#[test]
fn service_resolves_named_target_port_through_ready_endpoints() {
    let s = load(&[("cluster.yaml", KUBECTL_LIST)]).unwrap();
    let svc = s.service_by_vip(ip("10.96.0.20")).unwrap();
    assert_eq!(svc.qualified_name(), "shop/web");
    assert_eq!(
        svc.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![80, 9000],
        "UDP ports are dropped"
    );
    // 10.1.0.11 is not ready; 10.1.0.99 has no ready condition, which counts as ready.
    let http: Vec<SocketAddr> = svc.ready_endpoints(80).collect();
    assert_eq!(
        http,
        vec![
            "10.1.0.10:8080".parse().unwrap(),
            "10.1.0.99:8080".parse().unwrap()
        ]
    );
    assert_eq!(
        svc.ready_endpoints(9000).next(),
        Some("10.1.0.10:9001".parse().unwrap())
    );
    assert_eq!(svc.ready_endpoints(53).next(), None);

    // Round robin over the two ready endpoints.
    let picks: Vec<SocketAddr> = (0..4)
        .map(|_| s.service_target(ip("10.96.0.20"), 80).unwrap().addr)
        .collect();
    assert_eq!(picks[0], picks[2]);
    assert_eq!(picks[1], picks[3]);
    assert_ne!(picks[0], picks[1]);

    let to_pod = (0..2)
        .map(|_| s.service_target(ip("10.96.0.20"), 80).unwrap())
        .find(|t| t.addr.ip() == ip("10.1.0.10"))
        .unwrap();
    assert_eq!(to_pod.workload.unwrap().name, "web-0");
    assert!(s.service_target(ip("10.96.0.20"), 81).is_none());
    assert!(s.service_target(ip("10.96.0.21"), 80).is_none());
}

#[test]
fn destination_service_comes_from_the_dialled_host_or_the_pods_endpoints() {
    let s = load(&[("cluster.yaml", KUBECTL_LIST)]).unwrap();
    let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
    let name = |svc: Option<&std::sync::Arc<Service>>| svc.map(|s| s.qualified_name());
    let web = Some("shop/web".to_owned());
    // Named by the client, in any cluster domain.
    assert_eq!(
        name(s.inbound_service(addr("10.1.0.10:8080"), Some("web.shop.svc.cluster.local"))),
        web
    );
    assert_eq!(
        name(s.inbound_service(addr("10.1.0.10:8080"), Some("web.shop.svc.corp.example"))),
        web
    );
    // Not named: the Service whose endpoints serve that pod port.
    assert_eq!(name(s.inbound_service(addr("10.1.0.10:9001"), None)), web);
    // A port no Service targets, a host that is not the pod's, a pod of no Service.
    assert_eq!(name(s.inbound_service(addr("10.1.0.10:7777"), None)), None);
    assert_eq!(
        name(s.inbound_service(addr("10.1.0.10:7777"), Some("other.shop.svc.cluster.local"))),
        None
    );
    assert_eq!(
        name(s.inbound_service(addr("10.1.0.13:8080"), Some("web.shop.svc.cluster.local"))),
        None
    );
    let svc = s.service_by_vip(ip("10.96.0.20")).unwrap();
    for not_it in [
        "web.shop.svc.",
        "web.shop",
        "web.shopx.svc.cluster.local",
        "xweb.shop.svc.c",
    ] {
        assert!(!svc.has_hostname(not_it), "{not_it}");
    }
}

const MULTI_DOC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: app, labels: {app: api}}
spec:
  nodeName: node-a
  containers:
  - name: api
    ports: [{name: grpc, containerPort: 7070}]
status: {phase: Running, podIP: 10.2.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: app}
spec:
  clusterIP: 10.96.1.1
  selector: {app: api}
  ports: [{name: grpc, port: 70, targetPort: grpc}, {port: 71, targetPort: "7171"}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: app}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;

#[test]
fn multi_document_without_slices_selects_pods() {
    let s = load(&[("app.yaml", MULTI_DOC)]).unwrap();
    let target = s.service_target(ip("10.96.1.1"), 70).unwrap();
    assert_eq!(target.addr, "10.2.0.1:7070".parse().unwrap());
    assert_eq!(target.workload.unwrap().name, "api-0");
    let target = s.service_target(ip("10.96.1.1"), 71).unwrap();
    assert_eq!(target.addr, "10.2.0.1:7171".parse().unwrap());
    assert_eq!(s.services().count(), 2);
}

#[test]
fn objects_from_several_files_combine() {
    let (ns, rest) = MULTI_DOC.split_once("---").unwrap();
    let s = load(&[("00-ns.yaml", ns), ("10-rest.yaml", rest)]).unwrap();
    assert_eq!(s.workloads().count(), 1);
}

#[test]
fn json_input_is_read() {
    let json = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
         "spec":{"nodeName":"n"},"status":{"phase":"Running","podIP":"10.3.0.1"}}]}"#;
    let s = load(&[("state.json", json)]).unwrap();
    assert_eq!(
        s.workload_by_ip(ip("10.3.0.1")).unwrap().namespace,
        "default"
    );
}

fn error_of(files: &[(&str, &str)]) -> String {
    load(files).unwrap_err().to_string()
}

#[test]
fn duplicate_ip_names_both_objects_with_file_and_line() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: a}\n\
        spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: two, namespace: a}\n\
        spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n";
    let e = error_of(&[("pods.yaml", text)]);
    assert_eq!(
        e,
        "pods.yaml:11: Pod a/two: IP 10.0.0.1 is already used by Pod a/one (pods.yaml:5)"
    );
}

#[test]
fn service_vip_colliding_with_pod_ip_is_rejected() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: a}\n\
        spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\n\
        spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n";
    let e = error_of(&[("x.yaml", text)]);
    assert!(e.starts_with("x.yaml:11: Service a/s: IP 10.0.0.1"), "{e}");
}

#[test]
fn pod_without_namespace_object_is_rejected() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: b}\n\
        spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n";
    assert_eq!(
        error_of(&[("s.yaml", text)]),
        "s.yaml:5: Pod b/p: namespace \"b\" has no Namespace object"
    );
}

#[test]
fn malformed_objects_say_which_field() {
    let cases = [
        (
            "kind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.300}\n",
            "f.yaml:1: Pod p: status.podIP: \"10.0.0.300\" is not an IP address",
        ),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n",
            "f.yaml:1: Service s: spec.ports[0].port: 70000 is not a port number (1-65535)",
        ),
        (
            "kind: Namespace\nmetadata: {name: n, labels: {v: 1}}\n",
            "f.yaml:1: Namespace n: metadata.labels.v: expected a string, found 1 (quote it in YAML)",
        ),
        (
            "kind: Pod\nmetadata: {}\n",
            "f.yaml:1: Pod: metadata.name: missing",
        ),
        ("metadata: {name: x}\n", "f.yaml:1: object: kind: missing"),
        (
            "kind: EndpointSlice\nmetadata: {name: e}\nendpoints: [{addresses: [bad]}]\n",
            "f.yaml:1: EndpointSlice e: endpoints[0].addresses[0]: \"bad\" is not an IP address",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(error_of(&[("f.yaml", text)]), want, "input:\n{text}");
    }
}

#[test]
fn running_pod_without_node_is_rejected() {
    let text = "kind: Namespace\nmetadata: {name: default}\n---\n\
        kind: Pod\nmetadata: {name: p}\nstatus: {phase: Running, podIP: 10.0.0.1}\n";
    assert_eq!(
        error_of(&[("f.yaml", text)]),
        "f.yaml:4: Pod default/p: spec.nodeName: missing on a running pod"
    );
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let e = error_of(&[("broken.yaml", "kind: Pod\nmetadata: {name: [\n")]);
    assert!(e.starts_with("broken.yaml:3: invalid YAML: "), "{e}");
}

#[test]
fn store_replaces_atomically_and_tracks_status() {
    let store = StateStore::new(Snapshot::default());
    assert!(!store.current().is_synced());
    assert_eq!(store.status().generation, 0);
    let mut rx = store.subscribe();

    let first = load(&[("a.yaml", MULTI_DOC)]).unwrap();
    assert_eq!(store.replace(first), 1);
    assert!(rx.has_changed().unwrap());
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen.generation(), 1);
    assert!(seen.workload_by_ip(ip("10.2.0.1")).is_some());

    store.report_failure("a.yaml:3: broken".to_owned());
    let status = store.status();
    assert_eq!(status.generation, 1);
    assert_eq!(status.last_error.unwrap().message, "a.yaml:3: broken");
    assert!(!rx.has_changed().unwrap(), "a failure publishes nothing");

    store.replace(load(&[("b.yaml", KUBECTL_LIST)]).unwrap());
    let status = store.status();
    assert!(status.is_ok());
    assert_eq!(status.generation, 2);
    // The reader holding the old snapshot still sees all of it.
    assert!(seen.workload_by_ip(ip("10.2.0.1")).is_some());
    assert!(seen.workload_by_ip(ip("10.1.0.10")).is_none());
    let now = store.current();
    assert!(now.workload_by_ip(ip("10.2.0.1")).is_none());
    assert!(now.workload_by_ip(ip("10.1.0.10")).is_some());
}

fn versioned(version: &str, subnet: u8) -> String {
    let mut text = String::from("kind: Namespace\nmetadata: {name: a}\n");
    for i in 1..=20 {
        text.push_str(&format!(
            "---\nkind: Pod\nmetadata: {{name: p{i}, namespace: a, labels: {{version: {version}}}}}\n\
             spec: {{nodeName: n}}\nstatus: {{podIP: 10.0.{subnet}.{i}}}\n"
        ));
    }
    text
}

#[test]
fn concurrent_readers_see_one_whole_snapshot_or_the_other() {
    let (v1, v2) = (versioned("v1", 1), versioned("v2", 2));
    let store = StateStore::new(load(&[("s.yaml", &v1)]).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = store.current();
                    let versions: std::collections::BTreeSet<&str> = s
                        .workloads()
                        .map(|w| w.labels.get("version").map_or("", String::as_str))
                        .collect();
                    assert_eq!(versions.len(), 1, "mixed snapshot: {versions:?}");
                    let subnet = if versions.contains("v1") { 1 } else { 2 };
                    for i in 1..=20 {
                        assert!(
                            s.workload_by_ip(ip(&format!("10.0.{subnet}.{i}")))
                                .is_some()
                        );
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..200 {
        let text = if round % 2 == 0 { &v2 } else { &v1 };
        store.replace(load(&[("s.yaml", text)]).unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(store.status().generation, 200);
}
