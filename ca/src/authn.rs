//! Caller authentication: who is calling the CA. Each call carries a bearer token;
//! an `Authenticator` turns it into the name of the node the caller runs on, which
//! `binding` then uses to decide the identities it may ask for.
//!
//! `bootstrap` reads per-node tokens from a file (local mode). A Kubernetes
//! implementation (TokenReview of the agent's service-account token, then the
//! node from the token's bound pod) implements the same trait.

use std::fmt;

use futures::future::BoxFuture;

pub mod bootstrap;
pub mod token_review;

/// The name of a node (Kubernetes `spec.nodeName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bearer token as received; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Parses an `authorization` header value of the form `Bearer <token>`.
    pub fn from_header(value: &str) -> Option<Self> {
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Self::new(token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("token not recognised")]
    UnknownToken,
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
}

/// Authenticates a CA caller by its bearer token and names its node.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<NodeName, AuthnError>>;
}
