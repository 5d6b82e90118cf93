//! `ambit-agent describe pod NS/NAME` and `describe service NAME.NS`: what
//! applies to a workload and why it was refused, in the spirit of `istioctl
//! x describe`.
//!
//! - `report`: the answer as data (node and capture, identity and certificate,
//!   mTLS mode and the PeerAuthentication setting it, the AuthorizationPolicies
//!   selecting the pod with each rule's L4 enforcement, recent refusals), built
//!   from a state snapshot and, inside a running agent, what only it knows.
//! - `render`: the human-readable text of a report; `--output json` prints
//!   the report itself.
//! - `fetch`: the CLI's I/O: the state file, or a running agent's admin
//!   endpoint (`GET /describe/pod/NS/NAME`, `/describe/service/NAME.NS`),
//!   which answers with the same report.
//! - `serve`: the running agent's side of that endpoint.

pub mod fetch;
pub mod render;
pub mod report;
pub mod serve;

pub use report::{AgentFacts, PodReport, Report, ServiceReport};

/// What to describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `namespace`, `name`.
    Pod { namespace: String, name: String },
    /// `name`, `namespace`.
    Service { name: String, namespace: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescribeError {
    #[error("pod {0:?}: expected NAMESPACE/NAME")]
    BadPodName(String),
    #[error("service {0:?}: expected NAME.NAMESPACE")]
    BadServiceName(String),
    #[error("describe {0:?}: expected pod/NAMESPACE/NAME or service/NAME.NAMESPACE")]
    BadPath(String),
    #[error("no pod {0} in the state")]
    NoSuchPod(String),
    #[error("no service {0} in the state")]
    NoSuchService(String),
}

impl Subject {
    /// `NAMESPACE/NAME`, as `kubectl` and the config dump name pods.
    pub fn pod(text: &str) -> Result<Self, DescribeError> {
        match text.split_once('/') {
            Some((ns, name)) if valid(ns) && valid(name) => Ok(Self::Pod {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(DescribeError::BadPodName(text.to_owned())),
        }
    }

    /// `NAME.NAMESPACE`, as `istioctl x describe service` names them (a
    /// trailing `.svc...` is accepted).
    pub fn service(text: &str) -> Result<Self, DescribeError> {
        let short = text.split_once(".svc").map_or(text, |(s, _)| s);
        match short.split_once('.') {
            Some((name, ns)) if valid(name) && valid(ns) => Ok(Self::Service {
                name: name.to_owned(),
                namespace: ns.to_owned(),
            }),
            _ => Err(DescribeError::BadServiceName(text.to_owned())),
        }
    }

    /// The admin endpoint's path below `/describe/`.
    pub fn path(&self) -> String {
        match self {
            Self::Pod { namespace, name } => format!("pod/{namespace}/{name}"),
            Self::Service { name, namespace } => format!("service/{name}.{namespace}"),
        }
    }

    /// Reads what [`Self::path`] wrote.
    pub fn from_path(path: &str) -> Result<Self, DescribeError> {
        match path.split_once('/') {
            Some(("pod", rest)) => Self::pod(rest),
            Some(("service", rest)) => Self::service(rest),
            _ => Err(DescribeError::BadPath(path.to_owned())),
        }
    }
}

/// A Kubernetes object name or namespace: lowercase letters, digits, `-`, `.`.
fn valid(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 253
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_and_round_trip_through_the_admin_path() {
        let pod = Subject::pod("default/analyzer").unwrap();
        assert_eq!(
            pod,
            Subject::Pod {
                namespace: "default".into(),
                name: "analyzer".into()
            }
        );
        assert_eq!(Subject::from_path(&pod.path()).unwrap(), pod);
        let svc = Subject::service("analyzer.default.svc.cluster.local").unwrap();
        assert_eq!(svc, Subject::service("analyzer.default").unwrap());
        assert_eq!(Subject::from_path(&svc.path()).unwrap(), svc);
        for bad in ["analyzer", "/analyzer", "default/", "Default/x", "a/b/c"] {
            assert!(Subject::pod(bad).is_err(), "{bad}");
        }
        for bad in ["analyzer", ".default", "analyzer."] {
            assert!(Subject::service(bad).is_err(), "{bad}");
        }
        assert!(Subject::from_path("node/x").is_err());
    }
}
