//! End-to-end tests of the CA over real gRPC/TLS on loopback: issued chains,
//! caller authentication, node binding, and a clear status for each bad input.
// Test helpers outside #[test] fns panic on a broken environment by design.
#![allow(clippy::unwrap_used)]

#[path = "fixture/ca.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_ca::api::proto::IstioCertificateRequest;
use ambit_ca::api::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_ca::client::CaClientError;
use fixture::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn code_of(result: Result<Vec<String>, CaClientError>) -> (Code, String) {
    match result {
        Err(CaClientError::Status { code, message }) => (code, message),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn issued_chain_verifies_and_names_only_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &[])).await;
    let client = client(&ca, Some(TOKEN_A));
    let chain = client
        .create_certificate(&csr_for(&cart()), Duration::from_secs(3600), &cart())
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], ca.root_pem);
    assert_eq!(uri_sans(&chain[0]), vec![cart().to_string()]);
    openssl_verify(dir.path(), &ca.root_pem, &chain).unwrap();

    // A different root must not verify the chain: the check can fail.
    let other = tempfile::tempdir().unwrap();
    let other_ca = start(&cli(other.path(), &[])).await;
    assert!(openssl_verify(dir.path(), &other_ca.root_pem, &chain).is_err());
    other_ca.shutdown().await.unwrap();
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn node_cannot_get_another_nodes_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &[])).await;
    let node_b = client(&ca, Some(TOKEN_B));
    let (code, message) = code_of(
        node_b
            .create_certificate(&csr_for(&cart()), Duration::from_secs(60), &cart())
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("node-b") && message.contains("shop/sa/cart"),
        "{message}"
    );
    // Its own workload is fine.
    node_b
        .create_certificate(&csr_for(&web()), Duration::from_secs(60), &web())
        .await
        .unwrap();
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_or_missing_token_is_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &[])).await;
    for token in [None, Some("not-a-known-token-at-all")] {
        let (code, message) = code_of(
            client(&ca, token)
                .create_certificate(&csr_for(&cart()), Duration::from_secs(60), &cart())
                .await,
        );
        assert_eq!(code, Code::Unauthenticated, "{token:?}: {message}");
    }
    ca.shutdown().await.unwrap();
}

/// A raw gRPC client, to send requests the `CaClient` never would.
async fn raw(ca: &ambit_ca::app::RunningCa) -> IstioCertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.root_pem))
        .domain_name(ambit_ca::DEFAULT_SERVING_NAME);
    let channel = Endpoint::from_shared(format!("https://{}", ca.local_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

fn request(
    csr: String,
    validity: i64,
    impersonate: Option<prost_types::Value>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|v| prost_types::Struct {
        fields: BTreeMap::from([("ImpersonatedIdentity".to_string(), v)]),
    });
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity,
        metadata,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_A}").parse().unwrap(),
    );
    request
}

fn string(s: &str) -> Option<prost_types::Value> {
    Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    })
}

#[tokio::test]
async fn each_bad_input_gets_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &[])).await;
    let mut grpc = raw(&ca).await;
    let cart = cart().to_string();
    let good = csr_for(&fixture::cart());

    let mut tampered = pem::parse(&good).unwrap().into_contents();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    let ed25519 = csr(
        &rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        &[&cart],
    );
    let number = Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(1.0)),
    });

    let cases: Vec<(&str, tonic::Request<IstioCertificateRequest>, Code, &str)> = vec![
        (
            "not PEM",
            request("hello".into(), 60, string(&cart)),
            Code::InvalidArgument,
            "PEM",
        ),
        (
            "malformed DER",
            request(
                pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![0x30, 1, 0])),
                60,
                string(&cart),
            ),
            Code::InvalidArgument,
            "PKCS#10",
        ),
        (
            "oversized CSR",
            request(format!("{good}{}", " ".repeat(9000)), 60, string(&cart)),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "bad signature",
            request(tampered, 60, string(&cart)),
            Code::InvalidArgument,
            "signature",
        ),
        (
            "unsupported key",
            request(ed25519, 60, string(&cart)),
            Code::InvalidArgument,
            "unsupported",
        ),
        (
            "SAN differs from identity",
            request(csr_for(&web()), 60, string(&cart)),
            Code::InvalidArgument,
            "exactly the SAN",
        ),
        (
            "negative validity",
            request(good.clone(), -5, string(&cart)),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "identity not a string",
            request(good.clone(), 60, number),
            Code::InvalidArgument,
            "ImpersonatedIdentity",
        ),
        (
            "identity not SPIFFE",
            request(good.clone(), 60, string("cart")),
            Code::InvalidArgument,
            "ImpersonatedIdentity",
        ),
        (
            "foreign trust domain",
            request(
                csr(&key(), &["spiffe://evil.example/ns/shop/sa/cart"]),
                60,
                string("spiffe://evil.example/ns/shop/sa/cart"),
            ),
            Code::PermissionDenied,
            "",
        ),
    ];
    for (name, req, want, needle) in cases {
        let status = grpc.create_certificate(req).await.unwrap_err();
        assert_eq!(status.code(), want, "{name}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{name}: {}",
            status.message()
        );
    }

    // A message beyond the gRPC size limit is refused before it is decoded.
    let huge = request("x".repeat(200 * 1024), 60, string(&cart));
    let status = grpc.create_certificate(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());

    // Without ImpersonatedIdentity the CSR's SAN names the identity (a proxy
    // asking for itself); the binding still applies.
    let chain = grpc
        .create_certificate(request(good.clone(), 60, None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(uri_sans(&chain[0]), vec![cart.clone()]);
    let status = grpc
        .create_certificate(request(csr_for(&web()), 60, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The server is still healthy after all of that.
    grpc.create_certificate(request(good, 60, string(&cart)))
        .await
        .unwrap();
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn root_survives_restart_and_old_certificates_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli(dir.path(), &[]);
    let ca = start(&config).await;
    let first_root = ca.root_pem.clone();
    let old = client(&ca, Some(TOKEN_A))
        .create_certificate(&csr_for(&cart()), Duration::from_secs(3600), &cart())
        .await
        .unwrap();
    ca.shutdown().await.unwrap();

    let ca = start(&config).await;
    assert_eq!(ca.root_pem, first_root);
    openssl_verify(dir.path(), &ca.root_pem, &old).unwrap();
    let new = client(&ca, Some(TOKEN_A))
        .create_certificate(&csr_for(&cart()), Duration::from_secs(3600), &cart())
        .await
        .unwrap();
    openssl_verify(dir.path(), &first_root, &new).unwrap();
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn stalled_tls_handshake_is_dropped() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &[])).await;
    let mut stalled = tokio::net::TcpStream::connect(ca.local_addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut buf))
        .await
        .expect("server must close a connection that never handshakes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_secs(4));
    // Meanwhile others are served.
    client(&ca, Some(TOKEN_A))
        .create_certificate(&csr_for(&cart()), Duration::from_secs(60), &cart())
        .await
        .unwrap();
    ca.shutdown().await.unwrap();
}

/// An HTTP/2 connection over TLS to the CA, below gRPC, to misbehave mid-call.
async fn raw_h2(ca: &ambit_ca::app::RunningCa) -> h2::client::SendRequest<bytes::Bytes> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ca.local_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(ambit_ca::DEFAULT_SERVING_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    send
}

/// Starts a CreateCertificate call and sends only part of its message.
async fn partial_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(
        "https://ambit-ca/istio.v1.auth.IstioCertificateService/CreateCertificate",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", format!("Bearer {TOKEN_A}"))
    .body(())
    .unwrap();
    let (response, mut body) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    // The frame header promises 100 bytes; only 10 follow.
    let mut partial = vec![0u8, 0, 0, 0, 100];
    partial.extend_from_slice(&[0x0a; 10]);
    body.send_data(bytes::Bytes::from(partial), false).unwrap();
    (response, body)
}

#[tokio::test]
async fn client_stalling_or_leaving_mid_call_is_cut_off_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&cli(dir.path(), &["--request-timeout", "2s"])).await;
    let mut send = raw_h2(&ca).await;

    // Stalls mid-message: the call ends with a status once the deadline passes.
    let started = std::time::Instant::now();
    let (response, _body) = partial_call(&mut send).await;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("a stalled call must be ended by the server")
        .unwrap();
    let mut grpc_status = response.headers().get("grpc-status").cloned();
    if grpc_status.is_none() {
        let trailers = response.into_body().trailers().await.unwrap().unwrap();
        grpc_status = trailers.get("grpc-status").cloned();
    }
    let code = Code::from_bytes(grpc_status.unwrap().as_bytes());
    assert!(
        matches!(code, Code::Cancelled | Code::DeadlineExceeded),
        "{code:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Leaves mid-message: resets its stream, then drops the whole connection.
    let (_response, mut body) = partial_call(&mut send).await;
    body.send_reset(h2::Reason::CANCEL);
    let (_response, _body) = partial_call(&mut send).await;
    drop(send);

    // The CA still serves everyone else.
    client(&ca, Some(TOKEN_A))
        .create_certificate(&csr_for(&cart()), Duration::from_secs(60), &cart())
        .await
        .unwrap();
    ca.shutdown().await.unwrap();
}
