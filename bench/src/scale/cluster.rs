//! The generated cluster the scale bench serves: namespaces, Deployments'
//! pods spread over the nodes, one Service and EndpointSlice per Deployment,
//! a few hundred AuthorizationPolicies, and the pod lifecycle the churn
//! replays. Objects look like what a real API server sends (managed fields,
//! owner references, container specs, status conditions), because the bytes
//! per agent are part of what is measured.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Replicas per Deployment: 150,000 pods make 10,000 Services, the
/// Kubernetes scalability guideline's limit.
pub const REPLICAS: usize = 15;
/// Policies, whatever the size: "a few hundred".
pub const POLICIES: usize = 300;
/// The namespace and service account whose principals the probe policy names.
pub const PROBE_NAMESPACE: &str = "probe";

/// The shape of the cluster for `pods` pods on `nodes` nodes.
#[derive(Debug, Clone)]
pub struct Shape {
    pub pods: usize,
    pub nodes: usize,
    pub namespaces: usize,
}

impl Shape {
    pub fn new(pods: usize, nodes: usize) -> Self {
        Self {
            pods,
            nodes: nodes.max(1),
            namespaces: (pods / 500).clamp(10, 300),
        }
    }

    pub fn deployments(&self) -> usize {
        self.pods.div_ceil(REPLICAS)
    }

    /// The namespace of Deployment `d`.
    pub fn namespace_of(&self, d: usize) -> String {
        format!("ns-{}", d % self.namespaces)
    }

    /// The name of node `n`; agent `a` plays node `a`.
    pub fn agent_node(n: usize) -> String {
        format!("node-{n}")
    }
}

/// One pod the generator placed: enough to delete it and to write its
/// Deployment's EndpointSlice.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub deployment: usize,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: usize,
}

/// Pod addresses from 10.0.0.0/8, never reused within a run.
pub fn pod_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff))
}

fn service_ip(d: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 | (d as u32 & 0x000f_ffff))
}

pub fn app(d: usize) -> String {
    format!("app-{d}")
}

/// 80% of namespaces are enrolled; the rest hold pods outside the mesh.
pub fn namespace(n: usize) -> Value {
    let mut labels = json!({ "kubernetes.io/metadata.name": format!("ns-{n}"), "team": format!("team-{}", n % 17) });
    if n % 5 != 4 {
        labels["istio.io/dataplane-mode"] = json!("ambient");
    }
    json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": format!("ns-{n}"), "labels": labels } })
}

/// A pod of Deployment `d` in one of its lifecycle phases: `Pending` (just
/// scheduled, no address), `Running`, or `Terminating`.
pub fn pod(shape: &Shape, pod: &PodRef, phase: Phase) -> Value {
    let d = pod.deployment;
    let node = Shape::agent_node(pod.node);
    let ns = shape.namespace_of(d);
    let app = app(d);
    let hash = format!("{:x}", 0x5f00_0000_u32 + d as u32);
    let tier = ["web", "api", "worker", "db"][d % 4];
    let mut object = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod.name, "namespace": ns, "generateName": format!("{app}-{hash}-"),
            "labels": { "app": app, "app.kubernetes.io/name": app, "version": "v1",
                        "pod-template-hash": hash, "tier": tier },
            "annotations": { "kubectl.kubernetes.io/restartedAt": "2026-11-01T00:00:00Z" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-{hash}"), "uid": format!("rs-{d}"), "controller": true,
                "blockOwnerDeletion": true }],
            "managedFields": [
                { "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                  "time": "2026-11-01T00:00:00Z", "fieldsType": "FieldsV1",
                  "fieldsV1": { "f:metadata": { "f:labels": { ".": {}, "f:app": {}, "f:version": {} },
                                "f:ownerReferences": {} }, "f:spec": { "f:containers": {} } } },
                { "manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                  "time": "2026-11-01T00:00:00Z", "fieldsType": "FieldsV1", "subresource": "status",
                  "fieldsV1": { "f:status": { "f:conditions": {}, "f:podIP": {}, "f:podIPs": {} } } },
            ],
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": app,
            "containers": [{
                "name": "app", "image": format!("registry.example/{app}:1.2.3"),
                "args": ["--port=8080", "--log-level=info"],
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" },
                          { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }],
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                "readinessProbe": { "httpGet": { "path": "/ready", "port": 8080 } },
                "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
            }],
            "volumes": [{ "name": "kube-api-access", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }],
            "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute" }],
        },
        "status": { "phase": "Pending", "hostIP": "192.0.2.1",
                    "conditions": [{ "type": "PodScheduled", "status": "True" }] },
    });
    if phase != Phase::Pending {
        object["status"] = json!({
            "phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{ "ip": pod.ip.to_string() }],
            "hostIP": "192.0.2.1",
            "conditions": [
                { "type": "Initialized", "status": "True" }, { "type": "Ready", "status": "True" },
                { "type": "ContainersReady", "status": "True" }, { "type": "PodScheduled", "status": "True" },
            ],
            "containerStatuses": [{ "name": "app", "ready": true, "restartCount": 0,
                "image": format!("registry.example/{app}:1.2.3"), "started": true,
                "state": { "running": { "startedAt": "2026-11-01T00:00:00Z" } } }],
        });
    }
    if phase == Phase::Terminating {
        object["metadata"]["deletionTimestamp"] = json!("2026-11-01T00:10:00Z");
        object["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    object
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Terminating,
}

pub fn service(shape: &Shape, d: usize) -> Value {
    let app = app(d);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": app, "namespace": shape.namespace_of(d), "labels": { "app": app } },
        "spec": {
            "type": "ClusterIP", "clusterIP": service_ip(d).to_string(),
            "clusterIPs": [service_ip(d).to_string()], "selector": { "app": app },
            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" },
                      { "name": "grpc-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP" }],
        },
    })
}

/// The Deployment's EndpointSlice, listing `pods` as ready endpoints.
pub fn endpoint_slice(shape: &Shape, d: usize, pods: &[&PodRef]) -> Value {
    let app = app(d);
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({ "addresses": [p.ip.to_string()], "conditions": { "ready": true, "serving": true, "terminating": false },
                    "targetRef": { "kind": "Pod", "name": p.name, "namespace": shape.namespace_of(d) } })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{app}-abcde"), "namespace": shape.namespace_of(d),
                      "labels": { "kubernetes.io/service-name": app,
                                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" },
                  { "name": "grpc-metrics", "port": 9090, "protocol": "TCP" }],
    })
}

/// Policy `i` of the few hundred: mostly namespace-wide and per-app ALLOW
/// rules naming other namespaces' principals, some DENY rules on ipBlocks.
/// `version` changes the principals, as an edit would.
pub fn policy(shape: &Shape, i: usize, version: usize) -> Value {
    let d = (i * 7919) % shape.deployments().max(1);
    let ns = shape.namespace_of(d);
    let peer = (d + 1 + version) % shape.deployments().max(1);
    let peer_ns = shape.namespace_of(peer);
    let spec = if i % 10 == 9 {
        json!({ "action": "DENY", "selector": { "matchLabels": { "app": app(d) } },
                "rules": [{ "from": [{ "source": { "ipBlocks": [format!("192.168.{}.0/24", version % 256)] } }] }] })
    } else if i.is_multiple_of(3) {
        json!({ "action": "ALLOW",
                "rules": [{ "from": [{ "source": { "namespaces": [ns, peer_ns] } }] }] })
    } else {
        json!({ "action": "ALLOW", "selector": { "matchLabels": { "app": app(d) } },
                "rules": [{ "from": [{ "source": { "principals": [
                              format!("cluster.local/ns/{peer_ns}/sa/{}", app(peer)),
                              format!("cluster.local/ns/{ns}/sa/{}", app(d)) ] } }],
                            "to": [{ "operation": { "ports": ["8080", "9090"] } }] }] })
    };
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": format!("policy-{i}"), "namespace": ns },
        "spec": spec,
    })
}

/// The probe: a DENY on the probe target's app for one principal that
/// changes with `k`, so the agent's decision for `probe_principal(k)` flips
/// exactly when the change reaches its snapshot.
pub fn probe_policy(shape: &Shape, target_deployment: usize, k: u64) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": "probe", "namespace": shape.namespace_of(target_deployment) },
        "spec": { "action": "DENY", "selector": { "matchLabels": { "app": app(target_deployment) } },
                  "rules": [{ "from": [{ "source": { "principals": [
                      format!("cluster.local/ns/{PROBE_NAMESPACE}/sa/{}", probe_account(k)) ] } }] }] },
    })
}

pub fn probe_account(k: u64) -> String {
    format!("probe-{k}")
}

/// One change to the API server's objects.
#[derive(Debug)]
pub enum Change {
    Apply(Value),
    DeletePod { namespace: String, name: String },
}

/// The pods alive in the generated cluster, by Deployment, and what the
/// churn does to them.
#[derive(Debug)]
pub struct Population {
    pub shape: Shape,
    deployments: Vec<Vec<PodRef>>,
    next_pod: u32,
}

impl Population {
    /// `shape.pods` pods, pod `i` in Deployment `i / REPLICAS` on node
    /// `i % nodes`: pod 0 (Deployment 0, node 0) is the probe's target.
    pub fn new(shape: Shape) -> Self {
        let mut deployments = vec![Vec::with_capacity(REPLICAS); shape.deployments()];
        for i in 0..shape.pods {
            let d = i / REPLICAS;
            deployments[d].push(PodRef {
                deployment: d,
                name: pod_name(d, i as u32),
                ip: pod_ip(i as u32 + 1),
                node: i % shape.nodes,
            });
        }
        Self {
            next_pod: shape.pods as u32 + 1,
            shape,
            deployments,
        }
    }

    /// Every object of the initial cluster.
    pub fn objects(&self) -> impl Iterator<Item = Value> + '_ {
        let shape = &self.shape;
        let namespaces = (0..shape.namespaces).map(namespace);
        let pods = self
            .deployments
            .iter()
            .flatten()
            .map(|p| pod(shape, p, Phase::Running));
        let services = (0..self.deployments.len()).map(|d| service(shape, d));
        let slices = (0..self.deployments.len()).map(|d| self.slice(d));
        let policies = (0..POLICIES).map(|i| policy(shape, i, 0));
        namespaces
            .chain(pods)
            .chain(services)
            .chain(slices)
            .chain(policies)
    }

    fn slice(&self, d: usize) -> Value {
        let pods: Vec<&PodRef> = self.deployments[d].iter().collect();
        endpoint_slice(&self.shape, d, &pods)
    }

    /// The probe target: pod 0, on node 0 (agent 0's node).
    pub fn probe_target(&self) -> &PodRef {
        &self.deployments[0][0]
    }

    /// A rolling replacement of one pod, as the API server reports it: the
    /// old pod terminates and leaves its EndpointSlice, then is deleted; the
    /// new one is scheduled, starts, and joins the slice. Pod 0 (the probe's
    /// target) is never picked.
    pub fn replace(&mut self, pick: usize) -> Vec<Change> {
        let d = pick % self.deployments.len();
        let slot = pick / self.deployments.len() % REPLICAS;
        let Some(old) = self.deployments[d].get(slot).cloned() else {
            return Vec::new();
        };
        if d == 0 && slot == 0 {
            return Vec::new();
        }
        let n = self.next_pod;
        self.next_pod += 1;
        let new = PodRef {
            deployment: d,
            name: pod_name(d, n),
            ip: pod_ip(n),
            node: (n as usize * 31) % self.shape.nodes,
        };
        let mut changes = vec![Change::Apply(pod(&self.shape, &old, Phase::Terminating))];
        self.deployments[d].remove(slot);
        changes.push(Change::Apply(self.slice(d)));
        changes.push(Change::DeletePod {
            namespace: self.shape.namespace_of(d),
            name: old.name,
        });
        changes.push(Change::Apply(pod(&self.shape, &new, Phase::Pending)));
        changes.push(Change::Apply(pod(&self.shape, &new, Phase::Running)));
        self.deployments[d].push(new);
        changes.push(Change::Apply(self.slice(d)));
        changes
    }

    /// A label edit on a running pod (its `version`), which the API server
    /// sends to every Pod watcher.
    pub fn relabel(&self, pick: usize, version: usize) -> Vec<Change> {
        let d = pick % self.deployments.len();
        let pods = &self.deployments[d];
        let Some(p) = pods.get(pick / self.deployments.len() % pods.len().max(1)) else {
            return Vec::new();
        };
        let mut object = pod(&self.shape, p, Phase::Running);
        object["metadata"]["labels"]["version"] = Value::String(format!("v{version}"));
        vec![Change::Apply(object)]
    }
}

fn pod_name(d: usize, n: u32) -> String {
    format!("{}-{:x}-{n:05x}", app(d), 0x5f00_0000_u32 + d as u32)
}
