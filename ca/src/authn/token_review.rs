//! Kubernetes caller authentication: the agent presents a projected
//! service-account token, and the API server's TokenReview says whose it is.
//!
//! A caller is accepted only if the review authenticates the token for the
//! CA's audience, the token belongs to the agent's service account, and it
//! is bound to a pod of that account (or to a node) so the CA learns the
//! caller's node from the API server rather than from the caller. For a
//! pod-bound token the pod is looked up (the CA's pod index, else the API)
//! and must still exist with the token's uid, run as the agent's account,
//! and be scheduled; its `spec.nodeName` is the caller's node. Anything else
//! is refused, and the log says why.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};

use super::{Authenticator, AuthnError, BearerToken, NodeName};
use crate::pods::{PodIndex, PodInfo};

/// TokenReview `extra` keys of a pod-bound service-account token.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// `namespace/name` of a service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// The username the API server gives the account's tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccountRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?} is not <namespace>/<service account>")),
        }
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an authenticated token was still refused; logged, never sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("token not valid: {0}")]
    NotAuthenticated(String),
    #[error("token is not for audience {0:?}")]
    WrongAudience(String),
    #[error("token belongs to {0:?}, not the agent's service account")]
    WrongServiceAccount(String),
    #[error("token is bound to neither a pod nor a node")]
    Unbound,
    #[error("token's pod {0} no longer exists")]
    PodGone(String),
    #[error("token's pod {0} has uid {1:?}, the token names {2:?}")]
    PodReplaced(String, Option<String>, String),
    #[error("token's pod {0} runs as {1:?}")]
    PodServiceAccount(String, String),
    #[error("token's pod {0} is not scheduled on a node")]
    PodUnscheduled(String),
    #[error("token names node {0}, its pod runs on {1}")]
    NodeMismatch(String, String),
}

/// A review that did not name a node.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("Kubernetes API unavailable: {0}")]
    Api(#[from] kube::Error),
}

/// Authenticates agents with TokenReview.
pub struct TokenReviewAuthenticator {
    client: Client,
    audience: String,
    agent: ServiceAccountRef,
    pods: Arc<PodIndex>,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audience", &self.audience)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// `audience` is the one the agent's projected token is issued for;
    /// `pods` is consulted before the API for the token's pod.
    pub fn new(
        client: Client,
        audience: impl Into<String>,
        agent: ServiceAccountRef,
        pods: Arc<PodIndex>,
    ) -> Self {
        Self {
            client,
            audience: audience.into(),
            agent,
            pods,
        }
    }

    /// The authenticator and the pod index it shares with the node binding,
    /// from the cluster's own configuration (in-cluster, else kubeconfig).
    /// The index fills in the background; it binds nothing until synced.
    pub async fn from_cluster(
        audience: impl Into<String>,
        agent: ServiceAccountRef,
    ) -> Result<(Self, Arc<PodIndex>, tokio::task::JoinHandle<()>), kube::Error> {
        let client = Client::try_default().await?;
        let (pods, watch) = PodIndex::start(client.clone());
        Ok((
            Self::new(client, audience, agent, pods.clone()),
            pods,
            watch,
        ))
    }

    /// The caller's node, or why not.
    pub async fn review(&self, token: &BearerToken) -> Result<NodeName, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.expose().to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(Refusal::NotAuthenticated(reason).into());
        }
        if !status
            .audiences
            .iter()
            .flatten()
            .any(|a| *a == self.audience)
        {
            return Err(Refusal::WrongAudience(self.audience.clone()).into());
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        if username != self.agent.username() {
            return Err(Refusal::WrongServiceAccount(username).into());
        }
        self.node_of(&user).await
    }

    async fn node_of(&self, user: &UserInfo) -> Result<NodeName, ReviewError> {
        let extra = |key: &str| {
            user.extra
                .as_ref()
                .and_then(|e| e.get(key))
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let claimed_node = extra(EXTRA_NODE_NAME);
        let Some(pod_name) = extra(EXTRA_POD_NAME) else {
            // A token bound to a Node object names its node and nothing else.
            return claimed_node
                .map(NodeName::new)
                .ok_or(Refusal::Unbound.into());
        };
        let qualified = format!("{}/{pod_name}", self.agent.namespace);
        let pod = match self.pods.pod(&self.agent.namespace, &pod_name) {
            Some(pod) => pod,
            None => {
                // Not yet in the index (a pod that just started): ask the API.
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.agent.namespace);
                let pod = api.get_opt(&pod_name).await?;
                pod.as_ref()
                    .and_then(PodInfo::from_pod)
                    .ok_or_else(|| Refusal::PodGone(qualified.clone()))?
            }
        };
        if let Some(uid) = extra(EXTRA_POD_UID)
            && pod.uid.as_deref() != Some(uid.as_str())
        {
            return Err(Refusal::PodReplaced(qualified, pod.uid, uid).into());
        }
        if pod.service_account != self.agent.name {
            return Err(Refusal::PodServiceAccount(qualified, pod.service_account).into());
        }
        let node = pod.node.ok_or(Refusal::PodUnscheduled(qualified))?;
        if let Some(claimed) = claimed_node
            && claimed != node.as_str()
        {
            return Err(Refusal::NodeMismatch(claimed, node.to_string()).into());
        }
        Ok(node)
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<NodeName, AuthnError>> {
        Box::pin(async move {
            match self.review(token).await {
                Ok(node) => {
                    tracing::debug!(%node, "caller authenticated by TokenReview");
                    Ok(node)
                }
                Err(ReviewError::Refused(refusal)) => {
                    tracing::info!(reason = %refusal, "caller refused");
                    Err(AuthnError::UnknownToken)
                }
                Err(ReviewError::Api(error)) => {
                    tracing::warn!(%error, "TokenReview unavailable");
                    Err(AuthnError::Unavailable(error.to_string()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn service_account_refs_parse_strictly() {
        let sa: ServiceAccountRef = "ambit-system/ambit-agent".parse().unwrap();
        assert_eq!(
            sa.username(),
            "system:serviceaccount:ambit-system:ambit-agent"
        );
        assert_eq!(sa.to_string(), "ambit-system/ambit-agent");
        for bad in ["", "ambit-agent", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kubernetes_flags() {
        let cli = Cli::try_parse_from(["ambit-ca"]).unwrap();
        assert!(!cli.kube);
        assert_eq!(cli.kube_audience, "ambit-ca");
        assert_eq!(
            cli.agent_service_account.to_string(),
            "ambit-system/ambit-agent"
        );
        let cli = Cli::try_parse_from([
            "ambit-ca",
            "--kube",
            "--kube-audience",
            "mesh-ca",
            "--agent-service-account",
            "mesh/node-agent",
        ])
        .unwrap();
        assert!(cli.kube);
        assert_eq!(cli.kube_audience, "mesh-ca");
        assert_eq!(cli.agent_service_account.name, "node-agent");
        assert!(Cli::try_parse_from(["ambit-ca", "--agent-service-account", "nope"]).is_err());
    }
}
