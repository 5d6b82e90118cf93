use std::io::Write as _;

use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

/// A key server on loopback serving [`JWKS`] over TLS with a certificate
/// for `localhost` from a CA of its own; returns its port and that CA's PEM.
async fn key_server() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 1024];
                let _ = tls.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                    JWKS.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

fn settings(tls: Option<Arc<ClientConfig>>) -> JwksSettings {
    JwksSettings {
        timeout: Duration::from_secs(5),
        refresh: Duration::from_secs(300),
        tls,
    }
}

#[tokio::test]
async fn https_keys_are_fetched_from_a_server_the_ca_file_vouches_for() {
    let (port, ca_pem) = key_server().await;
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(ca_pem.as_bytes()).unwrap();
    let tls = https_client_config(Some(ca_file.path())).unwrap();
    let cache = JwksCache::new(settings(tls));
    let keys = cache
        .keys(&format!("https://localhost:{port}/jwks.json"))
        .await
        .unwrap();
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(keys.keys[0].common.key_id.as_deref(), Some("k1"));
}

#[tokio::test]
async fn an_https_server_no_root_vouches_for_gives_no_keys() {
    let (port, _) = key_server().await;
    // Trusts some other CA only.
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(other.cert.pem().as_bytes()).unwrap();
    let tls = https_client_config(Some(ca_file.path())).unwrap();
    let cache = JwksCache::new(settings(tls));
    let error = cache
        .keys(&format!("https://localhost:{port}/jwks.json"))
        .await
        .unwrap_err();
    assert!(error.contains("TLS"), "{error}");
    // And with no roots at all, https is refused before any connection.
    let cache = JwksCache::new(settings(None));
    let error = cache
        .keys(&format!("https://localhost:{port}/jwks.json"))
        .await
        .unwrap_err();
    assert!(error.contains("no trust roots"), "{error}");
}

#[test]
fn a_ca_file_without_certificates_is_an_error() {
    let mut empty = tempfile::NamedTempFile::new().unwrap();
    empty.write_all(b"not a certificate\n").unwrap();
    let error = https_client_config(Some(empty.path())).unwrap_err();
    assert!(error.to_string().contains("no CA certificate"), "{error}");
}
