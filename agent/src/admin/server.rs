//! The HTTP/1 accept loop shared by the admin listeners: the three TCP
//! ports and the control socket.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::drain::DrainWatcher;

pub(super) type Body = Full<Bytes>;

/// Answers one request from its head; admin requests carry no body we read.
pub(super) type Handler = Arc<dyn Fn(&Parts) -> Response<Body> + Send + Sync>;

/// A client that has not sent its request head by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener the admin servers accept on.
pub(super) trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, String)>> + Send;

    /// Where it listens, for the log.
    fn describe(&self) -> String;
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<(Self::Stream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        Ok((stream, peer.to_string()))
    }

    fn describe(&self) -> String {
        self.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<(Self::Stream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "unix".to_owned()))
    }

    fn describe(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_default()
    }
}

/// Serves `handler` on `listener` until the drain starts; open connections then
/// finish their current request (and are cut at the forced phase).
pub(super) async fn serve<L: Listener>(
    name: &'static str,
    listener: L,
    mut drain: DrainWatcher,
    handler: Handler,
) {
    let addr = listener.describe();
    tracing::info!(server = name, %addr, "admin listener serving");
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = drain.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    tracing::warn!(server = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let mut drain = drain.clone();
        tokio::spawn(async move {
            let request_peer = peer.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let peer = &request_peer;
                let (parts, _body) = req.into_parts();
                let response = handler(&parts);
                tracing::debug!(
                    server = name,
                    %peer,
                    method = %parts.method,
                    path = parts.uri.path(),
                    status = response.status().as_u16(),
                    "admin request"
                );
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = drain.draining() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = drain.forced() => Ok(()),
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(server = name, %peer, %error, "admin connection error");
            }
        });
    }
    tracing::info!(server = name, "admin listener stopped");
}

// === responses ===

pub(super) fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    response(status, "text/plain; charset=utf-8", body)
}

pub(super) fn not_found(parts: &Parts) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", parts.uri.path()),
    )
}

/// 405 naming the methods the endpoint accepts.
pub(super) fn method_not_allowed(parts: &Parts, allowed: &'static str) -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not accept {}; use {allowed}",
            parts.uri.path(),
            parts.method
        ),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    resp
}
