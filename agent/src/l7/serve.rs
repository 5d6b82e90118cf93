//! One HTTP/2 cleartext (h2c) client connection on the L7 path: hyper serves
//! it, and each request goes to [`Handler`] and from there to the pod as a
//! stream of one HTTP/2 connection.

use std::io;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::L7;
use super::metrics::ConnectionSeries;
use super::request::{Facts, Handler};

/// Serves `client` until it closes, the pod closes, or `stop` fires.
pub async fn connection<D>(
    l7: Arc<L7>,
    facts: Facts,
    client: D,
    pod: TcpStream,
    stop: impl Future<Output = ()>,
) -> io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = pod.set_nodelay(true);
    let (upstream, pod_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(pod))
            .await
            .map_err(io::Error::other)?;
    // The pod's connection is driven by this task, beside the client's.
    let pod_conn = async move {
        if let Err(error) = pod_conn.await {
            tracing::debug!(%error, "pod http2 connection ended");
        }
    };
    let handler = Arc::new(Handler {
        series: Arc::new(ConnectionSeries::new(facts.labels.clone())),
        l7,
        facts,
        upstream,
    });
    let service = service_fn(move |req| handler.clone().handle(req));
    let client_conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(client), service);
    tokio::pin!(stop, client_conn, pod_conn);
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
