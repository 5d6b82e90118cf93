//! JSON Web Key Sets for RequestAuthentication: inline `jwks` parsed as
//! given, `jwksUri` fetched over HTTP with a timeout, cached, and refreshed
//! in the background once stale. Keys that could not be had are absent, and
//! tokens of that issuer then fail: there is never a default key.
//!
//! Fetched keys are used for `refresh` after the fetch; after that a
//! background refresh is started, and the keys are kept until twice that
//! age, so an outage of the key server shorter than `refresh` goes
//! unnoticed and a longer one fails closed until the server is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::Mutex;

/// How `jwksUri` keys are fetched and kept.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    pub timeout: Duration,
    pub refresh: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(300),
        }
    }
}

/// A failed fetch is not retried sooner than this (per URI), so a dead key
/// server costs one attempt per second, not one per request.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Key sets are small; a larger answer is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Entry {
    keys: Option<(Arc<JwkSet>, Instant)>,
    last_failure: Option<Instant>,
    fetching: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("jwksUri {0}: only http:// URIs are fetched")]
    Scheme(String),
    #[error("jwksUri {uri}: {reason}")]
    Fetch { uri: String, reason: String },
    #[error("jwksUri {0}: keys unavailable (last fetch failed)")]
    Unavailable(String),
    #[error("jwks: {0}")]
    Parse(String),
}

/// The fetched key sets, by URI.
#[derive(Debug, Default)]
pub struct JwksCache {
    settings: JwksSettings,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl JwksCache {
    pub fn new(settings: JwksSettings) -> Self {
        Self {
            settings,
            entries: Arc::default(),
        }
    }

    /// An inline `jwks` document.
    pub fn inline(doc: &str) -> Result<JwkSet, JwksError> {
        serde_json::from_str(doc).map_err(|e| JwksError::Parse(e.to_string()))
    }

    /// The keys at `uri`: cached, or fetched now (waiting at most the
    /// timeout) when none are held.
    pub async fn keys(&self, uri: &str) -> Result<Arc<JwkSet>, String> {
        let now = Instant::now();
        let refresh = self.settings.refresh;
        let (cached, fetch_now, refresh_later) = {
            let mut entries = self.entries.lock();
            let entry = entries.entry(uri.to_owned()).or_default();
            let cached = entry
                .keys
                .as_ref()
                .filter(|(_, at)| now.duration_since(*at) < refresh * 2)
                .map(|(k, at)| (k.clone(), *at));
            let may_retry = entry
                .last_failure
                .is_none_or(|t| now.duration_since(t) >= RETRY_AFTER);
            let stale = cached
                .as_ref()
                .is_some_and(|(_, at)| now.duration_since(*at) >= refresh);
            let refresh_later = stale && !entry.fetching && may_retry;
            let fetch_now = cached.is_none() && may_retry;
            if refresh_later {
                entry.fetching = true;
            }
            (cached.map(|(k, _)| k), fetch_now, refresh_later)
        };
        if refresh_later {
            let (entries, uri, timeout) =
                (self.entries.clone(), uri.to_owned(), self.settings.timeout);
            tokio::spawn(async move {
                let got = fetch(&uri, timeout).await;
                store(&entries, &uri, got);
            });
        }
        if let Some(keys) = cached {
            return Ok(keys);
        }
        if !fetch_now {
            return Err(JwksError::Unavailable(uri.to_owned()).to_string());
        }
        let got = fetch(uri, self.settings.timeout).await;
        let result = got.as_ref().map(Arc::clone).map_err(ToString::to_string);
        store(&self.entries, uri, got);
        result
    }
}

fn store(entries: &Mutex<HashMap<String, Entry>>, uri: &str, got: Result<Arc<JwkSet>, JwksError>) {
    let mut entries = entries.lock();
    let entry = entries.entry(uri.to_owned()).or_default();
    entry.fetching = false;
    match got {
        Ok(keys) => {
            tracing::info!(%uri, keys = keys.keys.len(), "jwks fetched");
            entry.keys = Some((keys, Instant::now()));
            entry.last_failure = None;
        }
        Err(error) => {
            tracing::warn!(%uri, %error, "jwks fetch failed; tokens of this issuer fail once cached keys expire");
            entry.last_failure = Some(Instant::now());
        }
    }
}

/// One GET of `uri`, within `timeout`.
async fn fetch(uri: &str, timeout: Duration) -> Result<Arc<JwkSet>, JwksError> {
    let fail = |reason: String| JwksError::Fetch {
        uri: uri.to_owned(),
        reason,
    };
    let parsed: http::Uri = uri.parse().map_err(|e| fail(format!("{e}")))?;
    if parsed.scheme_str() != Some("http") {
        return Err(JwksError::Scheme(uri.to_owned()));
    }
    let authority = parsed
        .authority()
        .ok_or_else(|| fail("no host".into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| fail(format!("handshake: {e}")))?;
        tokio::spawn(conn);
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("request: {e}")))?;
        if !rsp.status().is_success() {
            return Err(fail(format!("status {}", rsp.status())));
        }
        let body = Limited::new(rsp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("body: {e}")))?
            .to_bytes();
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| fail(format!("not a JWKS: {e}")))?;
        Ok(Arc::new(set))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| fail(format!("timed out after {timeout:?}")))?
}
