//! The `ambit-ca` binary as a process, over real gRPC/TLS on loopback: it
//! follows its tokens file and serving certificate without a restart (a bad
//! edit keeps the last good copy), logs each refusal at info with node and
//! reason but never the token, serves Prometheus metrics, puts IP entries of
//! `--serving-names` in IP SANs, and writes no colour codes into a pipe.
// Test helpers outside #[test] fns panic on a broken environment by design.
#![allow(clippy::unwrap_used)]

#[path = "fixture/ca.rs"]
mod fixture;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ambit_ca::authn::BearerToken;
use ambit_ca::client::{CaClient, CaClientConfig, CaClientError};
use fixture::*;
use tonic::Code;

/// A token no file ever holds; it must never appear in the log.
const STRANGER: &str = "token-of-a-stranger-0123456789";

/// An `ambit-ca` process, killed on drop; its log goes to a file.
struct CaProcess {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CaProcess {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let (addr, metrics) = (free_port(), free_port());
        let log = dir.join("ca.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit-ca"));
        cmd.args(["--listen", &addr.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--tokens-file")
            .arg(dir.join("tokens.yaml"))
            .arg("--workloads")
            .arg(dir.join("workloads.yaml"))
            // Long enough that only inotify can explain a prompt reload.
            .args(["--files-poll", "30s"])
            .args(extra)
            .env_remove("AMBIT_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut ca = Self {
            child: cmd.spawn().unwrap(),
            log,
            addr,
            metrics,
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() || TcpStream::connect(metrics).is_err() {
            if let Ok(Some(status)) = ca.child.try_wait() {
                panic!("ambit-ca exited ({status}):\n{}", ca.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ambit-ca did not listen:\n{}",
                ca.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ca
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing every one of `parts`; returns it.
    fn log_line(&self, parts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no log line with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self, token: &str, server_name: &str, root_pem: &str) -> CaClient {
        let mut config = CaClientConfig::new(format!("https://{}", self.addr), root_pem);
        config.server_name = server_name.to_owned();
        config.token = Some(BearerToken::new(token));
        CaClient::new(config).unwrap()
    }

    /// `/metrics`, as `(name{labels}, value)` pairs.
    fn metrics(&self) -> Vec<(String, f64)> {
        use std::io::{Read, Write};
        let mut tcp = TcpStream::connect(self.metrics).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(name, _)| name == series)
            .map_or(0.0, |(_, v)| v)
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Replaces `path` as editors and `kubectl` volume updates do: a new file renamed over it.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn ask(client: &CaClient, id: &ambit_ca::SpiffeId) -> Result<Vec<String>, CaClientError> {
    client
        .create_certificate(&csr_for(id), Duration::from_secs(600), id)
        .await
}

fn code(result: Result<Vec<String>, CaClientError>) -> Code {
    match result {
        Err(CaClientError::Status { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_are_followed_refusals_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Writes tokens and workloads; node-b is then taken out of the tokens file.
    let _ = cli(dir.path(), &[]);
    let tokens = dir.path().join("tokens.yaml");
    replace(&tokens, &format!("node-a: {TOKEN_A}\n"));
    let ca = CaProcess::start(dir.path(), &["--serving-names", "ambit-ca,127.0.0.1"]);
    let root = std::fs::read_to_string(dir.path().join("state/root-cert.pem")).unwrap();
    // By IP: the serving certificate carries 127.0.0.1 as an IP SAN.
    let node_a = ca.client(TOKEN_A, "127.0.0.1", &root);
    let node_b = ca.client(TOKEN_B, "127.0.0.1", &root);
    let stranger = ca.client(STRANGER, "127.0.0.1", &root);

    ask(&node_a, &cart()).await.unwrap();
    assert_eq!(code(ask(&node_b, &web()).await), Code::Unauthenticated);
    assert_eq!(code(ask(&stranger, &web()).await), Code::Unauthenticated);
    let refused = ca.log_line(&["certificate refused", "reason=unknown_token"]);
    assert!(refused.contains(" INFO "), "{refused}");
    assert!(refused.contains("node=unknown"), "{refused}");
    assert_eq!(code(ask(&node_a, &web()).await), Code::PermissionDenied);
    let line = ca.log_line(&["certificate refused", "reason=not_on_node"]);
    assert!(line.contains("node=node-a"), "{line}");
    assert!(line.contains("shop/sa/web"), "{line}");

    // node-b is added while the CA runs: accepted without a restart.
    let added = Instant::now();
    replace(&tokens, &format!("node-a: {TOKEN_A}\nnode-b: {TOKEN_B}\n"));
    loop {
        match ask(&node_b, &web()).await {
            Ok(chain) => {
                openssl_verify(dir.path(), &root, &chain).unwrap();
                break;
            }
            Err(e) => assert!(
                added.elapsed() < Duration::from_secs(5),
                "node-b still refused: {e}\n{}",
                ca.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("token added -> accepted in {:?}", added.elapsed());

    // A garbage edit is logged with the path and the old tokens stay.
    replace(&tokens, "node-a: [this is not\n");
    let rejected = ca.log_line(&["change rejected", "tokens.yaml"]);
    assert!(rejected.contains(" WARN "), "{rejected}");
    ask(&node_a, &cart()).await.unwrap();
    ask(&node_b, &web()).await.unwrap();

    // Metrics: what the CA did, with the reasons.
    assert_eq!(ca.metric("ambit_ca_certificates_issued_total"), 4.0);
    assert_eq!(ca.metric("ambit_ca_sign_duration_seconds_count"), 4.0);
    let unknown = ca.metric("ambit_ca_refusals_total{reason=\"unknown_token\"}");
    assert!(unknown >= 2.0, "unknown_token refusals: {unknown}");
    assert_eq!(
        ca.metric("ambit_ca_refusals_total{reason=\"not_on_node\"}"),
        1.0
    );
    assert_eq!(
        ca.metric("ambit_ca_file_reloads_total{file=\"tokens\",result=\"applied\"}"),
        1.0
    );
    assert_eq!(
        ca.metric("ambit_ca_file_reloads_total{file=\"tokens\",result=\"rejected\"}"),
        1.0
    );
    let expiry = ca.metric("ambit_ca_cert_expiry_timestamp_seconds");
    assert_eq!(expiry, not_after(&root) as f64);

    // Never the token, never colour codes in a file.
    let log = ca.log();
    for token in [TOKEN_A, TOKEN_B, STRANGER] {
        assert!(!log.contains(token), "the log holds a token:\n{log}");
    }
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
}

#[tokio::test]
async fn the_serving_certificate_files_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let _ = cli(dir.path(), &[]);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = serving_pair("first");
    replace(&cert, &first.cert);
    replace(&key, &first.key);
    let ca = CaProcess::start(
        dir.path(),
        &[
            "--serving-cert",
            cert.to_str().unwrap(),
            "--serving-key",
            key.to_str().unwrap(),
        ],
    );
    let name = ambit_ca::DEFAULT_SERVING_NAME;
    ask(&ca.client(TOKEN_A, name, &first.cert), &cart())
        .await
        .unwrap();

    // A renewed certificate (here from another issuer) is served to new
    // connections; the old one is not any more.
    let second = serving_pair("second");
    replace(&key, &second.key);
    replace(&cert, &second.cert);
    let renewed = Instant::now();
    while ask(&ca.client(TOKEN_A, name, &second.cert), &cart())
        .await
        .is_err()
    {
        assert!(
            renewed.elapsed() < Duration::from_secs(5),
            "the renewed certificate is not served:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ask(&ca.client(TOKEN_A, name, &first.cert), &cart())
            .await
            .is_err()
    );

    // A key that does not match is refused and the last good pair stays.
    replace(&key, &serving_pair("third").key);
    let line = ca.log_line(&["change rejected", "does not match"]);
    assert!(line.contains("tls.key"), "{line}");
    ask(&ca.client(TOKEN_A, name, &second.cert), &cart())
        .await
        .unwrap();
    assert_eq!(
        ca.metric("ambit_ca_file_reloads_total{file=\"serving_certificate\",result=\"rejected\"}"),
        1.0
    );
}

struct Pair {
    cert: String,
    key: String,
}

/// A self-signed serving certificate for the CA's default name; clients
/// trust it directly.
fn serving_pair(cn: &str) -> Pair {
    let key = key();
    let mut params =
        rcgen::CertificateParams::new(vec![ambit_ca::DEFAULT_SERVING_NAME.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn not_after(pem_text: &str) -> u64 {
    use x509_parser::prelude::*;
    let der = ::pem::parse(pem_text).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let secs = cert.validity().not_after.timestamp();
    let at = UNIX_EPOCH + Duration::from_secs(secs as u64);
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}
