//! The HTTP/1 path over loopback with raw sockets on the client's side (and
//! on the pod's where its bytes are the assertion): a policy denying
//! `/admin`, everything else allowed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::l7::L7Settings;
use crate::l7::tests::{agent, agent_with, pod, pod_answering};

/// A pod answering `<method> <path> te=<transfer-encoding> body=<n>`.
async fn echo_pod() -> SocketAddr {
    pod_answering(|req| async move {
        let line = format!(
            "{} {} te={}",
            req.method(),
            req.uri(),
            req.headers()
                .get("transfer-encoding")
                .map_or("-", |v| v.to_str().unwrap_or("?"))
        );
        match req.into_body().collect().await {
            Ok(body) => format!("{line} body={}", body.to_bytes().len()),
            Err(e) => format!("{line} body error: {e}"),
        }
    })
    .await
}

/// A pod that keeps every byte it receives and, once it has seen a head,
/// writes `answer` (then, if `echo`, copies back whatever else arrives).
async fn scripted_pod(answer: &'static [u8], echo: bool) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let mut answered = false;
        loop {
            let n = match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // What to write back, decided with the lock held and written
            // without it.
            let reply: Vec<u8> = {
                let mut all = seen.lock();
                let before = all.len();
                all.extend_from_slice(&buf[..n]);
                let head_end = all.windows(4).position(|w| w == b"\r\n\r\n");
                match head_end {
                    Some(end) if !answered => {
                        answered = true;
                        let mut reply = answer.to_vec();
                        if echo {
                            reply.extend_from_slice(&all[(end + 4).max(before)..]);
                        }
                        reply
                    }
                    _ if answered && echo => buf[..n].to_vec(),
                    _ => Vec::new(),
                }
            };
            if !reply.is_empty() {
                tcp.write_all(&reply).await.unwrap();
            }
        }
    });
    (addr, got)
}

/// Writes `request` and reads until the agent closes (or 5 s pass).
async fn exchange(agent: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(agent).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_until(tcp: &mut TcpStream, what: &str) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&out).contains(what) {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed before {what:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_through_denials() {
    let agent = agent(pod().await).await;
    let requests = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        GET /./b/../admin HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
        GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = exchange(agent, requests.as_bytes()).await;
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "403", "403", "200", "200"], "{out}");
    assert_eq!(out.matches("RBAC: access denied").count(), 2, "{out}");
    let order: Vec<usize> = ["\r\n\r\n/a", "\r\n\r\n/c", "\r\n\r\n/d"]
        .iter()
        .map(|p| out.find(p).unwrap_or(usize::MAX))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
}

#[tokio::test]
async fn bodies_pass_whole_with_their_framing_and_interim_answers() {
    let agent = agent(echo_pod().await).await;
    let mut tcp = TcpStream::connect(agent).await.unwrap();
    // Chunked, in pieces that split sizes and data.
    tcp.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1")
        .await
        .unwrap();
    tcp.write_all(b"0\r\n0123456789ab").await.unwrap();
    tcp.write_all(b"cdef\r\n0\r\n\r\n").await.unwrap();
    let out = read_until(&mut tcp, "body=16").await;
    assert!(out.contains("POST /up te=chunked body=16"), "{out}");
    // Expect: 100-continue: the pod's interim answer reaches the client
    // before it sends the body.
    tcp.write_all(
        b"PUT /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_until(&mut tcp, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tcp.write_all(b"data").await.unwrap();
    let out = read_until(&mut tcp, "body=4").await;
    assert!(out.contains("PUT /big te=- body=4"), "{out}");
}

#[tokio::test]
async fn framings_a_pod_could_read_differently_never_reach_it() {
    for (request, status) in [
        (&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..], "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"),
        (b"GET / HTTP/1.1\nHost: x\n\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
    ] {
        let (pod, got) = scripted_pod(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false).await;
        let out = exchange(agent(pod).await, request).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        assert!(out.contains("connection: close"), "{out}");
        assert!(got.lock().is_empty(), "the pod saw {:?}", got.lock());
    }
}

#[tokio::test]
async fn the_pod_sees_the_authorized_path_and_no_h2c_upgrade() {
    let (pod, got) = scripted_pod(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let out = exchange(
        agent(pod).await,
        b"GET /x/%2e%2e/y HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
        "{out}"
    );
    let seen = String::from_utf8(got.lock().clone()).unwrap();
    assert!(seen.starts_with("GET /y HTTP/1.1\r\n"), "{seen}");
    let lower = seen.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade: h2c") && !lower.contains("http2-settings:"),
        "{seen}"
    );
}

#[tokio::test]
async fn after_a_101_bytes_pass_both_ways() {
    let (pod, _) = scripted_pod(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        true,
    )
    .await;
    let mut tcp = TcpStream::connect(agent(pod).await).await.unwrap();
    // The first bytes of the new protocol ride with the request.
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly",
    )
    .await
    .unwrap();
    let head = read_until(&mut tcp, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    read_until(&mut tcp, "early").await;
    tcp.write_all(b"GET /admin HTTP/1.1\r\n\r\n").await.unwrap();
    // Past the switch nothing is read as HTTP: the pod echoes it.
    read_until(&mut tcp, "GET /admin HTTP/1.1\r\n\r\n").await;
}

#[tokio::test]
async fn a_pod_that_answers_until_close_or_not_at_all() {
    let (pod, _) = scripted_pod(b"HTTP/1.0 200 OK\r\n\r\nstreamed", false).await;
    let mut tcp = TcpStream::connect(agent(pod).await).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "streamed").await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Reads the request, then closes without a word.
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
    });
    let out = exchange(agent(silent).await, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
}

#[tokio::test]
async fn a_head_that_trickles_in_gets_408_but_an_idle_connection_stays() {
    let settings = L7Settings {
        head_timeout: Duration::from_millis(300),
        ..L7Settings::default()
    };
    let mut tcp = TcpStream::connect(agent_with(pod().await, settings).await)
        .await
        .unwrap();
    // Idle between requests for longer than the head timeout: still served.
    tcp.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "\r\n\r\n/a").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A head started and never finished is answered 408 and closed.
    tcp.write_all(b"GET /b HTTP/1.1\r\nHost:").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("the agent kept the connection")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
}
