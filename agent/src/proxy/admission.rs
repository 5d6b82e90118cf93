//! Admission of plaintext (15006) connections to enrolled local pods:
//! PeerAuthentication and AuthorizationPolicy through `Snapshot::authorize`
//! with no peer identity. STRICT on the destination port refuses; PERMISSIVE
//! and DISABLE go on to authorization, where rules on principals or
//! namespaces cannot match a client without an identity.
//!
//! Every decided connection is counted (reporter `destination`, security
//! policy `none`), and an admitted one is registered with the
//! [`ConnectionTracker`] so a later STRICT or DENY closes it.
//!
//! It also bounds the connections that are not yet connected to their pod
//! (all sources, and per source): nothing about them is proven, and each
//! holds a socket and a dial.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Forwarded;
use super::inbound_plain::{Admission, Admitted, InboundPolicy, InboundRequest};
use crate::authz::Inbound;
use crate::authz::watch::{ConnectionTracker, Registration, TrackedConnection};
use crate::l7::{L7, Route, SessionConn};
use crate::limits::{
    self,
    pending::{Pending, PendingLimits, PendingPermit},
};
use crate::metrics::{self, ConnectionOpen, Metrics, Reporter, SecurityPolicy};

/// The 15006 admission policy.
#[derive(Debug)]
pub struct PlaintextAdmission {
    trust_domain: String,
    metrics: Arc<Metrics>,
    tracker: Arc<ConnectionTracker>,
    /// Connections not yet connected to their pod (see [`Pending`]).
    pending: Arc<Pending>,
    l7: Option<Arc<L7>>,
}

impl PlaintextAdmission {
    pub fn new(
        trust_domain: impl Into<String>,
        metrics: Arc<Metrics>,
        tracker: Arc<ConnectionTracker>,
        pending: PendingLimits,
        l7: Option<Arc<L7>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            trust_domain: trust_domain.into(),
            metrics,
            tracker,
            pending: Pending::new("inbound_plain", pending),
            l7,
        })
    }
}

/// An admitted plaintext connection: counted, and closed by a policy change.
struct PlaintextConnection {
    record: metrics::ConnectionRecord,
    /// `None` on the L7 path, where each request is decided.
    registration: Option<Registration>,
}

impl Admitted for PlaintextConnection {
    fn closed_by_policy(&self) -> CancellationToken {
        self.registration
            .as_ref()
            .map(Registration::close_token)
            .unwrap_or_default()
    }

    fn finished(self: Box<Self>, result: &Forwarded) {
        result.account(&self.record);
    }
}

impl InboundPolicy for PlaintextAdmission {
    fn begin(&self, client: SocketAddr) -> Result<Option<PendingPermit>, limits::Refusal> {
        self.pending.begin(client.ip()).map(Some)
    }

    fn admit(&self, request: &InboundRequest<'_>) -> Admission {
        let destination = request.destination;
        let dst_id = destination.identity(&self.trust_domain).ok();
        let record = self.metrics.open_connection(&ConnectionOpen {
            source_workload: request.source.map(|w| &**w),
            destination_workload: Some(destination),
            destination_identity: dst_id.as_ref(),
            security: SecurityPolicy::None,
            ..ConnectionOpen::new(Reporter::Destination, request.client.0, request.orig_dst.0)
        });
        let decision = request.snapshot.authorize(&Inbound {
            src: request.client.0.ip(),
            peer: None,
            dst: request.orig_dst.0,
        });
        let decision = match decision {
            Ok(d) => d,
            Err(error) => {
                record.set_decision(metrics::Decision::Deny, "undecidable (fail closed)", None);
                return Admission::Deny {
                    reason: error.to_string(),
                };
            }
        };
        let route = self.l7.as_ref().map_or(Route::L4, |l7| {
            l7.route(request.snapshot, destination, request.orig_dst.0, &decision)
        });
        if let (Route::Http { .. }, Some(l7)) = (&route, &self.l7) {
            let conn = SessionConn {
                client: request.client.0,
                peer: None,
                dst: request.orig_dst.0,
                labels: record.labels().clone(),
            };
            let session = Box::new(l7.session(&route, conn, &decision));
            record.set_decision(metrics::Decision::Allow, "HTTP: decided per request", None);
            return Admission::Http {
                admitted: Box::new(PlaintextConnection {
                    record,
                    registration: None,
                }),
                session,
            };
        }
        record.record_authorization(&decision);
        tracing::debug!(
            client = %request.client,
            dst = %request.orig_dst,
            workload = %destination.qualified_name(),
            mtls_mode = decision.mtls_mode.as_str(),
            decision = if decision.allowed { "allow" } else { "deny" },
            reason = decision.reason.as_str(),
            policy = decision.policy.as_deref().unwrap_or("-"),
            "plaintext admission"
        );
        if !decision.allowed {
            return Admission::Deny {
                reason: decision.reason.as_str().to_owned(),
            };
        }
        let registration = self.tracker.register(TrackedConnection {
            src: request.client.0,
            peer: None,
            dst: request.orig_dst.0,
        });
        Admission::Follow(Box::new(PlaintextConnection {
            record,
            registration: Some(registration),
        }))
    }
}
