//! Local-mode authentication: a YAML file mapping node names to bootstrap tokens
//! (`node-a: 3f9c...`). Each agent is started with its node's token. The CA
//! follows the file while it runs (`FollowedTokens`), so nodes can be added
//! or their tokens replaced without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;

use super::{Authenticator, AuthnError, BearerToken, NodeName};
use crate::follow::{FileSet, FollowError, Followed, OutcomeHook};

/// Tokens shorter than this are refused at load time: they would be guessable.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Per-node bootstrap tokens.
#[derive(Debug)]
pub struct BootstrapTokens {
    nodes: Vec<(NodeName, BearerToken)>,
}

impl BootstrapTokens {
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        let bytes = std::fs::read(path).map_err(|e| TokensFileError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(path, &bytes)
    }

    /// Parses the content of the tokens file at `path` (named in errors only).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, TokensFileError> {
        let invalid = |reason: String| TokensFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // serde_yaml's messages quote the offending text, which may be a token:
        // keep only where it went wrong.
        let map: BTreeMap<String, String> = serde_yaml::from_slice(bytes).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            invalid(format!("expected a `node: token` mapping{at}"))
        })?;
        Self::from_pairs(map).map_err(invalid)
    }

    /// How many nodes have a token.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for (node, token) in pairs {
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token of node {node:?} is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            if nodes
                .iter()
                .any(|(_, t): &(NodeName, BearerToken)| t.expose() == token)
            {
                return Err(format!("node {node:?} shares its token with another node"));
            }
            nodes.push((NodeName::new(node), BearerToken::new(token)));
        }
        Ok(Self { nodes })
    }

    fn lookup(&self, token: &BearerToken) -> Option<NodeName> {
        // Compare against every entry in constant time per entry, so the time
        // taken does not reveal how much of a token matched.
        let mut found = None;
        for (node, candidate) in &self.nodes {
            if constant_time_eq(candidate.expose().as_bytes(), token.expose().as_bytes()) {
                found = Some(node.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tokens file, followed while the CA runs (see `crate::follow`): a node
/// added to the file is accepted at once, and a bad edit keeps the tokens in force.
#[derive(Debug)]
pub struct FollowedTokens {
    followed: Followed<BootstrapTokens>,
    current: Arc<ArcSwap<BootstrapTokens>>,
}

impl FollowedTokens {
    /// Loads `path` (an unusable file is an error) and follows it, re-reading
    /// at least every `poll`.
    pub async fn start(
        path: &Path,
        poll: Duration,
        hook: Option<OutcomeHook>,
    ) -> Result<Self, FollowError<TokensFileError>> {
        let owned = path.to_path_buf();
        let followed = FileSet::new("tokens", vec![owned.clone()])
            .with_poll_interval(poll)
            .start(move |files| Self::parse_one(&owned, files), hook)
            .await?;
        let current = followed.current();
        Ok(Self { followed, current })
    }

    fn parse_one(path: &Path, files: &[Vec<u8>]) -> Result<BootstrapTokens, TokensFileError> {
        let tokens = BootstrapTokens::parse(path, files.first().map_or(&[][..], Vec::as_slice))?;
        tracing::info!(path = %path.display(), nodes = tokens.len(), "bootstrap tokens read");
        Ok(tokens)
    }

    /// Changes applied and rejected so far.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<crate::follow::FollowStatus> {
        self.followed.subscribe()
    }
}

impl Authenticator for FollowedTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<NodeName, AuthnError>> {
        let result = self
            .current
            .load()
            .lookup(token)
            .ok_or(AuthnError::UnknownToken);
        Box::pin(std::future::ready(result))
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<NodeName, AuthnError>> {
        let result = self.lookup(token).ok_or(AuthnError::UnknownToken);
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn maps_tokens_to_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "node-a: aaaaaaaaaaaaaaaaaaaa\nnode-b: bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let tokens = BootstrapTokens::load(&path).unwrap();
        let node = tokens
            .authenticate(&BearerToken::new("bbbbbbbbbbbbbbbbbbbb"))
            .await
            .unwrap();
        assert_eq!(node, NodeName::new("node-b"));
        assert!(matches!(
            tokens
                .authenticate(&BearerToken::new("bbbbbbbbbbbbbbbbbbbc"))
                .await,
            Err(AuthnError::UnknownToken)
        ));
        assert!(matches!(
            tokens.authenticate(&BearerToken::new("")).await,
            Err(AuthnError::UnknownToken)
        ));
    }

    #[test]
    fn refuses_weak_or_shared_tokens() {
        assert!(BootstrapTokens::from_pairs([("a".into(), "short".into())]).is_err());
        let same = "cccccccccccccccccccc".to_string();
        assert!(
            BootstrapTokens::from_pairs([("a".into(), same.clone()), ("b".into(), same)]).is_err()
        );
    }

    #[test]
    fn parses_bearer_header() {
        assert_eq!(
            BearerToken::from_header("Bearer abc").map(|t| t.expose().to_string()),
            Some("abc".into())
        );
        assert!(BearerToken::from_header("Basic abc").is_none());
        assert!(BearerToken::from_header("Bearer ").is_none());
        assert!(BearerToken::from_header("abc").is_none());
    }
}
