//! JSON Web Key Sets for RequestAuthentication: inline `jwks` parsed as
//! given, `jwksUri` fetched over HTTP or HTTPS (the system's roots, plus a
//! CA file for private key servers) with a timeout, cached, and refreshed
//! in the background once stale. Keys that could not be had are absent, and
//! tokens of that issuer then fail: there is never a default key.
//!
//! Fetched keys are used for `refresh` after the fetch; after that a
//! background refresh is started, and the keys are kept until twice that
//! age, so an outage of the key server shorter than `refresh` goes
//! unnoticed and a longer one fails closed until the server is back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::Mutex;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// How `jwksUri` keys are fetched and kept.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    pub timeout: Duration,
    pub refresh: Duration,
    /// For `https://` URIs; `None` when no trust root is known, and then
    /// those fetches fail.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(300),
            tls: https_client_config(None).ok().flatten(),
        }
    }
}

/// The TLS client for `https://` jwksUri: the system's trust roots (as
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` or the platform's store give them) and
/// those in `ca_file`; `None` with no root at all. A `ca_file` that cannot
/// be read or holds no certificate is an error.
pub fn https_client_config(ca_file: Option<&Path>) -> Result<Option<Arc<ClientConfig>>, JwksError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "system trust roots");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| JwksError::Roots(format!("{}: {e}", path.display())))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| JwksError::Roots(format!("{}: {e}", path.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(JwksError::Roots(format!(
                "{}: no CA certificate in it",
                path.display()
            )));
        }
    }
    if roots.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Roots(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
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
    #[error("jwksUri {0}: only http:// and https:// URIs are fetched")]
    Scheme(String),
    #[error("trust roots for https jwksUri: {0}")]
    Roots(String),
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
            let (entries, uri, settings) =
                (self.entries.clone(), uri.to_owned(), self.settings.clone());
            tokio::spawn(async move {
                let got = fetch(&uri, &settings).await;
                store(&entries, &uri, got);
            });
        }
        if let Some(keys) = cached {
            return Ok(keys);
        }
        if !fetch_now {
            return Err(JwksError::Unavailable(uri.to_owned()).to_string());
        }
        let got = fetch(uri, &self.settings).await;
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

/// One GET of `uri`, within the settings' timeout.
async fn fetch(uri: &str, settings: &JwksSettings) -> Result<Arc<JwkSet>, JwksError> {
    let fail = |reason: String| JwksError::Fetch {
        uri: uri.to_owned(),
        reason,
    };
    let parsed: http::Uri = uri.parse().map_err(|e| fail(format!("{e}")))?;
    let https = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(JwksError::Scheme(uri.to_owned())),
    };
    let authority = parsed
        .authority()
        .ok_or_else(|| fail("no host".into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let body = if https {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| fail(format!("server name {host}: {e}")))?;
            let config = settings.tls.clone().ok_or_else(|| {
                fail("no trust roots for https (system store empty, no --jwks-ca-file)".into())
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            get(tls, authority.as_str(), path).await
        } else {
            get(tcp, authority.as_str(), path).await
        }
        .map_err(fail)?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| fail(format!("not a JWKS: {e}")))?;
        Ok(Arc::new(set))
    };
    tokio::time::timeout(settings.timeout, attempt)
        .await
        .map_err(|_| fail(format!("timed out after {:?}", settings.timeout)))?
}

/// `GET path` with HTTP/1.1 on `io`; the body of a 2xx answer.
async fn get<S>(io: S, host: &str, path: &str) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let rsp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !rsp.status().is_success() {
        return Err(format!("status {}", rsp.status()));
    }
    Ok(Limited::new(rsp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes())
}

#[cfg(test)]
mod tests;
