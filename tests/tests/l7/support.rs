//! The L7 tests' mesh: guestbook (node 0) and sleep (node 0) as clients,
//! analyzer (node 1) serving HTTP on 8080 behind a Service port named
//! `http-web`, on 9090 behind one named `tcp-raw`, and on 7070 that no
//! Service names; `keys` outside the mesh (node 1) for a JWKS server and as
//! a plaintext client. Plus curl from a pod.

// Fixture code outside #[test] fns: a failure here is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{Mesh, MeshPod, PodSpec, Process, bin_path};

pub const HTTP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 9090;
/// No Service names this port: HTTP is sniffed there.
pub const UNDECLARED_PORT: u16 = 7070;

pub const ANALYZER_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: analyzer, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: analyzer}
  ports:
  - {name: http-web, port: 80, targetPort: 8080}
  - {name: tcp-raw, port: 90, targetPort: 9090}
";

pub const STRICT_MESH: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

/// A running mesh and its HTTP servers (stopped first on drop).
pub struct L7Mesh {
    _servers: Vec<Process>,
    pub mesh: Mesh,
}

fn app(name: &str, node: usize) -> PodSpec {
    PodSpec::new(name)
        .service_account(name)
        .label("app", name)
        .node(node)
}

/// Polls `check` until `Ok`, for up to `timeout`; panics with the last error.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl L7Mesh {
    pub fn start() -> Self {
        let mesh = Mesh::builder()
            .nodes(2)
            .namespace("default", true)
            .namespace("outside", false)
            .pod(app("guestbook", 0))
            .pod(app("sleep", 0))
            .pod(app("analyzer", 1))
            .pod(app("keys", 1).namespace("outside"))
            .document(ANALYZER_SERVICE)
            // Fetched keys go stale after 2 s and are dropped after 4 s
            // while the key server is down.
            .agent_env("AMBIT_JWKS_REFRESH_SECS", "2")
            .build()
            .unwrap_or_else(|e| panic!("starting the mesh: {e}"));
        let mut servers = Vec::new();
        for port in [HTTP_PORT, TCP_PORT, UNDECLARED_PORT] {
            let pod = mesh.pod("analyzer");
            servers.push(spawn_http(pod, port));
        }
        Self {
            _servers: servers,
            mesh,
        }
    }

    pub fn pod(&self, name: &str) -> &MeshPod {
        self.mesh.pod(name)
    }

    pub fn analyzer(&self, port: u16) -> SocketAddr {
        self.pod("analyzer").addr(port)
    }
}

/// `ambit-testpod http` on `port` in `pod`, once it answers.
pub fn spawn_http(pod: &MeshPod, port: u16) -> Process {
    let mut cmd = Command::new(bin_path("ambit-testpod").unwrap());
    cmd.args(["http", "--listen", &pod.addr(port).to_string()]);
    let process = pod.netns().spawn(&cmd).unwrap();
    let addr = pod.addr(port);
    eventually(Duration::from_secs(10), || {
        match pod.netns().connect(addr).unwrap() {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("http server at {addr}: {e}")),
        }
    });
    process
}

/// What curl got: the status (0 when no response) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub status: u16,
    pub body: String,
}

/// Runs curl in `pod` with `args`, appending the status code on its own
/// line; curl's own failures (reset, timeout) come back as status 0.
pub fn curl(pod: &MeshPod, args: &[&str]) -> Got {
    let mut all = vec!["-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    match pod.netns().exec("curl", &all) {
        Ok(out) => {
            let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
            Got {
                status: code.trim().parse().unwrap_or(0),
                body: body.to_owned(),
            }
        }
        Err(e) => Got {
            status: 0,
            body: e.to_string(),
        },
    }
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}
