use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::proxy::copy::{self, Copied, Ended, Transferred};

/// Two connected sockets: the far end (an application) and the near end
/// (the proxy's).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let far = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (near, _) = listener.accept().await.unwrap();
    (far, near)
}

fn described(
    client: &TcpStream,
    server: &TcpStream,
    bytes: Transferred,
    ended: Ended,
) -> MovedConnection {
    MovedConnection {
        listener: "outbound".into(),
        client: client.peer_addr().unwrap(),
        orig_dst: server.peer_addr().unwrap(),
        target: server.peer_addr().unwrap(),
        client_to_server_bytes: bytes.client_to_server,
        server_to_client_bytes: bytes.server_to_client,
        client_to_server_ended: ended.client_to_server,
        server_to_client_ended: ended.server_to_client,
        age_ms: 1,
    }
}

#[tokio::test]
async fn a_paused_pair_moves_and_resumes_with_nothing_lost_or_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    tokio::spawn(
        AdoptListener::bind(dir.path())
            .unwrap()
            .serve(tx, stop.clone()),
    );

    let (mut app_client, proxy_client) = pair().await;
    let (mut app_server, proxy_server) = pair().await;
    let pause = CancellationToken::new();
    let copying = {
        let pause = pause.clone();
        tokio::spawn(async move {
            copy::movable(
                proxy_client,
                proxy_server,
                std::future::pending(),
                &pause,
                Ended::default(),
                Transferred::default(),
            )
            .await
        })
    };
    app_client.write_all(b"before ").await.unwrap();
    let mut buf = [0u8; 7];
    app_server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before ");

    pause.cancel();
    let Copied::Paused(paused) = copying.await.unwrap() else {
        panic!("the copy did not pause");
    };
    assert_eq!(paused.bytes.client_to_server, 7);
    // Written while nobody copies: it waits in the socket buffer and moves with it.
    app_client.write_all(b"during ").await.unwrap();
    let moved = described(&paused.client, &paused.server, paused.bytes, paused.ended);
    send(dir.path(), &moved, &paused.client, &paused.server)
        .await
        .unwrap();
    drop(paused);

    let adopted = rx.recv().await.unwrap();
    assert_eq!(adopted.connection, moved);
    let resumed = tokio::spawn(async move {
        let never = CancellationToken::new();
        copy::movable(
            adopted.client,
            adopted.server,
            std::future::pending(),
            &never,
            Ended::default(),
            Transferred {
                client_to_server: 7,
                server_to_client: 0,
            },
        )
        .await
    });
    app_client.write_all(b"after").await.unwrap();
    app_client.shutdown().await.unwrap();
    let mut got = Vec::new();
    app_server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"during after");
    app_server.write_all(b"reply").await.unwrap();
    drop(app_server);
    let mut reply = Vec::new();
    app_client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply");
    let Copied::Finished(outcome) = resumed.await.unwrap() else {
        panic!("paused without being asked");
    };
    assert_eq!(outcome.bytes.client_to_server, 19);
    assert_eq!(outcome.bytes.server_to_client, 5);
}

#[tokio::test]
async fn without_a_successor_the_pair_stays_with_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (_app_client, client) = pair().await;
    let (_app_server, server) = pair().await;
    let moved = described(&client, &server, Transferred::default(), Ended::default());
    let started = Instant::now();
    let error = send(dir.path(), &moved, &client, &server)
        .await
        .unwrap_err();
    assert!(matches!(error, HandoverError::Io { .. }), "{error}");
    assert!(started.elapsed() >= PEER_TIMEOUT);
    // Still usable here.
    assert!(client.peer_addr().is_ok() && server.peer_addr().is_ok());
}
