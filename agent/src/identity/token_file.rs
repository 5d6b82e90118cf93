//! The bearer token the agent presents to the CA, read from its file for every
//! request. In Kubernetes it is a projected service-account token that the
//! kubelet rewrites (typically hourly, long before it expires); a read per
//! request is small next to the TLS call and the signature it goes with, and it
//! means no copy held in memory can go stale.
//!
//! A file that cannot be read or holds no usable token (a volume briefly
//! unmounted, a hand edit gone wrong) does not stop issuance once a read has
//! succeeded: the error is logged with the path and the last good token is sent
//! meanwhile, which stays valid for a while because rotation happens well
//! before expiry. The token itself is never logged.

use std::path::{Path, PathBuf};

use ambit_ca::authn::BearerToken;
use parking_lot::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the CA token {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA token file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// The token goes into an HTTP header: only visible ASCII can be sent.
    #[error("the CA token file {} holds characters a bearer token cannot carry", path.display())]
    NotHeaderText { path: PathBuf },
}

#[derive(Debug, Default)]
struct Reads {
    last_good: Option<BearerToken>,
    last_error: Option<String>,
}

/// A token file, re-read for each CA request.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    reads: Mutex<Reads>,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            reads: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token to send now: the file's content, or the last good one when the
    /// file is unusable. An error only when no read has ever succeeded.
    pub async fn token(&self) -> Result<BearerToken, TokenError> {
        let read = read_token(&self.path).await;
        let mut reads = self.reads.lock();
        match read {
            Ok(token) => {
                if reads.last_error.take().is_some() {
                    tracing::info!(path = %self.path.display(), "CA token file usable again");
                }
                reads.last_good = Some(token.clone());
                Ok(token)
            }
            Err(error) => {
                let fallback = reads.last_good.clone();
                tracing::warn!(
                    path = %self.path.display(),
                    %error,
                    previous_token = fallback.is_some(),
                    "CA token file unusable"
                );
                reads.last_error = Some(error.to_string());
                fallback.ok_or(error)
            }
        }
    }

    /// Why the last read failed, if it did (for the config dump).
    pub fn last_error(&self) -> Option<String> {
        self.reads.lock().last_error.clone()
    }
}

async fn read_token(path: &Path) -> Result<BearerToken, TokenError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
    // Files written by hand or by `echo` end in a newline; the token does not.
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotHeaderText {
            path: path.to_owned(),
        });
    }
    Ok(BearerToken::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_each_time_and_falls_back_to_the_last_good_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = TokenFile::new(&path);

        // Never read successfully: the request fails, naming the file.
        let error = file.token().await.unwrap_err();
        assert!(matches!(error, TokenError::Read { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()));

        std::fs::write(&path, "first-token\n").unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "first-token");
        assert_eq!(file.last_error(), None);
        std::fs::write(&path, "second-token").unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "second-token");

        std::fs::write(&path, " \n").unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "second-token");
        let reason = file.last_error().unwrap();
        assert!(reason.contains("is empty"), "{reason}");
        assert!(!reason.contains("second-token"));

        std::fs::write(&path, "bad token\u{7}").unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "second-token");
        assert!(file.last_error().unwrap().contains("cannot carry"));

        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "second-token");
        assert!(file.last_error().unwrap().contains("reading the CA token"));

        std::fs::write(&path, "third-token").unwrap();
        assert_eq!(file.token().await.unwrap().expose(), "third-token");
        assert_eq!(file.last_error(), None);
    }
}
