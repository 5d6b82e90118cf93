//! The real `ambit-agent run --kube` process against the fake API server,
//! both in one network namespace: an API the server does not serve keeps
//! the agent waiting, and while it waits its readiness, admin and metrics
//! ports answer and say why; once the API is served it syncs.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::fake_kube::{self, FakeKube};
use ambit_tests::mesh::http::{Response, get};
use ambit_tests::{Netns, bin_path, require_e2e};
use serde_json::{Value, json};

const READINESS: &str = "127.0.0.1:15021";
const ADMIN: &str = "127.0.0.1:15000";
const METRICS: &str = "127.0.0.1:15020";
const WAIT: Duration = Duration::from_secs(15);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Polls `GET path` until `accept` takes the response; panics with the last
/// one (and the agent's log) after [`WAIT`].
fn until(
    netns: &Netns,
    at: &str,
    path: &str,
    what: &str,
    accept: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = get(netns, addr(at), path);
        if let Ok(response) = &last
            && accept(response)
        {
            return response.clone();
        }
        assert!(Instant::now() < deadline, "{what}: last answer {last:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cluster(fake: &FakeKube) {
    fake.apply(&json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "apps", "labels": { "istio.io/dataplane-mode": "ambient" } },
    }))
    .unwrap();
    fake.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "server", "namespace": "apps" },
        "spec": { "nodeName": "node1", "serviceAccountName": "server" },
        "status": { "phase": "Running", "podIP": "10.0.1.5", "podIPs": [{ "ip": "10.0.1.5" }] },
    }))
    .unwrap();
}

/// A self-signed root for `--trust-bundle`; no CA answers in this test.
fn root_cert(dir: &std::path::Path) -> std::path::PathBuf {
    let (key, cert) = (dir.join("root-key.pem"), dir.join("root-cert.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/O=ambit-test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(status.status.success(), "openssl: {status:?}");
    cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_api_is_named_on_the_probe_and_config_dump_before_the_first_sync() {
    if !require_e2e() {
        return;
    }
    let netns = Netns::create(&format!("ambit-kp{}", std::process::id())).unwrap();
    netns.ip(["link", "set", "lo", "up"]).unwrap();
    // A Kubernetes 1.20 API server: no discovery.k8s.io/v1 EndpointSlices.
    let fake = FakeKube::on(netns.bind(addr("127.0.0.1:0")).unwrap().unwrap()).unwrap();
    cluster(&fake);
    fake.unserve(&fake_kube::ENDPOINT_SLICES);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "node0-token\n").unwrap();
    let mut agent = Command::new(bin_path("ambit-agent").unwrap());
    agent
        .args([
            "run",
            "--kube",
            "--node",
            "node0",
            "--trust-domain",
            "cluster.local",
        ])
        .args(["--ca-address", "127.0.0.1:15012"])
        .arg("--trust-bundle")
        .arg(root_cert(dir.path()))
        .arg("--token-file")
        .arg(&token)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args([
            "--readiness-addr",
            READINESS,
            "--admin-addr",
            ADMIN,
            "--metrics-addr",
            METRICS,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    let agent = netns.spawn(&agent).unwrap();

    // Waiting, and saying for what: the probe names the missing API.
    let probe = tokio::task::block_in_place(|| {
        until(
            &netns,
            READINESS,
            "/healthz/ready",
            "readiness names the API",
            |r| r.body.contains("discovery.k8s.io/v1 EndpointSlice"),
        )
    });
    assert_eq!(probe.status, 503, "{probe:?}\n{}", agent.log());

    // The admin port explains it too, before any sync.
    let dump = tokio::task::block_in_place(|| {
        until(&netns, ADMIN, "/config_dump", "config_dump served", |r| {
            r.status == 200
        })
    });
    let dump: Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(dump["state"]["synced"], json!(false), "{dump}");
    assert_eq!(dump["state"]["source"], json!("kubernetes"), "{dump}");
    let error = dump["state"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not serve discovery.k8s.io/v1 EndpointSlice"),
        "{dump}"
    );
    let waiting = dump["readiness"]["waiting_for"].to_string();
    assert!(waiting.contains("EndpointSlice"), "{dump}");
    // And a scrape gets an answer rather than a hanging connection.
    let scrape = tokio::task::block_in_place(|| get(&netns, addr(METRICS), "/metrics")).unwrap();
    assert_eq!(scrape.status, 200, "{scrape:?}");

    // The allocator runs as `.cargo/config.toml` configures it: with the
    // background thread that returns freed pages to the kernel.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "{threads:?}"
    );

    // The EndpointSlice watch cannot follow the API server: the state's
    // possible staleness is counted.
    tokio::task::block_in_place(|| {
        until(&netns, ADMIN, "/config_dump", "staleness counted", |r| {
            serde_json::from_str::<Value>(&r.body)
                .is_ok_and(|d| d["state"]["staleness_s"].as_u64() >= Some(1))
        });
    });

    // The cluster upgraded: the agent syncs, and the probe stops naming the API.
    fake.restore(&fake_kube::ENDPOINT_SLICES);
    tokio::task::block_in_place(|| {
        until(&netns, ADMIN, "/config_dump", "synced once served", |r| {
            serde_json::from_str::<Value>(&r.body).is_ok_and(|d| {
                d["state"]["synced"] == json!(true)
                    && d["state"]["last_error"].is_null()
                    && d["state"]["staleness_s"] == json!(0)
            })
        });
        until(
            &netns,
            READINESS,
            "/healthz/ready",
            "the API no longer named",
            |r| !r.body.contains("EndpointSlice"),
        );
    });
    drop(agent);
}
