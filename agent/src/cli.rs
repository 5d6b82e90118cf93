//! The agent's command line: `run`, `authz check`, `capture` and `describe`. Every flag
//! can also come from an `AMBIT_*` environment variable, which is how the
//! DaemonSet configures the agent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::capture::{BackendChoice, Mark};
use crate::state::LoadOptions;

#[derive(Debug, Parser)]
#[command(
    name = "ambit-agent",
    version,
    about = "Ambit's node agent: captures enrolled pods' TCP traffic, carries it in HBONE mTLS tunnels and enforces Istio L4 authorization."
)]
pub struct Cli {
    /// Log filter, in `tracing` directive syntax (e.g. `info,ambit_agent::state=debug`).
    #[arg(long, env = "AMBIT_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log line format on stderr.
    #[arg(
        long,
        env = "AMBIT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: capture, proxy, tunnel and authorize the traffic
    /// of this node's enrolled pods.
    Run(Box<RunArgs>),
    /// Authorization tools.
    #[command(subcommand)]
    Authz(AuthzCommand),
    /// Install, remove or inspect the traffic capture rules by hand.
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// What applies to a pod or a Service's pods and why they were refused:
    /// node and capture, identity and certificate, mTLS mode, authorization
    /// policies with each rule's L4 enforcement, recent refusals.
    #[command(subcommand)]
    Describe(DescribeCommand),
    /// Serve the state feed: watch the Kubernetes API once for the whole
    /// cluster and stream it, resolved and compact, to every agent started
    /// with `--state-feed` (a small Deployment; see README, Scale).
    StateServer(StateServerArgs),
}

/// `ambit-agent state-server`.
#[derive(Clone, Debug, Args)]
pub struct StateServerArgs {
    /// Address agents connect to.
    #[arg(
        long,
        env = "AMBIT_STATE_SERVER_LISTEN",
        default_value = "0.0.0.0:15016"
    )]
    pub listen: SocketAddr,

    /// PEM certificate chain (leaf first) to serve with: it must chain to
    /// the mesh's root (the agents' `--trust-bundle`) and name the agents'
    /// `--state-feed-server-name`. Followed while the server runs.
    #[arg(long, env = "AMBIT_STATE_SERVER_SERVING_CERT")]
    pub serving_cert: PathBuf,

    /// PEM private key of `--serving-cert`; followed with it.
    #[arg(long, env = "AMBIT_STATE_SERVER_SERVING_KEY")]
    pub serving_key: PathBuf,

    /// The CA's bootstrap tokens file (`<node> <token>` lines): agents are
    /// authenticated as the CA authenticates them locally. Without it, with
    /// the Kubernetes TokenReview API, as the CA's `--kube` does.
    #[arg(long, env = "AMBIT_STATE_SERVER_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Audience the agents' projected service-account tokens are issued for.
    #[arg(
        long,
        env = "AMBIT_STATE_SERVER_KUBE_AUDIENCE",
        default_value = "ambit-ca"
    )]
    pub kube_audience: String,

    /// The agents' service account, `<namespace>/<name>`: without
    /// `--tokens-file`, the only callers accepted.
    #[arg(
        long,
        env = "AMBIT_STATE_SERVER_AGENT_SERVICE_ACCOUNT",
        default_value = "ambit-system/ambit-agent"
    )]
    pub agent_service_account: ambit_ca::authn::token_review::ServiceAccountRef,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// Longest a change waits before it is sent, in milliseconds: changes
    /// within it go out as one batch.
    #[arg(long, env = "AMBIT_STATE_SERVER_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,

    /// Address of the Prometheus endpoint (`/metrics`): agents connected,
    /// bytes sent, refusals, revision, addresses fed, the server's staleness.
    #[arg(
        long,
        env = "AMBIT_STATE_SERVER_METRICS_ADDR",
        default_value = "0.0.0.0:15020"
    )]
    pub metrics_addr: SocketAddr,

    /// How often the tokens and serving certificate files are re-read
    /// besides inotify.
    #[arg(long, env = "AMBIT_STATE_SERVER_FILES_POLL", default_value = "5s", value_parser = ambit_ca::cli::parse_duration)]
    pub files_poll: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// Describe one pod, named `NAMESPACE/NAME`.
    Pod {
        #[arg(value_name = "NAMESPACE/NAME")]
        name: String,
        #[command(flatten)]
        flags: DescribeFlags,
    },
    /// Describe a Service, named `NAME.NAMESPACE`, and every pod behind it.
    Service {
        #[arg(value_name = "NAME.NAMESPACE")]
        name: String,
        #[command(flatten)]
        flags: DescribeFlags,
    },
}

/// Where `describe` reads from and how it prints.
#[derive(Clone, Debug, Args)]
pub struct DescribeFlags {
    #[command(flatten)]
    pub state: StateArgs,

    /// A running agent's admin address (its `--admin-addr`, e.g.
    /// 127.0.0.1:15000): it answers from its live state and adds the
    /// certificates it holds and the refusals it recorded. Unset (the
    /// default): describe from `--state` alone.
    #[arg(long, env = "AMBIT_DESCRIBE_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// How long to wait for the agent's answer (e.g. 5s).
    #[arg(long, env = "AMBIT_DESCRIBE_TIMEOUT", default_value = "5s", value_parser = ambit_ca::cli::parse_duration)]
    pub timeout: Duration,

    /// `text` for people, `json` for scripts.
    #[arg(long, env = "AMBIT_DESCRIBE_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Where the cluster state comes from and how to read it.
#[derive(Clone, Debug, Args)]
pub struct StateArgs {
    /// Kubernetes-shaped YAML or JSON state: a file, or a folder of *.yaml,
    /// *.yml and *.json files (Namespaces, Pods, Services, EndpointSlices,
    /// AuthorizationPolicies, PeerAuthentications; `kubectl get -o yaml`
    /// output works).
    #[arg(long, env = "AMBIT_STATE", default_value = "/etc/ambit/state")]
    pub state: PathBuf,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
}

impl StateArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            root_namespace: self.root_namespace.clone(),
        }
    }
}

/// Workload certificates and the agent's HTTP side doors.
#[derive(Clone, Debug, Args)]
pub struct MeshFlags {
    /// The CA's gRPC address (Istio's CA API over TLS): `host:port` or
    /// `https://host:port`.
    #[arg(
        long,
        env = "AMBIT_CA_ADDRESS",
        default_value = "ambit-ca.ambit-system.svc:15012"
    )]
    pub ca_address: String,

    /// DNS name the CA's serving certificate must carry.
    #[arg(long, env = "AMBIT_CA_SERVER_NAME", default_value = ambit_ca::DEFAULT_SERVING_NAME)]
    pub ca_server_name: String,

    /// PEM file of the mesh's root certificates: peers' certificates and the
    /// CA's serving certificate must chain to one of them.
    #[arg(
        long,
        env = "AMBIT_TRUST_BUNDLE",
        default_value = "/var/run/secrets/ambit/root-cert.pem"
    )]
    pub trust_bundle: PathBuf,

    /// File holding the token the agent presents to the CA (in Kubernetes its
    /// service-account token; locally the node's bootstrap token).
    #[arg(
        long,
        env = "AMBIT_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// Lifetime asked of the CA for workload certificates (e.g. 24h, 90m, 30s);
    /// they are renewed at about half of it.
    #[arg(long, env = "AMBIT_CERT_TTL", default_value = "24h", value_parser = ambit_ca::cli::parse_duration)]
    pub cert_ttl: Duration,

    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Address of the readiness probe (`/healthz/ready`).
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Address of the admin server (`/config_dump`, status page, reading
    /// `/logging`). Changing the log level and `/quitquitquit` are only
    /// served on the control socket in `--run-dir`.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// This node's name, as Pods' `spec.nodeName` give it; the agent serves
    /// the enrolled pods scheduled here.
    #[arg(long, env = "AMBIT_NODE", default_value_t = default_node_name())]
    pub node: String,

    #[command(flatten)]
    pub mesh: MeshFlags,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub load: LoadFlags,

    /// Watch the Kubernetes API for the state (in-cluster service account,
    /// else kubeconfig) instead of reading `--state`.
    #[arg(long, env = "AMBIT_KUBE", default_value_t = false)]
    pub kube: bool,

    /// With `--kube`: `host:port` of the state feed (`ambit-agent
    /// state-server`). Everything but this node's pods then comes from it,
    /// and the agent watches only this node's pods; empty: every kind is
    /// watched directly. Authenticated with `--token-file`, verified against
    /// `--trust-bundle`.
    #[arg(long, env = "AMBIT_STATE_FEED", default_value = "")]
    pub state_feed: String,

    /// DNS name the state feed's certificate must carry.
    #[arg(
        long,
        env = "AMBIT_STATE_FEED_SERVER_NAME",
        default_value = "ambit-state.ambit-system.svc"
    )]
    pub state_feed_server_name: String,

    /// How long the state feed may be unreachable (at start or later)
    /// before the agent watches the API server directly: between this and
    /// twice this, at random, so a cluster's agents do not all list at once.
    /// It switches back once the feed has sent a complete state again.
    #[arg(long, env = "AMBIT_STATE_FEED_FALLBACK_AFTER", default_value = "10s", value_parser = ambit_ca::cli::parse_duration)]
    pub state_feed_fallback_after: Duration,

    /// How long the state source may be unable to confirm the state (a
    /// Kubernetes watch that cannot reach the API server or is refused)
    /// before the agent reports not ready; it keeps enforcing the last
    /// state meanwhile.
    #[arg(long, env = "AMBIT_STATE_STALENESS_BOUND", default_value = "30s", value_parser = ambit_ca::cli::parse_duration)]
    pub state_staleness_bound: Duration,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    #[command(flatten)]
    pub capture: CaptureFlags,

    /// How long dialling a destination may take before the client is reset.
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// Threads running the data path. Two keeps the agent's share of a node
    /// bounded while one busy connection cannot stall the rest; on a node of
    /// two cores shared with its pods, one was no better in the mesh
    /// benchmark (README, Benchmarks).
    #[arg(long, env = "AMBIT_WORKER_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,

    /// Once the agent stops serving (handed over to a new agent, or
    /// SIGTERM), how long the connections it still carries get to finish;
    /// what is left then is reset. Long by default, so an upgrade cuts
    /// nothing: the Kubernetes grace period must match it.
    #[arg(long, env = "AMBIT_DRAIN_TIMEOUT_MS", default_value_t = 4 * 3600 * 1000)]
    pub drain_timeout_ms: u64,

    /// On a pod port no Service declares HTTP but HTTP rules apply to: how
    /// long the first bytes are awaited before the connection is taken for
    /// a server-first protocol and carried at L4.
    #[arg(long, env = "AMBIT_HTTP_SNIFF_TIMEOUT_MS", default_value_t = 100)]
    pub http_sniff_timeout_ms: u64,

    /// On the L7 path: once the first byte of an HTTP/1 request head has
    /// arrived, how long the rest may take before the client gets a 408 and
    /// the connection is closed (a client trickling a head byte by byte
    /// would otherwise hold it open forever). An idle keep-alive connection
    /// between requests is not limited.
    #[arg(long, env = "AMBIT_HTTP_HEAD_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_head_timeout_ms: u64,

    /// How long fetching a RequestAuthentication `jwksUri` may take.
    #[arg(long, env = "AMBIT_JWKS_TIMEOUT_MS", default_value_t = 5_000)]
    pub jwks_timeout_ms: u64,

    /// How often fetched JWKS are refreshed (failed fetches retry sooner).
    #[arg(long, env = "AMBIT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,

    /// PEM file of CA certificates trusted for `https://` jwksUri, besides
    /// the system's roots (which `SSL_CERT_FILE`/`SSL_CERT_DIR` override):
    /// for key servers behind a private CA.
    #[arg(long, env = "AMBIT_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<std::path::PathBuf>,

    /// Directory shared by the agents of this node (a hostPath in
    /// Kubernetes): a starting agent takes the listening sockets of the
    /// running one over `handover.sock` there. Also holds `control.sock`,
    /// the admin endpoints that change the agent (`/logging` changes,
    /// `/quitquitquit`), reachable only with access to the directory.
    #[arg(long, env = "AMBIT_RUN_DIR", default_value = "/var/run/ambit")]
    pub run_dir: PathBuf,

    /// On SIGTERM, keep serving this long for a successor to take over
    /// before closing the capture. In Kubernetes a surge pod's readiness is
    /// answered by the old agent (both share the node's port), so the old
    /// pod may be told to stop before its successor asked; 0 closes at once.
    #[arg(long, env = "AMBIT_SUCCESSOR_WAIT_MS", default_value_t = 0)]
    pub successor_wait_ms: u64,

    /// A new agent waits this long for the running one to hand over before
    /// it gives up and exits (the old one keeps serving).
    #[arg(long, env = "AMBIT_HANDOVER_TIMEOUT_MS", default_value_t = 30_000)]
    pub handover_timeout_ms: u64,
}

/// Bounds that keep the agent serving under hostile or heavy load: on
/// connections that have not authenticated yet, and on idle tunnels.
#[derive(Clone, Debug, Args)]
pub struct LoadFlags {
    /// A connection to the HBONE port (15008) must finish TLS and the
    /// HTTP/2 preface within this time (e.g. 5s).
    #[arg(long, env = "AMBIT_HBONE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = ambit_ca::cli::parse_duration)]
    pub hbone_handshake_timeout: Duration,

    /// Connections still in their handshake, all sources together, per
    /// listener (15008 until authenticated, 15006 until the pod answered);
    /// more are reset and counted in `ambit_connections_refused_total`.
    #[arg(long, env = "AMBIT_MAX_PENDING_HANDSHAKES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_handshakes: u32,

    /// Connections still in their handshake from one source address (an
    /// IPv6 /64), per listener; more are reset and counted.
    #[arg(long, env = "AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_handshakes_per_source: u32,

    /// The HBONE server closes a connection that carried no stream for this
    /// long (GOAWAY, then close); 0 keeps them.
    #[arg(long, env = "AMBIT_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = ambit_ca::cli::parse_duration)]
    pub hbone_idle_timeout: Duration,

    /// The HBONE client pool closes a connection that carried no stream for
    /// this long. Shorter than the server's, so the client normally closes first.
    #[arg(long, env = "AMBIT_HBONE_POOL_IDLE_TIMEOUT", default_value = "5m", value_parser = ambit_ca::cli::parse_duration)]
    pub hbone_pool_idle_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide one connection against the state's policies, without the
    /// agent: prints the decision as JSON and exits 0 (allow), 1 (deny) or
    /// 2 (bad input).
    Check(CheckArgs),
}

/// `--from` and `--to` describe one connection, so they have no default.
#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// Source IP: an enrolled pod talks mTLS as its service account; any
    /// other address is a client without identity.
    #[arg(long, env = "AMBIT_CHECK_FROM", value_name = "SRC_IP")]
    pub from: IpAddr,

    /// Destination pod IP and port (`[v6]:port` for IPv6).
    #[arg(long, env = "AMBIT_CHECK_TO", value_name = "DST_IP:PORT")]
    pub to: SocketAddr,

    /// Decide as if the source connected without mTLS, e.g. from outside
    /// the mesh: no principal, and STRICT refuses it.
    #[arg(long, env = "AMBIT_CHECK_PLAINTEXT", default_value_t = false)]
    pub plaintext: bool,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Decide an HTTP request with this method (any of the request flags
    /// makes the check one of a request, not of a connection).
    #[arg(long, env = "AMBIT_CHECK_METHOD")]
    pub method: Option<String>,

    /// The request's path (normalized as the agent does; default `/`).
    #[arg(long, env = "AMBIT_CHECK_PATH")]
    pub path: Option<String>,

    /// The request's Host (default: the destination address).
    #[arg(long, env = "AMBIT_CHECK_HOST")]
    pub host: Option<String>,

    /// A request header `name=value`; repeat for more.
    #[arg(
        long = "header",
        env = "AMBIT_CHECK_HEADERS",
        value_name = "K=V",
        num_args = 1
    )]
    pub headers: Vec<String>,

    /// A file holding a JWT the request carries (verified against the
    /// RequestAuthentication's inline `jwks`; `jwksUri` keys are fetched).
    #[arg(long, env = "AMBIT_CHECK_JWT", value_name = "FILE")]
    pub jwt: Option<PathBuf>,
}

impl CheckArgs {
    /// Whether the check is of an HTTP request.
    pub fn is_request(&self) -> bool {
        self.method.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || !self.headers.is_empty()
            || self.jwt.is_some()
    }
}

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Install the capture rules for this node's enrolled pods.
    Install(CaptureArgs),
    /// Remove every Ambit capture rule, leaving other rules untouched.
    Uninstall(CaptureArgs),
    /// Show the installed capture rules.
    Status(CaptureArgs),
}

/// `install` reads the state to know which pods to capture; `uninstall`
/// and `status` only need the capture flags.
#[derive(Clone, Debug, Args)]
pub struct CaptureArgs {
    /// This node's name: the enrolled pods scheduled here are captured.
    #[arg(long, env = "AMBIT_NODE", default_value_t = default_node_name())]
    pub node: String,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub capture: CaptureFlags,
}

/// How traffic is captured: listener ports, packet marks, policy routing
/// and the iptables backend. Shared by `run` and `capture ...`.
#[derive(Clone, Debug, Args)]
pub struct CaptureFlags {
    /// Port of the outbound listener, where connections leaving enrolled
    /// local pods are TPROXYed.
    #[arg(long, env = "AMBIT_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Port of the inbound plaintext listener, for connections from outside
    /// the mesh to enrolled local pods.
    #[arg(long, env = "AMBIT_INBOUND_PLAIN_PORT", default_value_t = 15006)]
    pub inbound_plain_port: u16,

    /// Port of the HBONE listener; connections to `<pod ip>:<this port>` of
    /// an enrolled local pod are TPROXYed to it.
    #[arg(long, env = "AMBIT_HBONE_PORT", default_value_t = 15008)]
    pub hbone_port: u16,

    /// Mark (`VALUE/MASK`) TPROXY puts on captured packets; a policy route
    /// delivers packets carrying it locally.
    #[arg(long, env = "AMBIT_TPROXY_MARK", default_value = "0x111/0xfff")]
    pub tproxy_mark: Mark,

    /// Mark (`VALUE/MASK`) on every socket the agent opens; the capture
    /// rules let such packets pass, so the agent never captures itself.
    #[arg(long, env = "AMBIT_SKIP_MARK", default_value = "0x539/0xfff")]
    pub skip_mark: Mark,

    /// Connmark (`VALUE/MASK`) set on every captured connection; a guard in
    /// the filter table resets such connections if they are ever about to
    /// be forwarded instead of reaching the agent (no agent serving).
    #[arg(long, env = "AMBIT_CAPTURE_CONNMARK", default_value = "0x111/0xfff")]
    pub capture_connmark: Mark,

    /// Routing table holding the local route for TPROXYed packets.
    #[arg(long, env = "AMBIT_ROUTE_TABLE", default_value_t = 133)]
    pub route_table: u32,

    /// Priority of the `ip rule` sending marked packets to that table.
    #[arg(long, env = "AMBIT_RULE_PRIORITY", default_value_t = 32000)]
    pub rule_priority: u32,

    /// iptables implementation: `nft`, `legacy`, or `auto` (the one already
    /// holding the node's rules; else the system default).
    #[arg(long, env = "AMBIT_IPTABLES_BACKEND", default_value = "auto")]
    pub iptables_backend: BackendChoice,

    /// Also capture IPv6 (ip6tables); IPv4 is always captured.
    #[arg(long, env = "AMBIT_IPV6", default_value_t = false)]
    pub ipv6: bool,
}

/// The kernel's host name: a Kubernetes node is named after it unless told
/// otherwise.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ambit-agent").chain(args.iter().copied()))
    }

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_has_defaults() {
        let Command::Run(run) = parse(&["run", "--node", "node-a"]).unwrap().command else {
            panic!("not run");
        };
        assert_eq!(run.node, "node-a");
        assert_eq!(run.state.state, PathBuf::from("/etc/ambit/state"));
        assert_eq!(run.state.root_namespace, "istio-system");
        assert_eq!(run.trust_domain, "cluster.local");
        assert_eq!(run.capture.outbound_port, 15001);
        assert_eq!(run.capture.inbound_plain_port, 15006);
        assert_eq!(run.capture.hbone_port, 15008);
        assert_eq!(run.capture.tproxy_mark, Mark::new(0x111, 0xfff));
        assert_eq!(run.capture.skip_mark, Mark::new(0x539, 0xfff));
        assert_eq!(run.capture.iptables_backend, BackendChoice::Auto);
        assert!(!run.capture.ipv6);
        let mesh = &run.mesh;
        assert_eq!(mesh.ca_address, "ambit-ca.ambit-system.svc:15012");
        assert_eq!(mesh.ca_server_name, ambit_ca::DEFAULT_SERVING_NAME);
        assert_eq!(mesh.cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(
            mesh.metrics_addr,
            "0.0.0.0:15020".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            mesh.readiness_addr,
            "0.0.0.0:15021".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            mesh.admin_addr,
            "127.0.0.1:15000".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn mesh_flags_parse() {
        let cli = parse(&[
            "run",
            "--ca-address",
            "10.0.0.9:15012",
            "--trust-bundle",
            "/tmp/root.pem",
            "--token-file",
            "/tmp/token",
            "--cert-ttl",
            "90m",
            "--admin-addr",
            "127.0.0.1:25000",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.mesh.ca_address, "10.0.0.9:15012");
        assert_eq!(run.mesh.trust_bundle, PathBuf::from("/tmp/root.pem"));
        assert_eq!(run.mesh.token_file, PathBuf::from("/tmp/token"));
        assert_eq!(run.mesh.cert_ttl, Duration::from_secs(90 * 60));
        assert_eq!(run.mesh.admin_addr.port(), 25000);
        assert_eq!(run.worker_threads, 2);
        assert!(parse(&["run", "--cert-ttl", "soon"]).is_err());
        assert!(parse(&["run", "--worker-threads", "0"]).is_err());
        let Command::Run(one) = parse(&["run", "--worker-threads", "1"]).unwrap().command else {
            panic!("not run");
        };
        assert_eq!(one.worker_threads, 1);
    }

    #[test]
    fn capture_flags_parse_and_reject_bad_values() {
        let cli = parse(&[
            "capture",
            "install",
            "--node",
            "n1",
            "--iptables-backend",
            "legacy",
            "--tproxy-mark",
            "0x20/0xf0",
            "--outbound-port",
            "25001",
        ])
        .unwrap();
        let Command::Capture(CaptureCommand::Install(args)) = cli.command else {
            panic!("not capture install");
        };
        assert_eq!(args.node, "n1");
        assert_eq!(
            args.capture.iptables_backend,
            BackendChoice::Fixed(crate::capture::Backend::Legacy)
        );
        assert_eq!(args.capture.tproxy_mark, Mark::new(0x20, 0xf0));
        assert_eq!(args.capture.outbound_port, 25001);
        for bad in [
            ["--iptables-backend", "iptables"],
            ["--tproxy-mark", "0x100/0xff"],
            ["--skip-mark", "zero"],
        ] {
            let mut argv = vec!["capture", "status"];
            argv.extend(bad);
            let e = parse(&argv).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{argv:?}"
            );
        }
    }

    #[test]
    fn describe_parses_its_source_and_output() {
        let cli = parse(&["describe", "pod", "default/analyzer"]).unwrap();
        let Command::Describe(DescribeCommand::Pod { name, flags }) = cli.command else {
            panic!("not describe pod");
        };
        assert_eq!(name, "default/analyzer");
        assert_eq!(flags.admin, None);
        assert_eq!(flags.output, OutputFormat::Text);
        assert_eq!(flags.timeout, Duration::from_secs(5));
        let cli = parse(&[
            "describe",
            "service",
            "analyzer.default",
            "--admin",
            "127.0.0.1:15000",
            "--output",
            "json",
        ])
        .unwrap();
        let Command::Describe(DescribeCommand::Service { flags, .. }) = cli.command else {
            panic!("not describe service");
        };
        assert_eq!(flags.admin, Some("127.0.0.1:15000".parse().unwrap()));
        assert_eq!(flags.output, OutputFormat::Json);
        assert!(parse(&["describe", "pod", "x", "--admin", "nowhere"]).is_err());
    }

    #[test]
    fn authz_check_parses_addresses() {
        let cli = parse(&[
            "authz",
            "check",
            "--state",
            "s.yaml",
            "--from",
            "10.0.0.1",
            "--to",
            "[fd00::2]:8080",
            "--plaintext",
            "--trust-domain",
            "example.org",
        ])
        .unwrap();
        let Command::Authz(AuthzCommand::Check(check)) = cli.command else {
            panic!("not authz check");
        };
        assert_eq!(check.from, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(check.to, "[fd00::2]:8080".parse::<SocketAddr>().unwrap());
        assert!(check.plaintext);
        assert_eq!(check.trust_domain, "example.org");
        assert_eq!(check.state.state, PathBuf::from("s.yaml"));
    }

    #[test]
    fn authz_check_rejects_bad_addresses() {
        for args in [
            ["--from", "10.0.0.1", "--to", "10.0.0.2"],
            ["--from", "pod-a", "--to", "10.0.0.2:80"],
            ["--from", "10.0.0.1", "--to", "10.0.0.2:99999"],
        ] {
            let mut argv = vec!["authz", "check"];
            argv.extend(args);
            let e = parse(&argv).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{argv:?}"
            );
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn state_server_defaults_and_the_agents_feed_flags() {
        let Command::StateServer(server) = parse(&[
            "state-server",
            "--serving-cert",
            "c.pem",
            "--serving-key",
            "k.pem",
        ])
        .unwrap()
        .command
        else {
            panic!("state-server");
        };
        assert_eq!(
            server.listen,
            "0.0.0.0:15016".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(server.batch_ms, 100);
        assert_eq!(
            server.metrics_addr,
            "0.0.0.0:15020".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(server.tokens_file, None);
        assert_eq!(server.root_namespace, "istio-system");
        assert!(
            parse(&["state-server"]).is_err(),
            "a serving certificate is required"
        );

        let Command::Run(run) = parse(&["run"]).unwrap().command else {
            panic!("run");
        };
        assert_eq!(run.state_feed, "", "direct watches by default");
        assert_eq!(run.state_feed_server_name, "ambit-state.ambit-system.svc");
        assert_eq!(run.state_feed_fallback_after, Duration::from_secs(10));
        let Command::Run(fed) = parse(&[
            "run",
            "--kube",
            "--state-feed",
            "ambit-state:15016",
            "--state-feed-fallback-after",
            "30s",
        ])
        .unwrap()
        .command
        else {
            panic!("run");
        };
        assert_eq!(fed.state_feed, "ambit-state:15016");
        assert_eq!(fed.state_feed_fallback_after, Duration::from_secs(30));
    }
}
