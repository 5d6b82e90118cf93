//! HTTP/1.1 and h2c features through the L7 path, bytes verified by what
//! the pod reports it received (`bytes=` and `fnv=`).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::Duration;

use ambit_tests::require_e2e;

use crate::support::{HTTP_PORT, L7Mesh, UNDECLARED_PORT, curl, url};

/// Everything but `/admin`: HTTP rules on analyzer, so its port goes to L7.
const HTTP_RULES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin\", \"/admin/*\"]}}]
";

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn keepalive_pipelining_chunked_and_websocket() {
    if !require_e2e() {
        return;
    }
    let m = L7Mesh::start();
    m.mesh.apply(HTTP_RULES).unwrap();
    let gb = m.pod("guestbook");
    let http = m.analyzer(HTTP_PORT);

    // Normalization closes the bypasses of the DENY rule.
    for path in [
        "/admin",
        "/public/../admin",
        "//admin",
        "/public/%2e%2e/admin",
    ] {
        let got = curl(gb, &["--path-as-is", &url(http, path)]);
        assert_eq!(got.status, 403, "{path}: {got:?}");
    }

    // A port no Service declares is sniffed: HTTP there is decided per request.
    let sniffed = m.analyzer(UNDECLARED_PORT);
    assert_eq!(curl(gb, &[&url(sniffed, "/admin")]).status, 403);
    assert_eq!(curl(gb, &[&url(sniffed, "/ok")]).status, 200);
    // The plaintext path (a client outside the mesh, PERMISSIVE) too.
    let outside = m.pod("keys");
    let plain = curl(outside, &[&url(http, "//admin")]);
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(curl(outside, &[&url(http, "/ok")]).status, 200);

    // A chunked upload of 1 MiB arrives intact.
    let body = pattern(1 << 20, 7);
    let file = std::env::temp_dir().join(format!("ambit-l7-upload-{}", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    let upload = curl(
        gb,
        &[
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &url(http, "/upload"),
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(upload.status, 200, "{upload:?}");
    let want = format!("bytes={} fnv={:016x}", body.len(), fnv(&body));
    assert!(upload.body.contains(&want), "{want} not in {upload:?}");
    assert!(
        upload.body.contains("transfer-encoding=chunked"),
        "{upload:?}"
    );

    // Pipelining: three requests written at once, three answers in order.
    let mut conn = gb.netns().connect(http).unwrap().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut requests = String::new();
    for (i, last) in [(1, false), (2, false), (3, true)] {
        let close = if last { "Connection: close\r\n" } else { "" };
        requests.push_str(&format!(
            "GET /p{i} HTTP/1.1\r\nHost: analyzer\r\n{close}\r\n"
        ));
    }
    conn.write_all(requests.as_bytes()).unwrap();
    let mut answers = String::new();
    conn.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
    let order: Vec<usize> = ["path=/p1", "path=/p2", "path=/p3"]
        .iter()
        .map(|p| answers.find(p).unwrap_or(usize::MAX))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{answers}");

    // WebSocket-style upgrade: 101, then bytes both ways.
    let mut ws = gb.netns().connect(http).unwrap().unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: analyzer\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let sent = pattern(256 * 1024, 3);
    let writer = {
        let mut w = ws.try_clone().unwrap();
        let sent = sent.clone();
        std::thread::spawn(move || w.write_all(&sent))
    };
    let mut echoed = vec![0u8; sent.len()];
    ws.read_exact(&mut echoed).unwrap();
    writer.join().unwrap().unwrap();
    assert!(echoed == sent, "upgraded bytes differ");
}

#[test]
fn h2c_streams() {
    if !require_e2e() {
        return;
    }
    let m = L7Mesh::start();
    m.mesh.apply(HTTP_RULES).unwrap();
    let gb = m.pod("guestbook");
    let http = m.analyzer(HTTP_PORT);

    // h2c with prior knowledge: 50 concurrent streams on one connection.
    let bin = ambit_tests::bin_path("ambit-testpod").unwrap();
    let to = http.to_string();
    let out = gb
        .netns()
        .exec(&bin, ["h2-client", "--to", to.as_str(), "--streams", "50"])
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 50, "{out}");
    for (i, line) in lines.iter().enumerate() {
        let want = format!("status=200 method=GET path=/h2/{i} bytes=0");
        assert!(line.starts_with(&want), "{line}");
        assert!(line.ends_with("version=HTTP/2.0"), "{line}");
    }
    // curl speaks it too (one stream: curl 7.88's --parallel h2c is broken).
    let one = curl(gb, &["--http2-prior-knowledge", &url(http, "/h2/x")]);
    assert!(one.body.starts_with("method=GET path=/h2/x"), "{one:?}");
    assert_eq!(
        curl(gb, &["--http2-prior-knowledge", &url(http, "/admin")]).status,
        403
    );
}
