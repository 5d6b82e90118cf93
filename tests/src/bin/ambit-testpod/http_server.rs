//! `ambit-testpod http`: an HTTP server for the L7 tests (HTTP/1.1 and h2c
//! on one port, WebSocket-style upgrades). Every request is answered `200`
//! with a report of what arrived, so a test can verify the bytes and the
//! headers the pod saw:
//!
//! ```text
//! method=POST path=/x bytes=1024 fnv=0123456789abcdef version=HTTP/1.1
//! header authorization=...
//! ```
//!
//! A request with `Upgrade` is answered `101` and the upgraded connection
//! echoes every byte back.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// 64-bit FNV-1a: enough to tell the bytes arrived as sent.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = req.headers()[http::header::UPGRADE].clone();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut rsp = Response::new(Full::new(Bytes::new()));
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut().insert(http::header::UPGRADE, upgrade);
        rsp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(rsp);
    }
    let (parts, body) = req.into_parts();
    let data = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut report = format!(
        "method={} path={} bytes={} fnv={:016x} version={:?}\n",
        parts.method,
        parts.uri.path_and_query().map_or("", |p| p.as_str()),
        data.len(),
        fnv(&data),
        parts.version
    );
    for (k, v) in &parts.headers {
        report.push_str(&format!(
            "header {}={}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    Ok(Response::new(Full::new(Bytes::from(report))))
}

/// Serves until killed.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening kind=http addr={}", listener.local_addr()?);
        loop {
            let (tcp, peer) = listener.accept().await?;
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let served = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(handle))
                    .await;
                if let Err(error) = served {
                    println!("peer={peer} error={error}");
                }
            });
        }
    })
}

/// `ambit-testpod h2-client`: `streams` concurrent GETs of `/h2/<i>` on one
/// h2c connection to `to`; prints `status=<code> <first line of the body>`
/// per stream, in order.
pub fn h2_client(to: SocketAddr, streams: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(to).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut tasks = Vec::new();
        for i in 0..streams {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("http://{to}/h2/{i}"))
                    .body(http_body_util::Empty::<Bytes>::new())?;
                let rsp = sender.send_request(req).await?;
                let status = rsp.status().as_u16();
                let body = rsp.into_body().collect().await?.to_bytes();
                let first = String::from_utf8_lossy(&body)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                anyhow::Ok(format!("status={status} {first}"))
            }));
        }
        for t in tasks {
            println!("{}", t.await??);
        }
        anyhow::Ok(())
    })
}
