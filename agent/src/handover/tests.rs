use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;

fn listeners() -> Listeners {
    let mut out = Listeners::default();
    for role in [Role::Outbound, Role::Readiness] {
        out.insert(role, TcpListener::bind("127.0.0.1:0").unwrap());
    }
    out
}

#[tokio::test]
async fn successor_gets_the_same_sockets_and_the_predecessor_hears_it() {
    let dir = tempfile::tempdir().unwrap();
    let held = listeners();
    let outbound_addr = held.0[&Role::Outbound].local_addr().unwrap();
    let handed_over = CancellationToken::new();
    let server = tokio::spawn(serve(
        dir.path().to_owned(),
        held.try_clone().unwrap(),
        handed_over.clone(),
        CancellationToken::new(),
    ));
    let roles = [Role::Outbound, Role::Readiness];
    // A successor that needs a socket the predecessor lacks does not confirm.
    let wants_more = loop {
        if let Some(p) = Predecessor::find(dir.path(), &[Role::Outbound, Role::Admin]) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(matches!(
        wants_more.take().await,
        Err(HandoverError::Missing(Role::Admin))
    ));
    let predecessor = Predecessor::find(dir.path(), &roles).unwrap();
    // The probe `find` made must not count as a handover.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!handed_over.is_cancelled());

    // A connection queued before the handover is accepted after it.
    let mut early = TcpStream::connect(outbound_addr).unwrap();
    let mut taken = predecessor.take().await.unwrap();
    // The predecessor stops serving handovers once it heard the confirmation.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(handed_over.is_cancelled());
    assert_eq!(
        taken.roles().collect::<Vec<_>>(),
        [Role::Outbound, Role::Readiness]
    );
    drop(held);
    let listener = taken.take(Role::Outbound).unwrap();
    assert_eq!(listener.local_addr().unwrap(), outbound_addr);
    let (mut accepted, _) = listener.accept().await.unwrap();
    early.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    drop(accepted);
    let mut rest = Vec::new();
    early.read_to_end(&mut rest).unwrap();
    assert!(matches!(
        taken.take(Role::Admin),
        Err(HandoverError::Missing(Role::Admin))
    ));
}

#[tokio::test]
async fn no_predecessor_without_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Predecessor::find(dir.path(), &[]).is_none());
    // A socket file left by a crashed agent: nobody accepts on it.
    drop(UnixListener::bind(dir.path().join(SOCKET_NAME)).unwrap());
    assert!(Predecessor::find(dir.path(), &[]).is_none());
    // And a new server replaces it.
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        dir.path().to_owned(),
        listeners(),
        CancellationToken::new(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(Predecessor::find(dir.path(), &[]).is_some());
    stop.cancel();
    server.await.unwrap().unwrap();
}
