//! The install manifests (`manifests/`): every file parses into its
//! Kubernetes type without losing a field, and the invariants an install
//! depends on hold: ports, probes, capabilities, least-privilege RBAC, the CA
//! address, token and trust bundle the agent is given, labels and selectors.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;

const NAMESPACE: &str = "ambit-system";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(file: &str) -> String {
    let path = manifests_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses `file` as `T` and checks that serialising `T` gives back every
/// field of the file: k8s-openapi ignores unknown fields, so without this a
/// misspelt or misplaced field would pass unnoticed and be dropped by the
/// API server too.
fn load<T: DeserializeOwned + serde::Serialize>(file: &str) -> T {
    let text = read(file);
    let typed: T = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let raw: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    missing_fields(&raw, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: fields not in the Kubernetes type: {lost:?}"
    );
    typed
}

fn missing_fields(
    raw: &serde_json::Value,
    back: &serde_json::Value,
    path: String,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (raw, back) {
        (Value::Object(r), Value::Object(b)) => {
            for (k, v) in r {
                match b.get(k) {
                    Some(bv) => missing_fields(v, bv, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(r), Value::Array(b)) if r.len() == b.len() => {
            for (i, (rv, bv)) in r.iter().zip(b).enumerate() {
                missing_fields(rv, bv, format!("{path}[{i}]"), out);
            }
        }
        (r, b) if r == b => {}
        (r, b) => out.push(format!("{path}: {r} became {b}")),
    }
}

fn kustomization() -> serde_yaml::Value {
    serde_yaml::from_str(&read("kustomization.yaml")).unwrap()
}

fn config() -> BTreeMap<String, String> {
    let cm: ConfigMap = load("config.yaml");
    assert_eq!(cm.metadata.name.as_deref(), Some("ambit-config"));
    cm.data.unwrap()
}

fn daemonset() -> DaemonSet {
    load("agent-daemonset.yaml")
}

fn deployment() -> Deployment {
    load("ca-deployment.yaml")
}

fn pod_spec_ds(ds: &DaemonSet) -> PodSpec {
    ds.spec.clone().unwrap().template.spec.unwrap()
}

fn pod_spec_deploy(d: &Deployment) -> PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

fn only_container(spec: &PodSpec) -> Container {
    assert_eq!(spec.containers.len(), 1);
    spec.containers[0].clone()
}

/// The value a container sees for `name`: a literal, or a key of ambit-config.
fn env_value(c: &Container, name: &str) -> String {
    let var: &EnvVar = c
        .env
        .as_ref()
        .and_then(|env| env.iter().find(|e| e.name == name))
        .unwrap_or_else(|| panic!("container {} has no {name}", c.name));
    if let Some(v) = &var.value {
        return v.clone();
    }
    let from = var.value_from.as_ref().unwrap();
    let key_ref = from
        .config_map_key_ref
        .as_ref()
        .unwrap_or_else(|| panic!("{name} comes from neither a literal nor a ConfigMap"));
    assert_eq!(key_ref.name, "ambit-config");
    config()
        .get(&key_ref.key)
        .unwrap_or_else(|| panic!("ambit-config has no key {}", key_ref.key))
        .clone()
}

/// The volume mounted at the directory holding `file`.
fn volume_for_file<'a>(
    spec: &'a PodSpec,
    c: &Container,
    file: &str,
) -> &'a k8s_openapi::api::core::v1::Volume {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(file).parent() == Some(Path::new(&m.mount_path)))
        .unwrap_or_else(|| panic!("no volume mounted for {file}"));
    assert_eq!(mount.read_only, Some(true), "{file} is mounted writable");
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap()
}

fn container_ports(c: &Container) -> BTreeSet<i32> {
    c.ports.iter().flatten().map(|p| p.container_port).collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let listed: BTreeSet<String> = kustomization()["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn every_manifest_parses_into_its_kind_in_the_ambit_namespace() {
    let listed = kustomization()["resources"].as_sequence().unwrap().clone();
    for file in listed {
        let file = file.as_str().unwrap();
        let head: serde_yaml::Value = serde_yaml::from_str(&read(file)).unwrap();
        let kind = head["kind"].as_str().unwrap();
        let namespace = match kind {
            "Namespace" => load::<Namespace>(file).metadata.namespace,
            "ConfigMap" => load::<ConfigMap>(file).metadata.namespace,
            "CustomResourceDefinition" => load::<CustomResourceDefinition>(file).metadata.namespace,
            "ServiceAccount" => load::<ServiceAccount>(file).metadata.namespace,
            "ClusterRole" => load::<ClusterRole>(file).metadata.namespace,
            "ClusterRoleBinding" => load::<ClusterRoleBinding>(file).metadata.namespace,
            "DaemonSet" => load::<DaemonSet>(file).metadata.namespace,
            "Deployment" => load::<Deployment>(file).metadata.namespace,
            "Service" => load::<Service>(file).metadata.namespace,
            other => panic!("{file}: unexpected kind {other}"),
        };
        let cluster_scoped = matches!(
            kind,
            "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
        );
        if cluster_scoped {
            assert_eq!(namespace, None, "{file}");
        } else {
            assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{file}");
        }
    }
    let ns: Namespace = load("namespace.yaml");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
}

#[test]
fn istio_crds_serve_v1_and_v1beta1() {
    for (file, kind, plural) in [
        (
            "crd-authorizationpolicies.yaml",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        (
            "crd-peerauthentications.yaml",
            "PeerAuthentication",
            "peerauthentications",
        ),
        (
            "crd-requestauthentications.yaml",
            "RequestAuthentication",
            "requestauthentications",
        ),
    ] {
        let crd: CustomResourceDefinition = load(file);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.security.istio.io").as_str())
        );
        assert_eq!(crd.spec.group, "security.istio.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.plural, plural);
        let served: BTreeSet<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(served, BTreeSet::from(["v1", "v1beta1"]), "{file}");
        assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1);
        for v in &crd.spec.versions {
            let schema = v
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            let spec = &schema.properties.as_ref().unwrap()["spec"];
            let props = spec.properties.as_ref().unwrap();
            assert!(props.contains_key("selector"), "{file} {}", v.name);
        }
    }
    let ap: CustomResourceDefinition = load("crd-authorizationpolicies.yaml");
    let schema = ap.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    let spec = &schema.properties.unwrap()["spec"];
    let action = &spec.properties.as_ref().unwrap()["action"];
    let actions: Vec<String> = action
        .enum_
        .iter()
        .flatten()
        .map(|j| j.0.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["ALLOW", "DENY", "AUDIT", "CUSTOM"]);
}

/// (api group, resource) -> verbs, with no wildcard anywhere.
fn rules(file: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let role: ClusterRole = load(file);
    let mut out = BTreeMap::new();
    for rule in role.rules.unwrap() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap() {
            for resource in rule.resources.clone().unwrap() {
                assert!(group != "*" && resource != "*" && !rule.verbs.contains(&"*".into()));
                let verbs = out
                    .entry((group.clone(), resource))
                    .or_insert_with(BTreeSet::new);
                verbs.extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

fn read_only() -> BTreeSet<String> {
    ["get", "list", "watch"].map(String::from).into()
}

/// Reading what the agent's Kubernetes source watches: the agent's rules,
/// and the state server's (which watches it for every agent).
fn reads_the_watched_kinds() -> BTreeMap<(String, String), BTreeSet<String>> {
    [
        ("", "namespaces"),
        ("", "pods"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("security.istio.io", "authorizationpolicies"),
        ("security.istio.io", "peerauthentications"),
        ("security.istio.io", "requestauthentications"),
    ]
    .into_iter()
    .map(|(g, r)| ((g.to_owned(), r.to_owned()), read_only()))
    .collect()
}

#[test]
fn agent_rbac_reads_its_kinds_and_nothing_else() {
    assert_eq!(rules("agent-clusterrole.yaml"), reads_the_watched_kinds());
    check_binding(
        "agent-clusterrolebinding.yaml",
        "ambit-agent",
        "agent-serviceaccount.yaml",
    );
}

#[test]
fn ca_rbac_creates_token_reviews_and_reads_pods() {
    let got = rules("ca-clusterrole.yaml");
    let want: BTreeMap<_, _> = [
        (
            (
                "authentication.k8s.io".to_owned(),
                "tokenreviews".to_owned(),
            ),
            BTreeSet::from(["create".to_owned()]),
        ),
        (("".to_owned(), "pods".to_owned()), read_only()),
    ]
    .into();
    assert_eq!(got, want);
    check_binding(
        "ca-clusterrolebinding.yaml",
        "ambit-ca",
        "ca-serviceaccount.yaml",
    );
}

fn check_binding(file: &str, role: &str, sa_file: &str) {
    let binding: ClusterRoleBinding = load(file);
    let sa: ServiceAccount = load(sa_file);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role);
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn agent_daemonset_runs_on_every_node_with_host_network_and_two_capabilities() {
    let ds = daemonset();
    let spec = pod_spec_ds(&ds);
    let c = only_container(&spec);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    // One toleration with no key and no effect tolerates every taint.
    let tolerations = spec.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none())
    );

    let sc = c.security_context.clone().unwrap();
    let caps = sc.capabilities.unwrap();
    let added: BTreeSet<String> = caps.add.unwrap().into_iter().collect();
    assert_eq!(
        added,
        BTreeSet::from(["NET_ADMIN".into(), "NET_RAW".into()])
    );
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    // Host networking makes container ports host ports, which would keep
    // the surge pod of a rolling update off the node.
    assert_eq!(container_ports(&c), BTreeSet::new());
    let ready = c.readiness_probe.unwrap().http_get.unwrap();
    assert_eq!(ready.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(ready.port, IntOrString::Int(15021));

    let meta = ds.spec.clone().unwrap().template.metadata.unwrap();
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15020");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    assert_eq!(spec.service_account_name.as_deref(), Some("ambit-agent"));
    assert_eq!(c.args.unwrap(), ["run", "--kube"]);
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "AMBIT_NODE")
        .unwrap();
    let field = node.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn agent_rolls_with_a_surge_pod_sharing_the_handover_directory() {
    let ds = daemonset();
    let strategy = ds.spec.clone().unwrap().update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let spec = pod_spec_ds(&ds);
    let c = only_container(&spec);
    let run_dir = env_value(&c, "AMBIT_RUN_DIR");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == run_dir)
        .unwrap_or_else(|| panic!("nothing mounted at {run_dir}"));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    // A hostPath: the old and the new pod of a node see the same sockets.
    assert!(volume.host_path.is_some(), "{volume:?}");
    let wait: i64 = env_value(&c, "AMBIT_SUCCESSOR_WAIT_MS").parse().unwrap();
    assert!(wait > 0);
}

#[test]
fn agent_drains_within_its_grace_period() {
    let ds = daemonset();
    let spec = pod_spec_ds(&ds);
    let grace_ms = spec.termination_grace_period_seconds.unwrap() * 1000;
    let drain_ms: i64 = env_value(&only_container(&spec), "AMBIT_DRAIN_TIMEOUT_MS")
        .parse()
        .unwrap();
    assert!(
        0 < drain_ms && drain_ms < grace_ms,
        "drain {drain_ms} ms, grace {grace_ms} ms"
    );
    // Long-lived connections outlive an upgrade: hours, not seconds.
    assert!(drain_ms >= 3600 * 1000, "drain {drain_ms} ms");
}

#[test]
fn agent_is_given_the_ca_address_token_and_trust_bundle() {
    let ds = daemonset();
    let spec = pod_spec_ds(&ds);
    let c = only_container(&spec);

    // The address names the CA Service, on the port it serves.
    let addr = env_value(&c, "AMBIT_CA_ADDRESS");
    let svc: Service = load("ca-service.yaml");
    let want = format!(
        "{}.{}.svc:15012",
        svc.metadata.name.as_ref().unwrap(),
        svc.metadata.namespace.as_ref().unwrap()
    );
    assert_eq!(addr, want);

    // The token is a projected service-account token for the audience the CA expects.
    let token_file = env_value(&c, "AMBIT_TOKEN_FILE");
    let volume = volume_for_file(&spec, &c, &token_file);
    let sources = volume.projected.clone().unwrap().sources.unwrap();
    assert_eq!(sources.len(), 1);
    let token = sources[0].service_account_token.clone().unwrap();
    assert!(token_file.ends_with(&format!("/{}", token.path)));
    let ca = only_container(&pod_spec_deploy(&deployment()));
    let ca_audience = env_value(&ca, "AMBIT_CA_KUBE_AUDIENCE");
    assert_eq!(token.audience.as_deref(), Some(ca_audience.as_str()));
    assert!(token.expiration_seconds.unwrap() <= 3600);

    // kustomize keeps the audience literal in step with ambit-config.
    let replacement = &kustomization()["replacements"][0];
    assert_eq!(replacement["source"]["name"], "ambit-config");
    assert_eq!(replacement["source"]["fieldPath"], "data.ca-audience");
    let target = &replacement["targets"][0];
    assert_eq!(target["select"]["kind"], "DaemonSet");
    assert_eq!(
        target["select"]["name"].as_str(),
        ds.metadata.name.as_deref()
    );
    let path = target["fieldPaths"][0].as_str().unwrap();
    assert_eq!(
        path,
        format!(
            "spec.template.spec.volumes.[name={}].projected.sources.0.serviceAccountToken.audience",
            volume.name
        )
    );

    // The trust bundle is a ConfigMap key mounted read-only.
    let bundle = env_value(&c, "AMBIT_TRUST_BUNDLE");
    let volume = volume_for_file(&spec, &c, &bundle);
    assert_eq!(
        volume.config_map.clone().unwrap().name,
        "ambit-trust-bundle"
    );
    assert!(bundle.ends_with("/root-cert.pem"));

    // The name the agent requires is on the CA's serving certificate.
    let server_name = env_value(&c, "AMBIT_CA_SERVER_NAME");
    let serving = env_value(&ca, "AMBIT_CA_SERVING_NAMES");
    assert!(
        serving.split(',').any(|n| n == server_name),
        "{server_name} not in {serving}"
    );
    assert!(addr.starts_with(&format!("{server_name}:")));

    // Both sides agree on the trust domain.
    assert_eq!(
        env_value(&c, "AMBIT_TRUST_DOMAIN"),
        env_value(&ca, "AMBIT_TRUST_DOMAIN")
    );
}

#[test]
fn ca_serves_15012_behind_its_service_unprivileged_with_metrics_on_15014() {
    let d = deployment();
    let spec = pod_spec_deploy(&d);
    let c = only_container(&spec);
    assert_eq!(container_ports(&c), BTreeSet::from([15012, 15014]));
    assert_eq!(env_value(&c, "AMBIT_CA_LISTEN"), "0.0.0.0:15012");
    // Metrics on istiod's monitoring port, announced for Prometheus.
    assert_eq!(env_value(&c, "AMBIT_CA_METRICS_ADDR"), "0.0.0.0:15014");
    let annotations = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("15014")
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("ambit-ca"));
    assert_ne!(spec.host_network, Some(true));
    assert_eq!(
        spec.security_context.clone().unwrap().run_as_non_root,
        Some(true)
    );
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(c.readiness_probe.clone().unwrap().tcp_socket.is_some());

    // The signing material comes from the `cacerts` Secret.
    let dir = env_value(&c, "AMBIT_CA_CACERTS_DIR");
    let volume = volume_for_file(&spec, &c, &format!("{dir}/ca-key.pem"));
    assert_eq!(
        volume.secret.clone().unwrap().secret_name.as_deref(),
        Some("cacerts")
    );
    assert_eq!(
        env_value(&c, "AMBIT_CA_AGENT_SERVICE_ACCOUNT"),
        format!("{NAMESPACE}/ambit-agent")
    );

    // The Service selects the CA's pods and forwards to the named port.
    let svc: Service = load("ca-service.yaml");
    let svc_spec = svc.spec.unwrap();
    let labels = d
        .spec
        .clone()
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    for (k, v) in svc_spec.selector.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "Service selector {k}");
    }
    let port = &svc_spec.ports.unwrap()[0];
    assert_eq!(port.port, 15012);
    let IntOrString::String(target) = port.target_port.clone().unwrap() else {
        panic!("target port by name, so a port renumbering cannot break it");
    };
    let named = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_ref() == Some(&target));
    assert_eq!(named.map(|p| p.container_port), Some(15012));
}

#[test]
fn workload_selectors_match_their_pod_templates() {
    let ds = daemonset().spec.unwrap();
    let d = deployment().spec.unwrap();
    for (selector, labels) in [
        (ds.selector, ds.template.metadata.unwrap().labels.unwrap()),
        (d.selector, d.template.metadata.unwrap().labels.unwrap()),
    ] {
        assert!(selector.match_expressions.is_none());
        let wanted = selector.match_labels.unwrap();
        assert!(!wanted.is_empty());
        for (k, v) in wanted {
            assert_eq!(labels.get(&k), Some(&v), "selector {k}");
        }
    }
}

/// Flags of other branches the DaemonSet already sets; each is accepted
/// until the agent's command line has it, then checked like the rest.
const AGENT_FLAGS_NOT_YET_MERGED: [&str; 5] = [
    "AMBIT_CA_ADDRESS",
    "AMBIT_CA_SERVER_NAME",
    "AMBIT_TRUST_BUNDLE",
    "AMBIT_TOKEN_FILE",
    "AMBIT_DRAIN_TIMEOUT_MS",
];

/// The `AMBIT_*` variables a clap command reads: its own (global ones
/// included) and, with `sub`, its subcommand's.
fn env_names(command: clap::Command, sub: Option<&str>) -> BTreeSet<String> {
    let mut commands = vec![command.clone()];
    if let Some(name) = sub {
        commands.push(command.find_subcommand(name).unwrap().clone());
    }
    commands
        .iter()
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn manifest_env(c: &Container) -> BTreeSet<String> {
    c.env.iter().flatten().map(|e| e.name.clone()).collect()
}

#[test]
fn every_variable_the_manifests_set_is_a_flag_of_the_binary() {
    use clap::CommandFactory;
    let ca_flags = env_names(ambit_ca::cli::Cli::command(), None);
    let ca = manifest_env(&only_container(&pod_spec_deploy(&deployment())));
    let unknown: Vec<_> = ca.difference(&ca_flags).collect();
    assert!(unknown.is_empty(), "the CA reads no {unknown:?}");

    let agent_flags = env_names(ambit_agent::cli::Cli::command(), Some("run"));
    let agent = manifest_env(&only_container(&pod_spec_ds(&daemonset())));
    let unknown: Vec<_> = agent
        .difference(&agent_flags)
        .filter(|name| !AGENT_FLAGS_NOT_YET_MERGED.contains(&name.as_str()))
        .collect();
    assert!(unknown.is_empty(), "`ambit-agent run` reads no {unknown:?}");
    // The run command is what the DaemonSet starts.
    assert!(agent_flags.contains("AMBIT_KUBE") && agent_flags.contains("AMBIT_NODE"));
}

/// `manifests/state-feed/`: the base plus the state server, with read-only
/// RBAC (and TokenReview), a container that reads only flags of
/// `state-server`, and agents pointed at its Service.
#[test]
fn state_feed_overlay_serves_the_feed_and_points_the_agents_at_it() {
    use clap::CommandFactory;
    let overlay: serde_yaml::Value =
        serde_yaml::from_str(&read("state-feed/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = overlay["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let patches: BTreeSet<String> = overlay["patches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(manifests_dir().join("state-feed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert!(listed.contains(".."), "the overlay builds on the base");
    let files: BTreeSet<String> = listed
        .iter()
        .chain(&patches)
        .filter(|f| *f != "..")
        .cloned()
        .collect();
    assert_eq!(files, on_disk);

    let mut want = reads_the_watched_kinds();
    want.insert(
        (
            "authentication.k8s.io".to_owned(),
            "tokenreviews".to_owned(),
        ),
        BTreeSet::from(["create".to_owned()]),
    );
    assert_eq!(rules("state-feed/state-clusterrole.yaml"), want);
    check_binding(
        "state-feed/state-clusterrolebinding.yaml",
        "ambit-state",
        "state-feed/state-serviceaccount.yaml",
    );

    let deployment: Deployment = load("state-feed/state-deployment.yaml");
    let spec = pod_spec_deploy(&deployment);
    assert_eq!(spec.service_account_name.as_deref(), Some("ambit-state"));
    let server = only_container(&spec);
    assert_eq!(server.args, Some(vec!["state-server".to_owned()]));
    let flags = env_names(ambit_agent::cli::Cli::command(), Some("state-server"));
    let unknown: Vec<_> = manifest_env(&server).difference(&flags).cloned().collect();
    assert!(
        unknown.is_empty(),
        "`ambit-agent state-server` reads no {unknown:?}"
    );
    for name in manifest_env(&server) {
        // A literal, or a key ambit-config has.
        env_value(&server, &name);
    }
    let mount = &server.volume_mounts.as_ref().unwrap()[0].mount_path;
    for file in [
        "AMBIT_STATE_SERVER_SERVING_CERT",
        "AMBIT_STATE_SERVER_SERVING_KEY",
    ] {
        assert!(
            env_value(&server, file).starts_with(mount.as_str()),
            "{file}"
        );
    }
    let labels = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let service: Service = load("state-feed/state-service.yaml");
    let service_spec = service.spec.unwrap();
    for (k, v) in service_spec.selector.unwrap() {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the Service selects the server's pods"
        );
    }
    let port = &service_spec.ports.unwrap()[0];
    let container_port = &server.ports.as_ref().unwrap()[0];
    let annotations = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    let metrics = env_value(&server, "AMBIT_STATE_SERVER_METRICS_ADDR");
    assert!(
        metrics.ends_with(&format!(":{}", annotations["prometheus.io/port"])),
        "Prometheus scrapes {metrics}"
    );
    assert_eq!(
        port.target_port,
        Some(IntOrString::String(container_port.name.clone().unwrap()))
    );
    // The port opens only once the cluster is listed: liveness must wait.
    let startup = server.startup_probe.as_ref().expect("a startup probe");
    let patience = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(patience >= 120, "{patience} s to list a large cluster");
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let listen = env_value(&server, "AMBIT_STATE_SERVER_LISTEN");
    assert!(listen.ends_with(&format!(":{}", container_port.container_port)));

    let patch: DaemonSet = load("state-feed/agent-fed.yaml");
    let agent = only_container(&pod_spec_ds(&patch));
    let agent_flags = env_names(ambit_agent::cli::Cli::command(), Some("run"));
    let unknown: Vec<_> = manifest_env(&agent)
        .difference(&agent_flags)
        .cloned()
        .collect();
    assert!(unknown.is_empty(), "`ambit-agent run` reads no {unknown:?}");
    let host = format!("{}.{NAMESPACE}.svc", service.metadata.name.unwrap());
    assert_eq!(
        env_value(&agent, "AMBIT_STATE_FEED"),
        format!("{host}:{}", port.port)
    );
    assert_eq!(env_value(&agent, "AMBIT_STATE_FEED_SERVER_NAME"), host);
    assert_eq!(patch.metadata.name, daemonset().metadata.name);
    assert_eq!(agent.name, only_container(&pod_spec_ds(&daemonset())).name);
}
