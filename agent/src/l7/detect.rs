//! Which connections are HTTP: the port as its Service declares it (the way
//! Istio reads `appProtocol` and port names), and the first bytes the client
//! sends (an HTTP/1.x request line or the HTTP/2 prior-knowledge preface),
//! read with a short timeout so a server-first protocol falls back at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::state::Snapshot;

/// What the Service in front of a pod port says about its protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Declared {
    /// HTTP, and which Service port said so (`default/analyzer:http-web`).
    Http(String),
    /// Another protocol, named (`tcp`, `mysql`, ...): never sniffed.
    Opaque(String),
    /// Nothing says: sniffed when HTTP rules apply.
    Unknown,
}

const HTTP_APP_PROTOCOLS: &[&str] = &[
    "http",
    "http2",
    "grpc",
    "grpc-web",
    "h2c",
    "kubernetes.io/h2c",
];
const HTTP_NAME_PREFIXES: &[&str] = &["http", "http2", "grpc", "grpc-web"];
const OPAQUE_NAME_PREFIXES: &[&str] = &["tcp", "tls", "https", "mongo", "mysql", "redis", "udp"];

/// Istio's port-name convention: `<protocol>` or `<protocol>-<suffix>`.
fn name_protocol(name: &str) -> &str {
    name.split_once('-').map_or(name, |(p, _)| p)
}

fn classify(app_protocol: Option<&str>, name: Option<&str>) -> Option<bool> {
    if let Some(app) = app_protocol.map(str::to_ascii_lowercase) {
        return Some(HTTP_APP_PROTOCOLS.contains(&app.as_str()));
    }
    let name = name?.to_ascii_lowercase();
    let proto = name_protocol(&name);
    if HTTP_NAME_PREFIXES.contains(&proto) || name.starts_with("grpc-web") {
        Some(true)
    } else if OPAQUE_NAME_PREFIXES.contains(&proto) {
        Some(false)
    } else {
        None
    }
}

/// How the Services whose ready endpoint is `pod` declare it; the first
/// Service port with an opinion wins.
pub fn declared(snapshot: &Snapshot, pod: SocketAddr) -> Declared {
    // The pod's own Services (an index), not a scan of every Service: this
    // runs for inbound connections when a policy needs HTTP.
    for svc in snapshot.services_of_endpoint(pod.ip()) {
        for sp in &svc.ports {
            if !svc.serves_on(sp.port, pod) {
                continue;
            }
            let port_name = || {
                format!(
                    "{}:{}",
                    svc.qualified_name(),
                    sp.name.clone().unwrap_or_else(|| sp.port.to_string())
                )
            };
            match classify(sp.app_protocol.as_deref(), sp.name.as_deref()) {
                Some(true) => return Declared::Http(port_name()),
                Some(false) => return Declared::Opaque(port_name()),
                None => {}
            }
        }
    }
    Declared::Unknown
}

/// What the first bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    H2c,
    Other,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longer than any method token and the preface; more is not read.
const SNIFF_MAX: usize = 32;

/// `None` while the bytes so far could still be either.
fn recognise(buf: &[u8]) -> Option<Sniffed> {
    if buf.len() >= PREFACE.len() && buf.starts_with(PREFACE) {
        return Some(Sniffed::H2c);
    }
    let method_end = buf.iter().position(|&b| b == b' ');
    let token = &buf[..method_end.unwrap_or(buf.len())];
    let token_ok = token.iter().all(|b| b.is_ascii_uppercase() || *b == b'-');
    if PREFACE.starts_with(buf) && buf.len() < PREFACE.len() && buf.len() > 3 {
        // "PRI " is no HTTP/1 method anyone sends: wait for the preface.
        return None;
    }
    match method_end {
        Some(n) if n > 0 && token_ok => Some(Sniffed::Http1),
        None if token_ok && buf.len() < SNIFF_MAX => None,
        _ => Some(Sniffed::Other),
    }
}

/// Reads the first bytes of `io` to tell its protocol, for at most `wait`;
/// returns them to be replayed. Silence (a server-first protocol) and EOF
/// are `Other`.
pub async fn sniff<D: AsyncRead + Unpin>(io: &mut D, wait: Duration) -> (Sniffed, Vec<u8>) {
    let mut buf = Vec::with_capacity(SNIFF_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; SNIFF_MAX];
        let room = SNIFF_MAX - buf.len();
        let read = tokio::time::timeout_at(deadline, io.read(&mut chunk[..room])).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // EOF, error or timeout: nothing more will tell.
            _ => return (Sniffed::Other, buf),
        }
        if let Some(found) = recognise(&buf) {
            return (found, buf);
        }
    }
}

/// A stream whose first bytes were already read (by [`sniff`]): they are
/// read again first. Counts the bytes that pass each way, for the
/// connection's metrics.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
    pub(crate) read: Arc<AtomicU64>,
    pub(crate) written: Arc<AtomicU64>,
}

impl<S> Replay<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
            read: Arc::default(),
            written: Arc::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.at..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        this.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn ports_as_istio_reads_them() {
        assert_eq!(classify(Some("HTTP"), Some("tcp")), Some(true));
        assert_eq!(classify(Some("kubernetes.io/h2c"), None), Some(true));
        assert_eq!(classify(Some("tcp"), Some("http")), Some(false));
        assert_eq!(classify(None, Some("http")), Some(true));
        assert_eq!(classify(None, Some("http-web")), Some(true));
        assert_eq!(classify(None, Some("http2-x")), Some(true));
        assert_eq!(classify(None, Some("grpc-api")), Some(true));
        assert_eq!(classify(None, Some("httpx")), None);
        assert_eq!(classify(None, Some("mysql")), Some(false));
        assert_eq!(classify(None, Some("web")), None);
        assert_eq!(classify(None, None), None);
    }

    #[test]
    fn first_bytes() {
        assert_eq!(recognise(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(recognise(b"POS"), None);
        assert_eq!(
            recognise(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Sniffed::H2c)
        );
        assert_eq!(recognise(b"PRI * HT"), None);
        assert_eq!(recognise(b"\x16\x03\x01"), Some(Sniffed::Other));
        assert_eq!(recognise(b"SSH-2.0-x"), Some(Sniffed::Other));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
        let (found, prefix) = sniff(&mut server, Duration::from_secs(5)).await;
        assert_eq!(found, Sniffed::Http1);
        let mut replay = Replay::new(prefix, server);
        drop(client);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /x HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn server_first_falls_back_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (found, prefix) = sniff(&mut server, Duration::from_millis(100)).await;
        assert_eq!((found, prefix.len()), (Sniffed::Other, 0));
    }
}
