//! Istio's guestbook scenario as a mesh, shared by the end-to-end tests and
//! the demo: the layout, the servers, and the policies the walk-through
//! applies.
//!
//! Three nodes: `guestbook` (node 0), `analyzer` (node 1) and `sleep`
//! (node 2) in the enrolled namespace `default`, each with its own service
//! account and an `app` label, plus `legacy` in the unenrolled namespace
//! `outside` on node 0. Analyzer serves echo on 8080 and a byte-counting sink
//! on 9000; guestbook serves echo on 8080.

use crate::traffic::{Server, ServerKind, TrafficError};

use super::{Mesh, MeshBuilder, MeshError, MeshPod, PodSpec};

pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 9000;

/// An AuthorizationPolicy selecting analyzer with no rules: nobody matches.
pub const ALLOW_NOTHING: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-access, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  action: ALLOW
";

/// The same policy letting in guestbook's principal only.
pub const ALLOW_GUESTBOOK: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-access, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/default/sa/guestbook\"]}
";

/// A PeerAuthentication `namespace/name` in `mode`, for the pods labelled
/// `app=<selector>` or the whole namespace (mesh-wide in `istio-system`).
pub fn peer_authentication(
    namespace: &str,
    name: &str,
    selector: Option<&str>,
    mode: &str,
) -> String {
    let selector = selector
        .map(|app| format!("  selector: {{matchLabels: {{app: {app}}}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n{selector}  mtls: {{mode: {mode}}}\n"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum GuestbookError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("starting a server in {pod}: {source}")]
    Server {
        pod: String,
        #[source]
        source: TrafficError,
    },
}

/// The guestbook mesh with its servers running.
#[derive(Debug)]
pub struct Guestbook {
    // Servers stop before the mesh is torn down.
    servers: Vec<Server>,
    pub mesh: Mesh,
}

/// The layout, for callers that want to add to it before building.
pub fn builder() -> MeshBuilder {
    Mesh::builder()
        .nodes(3)
        .namespace("default", true)
        .namespace("outside", false)
        .pod(app("guestbook", 0))
        .pod(app("analyzer", 1))
        .pod(app("sleep", 2))
        .pod(app("legacy", 0).namespace("outside"))
}

/// A pod whose name, service account and `app` label are all `name`.
fn app(name: &str, node: usize) -> PodSpec {
    PodSpec::new(name)
        .service_account(name)
        .label("app", name)
        .node(node)
}

impl Guestbook {
    pub fn start() -> Result<Self, GuestbookError> {
        Self::start_with(builder())
    }

    /// Starts the scenario on `builder`: [`builder`]'s layout plus what the
    /// caller added (Services, policies in force from the start).
    pub fn start_with(builder: MeshBuilder) -> Result<Self, GuestbookError> {
        let mesh = builder.build()?;
        let mut servers = Vec::new();
        for (pod, port, kind) in [
            ("analyzer", ECHO_PORT, ServerKind::Echo),
            ("analyzer", SINK_PORT, ServerKind::Sink),
            ("guestbook", ECHO_PORT, ServerKind::Echo),
        ] {
            let p = mesh.pod(pod);
            let server = Server::start(p.netns(), p.addr(port), kind).map_err(|source| {
                GuestbookError::Server {
                    pod: pod.to_owned(),
                    source,
                }
            })?;
            servers.push(server);
        }
        Ok(Self { servers, mesh })
    }

    pub fn pod(&self, name: &str) -> &MeshPod {
        self.mesh.pod(name)
    }

    pub fn analyzer_echo(&self) -> &Server {
        &self.servers[0]
    }

    pub fn analyzer_sink(&self) -> &Server {
        &self.servers[1]
    }

    pub fn guestbook_echo(&self) -> &Server {
        &self.servers[2]
    }
}
