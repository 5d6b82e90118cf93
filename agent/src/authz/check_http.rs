//! The HTTP side of `authz check`: one request decided as the agent's L7
//! path decides it (same normalization, same token verification, same
//! engine), and, for a connection check, the rules that need HTTP named
//! with whether the destination port is an HTTP one.

use std::net::SocketAddr;

use ambit_ca::SpiffeId;
use ambit_policy::http::{HttpRequest, RequestAuth, normalize_path};
use ambit_policy::{Connection, Decision, Target};

use super::check::CheckError;
use crate::cli::CheckArgs;
use crate::l7::{Declared, declared, jwt};
use crate::state::Snapshot;

/// `rule 0 of default/analyzeraccess needs HTTP (methods); 10.244.1.10:8080
/// is not an HTTP port` (every such rule), or `None` when no selecting rule
/// needs HTTP.
pub(super) fn http_note(snapshot: &Snapshot, to: SocketAddr) -> Option<String> {
    let dst = snapshot.workload_by_ip(to.ip())?;
    let target = Target {
        namespace: &dst.namespace,
        labels: &dst.labels,
    };
    let rules = snapshot.policies().http_only_rules(&target);
    if rules.is_empty() {
        return None;
    }
    let named: Vec<String> = rules.iter().map(ToString::to_string).collect();
    let port = match declared(snapshot, to) {
        Declared::Http(by) => format!(
            "{to} is an HTTP port ({by}): requests are decided one by one (give --method/--path)"
        ),
        Declared::Opaque(by) => format!("{to} is not an HTTP port ({by} is declared otherwise)"),
        Declared::Unknown => format!(
            "{to} is not an HTTP port (no Service declares it; the agent sniffs the first bytes)"
        ),
    };
    Some(format!("{}; {port}", named.join("; ")))
}

fn header_pairs(args: &CheckArgs) -> Result<Vec<(String, String)>, CheckError> {
    args.headers
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .ok_or_else(|| CheckError::Request(format!("--header {kv:?}: expected K=V")))
        })
        .collect()
}

fn token(
    snapshot: &Snapshot,
    target: &Target<'_>,
    args: &CheckArgs,
) -> Result<Option<RequestAuth>, CheckError> {
    let Some(file) = &args.jwt else {
        return Ok(None);
    };
    let raw = std::fs::read_to_string(file)
        .map_err(|e| CheckError::Request(format!("--jwt {}: {e}", file.display())))?;
    let policy = snapshot.policies().request_authentication(target);
    if policy.is_empty() {
        return Err(CheckError::Request(
            "--jwt given but no RequestAuthentication selects the destination".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CheckError::Request(format!("runtime: {e}")))?;
    let verifier = jwt::Verifier::default();
    runtime
        .block_on(jwt::check_token(&verifier, &policy, &raw))
        .map(Some)
        .map_err(|why| CheckError::Request(format!("--jwt: Jwt verification fails: {why}")))
        .map(Option::flatten)
}

/// Decides the request the flags describe, from `--from` to `--to`.
pub(super) fn decide(snapshot: &Snapshot, args: &CheckArgs) -> Result<Decision, CheckError> {
    let dst = snapshot.workload_by_ip(args.to.ip()).ok_or_else(|| {
        CheckError::Request(format!("--to {}: no workload with that IP", args.to))
    })?;
    let target = Target {
        namespace: &dst.namespace,
        labels: &dst.labels,
    };
    let peer: Option<SpiffeId> = match snapshot.workload_by_ip(args.from) {
        Some(w) if w.enrolled && !args.plaintext => w.identity(&args.trust_domain).ok(),
        _ => None,
    };
    let path = normalize_path(args.path.as_deref().unwrap_or("/"))
        .map_err(|e| CheckError::Request(format!("--path: 400 Bad Request: {e}")))?;
    let host = args.host.clone().unwrap_or_else(|| args.to.to_string());
    let headers = header_pairs(args)?;
    let auth = token(snapshot, &target, args)?;
    let principal = peer.as_ref().map(SpiffeId::principal);
    Ok(snapshot.policies().evaluate_http(
        &target,
        &Connection {
            src_ip: args.from,
            src_principal: principal.as_deref(),
            src_namespace: peer.as_ref().map(SpiffeId::namespace),
            dst_ip: args.to.ip(),
            dst_port: args.to.port(),
            mtls: peer.is_some(),
        },
        &HttpRequest {
            method: args.method.as_deref().unwrap_or("GET"),
            path: &path,
            host: &host,
            headers: &headers,
            auth: auth.as_ref(),
        },
    ))
}
