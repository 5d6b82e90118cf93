//! PeerAuthentication: which mTLS mode applies to a workload port.

use super::Selector;

/// A resolved mTLS mode: what the inbound side accepts. Never UNSET; UNSET only
/// exists in policies and means "inherit".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mTLS (HBONE) connections.
    Strict,
    /// mTLS and plaintext; the mesh default.
    Permissive,
    /// Plaintext treated like any unauthenticated peer.
    Disable,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
            Self::Disable => "DISABLE",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One compiled PeerAuthentication. `None` modes are UNSET (inherit).
#[derive(Clone, Debug)]
pub(crate) struct PeerAuthn {
    pub id: Box<str>,
    pub namespace: Box<str>,
    pub selector: Option<Selector>,
    pub mode: Option<MtlsMode>,
    pub port_modes: Vec<(u16, Option<MtlsMode>)>,
    /// `metadata.creationTimestamp` (RFC 3339, UTC as Kubernetes writes it, so
    /// it orders as text); absent sorts as newest.
    pub created: Option<Box<str>>,
    /// The policy could not be read; it is applied as STRICT.
    pub invalid: bool,
}

impl PeerAuthn {
    /// Istio's tie-break when several policies apply at one level: the oldest
    /// wins, then the name.
    pub(crate) fn age_key(&self) -> (bool, &str, &str) {
        (
            self.created.is_none(),
            self.created.as_deref().unwrap_or_default(),
            &self.id,
        )
    }

    /// Istio ignores PeerAuthentications with a workload selector in the root
    /// namespace (mesh-wide policy is selector-less by definition).
    pub(crate) fn ignored_in(&self, root_namespace: &str) -> bool {
        self.selector.is_some() && &*self.namespace == root_namespace
    }

    /// The mode this policy sets for `port`, or `None` to inherit.
    pub(crate) fn mode_for(&self, port: u16) -> Option<MtlsMode> {
        self.port_modes
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, m)| *m)
            .or(self.mode)
    }
}
