//! The Kubernetes-shaped state a [`Mesh`](super::Mesh) hands its agents and
//! its CA: Namespaces, Pods and Services derived from the cluster, plus the
//! policy documents a test applies and removes while the mesh runs.
//!
//! The whole file is rendered from this model on every change and replaced by
//! rename, so an agent watching it never reads half an edit.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use super::MeshError;

/// The namespace label that enrols a namespace in the mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Istio's root namespace: its policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A pod as the state file describes it.
#[derive(Clone, Debug)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node_name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// A ClusterIP Service selecting pods by label.
#[derive(Clone, Debug)]
pub struct ServiceRecord {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub selector: BTreeMap<String, String>,
    /// `(port, targetPort)` pairs.
    pub ports: Vec<(u16, u16)>,
}

/// Identifies one applied document: `(kind, namespace, name)`.
pub type DocumentKey = (String, String, String);

/// Everything the state file holds.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Namespace name to whether it is enrolled (ambient).
    pub namespaces: BTreeMap<String, bool>,
    pub pods: Vec<PodRecord>,
    pub services: Vec<ServiceRecord>,
    pub documents: BTreeMap<DocumentKey, Value>,
}

impl State {
    /// Adds or replaces every document of `yaml` (one or more, `---`
    /// separated); returns their keys.
    pub fn apply(&mut self, yaml: &str) -> Result<Vec<DocumentKey>, MeshError> {
        let parsed = parse_documents(yaml)?;
        let keys = parsed.iter().map(|(k, _)| k.clone()).collect();
        self.documents.extend(parsed);
        Ok(keys)
    }

    /// Removes the documents called `name`, or `namespace/name`; fails when
    /// none matches.
    pub fn remove(&mut self, name: &str) -> Result<Vec<DocumentKey>, MeshError> {
        let (namespace, name) = match name.split_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, name),
        };
        let matching: Vec<DocumentKey> = self
            .documents
            .keys()
            .filter(|(_, ns, n)| n == name && namespace.is_none_or(|want| want == ns))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(MeshError::NoSuchDocument(name.to_owned()));
        }
        for key in &matching {
            self.documents.remove(key);
        }
        Ok(matching)
    }

    /// The state as multi-document YAML.
    pub fn render(&self) -> Result<String, MeshError> {
        let mut objects: Vec<Value> = Vec::new();
        for (name, enrolled) in &self.namespaces {
            let mut ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            if *enrolled {
                ns["metadata"]["labels"] = json!({ DATAPLANE_MODE_LABEL: "ambient" });
            }
            objects.push(ns);
        }
        for pod in &self.pods {
            objects.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
                "spec": {"nodeName": pod.node_name, "serviceAccountName": pod.service_account},
                "status": {"phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}]},
            }));
        }
        for svc in &self.services {
            let ports: Vec<Value> = svc
                .ports
                .iter()
                .map(|(port, target)| json!({"name": format!("tcp-{port}"), "port": port, "targetPort": target, "protocol": "TCP"}))
                .collect();
            objects.push(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": svc.name, "namespace": svc.namespace},
                "spec": {"clusterIP": svc.vip.to_string(), "selector": svc.selector, "ports": ports},
            }));
        }
        objects.extend(self.documents.values().cloned());

        let mut out = String::from("# Written by the ambit-tests mesh harness.\n");
        for object in &objects {
            let text = serde_yaml::to_string(object).map_err(|e| MeshError::Yaml(e.to_string()))?;
            out.push_str("---\n");
            out.push_str(&text);
        }
        Ok(out)
    }
}

/// Reads the documents of `yaml`, each keyed by kind, namespace and name.
fn parse_documents(yaml: &str) -> Result<Vec<(DocumentKey, Value)>, MeshError> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| MeshError::Yaml(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(&value, |v, k| v.get(*k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (Some(kind), Some(name)) = (field(&["kind"]), field(&["metadata", "name"])) else {
            return Err(MeshError::Yaml(format!(
                "every document needs kind and metadata.name: {value}"
            )));
        };
        let namespace = field(&["metadata", "namespace"]).unwrap_or_else(|| "default".to_owned());
        out.push(((kind, namespace, name), value));
    }
    if out.is_empty() {
        return Err(MeshError::Yaml("no document to apply".to_owned()));
    }
    Ok(out)
}

/// Replaces `path` with `contents` in one step: written beside it under a
/// name the agents ignore, flushed, then renamed over it.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), MeshError> {
    let io = |e| MeshError::io(path.to_path_buf(), e);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut s = State::default();
        s.namespaces.insert("default".into(), true);
        s.namespaces.insert("outside".into(), false);
        s.pods.push(PodRecord {
            name: "analyzer".into(),
            namespace: "default".into(),
            service_account: "analyzer".into(),
            node_name: "node1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            labels: BTreeMap::from([("app".into(), "analyzer".into())]),
        });
        s
    }

    #[test]
    fn renders_enrolment_and_pods() {
        let text = state().render().unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[0]["metadata"]["labels"][DATAPLANE_MODE_LABEL],
            "ambient"
        );
        assert!(docs[1]["metadata"].get("labels").is_none(), "{}", docs[1]);
        assert_eq!(docs[2]["status"]["podIP"], "10.244.1.2");
        assert_eq!(docs[2]["spec"]["nodeName"], "node1");
    }

    #[test]
    fn apply_replaces_and_remove_matches_names() {
        let mut s = state();
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\nspec: {}\n";
        s.apply(policy).unwrap();
        s.apply(&policy.replace("spec: {}", "spec: {action: DENY}"))
            .unwrap();
        assert_eq!(s.documents.len(), 1);
        s.apply("kind: PeerAuthentication\nmetadata: {name: a, namespace: istio-system}\n---\n")
            .unwrap();
        assert_eq!(s.remove("istio-system/a").unwrap().len(), 1);
        assert_eq!(s.remove("a").unwrap()[0].0, "AuthorizationPolicy");
        assert!(s.remove("a").is_err());
        assert!(s.apply("kind: X\n").is_err());
        assert!(s.apply("").is_err());
    }
}
