//! Deciding one connection against the policies of the snapshot in force.
//!
//! Policies select the *destination* workload, so the destination must be a
//! pod the state knows; anything else is an error the caller turns into a
//! refusal (fail closed). The source principal is only ever one the transport
//! proved: a verified peer certificate on the HBONE path, or, when the agent
//! itself holds both ends (same node, dry run), the source pod's own identity.

use std::net::{IpAddr, SocketAddr};

use ambit_ca::SpiffeId;
use ambit_policy::{Connection, Decision, Target};

use crate::state::Snapshot;

/// A connection arriving for a local workload, as the data path sees it.
#[derive(Clone, Copy, Debug)]
pub struct Inbound<'a> {
    /// The client's address (for HBONE, the one the tunnel carries).
    pub src: IpAddr,
    /// The peer identity from a verified mTLS handshake; `None` for plaintext.
    pub peer: Option<&'a SpiffeId>,
    /// The original destination: a workload IP and port.
    pub dst: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("no workload with IP {0} in the state")]
    UnknownDestination(IpAddr),
    #[error("source workload {workload} has no valid identity: {reason}")]
    SourceIdentity { workload: String, reason: String },
}

impl Snapshot {
    /// Decides `conn` against the policies that select its destination.
    pub fn authorize(&self, conn: &Inbound<'_>) -> Result<Decision, AuthzError> {
        let dst = self
            .workload_by_ip(conn.dst.ip())
            .ok_or(AuthzError::UnknownDestination(conn.dst.ip()))?;
        let principal = conn.peer.map(SpiffeId::principal);
        let target = Target {
            namespace: &dst.namespace,
            labels: &dst.labels,
        };
        let connection = Connection {
            src_ip: conn.src,
            src_principal: principal.as_deref(),
            src_namespace: conn.peer.map(SpiffeId::namespace),
            dst_ip: conn.dst.ip(),
            dst_port: conn.dst.port(),
            mtls: conn.peer.is_some(),
        };
        Ok(self.policies().evaluate(&target, &connection))
    }

    /// Decides a connection from `src` using the source pod's own identity:
    /// an enrolled source pod talks mTLS as its service account, unless
    /// `plaintext`; any other source has no identity. This is what the agent
    /// decides when it carries both ends, and what `authz check` prints.
    pub fn authorize_from_state(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        plaintext: bool,
        trust_domain: &str,
    ) -> Result<Decision, AuthzError> {
        let peer =
            match self.workload_by_ip(src) {
                Some(w) if w.enrolled && !plaintext => Some(w.identity(trust_domain).map_err(
                    |e| AuthzError::SourceIdentity {
                        workload: w.qualified_name(),
                        reason: e.to_string(),
                    },
                )?),
                _ => None,
            };
        self.authorize(&Inbound {
            src,
            peer: peer.as_ref(),
            dst,
        })
    }
}

#[cfg(test)]
mod tests;
