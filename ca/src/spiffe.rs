//! SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! The one identity type shared by the CA, the agent's identity manager and the
//! HBONE verifiers, so that parsing and comparison happen in exactly one place.

use std::fmt;
use std::str::FromStr;

/// A workload identity in Istio's SPIFFE form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "SPIFFE ID {0:?} is not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    Shape(String),
    #[error("SPIFFE ID {0:?} has an empty or invalid segment")]
    Segment(String),
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if valid(&id.trust_domain) && valid(&id.namespace) && valid(&id.service_account) {
            Ok(id)
        } else {
            Err(SpiffeIdError::Segment(id.to_string()))
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity as AuthorizationPolicy `principals` name it: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                SpiffeId::new(*td, *ns, *sa).map_err(|_| SpiffeIdError::Segment(s.to_string()))
            }
            _ => Err(SpiffeIdError::Shape(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/guestbook"
            .parse()
            .unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "guestbook");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/guestbook");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/guestbook"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://cluster.local/xx/a/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
