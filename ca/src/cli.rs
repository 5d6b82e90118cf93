//! Command-line and environment configuration of the `ambit-ca` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Ambit's certificate authority: Istio's CA gRPC API on TLS.
#[derive(Clone, Debug, Parser)]
#[command(name = "ambit-ca", version, about)]
pub struct Cli {
    /// Directory holding the self-generated root (created with mode 0700 on first start).
    #[arg(long, env = "AMBIT_CA_STATE_DIR", default_value = "/var/lib/ambit-ca")]
    pub state_dir: PathBuf,

    /// Directory in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem). When set, the CA signs as that intermediate instead of its own root.
    #[arg(long, env = "AMBIT_CA_CACERTS_DIR")]
    pub cacerts_dir: Option<PathBuf>,

    /// Address the gRPC/TLS server listens on.
    #[arg(long, env = "AMBIT_CA_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,

    /// Trust domain of issued SPIFFE IDs.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Lifetime of issued certificates when the caller asks for none (e.g. 24h, 90m, 30s).
    #[arg(long, env = "AMBIT_CA_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// Longest lifetime the CA issues; longer requests are shortened to it.
    #[arg(long, env = "AMBIT_CA_MAX_CERT_TTL", default_value = "90d", value_parser = parse_duration)]
    pub max_cert_ttl: Duration,

    /// YAML mapping of node name to bootstrap token (`node-a: <token>`).
    #[arg(
        long,
        env = "AMBIT_CA_TOKENS_FILE",
        default_value = "/etc/ambit-ca/tokens.yaml"
    )]
    pub tokens_file: PathBuf,

    /// Kubernetes-shaped YAML file or folder the agents read; its Pods say which
    /// (namespace, service account) runs on which node.
    #[arg(long, env = "AMBIT_CA_WORKLOADS", default_value = "/etc/ambit/state")]
    pub workloads: PathBuf,

    /// How often the workloads file is checked for changes.
    #[arg(long, env = "AMBIT_CA_WORKLOADS_POLL", default_value = "2s", value_parser = parse_duration)]
    pub workloads_poll: Duration,

    /// Authenticate callers with the Kubernetes TokenReview API and bind
    /// identities to nodes from the cluster's Pods (in-cluster config, else
    /// kubeconfig), instead of `--tokens-file` and `--workloads`.
    #[arg(long, env = "AMBIT_CA_KUBE", default_value_t = false)]
    pub kube: bool,

    /// Audience the agents' projected service-account tokens are issued for.
    #[arg(long, env = "AMBIT_CA_KUBE_AUDIENCE", default_value = "ambit-ca")]
    pub kube_audience: String,

    /// The agents' service account, `<namespace>/<name>`: with `--kube`, the
    /// only callers accepted.
    #[arg(
        long,
        env = "AMBIT_CA_AGENT_SERVICE_ACCOUNT",
        default_value = "ambit-system/ambit-agent"
    )]
    pub agent_service_account: crate::authn::token_review::ServiceAccountRef,

    /// Names on the CA's serving certificate, comma-separated: DNS names, and IP
    /// addresses (which become IP SANs, for agents that dial the CA by address).
    /// Unused with `--serving-cert`.
    #[arg(
        long,
        env = "AMBIT_CA_SERVING_NAMES",
        value_delimiter = ',',
        default_value = "ambit-ca.istio-system.svc,istiod.istio-system.svc,ambit-ca,localhost"
    )]
    pub serving_names: Vec<String>,

    /// PEM certificate chain (leaf first) to serve with instead of one the CA
    /// issues itself; followed while the CA runs. Needs `--serving-key`.
    #[arg(long, env = "AMBIT_CA_SERVING_CERT", requires = "serving_key")]
    pub serving_cert: Option<PathBuf>,

    /// PEM private key of `--serving-cert`; followed with it.
    #[arg(long, env = "AMBIT_CA_SERVING_KEY", requires = "serving_cert")]
    pub serving_key: Option<PathBuf>,

    /// How often the tokens file and the serving certificate files are re-read
    /// besides inotify (which alone may miss changes on some filesystems).
    #[arg(long, env = "AMBIT_CA_FILES_POLL", default_value = "5s", value_parser = parse_duration)]
    pub files_poll: Duration,

    /// Address of the Prometheus `/metrics` endpoint (15014 is istiod's monitoring port).
    #[arg(long, env = "AMBIT_CA_METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,

    /// Deadline of one call, including reading its request.
    #[arg(long, env = "AMBIT_CA_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "AMBIT_LOG", default_value = "info")]
    pub log: String,
}

/// Parses `90s`, `15m`, `24h`, `90d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 24h or 90d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["ambit-ca"]).unwrap();
        assert_eq!(cli.listen, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(cli.trust_domain, "cluster.local");
        assert_eq!(cli.cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(cli.max_cert_ttl, Duration::from_secs(90 * 86_400));
        assert!(cli.cacerts_dir.is_none());
        assert_eq!(cli.serving_names.len(), 4);
        assert_eq!(cli.metrics_addr, "0.0.0.0:15014".parse().unwrap());
        assert_eq!(cli.files_poll, Duration::from_secs(5));
        assert!(cli.serving_cert.is_none());
    }

    #[test]
    fn serving_cert_and_key_come_together() {
        assert!(Cli::try_parse_from(["ambit-ca", "--serving-cert", "/c.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "ambit-ca",
            "--serving-cert",
            "/c.pem",
            "--serving-key",
            "/k.pem",
        ])
        .unwrap();
        assert_eq!(cli.serving_key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "ambit-ca",
            "--cert-ttl",
            "4s",
            "--serving-names",
            "a,b",
            "--cacerts-dir",
            "/x",
        ])
        .unwrap();
        assert_eq!(cli.cert_ttl, Duration::from_secs(4));
        assert_eq!(cli.serving_names, vec!["a", "b"]);
        assert_eq!(cli.cacerts_dir, Some(PathBuf::from("/x")));
    }
}
