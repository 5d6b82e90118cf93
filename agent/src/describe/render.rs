//! The human-readable form of a describe [`Report`]: plain text, one fact a
//! line, indented by what it belongs to. Pure: a report in, a string out.

use std::fmt::Write as _;

use ambit_policy::describe::{AuthzView, Enforcement, MtlsView};

use super::report::{PodReport, Report, ServiceReport};
use crate::metrics::Denial;

/// The whole report as text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    match report {
        Report::Pod(pod) => pod_text(&mut out, pod),
        Report::Service(svc) => service_text(&mut out, svc),
    }
    out
}

fn service_text(out: &mut String, svc: &ServiceReport) {
    let vips: Vec<String> = svc.vips.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "Service: {}", svc.service);
    let _ = writeln!(out, "  VIPs: {}", list_or(&vips, "none (headless)"));
    for p in &svc.ports {
        let ready: Vec<String> = p.ready_endpoints.iter().map(ToString::to_string).collect();
        let name = p
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  Port {}{name} -> {}",
            p.port,
            list_or(&ready, "no ready endpoint")
        );
    }
    if svc.pods.is_empty() {
        let _ = writeln!(out, "  No pod of the state behind it.");
    }
    for pod in &svc.pods {
        out.push('\n');
        pod_text(out, pod);
    }
}

fn pod_text(out: &mut String, pod: &PodReport) {
    let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "Pod: {}", pod.pod);
    let here = match pod.capture.by_this_agent {
        Some(true) => " (this agent captures it)",
        Some(false) if pod.capture.enrolled => " (another node's agent captures it)",
        _ => "",
    };
    let _ = writeln!(out, "  Node: {}{here}", pod.node);
    let _ = writeln!(out, "  IPs: {}", list_or(&ips, "none"));
    let _ = writeln!(out, "  Service account: {}", pod.service_account);
    let enrolled = if pod.capture.enrolled { "yes" } else { "no" };
    let _ = writeln!(out, "  Enrolled: {enrolled} ({})", pod.capture.why);
    let _ = writeln!(
        out,
        "  Identity: {}",
        pod.identity.as_deref().unwrap_or("none (not in the mesh)")
    );
    let _ = writeln!(out, "  Certificate: {}", certificate_text(pod));
    let _ = writeln!(out, "  Services: {}", list_or(&pod.services, "none"));
    for p in &pod.ports {
        let by = p
            .declared_by
            .as_deref()
            .map(|by| format!(" ({by})"))
            .unwrap_or_default();
        let how = match p.protocol.as_str() {
            "http" => "HTTP, each request decided",
            "tcp" => "TCP, never sniffed",
            _ => "not declared, sniffed when HTTP rules select the pod",
        };
        let _ = writeln!(out, "  Port {}: {how}{by}", p.port);
    }
    if !pod.capture.enrolled {
        let _ = writeln!(
            out,
            "  Not enrolled: Ambit neither captures it nor enforces what follows."
        );
    }
    mtls_text(out, &pod.policies.mtls);
    authz_text(out, &pod.policies.authorization);
    refusals_text(out, pod);
}

fn certificate_text(pod: &PodReport) -> String {
    match (&pod.certificate, &pod.identity, &pod.answered_by.node) {
        (_, None, _) => "none".to_owned(),
        (Some(c), _, _) if c.expires_in_seconds <= 0 => format!(
            "EXPIRED {} ago (not after {} Unix)",
            duration(c.expires_in_seconds.unsigned_abs()),
            c.not_after_unix
        ),
        (Some(c), _, _) => format!(
            "expires in {} (not after {} Unix)",
            duration(c.expires_in_seconds.unsigned_abs()),
            c.not_after_unix
        ),
        (None, Some(_), Some(node)) if *node == pod.node => "none held by this agent".to_owned(),
        (None, Some(_), _) => format!(
            "held by node {}'s agent (describe through its --admin port)",
            pod.node
        ),
    }
}

fn mtls_text(out: &mut String, mtls: &MtlsView) {
    let _ = writeln!(
        out,
        "mTLS: {} ({})",
        mtls.mode,
        set_by(mtls.set_by.as_deref())
    );
    for p in &mtls.ports {
        let _ = writeln!(
            out,
            "  port {}: {} ({})",
            p.port,
            p.mode,
            set_by(p.set_by.as_deref())
        );
    }
}

fn set_by(policy: Option<&str>) -> String {
    policy.map_or_else(
        || "mesh default, no PeerAuthentication".to_owned(),
        |p| format!("PeerAuthentication {p}"),
    )
}

fn authz_text(out: &mut String, policies: &[AuthzView]) {
    if policies.is_empty() {
        let _ = writeln!(
            out,
            "AuthorizationPolicies: none select it (every connection allowed)"
        );
        return;
    }
    let _ = writeln!(out, "AuthorizationPolicies ({}):", policies.len());
    let allows: Vec<&AuthzView> = policies
        .iter()
        .filter(|p| p.action == "ALLOW" && p.status == "active")
        .collect();
    if !allows.is_empty() {
        let matchable = allows
            .iter()
            .flat_map(|p| &p.rules)
            .any(|r| r.enforcement == Enforcement::L4);
        let per_request = allows
            .iter()
            .flat_map(|p| &p.rules)
            .any(|r| r.enforcement == Enforcement::NeverMatchesAtL4);
        let _ = match (matchable, per_request) {
            (true, _) => writeln!(
                out,
                "  Only connections matching an ALLOW rule below get in."
            ),
            (false, true) => writeln!(
                out,
                "  Only HTTP requests matching an ALLOW rule below get in; every connection that is not HTTP is refused."
            ),
            (false, false) => writeln!(
                out,
                "  WARNING: no ALLOW rule below can match at L4: every connection is refused."
            ),
        };
    }
    for p in policies {
        let _ = writeln!(
            out,
            "  {} {} ({} scope, {})",
            p.action, p.policy, p.scope, p.status
        );
        if p.rules.is_empty() && p.action == "ALLOW" && p.status == "active" {
            let _ = writeln!(out, "    no rules: allows nothing");
        }
        for rule in &p.rules {
            let flag = match rule.enforcement {
                Enforcement::NeverMatchesAtL4 | Enforcement::L4PartOnly => "WARNING ",
                Enforcement::L4 | Enforcement::NotApplied => "",
            };
            let _ = writeln!(
                out,
                "    rule {}: {flag}{}",
                rule.index,
                rule.enforcement.as_str()
            );
            if rule.fields.l4.is_empty() && rule.fields.http_only.is_empty() {
                let _ = writeln!(out, "      matches every connection");
            }
            for f in &rule.fields.l4 {
                let _ = writeln!(out, "      {f}");
            }
            for f in &rule.fields.http_only {
                let _ = writeln!(out, "      {f}  (HTTP only)");
            }
        }
    }
}

fn refusals_text(out: &mut String, pod: &PodReport) {
    let Some(refusals) = &pod.refusals else {
        let _ = writeln!(
            out,
            "Recent refusals: unknown (ask a running agent with --admin)"
        );
        return;
    };
    if refusals.is_empty() {
        let node = pod.answered_by.node.as_deref().unwrap_or("?");
        let _ = writeln!(out, "Recent refusals: none recorded by node {node}'s agent");
        return;
    }
    let _ = writeln!(out, "Recent refusals (newest first):");
    let now_ms = pod.answered_by.at_unix.saturating_mul(1000);
    for d in refusals {
        let _ = writeln!(out, "  {}", refusal_line(d, now_ms));
    }
}

fn refusal_line(d: &Denial, now_ms: u64) -> String {
    let ago = duration(now_ms.saturating_sub(d.at_unix_ms) / 1000);
    let who = match (d.direction.as_str(), d.peer_workload.as_str()) {
        ("inbound", "unknown") => format!("from {} ({})", d.client, d.client_identity),
        ("inbound", peer) => format!("from {peer} at {} ({})", d.client, d.client_identity),
        (_, "unknown") => format!("to {}", d.destination),
        (_, peer) => format!("to {peer} at {}", d.destination),
    };
    let mut line = format!("{ago} ago, {} {who}: {}", d.direction, d.reason);
    if let Some(policy) = &d.policy {
        let _ = write!(line, " (policy {policy})");
    }
    if let Some(detail) = &d.detail {
        let _ = write!(line, " [{detail}]");
    }
    line
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: two units at most.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(duration(12), "12s");
        assert_eq!(duration(250), "4m10s");
        assert_eq!(duration(7500), "2h5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }
}
