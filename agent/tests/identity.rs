//! The identity manager against a real CA over gRPC/TLS on loopback: short-lived
//! certificates renewed again and again while a rustls server presents the
//! current one, and recovery after the CA was down for longer than a renewal.
// Test helpers outside #[test] fns panic on a broken environment by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambit_agent::identity::renewal::Backoff;
use ambit_agent::identity::{CertificateState, IdentityConfig, IdentityManager};
use ambit_ca::SpiffeId;
use ambit_ca::app::RunningCa;
use ambit_ca::authn::BearerToken;
use ambit_ca::client::{CaClient, CaClientConfig};
use clap::Parser;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TOKEN: &str = "token-of-node-a-0123456789";

fn cart() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn ca_cli(dir: &Path, listen: &str, ttl: &str) -> ambit_ca::cli::Cli {
    std::fs::write(dir.join("tokens.yaml"), format!("node-a: {TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("workloads.yaml"),
        "kind: Pod\nmetadata: {name: cart-1, namespace: shop}\nspec: {nodeName: node-a, serviceAccountName: cart}\n",
    )
    .unwrap();
    let state = dir.join("state");
    let (tokens, workloads) = (dir.join("tokens.yaml"), dir.join("workloads.yaml"));
    ambit_ca::cli::Cli::try_parse_from([
        "ambit-ca",
        "--listen",
        listen,
        "--metrics-addr",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--workloads",
        workloads.to_str().unwrap(),
        "--cert-ttl",
        ttl,
        "--max-cert-ttl",
        ttl,
    ])
    .unwrap()
}

/// A manager for node-a talking to `ca`.
fn manager(ca: &RunningCa, lifetime: Duration) -> Arc<IdentityManager> {
    let mut client = CaClientConfig::new(format!("https://{}", ca.local_addr), ca.root_pem.clone());
    client.token = Some(BearerToken::new(TOKEN));
    client.request_timeout = Duration::from_secs(2);
    client.connect_timeout = Duration::from_secs(1);
    let config = IdentityConfig {
        requested_lifetime: lifetime,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        },
        ..IdentityConfig::default()
    };
    IdentityManager::new(config, CaClient::new(client).unwrap())
}

/// Presents whatever certificate the manager holds now for one identity.
#[derive(Debug)]
struct CurrentCert {
    manager: Arc<IdentityManager>,
    identity: SpiffeId,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.manager.current(&self.identity)?;
        let key = rustls::crypto::ring::sign::any_supported_type(&cert.key).ok()?;
        Some(Arc::new(CertifiedKey::new(cert.chain.clone(), key)))
    }
}

/// Accepts any server certificate and records the leaf it was shown; the test
/// then checks what was presented.
#[derive(Debug, Default)]
struct RecordLeaf(Mutex<Vec<CertificateDer<'static>>>);

impl ServerCertVerifier for RecordLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn tls_server(manager: Arc<IdentityManager>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCert {
            manager,
            identity: cart(),
        }));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Handshakes with `addr` and returns the leaf the server presented.
async fn presented_leaf(addr: SocketAddr, record: &Arc<RecordLeaf>) -> CertificateDer<'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(record) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("workload").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"hello");
    record.0.lock().unwrap().pop().unwrap()
}

fn describe(leaf: &CertificateDer<'_>) -> (Vec<u8>, SystemTime, Vec<String>) {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => other.to_string(),
        })
        .collect();
    (cert.raw_serial().to_vec(), not_after, sans)
}

#[tokio::test]
async fn short_lived_certificates_renew_and_the_server_never_presents_an_expired_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ambit_ca::app::start(&ca_cli(dir.path(), "127.0.0.1:0", "4s"))
        .await
        .unwrap();
    let manager = manager(&ca, Duration::from_secs(4));
    manager.track([cart()]);
    manager.certificate(&cart()).await.unwrap();
    let server = tls_server(Arc::clone(&manager)).await;
    let record = Arc::new(RecordLeaf::default());

    let mut serials = HashSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut handshakes = 0;
    while tokio::time::Instant::now() < until {
        let leaf = presented_leaf(server, &record).await;
        let (serial, not_after, sans) = describe(&leaf);
        assert!(
            not_after > SystemTime::now(),
            "server presented an expired certificate"
        );
        assert_eq!(sans, vec![cart().to_string()]);
        serials.insert(serial);
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 12 s of 4 s certificates renewed at about half life: about six renewals.
    assert!(
        serials.len() >= 4,
        "only {} distinct certificates in {handshakes} handshakes",
        serials.len()
    );
    let status = manager.status();
    assert_eq!(status[0].state, CertificateState::Ready);
    assert!(status[0].issued >= 4, "{status:?}");
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn recovers_by_itself_after_the_ca_was_down_longer_than_a_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ambit_ca::app::start(&ca_cli(dir.path(), "127.0.0.1:0", "4s"))
        .await
        .unwrap();
    let addr = ca.local_addr;
    let manager = manager(&ca, Duration::from_secs(4));
    manager.track([cart()]);
    let first = manager.certificate(&cart()).await.unwrap();
    ca.shutdown().await.unwrap();

    // Down for longer than the renewal interval (~2 s) and the lifetime (4 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = manager.status();
    assert_eq!(status[0].state, CertificateState::Unavailable, "{status:?}");
    assert!(status[0].last_error.is_some());
    assert!(
        manager.current(&cart()).is_none(),
        "an expired certificate is never handed out"
    );

    let ca = ambit_ca::app::start(&ca_cli(dir.path(), &addr.to_string(), "4s"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if manager.status()[0].state == CertificateState::Ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            manager.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = manager.current(&cart()).unwrap();
    assert!(renewed.not_after > first.not_after);
    ca.shutdown().await.unwrap();
}
