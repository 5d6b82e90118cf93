//! The agent's side of describe: answers `GET /describe/<subject>` on the
//! admin port from the live state, with the node it serves, the workload
//! certificates it holds and the refusals it recorded.

use std::sync::Arc;

use http::StatusCode;

use super::report::{self, AgentFacts};
use super::{DescribeError, Subject};
use crate::admin::DescribeSource;
use crate::identity::IdentityManager;
use crate::metrics::{Denial, Metrics};
use crate::state::StateStore;

/// What a running agent describes from.
pub struct LiveDescriber {
    pub store: StateStore,
    pub node: String,
    pub trust_domain: String,
    pub metrics: Arc<Metrics>,
    pub identities: Arc<IdentityManager>,
}

impl std::fmt::Debug for LiveDescriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDescriber")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl AgentFacts for LiveDescriber {
    fn node(&self) -> &str {
        &self.node
    }

    fn certificate_expiry(&self, identity: &str) -> Option<u64> {
        self.identities
            .status()
            .into_iter()
            .find(|s| s.identity == identity)
            .and_then(|s| s.not_after)
    }

    fn refusals(&self, workload: &str) -> Vec<Denial> {
        self.metrics.recent_denials(workload)
    }
}

impl DescribeSource for LiveDescriber {
    fn describe(&self, path: &str) -> Result<serde_json::Value, (StatusCode, String)> {
        let subject =
            Subject::from_path(path).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let snapshot = self.store.current();
        let report = report::describe(&snapshot, &subject, &self.trust_domain, Some(self))
            .map_err(|e| match e {
                DescribeError::NoSuchPod(_) | DescribeError::NoSuchService(_) => {
                    (StatusCode::NOT_FOUND, e.to_string())
                }
                _ => (StatusCode::BAD_REQUEST, e.to_string()),
            })?;
        serde_json::to_value(report).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
}
