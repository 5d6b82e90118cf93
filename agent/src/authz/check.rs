//! `ambit-agent authz check`: the dry run users test a policy with before they
//! apply it. It reads the same state the agent reads and decides through the
//! same `Snapshot::authorize_from_state` the agent uses, or, given request
//! flags (`--method`, `--path`, `--host`, `--header`, `--jwt`), decides one
//! HTTP request as the agent's L7 path would. A connection decision names
//! the rules that need HTTP and whether the port is one.

use ambit_policy::Decision;
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::state::source::FileSource;
use crate::state::{LoadError, Snapshot};

use super::AuthzError;

/// A decision and what the user should know about how it was reached.
#[derive(Debug)]
pub struct CheckReport {
    pub decision: Decision,
    /// The reason printed: the engine's, with the rules that need HTTP named
    /// when the answer depends on them.
    pub reason: String,
    /// Things that make the answer differ from what the user may expect
    /// (invalid policies enforced fail-closed, a destination not enrolled).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot load the state: {0}")]
    State(#[from] LoadError),
    #[error("--to {0}: port 0 is not a destination")]
    PortZero(std::net::SocketAddr),
    #[error("--to {addr}: {addr_ip} is the VIP of Service {service}; policies apply to its pods: {endpoints}", addr_ip = addr.ip())]
    ServiceVip {
        addr: std::net::SocketAddr,
        service: String,
        endpoints: String,
    },
    #[error("--to {addr}: {source}")]
    Destination {
        addr: std::net::SocketAddr,
        source: AuthzError,
    },
    #[error("--from {addr}: {source}")]
    Source {
        addr: std::net::IpAddr,
        source: AuthzError,
    },
    #[error("request: {0}")]
    Request(String),
}

/// The printed form, fields in the documented order (a `serde_json::Value`
/// map would sort them).
#[derive(Serialize)]
struct Printed<'a> {
    decision: &'static str,
    policy: Option<&'a str>,
    rule: Option<usize>,
    reason: &'a str,
    mtls_mode: &'static str,
}

impl CheckReport {
    /// `{"decision":..,"policy":..,"rule":..,"reason":..,"mtls_mode":..}` on one line.
    pub fn to_json_line(&self) -> String {
        let d = &self.decision;
        let printed = Printed {
            decision: if d.allowed { "allow" } else { "deny" },
            policy: d.policy.as_deref(),
            rule: d.rule,
            reason: &self.reason,
            mtls_mode: d.mtls_mode.as_str(),
        };
        // Serializing plain strings and numbers cannot fail; fall back to the
        // engine's own (key-sorted) form rather than panic.
        serde_json::to_string(&printed).unwrap_or_else(|_| d.to_json().to_string())
    }
}

/// Loads the state named by `args` and decides the connection.
pub fn check(args: &CheckArgs) -> Result<CheckReport, CheckError> {
    let snapshot = FileSource::new(&args.state.state, args.state.load_options()).load()?;
    decide(&snapshot, args)
}

pub fn decide(snapshot: &Snapshot, args: &CheckArgs) -> Result<CheckReport, CheckError> {
    if args.to.port() == 0 {
        return Err(CheckError::PortZero(args.to));
    }
    if let Some(svc) = snapshot.service_by_vip(args.to.ip()) {
        let endpoints: Vec<String> = svc
            .ready_endpoints(args.to.port())
            .map(|e| e.to_string())
            .collect();
        return Err(CheckError::ServiceVip {
            addr: args.to,
            service: svc.qualified_name(),
            endpoints: if endpoints.is_empty() {
                format!("none ready on port {}", args.to.port())
            } else {
                endpoints.join(", ")
            },
        });
    }
    let mut decision = snapshot
        .authorize_from_state(args.from, args.to, args.plaintext, &args.trust_domain)
        .map_err(|source| match source {
            AuthzError::UnknownDestination(_) => CheckError::Destination {
                addr: args.to,
                source,
            },
            AuthzError::SourceIdentity { .. } => CheckError::Source {
                addr: args.from,
                source,
            },
        })?;

    let mut reason = decision.reason.as_str().to_owned();
    if args.is_request() {
        decision = super::check_http::decide(snapshot, args)?;
        reason = decision.reason.as_str().to_owned();
    } else if let Some(http) = super::check_http::http_note(snapshot, args.to) {
        reason = format!("{reason}; {http}");
    }
    let mut warnings: Vec<String> = snapshot
        .policy_errors()
        .iter()
        .map(|issue| format!("invalid policy, enforced fail-closed: {issue}"))
        .collect();
    if let Some(dst) = snapshot.workload_by_ip(args.to.ip())
        && !dst.enrolled
    {
        warnings.push(format!(
            "destination {} is not enrolled in the mesh: the agent does not enforce this decision",
            dst.qualified_name()
        ));
    }
    Ok(CheckReport {
        decision,
        reason,
        warnings,
    })
}
