//! The copy's view of how a peer ends a stream, over a real HTTP/2
//! connection (in memory, no TLS: the framing is what matters here).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A CONNECT stream on a client HTTP/2 connection over `io`, as a tunnel.
async fn open_tunnel(io: tokio::io::DuplexStream) -> (H2Reader, H2Writer) {
    let (h2, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (response, send) = h2.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    H2Stream::from_parts(send, response.into_body()).into_split()
}

/// An HTTP/2 server on `io` whose first stream `handle` serves (its
/// request body and its response); the connection is driven until the
/// client goes, so the frames go out.
fn serve_one<F, Fut>(io: tokio::io::DuplexStream, handle: F)
where
    F: FnOnce(h2::RecvStream, h2::server::SendResponse<Bytes>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.unwrap();
        let (request, respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(handle(request.into_body(), respond));
        while conn.accept().await.is_some() {}
    });
}

/// A client stream to a server that, once the client's bytes flow, answers
/// `answer` with END_STREAM and ends the stream with `reset` while the
/// client is still sending.
async fn answered_then_reset(reset: h2::Reason) -> (Transfer, Vec<u8>) {
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    serve_one(server_io, move |mut body, mut respond| async move {
        let mut send = respond.send_response(Response::new(()), false).unwrap();
        let first = body.data().await;
        assert!(matches!(first, Some(Ok(_))), "no request bytes: {first:?}");
        send.send_data(Bytes::from_static(b"answer"), true).unwrap();
        if reset == h2::Reason::NO_ERROR {
            // Done answering with the request still streaming: h2 itself
            // resets with NO_ERROR once the answer is out (RFC 9113
            // §8.1), as h2-based servers such as ztunnel's do.
            drop((send, body));
        } else {
            // An explicit reset drops the queued answer too.
            send.send_reset(reset);
        }
    });
    let tunnel = open_tunnel(client_io).await;

    // The application keeps sending while the answer comes back.
    let (app, socket) = tokio::io::duplex(64 * 1024);
    let (mut app_read, mut app_write) = tokio::io::split(app);
    tokio::spawn(async move {
        while app_write.write_all(&[7; 1024]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let (socket_read, socket_write) = tokio::io::split(socket);
    let transfer = tokio::time::timeout(
        Duration::from_secs(5),
        copy_bidirectional(tunnel, (socket_read, socket_write), std::future::pending()),
    )
    .await
    .expect("the copy ends once the peer reset the stream");
    let mut received = Vec::new();
    app_read.read_to_end(&mut received).await.unwrap();
    (transfer, received)
}

#[tokio::test]
async fn no_error_reset_after_a_complete_answer_is_a_normal_end() {
    let (transfer, received) = answered_then_reset(h2::Reason::NO_ERROR).await;
    assert!(transfer.result.is_ok(), "{:?}", transfer.result);
    assert_eq!(transfer.forward, 6);
    assert_eq!(received, b"answer");
}

#[tokio::test]
async fn other_resets_are_failures() {
    let (transfer, _) = answered_then_reset(h2::Reason::INTERNAL_ERROR).await;
    let error = transfer
        .result
        .expect_err("an INTERNAL_ERROR reset fails the copy");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

/// A socket that stays silent at first reads as ready before any byte came;
/// the copy gives its buffer back then, and must still wake for the bytes
/// that come later.
#[tokio::test]
async fn bytes_sent_after_an_idle_start_still_cross() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    // Echoes the request's bytes.
    serve_one(server_io, |mut body, mut respond| async move {
        let mut send = respond.send_response(Response::new(()), false).unwrap();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            send.send_data(data, false).unwrap();
        }
    });
    let tunnel = open_tunnel(client_io).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    tokio::spawn(copy_bidirectional(
        tunnel,
        socket.into_split(),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.write_all(b"late").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), app.read_exact(&mut echoed))
        .await
        .expect("the late bytes never crossed")
        .unwrap();
    assert_eq!(&echoed, b"late");
}
