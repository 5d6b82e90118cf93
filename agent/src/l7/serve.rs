//! One client connection on the L7 path: hyper serves it (HTTP/1.1 with
//! keep-alive, pipelining and upgrades, or HTTP/2 cleartext), and each
//! request goes to [`Handler`] and from there to the pod over one client
//! connection of the same protocol.

use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::L7;
use super::detect::Sniffed;
use super::metrics::ConnectionSeries;
use super::request::{Facts, Handler, Upstream};

/// Serves `client` until it closes, the pod closes, or `stop` fires.
pub async fn connection<D>(
    l7: Arc<L7>,
    facts: Facts,
    protocol: Sniffed,
    client: D,
    pod: TcpStream,
    stop: impl Future<Output = ()>,
) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = pod.set_nodelay(true);
    let h2 = protocol == Sniffed::H2c;
    // The pod's connection is driven by this task, beside the client's:
    // a request and its response then cross no task boundary on the way.
    let (upstream, pod_conn): (Upstream, BoxFuture<'static, ()>) = if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(pod))
                .await
                .map_err(io::Error::other)?;
        let conn = async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "pod http2 connection ended");
            }
        };
        (Upstream::H2(sender), Box::pin(conn))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(pod))
            .await
            .map_err(io::Error::other)?;
        let conn = async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "pod http1 connection ended");
            }
        };
        (
            Upstream::H1(tokio::sync::Mutex::new(sender)),
            Box::pin(conn),
        )
    };
    let handler = Arc::new(Handler {
        series: Arc::new(ConnectionSeries::new(facts.labels.clone())),
        l7,
        facts,
        upstream,
        h2,
    });
    let service = service_fn(move |req| handler.clone().handle(req));
    let io = TokioIo::new(client);
    let client_conn: BoxFuture<'static, hyper::Result<()>> = if h2 {
        Box::pin(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service),
        )
    } else {
        Box::pin(
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .pipeline_flush(true)
                .serve_connection(io, service)
                .with_upgrades(),
        )
    };
    tokio::pin!(stop);
    let (mut client_conn, mut pod_conn) = (client_conn, pod_conn);
    let mut pod_open = true;
    // The client's connection decides how long this lasts; once the pod's
    // ends, requests are answered 503 until the client hangs up.
    let served = loop {
        tokio::select! {
            r = &mut client_conn => break r,
            () = &mut stop => break Ok(()),
            () = &mut pod_conn, if pod_open => pod_open = false,
        }
    };
    served.map_err(io::Error::other)
}
